//! transaction and batch Bundles at the base URL (http.html#transaction).

use std::collections::HashMap;

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::crud::write_access;
use super::{blocking, etag, read_body, AppState, Ctx};
use crate::auth::Permission;
use crate::error::Error;
use crate::fhir::{self, Format};
use crate::resources::{dates, is_valid_id, ResourceType};
use crate::store::{BundleOp, BundleResult, Version};

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
    op: BundleOp,
}

fn reason(status: StatusCode) -> String {
    format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or(""))
}

/// Rewrites every `reference` equal to a `urn:uuid:` fullUrl into the id the server gave it.
fn rewrite_references(value: &mut Value, ids: &HashMap<String, String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if key == "reference" {
                    if let Some(new) = v.as_str().and_then(|r| ids.get(r)) {
                        *v = json!(new);
                        continue;
                    }
                }
                rewrite_references(v, ids);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rewrite_references(v, ids)),
        _ => {}
    }
}

/// Reads the entries of a Bundle into store operations (urn:uuid creates get their ids first),
/// checking each against the caller's scopes. Each entry is read on its own: a transaction fails
/// on the first bad one, a batch answers it in its own response entry.
fn entries(ctx: &Ctx, bundle: &mut Value, max_entries: usize) -> Result<Vec<Result<Entry, Error>>, Error> {
    let raw = bundle
        .get_mut("entry")
        .and_then(Value::as_array_mut)
        .map(std::mem::take)
        .unwrap_or_default();
    if raw.len() > max_entries {
        return Err(Error::PayloadTooLarge(format!(
            "the Bundle has {} entries; this server takes at most {max_entries} (TANDEM_MAX_BUNDLE_ENTRIES)",
            raw.len()
        )));
    }
    let mut ids: HashMap<String, String> = HashMap::new();
    let mut planned = Vec::with_capacity(raw.len());
    for (index, e) in raw.into_iter().enumerate() {
        planned.push(entry(ctx, index, e, &mut ids));
    }
    for entry in planned.iter_mut().flatten() {
        if let BundleOp::Create { resource, .. } | BundleOp::Update { resource, .. } = &mut entry.op {
            rewrite_references(resource, &ids);
        }
    }
    Ok(planned)
}

/// One request entry as a store operation, or why it cannot be run.
fn entry(ctx: &Ctx, index: usize, mut e: Value, ids: &mut HashMap<String, String>) -> Result<Entry, Error> {
    let label = format!("entry {index}");
    let request = e
        .get("request")
        .cloned()
        .ok_or_else(|| Error::Invalid(format!("{label} has no request")))?;
    let method = request.get("method").and_then(Value::as_str).unwrap_or("").to_string();
    let url = request
        .get("url")
        .and_then(Value::as_str)
        .unwrap_or("")
        .trim_start_matches('/')
        .to_string();
    let label = format!("entry {index} ({method} {url})");
    if url.contains('?')
        || request.get("ifNoneExist").is_some()
        || request.get("ifNoneMatch").is_some()
        || request.get("ifModifiedSince").is_some()
    {
        return Err(Error::Invalid(format!(
            "{label}: conditional requests in Bundles are not supported yet"
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
    let resource = e.get_mut("resource").map(Value::take);
    let parts: Vec<&str> = url.split('/').collect();
    let type_of = |name: &str| {
        ResourceType::parse(name)
            .ok_or_else(|| Error::UnsupportedType(format!("{label}: resource type '{name}' is not supported")))
    };
    let grant = |rt: ResourceType, p: Permission| ctx.grant(rt.as_str(), p).map_err(|e| e.in_context(&label));
    let body = |resource: Option<Value>, rt: ResourceType| -> Result<Value, Error> {
        let r = resource.ok_or_else(|| Error::Invalid(format!("{label}: a resource is required")))?;
        if r.get("resourceType").and_then(Value::as_str) != Some(rt.as_str()) {
            return Err(Error::Structure(format!("{label}: the resource is not a {rt}")));
        }
        Ok(r)
    };
    let op = match (method.as_str(), parts.as_slice()) {
        ("POST", [t]) => {
            let rt = type_of(t)?;
            let access = write_access(ctx, rt, &grant(rt, Permission::Create)?);
            let id = uuid::Uuid::new_v4().to_string();
            if let Some(full) = e
                .get("fullUrl")
                .and_then(Value::as_str)
                .filter(|f| f.starts_with("urn:uuid:"))
            {
                ids.insert(full.to_string(), format!("{rt}/{id}"));
            }
            let resource = body(resource, rt)?;
            BundleOp::Create {
                label: label.clone(),
                rt,
                id,
                resource,
                access,
            }
        }
        ("PUT", [t, id]) if is_valid_id(id) => {
            let rt = type_of(t)?;
            let access = write_access(ctx, rt, &grant(rt, Permission::Update)?);
            let resource = body(resource, rt)?;
            if resource.get("id").and_then(Value::as_str) != Some(*id) {
                return Err(Error::Structure(format!("{label}: the resource's id must be '{id}'")));
            }
            if let Some(full) = e
                .get("fullUrl")
                .and_then(Value::as_str)
                .filter(|f| f.starts_with("urn:uuid:"))
            {
                ids.insert(full.to_string(), format!("{rt}/{id}"));
            }
            BundleOp::Update {
                label: label.clone(),
                rt,
                id: id.to_string(),
                resource,
                if_match,
                access,
            }
        }
        ("DELETE", [t, id]) if is_valid_id(id) => {
            let rt = type_of(t)?;
            BundleOp::Delete {
                access: write_access(ctx, rt, &grant(rt, Permission::Delete)?),
                rt,
                label: label.clone(),
                id: id.to_string(),
            }
        }
        ("GET", [t, id]) if is_valid_id(id) => {
            let rt = type_of(t)?;
            BundleOp::Read {
                compartment: grant(rt, Permission::Read)?.patient().map(str::to_string),
                rt,
                label: label.clone(),
                id: id.to_string(),
            }
        }
        ("PATCH", _) => return Err(Error::Invalid(format!("{label}: PATCH is not supported yet"))),
        _ => {
            return Err(Error::Invalid(format!(
                "{label}: expected POST Type, PUT Type/id, DELETE Type/id or GET Type/id"
            )))
        }
    };
    Ok(Entry { index, method, op })
}

/// The entry of a batch-response for a failed entry.
fn error_entry(ctx: &Ctx, e: &Error) -> Value {
    ctx.note(e);
    let (status, code) = e.status_and_code();
    json!({"response": {"status": reason(status), "outcome": fhir::operation_outcome("error", code, &e.diagnostics(&ctx.request_id))}})
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
        e["resource"] = serde_json::from_str(body).map_err(|err| Error::Internal(format!("stored JSON: {err}")))?;
    }
    Ok(e)
}

fn result_entry(ctx: &Ctx, result: &BundleResult) -> Result<Value, Error> {
    match result {
        BundleResult::Created(v) => written_entry(ctx, StatusCode::CREATED, v),
        BundleResult::Updated(o) => written_entry(
            ctx,
            if o.created { StatusCode::CREATED } else { StatusCode::OK },
            &o.version,
        ),
        BundleResult::Read(v) => written_entry(ctx, StatusCode::OK, v),
        BundleResult::Deleted(Some(v)) => {
            Ok(json!({"response": {"status": reason(StatusCode::NO_CONTENT), "etag": etag(v.version_id)}}))
        }
        BundleResult::Deleted(None) => Ok(json!({"response": {"status": reason(StatusCode::NO_CONTENT)}})),
    }
}

/// POST [base]: a transaction (all or nothing) or a batch (each entry on its own).
pub async fn transaction_or_batch(
    req: HttpRequest,
    ctx: Ctx,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let result = async {
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
        let (response_type, responses) = match kind.as_str() {
            "transaction" => {
                ctx.audit(|d| d.interaction = Some("transaction"));
                let mut planned = entries(&ctx, &mut bundle, state.config.max_bundle_entries)?
                    .into_iter()
                    .collect::<Result<Vec<Entry>, Error>>()?;
                planned.sort_by_key(|e| method_rank(&e.method));
                let order: Vec<usize> = planned.iter().map(|e| e.index).collect();
                let ops: Vec<BundleOp> = planned.into_iter().map(|e| e.op).collect();
                let store = state.store.clone();
                let results = blocking(move || store.transaction(&ops)).await?;
                let mut by_index: Vec<(usize, Value)> = Vec::with_capacity(results.len());
                for (index, result) in order.into_iter().zip(results.iter()) {
                    by_index.push((index, result_entry(&ctx, result)?));
                }
                by_index.sort_by_key(|(i, _)| *i);
                (
                    "transaction-response",
                    by_index.into_iter().map(|(_, e)| e).collect::<Vec<_>>(),
                )
            }
            "batch" => {
                ctx.audit(|d| d.interaction = Some("batch"));
                let planned = entries(&ctx, &mut bundle, state.config.max_bundle_entries)?;
                let mut out = Vec::with_capacity(planned.len());
                for entry in planned {
                    let entry = match entry {
                        Ok(entry) => entry,
                        Err(e) => {
                            out.push(error_entry(&ctx, &e));
                            continue;
                        }
                    };
                    let store = state.store.clone();
                    let op = entry.op;
                    let result = blocking(move || store.transaction(std::slice::from_ref(&op))).await;
                    out.push(match result {
                        Ok(results) => match results.first() {
                            Some(r) => result_entry(&ctx, r)?,
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
    .await;
    ctx.respond(result)
}
