//! Search (search.html): type search by GET or POST `_search`, and whole-system search. Answers are
//! searchset Bundles with self, next and previous links served from database snapshots.

use super::docs;
use std::collections::HashSet;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Map, Value};

use super::{blocking, query_pairs, read_body, resource_type, AppState, Ctx};
use crate::auth::Permission;
use crate::config::Config;
use crate::error::Error;
use crate::resources::{dates, summary, ResourceType};
use crate::search::plan::plan;
use crate::search::{Include, Search, Summary, Total};
use crate::store::{SearchPage, Version};

/// Rounds of `_include:iterate` / `_revinclude:iterate` followed at most.
pub const MAX_ITERATIONS: usize = 4;
/// Resources included in one page at most; past it the page says so in an OperationOutcome.
pub const MAX_INCLUDED: usize = 1000;

/// The query of a POST `_search` as it would read in a URL (for the audit record).
pub(super) fn encode_pairs(pairs: &[(String, String)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        q.append_pair(k, v);
    }
    q.finish()
}

/// Refuses searches with more criteria and includes than the server allows (400 too-costly).
pub(super) fn check_cost(search: &Search, config: &Config) -> Result<(), Error> {
    let n = search.criteria.len() + search.includes.len() + search.revincludes.len();
    if n > config.max_search_params {
        return Err(Error::TooCostly(format!(
            "the search has {n} criteria and includes; this server allows {} (TANDEM_MAX_SEARCH_PARAMS)",
            config.max_search_params
        )));
    }
    Ok(())
}

/// What the caller may see when searching `rt` (compartment::Reach), or 403.
pub(super) fn search_visibility(ctx: &Ctx, rt: ResourceType) -> Result<crate::resources::compartment::Reach, Error> {
    ctx.reach(rt.as_str(), Permission::Search)
}

/// Whether the caller may read `resource` (of `rt`): its type is granted, and the caller's reach
/// (compartments, psychotherapy notes) holds it.
pub(super) fn may_read(ctx: &Ctx, rt: ResourceType, resource: &Value) -> bool {
    let id = resource.get("id").and_then(Value::as_str).unwrap_or("");
    ctx.reach(rt.as_str(), Permission::Read)
        .is_ok_and(|reach| reach.sees(rt, id, resource))
}

/// The result parameters repeated in page links (criteria come from the plan).
const LINKED_RESULT_PARAMS: [&str; 8] = [
    "_count",
    "_sort",
    "_total",
    "_summary",
    "_elements",
    "_include",
    "_revinclude",
    "_type",
];

pub(super) fn strict_handling(req: &HttpRequest) -> bool {
    super::Prefer::of(req).handling == Some(super::Handling::Strict)
}

/// The parameters of a POST `_search`: the form body and the URL query together.
pub(super) async fn form_pairs(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<Vec<(String, String)>, Error> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type
        .trim()
        .to_ascii_lowercase()
        .starts_with("application/x-www-form-urlencoded")
    {
        return Err(Error::UnsupportedMediaType(
            "POST _search takes an application/x-www-form-urlencoded body".into(),
        ));
    }
    let body = read_body(req, payload, state.config.max_body_bytes).await?;
    let mut pairs = query_pairs(req);
    pairs.extend(crate::search::pairs(&body));
    Ok(pairs)
}

#[utoipa::path(
    get,
    path = "/{type}",
    operation_id = "search",
    summary = "Search {type} resources",
    description = "Finds {type} resources by any of the search parameters listed here (each can take the modifiers and prefixes of the FHIR search spec, such as name:exact=, date=ge2027-01-01 or actor:Practitioner=). The answer is a searchset Bundle; follow its next link for more pages.",
    params(("type" = String, Path, description = "A resource type this server hosts")),
    responses(
        (status = 200, description = "A page of matches (a searchset Bundle)", body = docs::Bundle, content_type = "application/fhir+json"),
    ),
    extensions(("x-scopes" = json!(["{type}.s"])), ("x-search" = json!("type"))),
)]
pub async fn type_search(
    req: HttpRequest,
    ctx: Ctx,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    let rt = resource_type(&path)?;
    run(&req, &ctx, &state, vec![rt], query_pairs(&req), rt.as_str()).await
}

/// GET [type]/_search: the same search as GET [type].
#[utoipa::path(
    get,
    path = "/{type}/_search",
    operation_id = "searchGet",
    summary = "Search {type} resources (GET _search)",
    description = "Finds {type} resources by any of the search parameters listed here (each can take the modifiers and prefixes of the FHIR search spec, such as name:exact=, date=ge2027-01-01 or actor:Practitioner=). The answer is a searchset Bundle; follow its next link for more pages.",
    params(("type" = String, Path, description = "A resource type this server hosts")),
    responses(
        (status = 200, description = "A page of matches (a searchset Bundle)", body = docs::Bundle, content_type = "application/fhir+json"),
    ),
    extensions(("x-scopes" = json!(["{type}.s"])), ("x-search" = json!("type"))),
)]
pub async fn type_search_get(
    req: HttpRequest,
    ctx: Ctx,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    type_search(req, ctx, path, state).await
}

#[utoipa::path(
    post,
    path = "/{type}/_search",
    operation_id = "searchPost",
    summary = "Search {type} resources (POST, parameters in the body)",
    description = "The same search with its parameters in an application/x-www-form-urlencoded body, so that they stay out of URLs and logs.",
    params(("type" = String, Path, description = "A resource type this server hosts")),
    request_body(content = docs::SearchForm, content_type = "application/x-www-form-urlencoded", description = "Search parameters, form-encoded"),
    responses(
        (status = 200, description = "A page of matches (a searchset Bundle)", body = docs::Bundle, content_type = "application/fhir+json"),
    ),
    extensions(("x-scopes" = json!(["{type}.s"]))),
)]
pub async fn type_search_post(
    req: HttpRequest,
    ctx: Ctx,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    let rt = resource_type(&path)?;
    let pairs = form_pairs(&req, payload, &state).await?;
    ctx.audit(|d| d.query = Some(encode_pairs(&pairs)));
    run(&req, &ctx, &state, vec![rt], pairs, rt.as_str()).await
}

/// The types of a system search: those `_type` names (each must be granted), or every type the
/// caller may search.
fn system_types(ctx: &Ctx, pairs: &[(String, String)]) -> Result<Vec<ResourceType>, Error> {
    let named: Vec<&str> = pairs
        .iter()
        .filter(|(k, _)| k == "_type")
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    if named.is_empty() {
        let granted: Vec<ResourceType> = ResourceType::all()
            .filter(|rt| ctx.grant(rt.as_str(), Permission::Search).is_ok())
            .collect();
        if granted.is_empty() {
            return Err(Error::Forbidden(
                "the token's scopes grant search on no resource type".into(),
            ));
        }
        return Ok(granted);
    }
    named.into_iter().map(resource_type).collect()
}

#[utoipa::path(
    get,
    path = "/",
    operation_id = "searchSystem",
    summary = "Search several resource types",
    description = "Whole-system search: _type names the types (default: every type the token may search); only the parameters common to all resources apply.",
    params(("_type" = Option<String>, Query, description = "Comma-separated resource types, such as Patient,Group")),
    responses(
        (status = 200, description = "A page of matches (a searchset Bundle)", body = docs::Bundle, content_type = "application/fhir+json"),
    ),
    extensions(("x-scopes" = json!(["*.s"])), ("x-search" = json!("system"))),
)]
pub async fn system_search(req: HttpRequest, ctx: Ctx, state: web::Data<AppState>) -> Result<HttpResponse, Error> {
    let pairs = query_pairs(&req);
    let types = system_types(&ctx, &pairs)?;
    run(&req, &ctx, &state, types, pairs, "").await
}

#[utoipa::path(
    post,
    path = "/_search",
    operation_id = "searchSystemPost",
    summary = "Search several resource types (POST)",
    description = "Whole-system search with the parameters in a form-encoded body.",
    request_body(content = docs::SearchForm, content_type = "application/x-www-form-urlencoded", description = "Search parameters, form-encoded (_type among them)"),
    responses(
        (status = 200, description = "A page of matches (a searchset Bundle)", body = docs::Bundle, content_type = "application/fhir+json"),
    ),
    extensions(("x-scopes" = json!(["*.s"]))),
)]
pub async fn system_search_post(
    req: HttpRequest,
    ctx: Ctx,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    let pairs = form_pairs(&req, payload, &state).await?;
    ctx.audit(|d| d.query = Some(encode_pairs(&pairs)));
    let types = system_types(&ctx, &pairs)?;
    run(&req, &ctx, &state, types, pairs, "").await
}

async fn run(
    req: &HttpRequest,
    ctx: &Ctx,
    state: &AppState,
    types: Vec<ResourceType>,
    pairs: Vec<(String, String)>,
    path: &str,
) -> Result<HttpResponse, Error> {
    ctx.negotiated()?;
    let search = Search::parse(&pairs)?;
    check_cost(&search, &state.config)?;
    let visible = |rt: ResourceType| search_visibility(ctx, rt);
    let planned = plan(&types, &search, strict_handling(req), &visible)?;
    let count = search
        .count
        .unwrap_or(i64::from(state.config.default_count))
        .min(i64::from(state.config.max_count));

    // The query that links repeat: the criteria that were applied, then the result parameters.
    let mut linked = planned.applied.clone();
    linked.extend(
        pairs
            .iter()
            .filter(|(k, _)| LINKED_RESULT_PARAMS.contains(&k.split(':').next().unwrap_or("")))
            .cloned(),
    );
    let link = |cursor: Option<String>| super::page_link(ctx, path, &linked, cursor.as_deref());

    let store = state.store.clone();
    if search.summary == Summary::Count {
        let planned = planned.clone();
        let total = blocking(move || store.count(&planned)).await?;
        let bundle = json!({
            "resourceType": "Bundle", "id": uuid::Uuid::new_v4().to_string(),
            "meta": {"lastUpdated": dates::format_instant(dates::now_millis())},
            "type": "searchset", "total": total,
            "link": [{"relation": "self", "url": link(None)}],
        });
        return Ok(ctx.body(HttpResponse::Ok(), &bundle));
    }

    let (page_plan, cursor) = (planned.clone(), search.cursor.clone());
    let with_total = search.total != Total::None;
    let page = blocking(move || store.search(&page_plan, count, cursor.as_deref(), with_total)).await?;
    let (included, cut) = includes(ctx, state, &page.matches, &search.includes, &search.revincludes).await?;

    // One warning issue per thing the answer leaves out, each with its own code: an unknown
    // parameter was not applied (not-supported), includes were cut at the limit (too-costly).
    let mut warnings = Vec::new();
    if !planned.ignored.is_empty() {
        warnings.push(json!({
            "severity": "warning", "code": "not-supported",
            "diagnostics": format!("unknown search parameters were ignored: {}", planned.ignored.join(", ")),
        }));
    }
    if cut {
        warnings.push(json!({
            "severity": "warning", "code": "too-costly",
            "diagnostics": format!("more than {MAX_INCLUDED} resources would be included; only the first {MAX_INCLUDED} are"),
        }));
    }
    let outcome = (!warnings.is_empty()).then(|| json!({"resourceType": "OperationOutcome", "issue": warnings}));
    let bundle = searchset(
        ctx,
        &page,
        search.cursor.clone(),
        &link,
        &included,
        outcome,
        search.total != Total::None,
        |r| subset(r, search.summary, &search.elements),
    )?;
    Ok(ctx.body(HttpResponse::Ok(), &bundle))
}

/// A searchset Bundle for one page: self, next and previous links, the matches (shaped by
/// `shape`), included resources, and an optional outcome entry.
#[allow(clippy::too_many_arguments)]
pub fn searchset(
    ctx: &Ctx,
    page: &SearchPage,
    cursor: Option<String>,
    link: &dyn Fn(Option<String>) -> String,
    included: &[Version],
    outcome: Option<Value>,
    with_total: bool,
    shape: impl Fn(Value) -> Value,
) -> Result<Value, Error> {
    let later_page = cursor.is_some();
    let mut links = vec![json!({"relation": "self", "url": link(cursor)})];
    if let Some(next) = &page.next {
        links.push(json!({"relation": "next", "url": link(Some(next.clone()))}));
    }
    if let Some(previous) = &page.previous {
        links.push(json!({"relation": "previous", "url": link(Some(previous.clone()))}));
    }
    let mut entries = Vec::with_capacity(page.matches.len() + included.len() + 1);
    // A later page comes from a snapshot taken at the first: what changed since (a note labelled
    // PSYTHPN, a record that left a compartment, an assignment ended) or a cursor replayed by
    // another caller must not show what this caller may not see now.
    for v in &page.matches {
        let body = parse_body(v)?;
        if later_page && !ResourceType::parse(&v.res_type).is_some_and(|rt| may_read(ctx, rt, &body)) {
            continue;
        }
        let shown = ctx.shown(&v.res_type, body);
        ctx.audit_returned(&v.res_type, &shown);
        let resource = shape(shown);
        entries.push(json!({"fullUrl": ctx.url(&format!("{}/{}", v.res_type, v.res_id)), "resource": resource, "search": {"mode": "match"}}));
    }
    for v in included {
        let shown = ctx.shown(&v.res_type, parse_body(v)?);
        ctx.audit_returned(&v.res_type, &shown);
        entries.push(json!({"fullUrl": ctx.url(&format!("{}/{}", v.res_type, v.res_id)), "resource": shown, "search": {"mode": "include"}}));
    }
    if let Some(outcome) = outcome {
        entries.push(json!({"resource": outcome, "search": {"mode": "outcome"}}));
    }
    let mut bundle = Map::new();
    bundle.insert("resourceType".into(), json!("Bundle"));
    bundle.insert("id".into(), json!(uuid::Uuid::new_v4().to_string()));
    bundle.insert(
        "meta".into(),
        json!({"lastUpdated": dates::format_instant(dates::now_millis())}),
    );
    bundle.insert("type".into(), json!("searchset"));
    if with_total && page.total >= 0 {
        bundle.insert("total".into(), json!(page.total));
    }
    bundle.insert("link".into(), Value::Array(links));
    bundle.insert("entry".into(), Value::Array(entries));
    Ok(Value::Object(bundle))
}

pub fn parse_body(v: &Version) -> Result<Value, Error> {
    let body = v
        .body
        .as_deref()
        .ok_or_else(|| Error::Internal("a search matched a deleted version".into()))?;
    serde_json::from_str(body).map_err(|e| Error::Internal(format!("stored JSON: {e}")))
}

/// `_include` and `_revinclude` for a page, following `:iterate` over what was included, keeping
/// only what the caller may read. True when the cap ([`MAX_INCLUDED`]) cut the list.
async fn includes(
    ctx: &Ctx,
    state: &AppState,
    matches: &[Version],
    includes: &[Include],
    revincludes: &[Include],
) -> Result<(Vec<Version>, bool), Error> {
    if includes.is_empty() && revincludes.is_empty() {
        return Ok((Vec::new(), false));
    }
    let key = |v: &Version| (v.res_type.clone(), v.res_id.clone());
    let mut seen: HashSet<(String, String)> = matches.iter().map(key).collect();
    let mut included: Vec<Version> = Vec::new();
    let mut frontier: Vec<(String, String)> = matches.iter().map(key).collect();
    for round in 0..=MAX_ITERATIONS {
        let active =
            |list: &[Include]| -> Vec<Include> { list.iter().filter(|i| round == 0 || i.iterate).cloned().collect() };
        let (inc, rev) = (active(includes), active(revincludes));
        if frontier.is_empty() || (inc.is_empty() && rev.is_empty()) {
            break;
        }
        let store = state.store.clone();
        let sources = frontier.clone();
        let found = blocking(move || {
            let mut found = Vec::new();
            for i in &inc {
                found.extend(store.include(&sources, i)?);
            }
            for i in &rev {
                found.extend(store.revinclude(&sources, i)?);
            }
            Ok(found)
        })
        .await?;
        frontier.clear();
        for v in found {
            if !seen.insert(key(&v)) {
                continue;
            }
            let readable = ResourceType::parse(&v.res_type)
                .is_some_and(|rt| parse_body(&v).is_ok_and(|body| may_read(ctx, rt, &body)));
            if !readable {
                continue;
            }
            if included.len() == MAX_INCLUDED {
                return Ok((included, true));
            }
            frontier.push(key(&v));
            included.push(v);
        }
    }
    Ok((included, false))
}

/// Whether `key` is one of the elements every resource of the type must keep in a subset: its
/// top-level required elements (R4 minimum 1, from the element table).
fn mandatory(resource_type: &str, key: &str) -> bool {
    crate::fhir::model::types().get(resource_type).is_some_and(|t| {
        t.elements.iter().any(|e| {
            e.min >= 1
                && match &e.choice {
                    Some(choices) => choices.iter().any(|c| key == format!("{}{}", e.name, c.suffix)),
                    None => e.name == key,
                }
        })
    })
}

type KeepElement<'a> = Box<dyn Fn(&str) -> bool + 'a>;

/// `_summary=text|data` and `_elements`, marking the result SUBSETTED (search.html#summary).
fn subset(resource: Value, summary: Summary, elements: &[String]) -> Value {
    if summary == Summary::True {
        let rt = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .and_then(ResourceType::parse);
        let Some(rt) = rt else { return resource };
        return mark_subsetted(summary::summarize(rt, resource));
    }
    let Value::Object(map) = resource else { return resource };
    let resource_type = map
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let keep: Option<KeepElement> = match summary {
        Summary::Text => Some(Box::new(|k: &str| {
            matches!(k, "resourceType" | "id" | "meta" | "text") || mandatory(&resource_type, k)
        })),
        Summary::Data => Some(Box::new(|k: &str| k != "text")),
        _ if !elements.is_empty() => Some(Box::new(|k: &str| {
            matches!(k, "resourceType" | "id" | "meta")
                || mandatory(&resource_type, k)
                || elements.iter().any(|e| e == k)
        })),
        _ => None,
    };
    let Some(keep) = keep else { return Value::Object(map) };
    let out: Map<String, Value> = map.into_iter().filter(|(k, _)| keep(k)).collect();
    mark_subsetted(Value::Object(out))
}

/// Tags a subset so that no one takes it for the whole resource.
fn mark_subsetted(resource: Value) -> Value {
    let Value::Object(mut out) = resource else {
        return resource;
    };
    let meta = out.entry("meta").or_insert_with(|| json!({}));
    if let Some(meta) = meta.as_object_mut() {
        let tags = meta.entry("tag").or_insert_with(|| json!([]));
        if let Some(tags) = tags.as_array_mut() {
            tags.push(json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED", "display": "subsetted"}));
        }
    }
    Value::Object(out)
}
