//! The OpenAPI document: generated from the code, committed as `openapi/openapi.json`, covering
//! every route the app registers and nothing else; served at /openapi.json with a browser at /docs;
//! its clinic examples are records the server accepts.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::*;

fn document() -> &'static Value {
    tandem::api::docs::document()
}

#[test]
fn the_committed_document_is_what_the_code_generates() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json");
    let committed = std::fs::read_to_string(path).expect("openapi/openapi.json is in the repository");
    assert!(
        committed == tandem::api::docs::document_pretty(),
        "openapi/openapi.json differs from what the code generates: run `cargo run -q -- openapi > openapi/openapi.json`"
    );
}

/// Every (path, method) the app routes, with `{type}` spelled out for each hosted type and
/// `{operation}` for each operation of that type.
fn registered() -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for endpoint in tandem::api::endpoints() {
        let methods: Vec<String> = endpoint.methods().map(|m| m.as_str().to_lowercase()).collect();
        let types: Vec<Option<&str>> = if endpoint.path.contains("{type}") {
            tandem::resources::ResourceType::all()
                .map(|rt| Some(rt.as_str()))
                .collect()
        } else {
            vec![None]
        };
        for t in types {
            let path = t.map_or(endpoint.path.to_string(), |t| endpoint.path.replace("{type}", t));
            if path.contains("{operation}") {
                // Each operation takes one method, which must be one the pattern routes.
                for (op_type, op, method) in tandem::api::OPERATIONS {
                    if Some(op_type) == t {
                        let method = method.to_lowercase();
                        assert!(
                            methods.contains(&method),
                            "{op} takes {method}, which {} does not route",
                            endpoint.path
                        );
                        routes.insert((path.replace("{operation}", op), method));
                    }
                }
            } else {
                for m in &methods {
                    routes.insert((path.clone(), m.clone()));
                }
            }
        }
    }
    routes
}

fn documented() -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in document()["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            ops.insert((path.clone(), method.clone()));
        }
    }
    ops
}

#[test]
fn every_route_is_documented_and_every_documented_operation_is_routed() {
    let registered = registered();
    let documented = documented();
    let undocumented: Vec<_> = registered.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&registered).collect();
    assert!(
        undocumented.is_empty(),
        "routes without an operation in the OpenAPI document: {undocumented:?}"
    );
    assert!(
        unrouted.is_empty(),
        "documented operations that no route serves: {unrouted:?}"
    );
    // Each hosted type has the whole REST surface, and each operation its own entry.
    assert!(registered.contains(&("/Appointment/{id}".into(), "patch".into())));
    assert!(registered.contains(&("/Group/{id}/$book-session".into(), "post".into())));
    assert!(!registered.contains(&("/Group/{id}/$book-session".into(), "get".into())));
}

#[test]
fn the_document_describes_operations_parameters_schemas_and_security() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut ids = BTreeSet::new();
    for item in doc["paths"].as_object().unwrap().values() {
        for op in item.as_object().unwrap().values() {
            let id = op["operationId"]
                .as_str()
                .expect("every operation has an id")
                .to_string();
            assert!(ids.insert(id.clone()), "operationId {id} is used twice");
            assert!(
                op["summary"].as_str().is_some_and(|s| !s.is_empty()),
                "{id} has no summary"
            );
            assert!(
                !op["summary"].as_str().unwrap().contains("{type}"),
                "{id}: {}",
                op["summary"]
            );
        }
    }

    // A type search lists that type's own search parameters, with the R4 descriptions.
    let search = &doc["paths"]["/Appointment"]["get"];
    let names: Vec<&str> = search["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for p in [
        "actor",
        "date",
        "status",
        "practitioner",
        "patient",
        "group",
        "_id",
        "_lastUpdated",
    ] {
        assert!(names.contains(&p), "Appointment search lacks {p}: {names:?}");
    }
    assert!(!names.contains(&"birthdate"), "a Patient parameter on Appointment");
    let date = search["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "date")
        .unwrap();
    assert!(date["description"].as_str().unwrap().contains("date"), "{date}");
    assert_eq!(
        search["responses"]["200"]["content"]["application/fhir+json"]["schema"]["$ref"],
        "#/components/schemas/Bundle"
    );

    // Headers of conditional and version-aware writes.
    let header = |path: &str, method: &str, name: &str| {
        doc["paths"][path][method]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["in"] == "header" && p["name"] == name)
    };
    assert!(header("/Patient", "post", "If-None-Exist"));
    assert!(header("/Patient/{id}", "put", "If-Match"));
    assert!(header("/Patient/{id}", "put", "Prefer"));
    assert!(header("/$export", "get", "Prefer"));

    // Bodies and answers in both FHIR formats, typed by the resource's schema.
    let create = &doc["paths"]["/Consent"]["post"];
    for media in [FHIR_JSON, FHIR_XML] {
        assert_eq!(
            create["requestBody"]["content"][media]["schema"]["$ref"],
            "#/components/schemas/Consent"
        );
        assert_eq!(
            create["responses"]["201"]["content"][media]["schema"]["$ref"],
            "#/components/schemas/Consent"
        );
    }
    // Errors are OperationOutcomes, the shared ones by reference.
    assert_eq!(
        create["responses"]["401"]["$ref"],
        "#/components/responses/Unauthorized"
    );
    assert_eq!(
        doc["components"]["responses"]["Unauthorized"]["content"][FHIR_JSON]["schema"]["$ref"],
        "#/components/schemas/OperationOutcome"
    );

    // Schemas follow R4: required elements and the codes of required bindings.
    let appointment = &doc["components"]["schemas"]["Appointment"];
    let required: Vec<&str> = appointment["required"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        required.contains(&"status") && required.contains(&"participant"),
        "{required:?}"
    );
    let statuses = &appointment["properties"]["status"]["enum"];
    assert!(
        statuses.as_array().unwrap().contains(&json!("booked"))
            && statuses.as_array().unwrap().contains(&json!("noshow"))
    );
    assert_eq!(
        appointment["properties"]["participant"]["items"]["$ref"],
        "#/components/schemas/AppointmentParticipant"
    );
    assert_eq!(
        doc["components"]["schemas"]["Group"]["properties"]["type"]["enum"],
        json!(["person", "animal", "practitioner", "device", "medication", "substance"])
    );
    let consent_required = &doc["components"]["schemas"]["Consent"]["required"];
    assert!(
        consent_required.as_array().unwrap().contains(&json!("scope")),
        "{consent_required}"
    );
    assert!(doc["components"]["schemas"]["Period"]["properties"]["start"]["pattern"].is_string());
    // Patterned primitives carry a valid example, so that a renderer's sample is real FHIR (and
    // /docs does not spend seconds generating strings from the patterns).
    let period_start = &doc["components"]["schemas"]["Period"]["properties"]["start"];
    assert_eq!(
        period_start["examples"],
        json!(["2026-01-15T09:00:00Z"]),
        "{period_start}"
    );
    assert_eq!(
        doc["components"]["schemas"]["Patient"]["properties"]["birthDate"]["examples"],
        json!(["2026-01-15"])
    );

    // Security: a bearer scheme; each operation names the scopes that grant it; public ones need none.
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    assert_eq!(
        doc["paths"]["/Group/{id}"]["delete"]["security"],
        json!([{"bearer": ["system/Group.d"]}, {"bearer": ["user/Group.d"]}, {"bearer": ["patient/Group.d"]}])
    );
    assert_eq!(
        doc["paths"]["/AuditEvent"]["get"]["security"],
        json!([{"bearer": ["system/AuditEvent.s"]}])
    );
    assert_eq!(doc["paths"]["/metadata"]["get"]["security"], json!([]));

    // The clinic examples are offered where they are used.
    let examples = &doc["paths"]["/Appointment"]["post"]["requestBody"]["content"][FHIR_JSON]["examples"];
    assert!(examples["individual-session"]["value"]["participant"].is_array());
    assert!(examples["group-session"]["value"]["extension"].is_array());
    assert!(
        doc["paths"]["/Group"]["post"]["requestBody"]["content"][FHIR_JSON]["examples"]["support-group-roster"]
            .is_object()
    );
    assert!(
        doc["paths"]["/Consent/{id}"]["put"]["requestBody"]["content"][FHIR_JSON]["examples"]
            ["group-confidentiality-agreement"]
            .is_object()
    );
    assert!(
        doc["paths"]["/Group/{id}/$book-session"]["post"]["requestBody"]["content"][FHIR_JSON]["examples"]
            ["book-session"]
            .is_object()
    );
}

both_backends! {
    async fn the_document_and_the_browser_are_served_without_a_token(app: TestApp) {
        let res = app.anonymous.get(app.url("/openapi.json")).send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert!(res.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
        let served: Value = res.json().await.unwrap();
        assert_eq!(&served, document());

        // /docs and /docs/ are both the browser itself (no redirect), its files from the binary,
        // every path relative to the page so that it works behind a path prefix.
        let no_redirects = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        for (path, base, spec) in [("/docs", "docs/", "openapi.json"), ("/docs/", "", "../openapi.json")] {
            let res = no_redirects.get(app.url(path)).send().await.unwrap();
            assert_eq!(res.status(), 200, "{path}");
            let csp = res.headers()["content-security-policy"].to_str().unwrap().to_string();
            assert!(csp.contains("script-src 'self'") && csp.contains("default-src 'none'"), "{csp}");
            let page = res.text().await.unwrap();
            assert!(page.contains("<title>tandem FHIR R4 API</title>"), "{page}");
            assert!(page.contains(&format!("data-spec=\"{spec}\"")), "{page}");
            for file in ["swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "swagger-ui.css", "tandem-docs.js"] {
                assert!(page.contains(&format!("\"{base}{file}\"")), "{path}: {file} in {page}");
            }
            assert!(!page.contains("http://") && !page.contains("https://"), "the page loads nothing from elsewhere");
            assert!(!page.contains("\"/"), "no absolute path on the page: {page}");
        }
        for file in ["swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "swagger-ui.css", "tandem-docs.js"] {
            let res = app.anonymous.get(app.url(&format!("/docs/{file}"))).send().await.unwrap();
            assert_eq!(res.status(), 200, "{file}");
        }
        let script = app.anonymous.get(app.url("/docs/tandem-docs.js")).send().await.unwrap().text().await.unwrap();
        assert!(script.contains("LazyRefs") && script.contains("resolveSubtree"), "{script}");
        // The stock initializer (an absolute /openapi.json) is not served.
        assert_eq!(app.anonymous.get(app.url("/docs/swagger-initializer.js")).send().await.unwrap().status(), 404);
        // The document's server is relative to the document.
        assert_eq!(document()["servers"][0]["url"], ".");
    }

    async fn the_clinic_examples_are_records_the_server_accepts(app: TestApp) {
        // What the examples refer to.
        for (path, body) in [
            ("Practitioner/dr-moss", json!({"resourceType": "Practitioner", "id": "dr-moss", "name": [{"family": "Moss"}]})),
            ("Location/room-1", json!({"resourceType": "Location", "id": "room-1", "name": "Room 1"})),
            ("Location/room-2", json!({"resourceType": "Location", "id": "room-2", "name": "Group room"})),
        ] {
            assert!(app.put_json(path, &body).await.status().is_success(), "{path}");
        }
        for m in 1..=5 {
            let body = json!({"resourceType": "Patient", "id": format!("m{m}"), "name": [{"family": format!("Member{m}")}]});
            assert!(app.put_json(&format!("Patient/m{m}"), &body).await.status().is_success());
        }
        let examples = tandem::api::docs::examples();
        let example = |name: &str| examples.iter().find(|e| e.1 == name).unwrap_or_else(|| panic!("{name}")).3.clone();

        // Resources with an id of their own go in by PUT, the sessions by POST, in the order a clinic would.
        for name in ["therapist", "client", "support-group-roster", "group-care-team", "group-confidentiality-agreement"] {
            let body = example(name);
            let path = format!("{}/{}", body["resourceType"].as_str().unwrap(), body["id"].as_str().unwrap());
            let res = app.put_json(&path, &body).await;
            assert_eq!(res.status(), 201, "{name}: {}", res.text().await.unwrap());
        }
        for m in 2..=3 {
            let mut agreement = example("group-confidentiality-agreement");
            agreement["id"] = json!(format!("agree-m{m}"));
            agreement["patient"]["reference"] = json!(format!("Patient/m{m}"));
            assert_eq!(app.put_json(&format!("Consent/agree-m{m}"), &agreement).await.status(), 201);
        }
        for name in ["individual-session", "group-session"] {
            let res = app.post_json("Appointment", &example(name)).await;
            assert_eq!(res.status(), 201, "{name}: {}", res.text().await.unwrap());
        }
        let res = app.post_json("Group/grief-tue/$book-session", &example("book-session")).await;
        assert_eq!(res.status(), 201, "book-session: {}", res.text().await.unwrap());
        let booked: Value = res.json().await.unwrap();
        let invited: Vec<&str> = booked["participant"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["actor"]["reference"].as_str())
            .filter(|r| r.starts_with("Patient/"))
            .collect();
        // Active members with an agreement on 2027-01-19: m1, m2, m3 (m4 left, m5 paused).
        assert_eq!(invited, ["Patient/m1", "Patient/m2", "Patient/m3"]);
    }
}
