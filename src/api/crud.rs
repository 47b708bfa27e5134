//! create, read, vread, update, patch, delete (http.html), and their conditional forms: create with
//! `If-None-Exist`, and update, patch and delete of `[type]?criteria`.

use super::docs;
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::Value;

use super::{
    blocking, if_match, instance, query_pairs, read_body, resource_type, version_headers, AppState, Ctx, Prefer,
    ReturnPreference,
};
use crate::auth::{Grant, Permission};
use crate::error::Error;
use crate::fhir::{self, Format};
use crate::resources::{is_valid_id, ResourceType};
use crate::search::plan::{plan, Planned};
use crate::search::Search;
use crate::store::{Op, OpResult, Patcher, Target, UpdateOutcome, Version, WriteAccess};

/// What a caller holding `grant` may write (an update also needs create to create).
pub(super) fn write_access(ctx: &Ctx, rt: ResourceType, grant: &Grant) -> WriteAccess {
    WriteAccess {
        reach: ctx.reach_of(grant),
        may_create: ctx.grant(rt.as_str(), Permission::Create).is_ok(),
        may_read: ctx.grant(rt.as_str(), Permission::Read).is_ok(),
        base: Some(ctx.base.clone()),
        subscribable: (rt.as_str() == "Subscription").then(|| {
            ResourceType::all()
                .filter(|t| {
                    [Permission::Search, Permission::Read]
                        .into_iter()
                        .all(|p| ctx.grant(t.as_str(), p).is_ok_and(|g| g.is_all()))
                })
                .map(|t| t.as_str().to_string())
                .collect()
        }),
    }
}

/// A version the caller may read: a `patient/` token sees only its compartment, and anything else
/// is answered as if it did not exist (404), so that a probe learns nothing.
pub(super) fn readable(ctx: &Ctx, rt: ResourceType, grant: &Grant, v: Version) -> Result<Version, Error> {
    crate::store::visible_to(&ctx.reach_of(grant), rt, v)
}

/// The narrower of two grants of one caller: a compartment over assigned clients over all.
/// (A token holds one `patient` claim and one list of assigned clients, so two grants of one
/// kind reach the same records.)
pub(super) fn narrower(a: Grant, b: Grant) -> Grant {
    if b.rank() < a.rank() {
        b
    } else {
        a
    }
}

/// The grant a conditional interaction on `rt` resolves its criteria with: searching is one of its
/// effects (it tells what matches), so it needs search (`s`) on `rt` besides the permission of
/// its write, and it matches only what both reach.
pub(super) fn conditional_grant(ctx: &Ctx, rt: ResourceType, write: &Grant) -> Result<Grant, Error> {
    let search = ctx.grant(rt.as_str(), Permission::Search).map_err(|e| match e {
        Error::Forbidden(m) => Error::Forbidden(format!("{m}: a conditional interaction searches")),
        other => other,
    })?;
    Ok(narrower(write.clone(), search))
}

/// Whether the caller may read this version of `rt`: what a write returns beyond what the caller
/// sent (the existing match of a conditional create, the result of a patch) needs read (`r`).
pub(super) fn may_read(ctx: &Ctx, rt: ResourceType, v: &Version) -> bool {
    ctx.grant(rt.as_str(), Permission::Read)
        .is_ok_and(|g| readable(ctx, rt, &g, v.clone()).is_ok())
}

/// The criteria of a conditional interaction on `rt` (the query of `[type]?…`, or an If-None-Exist),
/// planned with what the caller may see: `grant` for `rt` itself, search grants for the types a chain
/// passes through. Unknown parameters are refused: ignoring one would widen the match.
pub(super) fn criteria(ctx: &Ctx, rt: ResourceType, grant: &Grant, query: &str) -> Result<Planned, Error> {
    let pairs: Vec<(String, String)> = crate::search::pairs(query.trim_start_matches('?').as_bytes())
        .into_iter()
        .filter(|(k, _)| !matches!(k.as_str(), "_format" | "_pretty"))
        .collect();
    let search = Search::parse(&pairs)?;
    if search.criteria.is_empty() {
        return Err(Error::Invalid(format!(
            "a conditional interaction on {rt} needs search criteria, such as identifier=system|value"
        )));
    }
    let own = ctx.reach_of(grant);
    let visible = |t: ResourceType| {
        if t == rt {
            Ok(own.clone())
        } else {
            super::search::search_visibility(ctx, t)
        }
    };
    plan(&[rt], &search, true, &visible)
}

/// What one JSON Patch may ask for: a `copy` or `add` of a large part doubles the document, so a
/// 1.3 KB patch of 21 copies grew the process by 380 MB before any check ran (issue 21).
#[derive(Debug, Clone, Copy)]
pub(super) struct PatchLimits {
    /// Most operations (TANDEM_MAX_PATCH_OPERATIONS).
    pub operations: usize,
    /// Largest result, as JSON bytes (TANDEM_MAX_BODY_BYTES: what a client could have sent whole).
    pub bytes: usize,
    /// What the result may hold, as a body would (TANDEM_MAX_RESOURCE_ELEMENTS, _DEPTH).
    pub body: fhir::Limits,
}

impl PatchLimits {
    pub(super) fn of(config: &crate::config::Config) -> PatchLimits {
        PatchLimits {
            operations: config.max_patch_operations,
            bytes: config.max_body_bytes,
            body: config.body_limits(),
        }
    }
}

/// A JSON Patch document (RFC 6902) as a change to the current version; the result must still be a
/// valid R4 resource (422 otherwise). The patch is refused before it is applied when it has more
/// operations than allowed (400 too-costly), and as soon as one operation makes the document larger
/// than a body may be (413), so no patch costs more than a request body could.
pub(super) fn json_patch(bytes: &[u8], limits: PatchLimits) -> Result<Patcher, Error> {
    let not_a_patch = |e: String| Error::Invalid(format!("the body is not a JSON Patch document (RFC 6902): {e}"));
    fhir::prescan::json(bytes, fhir::Limits::SYNTAX).map_err(|r| not_a_patch(r.to_string()))?;
    let patch: json_patch::Patch = serde_json::from_slice(bytes).map_err(|e| not_a_patch(e.to_string()))?;
    if patch.0.len() > limits.operations {
        return Err(Error::TooCostly(format!(
            "the patch has {} operations; this server applies at most {} (TANDEM_MAX_PATCH_OPERATIONS)",
            patch.0.len(),
            limits.operations
        )));
    }
    Ok(Patcher(std::sync::Arc::new(move |current: &Value| {
        let mut doc = current.clone();
        for (i, op) in patch.0.iter().enumerate() {
            json_patch::patch(&mut doc, std::slice::from_ref(op))
                .map_err(|e| Error::Unprocessable(format!("the patch does not apply: {e}")))?;
            if !fits(&doc, limits.bytes, limits.body.max_elements) {
                return Err(Error::PayloadTooLarge(format!(
                    "operation {i} of the patch makes the resource larger than {} bytes (TANDEM_MAX_BODY_BYTES) \
                     or {} elements (TANDEM_MAX_RESOURCE_ELEMENTS)",
                    limits.bytes, limits.body.max_elements
                )));
            }
        }
        let bytes = serde_json::to_vec(&doc).map_err(|e| Error::Internal(format!("patched JSON: {e}")))?;
        fhir::check_size(&bytes, Format::Json, limits.body)?;
        fhir::parse_resource(&bytes, Format::Json).map_err(|e| match e {
            Error::Structure(m) | Error::Invalid(m) => {
                Error::Unprocessable(format!("the patched resource is not valid: {m}"))
            }
            other => other,
        })
    })))
}

/// Whether `doc` stays within a body's limits: at most `max_bytes` as JSON (escapes not counted)
/// and `max_elements` elements (counted as the pre-scan counts them). One walk over the nodes that
/// stops at the first limit passed: no writing out, so each operation costs what the document holds
/// in nodes, not in bytes, and a document doubled by copies is caught after its first doubling past
/// a limit.
fn fits(doc: &Value, max_bytes: usize, max_elements: usize) -> bool {
    fn walk(v: &Value, bytes: &mut usize, elements: &mut usize, max_bytes: usize, max_elements: usize) -> bool {
        // Separators and quotes: about two bytes per node.
        *bytes += 2;
        match v {
            Value::Array(items) => {
                return items
                    .iter()
                    .all(|item| walk(item, bytes, elements, max_bytes, max_elements));
            }
            Value::Object(map) => {
                *elements += 1;
                for (key, child) in map {
                    *bytes += key.len() + 3;
                    if !walk(child, bytes, elements, max_bytes, max_elements) {
                        return false;
                    }
                }
            }
            Value::String(s) => {
                *elements += 1;
                *bytes += s.len();
            }
            _ => {
                *elements += 1;
                *bytes += 4;
            }
        }
        *bytes <= max_bytes && *elements <= max_elements
    }
    walk(doc, &mut 0, &mut 0, max_bytes, max_elements)
}

/// Records the version acted on in the request's audit record.
fn audit_version(ctx: &Ctx, rt: ResourceType, v: &Version) {
    ctx.audit(|d| {
        d.entities = vec![format!("{rt}/{}/_history/{}", v.res_id, v.version_id)];
        d.resource = v.body.clone().map(|b| (rt, b));
    });
}

/// Reads, parses and checks a request body for `rt`.
async fn parse_body(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    rt: ResourceType,
) -> Result<Value, Error> {
    let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let format = Format::from_content_type(content_type)?;
    let body = read_body(req, payload, state.config.max_body_bytes).await?;
    let resource = fhir::parse_resource(&body, format)?;
    let found = resource.get("resourceType").and_then(Value::as_str).unwrap_or("");
    if found != rt.as_str() {
        return Err(Error::Structure(format!(
            "the body is a {found}, but the URL is for {rt}"
        )));
    }
    Ok(resource)
}

/// The answer to a create or update, shaped by `Prefer: return=`; with `show_body` false (the
/// caller may not read what it would see) a representation is answered as `return=minimal`.
fn written(
    ctx: &Ctx,
    req: &HttpRequest,
    status: StatusCode,
    v: &Version,
    show_body: bool,
) -> Result<HttpResponse, Error> {
    let location = ctx.url(&format!("{}/{}/_history/{}", v.res_type, v.res_id, v.version_id));
    let mut builder = HttpResponse::build(status);
    builder.insert_header((header::LOCATION, location));
    let preference = match Prefer::of(req).return_ {
        ReturnPreference::Representation if !show_body => ReturnPreference::Minimal,
        p => p,
    };
    match preference {
        ReturnPreference::Representation => ctx.version(builder, v),
        ReturnPreference::Minimal => {
            version_headers(&mut builder, v);
            Ok(builder.finish())
        }
        ReturnPreference::OperationOutcome => {
            version_headers(&mut builder, v);
            let verb = if status == StatusCode::CREATED {
                "created"
            } else {
                "updated"
            };
            let outcome = fhir::operation_outcome(
                "information",
                "informational",
                &format!("{}/{} {verb} as version {}", v.res_type, v.res_id, v.version_id),
            );
            Ok(ctx.body(builder, &outcome))
        }
    }
}

#[utoipa::path(
    post,
    path = "/{type}",
    operation_id = "create",
    summary = "Create a {type}",
    description = "Stores a new {type}; the server assigns its id and version. With If-None-Exist it is a conditional create: nothing is created when the search matches one {type} (200), and 412 when it matches several. A conditional create also needs search ({type}.s), and returns the matching {type} only with read ({type}.r; otherwise as return=minimal).",
    params(("type" = String, Path, description = "A resource type this server hosts"), ("If-None-Exist" = Option<String>, Header, description = "Search parameters, such as identifier=http://clinic.example|42: create only if nothing matches"), ("Prefer" = Option<String>, Header, description = "return=minimal (no body), return=representation (the default) or return=OperationOutcome")),
    request_body(content = docs::ResourceOfType, content_type = "application/fhir+json", description = "The {type} to create (an id in it is ignored)"),
    responses(
        (status = 201, description = "Created: the stored {type} (none with Prefer: return=minimal)", body = docs::ResourceOfType, content_type = "application/fhir+json", headers(("Location" = String, description = "The new version's URL: [base]/[type]/[id]/_history/[vid]"), ("ETag" = String, description = "The version, as W/\"n\""), ("Last-Modified" = String, description = "When this version was stored"))),
        (status = 200, description = "If-None-Exist matched one {type}, which is returned (with read on {type}); nothing was created", body = docs::ResourceOfType, content_type = "application/fhir+json", headers(("ETag" = String, description = "The version, as W/\"n\""), ("Last-Modified" = String, description = "When this version was stored"))),
        (status = 409, description = "A scheduling clash (double booking) or a conflicting write", body = docs::OperationOutcome, content_type = "application/fhir+json"),
        (status = 412, description = "If-None-Exist matched more than one {type}", body = docs::OperationOutcome, content_type = "application/fhir+json"),
        (status = 422, description = "The {type} breaks an R4 invariant (issue code invariant, one issue per broken constraint: its key in diagnostics, the element's path in expression) or a business rule (a reference to nothing, a session without a signed agreement)", body = docs::OperationOutcome, content_type = "application/fhir+json"),
    ),
    extensions(("x-scopes" = json!(["{type}.c"]))),
)]
pub async fn create(
    req: HttpRequest,
    ctx: Ctx,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    ctx.negotiated()?;
    let rt = resource_type(&path)?;
    // http.html#create defines no query on `POST [type]`. Criteria there (fhirpy's get_or_create
    // puts them there) would otherwise be dropped and a duplicate created: refused, pointing to
    // the header FHIR defines for them.
    let in_url: Vec<String> = query_pairs(&req)
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k != "_format" && k != "_pretty")
        .collect();
    if !in_url.is_empty() {
        return Err(Error::Invalid(format!(
            "POST {rt} takes no search parameters in its URL (got {}); for a conditional create, send the criteria in the If-None-Exist header",
            in_url.join(", ")
        )));
    }
    let grant = ctx.grant(rt.as_str(), Permission::Create)?;
    let if_none_exist = match req.headers().get("if-none-exist") {
        Some(v) => {
            let text = v
                .to_str()
                .map_err(|_| Error::Invalid("If-None-Exist is not a valid header value".into()))?;
            Some(criteria(&ctx, rt, &conditional_grant(&ctx, rt, &grant)?, text)?)
        }
        None => None,
    };
    let resource = parse_body(&req, payload, &state, rt).await?;
    let op = Op::Create {
        label: format!("create {rt}"),
        rt,
        // http.html#create: an id in the body is ignored; the server assigns one.
        id: crate::resources::new_id(),
        resource,
        access: write_access(&ctx, rt, &grant),
        if_none_exist,
        full_url: None,
    };
    let store = state.store.clone();
    match blocking(move || store.run(op)).await? {
        OpResult::Created(version) => {
            audit_version(&ctx, rt, &version);
            written(&ctx, &req, StatusCode::CREATED, &version, true)
        }
        // http.html#ccreate: one match, so nothing is created; 200 with the match, whose body
        // only a caller that may read it sees.
        OpResult::Existing(version) => {
            audit_version(&ctx, rt, &version);
            let show = may_read(&ctx, rt, &version);
            written(&ctx, &req, StatusCode::OK, &version, show)
        }
        other => Err(Error::Internal(format!("create answered {other:?}"))),
    }
}

#[utoipa::path(
    method(get, head),
    path = "/{type}/{id}",
    operation_id = "read",
    summary = "Read a {type}",
    description = "The current version of one {type}. HEAD answers the same headers without the body.",
    params(("type" = String, Path, description = "A resource type this server hosts"), ("id" = String, Path, description = "The logical id of the resource")),
    responses(
        (status = 200, description = "The current version", body = docs::ResourceOfType, content_type = "application/fhir+json", headers(("ETag" = String, description = "The version, as W/\"n\""), ("Last-Modified" = String, description = "When this version was stored"))),
        (status = 404, description = "No {type} has this id", body = docs::OperationOutcome, content_type = "application/fhir+json"),
        (status = 410, description = "The {type} was deleted", body = docs::OperationOutcome, content_type = "application/fhir+json"),
    ),
    extensions(("x-scopes" = json!(["{type}.r"]))),
)]
pub async fn read(
    ctx: Ctx,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    ctx.negotiated()?;
    let (type_name, id) = path.into_inner();
    let (rt, id) = instance(&type_name, id)?;
    let grant = ctx.grant(rt.as_str(), Permission::Read)?;
    let store = state.store.clone();
    let reach = ctx.reach_of(&grant);
    let version = match store.read_gathered(rt, id, reach) {
        Ok(answer) => answer.await?,
        Err((id, reach)) => blocking(move || store.read_visible(rt, &id, &reach)).await?,
    };
    audit_version(&ctx, rt, &version);
    ctx.version(HttpResponse::Ok(), &version)
}

#[utoipa::path(
    method(get, head),
    path = "/{type}/{id}/_history/{vid}",
    operation_id = "vread",
    summary = "Read one version of a {type}",
    description = "A specific version of a {type}, as it was stored.",
    params(("type" = String, Path, description = "A resource type this server hosts"), ("id" = String, Path, description = "The logical id of the resource"), ("vid" = String, Path, description = "The version id (meta.versionId)")),
    responses(
        (status = 200, description = "That version", body = docs::ResourceOfType, content_type = "application/fhir+json", headers(("ETag" = String, description = "The version, as W/\"n\""), ("Last-Modified" = String, description = "When this version was stored"))),
        (status = 404, description = "No such version", body = docs::OperationOutcome, content_type = "application/fhir+json"),
        (status = 410, description = "That version is a deletion", body = docs::OperationOutcome, content_type = "application/fhir+json"),
    ),
    extensions(("x-scopes" = json!(["{type}.r"]))),
)]
pub async fn vread(
    ctx: Ctx,
    path: web::Path<(String, String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    ctx.negotiated()?;
    let (type_name, id, vid) = path.into_inner();
    let rt = resource_type(&type_name)?;
    let grant = ctx.grant(rt.as_str(), Permission::Read)?;
    let version_id = vid
        .parse::<i64>()
        .ok()
        .filter(|_| is_valid_id(&id))
        .ok_or_else(|| Error::NotFound(format!("{rt}/{id} has no version '{vid}'")))?;
    let store = state.store.clone();
    let reach = ctx.reach_of(&grant);
    let version = blocking(move || store.vread_visible(rt, &id, version_id, &reach)).await?;
    audit_version(&ctx, rt, &version);
    ctx.version(HttpResponse::Ok(), &version)
}

/// Runs an update or patch and answers it (201 when it created the resource). `needs_read`: the
/// stored version is shown only to a caller that may read it (a patch's result is more than what
/// the caller sent).
async fn run_write(
    ctx: &Ctx,
    req: &HttpRequest,
    state: &AppState,
    rt: ResourceType,
    op: Op,
    needs_read: bool,
) -> Result<HttpResponse, Error> {
    let store = state.store.clone();
    match blocking(move || store.run(op)).await? {
        OpResult::Updated(UpdateOutcome { version, created }) => {
            audit_version(ctx, rt, &version);
            let status = if created { StatusCode::CREATED } else { StatusCode::OK };
            let show = !needs_read || may_read(ctx, rt, &version);
            written(ctx, req, status, &version, show)
        }
        other => Err(Error::Internal(format!("update answered {other:?}"))),
    }
}

#[utoipa::path(
    put,
    path = "/{type}/{id}",
    operation_id = "update",
    summary = "Update (or create) a {type}",
    description = "Stores a new version of the {type} with this id, or creates it with this id when there is none (update as create). The body's id must equal the id in the URL. If-Match makes it a version-aware update.",
    params(("type" = String, Path, description = "A resource type this server hosts"), ("id" = String, Path, description = "The logical id of the resource"), ("If-Match" = Option<String>, Header, description = "Only if the current version is this one (W/\"n\"), else 412"), ("Prefer" = Option<String>, Header, description = "return=minimal (no body), return=representation (the default) or return=OperationOutcome")),
    request_body(content = docs::ResourceOfType, content_type = "application/fhir+json", description = "The whole new {type}, with the same id as the URL"),
    responses(
        (status = 200, description = "Updated: the stored version", body = docs::ResourceOfType, content_type = "application/fhir+json", headers(("ETag" = String, description = "The version, as W/\"n\""), ("Last-Modified" = String, description = "When this version was stored"))),
        (status = 201, description = "Created with the id of the URL", body = docs::ResourceOfType, content_type = "application/fhir+json", headers(("Location" = String, description = "The new version's URL: [base]/[type]/[id]/_history/[vid]"), ("ETag" = String, description = "The version, as W/\"n\""), ("Last-Modified" = String, description = "When this version was stored"))),
        (status = 409, description = "A scheduling clash (double booking)", body = docs::OperationOutcome, content_type = "application/fhir+json"),
        (status = 412, description = "If-Match names a version that is not the current one", body = docs::OperationOutcome, content_type = "application/fhir+json"),
        (status = 422, description = "The {type} breaks an R4 invariant (issue code invariant, with the constraint's key and the element's path) or a business rule", body = docs::OperationOutcome, content_type = "application/fhir+json"),
    ),
    extensions(("x-scopes" = json!(["{type}.u"]))),
)]
pub async fn update(
    req: HttpRequest,
    ctx: Ctx,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    ctx.negotiated()?;
    let (type_name, id) = path.into_inner();
    let rt = resource_type(&type_name)?;
    if !is_valid_id(&id) {
        return Err(Error::Invalid(format!(
            "'{id}' is not a valid resource id (1 to 64 of A-Z a-z 0-9 - .)"
        )));
    }
    let grant = ctx.grant(rt.as_str(), Permission::Update)?;
    let expected = if_match(&req)?;
    let resource = parse_body(&req, payload, &state, rt).await?;
    // http.html#update: the body SHALL carry the id of the URL.
    match resource.get("id").and_then(Value::as_str) {
        Some(body_id) if body_id == id => {}
        Some(body_id) => {
            return Err(Error::Structure(format!(
                "the id in the body ('{body_id}') differs from the id in the URL ('{id}')"
            )))
        }
        None => {
            return Err(Error::Structure(format!(
                "the body has no id; an update of {rt}/{id} must carry id '{id}'"
            )))
        }
    }
    let op = Op::Update {
        label: format!("update {rt}/{id}"),
        rt,
        target: Target::Id(id),
        resource,
        if_match: expected,
        access: write_access(&ctx, rt, &grant),
        full_url: None,
    };
    run_write(&ctx, &req, &state, rt, op, false).await
}

/// PUT [type]?criteria (http.html#cond-update): one match is updated, none creates, more is 412.
#[utoipa::path(
    put,
    path = "/{type}",
    operation_id = "conditionalUpdate",
    summary = "Update a {type} found by search",
    description = "Conditional update: the query (such as ?identifier=system|value) selects the {type} to update. No match: the body is created (201); one match: it is updated (200); several: 412. It searches, so it needs search on {type} too.",
    params(("type" = String, Path, description = "A resource type this server hosts"), ("Prefer" = Option<String>, Header, description = "return=minimal (no body), return=representation (the default) or return=OperationOutcome")),
    request_body(content = docs::ResourceOfType, content_type = "application/fhir+json", description = "The whole new {type}"),
    responses(
        (status = 200, description = "The one match was updated", body = docs::ResourceOfType, content_type = "application/fhir+json", headers(("ETag" = String, description = "The version, as W/\"n\""), ("Last-Modified" = String, description = "When this version was stored"))),
        (status = 201, description = "Nothing matched: created", body = docs::ResourceOfType, content_type = "application/fhir+json", headers(("Location" = String, description = "The new version's URL: [base]/[type]/[id]/_history/[vid]"), ("ETag" = String, description = "The version, as W/\"n\""), ("Last-Modified" = String, description = "When this version was stored"))),
        (status = 409, description = "A scheduling clash (double booking)", body = docs::OperationOutcome, content_type = "application/fhir+json"),
        (status = 412, description = "More than one {type} matched", body = docs::OperationOutcome, content_type = "application/fhir+json"),
        (status = 422, description = "The {type} breaks an R4 invariant (issue code invariant, with the constraint's key and the element's path) or a business rule", body = docs::OperationOutcome, content_type = "application/fhir+json"),
    ),
    extensions(("x-scopes" = json!(["{type}.u", "{type}.s"])), ("x-search" = json!("audit"))),
)]
pub async fn conditional_update(
    req: HttpRequest,
    ctx: Ctx,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    ctx.negotiated()?;
    let rt = resource_type(&path)?;
    let grant = ctx.grant(rt.as_str(), Permission::Update)?;
    let planned = criteria(&ctx, rt, &conditional_grant(&ctx, rt, &grant)?, req.query_string())?;
    let expected = if_match(&req)?;
    let resource = parse_body(&req, payload, &state, rt).await?;
    let op = Op::Update {
        label: format!("conditional update of {rt}"),
        rt,
        target: Target::Search(planned),
        resource,
        if_match: expected,
        access: write_access(&ctx, rt, &grant),
        full_url: None,
    };
    run_write(&ctx, &req, &state, rt, op, false).await
}

/// PATCH [type]/[id] with a JSON Patch body.
#[utoipa::path(
    patch,
    path = "/{type}/{id}",
    operation_id = "patch",
    summary = "Patch a {type} with JSON Patch",
    description = "Applies a JSON Patch (RFC 6902) to the current version and stores the result, validated like any update. If-Match makes it version-aware. A patch that changes nothing stores nothing (200 with the current version). The result is returned only with read on {type} (otherwise as return=minimal).",
    params(("type" = String, Path, description = "A resource type this server hosts"), ("id" = String, Path, description = "The logical id of the resource"), ("If-Match" = Option<String>, Header, description = "Only if the current version is this one (W/\"n\"), else 412"), ("Prefer" = Option<String>, Header, description = "return=minimal (no body), return=representation (the default) or return=OperationOutcome")),
    request_body(content = docs::JsonPatch, content_type = "application/json-patch+json", description = "The operations to apply, in order"),
    responses(
        (status = 200, description = "Patched: the stored version", body = docs::ResourceOfType, content_type = "application/fhir+json", headers(("ETag" = String, description = "The version, as W/\"n\""), ("Last-Modified" = String, description = "When this version was stored"))),
        (status = 404, description = "No {type} has this id", body = docs::OperationOutcome, content_type = "application/fhir+json"),
        (status = 409, description = "A scheduling clash (double booking)", body = docs::OperationOutcome, content_type = "application/fhir+json"),
        (status = 410, description = "The {type} was deleted", body = docs::OperationOutcome, content_type = "application/fhir+json"),
        (status = 412, description = "If-Match names a version that is not the current one", body = docs::OperationOutcome, content_type = "application/fhir+json"),
        (status = 422, description = "The patch does not apply, or its result is not a valid {type} or breaks an R4 invariant", body = docs::OperationOutcome, content_type = "application/fhir+json"),
    ),
    extensions(("x-scopes" = json!(["{type}.u"]))),
)]
pub async fn patch(
    req: HttpRequest,
    ctx: Ctx,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    let (type_name, id) = path.into_inner();
    run_patch(&req, &ctx, &state, payload, &type_name, Some(id)).await
}

/// PATCH [type]?criteria with a JSON Patch body: the one matching resource is patched.
#[utoipa::path(
    patch,
    path = "/{type}",
    operation_id = "conditionalPatch",
    summary = "Patch a {type} found by search",
    description = "Conditional patch: the query selects exactly one {type}, which is patched. No match: 404; several: 412. It searches, so it needs search on {type} too; the result is returned only with read on {type}.",
    params(("type" = String, Path, description = "A resource type this server hosts"), ("Prefer" = Option<String>, Header, description = "return=minimal (no body), return=representation (the default) or return=OperationOutcome")),
    request_body(content = docs::JsonPatch, content_type = "application/json-patch+json", description = "The operations to apply, in order"),
    responses(
        (status = 200, description = "The one match was patched", body = docs::ResourceOfType, content_type = "application/fhir+json", headers(("ETag" = String, description = "The version, as W/\"n\""), ("Last-Modified" = String, description = "When this version was stored"))),
        (status = 404, description = "Nothing matched", body = docs::OperationOutcome, content_type = "application/fhir+json"),
        (status = 409, description = "A scheduling clash (double booking)", body = docs::OperationOutcome, content_type = "application/fhir+json"),
        (status = 412, description = "More than one {type} matched", body = docs::OperationOutcome, content_type = "application/fhir+json"),
        (status = 422, description = "The patch does not apply, or its result is not valid or breaks an R4 invariant", body = docs::OperationOutcome, content_type = "application/fhir+json"),
    ),
    extensions(("x-scopes" = json!(["{type}.u", "{type}.s"])), ("x-search" = json!("audit"))),
)]
pub async fn conditional_patch(
    req: HttpRequest,
    ctx: Ctx,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    run_patch(&req, &ctx, &state, payload, &path, None).await
}

async fn run_patch(
    req: &HttpRequest,
    ctx: &Ctx,
    state: &AppState,
    payload: web::Payload,
    type_name: &str,
    id: Option<String>,
) -> Result<HttpResponse, Error> {
    ctx.negotiated()?;
    let rt = resource_type(type_name)?;
    let grant = ctx.grant(rt.as_str(), Permission::Update)?;
    let target = match id {
        Some(id) if is_valid_id(&id) => Target::Id(id),
        Some(id) => return Err(Error::NotFound(format!("'{id}' is not a valid resource id"))),
        None => Target::Search(criteria(
            ctx,
            rt,
            &conditional_grant(ctx, rt, &grant)?,
            req.query_string(),
        )?),
    };
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type
        .trim()
        .to_ascii_lowercase()
        .starts_with("application/json-patch+json")
    {
        return Err(Error::UnsupportedMediaType(
            "PATCH takes a JSON Patch document (Content-Type: application/json-patch+json)".into(),
        ));
    }
    let expected = if_match(req)?;
    let body = read_body(req, payload, state.config.max_body_bytes).await?;
    let op = Op::Patch {
        label: format!("patch of {rt}"),
        rt,
        target,
        patcher: json_patch(&body, PatchLimits::of(&state.config))?,
        if_match: expected,
        access: WriteAccess {
            may_create: false,
            ..write_access(ctx, rt, &grant)
        },
    };
    run_write(ctx, req, state, rt, op, true).await
}

/// Deletes by id, or by criteria (http.html#cdelete: none matching is success; more than one is 412).
async fn run_delete(
    ctx: &Ctx,
    req: &HttpRequest,
    state: &AppState,
    rt: ResourceType,
    target: Target,
    grant: &Grant,
) -> Result<HttpResponse, Error> {
    let op = Op::Delete {
        label: format!("delete of {rt}"),
        rt,
        target,
        if_match: if_match(req)?,
        access: write_access(ctx, rt, grant),
    };
    let store = state.store.clone();
    let deleted = match blocking(move || store.run(op)).await? {
        OpResult::Deleted(d) => d,
        other => return Err(Error::Internal(format!("delete answered {other:?}"))),
    };
    // http.html#delete: deleting a resource that does not exist, or no longer exists, also succeeds.
    let mut builder = HttpResponse::NoContent();
    if let Some(v) = &deleted {
        ctx.audit(|d| d.entities = vec![format!("{rt}/{}/_history/{}", v.res_id, v.version_id)]);
        builder.insert_header((header::ETAG, super::etag(v.version_id)));
    }
    Ok(builder.finish())
}

#[utoipa::path(
    delete,
    path = "/{type}/{id}",
    operation_id = "delete",
    summary = "Delete a {type}",
    description = "Logical delete: the {type} is no longer read or found, its history stays. Deleting what is already deleted or never existed succeeds too.",
    params(("type" = String, Path, description = "A resource type this server hosts"), ("id" = String, Path, description = "The logical id of the resource"), ("If-Match" = Option<String>, Header, description = "Only if the current version is this one (W/\"n\"), else 412")),
    responses(
        (status = 204, description = "Deleted, or there was nothing to delete"),
        (status = 412, description = "If-Match names a version that is not the current one (or the resource does not exist); nothing was deleted", body = docs::OperationOutcome, content_type = "application/fhir+json"),
    ),
    extensions(("x-scopes" = json!(["{type}.d"]))),
)]
pub async fn delete(
    req: HttpRequest,
    ctx: Ctx,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    ctx.negotiated()?;
    let (type_name, id) = path.into_inner();
    let (rt, id) = instance(&type_name, id)?;
    let grant = ctx.grant(rt.as_str(), Permission::Delete)?;
    run_delete(&ctx, &req, &state, rt, Target::Id(id), &grant).await
}

#[utoipa::path(
    delete,
    path = "/{type}",
    operation_id = "conditionalDelete",
    summary = "Delete a {type} found by search",
    description = "Conditional delete (single): the query selects the {type} to delete. No match: 204 (nothing to do); one match: deleted; several: 412. It searches, so it needs search on {type} too.",
    params(("type" = String, Path, description = "A resource type this server hosts"), ("If-Match" = Option<String>, Header, description = "Only if the match's current version is this one (W/\"n\"), else 412")),
    responses(
        (status = 204, description = "Nothing matched, or the one match was deleted"),
        (status = 412, description = "More than one {type} matched, or If-Match names another version; nothing was deleted", body = docs::OperationOutcome, content_type = "application/fhir+json"),
    ),
    extensions(("x-scopes" = json!(["{type}.d", "{type}.s"])), ("x-search" = json!("audit"))),
)]
pub async fn conditional_delete(
    req: HttpRequest,
    ctx: Ctx,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    ctx.negotiated()?;
    let rt = resource_type(&path)?;
    let grant = ctx.grant(rt.as_str(), Permission::Delete)?;
    let planned = criteria(&ctx, rt, &conditional_grant(&ctx, rt, &grant)?, req.query_string())?;
    run_delete(&ctx, &req, &state, rt, Target::Search(planned), &grant).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_narrower_grant_is_the_compartment_one() {
        let ann = || Grant::Patient("ann".into());
        assert_eq!(narrower(Grant::All, Grant::All), Grant::All);
        assert_eq!(narrower(Grant::All, ann()), ann());
        assert_eq!(narrower(ann(), Grant::All), ann());
        assert_eq!(narrower(ann(), ann()), ann());
    }
}
