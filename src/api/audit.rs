//! The audit trail over REST: `GET /AuditEvent/{id}` and `GET /AuditEvent?…` (or POST `_search`),
//! for tokens whose scopes name AuditEvent in the `system/` context. AuditEvents are append-only:
//! create, update, patch and delete are 405 for everyone.

use super::docs;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::search::{form_pairs, strict_handling};
use super::{blocking, query_pairs, AppState, Ctx};
use crate::auth::{Permission, AUDIT_EVENT};
use crate::error::Error;
use crate::fhir;
use crate::resources::{dates, is_valid_id};
use crate::search::audit::plan_audit;
use crate::search::{Search, Total};

#[utoipa::path(
    method(get, head),
    path = "/AuditEvent/{id}",
    operation_id = "readAuditEvent",
    summary = "Read an AuditEvent",
    description = "One record of the audit trail. Needs system/AuditEvent.rs (or .read); audit records cannot be changed or deleted.",
    params(("id" = String, Path, description = "The logical id of the resource")),
    responses(
        (status = 200, description = "The AuditEvent", body = docs::AuditEvent, content_type = "application/fhir+json"),
        (status = 404, description = "No AuditEvent has this id", body = docs::OperationOutcome, content_type = "application/fhir+json"),
    ),
    extensions(("x-scopes" = json!(["AuditEvent.r"])), ("x-contexts" = json!(["system"]))),
)]
pub async fn read(ctx: Ctx, path: web::Path<String>, state: web::Data<AppState>) -> Result<HttpResponse, Error> {
    ctx.negotiated()?;
    ctx.grant_all(AUDIT_EVENT, Permission::Read)?;
    let id = path.into_inner();
    if !is_valid_id(&id) {
        return Err(Error::NotFound(format!("'{id}' is not a valid resource id")));
    }
    let store = state.audit_store.clone();
    let lookup = id.clone();
    let body = blocking(move || store.audit_read(&lookup))
        .await?
        .ok_or_else(|| Error::NotFound(format!("AuditEvent/{id} is not known")))?;
    let value = crate::audit::render(&body).map_err(Error::Internal)?;
    Ok(ctx.body(HttpResponse::Ok(), &value))
}

#[utoipa::path(
    get,
    path = "/AuditEvent",
    operation_id = "searchAuditEvent",
    summary = "Search the audit trail",
    description = "Who did what, when, to which record: search by date, agent, entity, patient, action, outcome, subtype, type or address. Needs system/AuditEvent.rs.",
    responses(
        (status = 200, description = "A page of AuditEvents (a searchset Bundle)", body = docs::Bundle, content_type = "application/fhir+json"),
    ),
    extensions(("x-scopes" = json!(["AuditEvent.s"])), ("x-contexts" = json!(["system"])), ("x-search" = json!("audit"))),
)]
pub async fn search(req: HttpRequest, ctx: Ctx, state: web::Data<AppState>) -> Result<HttpResponse, Error> {
    run(&req, &ctx, &state, query_pairs(&req)).await
}

#[utoipa::path(
    post,
    path = "/AuditEvent/_search",
    operation_id = "searchAuditEventPost",
    summary = "Search the audit trail (POST)",
    description = "The audit search with its parameters in a form-encoded body.",
    request_body(content = docs::SearchForm, content_type = "application/x-www-form-urlencoded", description = "Search parameters, form-encoded"),
    responses(
        (status = 200, description = "A page of AuditEvents (a searchset Bundle)", body = docs::Bundle, content_type = "application/fhir+json"),
    ),
    extensions(("x-scopes" = json!(["AuditEvent.s"])), ("x-contexts" = json!(["system"]))),
)]
pub async fn search_post(
    req: HttpRequest,
    ctx: Ctx,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    let pairs = form_pairs(&req, payload, &state).await?;
    ctx.audit(|d| d.query = Some(super::search::encode_pairs(&pairs)));
    run(&req, &ctx, &state, pairs).await
}

async fn run(
    req: &HttpRequest,
    ctx: &Ctx,
    state: &AppState,
    pairs: Vec<(String, String)>,
) -> Result<HttpResponse, Error> {
    ctx.negotiated()?;
    ctx.grant_all(AUDIT_EVENT, Permission::Search)?;
    let search = Search::parse(&pairs)?;
    super::search::check_cost(&search, &state.config)?;
    let plan = plan_audit(&search, strict_handling(req))?;
    let count = search
        .count
        .unwrap_or(i64::from(state.config.default_count))
        .min(i64::from(state.config.max_count));
    let cursor = match &search.cursor {
        Some(c) => Some(
            c.parse::<i64>()
                .map_err(|_| Error::Invalid(format!("_cursor '{c}' is not a cursor from an AuditEvent link")))?,
        ),
        None => None,
    };
    let with_total = search.total == Total::Accurate && pairs.iter().any(|(k, _)| k == "_total");
    let store = state.audit_store.clone();
    let (page_plan, page_cursor) = (plan.clone(), cursor);
    let page = blocking(move || store.audit_search(&page_plan, count, page_cursor, with_total)).await?;

    let mut linked = plan.applied.clone();
    linked.extend(
        pairs
            .iter()
            .filter(|(k, _)| matches!(k.as_str(), "_count" | "_sort" | "_total"))
            .cloned(),
    );
    let link = |c: Option<i64>| super::page_link(ctx, AUDIT_EVENT, &linked, c.map(|c| c.to_string()).as_deref());
    let mut links = vec![json!({"relation": "self", "url": link(cursor)})];
    if let Some(next) = page.next_cursor {
        links.push(json!({"relation": "next", "url": link(Some(next))}));
    }
    let mut entries = Vec::with_capacity(page.bodies.len() + 1);
    for body in &page.bodies {
        let resource = crate::audit::render(body).map_err(Error::Internal)?;
        let url = ctx.url(&format!("AuditEvent/{}", resource["id"].as_str().unwrap_or("")));
        entries.push(json!({"fullUrl": url, "resource": resource, "search": {"mode": "match"}}));
    }
    if !plan.ignored.is_empty() {
        entries.push(json!({"resource": fhir::operation_outcome(
            "warning",
            "not-supported",
            &format!("unknown search parameters were ignored: {}", plan.ignored.join(", ")),
        ), "search": {"mode": "outcome"}}));
    }
    let mut bundle = json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "meta": {"lastUpdated": dates::format_instant(dates::now_millis())},
        "type": "searchset",
        "link": links,
        "entry": entries,
    });
    if let Some(total) = page.total {
        bundle["total"] = json!(total);
    }
    Ok(ctx.body(HttpResponse::Ok(), &bundle))
}
