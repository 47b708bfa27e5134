//! Instance, type and system history (http.html#history): Bundles of type history, newest first.

use super::docs;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::{blocking, query_pairs, resource_type, AppState, Ctx};
use crate::auth::Permission;
use crate::error::Error;
use crate::resources::{dates, ResourceType};
use crate::store::{HistoryScope, Version};

/// Whether a version may appear in the caller's history: its type is granted (`permission`), and
/// the caller's reach (compartment::Reach: compartments, psychotherapy notes) holds the version
/// itself. Deletions, which have no body, are shown only where the reach has no compartment limit.
fn visible_version(ctx: &Ctx, permission: Permission, v: &Version) -> bool {
    let Some(rt) = ResourceType::parse(&v.res_type) else {
        return false;
    };
    let Ok(reach) = ctx.reach(rt.as_str(), permission) else {
        return false;
    };
    if !reach.limits(rt) && rt.as_str() != "DocumentReference" {
        return true;
    }
    match v.body.as_deref().and_then(|b| serde_json::from_str::<Value>(b).ok()) {
        Some(body) => reach.sees(rt, &v.res_id, &body),
        None => !reach.limits(rt),
    }
}

/// `_count`, `_since`, `_at` and the paging cursor of a history request.
struct HistoryParams {
    count: i64,
    since: Option<i64>,
    at: Option<(i64, i64)>,
    /// From a next link: the page's position (seq) and the walk's watermark.
    cursor: Option<(i64, i64)>,
}

fn history_params(req: &HttpRequest, state: &AppState) -> Result<HistoryParams, Error> {
    let mut p = HistoryParams {
        count: i64::from(state.config.default_count),
        since: None,
        at: None,
        cursor: None,
    };
    for (key, value) in query_pairs(req) {
        match key.as_str() {
            "_count" => {
                let n: i64 = value
                    .parse()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| Error::Invalid(format!("_count '{value}' is not a non-negative integer")))?;
                p.count = n.min(i64::from(state.config.max_count));
            }
            "_since" => {
                let range = dates::parse_range(&value)
                    .ok_or_else(|| Error::Invalid(format!("_since '{value}' is not a FHIR instant")))?;
                p.since = Some(range.low);
            }
            "_at" => {
                let range = dates::parse_range(&value)
                    .ok_or_else(|| Error::Invalid(format!("_at '{value}' is not a FHIR date or dateTime")))?;
                p.at = Some((range.low, range.high));
            }
            "_cursor" => {
                let parsed = value
                    .split_once('.')
                    .and_then(|(seq, w)| Some((seq.parse().ok()?, w.parse().ok()?)));
                p.cursor =
                    Some(parsed.ok_or_else(|| {
                        Error::Invalid(format!("_cursor '{value}' is not a cursor from a next link"))
                    })?);
            }
            _ => {}
        }
    }
    Ok(p)
}

async fn history(
    req: HttpRequest,
    ctx: &Ctx,
    state: web::Data<AppState>,
    path: String,
    scope: OwnedScope,
) -> Result<HttpResponse, Error> {
    ctx.negotiated()?;
    let permission = match &scope {
        OwnedScope::Instance(rt, _) => {
            ctx.grant(rt.as_str(), Permission::Read)?;
            Permission::Read
        }
        OwnedScope::Type(rt) => {
            ctx.grant(rt.as_str(), Permission::Search)?;
            Permission::Search
        }
        OwnedScope::System => {
            if !ResourceType::all().any(|rt| ctx.grant(rt.as_str(), Permission::Search).is_ok()) {
                return Err(Error::Forbidden(
                    "the token's scopes grant search on no resource type".into(),
                ));
            }
            Permission::Search
        }
    };
    if let OwnedScope::Instance(rt, id) = &scope {
        // A patient/ token learns nothing of a resource outside its compartment, not even its history.
        let reach = ctx.reach(rt.as_str(), Permission::Read)?;
        if reach.limits(*rt) || rt.as_str() == "DocumentReference" {
            let (store, rt, id) = (state.store.clone(), *rt, id.clone());
            // A deleted record outside the compartment answers as a missing one (read_visible).
            blocking(move || store.read_visible(rt, &id, &reach))
                .await
                .map_err(|e| match e {
                    Error::Gone(m) => Error::NotFound(m),
                    other => other,
                })?;
        }
    }
    let params = history_params(&req, &state)?;
    let store = state.store.clone();
    let (count, since, at, cursor) = (params.count, params.since, params.at, params.cursor);
    // The watermark is taken before the first page is read, and kept through the walk: every write
    // stamped before it is committed and in these pages; every later one is at or after it, so
    // `_since=<Bundle.meta.lastUpdated>` next time misses nothing.
    let (page, watermark) = blocking(move || {
        let watermark = match cursor {
            Some((_, w)) => w,
            None => store.watermark()?,
        };
        let page = store.history(scope.borrowed(), since, at, cursor.map(|c| c.0), count)?;
        Ok((page, watermark))
    })
    .await?;
    let mut links = vec![json!({"relation": "self", "url": link(ctx, &path, &req, None)})];
    if let Some(next) = page.next_before {
        links.push(json!({"relation": "next", "url": link(ctx, &path, &req, Some(format!("{next}.{watermark}")))}));
    }
    // Every version of a DocumentReference the caller may not see as it stands (a psychotherapy
    // note of someone else, labelled or deleted later) is left out, not only the labelled ones.
    let mut notes: Vec<String> = page
        .entries
        .iter()
        .filter(|v| v.res_type == "DocumentReference")
        .map(|v| v.res_id.clone())
        .collect();
    notes.sort();
    notes.dedup();
    let unseen = match (notes.is_empty(), ctx.reach("DocumentReference", permission)) {
        (false, Ok(reach)) => {
            let store = state.store.clone();
            blocking(move || store.unseen_notes(&notes, &reach)).await?
        }
        _ => Default::default(),
    };
    let entries = page
        .entries
        .iter()
        .filter(|v| !(v.res_type == "DocumentReference" && unseen.contains(&v.res_id)))
        .filter(|v| visible_version(ctx, permission, v))
        .map(|v| entry(ctx, v))
        .collect::<Result<Vec<_>, _>>()?;
    let bundle = json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "meta": {"lastUpdated": dates::format_instant(watermark)},
        "type": "history",
        "link": links,
        "entry": entries,
    });
    Ok(ctx.body(HttpResponse::Ok(), &bundle))
}

/// The link to this history page (cursor None) or the next one, keeping the client's parameters.
fn link(ctx: &Ctx, path: &str, req: &HttpRequest, cursor: Option<String>) -> String {
    let pairs = query_pairs(req);
    let kept: Vec<(String, String)> = pairs.iter().filter(|(k, _)| k != "_cursor").cloned().collect();
    let current = pairs.iter().find(|(k, _)| k == "_cursor").map(|(_, c)| c.clone());
    let cursor = cursor.or(current);
    super::page_link(ctx, path, &kept, cursor.as_deref())
}

fn entry(ctx: &Ctx, v: &Version) -> Result<Value, Error> {
    let instance = format!("{}/{}", v.res_type, v.res_id);
    let (method, url, status) = match v.method.as_str() {
        "POST" => ("POST", v.res_type.clone(), "201 Created"),
        "DELETE" => ("DELETE", instance.clone(), "204 No Content"),
        // R4 HTTPVerb has PATCH: a patch is recorded as what it was.
        "PATCH" => ("PATCH", instance.clone(), "200 OK"),
        _ if v.version_id == 1 => ("PUT", instance.clone(), "201 Created"),
        _ => ("PUT", instance.clone(), "200 OK"),
    };
    let mut e = json!({
        "fullUrl": ctx.url(&instance),
        "request": {"method": method, "url": url},
        "response": {"status": status, "etag": super::etag(v.version_id), "lastModified": dates::format_instant(v.last_updated)},
    });
    if let Some(body) = &v.body {
        let resource: Value = serde_json::from_str(body).map_err(|e| Error::Internal(format!("stored JSON: {e}")))?;
        let shown = ctx.shown(&v.res_type, resource);
        ctx.audit_returned(&v.res_type, &shown);
        e["resource"] = shown;
    }
    Ok(e)
}

/// A history scope that owns its id, to move into the blocking task.
enum OwnedScope {
    Instance(crate::resources::ResourceType, String),
    Type(crate::resources::ResourceType),
    System,
}

impl OwnedScope {
    fn borrowed(&self) -> HistoryScope<'_> {
        match self {
            OwnedScope::Instance(rt, id) => HistoryScope::Instance(*rt, id),
            OwnedScope::Type(rt) => HistoryScope::Type(*rt),
            OwnedScope::System => HistoryScope::System,
        }
    }
}

#[utoipa::path(
    get,
    path = "/{type}/{id}/_history",
    operation_id = "historyInstance",
    summary = "History of one {type}",
    description = "Every version of this {type}, newest first, deletions included, as a history Bundle.",
    params(("type" = String, Path, description = "A resource type this server hosts"), ("id" = String, Path, description = "The logical id of the resource"), ("_since" = Option<String>, Query, description = "Only versions stored at or after this instant (such as 2027-01-01T00:00:00Z)"), ("_at" = Option<String>, Query, description = "Only the versions current at this point in time (a date or dateTime)"), ("_count" = Option<u32>, Query, description = "Entries per page")),
    responses(
        (status = 200, description = "A page of versions (a history Bundle)", body = docs::Bundle, content_type = "application/fhir+json"),
        (status = 404, description = "No {type} has this id", body = docs::OperationOutcome, content_type = "application/fhir+json"),
    ),
    extensions(("x-scopes" = json!(["{type}.r"]))),
)]
pub async fn instance_history(
    req: HttpRequest,
    ctx: Ctx,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    let (type_name, id) = path.into_inner();
    let (rt, id) = super::instance(&type_name, id)?;
    history(
        req,
        &ctx,
        state,
        format!("{rt}/{id}/_history"),
        OwnedScope::Instance(rt, id),
    )
    .await
}

#[utoipa::path(
    get,
    path = "/{type}/_history",
    operation_id = "historyType",
    summary = "History of all {type} resources",
    description = "Every change to any {type}, newest first, deletions included. For sync: ask with _since, follow next links to the end, then keep Bundle.meta.lastUpdated of the first page as the next _since; nothing written during the walk is missed.",
    params(("type" = String, Path, description = "A resource type this server hosts"), ("_since" = Option<String>, Query, description = "Only versions stored at or after this instant (such as 2027-01-01T00:00:00Z)"), ("_at" = Option<String>, Query, description = "Only the versions current at this point in time (a date or dateTime)"), ("_count" = Option<u32>, Query, description = "Entries per page")),
    responses(
        (status = 200, description = "A page of versions (a history Bundle)", body = docs::Bundle, content_type = "application/fhir+json"),
    ),
    extensions(("x-scopes" = json!(["{type}.r"])), ("x-contexts" = json!(["system", "user"]))),
)]
pub async fn type_history(
    req: HttpRequest,
    ctx: Ctx,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    let rt = resource_type(&path)?;
    history(req, &ctx, state, format!("{rt}/_history"), OwnedScope::Type(rt)).await
}

#[utoipa::path(
    get,
    path = "/_history",
    operation_id = "historySystem",
    summary = "History of everything",
    description = "Every change to any resource the token may read, newest first, deletions included; the sync rules of the type history apply.",
    params(("_since" = Option<String>, Query, description = "Only versions stored at or after this instant (such as 2027-01-01T00:00:00Z)"), ("_at" = Option<String>, Query, description = "Only the versions current at this point in time (a date or dateTime)"), ("_count" = Option<u32>, Query, description = "Entries per page")),
    responses(
        (status = 200, description = "A page of versions (a history Bundle)", body = docs::Bundle, content_type = "application/fhir+json"),
    ),
    extensions(("x-scopes" = json!(["*.r"])), ("x-contexts" = json!(["system", "user"]))),
)]
pub async fn system_history(req: HttpRequest, ctx: Ctx, state: web::Data<AppState>) -> Result<HttpResponse, Error> {
    history(req, &ctx, state, "_history".to_string(), OwnedScope::System).await
}
