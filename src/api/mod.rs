//! HTTP: routes and thin handlers. Each handler parses the request, calls one store function and
//! renders the answer; every failure leaves as an OperationOutcome in the negotiated format.

mod audit;
mod bundle;
mod calendar;
mod crud;
pub mod docs;
mod export;
mod history;
pub mod middleware;
mod operations;
pub use operations::OPERATIONS;
mod search;
mod system;

use std::future::{ready, Ready};
use std::sync::LazyLock;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::Method;
use actix_web::{
    web, FromRequest, Handler, HttpMessage, HttpRequest, HttpResponse, HttpResponseBuilder, Responder, Route,
};
use futures_util::StreamExt;
use serde_json::Value;

use crate::audit::AuditSink;
use crate::auth::token::Verifier;
use crate::auth::{Grant, Permission, Principal};
use crate::config::Config;
use crate::error::Error;
use crate::fhir::capability::Supported;
use crate::fhir::{self, Format};
use crate::metrics::Metrics;
use crate::resources::{dates, ResourceType};
use crate::store::{Store, Version};

/// What the api layer serves, declared once: the routes below and the CapabilityStatement both
/// follow it.
pub const SUPPORTED: Supported<'static> = Supported {
    type_interactions: &[
        "read",
        "vread",
        "update",
        "patch",
        "delete",
        "history-instance",
        "history-type",
        "create",
        "search-type",
    ],
    system_interactions: &["transaction", "batch", "history-system", "search-system"],
    update_create: true,
    conditional_create: true,
    conditional_update: true,
    conditional_delete: "single",
    operations: &[
        ("Group", "book-session", "/OperationDefinition/Group-book-session"),
        ("Appointment", "find", "/OperationDefinition/Appointment-find"),
        (
            "Appointment",
            "cancel-series",
            "/OperationDefinition/Appointment-cancel-series",
        ),
        ("Group", "attendance", "/OperationDefinition/Group-attendance"),
        ("Group", "outcomes", "/OperationDefinition/Group-outcomes"),
        ("Practitioner", "caseload", "/OperationDefinition/Practitioner-caseload"),
        ("Patient", "outcomes", "/OperationDefinition/Patient-outcomes"),
        (
            "Patient",
            "everything",
            "http://hl7.org/fhir/OperationDefinition/Patient-everything",
        ),
        (
            "Patient",
            "export",
            "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export",
        ),
        (
            "Group",
            "export",
            "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export",
        ),
    ],
    system_operations: &[("export", "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export")],
    definition_types: &[
        "StructureDefinition",
        "CodeSystem",
        "OperationDefinition",
        "SearchParameter",
    ],
    audit_event_params: &crate::search::audit::AUDIT_PARAMS,
};

pub struct AppState {
    pub store: Store,
    /// The audit trail's store (TANDEM_AUDIT_DATABASE_URL): read by /AuditEvent, written by the
    /// audit writer.
    pub audit_store: Store,
    pub config: Config,
    pub verifier: Verifier,
    pub audit: AuditSink,
    pub metrics: Metrics,
    /// TANDEM_TRUSTED_PROXIES, parsed once.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// Whether the request came straight from a proxy in TANDEM_TRUSTED_PROXIES, whose forwarding
/// headers are then believed. Anyone else could write any host into `X-Forwarded-Host`.
pub fn from_trusted_proxy(req: &HttpRequest) -> bool {
    let Some(peer) = req.peer_addr() else {
        return false;
    };
    req.app_data::<web::Data<AppState>>()
        .is_some_and(|s| s.trusted_proxies.iter().any(|net| net.contains(&peer.ip())))
}

/// The base URL the client addressed: TANDEM_BASE_URL when set; else, behind a trusted proxy, the
/// host and scheme it forwarded (`Forwarded`, `X-Forwarded-Host`, `X-Forwarded-Proto`); else the
/// `Host` header and the connection's own scheme.
fn request_base(req: &HttpRequest) -> String {
    if from_trusted_proxy(req) {
        let info = req.connection_info();
        return format!("{}://{}", info.scheme(), info.host());
    }
    let config = req.app_config();
    let scheme = if config.secure() { "https" } else { "http" };
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or(config.host());
    format!("{scheme}://{host}")
}

/// The address of the client, for the audit trail: the one a trusted proxy forwarded, else the
/// connection's peer.
pub fn client_address(req: &HttpRequest) -> Option<String> {
    if from_trusted_proxy(req) {
        if let Some(forwarded) = req.connection_info().realip_remote_addr() {
            return Some(forwarded.to_string());
        }
    }
    req.peer_addr().map(|a| a.ip().to_string())
}

/// The request id, set by the request middleware and echoed in `X-Request-Id`.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// One URL pattern and the methods it serves.
pub struct Endpoint {
    pub path: &'static str,
    routes: Vec<(Method, Route)>,
}

impl Endpoint {
    pub fn methods(&self) -> impl Iterator<Item = &Method> {
        self.routes.iter().map(|(m, _)| m)
    }
}

fn endpoint(path: &'static str, routes: Vec<(Method, Route)>) -> Endpoint {
    Endpoint { path, routes }
}

fn on<F, Args>(method: Method, handler: F) -> (Method, Route)
where
    F: Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    (method.clone(), web::method(method).to(handler))
}

/// Every endpoint of the API, in the order routing tries them. The app's routes, the `Allow` header
/// of a 405 and the test that the OpenAPI document covers every route all read this one table.
pub fn endpoints() -> Vec<Endpoint> {
    use Method as M;
    vec![
        endpoint("/metadata", vec![on(M::GET, system::metadata)]),
        endpoint(
            "/.well-known/smart-configuration",
            vec![on(M::GET, system::smart_configuration)],
        ),
        endpoint("/openapi.json", vec![on(M::GET, system::openapi)]),
        endpoint("/healthz", vec![on(M::GET, system::healthz)]),
        endpoint("/metrics", vec![on(M::GET, system::metrics)]),
        endpoint("/readyz", vec![on(M::GET, system::readyz)]),
        endpoint(
            "/StructureDefinition",
            vec![on(M::GET, operations::structure_definitions)],
        ),
        endpoint("/CodeSystem", vec![on(M::GET, operations::code_systems)]),
        endpoint(
            "/OperationDefinition",
            vec![on(M::GET, operations::operation_definitions)],
        ),
        endpoint("/SearchParameter", vec![on(M::GET, operations::search_parameters)]),
        endpoint(
            "/StructureDefinition/{id}",
            vec![on(M::GET, operations::structure_definition)],
        ),
        endpoint("/CodeSystem/{id}", vec![on(M::GET, operations::code_system)]),
        endpoint("/SearchParameter/{id}", vec![on(M::GET, operations::search_parameter)]),
        endpoint(
            "/OperationDefinition/{id}",
            vec![on(M::GET, operations::operation_definition)],
        ),
        endpoint(
            "/",
            vec![
                on(M::GET, search::system_search),
                on(M::POST, bundle::transaction_or_batch),
            ],
        ),
        endpoint("/_search", vec![on(M::POST, search::system_search_post)]),
        endpoint("/_history", vec![on(M::GET, history::system_history)]),
        // Bulk Data export (before /{type} and /{type}/{id}, which would take `$export` for a type or an id).
        endpoint("/$export", vec![on(M::GET, export::system_export)]),
        endpoint("/Patient/$export", vec![on(M::GET, export::patient_export)]),
        endpoint(
            "/$export-status/{job}",
            vec![on(M::GET, export::status), on(M::DELETE, export::cancel)],
        ),
        endpoint("/$export-file/{job}/{file}", vec![on(M::GET, export::file)]),
        // Free times (before /{type}/{id}, which would take `$find` for an id).
        endpoint(
            "/Appointment/$find",
            vec![on(M::GET, calendar::find), on(M::POST, calendar::find_post)],
        ),
        // The audit trail: read and search only (before /{type}, which would take it for a hosted type).
        endpoint("/AuditEvent", vec![on(M::GET, audit::search)]),
        endpoint("/AuditEvent/_search", vec![on(M::POST, audit::search_post)]),
        endpoint(
            "/AuditEvent/{id}",
            vec![on(M::GET, audit::read), on(M::HEAD, audit::read)],
        ),
        endpoint(
            "/{type}",
            vec![
                on(M::GET, search::type_search),
                on(M::POST, crud::create),
                on(M::PUT, crud::conditional_update),
                on(M::PATCH, crud::conditional_patch),
                on(M::DELETE, crud::conditional_delete),
            ],
        ),
        endpoint(
            "/{type}/_search",
            vec![
                on(M::GET, search::type_search_get),
                on(M::POST, search::type_search_post),
            ],
        ),
        endpoint("/{type}/_history", vec![on(M::GET, history::type_history)]),
        endpoint(
            "/{type}/{id}",
            vec![
                on(M::GET, crud::read),
                on(M::HEAD, crud::read),
                on(M::PUT, crud::update),
                on(M::PATCH, crud::patch),
                on(M::DELETE, crud::delete),
            ],
        ),
        endpoint("/{type}/{id}/_history", vec![on(M::GET, history::instance_history)]),
        // The operations of OPERATIONS, each on its type and method.
        endpoint(
            "/{type}/{id}/{operation}",
            vec![
                on(M::GET, operations::instance_operation),
                on(M::POST, operations::instance_operation),
            ],
        ),
        endpoint(
            "/{type}/{id}/_history/{vid}",
            vec![on(M::GET, crud::vread), on(M::HEAD, crud::vread)],
        ),
    ]
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    for e in endpoints() {
        let mut resource = web::resource(e.path);
        for (_, route) in e.routes {
            resource = resource.route(route);
        }
        cfg.service(resource.default_service(web::to(method_not_allowed)));
    }
}

/// What every handler needs to know about the request to answer it.
pub struct Ctx {
    pub format: Format,
    negotiation_error: Option<Error>,
    pub pretty: bool,
    pub base: String,
    pub request_id: String,
    /// The caller, from the bearer token (None on the public endpoints).
    pub principal: Option<Principal>,
    /// The request, for adding to its audit record (None for a detached context).
    request: Option<HttpRequest>,
}

impl FromRequest for Ctx {
    type Error = actix_web::Error;
    type Future = Ready<Result<Ctx, actix_web::Error>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let ctx = Ctx::of(req);
        ready(match check_url(req) {
            Ok(()) => Ok(ctx),
            Err(e) => {
                let response = ctx.error_response(&e);
                Err(actix_web::error::InternalError::from_response(e.to_string(), response).into())
            }
        })
    }
}

impl Ctx {
    /// The context of a request that a response is made for outside routing (by the middleware):
    /// it keeps no handle on the request, which routing needs to hold alone.
    pub fn detached(req: &HttpRequest) -> Ctx {
        let mut ctx = Ctx::of(req);
        ctx.request = None;
        ctx
    }

    /// The context of a request.
    pub fn of(req: &HttpRequest) -> Ctx {
        let query = query_pairs(req);
        let format_param = query.iter().find(|(k, _)| k == "_format").map(|(_, v)| v.as_str());
        let accept = req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok());
        let (format, negotiation_error) = match Format::negotiate(format_param, accept) {
            Ok(f) => (f, None),
            Err(e) => (Format::Json, Some(e)),
        };
        let pretty = query.iter().any(|(k, v)| k == "_pretty" && v == "true");
        let configured = req
            .app_data::<web::Data<AppState>>()
            .and_then(|s| s.config.base_url.clone());
        let base = configured.unwrap_or_else(|| request_base(req));
        let request_id = req
            .extensions()
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_default();
        let principal = req.extensions().get::<Principal>().cloned();
        Ctx {
            format,
            negotiation_error,
            pretty,
            base,
            request_id,
            principal,
            request: Some(req.clone()),
        }
    }

    /// What the caller may do with `p` on `res_type` (403 when the token's scopes do not cover it).
    pub fn grant(&self, res_type: &str, p: Permission) -> Result<Grant, Error> {
        self.principal
            .as_ref()
            .ok_or_else(|| Error::Unauthorized("this endpoint needs a bearer token".into()))?
            .grant(res_type, p)
    }

    /// What the caller may see with `p` on `res_type` (compartment::Reach), or 403.
    pub fn reach(&self, res_type: &str, p: Permission) -> Result<crate::resources::compartment::Reach, Error> {
        let grant = self.grant(res_type, p)?;
        Ok(self.reach_of(&grant))
    }

    /// What a caller holding `grant` may see.
    pub fn reach_of(&self, grant: &Grant) -> crate::resources::compartment::Reach {
        match &self.principal {
            Some(principal) => principal.reach(grant),
            None => crate::resources::compartment::Reach::unlimited(None),
        }
    }

    /// The resource of type `res_type` as this caller is shown it: a patient's own token sees a
    /// group session or a Group without the other patients (compartment::redact).
    pub fn shown(&self, res_type: &str, resource: Value) -> Value {
        match (ResourceType::parse(res_type), self.own_patient(res_type)) {
            (Some(rt), Some(patient)) => crate::resources::compartment::redact(&patient, rt, resource),
            _ => resource,
        }
    }

    /// [`Ctx::shown`] for a stored version (its body rewritten only when something is left out).
    pub fn shown_version(&self, mut v: Version) -> Version {
        if !matches!(v.res_type.as_str(), "Appointment" | "Group") {
            return v;
        }
        let (Some(rt), Some(patient)) = (ResourceType::parse(&v.res_type), self.own_patient(&v.res_type)) else {
            return v;
        };
        if let Some(body) = v.body.as_deref().and_then(|b| serde_json::from_str::<Value>(b).ok()) {
            if crate::resources::compartment::needs_redaction(&patient, rt, &body) {
                v.body = Some(crate::resources::compartment::redact(&patient, rt, body).to_string());
            }
        }
        v
    }

    /// The patient whose own view of `res_type` this caller has: the caller reads (or searches)
    /// the type through a `patient/` grant and no broader one.
    fn own_patient(&self, res_type: &str) -> Option<String> {
        if !matches!(res_type, "Appointment" | "Group") {
            return None;
        }
        let grant = self
            .grant(res_type, Permission::Read)
            .or_else(|_| self.grant(res_type, Permission::Search))
            .ok()?;
        grant.patient().map(str::to_string)
    }

    /// Like [`Ctx::grant`], for interactions that reach many patients' records: a `patient/` grant
    /// is not enough.
    pub fn grant_all(&self, res_type: &str, p: Permission) -> Result<(), Error> {
        match self.grant(res_type, p)? {
            Grant::All => Ok(()),
            Grant::Patient(_) => Err(Error::Forbidden(format!(
                "'{}' on {res_type} here reaches many patients' records; a patient/ scope does not grant it",
                p.letter()
            ))),
            Grant::Assigned(_) => Err(Error::Forbidden(format!(
                "'{}' on {res_type} here reaches many patients' records; a user/ scope limited to assigned clients (TANDEM_USER_ACCESS=assigned) does not grant it",
                p.letter()
            ))),
        }
    }

    /// Notes what the metrics count about an error (a session the scheduling rules refused).
    pub fn note(&self, e: &Error) {
        if let (Error::BookingRefused { reason, .. }, Some(req)) = (e, &self.request) {
            let mut ext = req.extensions_mut();
            match ext.get_mut::<middleware::BookingRefusals>() {
                Some(r) => r.0.push(reason.as_str()),
                None => {
                    ext.insert(middleware::BookingRefusals(vec![reason.as_str()]));
                }
            }
        }
    }

    /// Adds to this request's audit record.
    pub fn audit(&self, update: impl FnOnce(&mut middleware::AuditDetail)) {
        if let Some(req) = &self.request {
            middleware::add_audit_detail(req, update);
        }
    }

    /// Names in the request's audit event the patients whose data `resource` (of type `res_type`,
    /// as this caller is shown it) holds: IHE BALP's rule that a query's event names every patient
    /// whose records it returned, in the one event.
    pub fn audit_returned(&self, res_type: &str, resource: &Value) {
        let Some(rt) = ResourceType::parse(res_type) else {
            return;
        };
        let patients = crate::resources::compartment::patients_of(rt, resource);
        if !patients.is_empty() {
            self.audit(|d| d.patients.extend(patients));
        }
    }

    /// Fails when the response format could not be negotiated (406).
    pub fn negotiated(&self) -> Result<(), Error> {
        match &self.negotiation_error {
            Some(e) => Err(Error::NotAcceptable(e.to_string())),
            None => Ok(()),
        }
    }

    pub fn error_response(&self, e: &Error) -> HttpResponse {
        self.note(e);
        let (status, _) = e.status_and_code();
        if let Error::Internal(cause) = e {
            tracing::error!(cause = %cause, "request failed");
        }
        let outcome = fhir::error_outcome(e, &self.request_id);
        let mut response = self.body(HttpResponse::build(status), &outcome);
        let challenge = match e {
            Error::Unauthorized(_) => Some("Bearer realm=\"tandem\""),
            Error::Forbidden(_) => Some("Bearer realm=\"tandem\", error=\"insufficient_scope\""),
            _ => None,
        };
        if let Some(c) = challenge {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(c));
        }
        response
    }

    /// A response with a FHIR body (any resource held as JSON).
    pub fn body(&self, mut builder: HttpResponseBuilder, resource: &Value) -> HttpResponse {
        match fhir::render(resource, self.format, self.pretty) {
            Ok(bytes) => builder.content_type(self.format.content_type()).body(bytes),
            Err(e) => {
                tracing::error!(cause = %e, "rendering a response");
                HttpResponse::InternalServerError().finish()
            }
        }
    }

    /// A response carrying one stored version: ETag, Last-Modified and the resource.
    pub fn version(&self, mut builder: HttpResponseBuilder, v: &Version) -> Result<HttpResponse, Error> {
        // Whatever answered with it (read, vread, a conditional create's match, a write's result),
        // a patient's own token is shown a group session or a Group without the other patients.
        let shown;
        let v = if matches!(v.res_type.as_str(), "Appointment" | "Group") && self.own_patient(&v.res_type).is_some() {
            shown = self.shown_version(v.clone());
            &shown
        } else {
            v
        };
        version_headers(&mut builder, v);
        let body = v
            .body
            .as_deref()
            .ok_or_else(|| Error::Internal("a deleted version has no body".into()))?;
        if self.format == Format::Json && !self.pretty {
            // Stored JSON is already canonical FHIR JSON: send it as it is.
            return Ok(builder.content_type(self.format.content_type()).body(body.to_string()));
        }
        let value: Value = serde_json::from_str(body).map_err(|e| Error::Internal(format!("stored JSON: {e}")))?;
        Ok(self.body(builder, &value))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base, path)
    }
}

pub fn version_headers(builder: &mut HttpResponseBuilder, v: &Version) {
    builder.insert_header((header::ETAG, etag(v.version_id)));
    builder.insert_header((header::LAST_MODIFIED, dates::format_http_date(v.last_updated)));
}

pub fn etag(version_id: i64) -> String {
    format!("W/\"{version_id}\"")
}

/// The hosted type named in the URL, or 404 (http.html: "resource type not supported").
pub fn resource_type(name: &str) -> Result<ResourceType, Error> {
    ResourceType::parse(name)
        .ok_or_else(|| Error::UnsupportedType(format!("resource type '{name}' is not supported by this server")))
}

/// The hosted type and a well-formed id from an instance URL; a malformed id names no resource (404).
pub fn instance(type_name: &str, id: String) -> Result<(ResourceType, String), Error> {
    let rt = resource_type(type_name)?;
    if !crate::resources::is_valid_id(&id) {
        return Err(Error::NotFound(format!("'{id}' is not a valid resource id")));
    }
    Ok((rt, id))
}

/// A link to `path` with these query parameters and, for a page link, its cursor.
pub fn page_link(ctx: &Ctx, path: &str, params: &[(String, String)], cursor: Option<&str>) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        q.append_pair(k, v);
    }
    if let Some(c) = cursor {
        q.append_pair("_cursor", c);
    }
    let q = q.finish();
    let url = if path.is_empty() {
        ctx.base.clone()
    } else {
        ctx.url(path)
    };
    if q.is_empty() {
        url
    } else {
        format!("{url}?{q}")
    }
}

/// Refuses a URL whose path segments or query values, once decoded, hold a control character
/// (400): FHIR strings exclude them (datatypes.html#string), no id or search value can hold one,
/// and PostgreSQL cannot even compare text with a NUL in it (it answered 500). Every handler takes
/// a [`Ctx`], so every route is covered; query values inside a Bundle or If-None-Exist are checked
/// where they are parsed ([`crate::search::Search::parse`]).
fn check_url(req: &HttpRequest) -> Result<(), Error> {
    let segments = req.match_info().iter();
    let query = crate::search::pairs(req.query_string().as_bytes());
    for (name, value) in segments {
        if let Some(c) = fhir::control_character(value) {
            return Err(Error::Invalid(format!(
                "the {name} in the URL holds the control character U+{:04X}",
                c as u32
            )));
        }
    }
    for (key, value) in query {
        if let Some(c) = fhir::control_character(&key).or_else(|| fhir::control_character(&value)) {
            return Err(Error::Invalid(format!(
                "the query parameter '{}' holds the control character U+{:04X}",
                key.escape_debug().take(64).collect::<String>(),
                c as u32
            )));
        }
    }
    Ok(())
}

pub fn query_pairs(req: &HttpRequest) -> Vec<(String, String)> {
    crate::search::pairs(req.query_string().as_bytes())
}

/// Reads a request body, refusing it (413) as soon as it exceeds the configured limit — after
/// decompression for `Content-Encoding: gzip`, so that a small body that inflates to gigabytes costs
/// no more than `limit` bytes. Other encodings are refused (415). A FHIR (JSON or XML) or JSON Patch
/// body is then pre-scanned for its element count and nesting (TANDEM_MAX_RESOURCE_ELEMENTS and
/// TANDEM_MAX_RESOURCE_DEPTH) before any handler parses it.
pub async fn read_body(req: &HttpRequest, mut payload: web::Payload, limit: usize) -> Result<web::Bytes, Error> {
    let too_large = || Error::PayloadTooLarge(format!("the request body exceeds the limit of {limit} bytes"));
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(too_large());
    }
    let mut gunzip = match content_encoding(req)? {
        Encoding::Identity => None,
        Encoding::Gzip => Some(flate2::write::GzDecoder::new(LimitedWriter {
            bytes: Vec::new(),
            limit,
        })),
    };
    let state = req.app_data::<web::Data<AppState>>();
    let timeout = state.map_or(30, |s| s.config.request_timeout_seconds);
    let receive = async {
        let mut body = web::BytesMut::new();
        let mut received = 0usize;
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| Error::Invalid(format!("reading the request body: {e}")))?;
            received += chunk.len();
            if received > limit {
                return Err(too_large());
            }
            match &mut gunzip {
                Some(decoder) => inflate(decoder, &chunk, limit)?,
                None => body.extend_from_slice(&chunk),
            }
        }
        match gunzip {
            Some(mut decoder) => {
                decoder.try_finish().map_err(|e| gzip_error(e, limit))?;
                Ok(web::Bytes::from(std::mem::take(&mut decoder.get_mut().bytes)))
            }
            None => Ok(body.freeze()),
        }
    };
    // A client that trickles its body ties up a worker no longer than the request timeout.
    let body = tokio::time::timeout(std::time::Duration::from_secs(timeout), receive)
        .await
        .map_err(|_| Error::RequestTimeout(format!("the request body did not arrive within {timeout} seconds")))??;
    let format = match req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
        Some(ct)
            if ct
                .trim()
                .to_ascii_lowercase()
                .starts_with("application/json-patch+json") =>
        {
            Some(Format::Json)
        }
        ct => Format::from_content_type(ct).ok(),
    };
    if let (Some(format), Some(state)) = (format, state) {
        fhir::check_size(&body, format, state.config.body_limits())?;
    }
    Ok(body)
}

/// The `Content-Encoding` of a request body (RFC 9110 §8.4).
enum Encoding {
    Identity,
    Gzip,
}

fn content_encoding(req: &HttpRequest) -> Result<Encoding, Error> {
    let codings: Vec<String> = req
        .headers()
        .get_all(header::CONTENT_ENCODING)
        // A value that is not text names no coding we know: refused below.
        .map(|v| v.to_str().unwrap_or("?"))
        .flat_map(|v| v.split(','))
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty() && c != "identity")
        .collect();
    match codings.as_slice() {
        [] => Ok(Encoding::Identity),
        [one] if one == "gzip" || one == "x-gzip" => Ok(Encoding::Gzip),
        _ => Err(Error::UnsupportedMediaType(
            "the only Content-Encoding supported for a request body is gzip".into(),
        )),
    }
}

/// Collects inflated bytes and refuses to hold more than `limit` of them: the decoder stops as
/// soon as a write fails, so a zip bomb is cut off after `limit` bytes (plus one 32 KB buffer).
struct LimitedWriter {
    bytes: Vec<u8>,
    limit: usize,
}

impl std::io::Write for LimitedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > self.limit {
            return Err(std::io::Error::new(std::io::ErrorKind::OutOfMemory, "over the limit"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn inflate(decoder: &mut flate2::write::GzDecoder<LimitedWriter>, chunk: &[u8], limit: usize) -> Result<(), Error> {
    use std::io::Write;
    decoder.write_all(chunk).map_err(|e| gzip_error(e, limit))
}

fn gzip_error(e: std::io::Error, limit: usize) -> Error {
    if e.kind() == std::io::ErrorKind::OutOfMemory {
        Error::PayloadTooLarge(format!(
            "the request body exceeds the limit of {limit} bytes once decompressed"
        ))
    } else {
        Error::Invalid("the request body is not valid gzip (Content-Encoding: gzip)".into())
    }
}

/// Runs blocking store work off the async workers, inside the request's span.
pub async fn blocking<T, F>(work: F) -> Result<T, Error>
where
    F: FnOnce() -> Result<T, Error> + Send + 'static,
    T: Send + 'static,
{
    let span = tracing::Span::current();
    web::block(move || span.in_scope(work))
        .await
        .map_err(|e| Error::Internal(format!("blocking task: {e}")))?
}

/// `Prefer: return=…` (http.html#ops).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReturnPreference {
    Minimal,
    Representation,
    OperationOutcome,
}

/// `Prefer: handling=…` of a search (search.html#errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handling {
    Strict,
    Lenient,
}

/// The `Prefer` header (RFC 7240), read in one place: `return=` (http.html#ops), `handling=`
/// (search.html#errors) and `respond-async` (Bulk Data kick-off). Several headers and
/// comma-separated preferences are one list; the first of each kind counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefer {
    pub return_: ReturnPreference,
    pub handling: Option<Handling>,
    pub respond_async: bool,
}

impl Prefer {
    pub fn of(req: &HttpRequest) -> Prefer {
        let mut prefer = Prefer {
            return_: ReturnPreference::Representation,
            handling: None,
            respond_async: false,
        };
        let mut seen_return = false;
        let tokens = req
            .headers()
            .get_all("prefer")
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split([',', ';']))
            .map(str::trim);
        for token in tokens {
            let (name, value) = match token.split_once('=') {
                Some((n, v)) => (n.trim(), v.trim().trim_matches('"')),
                None => (token, ""),
            };
            match (name, value) {
                ("return", v) if !seen_return => {
                    let chosen = match v {
                        "minimal" => ReturnPreference::Minimal,
                        "OperationOutcome" => ReturnPreference::OperationOutcome,
                        "representation" => ReturnPreference::Representation,
                        _ => continue,
                    };
                    prefer.return_ = chosen;
                    seen_return = true;
                }
                ("handling", "strict") if prefer.handling.is_none() => prefer.handling = Some(Handling::Strict),
                ("handling", "lenient") if prefer.handling.is_none() => prefer.handling = Some(Handling::Lenient),
                ("respond-async", "") => prefer.respond_async = true,
                _ => {}
            }
        }
        prefer
    }
}

impl actix_web::FromRequest for Prefer {
    type Error = actix_web::Error;
    type Future = Ready<Result<Prefer, actix_web::Error>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        ready(Ok(Prefer::of(req)))
    }
}

/// The version named by `If-Match: W/"n"` (or `"n"`), if the header is present.
pub fn if_match(req: &HttpRequest) -> Result<Option<i64>, Error> {
    let Some(value) = req.headers().get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("").trim();
    let inner = text.strip_prefix("W/").unwrap_or(text).trim_matches('"');
    inner
        .parse::<i64>()
        .map(Some)
        .map_err(|_| Error::Invalid(format!("If-Match '{text}' is not a version ETag such as W/\"3\"")))
}

/// The methods each route serves, for the `Allow` header of a 405.
fn allowed_methods(pattern: &str) -> String {
    static METHODS: LazyLock<Vec<(&'static str, String)>> = LazyLock::new(|| {
        endpoints()
            .iter()
            .map(|e| (e.path, e.methods().map(Method::as_str).collect::<Vec<_>>().join(", ")))
            .collect()
    });
    METHODS
        .iter()
        .find(|(path, _)| *path == pattern)
        .map_or_else(|| "GET".to_string(), |(_, methods)| methods.clone())
}

async fn method_not_allowed(ctx: Ctx, req: HttpRequest) -> HttpResponse {
    let pattern = req.match_pattern().unwrap_or_default();
    if let Some(name) = req.match_info().get("type") {
        if let Err(e) = resource_type(name) {
            return ctx.error_response(&e);
        }
    }
    let mut response = ctx.error_response(&Error::MethodNotAllowed(format!(
        "{} is not supported on {pattern}",
        req.method()
    )));
    response.headers_mut().insert(
        header::ALLOW,
        HeaderValue::from_str(&allowed_methods(&pattern)).unwrap_or(HeaderValue::from_static("GET")),
    );
    response
}

/// Turns a failed path or query extraction into a 400 OperationOutcome (not actix's plain text).
pub fn extractor_error<E: std::fmt::Display>(e: E, req: &HttpRequest) -> actix_web::Error {
    let response = Ctx::of(req).error_response(&Error::Invalid(format!("the request URL is malformed: {e}")));
    actix_web::error::InternalError::from_response(e.to_string(), response).into()
}

/// Anything that matches no route.
pub async fn not_found(ctx: Ctx, req: HttpRequest) -> HttpResponse {
    let first = req.path().trim_start_matches('/').split('/').next().unwrap_or("");
    let err = if !first.is_empty()
        && ResourceType::parse(first).is_none()
        && first.starts_with(|c: char| c.is_ascii_uppercase())
    {
        Error::UnsupportedType(format!("resource type '{first}' is not supported by this server"))
    } else {
        Error::NotFound(format!("no FHIR endpoint at {}", req.path()))
    };
    ctx.error_response(&err)
}

/// The request id: the caller's `X-Request-Id` when it is a short token, a new UUID otherwise.
pub fn request_id_from(value: Option<&HeaderValue>) -> String {
    value
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        })
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(
            crate::search::pairs(b"a=b%20c&_format=application%2Ffhir%2Bxml&x"),
            vec![
                ("a".to_string(), "b c".to_string()),
                ("_format".to_string(), "application/fhir+xml".to_string()),
                ("x".to_string(), String::new()),
            ]
        );
        assert_eq!(
            crate::search::pairs(b"a=%zz%4%C3"),
            vec![("a".to_string(), "%zz%4\u{FFFD}".to_string())]
        );
    }

    #[test]
    fn prefer_is_one_list_of_preferences() {
        let of = |values: &[&str]| {
            let mut req = actix_web::test::TestRequest::default();
            for v in values {
                req = req.append_header(("Prefer", *v));
            }
            Prefer::of(&req.to_http_request())
        };
        let none = of(&[]);
        assert_eq!(
            (none.return_, none.handling, none.respond_async),
            (ReturnPreference::Representation, None, false)
        );
        let p = of(&["respond-async, handling=lenient", "return=\"minimal\""]);
        assert_eq!(
            (p.return_, p.handling, p.respond_async),
            (ReturnPreference::Minimal, Some(Handling::Lenient), true)
        );
        // The first of each kind counts; unknown values are ignored.
        let p = of(&[
            "return=bogus; return=OperationOutcome, return=minimal",
            "handling=strict, handling=lenient",
        ]);
        assert_eq!(
            (p.return_, p.handling),
            (ReturnPreference::OperationOutcome, Some(Handling::Strict))
        );
        assert!(!of(&["respond-async=no"]).respond_async);
    }

    #[test]
    fn caller_request_ids_are_kept_only_when_safe() {
        assert_eq!(request_id_from(Some(&HeaderValue::from_static("abc-123"))), "abc-123");
        assert_ne!(request_id_from(Some(&HeaderValue::from_static("a b"))), "a b");
    }
}
