//! The OpenAPI 3.1 document. Each handler describes its own operation with `#[utoipa::path]`; this
//! module gathers them ([`ApiDoc`]) and finishes the document from what the server already knows:
//! - operations on `/{type}/…` are written once and become one operation per hosted type, with that
//!   type's schema, its search parameters (from the R4 SearchParameter definitions) and its scopes;
//! - the schemas of the FHIR types come from the R4 element table (`fhir::model`): elements, their
//!   cardinality, required code bindings and primitive formats, one schema per type, reused by `$ref`;
//! - every FHIR body is offered as application/fhir+json and application/fhir+xml, and every operation
//!   lists the errors any request may meet (401, 403, 406…) as shared responses;
//! - request and response examples from a therapy clinic (`examples/`).
//!
//! `tandem openapi` prints the document; `openapi/openapi.json` in the repository is its output.

use std::sync::LazyLock;

use serde_json::{json, Map, Value};
use utoipa::openapi::{ObjectBuilder, RefOr, Schema};
use utoipa::{OpenApi, PartialSchema, ToSchema};

use crate::fhir::model::{self, Element};
use crate::resources::{ParamType, ResourceType};

/// Schema names the handlers' annotations refer to; their definitions are made in
/// [`components`] (the annotations only need the name).
macro_rules! schema_names {
    ($($name:ident),* $(,)?) => {$(
        pub struct $name;
        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                ObjectBuilder::new().into()
            }
        }
        impl ToSchema for $name {}
    )*};
}

schema_names!(
    ResourceOfType,
    Bundle,
    OperationOutcome,
    Parameters,
    CapabilityStatement,
    AuditEvent,
    Appointment,
    StructureDefinition,
    CodeSystem,
    OperationDefinition,
    SearchParameter,
    JsonPatch,
    SearchForm,
    ExportManifest,
    SmartConfiguration,
    Health,
    Object,
);

#[derive(OpenApi)]
#[openapi(paths(
    super::system::metadata,
    super::system::smart_configuration,
    super::system::openapi,
    super::system::healthz,
    super::system::readyz,
    super::system::metrics,
    super::operations::structure_definitions,
    super::operations::code_systems,
    super::operations::operation_definitions,
    super::operations::search_parameters,
    super::operations::structure_definition,
    super::operations::code_system,
    super::operations::operation_definition,
    super::operations::search_parameter,
    super::search::system_search,
    super::bundle::transaction_or_batch,
    super::search::system_search_post,
    super::history::system_history,
    super::export::system_export,
    super::export::patient_export,
    super::export::status,
    super::export::cancel,
    super::export::file,
    super::audit::search,
    super::audit::search_post,
    super::audit::read,
    super::search::type_search,
    super::crud::create,
    super::crud::conditional_update,
    super::crud::conditional_patch,
    super::crud::conditional_delete,
    super::search::type_search_get,
    super::search::type_search_post,
    super::history::type_history,
    super::crud::read,
    super::crud::update,
    super::crud::patch,
    super::crud::delete,
    super::history::instance_history,
    super::operations::book_session,
    super::calendar::find,
    super::calendar::find_post,
    super::calendar::cancel_series,
    super::operations::attendance,
    super::export::group_export,
    super::operations::group_outcomes,
    super::operations::caseload,
    super::operations::everything,
    super::operations::patient_outcomes,
    super::crud::vread,
))]
struct ApiDoc;

static DOCUMENT: LazyLock<Value> = LazyLock::new(build);
static DOCUMENT_BYTES: LazyLock<Vec<u8>> = LazyLock::new(|| {
    // A Value always serializes.
    serde_json::to_vec(&*DOCUMENT).unwrap_or_default()
});

/// The finished document.
pub fn document() -> &'static Value {
    &DOCUMENT
}

/// The finished document as JSON text (what `/openapi.json` serves).
pub fn document_bytes() -> &'static [u8] {
    &DOCUMENT_BYTES
}

/// The document as `tandem openapi` prints it (and `openapi/openapi.json` holds it).
pub fn document_pretty() -> String {
    let mut text = serde_json::to_string_pretty(document()).unwrap_or_default();
    text.push('\n');
    text
}

/// The API browser's page. Its paths are relative, so that it works behind a path prefix; `base`
/// is where the page's own files are seen from the page (`docs/` from /docs, `` from /docs/).
const BROWSER_PAGE: &str = include_str!("browser/index.html");
/// Swagger UI's configuration and our LazyRefs plugin (why it exists: the file's own comment).
const BROWSER_SCRIPT: &str = include_str!("browser/tandem-docs.js");

/// `GET /docs` and `GET /docs/{file}`: the interactive browser (Swagger UI, its files compiled into
/// the binary) reading the document at /openapi.json. Both /docs and /docs/ answer the page itself
/// (no redirect); every path on it is relative to where it was loaded.
pub async fn browser(req: actix_web::HttpRequest) -> actix_web::HttpResponse {
    use actix_web::{http::header, HttpResponse};
    let path = req.path();
    let file = path.strip_prefix("/docs").unwrap_or_default().trim_start_matches('/');
    let page = |base: &str, spec: &str| {
        HttpResponse::Ok()
            .content_type("text/html; charset=utf-8")
            .body(BROWSER_PAGE.replace("{{base}}", base).replace("{{spec}}", spec))
    };
    match file {
        "" if !path.ends_with('/') => page("docs/", "openapi.json"),
        "" | "index.html" => page("", "../openapi.json"),
        "tandem-docs.js" => HttpResponse::Ok()
            .content_type("text/javascript; charset=utf-8")
            .body(BROWSER_SCRIPT),
        // Swagger UI's stock initializer and its page are replaced by the two above.
        "swagger-initializer.js" => HttpResponse::NotFound().finish(),
        _ => match utoipa_swagger_ui::serve(file, std::sync::Arc::new(utoipa_swagger_ui::Config::default())) {
            Ok(Some(found)) => {
                let mut res = HttpResponse::Ok();
                res.content_type(found.content_type);
                if found.gzpipped {
                    res.insert_header((header::CONTENT_ENCODING, "gzip"));
                }
                res.body(found.bytes.into_owned())
            }
            _ => HttpResponse::NotFound().finish(),
        },
    }
}

const METHODS: [&str; 8] = ["get", "head", "put", "post", "delete", "patch", "options", "trace"];
const FHIR_JSON: &str = "application/fhir+json";
const FHIR_XML: &str = "application/fhir+xml";

/// The request examples: (resource type, example name, summary, file).
const EXAMPLES: [(&str, &str, &str, &str); 8] = [
    (
        "Appointment",
        "individual-session",
        "An individual session: a client, their therapist and a room",
        include_str!("examples/appointment-individual.json"),
    ),
    (
        "Appointment",
        "group-session",
        "A group session: the Group, its facilitator, the invited members and the room",
        include_str!("examples/appointment-group.json"),
    ),
    (
        "Group",
        "support-group-roster",
        "A support group with its roster: members who joined, one who left, one on a pause",
        include_str!("examples/group-roster.json"),
    ),
    (
        "Consent",
        "group-confidentiality-agreement",
        "A member's signed group confidentiality agreement",
        include_str!("examples/consent-agreement.json"),
    ),
    (
        "CareTeam",
        "group-care-team",
        "The facilitators of a support group",
        include_str!("examples/careteam-group.json"),
    ),
    ("Patient", "client", "A client", include_str!("examples/patient.json")),
    (
        "Practitioner",
        "therapist",
        "A therapist",
        include_str!("examples/practitioner.json"),
    ),
    (
        "Parameters",
        "book-session",
        "Book Tuesday's session of the grief support group",
        include_str!("examples/book-session.json"),
    ),
];

/// The examples, parsed: (resource type, name, summary, value). Tests load each into a server.
pub fn examples() -> Vec<(&'static str, &'static str, &'static str, Value)> {
    EXAMPLES
        .iter()
        .map(|(t, name, summary, text)| (*t, *name, *summary, serde_json::from_str(text).unwrap_or(Value::Null)))
        .collect()
}

fn build() -> Value {
    let raw = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    let mut paths = Map::new();
    if let Some(raw_paths) = raw.get("paths").and_then(Value::as_object) {
        for (path, item) in raw_paths {
            if path.contains("{type}") {
                for rt in ResourceType::all() {
                    let concrete = path.replace("{type}", rt.as_str());
                    paths.insert(concrete.clone(), finish_item(&concrete, item, Some(rt)));
                }
            } else {
                paths.insert(path.clone(), finish_item(path, item, None));
            }
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": info(),
        // Relative to the document itself (OpenAPI 3.1, 4.8.1): right behind a path prefix too.
        "servers": [{"url": ".", "description": "This server (the base this document was served from)"}],
        "security": [{"bearer": []}],
        "tags": tags(),
        "paths": paths,
        "components": components(),
    })
}

fn info() -> Value {
    json!({
        "title": "tandem FHIR R4 API",
        "version": env!("CARGO_PKG_VERSION"),
        "summary": "FHIR R4 records for individual and group therapy",
        "description": include_str!("docs-intro.md"),
        "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
    })
}

fn tags() -> Vec<Value> {
    let mut tags: Vec<Value> = ResourceType::all()
        .map(|rt| {
            let doc = model::types()
                .get(rt.as_str())
                .map(|t| t.doc.clone())
                .unwrap_or_default();
            json!({"name": rt.as_str(), "description": doc})
        })
        .collect();
    tags.extend([
        json!({"name": "Whole system", "description": "Transactions and batches, search across types, and the history of everything (for sync)."}),
        json!({"name": "Bulk Data export", "description": "FHIR Bulk Data Access 2.0: asynchronous NDJSON export of the whole system, of all patients, or of a group."}),
        json!({"name": "AuditEvent", "description": "The audit trail: one AuditEvent per request, refused ones included. Read and search only, with system/AuditEvent.rs."}),
        json!({"name": "Conformance", "description": "What the server supports and how to get a token. No token needed."}),
        json!({"name": "Platform", "description": "Probes and metrics for Kubernetes and Prometheus. No token needed."}),
    ]);
    tags
}

fn tag_of(path: &str, rt: Option<ResourceType>) -> String {
    if let Some(rt) = rt {
        return rt.as_str().to_string();
    }
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    if path.contains("$export") {
        return "Bulk Data export".into();
    }
    match first {
        "AuditEvent" | "Group" | "Patient" | "Practitioner" => first.into(),
        "StructureDefinition"
        | "CodeSystem"
        | "OperationDefinition"
        | "SearchParameter"
        | "metadata"
        | ".well-known"
        | "openapi.json" => "Conformance".into(),
        "healthz" | "readyz" | "metrics" => "Platform".into(),
        _ => "Whole system".into(),
    }
}

/// Replaces `{type}` in text, and the placeholder schema by the type's, everywhere in `v`.
fn specialise(v: &mut Value, rt: ResourceType) {
    match v {
        Value::String(s) => {
            if s.contains("a {type}") {
                let article = if rt.as_str().starts_with(['A', 'E', 'I', 'O', 'U']) {
                    "an"
                } else {
                    "a"
                };
                *s = s.replace("a {type}", &format!("{article} {{type}}"));
            }
            if s.contains("{type}") {
                *s = s.replace("{type}", rt.as_str());
            }
            if s == "#/components/schemas/ResourceOfType" {
                *s = format!("#/components/schemas/{}", rt.as_str());
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| specialise(i, rt)),
        Value::Object(map) => map.values_mut().for_each(|i| specialise(i, rt)),
        _ => {}
    }
}

fn finish_item(path: &str, item: &Value, rt: Option<ResourceType>) -> Value {
    let mut out = Map::new();
    for method in METHODS {
        let Some(op) = item.get(method) else { continue };
        out.insert(method.to_string(), finish_operation(path, method, op.clone(), rt));
    }
    Value::Object(out)
}

fn finish_operation(path: &str, method: &str, mut op: Value, rt: Option<ResourceType>) -> Value {
    let Some(map) = op.as_object_mut() else { return op };
    let ext = |map: &mut Map<String, Value>, key: &str| map.remove(key);
    let scopes = ext(map, "x-scopes");
    let contexts = ext(map, "x-contexts");
    let search = ext(map, "x-search");
    let public = scopes.is_none();
    if let Some(rt) = rt {
        specialise(&mut op, rt);
    }
    let Some(map) = op.as_object_mut() else { return op };

    // Operation id: unique per type, and per method where one function serves GET and HEAD.
    let mut id = map.get("operationId").and_then(Value::as_str).unwrap_or("").to_string();
    if let Some(rt) = rt {
        id.push_str(rt.as_str());
    }
    if method == "head" {
        id.push_str("Head");
    }
    map.insert("operationId".into(), Value::String(id));
    map.insert("tags".into(), json!([tag_of(path, rt)]));

    // Parameters: the path's `type` is now part of the path; then the shared and search ones.
    let mut params: Vec<Value> = map
        .remove("parameters")
        .and_then(|p| p.as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter(|p| !(p["in"] == "path" && p["name"] == "type"))
        .collect();
    match (search.as_ref().and_then(Value::as_str), rt) {
        (Some("type"), Some(rt)) => {
            params.extend(search_params(rt));
            params.extend(result_params());
        }
        (Some("criteria"), Some(rt)) => params.extend(search_params(rt)),
        (Some("system"), _) => {
            params.extend(common_search_params());
            params.extend(result_params());
        }
        (Some("audit"), _) => {
            params.extend(audit_params());
            params.extend(result_params());
        }
        _ => {}
    }
    let fhir = !matches!(tag_of(path, rt).as_str(), "Platform")
        && path != "/openapi.json"
        && !path.starts_with("/.well-known");
    if fhir {
        params.push(json!({"$ref": "#/components/parameters/_format"}));
        params.push(json!({"$ref": "#/components/parameters/_pretty"}));
    }
    if !params.is_empty() {
        map.insert("parameters".into(), Value::Array(params));
    }

    // Bodies: every FHIR JSON body is also accepted and given as FHIR XML.
    if let Some(body) = map.get_mut("requestBody") {
        add_xml(body);
        // $cancel-series takes its reason optionally: a request with no body cancels without one.
        body["required"] = json!(!path.ends_with("$cancel-series"));
        if method == "post" || method == "put" {
            if let Some(rt) = rt {
                add_examples(body, rt.as_str());
            }
        }
        if path.ends_with("$book-session") {
            add_examples(body, "Parameters");
        }
    }
    let has_body = map.contains_key("requestBody");
    let responses = map.entry("responses").or_insert_with(|| json!({}));
    if let Some(responses) = responses.as_object_mut() {
        for response in responses.values_mut() {
            add_xml(response);
            if method == "head" {
                if let Some(r) = response.as_object_mut() {
                    r.remove("content");
                }
            }
        }
        let mut shared: Vec<(&str, &str)> = Vec::new();
        if fhir {
            shared.extend([("400", "BadRequest"), ("406", "NotAcceptable"), ("503", "Unavailable")]);
        }
        if !public {
            shared.extend([("401", "Unauthorized"), ("403", "Forbidden")]);
        }
        // Any request may be cut off by the HTTP layer when its head is too slow to arrive.
        shared.push(("408", "RequestTimeout"));
        if has_body {
            shared.extend([("413", "PayloadTooLarge"), ("415", "UnsupportedMediaType")]);
        }
        if path.contains("{id}") && fhir {
            shared.push(("404", "NotFound"));
        }
        for (status, name) in shared {
            responses
                .entry(status.to_string())
                .or_insert_with(|| json!({"$ref": format!("#/components/responses/{name}")}));
        }
        let mut sorted: Vec<(String, Value)> = std::mem::take(responses).into_iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        responses.extend(sorted);
    }

    // Security: no token on the public endpoints; otherwise the SMART scopes that grant the call.
    if public {
        map.insert("security".into(), json!([]));
    } else {
        map.insert("security".into(), security(&scopes, &contexts, rt));
        let needs = scope_text(&scopes, &contexts, rt);
        if !needs.is_empty() {
            let description = map.get("description").and_then(Value::as_str).unwrap_or("").to_string();
            map.insert(
                "description".into(),
                Value::String(format!("{description}\n\n**Scopes:** {needs}")),
            );
        }
    }
    op
}

/// The scopes of an operation, with `{type}` made concrete, as `Type.letter` strings.
fn scope_list(scopes: &Option<Value>, rt: Option<ResourceType>) -> Vec<String> {
    scopes
        .as_ref()
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(|s| match rt {
                    Some(rt) => s.replace("{type}", rt.as_str()),
                    None => s.to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn context_list(contexts: &Option<Value>) -> Vec<String> {
    contexts
        .as_ref()
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_else(|| vec!["system".into(), "user".into(), "patient".into()])
}

/// Each alternative: a context (system/, user/, patient/) with every scope the call needs.
fn security(scopes: &Option<Value>, contexts: &Option<Value>, rt: Option<ResourceType>) -> Value {
    let scopes = scope_list(scopes, rt);
    if scopes.is_empty() {
        return json!([{"bearer": []}]);
    }
    let alternatives: Vec<Value> = context_list(contexts)
        .iter()
        .map(|c| {
            let needed: Vec<String> = scopes.iter().map(|s| format!("{c}/{s}")).collect();
            json!({"bearer": needed})
        })
        .collect();
    Value::Array(alternatives)
}

fn scope_text(scopes: &Option<Value>, contexts: &Option<Value>, rt: Option<ResourceType>) -> String {
    let scopes = scope_list(scopes, rt);
    let contexts = context_list(contexts);
    let (Some(first), Some(context)) = (scopes.first(), contexts.first()) else {
        return String::new();
    };
    let each: Vec<String> = scopes.iter().map(|s| format!("`{s}`")).collect();
    let where_: Vec<String> = contexts.iter().map(|c| format!("`{c}/`")).collect();
    format!(
        "{} in a {} scope, such as `{context}/{first}`. A `*` for the type, several letters (`.cruds`) and the v1 \
         `.read`/`.write` grant it too.",
        each.join(" and "),
        where_.join(" or ")
    )
}

/// The search parameters of a type, from the R4 definitions (and tandem's own).
fn search_params(rt: ResourceType) -> Vec<Value> {
    rt.search_params()
        .iter()
        .filter(|p| p.is_searchable())
        .map(|p| {
            let description = format!(
                "{} ({} parameter{})",
                p.description.trim(),
                p.kind.as_str(),
                match p.kind {
                    ParamType::Reference if !p.targets.is_empty() => format!(": {}", p.targets.join(", ")),
                    _ => String::new(),
                }
            );
            query_param(&p.code, p.kind, &description)
        })
        .collect()
}

fn query_param(code: &str, kind: ParamType, description: &str) -> Value {
    let schema = match kind {
        // A date range is two criteria on one parameter: date=ge2027-01-01&date=lt2027-02-01.
        ParamType::Date => {
            json!({"type": "array", "items": {"type": "string"}, "examples": [["ge2027-01-01", "lt2027-02-01"]]})
        }
        _ => json!({"type": "string"}),
    };
    let mut p = json!({
        "name": code,
        "in": "query",
        "required": false,
        "description": description,
        "schema": schema,
    });
    if kind == ParamType::Date {
        p["style"] = json!("form");
        p["explode"] = json!(true);
    }
    p
}

/// The parameters every resource type has (whole-system search).
fn common_search_params() -> Vec<Value> {
    let Some(any) = ResourceType::parse("Patient") else {
        return Vec::new();
    };
    search_params(any)
        .into_iter()
        .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with('_')))
        .collect()
}

fn audit_params() -> Vec<Value> {
    crate::search::audit::AUDIT_PARAMS
        .iter()
        .map(|(code, kind, description)| {
            let kind = if *kind == "date" {
                ParamType::Date
            } else {
                ParamType::Token
            };
            query_param(code, kind, description)
        })
        .collect()
}

fn result_params() -> Vec<Value> {
    [
        "_count",
        "_sort",
        "_include",
        "_revinclude",
        "_summary",
        "_elements",
        "_total",
    ]
    .iter()
    .map(|name| json!({"$ref": format!("#/components/parameters/{name}")}))
    .collect()
}

fn add_xml(holder: &mut Value) {
    let Some(content) = holder.get_mut("content").and_then(Value::as_object_mut) else {
        return;
    };
    if let Some(json_media) = content.get(FHIR_JSON).cloned() {
        let mut xml = json!({});
        if let Some(schema) = json_media.get("schema") {
            xml["schema"] = schema.clone();
        }
        content.insert(FHIR_XML.to_string(), xml);
    }
}

fn add_examples(holder: &mut Value, type_name: &str) {
    let mut found = Map::new();
    for (t, name, summary, value) in examples() {
        if t == type_name {
            found.insert(name.to_string(), json!({"summary": summary, "value": value}));
        }
    }
    if found.is_empty() {
        return;
    }
    if let Some(media) = holder.get_mut("content").and_then(|c| c.get_mut(FHIR_JSON)) {
        media["examples"] = Value::Object(found);
    }
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {
            FHIR_JSON: {"schema": {"$ref": "#/components/schemas/OperationOutcome"}},
            FHIR_XML: {"schema": {"$ref": "#/components/schemas/OperationOutcome"}},
        }
    })
}

fn components() -> Value {
    let mut responses = Map::new();
    for (name, description) in [
        (
            "BadRequest",
            "The request is malformed: an unknown or invalid parameter, a body that is not FHIR",
        ),
        (
            "Unauthorized",
            "No valid bearer token (missing, expired, wrong issuer or audience, bad signature)",
        ),
        (
            "Forbidden",
            "The token's scopes do not grant this interaction on this resource type",
        ),
        ("NotFound", "Nothing has this id"),
        (
            "NotAcceptable",
            "The requested format (Accept or _format) is neither FHIR JSON nor FHIR XML",
        ),
        ("PayloadTooLarge", "The request body exceeds the configured limit"),
        (
            "UnsupportedMediaType",
            "The body's Content-Type is not one this operation reads",
        ),
        (
            "Unavailable",
            "The database is unreachable, or the request took longer than the time limit",
        ),
    ] {
        responses.insert(name.to_string(), error_response(description));
    }
    // Two layers answer 408, so the body is left undescribed: the HTTP layer closes a connection
    // whose request head did not arrive within 10 s with an empty 408, and a handler answers a body
    // that did not arrive within TANDEM_REQUEST_TIMEOUT_SECONDS with an OperationOutcome.
    responses.insert(
        "RequestTimeout".into(),
        json!({"description": "The request did not arrive in time: a head not received within 10 s gets an empty answer and the connection is closed; a body not received within TANDEM_REQUEST_TIMEOUT_SECONDS gets an OperationOutcome"}),
    );
    let mut parameters = Map::new();
    for (name, schema, description) in [
        (
            "_format",
            json!({"type": "string", "enum": ["json", "xml", "application/fhir+json", "application/fhir+xml"]}),
            "The response format, overriding Accept",
        ),
        ("_pretty", json!({"type": "boolean"}), "Indent the response"),
        (
            "_count",
            json!({"type": "integer", "minimum": 0}),
            "Entries per page (capped by TANDEM_MAX_COUNT); 0 gives the total only",
        ),
        (
            "_sort",
            json!({"type": "string"}),
            "Comma-separated search parameters to sort by, - for descending (such as -date,_id)",
        ),
        (
            "_include",
            json!({"type": "array", "items": {"type": "string"}}),
            "Also return what matches refer to: Type:param[:target], or *; :iterate for more levels",
        ),
        (
            "_revinclude",
            json!({"type": "array", "items": {"type": "string"}}),
            "Also return what refers to the matches: Type:param[:target]",
        ),
        (
            "_summary",
            json!({"type": "string", "enum": ["true", "false", "text", "data", "count"]}),
            "Return only the summary elements, the text, the data, or the count",
        ),
        (
            "_elements",
            json!({"type": "string"}),
            "Comma-separated elements to return (the rest is left out)",
        ),
        (
            "_total",
            json!({"type": "string", "enum": ["none", "estimate", "accurate"]}),
            "Whether to count all matches",
        ),
    ] {
        let mut p =
            json!({"name": name, "in": "query", "required": false, "description": description, "schema": schema});
        if name == "_include" || name == "_revinclude" {
            p["style"] = json!("form");
            p["explode"] = json!(true);
        }
        parameters.insert(name.to_string(), p);
    }
    json!({
        "schemas": schemas(),
        "responses": responses,
        "parameters": parameters,
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": include_str!("docs-security.md"),
            }
        },
    })
}

// ---------------------------------------------------------------------------------------------
// Schemas of the FHIR types, from the R4 element table.

fn primitive_schema(type_name: &str, codes: Option<&Vec<String>>) -> Option<Value> {
    let mut schema = match type_name {
        "boolean" => json!({"type": "boolean"}),
        "integer" => json!({"type": "integer"}),
        "unsignedInt" => json!({"type": "integer", "minimum": 0}),
        "positiveInt" => json!({"type": "integer", "minimum": 1}),
        "decimal" => json!({"type": "number"}),
        "string" | "markdown" | "xhtml" => json!({"type": "string", "minLength": 1}),
        "code" | "date" | "dateTime" | "instant" | "time" | "id" | "oid" | "uuid" | "uri" | "url" | "canonical"
        | "base64Binary" => json!({"type": "string"}),
        _ => return None,
    };
    if let Some(pattern) = model::primitive_pattern(type_name) {
        schema["pattern"] = json!(pattern);
    }
    if let Some(example) = model::primitive_example(type_name) {
        schema["examples"] = json!([example]);
    }
    if let Some(codes) = codes {
        schema = json!({"type": "string", "enum": codes});
    }
    Some(schema)
}

/// The schema of one value of `type_name`: a primitive inline, anything else by reference.
fn value_schema(type_name: &str, codes: Option<&Vec<String>>) -> Value {
    primitive_schema(type_name, codes).unwrap_or_else(|| match type_name {
        "Resource" => json!({"$ref": "#/components/schemas/Resource"}),
        other if model::types().contains_key(other) => json!({"$ref": format!("#/components/schemas/{other}")}),
        // An element type the table does not describe (Element, BackboneElement, Extension's rarer
        // datatypes): any JSON object.
        _ => json!({"type": "object"}),
    })
}

fn element_schema(e: &Element, type_name: &str) -> Value {
    let one = value_schema(type_name, e.codes.as_ref());
    let mut schema = if e.repeats() {
        json!({"type": "array", "items": one, "minItems": e.min.max(1)})
    } else {
        one
    };
    // In 3.1 a description may stand beside a $ref.
    if let (false, Some(map)) = (e.doc.is_empty(), schema.as_object_mut()) {
        map.insert("description".into(), json!(e.doc));
    }
    schema
}

fn type_schema(name: &str, def: &model::TypeDef) -> Value {
    let mut properties = Map::new();
    let mut required: Vec<String> = Vec::new();
    if def.kind == "resource" {
        properties.insert("resourceType".into(), json!({"const": name}));
        required.push("resourceType".into());
    }
    for e in &def.elements {
        match (&e.choice, &e.type_name) {
            (Some(choices), _) => {
                // value[x]: one JSON property per type (valueString, valueReference…), at most one present.
                for c in choices {
                    properties.insert(format!("{}{}", e.name, c.suffix), element_schema(e, &c.type_name));
                }
            }
            (None, Some(t)) => {
                properties.insert(e.name.clone(), element_schema(e, t));
                if e.min > 0 {
                    required.push(e.name.clone());
                }
            }
            (None, None) => {}
        }
    }
    let mut schema = json!({
        "type": "object",
        "description": def.doc,
        "properties": properties,
        // A primitive's id and extensions travel in a sibling `_name`.
        "patternProperties": {"^_": {"type": ["object", "array"]}},
        "additionalProperties": false,
    });
    if !required.is_empty() {
        schema["required"] = json!(required);
    }
    schema
}

fn schemas() -> Map<String, Value> {
    let mut schemas = Map::new();
    for (name, def) in model::types() {
        schemas.insert(name.clone(), type_schema(name, def));
    }
    schemas.insert(
        "Resource".into(),
        json!({
            "type": "object",
            "description": "Any FHIR resource (its resourceType says which).",
            "properties": {"resourceType": {"type": "string"}, "id": {"type": "string"}},
            "required": ["resourceType"],
        }),
    );
    for name in [
        "StructureDefinition",
        "CodeSystem",
        "OperationDefinition",
        "SearchParameter",
    ] {
        schemas.insert(
            name.into(),
            json!({
                "type": "object",
                "description": format!("A FHIR R4 {name} (tandem's own definitions)."),
                "properties": {"resourceType": {"const": name}, "id": {"type": "string"}, "url": {"type": "string"}},
                "required": ["resourceType"],
            }),
        );
    }
    schemas.insert(
        "JsonPatch".into(),
        json!({
            "type": "array",
            "description": "A JSON Patch document (RFC 6902).",
            "items": {
                "type": "object",
                "properties": {
                    "op": {"type": "string", "enum": ["add", "remove", "replace", "move", "copy", "test"]},
                    "path": {"type": "string"},
                    "from": {"type": "string"},
                    "value": {},
                },
                "required": ["op", "path"],
            },
            "examples": [[{"op": "replace", "path": "/status", "value": "cancelled"}]],
        }),
    );
    schemas.insert(
        "SearchForm".into(),
        json!({
            "type": "object",
            "description": "Search parameters as form fields (name=value).",
            "additionalProperties": {"type": "string"},
        }),
    );
    schemas.insert(
        "ExportManifest".into(),
        json!({
            "type": "object",
            "description": "The Bulk Data manifest of a finished export.",
            "properties": {
                "transactionTime": {"type": "string"},
                "request": {"type": "string"},
                "requiresAccessToken": {"type": "boolean"},
                "output": {"type": "array", "items": {"$ref": "#/components/schemas/ExportFile"}},
                "error": {"type": "array", "items": {"$ref": "#/components/schemas/ExportFile"}},
            },
            "required": ["transactionTime", "request", "requiresAccessToken", "output", "error"],
        }),
    );
    schemas.insert(
        "ExportFile".into(),
        json!({
            "type": "object",
            "properties": {"type": {"type": "string"}, "url": {"type": "string"}, "count": {"type": "integer"}},
            "required": ["type", "url"],
        }),
    );
    schemas.insert(
        "SmartConfiguration".into(),
        json!({
            "type": "object",
            "description": "SMART App Launch discovery (.well-known/smart-configuration).",
            "properties": {
                "issuer": {"type": "string"},
                "token_endpoint": {"type": "string"},
                "scopes_supported": {"type": "array", "items": {"type": "string"}},
                "capabilities": {"type": "array", "items": {"type": "string"}},
                "user_access": {
                    "type": "object",
                    "description": "What user/ scopes reach here (TANDEM_USER_ACCESS): a practitioner's assigned clients, or every record",
                    "properties": {"mode": {"type": "string", "enum": ["assigned", "all"]}, "description": {"type": "string"}},
                },
            },
            "required": ["capabilities"],
        }),
    );
    schemas.insert(
        "Health".into(),
        json!({"type": "object", "properties": {"status": {"type": "string"}}, "required": ["status"]}),
    );
    schemas.insert("Object".into(), json!({"type": "object"}));
    schemas
}
