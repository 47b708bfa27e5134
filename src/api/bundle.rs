//! transaction and batch Bundles at the base URL (http.html#transaction).

use super::docs;
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use serde_json::{json, Value};

use super::crud::{conditional_grant, criteria, write_access};
use super::{blocking, etag, read_body, AppState, Ctx};
use crate::auth::Permission;
use crate::config::Config;
use crate::error::Error;
use crate::fhir::{self, Format};
use crate::resources::{dates, is_valid_id, ResourceType};
use crate::search::plan::plan;
use crate::search::Search;
use crate::store::{ConditionalRef, Op, OpResult, Target, UpdateOutcome, Version, WriteAccess};

/// The processing order of http.html#trules: DELETE, POST, PUT (and PATCH), GET.
fn method_rank(method: &str) -> u8 {
    match method {
        "DELETE" => 0,
        "POST" => 1,
        "PUT" | "PATCH" => 2,
        _ => 3,
    }
}

/// One request entry, read and checked.
struct Entry {
    index: usize,
    method: String,
    op: Op,
    /// The caller may not read what the entry would answer beyond what it sent (a conditional
    /// create's existing match, a patch's result): its response carries no resource.
    hide_body: bool,
}

fn reason(status: StatusCode) -> String {
    format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or(""))
}

/// Reads the entries of a Bundle into store operations, checking each against the caller's scopes.
/// Each entry is read on its own: a transaction fails on the first bad one, a batch answers it in
/// its own response entry. (`urn:uuid:` references are resolved by the store, once conditional
/// entries have found or been given their ids.)
fn entries(ctx: &Ctx, bundle: &mut Value, config: &Config) -> Result<Vec<Result<Entry, Error>>, Error> {
    let raw = bundle
        .get_mut("entry")
        .and_then(Value::as_array_mut)
        .map(std::mem::take)
        .unwrap_or_default();
    let max_entries = config.max_bundle_entries;
    if raw.len() > max_entries {
        return Err(Error::PayloadTooLarge(format!(
            "the Bundle has {} entries; this server takes at most {max_entries} (TANDEM_MAX_BUNDLE_ENTRIES)",
            raw.len()
        )));
    }
    Ok(raw
        .into_iter()
        .enumerate()
        .map(|(index, e)| entry(ctx, config, index, e))
        .collect())
}

/// A JSON Patch carried by a Binary (http.html#transaction: PATCH entries hold a Binary whose
/// content type says what the patch is).
fn binary_patch(resource: Option<Value>, label: &str, config: &Config) -> Result<crate::store::Patcher, Error> {
    let r =
        resource.ok_or_else(|| Error::Invalid(format!("{label}: a PATCH entry needs a Binary holding the patch")))?;
    match r.get("resourceType").and_then(Value::as_str) {
        Some("Binary") => {}
        Some("Parameters") => {
            return Err(Error::Invalid(format!(
                "{label}: FHIRPath Patch is not supported; send a JSON Patch in a Binary"
            )))
        }
        _ => {
            return Err(Error::Invalid(format!(
                "{label}: a PATCH entry needs a Binary holding the patch"
            )))
        }
    }
    if r.get("contentType").and_then(Value::as_str) != Some("application/json-patch+json") {
        return Err(Error::Invalid(format!(
            "{label}: the Binary's contentType must be application/json-patch+json"
        )));
    }
    let data = r.get("data").and_then(Value::as_str).unwrap_or("");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| Error::Invalid(format!("{label}: the Binary's data is not base64: {e}")))?;
    super::crud::json_patch(&bytes, super::crud::PatchLimits::of(config)).map_err(|e| e.in_context(label))
}

/// One request entry as a store operation, or why it cannot be run.
fn entry(ctx: &Ctx, config: &Config, index: usize, mut e: Value) -> Result<Entry, Error> {
    let label = format!("entry {index}");
    let request = e
        .get("request")
        .cloned()
        .ok_or_else(|| Error::Invalid(format!("{label} has no request")))?;
    let method = request.get("method").and_then(Value::as_str).unwrap_or("").to_string();
    let raw_url = request.get("url").and_then(Value::as_str).unwrap_or("");
    // A full URL on this server is as good as a relative one.
    let url = raw_url
        .strip_prefix(&format!("{}/", ctx.base))
        .unwrap_or(raw_url)
        .trim_start_matches('/')
        .to_string();
    let label = format!("entry {index} ({method} {url})");
    if request.get("ifNoneMatch").is_some() || request.get("ifModifiedSince").is_some() {
        return Err(Error::Invalid(format!(
            "{label}: conditional reads (ifNoneMatch, ifModifiedSince) are not supported"
        )));
    }
    let if_match = match request.get("ifMatch").and_then(Value::as_str) {
        Some(m) => Some(
            m.trim_start_matches("W/")
                .trim_matches('"')
                .parse::<i64>()
                .map_err(|_| Error::Invalid(format!("{label}: ifMatch '{m}' is not a version ETag")))?,
        ),
        None => None,
    };
    let if_none_exist = request.get("ifNoneExist").and_then(Value::as_str).map(str::to_string);
    let resource = e.get_mut("resource").map(Value::take);
    let full_url = e.get("fullUrl").and_then(Value::as_str).map(str::to_string);
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (url.clone(), None),
    };
    let parts: Vec<&str> = path.split('/').collect();
    let type_of = |name: &str| {
        ResourceType::parse(name)
            .ok_or_else(|| Error::UnsupportedType(format!("{label}: resource type '{name}' is not supported")))
    };
    let grant = |rt: ResourceType, p: Permission| ctx.grant(rt.as_str(), p).map_err(|e| e.in_context(&label));
    // The Bundle's parse left the entries' invariants to here, so that a batch answers each entry.
    let body = |resource: Option<Value>, rt: ResourceType| -> Result<Value, Error> {
        let r = resource.ok_or_else(|| Error::Invalid(format!("{label}: a resource is required")))?;
        if r.get("resourceType").and_then(Value::as_str) != Some(rt.as_str()) {
            return Err(Error::Structure(format!("{label}: the resource is not a {rt}")));
        }
        crate::fhir::invariants::check_at(&r, &format!("Bundle.entry[{index}].resource"))
            .map_err(|e| e.in_context(&label))?;
        Ok(r)
    };
    let in_label = |e: Error| e.in_context(&label);
    if if_none_exist.is_some() && method != "POST" {
        return Err(Error::Invalid(format!("{label}: ifNoneExist belongs to POST entries")));
    }
    if if_match.is_some() && !matches!(method.as_str(), "PUT" | "PATCH" | "DELETE") {
        return Err(Error::Invalid(format!(
            "{label}: ifMatch is supported on PUT, PATCH and DELETE entries"
        )));
    }
    let op = match (method.as_str(), parts.as_slice(), &query) {
        ("POST", [t], None) => {
            let rt = type_of(t)?;
            let g = grant(rt, Permission::Create)?;
            let if_none_exist = match &if_none_exist {
                Some(q) => {
                    let searched = conditional_grant(ctx, rt, &g).map_err(in_label)?;
                    Some(criteria(ctx, rt, &searched, q).map_err(in_label)?)
                }
                None => None,
            };
            Op::Create {
                label: label.clone(),
                rt,
                id: crate::resources::new_id(),
                resource: body(resource, rt)?,
                access: write_access(ctx, rt, &g),
                if_none_exist,
                full_url,
            }
        }
        ("PUT", [t, id], None) if is_valid_id(id) => {
            let rt = type_of(t)?;
            let access = write_access(ctx, rt, &grant(rt, Permission::Update)?);
            let resource = body(resource, rt)?;
            if resource.get("id").and_then(Value::as_str) != Some(*id) {
                return Err(Error::Structure(format!("{label}: the resource's id must be '{id}'")));
            }
            Op::Update {
                label: label.clone(),
                rt,
                target: Target::Id(id.to_string()),
                resource,
                if_match,
                access,
                full_url,
            }
        }
        ("PUT", [t], Some(q)) => {
            let rt = type_of(t)?;
            let g = grant(rt, Permission::Update)?;
            let searched = conditional_grant(ctx, rt, &g).map_err(in_label)?;
            Op::Update {
                label: label.clone(),
                rt,
                target: Target::Search(criteria(ctx, rt, &searched, q).map_err(in_label)?),
                resource: body(resource, rt)?,
                if_match,
                access: write_access(ctx, rt, &g),
                full_url,
            }
        }
        ("PATCH", [t, rest @ ..], _) if rest.len() <= 1 => {
            let rt = type_of(t)?;
            let g = grant(rt, Permission::Update)?;
            let target = match (rest, &query) {
                ([id], None) if is_valid_id(id) => Target::Id(id.to_string()),
                ([], Some(q)) => {
                    let searched = conditional_grant(ctx, rt, &g).map_err(in_label)?;
                    Target::Search(criteria(ctx, rt, &searched, q).map_err(in_label)?)
                }
                _ => {
                    return Err(Error::Invalid(format!(
                        "{label}: expected PATCH Type/id or Type?criteria"
                    )))
                }
            };
            Op::Patch {
                label: label.clone(),
                rt,
                target,
                patcher: binary_patch(resource, &label, config)?,
                if_match,
                access: WriteAccess {
                    may_create: false,
                    ..write_access(ctx, rt, &g)
                },
            }
        }
        ("DELETE", [t, id], None) if is_valid_id(id) => {
            let rt = type_of(t)?;
            Op::Delete {
                access: write_access(ctx, rt, &grant(rt, Permission::Delete)?),
                rt,
                label: label.clone(),
                target: Target::Id(id.to_string()),
                if_match,
            }
        }
        ("DELETE", [t], Some(q)) => {
            let rt = type_of(t)?;
            let g = grant(rt, Permission::Delete)?;
            let searched = conditional_grant(ctx, rt, &g).map_err(in_label)?;
            Op::Delete {
                target: Target::Search(criteria(ctx, rt, &searched, q).map_err(in_label)?),
                access: write_access(ctx, rt, &g),
                rt,
                label: label.clone(),
                if_match,
            }
        }
        ("GET", [t, id], None) | ("GET", [t, id, "_history", _], None) if is_valid_id(id) => {
            let rt = type_of(t)?;
            let version = match parts.as_slice() {
                [_, _, _, v] => Some(
                    v.parse::<i64>()
                        .map_err(|_| Error::NotFound(format!("{label}: no version '{v}'")))?,
                ),
                _ => None,
            };
            Op::Read {
                reach: ctx.reach_of(&grant(rt, Permission::Read)?),
                rt,
                label: label.clone(),
                id: id.to_string(),
                version,
            }
        }
        ("GET", [t], q) => {
            let rt = type_of(t)?;
            grant(rt, Permission::Search)?;
            let pairs = crate::search::pairs(q.as_deref().unwrap_or("").as_bytes());
            let search = Search::parse(&pairs).map_err(in_label)?;
            let visible = |t: ResourceType| super::search::search_visibility(ctx, t);
            let count = search
                .count
                .unwrap_or(i64::from(config.default_count))
                .min(i64::from(config.max_count));
            Op::Search {
                planned: plan(&[rt], &search, true, &visible).map_err(in_label)?,
                label: label.clone(),
                count,
            }
        }
        _ => {
            return Err(Error::Invalid(format!(
                "{label}: expected POST Type, PUT Type/id or Type?criteria, PATCH Type/id or Type?criteria, \
                 DELETE Type/id or Type?criteria, GET Type/id[/_history/n] or Type?criteria"
            )))
        }
    };
    // What the caller may not read is not answered: the existing match of a conditional create
    // and the result of a patch are shown only with read (`r`) on the type.
    let hide_body = match &op {
        Op::Create { rt, .. } | Op::Patch { rt, .. } => ctx.grant(rt.as_str(), Permission::Read).is_err(),
        _ => false,
    };
    Ok(Entry {
        index,
        method,
        op,
        hide_body,
    })
}

/// bdl-7: "FullUrl must be unique in a bundle, or else entries with the same fullUrl must have
/// different meta.versionId (except in history bundles)". Checked before any entry is read.
fn unique_full_urls(bundle: &Value) -> Result<(), Error> {
    let mut seen = std::collections::HashSet::new();
    for (index, e) in bundle
        .get("entry")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let Some(url) = e.get("fullUrl").and_then(Value::as_str) else {
            continue;
        };
        let version = e.pointer("/resource/meta/versionId").and_then(Value::as_str);
        if !seen.insert((url, version)) {
            return Err(Error::Invalid(format!(
                "entry {index}: fullUrl '{url}' is already the fullUrl of an earlier entry (bdl-7: a fullUrl is unique in a Bundle)"
            )));
        }
    }
    Ok(())
}

/// The resource an entry writes (creates and updates; a patch carries its ops in a Binary).
fn written_resource(op: &Op) -> Option<&Value> {
    match op {
        Op::Create { resource, .. } | Op::Update { resource, .. } => Some(resource),
        _ => None,
    }
}

/// Checks the references of `entries` that only a Bundle can resolve, and plans the conditional
/// ones (http.html#trules):
/// - a `urn:uuid:` reference must be the fullUrl of an entry that creates or updates a resource in
///   the same Bundle (`full_urls`); anything else would be stored verbatim, pointing nowhere: 400;
/// - `Type?criteria` is a conditional reference, resolved by the store on the write's transaction;
///   the caller needs search on the type, and sees matches only as a search of theirs would.
fn bundle_references(ctx: &Ctx, entries: &[&Entry], full_urls: &[&str]) -> Result<Vec<ConditionalRef>, Error> {
    let mut conditional: Vec<ConditionalRef> = Vec::new();
    for entry in entries {
        let Some(resource) = written_resource(&entry.op) else {
            continue;
        };
        let label = format!("entry {}", entry.index);
        for reference in crate::resources::references(resource) {
            if reference.starts_with("urn:uuid:") {
                if !full_urls.contains(&reference) {
                    return Err(Error::Invalid(format!(
                        "{label}: the reference '{reference}' is not the fullUrl of an entry of this Bundle that creates or updates a resource"
                    )));
                }
                continue;
            }
            let Some((type_name, query)) = reference.split_once('?') else {
                continue;
            };
            if type_name.is_empty() || !type_name.chars().all(|c| c.is_ascii_alphanumeric()) {
                continue;
            }
            if conditional.iter().any(|c| c.reference == reference) {
                continue;
            }
            let rt = ResourceType::parse(type_name).ok_or_else(|| {
                Error::Invalid(format!(
                    "{label}: the conditional reference '{reference}' names a type this server does not host"
                ))
            })?;
            let in_label = |e: Error| e.in_context(&format!("{label}: conditional reference '{reference}'"));
            let grant = ctx.grant(rt.as_str(), Permission::Search).map_err(in_label)?;
            conditional.push(ConditionalRef {
                label: label.clone(),
                reference: reference.to_string(),
                rt,
                planned: criteria(ctx, rt, &grant, query).map_err(in_label)?,
            });
        }
    }
    Ok(conditional)
}

/// The `urn:uuid:` fullUrls that entries creating or updating a resource give it.
fn own_full_urls(entries: &[&Entry]) -> Vec<String> {
    entries
        .iter()
        .filter_map(|e| match &e.op {
            Op::Create { full_url, .. } | Op::Update { full_url, .. } => full_url.clone(),
            _ => None,
        })
        .filter(|u| u.starts_with("urn:uuid:"))
        .collect()
}

/// The entry of a batch-response for a failed entry.
fn error_entry(ctx: &Ctx, e: &Error) -> Value {
    ctx.note(e);
    let (status, _) = e.status_and_code();
    json!({"response": {"status": reason(status), "outcome": fhir::error_outcome(e, &ctx.request_id)}})
}

fn written_entry(ctx: &Ctx, status: StatusCode, v: &Version) -> Result<Value, Error> {
    let mut e = json!({
        "fullUrl": ctx.url(&format!("{}/{}", v.res_type, v.res_id)),
        "response": {
            "status": reason(status),
            "location": format!("{}/{}/_history/{}", v.res_type, v.res_id, v.version_id),
            "etag": etag(v.version_id),
            "lastModified": dates::format_instant(v.last_updated),
        }
    });
    if let Some(body) = &v.body {
        let resource = serde_json::from_str(body).map_err(|err| Error::Internal(format!("stored JSON: {err}")))?;
        // A patient's own token sees group sessions and Groups without the other patients.
        let shown = ctx.shown(&v.res_type, resource);
        ctx.audit_returned(&v.res_type, &shown);
        e["resource"] = shown;
    }
    Ok(e)
}

fn result_entry(ctx: &Ctx, result: &OpResult, hide_body: bool) -> Result<Value, Error> {
    if hide_body {
        if let OpResult::Existing(v) | OpResult::Updated(UpdateOutcome { version: v, .. }) = result {
            let status = match result {
                OpResult::Updated(UpdateOutcome { created: true, .. }) => StatusCode::CREATED,
                _ => StatusCode::OK,
            };
            let mut e = written_entry(ctx, status, v)?;
            if let Some(fields) = e.as_object_mut() {
                fields.remove("resource");
            }
            return Ok(e);
        }
    }
    match result {
        OpResult::Created(v) => written_entry(ctx, StatusCode::CREATED, v),
        OpResult::Existing(v) | OpResult::Read(v) => written_entry(ctx, StatusCode::OK, v),
        OpResult::Updated(o) => written_entry(
            ctx,
            if o.created { StatusCode::CREATED } else { StatusCode::OK },
            &o.version,
        ),
        OpResult::Deleted(Some(v)) => {
            Ok(json!({"response": {"status": reason(StatusCode::NO_CONTENT), "etag": etag(v.version_id)}}))
        }
        OpResult::Deleted(None) => Ok(json!({"response": {"status": reason(StatusCode::NO_CONTENT)}})),
        OpResult::Found { matches, total } => {
            let entries = matches
                .iter()
                .map(|v| {
                    let shown = ctx.shown(&v.res_type, super::search::parse_body(v)?);
                    ctx.audit_returned(&v.res_type, &shown);
                    Ok(json!({
                        "fullUrl": ctx.url(&format!("{}/{}", v.res_type, v.res_id)),
                        "resource": shown,
                        "search": {"mode": "match"},
                    }))
                })
                .collect::<Result<Vec<Value>, Error>>()?;
            Ok(json!({
                "resource": {"resourceType": "Bundle", "id": uuid::Uuid::new_v4().to_string(), "type": "searchset",
                             "total": total, "entry": entries},
                "response": {"status": reason(StatusCode::OK)},
            }))
        }
    }
}

/// POST [base]: a transaction (all or nothing) or a batch (each entry on its own).
#[utoipa::path(
    post,
    path = "/",
    operation_id = "transactionOrBatch",
    summary = "Run a transaction or batch Bundle",
    description = "A transaction Bundle commits all its entries or none (entries run in the order DELETE, POST, PUT/PATCH, GET; urn:uuid fullUrls are resolved and references to them rewritten; ifNoneExist, ifMatch and conditional URLs are honoured). A batch runs each entry on its own and reports each outcome.",
    request_body(content = docs::Bundle, content_type = "application/fhir+json", description = "A Bundle of type transaction or batch"),
    responses(
        (status = 200, description = "A transaction-response or batch-response Bundle", body = docs::Bundle, content_type = "application/fhir+json"),
        (status = 409, description = "A transaction entry clashed (double booking) or conflicted; nothing was written", body = docs::OperationOutcome, content_type = "application/fhir+json"),
        (status = 412, description = "A transaction entry's condition failed; nothing was written", body = docs::OperationOutcome, content_type = "application/fhir+json"),
        (status = 422, description = "A transaction entry breaks an R4 invariant (its path from Bundle.entry[n].resource) or a business rule; nothing was written", body = docs::OperationOutcome, content_type = "application/fhir+json"),
        (status = 404, description = "A transaction entry names what does not exist; nothing was written", body = docs::OperationOutcome, content_type = "application/fhir+json"),
        (status = 410, description = "A transaction entry names a deleted resource; nothing was written", body = docs::OperationOutcome, content_type = "application/fhir+json"),
    ),
    extensions(("x-scopes" = json!([]))),
)]
pub async fn transaction_or_batch(
    req: HttpRequest,
    ctx: Ctx,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    ctx.negotiated()?;
    let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let format = Format::from_content_type(content_type)?;
    let body = read_body(&req, payload, state.config.max_body_bytes).await?;
    let mut bundle = fhir::parse_resource(&body, format)?;
    if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(Error::Structure(
            "POST to the base URL takes a Bundle of type transaction or batch".into(),
        ));
    }
    let kind = bundle.get("type").and_then(Value::as_str).unwrap_or("").to_string();
    unique_full_urls(&bundle)?;
    let (response_type, responses) = match kind.as_str() {
        "transaction" => {
            ctx.audit(|d| d.interaction = Some("transaction"));
            let mut planned = entries(&ctx, &mut bundle, &state.config)?
                .into_iter()
                .collect::<Result<Vec<Entry>, Error>>()?;
            planned.sort_by_key(|e| method_rank(&e.method));
            let all: Vec<&Entry> = planned.iter().collect();
            let full_urls = own_full_urls(&all);
            let full_urls: Vec<&str> = full_urls.iter().map(String::as_str).collect();
            let conditional = bundle_references(&ctx, &all, &full_urls)?;
            let order: Vec<(usize, bool)> = planned.iter().map(|e| (e.index, e.hide_body)).collect();
            let ops: Vec<Op> = planned.into_iter().map(|e| e.op).collect();
            let store = state.store.clone();
            let results = blocking(move || store.transaction_with(&ops, &conditional)).await?;
            let mut by_index: Vec<(usize, Value)> = Vec::with_capacity(results.len());
            for ((index, hide_body), result) in order.into_iter().zip(results.iter()) {
                by_index.push((index, result_entry(&ctx, result, hide_body)?));
            }
            by_index.sort_by_key(|(i, _)| *i);
            (
                "transaction-response",
                by_index.into_iter().map(|(_, e)| e).collect::<Vec<_>>(),
            )
        }
        "batch" => {
            ctx.audit(|d| d.interaction = Some("batch"));
            let planned = entries(&ctx, &mut bundle, &state.config)?;
            let mut out = Vec::with_capacity(planned.len());
            for entry in planned {
                // A batch entry stands alone: it can refer to no other entry (http.html#brules).
                let entry = entry.and_then(|entry| {
                    let conditional = bundle_references(&ctx, &[&entry], &[])?;
                    Ok((entry, conditional))
                });
                let (entry, conditional) = match entry {
                    Ok(entry) => entry,
                    Err(e) => {
                        out.push(error_entry(&ctx, &e));
                        continue;
                    }
                };
                let store = state.store.clone();
                let (op, hide_body) = (entry.op, entry.hide_body);
                let result = blocking(move || store.transaction_with(std::slice::from_ref(&op), &conditional)).await;
                out.push(match result {
                    Ok(results) => match results.first() {
                        Some(r) => result_entry(&ctx, r, hide_body)?,
                        None => json!({"response": {"status": reason(StatusCode::OK)}}),
                    },
                    Err(e) => error_entry(&ctx, &e),
                });
            }
            ("batch-response", out)
        }
        other => {
            return Err(Error::Invalid(format!(
                "a Bundle of type '{other}' cannot be processed; use transaction or batch"
            )))
        }
    };
    let touched: Vec<String> = responses
        .iter()
        .filter_map(|e| e["response"]["location"].as_str().map(str::to_string))
        .collect();
    ctx.audit(|d| d.entities = touched);
    let response = json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "meta": {"lastUpdated": dates::format_instant(dates::now_millis())},
        "type": response_type,
        "entry": responses,
    });
    Ok(ctx.body(HttpResponse::Ok(), &response))
}
