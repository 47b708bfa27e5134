//! What every request passes through, outermost first:
//! - [`frame`]: the request id and its log span, the `request completed` log line (route pattern,
//!   never the path or query), security headers;
//! - [`audit`]: an AuditEvent for every FHIR interaction, refused ones included; it sits outside the
//!   time limit of read-only requests (which it applies inside), so a read cut off is audited too;
//! - [`authenticate`]: a valid bearer token, or 401. What the token may do is decided by each
//!   handler, which knows the interaction and the resource type.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Path, ResourceDef, ServiceRequest, ServiceResponse, Url};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::{Method, Uri};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpRequest};
use tracing::Instrument;

use super::{AppState, Ctx, RequestId};
use crate::audit::AuditRecord;
use crate::auth::Principal;
use crate::error::Error;
use crate::resources::{dates, ResourceType};

/// Paths that need no token and leave no audit record: conformance and discovery documents, probes,
/// metrics and the API docs. None of them holds anyone's record.
pub fn is_public(path: &str) -> bool {
    const EXACT: [&str; 7] = [
        "/metadata",
        "/healthz",
        "/readyz",
        "/metrics",
        "/.well-known/smart-configuration",
        "/openapi.json",
        "/docs",
    ];
    const UNDER: [&str; 5] = [
        "/docs/",
        "/StructureDefinition",
        "/CodeSystem",
        "/OperationDefinition",
        "/SearchParameter",
    ];
    EXACT.contains(&path) || UNDER.iter().any(|p| path.starts_with(p))
}

/// What a handler adds to the audit record of its request.
#[derive(Debug, Clone, Default)]
pub struct AuditDetail {
    /// Overrides the interaction read from the route (a POST to the base is a transaction or a batch).
    pub interaction: Option<&'static str>,
    pub entities: Vec<String>,
    pub resource: Option<(ResourceType, String)>,
    pub patients: Vec<String>,
    /// The search parameters, when they came in a form body rather than the URL.
    pub query: Option<String>,
}

/// Adds to the audit record of the request `req`.
pub fn add_audit_detail(req: &HttpRequest, update: impl FnOnce(&mut AuditDetail)) {
    let mut ext = req.extensions_mut();
    if ext.get::<AuditDetail>().is_none() {
        ext.insert(AuditDetail::default());
    }
    if let Some(detail) = ext.get_mut::<AuditDetail>() {
        update(detail);
    }
}

fn security_headers(path: &str, headers: &mut header::HeaderMap) {
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    let csp = if path == "/docs" || path.starts_with("/docs/") {
        // The API browser: its own scripts and styles only, no outside origin, no framing.
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
         connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    } else {
        // FHIR and JSON answers are data, never a page to render.
        "default-src 'none'; frame-ancestors 'none'; sandbox"
    };
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(csp));
    if !headers.contains_key(header::CACHE_CONTROL) {
        // Health records must not stay in shared or browser caches.
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

/// The innermost layer: a handler's error (`Err(Error)`) becomes its answer here, in one place —
/// an OperationOutcome in the negotiated format, with the request id, the `WWW-Authenticate`
/// challenge of a 401/403, and the refusal noted for the metrics (Ctx::error_response).
pub async fn errors(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let res = next.call(req).await?.map_into_boxed_body();
    let rendered = res
        .response()
        .error()
        .and_then(|e| e.as_error::<crate::error::Error>())
        .map(|e| super::Ctx::of(res.request()).error_response(e));
    Ok(match rendered {
        Some(answer) => res.into_response(answer),
        None => res,
    })
}

/// The outermost layer: request id, log span and line, security headers.
pub async fn frame(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let request_id = super::request_id_from(req.headers().get("x-request-id"));
    req.extensions_mut().insert(RequestId(request_id.clone()));
    let span = tracing::info_span!("request", request_id = %request_id, method = %req.method());
    let started = Instant::now();
    async move {
        // A read cut off by its time limit leaves as an error that carries its whole answer.
        let result = next.call(req).await.map(ServiceResponse::map_into_boxed_body);
        let mut res = result?;
        let elapsed = started.elapsed().as_secs_f64();
        // The route pattern (/{type}/{id}), never the path: ids and query values stay out of logs.
        let pattern = route_pattern(res.request());
        let route = pattern.as_deref().unwrap_or("unmatched");
        tracing::info!(
            status = res.status().as_u16(),
            route = %route,
            latency_ms = elapsed * 1000.0,
            "request completed"
        );
        if let Some(state) = res.request().app_data::<web::Data<AppState>>() {
            let (interaction, resource_type) = metric_labels(res.request(), pattern.as_deref());
            state
                .metrics
                .observe_request(interaction, resource_type, res.status().as_u16(), elapsed);
            if let Some(refusals) = res.request().extensions().get::<BookingRefusals>() {
                refusals.0.iter().for_each(|r| state.metrics.booking_refused(r));
            }
        }
        let path = res.request().path().to_string();
        let headers = res.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            headers.insert(HeaderName::from_static("x-request-id"), v);
        }
        security_headers(&path, headers);
        Ok(res)
    }
    .instrument(span)
    .await
}

/// CORS for the configured origins (none: no cross-origin access, and no CORS headers). A request
/// from another origin is answered as usual but without CORS headers, so the browser withholds the
/// answer: the allow-list is the browser's rule to enforce, not a reason to refuse a server client.
pub fn cors(origins: &[String]) -> actix_web::middleware::Condition<actix_cors::Cors> {
    let mut cors = actix_cors::Cors::default()
        .allowed_methods(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"])
        .allowed_headers([
            header::AUTHORIZATION,
            header::ACCEPT,
            header::CONTENT_TYPE,
            header::IF_MATCH,
            header::IF_NONE_MATCH,
            header::IF_MODIFIED_SINCE,
            HeaderName::from_static("if-none-exist"),
            HeaderName::from_static("prefer"),
            HeaderName::from_static("x-request-id"),
        ])
        .expose_headers([
            header::LOCATION,
            header::ETAG,
            header::LAST_MODIFIED,
            header::CONTENT_LOCATION,
            header::RETRY_AFTER,
            header::WWW_AUTHENTICATE,
            HeaderName::from_static("x-request-id"),
            HeaderName::from_static("x-progress"),
        ])
        .block_on_origin_mismatch(false)
        .max_age(600);
    for origin in origins {
        cors = cors.allowed_origin(origin);
    }
    actix_web::middleware::Condition::new(!origins.is_empty(), cors)
}

/// The restful interaction (and operation name) of a routed request.
fn interaction(method: &Method, pattern: &str, operation: Option<&str>) -> Option<(&'static str, Option<String>)> {
    let i = match (pattern, method.as_str()) {
        ("/{type}" | "/AuditEvent", "GET") | ("/{type}/_search" | "/AuditEvent/_search", _) => "search-type",
        ("/{type}", "POST") => "create",
        // Conditional update, patch and delete (by criteria): the same interactions.
        ("/{type}", "PUT") => "update",
        ("/{type}", "PATCH") => "patch",
        ("/{type}", "DELETE") => "delete",
        ("/", "GET") | ("/_search", _) => "search-system",
        ("/", "POST") => "transaction",
        ("/_history", _) => "history-system",
        ("/{type}/_history", _) => "history-type",
        ("/{type}/{id}" | "/AuditEvent/{id}", "GET" | "HEAD") => "read",
        ("/{type}/{id}", "PUT") => "update",
        ("/{type}/{id}", "PATCH") => "patch",
        ("/{type}/{id}", "DELETE") => "delete",
        ("/{type}/{id}/_history", _) => "history-instance",
        ("/{type}/{id}/_history/{vid}", _) => "vread",
        ("/{type}/{id}/{operation}" | "/{type}/{operation}" | "/{operation}", _) => {
            return Some(("operation", operation.map(str::to_string)));
        }
        ("/AuditEvent" | "/AuditEvent/{id}", _) => "operation",
        ("/$export" | "/Patient/$export", _) => return Some(("operation", Some("$export".into()))),
        ("/$export-status/{job}", _) => return Some(("operation", Some("$export-status".into()))),
        ("/$export-file/{job}/{file}", _) => return Some(("operation", Some("$export-file".into()))),
        _ => return None,
    };
    Some((i, None))
}

/// The route pattern a request matched (`/{type}/{id}`), as the audit layer found it before routing
/// ([`MatchedPattern`]), else from the resource map. Each look in the map runs the route patterns'
/// regular expressions again: one look per request is enough.
fn route_pattern(req: &HttpRequest) -> Option<String> {
    match req.extensions().get::<MatchedPattern>() {
        Some(found) => found.0.clone(),
        None => req.match_pattern(),
    }
}

/// The route pattern of a request, looked up once (by [`audit`]) for every layer that needs it.
#[derive(Debug, Clone)]
pub struct MatchedPattern(pub Option<String>);

/// The metric labels of a request: its interaction (or, for the public endpoints, what they are),
/// and its resource type when it names a hosted one. Closed sets only: nothing from the URL.
fn metric_labels(req: &HttpRequest, pattern: Option<&str>) -> (&'static str, &'static str) {
    let Some(pattern) = pattern else {
        return ("unmatched", "none");
    };
    let info = req.match_info();
    let resource_type = info
        .get("type")
        .and_then(ResourceType::parse)
        .map(|rt| rt.as_str())
        .or_else(|| {
            [
                "AuditEvent",
                "StructureDefinition",
                "CodeSystem",
                "OperationDefinition",
                "SearchParameter",
            ]
            .into_iter()
            .find(|t| pattern.starts_with(&format!("/{t}")))
        })
        .unwrap_or("none");
    let interaction = match pattern {
        "/metadata" => "capabilities",
        "/healthz" | "/readyz" => "health",
        "/metrics" => "metrics",
        "/.well-known/smart-configuration" => "discovery",
        p if p == "/openapi.json" || p.starts_with("/docs") => "docs",
        p if resource_type != "none" && !p.starts_with("/{") && !p.starts_with("/AuditEvent") => {
            if p.ends_with("{id}") {
                "read"
            } else {
                "search-type"
            }
        }
        p => interaction(req.method(), p, info.get("operation")).map_or("other", |(i, _)| i),
    };
    (interaction, resource_type)
}

/// Why the scheduling rules refused sessions in this request (read by [`frame`] for the metrics).
#[derive(Debug, Clone, Default)]
pub struct BookingRefusals(pub Vec<&'static str>);

/// The caller as [`authenticate`] found them, in a slot that [`audit`] hands down with the request:
/// the audit layer learns who asked even when the request never comes back to it (a read cut off by
/// the time limit). It keeps the slot, not the request, which routing needs to hold alone.
#[derive(Debug, Clone, Default)]
pub struct CallerSlot(Rc<RefCell<Option<Principal>>>);

impl CallerSlot {
    fn fill(&self, principal: &Principal) {
        *self.0.borrow_mut() = Some(principal.clone());
    }

    fn caller(&self) -> Option<Principal> {
        self.0.borrow().clone()
    }
}

/// What the audit layer knows of a request before it goes in.
struct Asked {
    pattern: Option<String>,
    uri: Uri,
    method: Method,
    address: Option<String>,
    request_id: String,
}

/// Records an AuditEvent for every routed, non-public request, whatever its outcome: the answer the
/// handler gave, or the 503 of a read cut off by the time limit.
pub async fn audit(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    if is_public(req.path()) {
        return time_limited(req, next).await;
    }
    let caller = CallerSlot::default();
    req.extensions_mut().insert(caller.clone());
    // The route's pattern comes from the resource map, so it is known before routing.
    let pattern = req.match_pattern();
    req.extensions_mut().insert(MatchedPattern(pattern.clone()));
    let asked = Asked {
        pattern,
        uri: req.uri().clone(),
        method: req.method().clone(),
        address: super::client_address(req.request()),
        request_id: req
            .extensions()
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_default(),
    };
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let (record, result) = match time_limited(req, next).await {
        Ok(res) => {
            let request = res.request();
            let detail = request.extensions().get::<AuditDetail>().cloned().unwrap_or_default();
            let info = request.match_info();
            let record = audit_record(
                &asked,
                |name| info.get(name).map(str::to_string),
                detail,
                res.status().as_u16(),
                caller.caller(),
                request.query_string(),
            );
            (record, Ok(res))
        }
        Err(e) => {
            // The answer went out as an error (a read cut off): the request did not come back, so
            // the event is made of what was asked, and of who asked.
            let status = e.as_response_error().status_code().as_u16();
            let mut path = Path::new(Url::new(asked.uri.clone()));
            if let Some(pattern) = &asked.pattern {
                ResourceDef::new(pattern.as_str()).capture_match_info(&mut path);
            }
            let query = asked.uri.query().unwrap_or_default().to_string();
            let record = audit_record(
                &asked,
                |name| path.get(name).map(str::to_string),
                AuditDetail::default(),
                status,
                caller.caller(),
                &query,
            );
            (record, Err(e))
        }
    };
    if let (Some(record), Some(state)) = (record, state) {
        if !(state.config.audit_reads == crate::config::AuditReads::None && is_read(&record)) {
            state.audit.record(record).await;
        }
    }
    result
}

/// Whether an interaction only reads (what TANDEM_AUDIT_READS=none leaves unrecorded): a read,
/// vread, search or history, or an operation invoked by GET that changes nothing — not a Bulk Data
/// kick-off (`$export`), which starts a job. Decided by the interaction, not the method alone.
fn is_read(record: &AuditRecord) -> bool {
    match record.interaction.as_str() {
        "read" | "vread" | "search-type" | "search-system" | "history-instance" | "history-type" | "history-system" => {
            true
        }
        "operation" => {
            matches!(record.method.as_str(), "GET" | "HEAD") && record.operation.as_deref() != Some("$export")
        }
        _ => false,
    }
}

/// The audit record of a request: what was asked, the route's values (`type`, `id`, `vid`,
/// `operation`), what the handler added, the status answered and the caller.
fn audit_record(
    asked: &Asked,
    route_value: impl Fn(&str) -> Option<String>,
    detail: AuditDetail,
    status: u16,
    principal: Option<Principal>,
    query_string: &str,
) -> Option<AuditRecord> {
    let pattern = asked.pattern.as_deref()?; // no FHIR endpoint: nothing was touched
    let (mut interaction, operation) = interaction(&asked.method, pattern, route_value("operation").as_deref())?;
    if let Some(i) = detail.interaction {
        interaction = i;
    }
    let res_type = route_value("type").or_else(|| pattern.starts_with("/AuditEvent").then(|| "AuditEvent".to_string()));
    let mut entities = detail.entities;
    if entities.is_empty() {
        // Taken from the URL as it came: the trail keeps it as a reference only if it is a valid one.
        match (&res_type, route_value("id"), route_value("vid")) {
            (Some(t), Some(id), Some(v)) => entities.push(format!("{t}/{id}/_history/{v}")),
            (Some(t), Some(id), None) => entities.push(format!("{t}/{id}")),
            _ => {}
        }
    }
    let query = match interaction {
        "search-type" | "search-system" | "history-type" | "history-system" => {
            Some((res_type, detail.query.unwrap_or_else(|| query_string.to_string())))
        }
        // A conditional update, patch or delete: its criteria say what it was for, refused or not.
        "update" | "patch" | "delete" if pattern == "/{type}" => Some((res_type, query_string.to_string())),
        _ => None,
    };
    Some(AuditRecord {
        recorded: dates::now_millis(),
        interaction: interaction.to_string(),
        operation,
        status,
        principal,
        address: asked.address.clone(),
        entities,
        query,
        resource: detail.resource,
        patients: detail.patients,
        request_id: asked.request_id.clone(),
        method: asked.method.to_string(),
    })
}

/// The time limit of read-only requests: a read changes nothing, so giving up on it is safe (writes
/// run to their commit or rollback). A read cut off is answered 503, as an error, because the
/// request went into the abandoned call.
async fn time_limited(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return next.call(req).await.map(ServiceResponse::map_into_boxed_body);
    }
    let started = Instant::now();
    let timeout = req
        .app_data::<web::Data<AppState>>()
        .map_or(30, |s| s.config.request_timeout_seconds);
    let ctx = Ctx::detached(req.request());
    match tokio::time::timeout(Duration::from_secs(timeout), next.call(req)).await {
        Ok(r) => r.map(ServiceResponse::map_into_boxed_body),
        Err(_) => {
            let mut response = ctx.error_response(&Error::Unavailable(format!(
                "the request did not complete within {timeout} seconds; narrow it or try again"
            )));
            tracing::warn!(
                status = 503,
                latency_ms = started.elapsed().as_secs_f64() * 1000.0,
                "request timed out"
            );
            let headers = response.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&ctx.request_id) {
                headers.insert(HeaderName::from_static("x-request-id"), v);
            }
            security_headers("", headers);
            Err(actix_web::error::InternalError::from_response("request timed out", response).into())
        }
    }
}

/// The bearer token of the request: None without an Authorization header, Err for a malformed one.
fn bearer(req: &ServiceRequest) -> Option<Result<String, ()>> {
    let value = req.headers().get(header::AUTHORIZATION)?;
    let parsed = value
        .to_str()
        .ok()
        .and_then(|text| text.trim().split_once(' '))
        .filter(|(scheme, token)| scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty())
        .map(|(_, token)| token.trim().to_string());
    Some(parsed.ok_or(()))
}

/// Under TANDEM_USER_ACCESS=assigned, a token with `user/` scopes reaches the records of the
/// clients assigned to its `fhirUser` Practitioner at this moment (Store::assigned_patients), and
/// none when its `fhirUser` is not one: looked up once per request, so that an assignment ended
/// is an access ended.
async fn assign(state: &AppState, principal: &mut Principal) -> Result<(), Error> {
    if state.config.user_access != crate::config::UserAccess::Assigned
        || !principal.scopes.iter().any(|s| s.context == crate::auth::Context::User)
    {
        return Ok(());
    }
    let assigned = match principal.practitioner() {
        Some(practitioner) => {
            let store = state.store.clone();
            super::blocking(move || store.assigned_patients(&practitioner, dates::now_millis())).await?
        }
        None => Vec::new(),
    };
    principal.assigned = Some(std::sync::Arc::new(assigned));
    Ok(())
}

/// Lets a request in only with a valid bearer token (401 otherwise, with `WWW-Authenticate`).
pub async fn authenticate(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    if is_public(req.path()) {
        return next.call(req).await.map(ServiceResponse::map_into_boxed_body);
    }
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        return Err(actix_web::error::ErrorInternalServerError("application state missing"));
    };
    let refusal = match bearer(&req) {
        Some(Ok(token)) => match state.verifier.verify(&token) {
            Ok(mut principal) => {
                if let Some(slot) = req.extensions().get::<CallerSlot>() {
                    slot.fill(&principal);
                }
                if let Err(e) = assign(&state, &mut principal).await {
                    let http_request = req.request().clone();
                    let response = Ctx::detached(&http_request).error_response(&e);
                    return Ok(ServiceResponse::new(http_request, response));
                }
                req.extensions_mut().insert(principal);
                return next.call(req).await.map(ServiceResponse::map_into_boxed_body);
            }
            Err(refused) => ("invalid_token", refused.0),
        },
        Some(Err(())) => (
            "invalid_request",
            "the Authorization header must be 'Bearer <token>'".to_string(),
        ),
        None => (
            "",
            "this endpoint needs a bearer token (Authorization: Bearer <token>)".to_string(),
        ),
    };
    let (code, description) = refusal;
    let http_request = req.request().clone();
    let ctx = Ctx::detached(&http_request);
    let mut response = ctx.error_response(&Error::Unauthorized(description.clone()));
    let challenge = if code.is_empty() {
        "Bearer realm=\"tandem\"".to_string()
    } else {
        format!(
            "Bearer realm=\"tandem\", error=\"{code}\", error_description=\"{}\"",
            description.replace('"', "'")
        )
    };
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    Ok(ServiceResponse::new(http_request, response))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_map_to_restful_interactions() {
        assert_eq!(interaction(&Method::GET, "/{type}/{id}", None), Some(("read", None)));
        assert_eq!(interaction(&Method::PUT, "/{type}/{id}", None), Some(("update", None)));
        assert_eq!(interaction(&Method::POST, "/{type}", None), Some(("create", None)));
        assert_eq!(interaction(&Method::GET, "/{type}", None), Some(("search-type", None)));
        assert_eq!(
            interaction(&Method::GET, "/{type}/{id}/_history/{vid}", None),
            Some(("vread", None))
        );
        assert_eq!(
            interaction(&Method::GET, "/{type}/{id}/{operation}", Some("$everything")),
            Some(("operation", Some("$everything".into())))
        );
        assert_eq!(interaction(&Method::PUT, "/{type}", None), Some(("update", None)));
        assert_eq!(interaction(&Method::PATCH, "/{type}", None), Some(("patch", None)));
        assert_eq!(interaction(&Method::DELETE, "/{type}", None), Some(("delete", None)));
        assert_eq!(interaction(&Method::GET, "/nowhere", None), None);
    }

    #[test]
    fn discovery_and_probes_are_public_and_records_are_not() {
        for p in [
            "/metadata",
            "/healthz",
            "/.well-known/smart-configuration",
            "/docs/",
            "/CodeSystem/attendance",
        ] {
            assert!(is_public(p), "{p}");
        }
        for p in [
            "/Patient",
            "/",
            "/_history",
            "/AuditEvent",
            "/Patient/1/$everything",
            "/metadata2",
        ] {
            assert!(!is_public(p), "{p}");
        }
    }
}
