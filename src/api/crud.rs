//! create, read, vread, update, delete (http.html).

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::Value;

use super::{
    blocking, if_match, instance, read_body, resource_type, return_preference, version_headers, AppState, Ctx,
    ReturnPreference,
};
use crate::auth::{Grant, Permission};
use crate::error::Error;
use crate::fhir::{self, Format};
use crate::resources::{is_valid_id, ResourceType};
use crate::store::{Version, WriteAccess};

/// What a caller holding `grant` may write (an update also needs create to create).
pub(super) fn write_access(ctx: &Ctx, rt: ResourceType, grant: &Grant) -> WriteAccess {
    WriteAccess {
        compartment: grant.patient().map(str::to_string),
        may_create: ctx.grant(rt.as_str(), Permission::Create).is_ok(),
    }
}

/// A version the caller may read: a `patient/` token sees only its compartment, and anything else
/// is answered as if it did not exist (404), so that a probe learns nothing.
pub(super) fn readable(rt: ResourceType, grant: &Grant, v: Version) -> Result<Version, Error> {
    crate::store::visible_to(grant.patient(), rt, v)
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

/// The answer to a create or update, shaped by `Prefer: return=`.
fn written(ctx: &Ctx, req: &HttpRequest, status: StatusCode, v: &Version) -> Result<HttpResponse, Error> {
    let location = ctx.url(&format!("{}/{}/_history/{}", v.res_type, v.res_id, v.version_id));
    let mut builder = HttpResponse::build(status);
    builder.insert_header((header::LOCATION, location));
    match return_preference(req) {
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

pub async fn create(
    req: HttpRequest,
    ctx: Ctx,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let result = async {
        ctx.negotiated()?;
        let rt = resource_type(&path)?;
        if req.headers().contains_key("if-none-exist") {
            return Err(Error::Invalid(
                "conditional create (If-None-Exist) is not supported".into(),
            ));
        }
        let grant = ctx.grant(rt.as_str(), Permission::Create)?;
        let resource = parse_body(&req, payload, &state, rt).await?;
        let store = state.store.clone();
        let access = write_access(&ctx, rt, &grant);
        // http.html#create: an id in the body is ignored; the server assigns one.
        let version = blocking(move || store.create(rt, resource, &access)).await?;
        audit_version(&ctx, rt, &version);
        written(&ctx, &req, StatusCode::CREATED, &version)
    }
    .await;
    ctx.respond(result)
}

pub async fn read(ctx: Ctx, path: web::Path<(String, String)>, state: web::Data<AppState>) -> HttpResponse {
    let result = async {
        ctx.negotiated()?;
        let (type_name, id) = path.into_inner();
        let (rt, id) = instance(&type_name, id)?;
        let grant = ctx.grant(rt.as_str(), Permission::Read)?;
        let store = state.store.clone();
        let version = readable(rt, &grant, blocking(move || store.read(rt, &id)).await?)?;
        audit_version(&ctx, rt, &version);
        ctx.version(HttpResponse::Ok(), &version)
    }
    .await;
    ctx.respond(result)
}

pub async fn vread(ctx: Ctx, path: web::Path<(String, String, String)>, state: web::Data<AppState>) -> HttpResponse {
    let result = async {
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
        let version = readable(rt, &grant, blocking(move || store.vread(rt, &id, version_id)).await?)?;
        audit_version(&ctx, rt, &version);
        ctx.version(HttpResponse::Ok(), &version)
    }
    .await;
    ctx.respond(result)
}

pub async fn update(
    req: HttpRequest,
    ctx: Ctx,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let result = async {
        ctx.negotiated()?;
        let (type_name, id) = path.into_inner();
        let rt = resource_type(&type_name)?;
        if !is_valid_id(&id) {
            return Err(Error::Invalid(format!(
                "'{id}' is not a valid resource id (1 to 64 of A-Z a-z 0-9 - .)"
            )));
        }
        let grant = ctx.grant(rt.as_str(), Permission::Update)?;
        let access = write_access(&ctx, rt, &grant);
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
        let store = state.store.clone();
        let outcome = blocking(move || store.update(rt, &id, resource, expected, &access)).await?;
        audit_version(&ctx, rt, &outcome.version);
        let status = if outcome.created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        written(&ctx, &req, status, &outcome.version)
    }
    .await;
    ctx.respond(result)
}

pub async fn delete(ctx: Ctx, path: web::Path<(String, String)>, state: web::Data<AppState>) -> HttpResponse {
    let result = async {
        ctx.negotiated()?;
        let (type_name, id) = path.into_inner();
        let (rt, id) = instance(&type_name, id)?;
        let grant = ctx.grant(rt.as_str(), Permission::Delete)?;
        let access = write_access(&ctx, rt, &grant);
        let store = state.store.clone();
        let deleted = blocking(move || store.delete(rt, &id, &access)).await?;
        // http.html#delete: deleting a resource that does not exist, or no longer exists, also succeeds.
        let mut builder = HttpResponse::NoContent();
        if let Some(v) = &deleted {
            builder.insert_header((header::ETAG, super::etag(v.version_id)));
        }
        Ok(builder.finish())
    }
    .await;
    ctx.respond(result)
}
