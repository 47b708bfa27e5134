//! Bulk Data export (FHIR Bulk Data Access 2.0, the async request pattern):
//! - `GET /$export`, `GET /Patient/$export`, `GET /Group/{id}/$export` with `Prefer: respond-async`:
//!   202 and `Content-Location` of the job's status;
//! - `GET /$export-status/{job}`: 202 with `X-Progress` while it runs, 200 with the manifest when it
//!   is done; `DELETE` cancels it (202);
//! - `GET /$export-file/{job}/{n}`: one NDJSON file.
//!
//! Everything about a job is in the database (crate::export runs it in the background), so any
//! replica answers. A job and its files belong to the client that started it — the token's issuer,
//! subject and client id, all three — and are answered only while that client's token still grants
//! system-wide read on every type the job holds (Bulk Data Access 2.0: the manifest says
//! `requiresAccessToken: true`, and its Privacy and Security Considerations leave to the server
//! that only the authorized client reads the output). Anyone else is told the job does not exist.

use super::docs;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::{blocking, query_pairs, resource_type, AppState, Ctx};
use crate::auth::Permission;
use crate::error::Error;
use crate::resources::{compartment, dates, is_valid_id, ResourceType};
use crate::store::{ExportJob, NewExport};

const NDJSON: &str = "application/fhir+ndjson";

/// Who may read a job: the issuer, subject and client id of the token that asked for it, as one
/// JSON array (no separator inside a claim can make two callers look alike). A token without a
/// subject names no one in particular (all such tokens of an issuer would share their jobs), so it
/// may not start or read an export.
fn requester(ctx: &Ctx) -> Result<String, Error> {
    let p = ctx
        .principal
        .as_ref()
        .ok_or_else(|| Error::Unauthorized("a bearer token is required".into()))?;
    let subject = p.subject.as_deref().filter(|s| !s.is_empty()).ok_or_else(|| {
        Error::Forbidden(
            "$export needs a token that names its subject (sub): an export belongs to the client that started it"
                .into(),
        )
    })?;
    Ok(json!([p.issuer, subject, p.client_id]).to_string())
}

fn lenient(req: &HttpRequest) -> bool {
    super::Prefer::of(req).handling == Some(super::Handling::Lenient)
}

/// The kick-off of an export at `level` (system, patient, group).
async fn kick_off(
    req: &HttpRequest,
    ctx: &Ctx,
    state: &AppState,
    level: &'static str,
    group_id: Option<String>,
) -> Result<HttpResponse, Error> {
    let requester = requester(ctx)?;
    let respond_async = super::Prefer::of(req).respond_async;
    if !respond_async {
        return Err(Error::Invalid(
            "$export runs asynchronously: send the header Prefer: respond-async".into(),
        ));
    }
    if let Some(accept) = req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()) {
        let ok = accept
            .split(',')
            .map(|a| a.split(';').next().unwrap_or("").trim())
            .any(|a| matches!(a, "application/fhir+json" | "application/json" | "*/*" | ""));
        if !ok {
            return Err(Error::Invalid(
                "$export answers in application/fhir+json (Accept)".into(),
            ));
        }
    }
    let mut since = None;
    let mut named: Option<Vec<ResourceType>> = None;
    for (k, v) in query_pairs(req) {
        match k.as_str() {
            "_outputFormat" => {
                if !matches!(v.as_str(), "application/fhir+ndjson" | "application/ndjson" | "ndjson") {
                    return Err(Error::Invalid(format!(
                        "_outputFormat '{v}' is not supported; use application/fhir+ndjson"
                    )));
                }
            }
            "_since" => {
                let range = dates::parse_range(&v)
                    .filter(|_| v.contains('T'))
                    .ok_or_else(|| Error::Invalid(format!("_since '{v}' is not a FHIR instant")))?;
                since = Some(range.low);
            }
            "_type" => {
                let mut types = named.take().unwrap_or_default();
                for t in v.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    types.push(ResourceType::parse(t).ok_or_else(|| {
                        Error::Invalid(format!("_type names '{t}', which this server does not hold"))
                    })?);
                }
                named = Some(types);
            }
            "_format" | "_pretty" => {}
            other if lenient(req) => {
                tracing::debug!(
                    parameter = other,
                    "an unsupported $export parameter was ignored (lenient)"
                );
            }
            other => {
                return Err(Error::Invalid(format!(
                    "$export parameter '{other}' is not supported (_type, _since and _outputFormat are); \
                     send Prefer: handling=lenient to have it ignored"
                )))
            }
        }
    }
    // Patient and group exports hold what is in patients' compartments.
    let in_scope = |rt: &ResourceType| level == "system" || compartment::patient_params(*rt).is_some();
    let types: Vec<ResourceType> = match named {
        Some(types) => {
            if let Some(t) = types.iter().find(|t| !in_scope(t)) {
                return Err(Error::Invalid(format!(
                    "{t} is not in the Patient compartment; a {level} export holds only what is"
                )));
            }
            for t in &types {
                ctx.grant_all(t.as_str(), Permission::Read)?;
            }
            types
        }
        None => {
            // Subscriptions carry endpoints and their headers: exported only when asked for by name.
            let types: Vec<ResourceType> = ResourceType::all()
                .filter(|t| in_scope(t) && t.as_str() != "Subscription")
                .filter(|t| ctx.grant_all(t.as_str(), Permission::Read).is_ok())
                .collect();
            if types.is_empty() {
                return Err(Error::Forbidden(
                    "the token's scopes grant system-wide read on no resource type to export".into(),
                ));
            }
            types
        }
    };
    let job = NewExport {
        id: uuid::Uuid::new_v4().simple().to_string(),
        level,
        group_id,
        types,
        since,
        request_url: format!("{}{}", ctx.base, req.uri()),
        requester,
    };
    let store = state.store.clone();
    let id = job.id.clone();
    blocking(move || store.create_export(&job, dates::now_millis())).await?;
    ctx.audit(|d| d.entities = vec![format!("$export-status/{id}")]);
    Ok(HttpResponse::Accepted()
        .insert_header((header::CONTENT_LOCATION, ctx.url(&format!("$export-status/{id}"))))
        .finish())
}

#[utoipa::path(
    get,
    path = "/$export",
    operation_id = "exportSystem",
    summary = "Export everything (Bulk Data)",
    description = "Starts a FHIR Bulk Data export of every resource the token may read system-wide. The export runs in the background; poll the status URL.",
    params(("_type" = Option<String>, Query, description = "Comma-separated resource types to export (default: all the token may read)"), ("_since" = Option<String>, Query, description = "Only resources changed at or after this instant"), ("_outputFormat" = Option<String>, Query, description = "application/fhir+ndjson (the only format)"), ("Prefer" = String, Header, description = "Must be respond-async: the export runs in the background")),
    responses(
        (status = 202, description = "Accepted: poll the URL in Content-Location for the status", headers(("Content-Location" = String, description = "The status URL: [base]/$export-status/[job]"))),
    ),
    extensions(("x-scopes" = json!(["*.r"])), ("x-contexts" = json!(["system", "user"]))),
)]
pub async fn system_export(req: HttpRequest, ctx: Ctx, state: web::Data<AppState>) -> Result<HttpResponse, Error> {
    kick_off(&req, &ctx, &state, "system", None).await
}

#[utoipa::path(
    get,
    path = "/Patient/$export",
    operation_id = "exportPatients",
    summary = "Export all patients' records (Bulk Data)",
    description = "Starts a Bulk Data export of every Patient compartment: the patients and what refers to them.",
    params(("_type" = Option<String>, Query, description = "Comma-separated resource types to export (default: all the token may read)"), ("_since" = Option<String>, Query, description = "Only resources changed at or after this instant"), ("_outputFormat" = Option<String>, Query, description = "application/fhir+ndjson (the only format)"), ("Prefer" = String, Header, description = "Must be respond-async: the export runs in the background")),
    responses(
        (status = 202, description = "Accepted: poll the URL in Content-Location for the status", headers(("Content-Location" = String, description = "The status URL: [base]/$export-status/[job]"))),
    ),
    extensions(("x-scopes" = json!(["Patient.r"])), ("x-contexts" = json!(["system", "user"]))),
)]
pub async fn patient_export(req: HttpRequest, ctx: Ctx, state: web::Data<AppState>) -> Result<HttpResponse, Error> {
    kick_off(&req, &ctx, &state, "patient", None).await
}

/// `GET /Group/{id}/$export` (dispatched from the instance operations).
#[utoipa::path(
    get,
    path = "/Group/{id}/$export",
    operation_id = "exportGroup",
    summary = "Export a group's records (Bulk Data)",
    description = "Starts a Bulk Data export of the compartments of this Group's members (a support group, say).",
    params(("id" = String, Path, description = "The logical id of the resource"), ("_type" = Option<String>, Query, description = "Comma-separated resource types to export (default: all the token may read)"), ("_since" = Option<String>, Query, description = "Only resources changed at or after this instant"), ("_outputFormat" = Option<String>, Query, description = "application/fhir+ndjson (the only format)"), ("Prefer" = String, Header, description = "Must be respond-async: the export runs in the background")),
    responses(
        (status = 202, description = "Accepted: poll the URL in Content-Location for the status", headers(("Content-Location" = String, description = "The status URL: [base]/$export-status/[job]"))),
        (status = 404, description = "No Group has this id", body = docs::OperationOutcome, content_type = "application/fhir+json"),
    ),
    extensions(("x-scopes" = json!(["Group.r"])), ("x-contexts" = json!(["system", "user"]))),
)]
pub async fn group_export(
    req: &HttpRequest,
    ctx: &Ctx,
    state: &AppState,
    group_id: &str,
) -> Result<HttpResponse, Error> {
    ctx.grant_all("Group", Permission::Read)?;
    let rt = resource_type("Group")?;
    let (store, id) = (state.store.clone(), group_id.to_string());
    blocking(move || store.read(rt, &id)).await?;
    kick_off(req, ctx, state, "group", Some(group_id.to_string())).await
}

/// The job, if it exists and the calling client started it (anyone else is told it does not
/// exist), and while the caller's scopes still grant what the job reads: system-wide read on every
/// type it holds (and on the Group of a group export). A `patient/` token never reads a job.
async fn own_job(ctx: &Ctx, state: &AppState, id: &str) -> Result<ExportJob, Error> {
    let unknown = || Error::NotFound(format!("there is no export job '{id}'"));
    let me = requester(ctx)?;
    if !is_valid_id(id) {
        return Err(unknown());
    }
    let (store, lookup) = (state.store.clone(), id.to_string());
    let job = blocking(move || store.export_job(&lookup)).await?.ok_or_else(unknown)?;
    if job.requester != me || job.state == "cancelled" {
        return Err(unknown());
    }
    let types = job.type_list();
    if types.is_empty() {
        // No type this server still hosts: nothing whose read could be checked, nothing to serve.
        return Err(unknown());
    }
    for t in &types {
        ctx.grant_all(t.as_str(), Permission::Read)?;
    }
    if job.level == "group" {
        ctx.grant_all("Group", Permission::Read)?;
    }
    Ok(job)
}

#[utoipa::path(
    get,
    path = "/$export-status/{job}",
    operation_id = "exportStatus",
    summary = "Status of an export",
    description = "202 with X-Progress while the export runs; 200 with the manifest (the NDJSON files to download) when it is done; an OperationOutcome if it failed. Only the client that started it (the token's iss, sub and client_id) sees it, and only while its token grants system-wide read on every type of the export.",
    params(("job" = String, Path, description = "The export job id")),
    responses(
        (status = 200, description = "Done: the manifest", body = docs::ExportManifest, content_type = "application/json"),
        (status = 202, description = "Still running", headers(("X-Progress" = String, description = "What the export is doing"), ("Retry-After" = String, description = "Seconds to wait before polling again"))),
        (status = 403, description = "The token has no subject, or no longer grants system-wide read on every type of the export", body = docs::OperationOutcome, content_type = "application/fhir+json"),
        (status = 404, description = "No such export job", body = docs::OperationOutcome, content_type = "application/fhir+json"),
        (status = 500, description = "The export failed", body = docs::OperationOutcome, content_type = "application/fhir+json"),
    ),
    extensions(("x-scopes" = json!([]))),
)]
pub async fn status(ctx: Ctx, path: web::Path<String>, state: web::Data<AppState>) -> Result<HttpResponse, Error> {
    let job = own_job(&ctx, &state, &path).await?;
    match job.state.as_str() {
        "queued" | "running" => {
            let progress = job.progress.clone().unwrap_or_else(|| job.state.clone());
            let mut response = HttpResponse::Accepted().insert_header(("Retry-After", "1")).finish();
            if let Ok(v) = HeaderValue::from_str(&progress) {
                response
                    .headers_mut()
                    .insert(header::HeaderName::from_static("x-progress"), v);
            }
            Ok(response)
        }
        "completed" => {
            let (store, id) = (state.store.clone(), job.id.clone());
            let files = blocking(move || store.export_file_list(&id)).await?;
            let output: Vec<_> = files
                .iter()
                .map(|f| {
                    json!({"type": f.res_type, "url": ctx.url(&format!("$export-file/{}/{}", job.id, f.seq)), "count": f.count})
                })
                .collect();
            let manifest = json!({
                "transactionTime": dates::format_instant(job.transaction_time.unwrap_or(job.created)),
                "request": job.request_url,
                "requiresAccessToken": true,
                "output": output,
                "error": [],
            });
            let mut builder = HttpResponse::Ok();
            if let Some(expires) = job.expires {
                builder.insert_header((header::EXPIRES, dates::format_http_date(expires)));
            }
            Ok(builder.content_type("application/json").body(manifest.to_string()))
        }
        _ => Err(Error::Internal(format!(
            "export job failed: {}",
            job.error.as_deref().unwrap_or("unknown cause")
        ))),
    }
}

#[utoipa::path(
    delete,
    path = "/$export-status/{job}",
    operation_id = "exportCancel",
    summary = "Cancel or delete an export",
    description = "Stops a running export, or deletes the files of a finished one.",
    params(("job" = String, Path, description = "The export job id")),
    responses(
        (status = 202, description = "Cancelled", body = docs::OperationOutcome, content_type = "application/fhir+json"),
        (status = 404, description = "No such export job", body = docs::OperationOutcome, content_type = "application/fhir+json"),
    ),
    extensions(("x-scopes" = json!([]))),
)]
pub async fn cancel(ctx: Ctx, path: web::Path<String>, state: web::Data<AppState>) -> Result<HttpResponse, Error> {
    let job = own_job(&ctx, &state, &path).await?;
    let store = state.store.clone();
    blocking(move || store.cancel_export(&job.id)).await?;
    Ok(HttpResponse::Accepted().finish())
}

#[utoipa::path(
    get,
    path = "/$export-file/{job}/{file}",
    operation_id = "exportFile",
    summary = "Download one export file",
    description = "One NDJSON file of a finished export's manifest: one resource per line.",
    params(("job" = String, Path, description = "The export job id"), ("file" = String, Path, description = "The file number in the manifest")),
    responses(
        (status = 200, description = "The resources, one JSON object per line", body = String, content_type = "application/fhir+ndjson"),
        (status = 403, description = "The token has no subject, or no longer grants system-wide read on every type of the export", body = docs::OperationOutcome, content_type = "application/fhir+json"),
        (status = 404, description = "No such file", body = docs::OperationOutcome, content_type = "application/fhir+json"),
    ),
    extensions(("x-scopes" = json!([]))),
)]
pub async fn file(
    ctx: Ctx,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    let (id, seq) = path.into_inner();
    let job = own_job(&ctx, &state, &id).await?;
    let seq: i64 = seq
        .parse()
        .map_err(|_| Error::NotFound(format!("export job '{id}' has no file '{seq}'")))?;
    let store = state.store.clone();
    let content = blocking(move || store.export_file(&job.id, seq))
        .await?
        .ok_or_else(|| Error::NotFound(format!("export job '{id}' has no file {seq}")))?;
    Ok(HttpResponse::Ok().content_type(NDJSON).body(content))
}
