//! /metadata, /healthz, /readyz.

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::{blocking, AppState, Ctx, SUPPORTED};
use crate::fhir::capability::capability_statement;

pub async fn metadata(ctx: Ctx, state: web::Data<AppState>) -> HttpResponse {
    let result = ctx.negotiated().map(|()| {
        let canonical = &state.store.rules().canonical.base;
        let statement = capability_statement(&ctx.base, canonical, env!("CARGO_PKG_VERSION"), &SUPPORTED);
        ctx.body(HttpResponse::Ok(), &statement)
    });
    ctx.respond(result)
}

/// The process is alive.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// The database answers and its migrations are current.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let store = state.store.clone();
    match blocking(move || store.ready()).await {
        Ok(true) => HttpResponse::Ok().json(json!({"status": "ready"})),
        Ok(false) => HttpResponse::ServiceUnavailable().json(json!({"status": "migrations pending"})),
        Err(e) => {
            tracing::warn!(cause = %e, "readiness check failed");
            HttpResponse::ServiceUnavailable().json(json!({"status": "database unavailable"}))
        }
    }
}
