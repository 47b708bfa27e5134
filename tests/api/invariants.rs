//! The FHIR R4 invariants of the hosted types and their data types, enforced on every write
//! (issue 23): each key is refused over HTTP with a 422 `invariant` whose issue names the key in
//! `diagnostics` and the element's path in `expression`, with nothing written, and the passing
//! example of the same shape is stored. The table (tests/fixtures/invariants.json) is the one the
//! unit test of src/fhir/invariants.rs reads. Then every write path, and the two rules that kept a
//! booked session from holding its time (app-3, and an end before the start).

use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::*;

fn rows() -> Vec<Value> {
    let table: Value = serde_json::from_str(&fixture("../invariants.json")).expect("the invariant table");
    table["rows"].as_array().expect("rows").clone()
}

/// The constraint key of a diagnostics text: its first part that is a key (after the context a
/// Bundle entry or a patch puts before it: `entry 1 (POST Patient): cpt-2: …`).
fn key_of(diagnostics: &str) -> &str {
    diagnostics
        .split(": ")
        .find(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
        .unwrap_or("")
}

fn keys(outcome: &Value) -> Vec<&str> {
    outcome["issue"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| key_of(i["diagnostics"].as_str().unwrap_or("")))
        .collect()
}

/// Asserts a 422 whose first issue is `key` at `path`, the diagnostics starting with `context`.
async fn refused_in(res: reqwest::Response, context: &str, key: &str, path: &str) -> Value {
    let outcome = assert_outcome(res, 422, "invariant").await;
    let issue = &outcome["issue"][0];
    let diagnostics = issue["diagnostics"].as_str().unwrap();
    assert!(
        diagnostics.starts_with(&format!("{context}{key}: ")),
        "{key}: {outcome}"
    );
    assert!(
        diagnostics.len() > context.len() + key.len() + 2,
        "{key}: the human text: {outcome}"
    );
    assert_eq!(issue["expression"], json!([path]), "{key}: {outcome}");
    outcome
}

async fn refused(res: reqwest::Response, key: &str, path: &str) -> Value {
    refused_in(res, "", key, path).await
}

async fn patch(app: &TestApp, path: &str, ops: &Value) -> reqwest::Response {
    app.client
        .patch(app.url(path))
        .header("Content-Type", "application/json-patch+json")
        .body(ops.to_string())
        .send()
        .await
        .expect("request")
}

/// A Patient whose telecom breaks cpt-2 (a value without a system).
fn no_system(id: Option<&str>) -> Value {
    let mut p = json!({"resourceType": "Patient", "identifier": [{"system": "urn:x", "value": "1"}],
        "telecom": [{"value": "555-0101"}]});
    if let Some(id) = id {
        p["id"] = json!(id);
    }
    p
}

fn session(start: &str, end: Option<&str>) -> Value {
    let mut a = json!({"resourceType": "Appointment", "status": "booked", "start": start,
        "participant": [{"actor": {"reference": "Practitioner/moss"}, "status": "accepted"}]});
    if let Some(end) = end {
        a["end"] = json!(end);
    }
    a
}

both_backends! {
    async fn each_invariant_is_refused_with_its_path_and_its_passing_example_stored(app: TestApp) {
        let rows = rows();
        for row in &rows {
            let (key, path) = (row["key"].as_str().unwrap(), row["path"].as_str().unwrap());
            let rt = row["refused"]["resourceType"].as_str().unwrap();
            let outcome = refused(app.post_json(rt, &row["refused"]).await, key, path).await;
            assert_eq!(keys(&outcome), [key], "{key}: only its own invariant is broken: {outcome}");
        }
        assert_eq!(app.version_count().await, 0, "nothing refused was written");
        for row in &rows {
            let rt = row["accepted"]["resourceType"].as_str().unwrap();
            let res = app.post_json(rt, &row["accepted"]).await;
            assert_eq!(res.status(), 201, "{}: {}", row["key"], res.text().await.unwrap());
        }
        assert_eq!(app.version_count().await, rows.len());
    }

    async fn every_write_path_refuses_a_broken_invariant_and_writes_nothing(app: TestApp) {
        let path = "Patient.telecom[0]";
        // Create by PUT, then an update of a stored record: refused, the record unchanged.
        refused(app.put_json("Patient/p1", &no_system(Some("p1"))).await, "cpt-2", path).await;
        assert_eq!(app.get("Patient/p1").await.status(), 404);
        let valid = json!({"resourceType": "Patient", "id": "p1", "name": [{"family": "Lee"}]});
        assert_eq!(app.put_json("Patient/p1", &valid).await.status(), 201);
        refused(app.put_json("Patient/p1", &no_system(Some("p1"))).await, "cpt-2", path).await;
        // A PATCH whose result breaks it.
        let ops = json!([{"op": "add", "path": "/telecom", "value": [{"value": "555-0101"}]}]);
        refused_in(patch(&app, "Patient/p1", &ops).await, "patch of Patient: ", "cpt-2", path).await;
        let stored = json(app.get("Patient/p1").await).await;
        assert_eq!(stored["meta"]["versionId"], "1", "{stored}");
        assert!(stored.get("telecom").is_none(), "{stored}");
        // Conditional create and conditional update.
        let res = app.client.post(app.url("Patient")).header("Content-Type", FHIR_JSON)
            .header("If-None-Exist", "identifier=urn:x|1").body(no_system(None).to_string()).send().await.unwrap();
        refused(res, "cpt-2", path).await;
        refused(app.put_json("Patient?identifier=urn:x|1", &no_system(None)).await, "cpt-2", path).await;
        // XML.
        let xml = r#"<Patient xmlns="http://hl7.org/fhir"><telecom><value value="555-0101"/></telecom></Patient>"#;
        refused(app.post_raw("Patient", FHIR_XML, xml).await, "cpt-2", path).await;
        assert_eq!(app.version_count().await, 1);

        // A transaction fails whole, naming the entry and the path in the Bundle.
        let entries = json!([
            {"resource": {"resourceType": "Patient", "name": [{"family": "Ok"}]}, "request": {"method": "POST", "url": "Patient"}},
            {"resource": no_system(None), "request": {"method": "POST", "url": "Patient"}},
        ]);
        let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
        refused_in(app.post_json("", &tx).await, "entry 1 (POST Patient): ", "cpt-2", "Bundle.entry[1].resource.telecom[0]").await;
        assert_eq!(app.version_count().await, 1);
        // A batch answers that entry alone.
        let batch = json(app.post_json("", &json!({"resourceType": "Bundle", "type": "batch", "entry": entries})).await).await;
        assert_eq!(batch["entry"][0]["response"]["status"], "201 Created", "{batch}");
        assert_eq!(batch["entry"][1]["response"]["status"], "422 Unprocessable Entity", "{batch}");
        let issue = &batch["entry"][1]["response"]["outcome"]["issue"][0];
        assert_eq!(issue["code"], "invariant", "{batch}");
        assert_eq!(issue["expression"], json!(["Bundle.entry[1].resource.telecom[0]"]), "{batch}");
        assert_eq!(app.version_count().await, 2);
        // A PATCH entry (a JSON Patch in a Binary), and a PUT entry on the stored record.
        let data = base64_of(&ops.to_string());
        let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": {"resourceType": "Binary", "contentType": "application/json-patch+json", "data": data},
             "request": {"method": "PATCH", "url": "Patient/p1"}}]});
        let outcome = assert_outcome(app.post_json("", &tx).await, 422, "invariant").await;
        assert_eq!(keys(&outcome), ["cpt-2"], "{outcome}");
        assert!(outcome["issue"][0]["diagnostics"].as_str().unwrap().starts_with("entry 0 (PATCH Patient/p1): "), "{outcome}");
        assert_eq!(outcome["issue"][0]["expression"], json!([path]), "the patched resource's own path: {outcome}");
        let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": no_system(Some("p1")), "request": {"method": "PUT", "url": "Patient/p1"}}]});
        refused_in(app.post_json("", &tx).await, "entry 0 (PUT Patient/p1): ", "cpt-2", "Bundle.entry[0].resource.telecom[0]").await;
        assert_eq!(json(app.get("Patient/p1").await).await["meta"]["versionId"], "1");
        assert_eq!(app.version_count().await, 2);

        // The trail the server writes of all this (refusals, a search with its query) keeps the
        // invariants too: AuditEvent's sev-1 and its data types'.
        assert_eq!(app.get("Patient?identifier=urn:x|1").await.status(), 200);
        let officer = app.client_with("system/AuditEvent.rs", None);
        let mut events = Vec::new();
        for _ in 0..200 {
            let bundle = json(officer.get(app.url("AuditEvent?_count=500")).send().await.unwrap()).await;
            events = crate::helpers::entries(&bundle);
            if events.len() >= 15 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        assert!(events.len() >= 15, "{} events", events.len());
        for e in &events {
            assert_eq!(tandem::fhir::invariants::violations(&e["resource"]), [], "{}", e["resource"]);
        }
    }

    async fn a_booked_session_holds_its_time_only_with_an_end_not_before_its_start(app: TestApp) {
        let moss = json!({"resourceType": "Practitioner", "id": "moss", "name": [{"family": "Moss"}]});
        assert_eq!(app.put_json("Practitioner/moss", &moss).await.status(), 201);
        // Booked without an end: app-2 and app-3, both named.
        let outcome = refused(app.post_json("Appointment", &session("2026-12-01T10:00:00Z", None)).await, "app-2", "Appointment").await;
        assert_eq!(keys(&outcome), ["app-2", "app-3"], "{outcome}");
        assert!(outcome["issue"][1]["diagnostics"].as_str().unwrap()
            .starts_with("app-3: Only proposed or cancelled appointments can be missing start/end dates"), "{outcome}");
        // Without start and end: app-3 alone.
        let mut open = session("2026-12-01T10:00:00Z", None);
        open.as_object_mut().unwrap().remove("start");
        let outcome = refused(app.post_json("Appointment", &open).await, "app-3", "Appointment").await;
        assert_eq!(keys(&outcome), ["app-3"], "{outcome}");
        // An end before the start (start and end are no Period in R4: this server's rule).
        let backwards = session("2026-12-01T11:00:00Z", Some("2026-12-01T10:00:00Z"));
        let outcome = refused(app.post_json("Appointment", &backwards).await, "appointment-period", "Appointment").await;
        assert!(outcome["issue"][0]["diagnostics"].as_str().unwrap().contains("Appointment.end is before Appointment.start"), "{outcome}");
        // In a transaction too.
        let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": backwards, "request": {"method": "POST", "url": "Appointment"}}]});
        refused_in(app.post_json("", &tx).await, "entry 0 (POST Appointment): ", "appointment-period", "Bundle.entry[0].resource").await;
        assert_eq!(app.version_count().await, 1, "only the practitioner");

        // A real booking holds its hour: an overlapping one is a 409.
        let booked = app.create(&session("2026-12-01T10:00:00Z", Some("2026-12-01T11:00:00Z"))).await;
        let id = booked["id"].as_str().unwrap().to_string();
        let overlapping = session("2026-12-01T10:30:00Z", Some("2026-12-01T11:30:00Z"));
        assert_outcome(app.post_json("Appointment", &overlapping).await, 409, "conflict").await;
        // Neither an update that turns it backwards nor a PATCH that drops its end frees the hour.
        let mut turned = backwards_with_id(&id);
        turned["participant"] = booked["participant"].clone();
        refused(app.put_json(&format!("Appointment/{id}"), &turned).await, "appointment-period", "Appointment").await;
        let drop_end = json!([{"op": "remove", "path": "/end"}]);
        let outcome = refused_in(patch(&app, &format!("Appointment/{id}"), &drop_end).await, "patch of Appointment: ", "app-2", "Appointment").await;
        assert_eq!(keys(&outcome), ["app-2", "app-3"], "{outcome}");
        assert_outcome(app.post_json("Appointment", &overlapping).await, 409, "conflict").await;
        let stored = json(app.get(&format!("Appointment/{id}")).await).await;
        assert_eq!((stored["meta"]["versionId"].as_str(), stored["end"].as_str()), (Some("1"), Some("2026-12-01T11:00:00Z")));
        // A proposed session may still go without times (app-3 allows it); it holds none.
        let mut proposed = open.clone();
        proposed["status"] = json!("proposed");
        assert_eq!(app.post_json("Appointment", &proposed).await.status(), 201);
    }
}

fn backwards_with_id(id: &str) -> Value {
    let mut a = session("2026-12-01T11:00:00Z", Some("2026-12-01T10:00:00Z"));
    a["id"] = json!(id);
    a
}

fn base64_of(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}
