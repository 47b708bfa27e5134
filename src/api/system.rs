//! /metadata, /.well-known/smart-configuration, /healthz, /readyz.

use super::docs;
use actix_web::{web, HttpResponse};
use serde_json::{json, Value};

use super::{blocking, AppState, Ctx, SUPPORTED};
use crate::error::Error;
use crate::fhir::capability::capability_statement;

/// The scopes tandem understands, as advertised (each resource type may stand for `*`).
const SCOPES_SUPPORTED: [&str; 12] = [
    "system/*.cruds",
    "system/*.rs",
    "system/AuditEvent.rs",
    "user/*.cruds",
    "user/*.rs",
    "patient/*.cruds",
    "patient/*.rs",
    "system/*.read",
    "user/*.read",
    "patient/*.read",
    "launch/patient",
    "fhirUser",
];

/// What `user/` scopes reach (TANDEM_USER_ACCESS), and the rule that holds for every token: as
/// told by the CapabilityStatement and the SMART configuration.
fn user_access_text(config: &crate::config::Config) -> &'static str {
    match config.user_access {
        crate::config::UserAccess::Assigned => {
            "user/ scopes (TANDEM_USER_ACCESS=assigned) reach the records in the Patient compartment of the clients \
             assigned to the token's fhirUser Practitioner (an active participant of the client's CareTeam, or of the \
             CareTeam of a Group the client is an active member of, at the time of the request), and every record \
             outside the Patient compartment; psychotherapy notes (DocumentReference labelled v3-ActCode PSYTHPN) are \
             seen only by their author, whatever the token"
        }
        crate::config::UserAccess::All => {
            "user/ scopes (TANDEM_USER_ACCESS=all) reach every record of the types they name; psychotherapy notes \
             (DocumentReference labelled v3-ActCode PSYTHPN) are seen only by their author, whatever the token"
        }
    }
}

/// CapabilityStatement.rest.security: SMART on FHIR bearer tokens.
fn security(state: &AppState) -> Value {
    let config = &state.config;
    let mut security = json!({
        "cors": !config.cors_allowed().is_empty(),
        "service": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
            "code": "SMART-on-FHIR",
            "display": "SMART-on-FHIR"
        }], "text": "OAuth2 bearer tokens with SMART App Launch v2 scopes"}],
        "description": format!(
            "Every request but /metadata, /.well-known/smart-configuration, the conformance resources, the \
             probes, /metrics and /docs needs `Authorization: Bearer <JWT>`: RS256 or ES256 (HS256 only where \
             enabled), issuer {}, audience {}. SMART v2 scopes (c r u d s; v1 read/write accepted) are enforced per \
             interaction; patient/ scopes reach only the compartment of the token's patient claim, where group \
             sessions and Groups show no other patient (labelled REDACTED); {}; the audit trail (AuditEvent) needs \
             system/AuditEvent.rs.",
            state.verifier.issuer(),
            state.verifier.audience(),
            user_access_text(config)
        ),
    });
    let mut uris = Vec::new();
    if let Some(t) = &config.auth_token_endpoint {
        uris.push(json!({"url": "token", "valueUri": t}));
    }
    if let Some(a) = &config.auth_authorization_endpoint {
        uris.push(json!({"url": "authorize", "valueUri": a}));
    }
    if !uris.is_empty() {
        security["extension"] = json!([{
            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
            "extension": uris,
        }]);
    }
    security
}

#[utoipa::path(
    get,
    path = "/metadata",
    operation_id = "capabilities",
    summary = "What this server supports",
    description = "The CapabilityStatement: resource types, interactions, search parameters, operations and security. No token needed.",
    responses(
        (status = 200, description = "The CapabilityStatement", body = docs::CapabilityStatement, content_type = "application/fhir+json"),
    ),
)]
pub async fn metadata(ctx: Ctx, state: web::Data<AppState>) -> Result<HttpResponse, Error> {
    ctx.negotiated().map(|()| {
        let canonical = &state.store.rules().canonical.base;
        let statement = capability_statement(
            &ctx.base,
            canonical,
            env!("CARGO_PKG_VERSION"),
            &SUPPORTED,
            security(&state),
        );
        ctx.body(HttpResponse::Ok(), &statement)
    })
}

/// GET /.well-known/smart-configuration (SMART App Launch 2.0 discovery). tandem is a resource
/// server: the endpoints are those of the configured authorization server, when one is named.
#[utoipa::path(
    get,
    path = "/.well-known/smart-configuration",
    operation_id = "smartConfiguration",
    summary = "SMART discovery",
    description = "How to get a token: the authorization server's endpoints, and the scopes and capabilities this server supports (SMART App Launch v2). No token needed.",
    responses(
        (status = 200, description = "The SMART configuration", body = docs::SmartConfiguration, content_type = "application/json"),
        (status = 404, description = "No authorization server is configured (TANDEM_AUTH_TOKEN_ENDPOINT unset): there is no SMART configuration to publish", body = docs::OperationOutcome, content_type = "application/fhir+json"),
    ),
)]
pub async fn smart_configuration(ctx: Ctx, state: web::Data<AppState>) -> HttpResponse {
    let config = &state.config;
    // SMART App Launch 2.0 (conformance.html#metadata) requires token_endpoint, grant_types_supported
    // and capabilities: with no authorization server named, there is no such document to publish.
    let Some(token_endpoint) = &config.auth_token_endpoint else {
        return ctx.error_response(&Error::NotFound(
            "no authorization server is configured (TANDEM_AUTH_TOKEN_ENDPOINT): tokens come from elsewhere, \
             see the CapabilityStatement's rest.security"
                .into(),
        ));
    };
    let mut doc = json!({
        "issuer": state.verifier.issuer(),
        "token_endpoint": token_endpoint,
        "scopes_supported": SCOPES_SUPPORTED,
        "capabilities": ["client-confidential-asymmetric", "permission-v2", "permission-v1", "permission-patient", "permission-user"],
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS256", "ES256"],
        // An additional field (SMART App Launch 2.0 allows them): what user/ scopes reach here.
        "user_access": {
            "mode": match config.user_access {
                crate::config::UserAccess::Assigned => "assigned",
                crate::config::UserAccess::All => "all",
            },
            "description": user_access_text(config),
        },
    });
    if let Some(a) = &config.auth_authorization_endpoint {
        doc["authorization_endpoint"] = json!(a);
        doc["grant_types_supported"] = json!(["authorization_code", "client_credentials"]);
        doc["response_types_supported"] = json!(["code"]);
        doc["code_challenge_methods_supported"] = json!(["S256"]);
        if let Some(caps) = doc["capabilities"].as_array_mut() {
            caps.extend([json!("launch-standalone"), json!("context-standalone-patient")]);
        }
    }
    HttpResponse::Ok().json(doc)
}

/// The OpenAPI document, generated once from the handlers' annotations.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    summary = "This document",
    description = "The OpenAPI 3.1 description of this API, generated from the code. No token needed.",
    responses(
        (status = 200, description = "The OpenAPI document", body = docs::Object, content_type = "application/json"),
    ),
)]
pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(super::docs::document_bytes())
}

/// The process is alive.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    summary = "Liveness",
    description = "200 while the process is alive (for the liveness probe).",
    responses(
        (status = 200, description = "Alive", body = docs::Health, content_type = "application/json"),
    ),
)]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// How long readiness waits for a database connection before it answers 503.
const READY_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The database answers, the migrations this build needs are applied, and the audit trail keeps up.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    summary = "Readiness",
    description = "200 when the database answers, its migrations are current and the audit trail keeps up (for the readiness probe), 503 otherwise: the database is unreachable, migrations are pending, or audit events wait (the audit queue is over half full, or its writer has written nothing for 5 s while events wait), with the reason.",
    responses(
        (status = 200, description = "Ready", body = docs::Health, content_type = "application/json"),
        (status = 503, description = "Not ready: the database is unreachable, migrations are pending, or the audit trail is falling behind (`reason` says how)", body = docs::Health, content_type = "application/json"),
    ),
)]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    // An instance whose audit events cannot be written must not take traffic: its requests would
    // go unaudited, then wait for room in the queue.
    if let Some(reason) = state.audit.backlog().not_ready() {
        tracing::warn!(reason = %reason, "not ready");
        return HttpResponse::ServiceUnavailable().json(json!({"status": "audit backlog", "reason": reason}));
    }
    let (store, audit_store) = (state.store.clone(), state.audit_store.clone());
    match blocking(move || Ok(store.ready(READY_WAIT)? && audit_store.ready(READY_WAIT)?)).await {
        Ok(true) => HttpResponse::Ok().json(json!({"status": "ready"})),
        Ok(false) => HttpResponse::ServiceUnavailable().json(json!({"status": "migrations pending"})),
        Err(e) => {
            tracing::warn!(cause = %e, "readiness check failed");
            HttpResponse::ServiceUnavailable().json(json!({"status": "database unavailable"}))
        }
    }
}

/// Prometheus metrics, in the OpenMetrics text format.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    summary = "Prometheus metrics",
    description = "Request counts and latency by interaction, resource type and status; database pool use; audit events waiting to be written; sessions refused by the scheduling rules. OpenMetrics text.",
    responses(
        (status = 200, description = "The metrics", body = String, content_type = "application/openmetrics-text"),
    ),
)]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    state.metrics.audit_queue(state.audit.backlog().waiting);
    match state.metrics.render(state.store.pool_state()) {
        Ok(text) => HttpResponse::Ok()
            .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
            .body(text),
        Err(e) => {
            tracing::error!(cause = %e, "encoding metrics");
            HttpResponse::InternalServerError().finish()
        }
    }
}
