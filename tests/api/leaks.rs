//! Who may learn what (issue 21): a refusal tells a caller nothing it may not see, and every
//! interaction checks every permission its effects need.
//! - Bulk-export jobs and files belong to the client that started them (issuer, subject, client id)
//!   and its scopes at status and download time; tokens without a subject cannot export.
//! - For a `patient/` token, a record outside its compartment answers byte for byte as a missing
//!   one: read and vread (deleted or not), DELETE, PATCH (with `test` ops, empty, in a batch), and a
//!   reference to it from a new or updated resource.
//! - Conditional interactions need search (`s`); what a write answers beyond what the caller sent
//!   needs read (`r`); a patch that changes nothing writes nothing.

use std::time::Duration;

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::*;

const ISSUER: &str = "https://idp.clinic.example";
const AUDIENCE: &str = "https://fhir.clinic.example";
const SECRET: &str = "a-shared-secret-of-at-least-32-bytes!!";

/// A server that takes HS256 tokens from a pretend identity provider, so that tests choose every
/// claim (a `sub` or none, the client id). Its default client is `ehr`, subject `ehr-sync`.
async fn spawn_with_idp(backend: Backend) -> TestApp {
    let db = TestDb::new(backend);
    let secret_file = db.dir.path().join("hs256.secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    let mut app = TestApp::spawn_configured_on(backend, db, |c| {
        c.auth_hs256_secret_file = Some(secret_file.clone());
        c.auth_allow_hs256 = true;
        c.auth_issuer = Some(ISSUER.into());
        c.auth_audience = Some(AUDIENCE.into());
    })
    .await;
    app.client = idp_client(Some("ehr-sync"), Some("ehr"), "system/*.cruds", None);
    app
}

/// A client with an IdP token of these claims.
fn idp_client(sub: Option<&str>, client_id: Option<&str>, scope: &str, patient: Option<&str>) -> reqwest::Client {
    let now = jsonwebtoken::get_current_timestamp();
    let mut claims = json!({"iss": ISSUER, "aud": AUDIENCE, "exp": now + 600, "iat": now, "scope": scope});
    if let Some(s) = sub {
        claims["sub"] = json!(s);
    }
    if let Some(c) = client_id {
        claims["client_id"] = json!(c);
    }
    if let Some(p) = patient {
        claims["patient"] = json!(p);
    }
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    bearer_client(&token)
}

async fn kick_off(app: &TestApp, client: &reqwest::Client, path: &str) -> reqwest::Response {
    client
        .get(app.url(path))
        .header("Prefer", "respond-async")
        .send()
        .await
        .unwrap()
}

/// Polls a status URL until the manifest is there.
async fn manifest(client: &reqwest::Client, status_url: &str) -> Value {
    for _ in 0..400 {
        let res = client.get(status_url).send().await.unwrap();
        match res.status().as_u16() {
            202 => tokio::time::sleep(Duration::from_millis(50)).await,
            200 => return res.json().await.unwrap(),
            other => panic!("status {other}: {}", res.text().await.unwrap()),
        }
    }
    panic!("the export did not finish");
}

/// Status and body text of an answer.
async fn answer(res: reqwest::Response) -> (u16, String) {
    let status = res.status().as_u16();
    (status, res.text().await.unwrap())
}

/// Asserts that two answers are the same apart from the id each request named.
fn same_apart_from_id(a: &(u16, String), a_id: &str, b: &(u16, String), b_id: &str) {
    assert_eq!(a.0, b.0, "status: {} vs {}", a.1, b.1);
    assert_eq!(a.1.replace(a_id, "ID"), b.1.replace(b_id, "ID"), "body");
}

/// Ann and Bob, each with a session; `ann` is a patient/*.cruds token of Ann's.
async fn seed_two_patients(app: &TestApp) {
    for id in ["ann", "bob"] {
        let res = app
            .put_json(&format!("Patient/{id}"), &json!({"resourceType": "Patient", "id": id}))
            .await;
        assert_eq!(res.status(), 201);
    }
    let res = app
        .put_json(
            "Practitioner/rivera",
            &json!({"resourceType": "Practitioner", "id": "rivera"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    for (id, who, day) in [("a-ann", "ann", "1"), ("a-bob", "bob", "2"), ("a-gone", "bob", "3")] {
        let res = app
            .put_json(&format!("Appointment/{id}"), &session(id, day, &[who]))
            .await;
        assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    }
    assert_eq!(
        app.client
            .delete(app.url("Appointment/a-gone"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
}

fn session(id: &str, day: &str, patients: &[&str]) -> Value {
    let mut participants = vec![json!({"actor": {"reference": "Practitioner/rivera"}, "status": "accepted"})];
    participants.extend(
        patients
            .iter()
            .map(|p| json!({"actor": {"reference": format!("Patient/{p}")}, "status": "accepted"})),
    );
    json!({"resourceType": "Appointment", "id": id, "status": "booked", "start": format!("2026-12-0{day}T10:00:00Z"),
           "end": format!("2026-12-0{day}T11:00:00Z"), "participant": participants})
}

async fn patch(app: &TestApp, client: &reqwest::Client, path: &str, ops: &Value) -> reqwest::Response {
    client
        .patch(app.url(path))
        .header("Content-Type", "application/json-patch+json")
        .body(ops.to_string())
        .send()
        .await
        .unwrap()
}

fn binary_patch_entry(url: &str, ops: &Value) -> Value {
    let data = base64::engine::general_purpose::STANDARD.encode(ops.to_string());
    json!({"resource": {"resourceType": "Binary", "contentType": "application/json-patch+json", "data": data},
           "request": {"method": "PATCH", "url": url}})
}

async fn post_bundle(app: &TestApp, client: &reqwest::Client, bundle: &Value) -> reqwest::Response {
    client
        .post(app.url(""))
        .header("Content-Type", FHIR_JSON)
        .body(bundle.to_string())
        .send()
        .await
        .unwrap()
}

both_backends! {
    async fn an_export_is_read_only_by_the_client_that_started_it_with_its_scopes(app: TestApp) {
        let app = spawn_with_idp(app.backend).await;
        app.put_json("Patient/m1", &json!({"resourceType": "Patient", "id": "m1"})).await;
        app.put_json("Practitioner/rivera", &json!({"resourceType": "Practitioner", "id": "rivera"})).await;
        let res = kick_off(&app, &app.client, "$export").await;
        assert_eq!(res.status(), 202);
        let status = res.headers()["content-location"].to_str().unwrap().to_string();
        let m = manifest(&app.client, &status).await;
        let files: Vec<String> = m["output"].as_array().unwrap().iter().map(|f| f["url"].as_str().unwrap().to_string()).collect();
        // Patients, Practitioners, and the Questionnaires the server publishes.
        assert_eq!(files.len(), 3, "{m}");
        // The client that started it downloads its files.
        for f in &files {
            let res = app.client.get(f).send().await.unwrap();
            assert_eq!(res.status(), 200);
            assert!(!res.text().await.unwrap().is_empty());
        }
        // The same subject through another client, and another subject of the same client: the job
        // does not exist for them (404, as for an unknown job).
        let other_client = idp_client(Some("ehr-sync"), Some("billing"), "system/*.rs", None);
        let other_subject = idp_client(Some("someone-else"), Some("ehr"), "system/*.rs", None);
        let no_client = idp_client(Some("ehr-sync"), None, "system/*.rs", None);
        let unknown = answer(app.client.get(status.replace(&status[status.len() - 8..], "00000000")).send().await.unwrap()).await;
        assert_eq!(unknown.0, 404);
        for client in [&other_client, &other_subject, &no_client] {
            assert_outcome(client.get(&status).send().await.unwrap(), 404, "not-found").await;
            assert_outcome(client.get(&files[0]).send().await.unwrap(), 404, "not-found").await;
            assert_outcome(client.delete(&status).send().await.unwrap(), 404, "not-found").await;
        }
        // A patient/ token of the very same client and subject never reads a job.
        let patient = idp_client(Some("ehr-sync"), Some("ehr"), "patient/*.rs", Some("m1"));
        assert_outcome(patient.get(&status).send().await.unwrap(), 403, "forbidden").await;
        assert_outcome(patient.get(&files[0]).send().await.unwrap(), 403, "forbidden").await;
        // Nor does the same client once its token no longer reads every type of the job.
        let narrowed = idp_client(Some("ehr-sync"), Some("ehr"), "system/Patient.rs", None);
        assert_outcome(narrowed.get(&status).send().await.unwrap(), 403, "forbidden").await;
        assert_outcome(narrowed.get(&files[0]).send().await.unwrap(), 403, "forbidden").await;
        // A token without a subject names no one: it neither starts nor reads an export.
        let anonymous_sub = idp_client(None, Some("ehr"), "system/*.rs", None);
        let outcome = assert_outcome(kick_off(&app, &anonymous_sub, "$export").await, 403, "forbidden").await;
        assert!(outcome["issue"][0]["diagnostics"].as_str().unwrap().contains("sub"), "{outcome}");
        assert_outcome(anonymous_sub.get(&status).send().await.unwrap(), 403, "forbidden").await;
        assert_outcome(anonymous_sub.get(&files[0]).send().await.unwrap(), 403, "forbidden").await;
        // The starting client still reads it all, with a fresh token of the same claims.
        let again = idp_client(Some("ehr-sync"), Some("ehr"), "system/*.rs", None);
        assert_eq!(again.get(&status).send().await.unwrap().status(), 200);
        assert_eq!(again.get(&files[1]).send().await.unwrap().status(), 200);
        assert_eq!(again.delete(&status).send().await.unwrap().status(), 202);
    }

    async fn a_patch_on_an_outside_record_answers_as_on_a_missing_one(app: TestApp) {
        seed_two_patients(&app).await;
        let ann = app.client_with("patient/*.cruds", Some("ann"));
        let right = json!([{"op": "test", "path": "/status", "value": "booked"}]);
        let wrong = json!([{"op": "test", "path": "/status", "value": "cancelled"}]);
        let change = json!([{"op": "replace", "path": "/status", "value": "cancelled"}]);
        let missing = answer(patch(&app, &ann, "Appointment/nope", &right).await).await;
        assert_eq!(missing.0, 404, "{}", missing.1);
        for ops in [&right, &wrong, &change, &json!([])] {
            for (outside, label) in [("a-bob", "another's record"), ("a-gone", "another's deleted record")] {
                let got = answer(patch(&app, &ann, &format!("Appointment/{outside}"), ops).await).await;
                let nope = answer(patch(&app, &ann, "Appointment/nope", ops).await).await;
                same_apart_from_id(&got, outside, &nope, "nope");
                assert_eq!(got.0, 404, "{label}: {ops}");
            }
        }
        // With If-Match too: visibility is decided before the version is compared.
        let res = ann.patch(app.url("Appointment/a-bob")).header("Content-Type", "application/json-patch+json")
            .header("If-Match", "W/\"7\"").body(right.to_string()).send().await.unwrap();
        let nope = ann.patch(app.url("Appointment/nope")).header("Content-Type", "application/json-patch+json")
            .header("If-Match", "W/\"7\"").body(right.to_string()).send().await.unwrap();
        same_apart_from_id(&answer(res).await, "a-bob", &answer(nope).await, "nope");
        // Inside a batch (and a transaction): the outside and the missing record read the same.
        for kind in ["batch", "transaction"] {
            for ops in [&right, &wrong] {
                let bundle = |id: &str| json!({"resourceType": "Bundle", "type": kind, "entry": [binary_patch_entry(&format!("Appointment/{id}"), ops)]});
                let got = answer(post_bundle(&app, &ann, &bundle("a-bob")).await).await;
                let nope = answer(post_bundle(&app, &ann, &bundle("nope")).await).await;
                let strip = |a: &(u16, String)| {
                    // A batch-response has an id and a time of its own.
                    let mut v: Value = serde_json::from_str(&a.1).unwrap();
                    if let Some(o) = v.as_object_mut() { o.remove("id"); o.remove("meta"); }
                    (a.0, v.to_string())
                };
                same_apart_from_id(&strip(&got), "a-bob", &strip(&nope), "nope");
                assert!(got.1.contains("404 Not Found") || got.0 == 404, "{kind}: {}", got.1);
            }
        }
        // Bob's record is as it was; Ann's own record is still hers to patch.
        let bob = json(app.get("Appointment/a-bob").await).await;
        assert_eq!((bob["status"].as_str(), bob["meta"]["versionId"].as_str()), (Some("booked"), Some("1")));
        let res = patch(&app, &ann, "Appointment/a-ann", &json!([{"op": "test", "path": "/status", "value": "booked"},
            {"op": "replace", "path": "/status", "value": "cancelled"}])).await;
        assert_eq!(res.status(), 200);
        assert_eq!(json(res).await["status"], "cancelled");
    }

    async fn a_patient_token_cannot_tell_an_outside_record_from_a_missing_one(app: TestApp) {
        let app = &app;
        seed_two_patients(app).await;
        let ann = app.client_with("patient/*.cruds", Some("ann"));
        let get = |path: String| { let ann = ann.clone(); async move { answer(ann.get(app.url(&path)).send().await.unwrap()).await } };
        for outside in ["a-bob", "a-gone"] {
            // read and vread, of a record and of its deleted sibling, and of a version it lacks.
            for suffix in ["", "/_history/1", "/_history/2", "/_history/9", "/_history"] {
                let got = get(format!("Appointment/{outside}{suffix}")).await;
                let nope = get(format!("Appointment/nope{suffix}")).await;
                assert_eq!(got.0, 404, "{outside}{suffix}: {}", got.1);
                same_apart_from_id(&got, outside, &nope, "nope");
            }
            // DELETE: 204 for both, and the outside record is untouched.
            let got = answer(ann.delete(app.url(&format!("Appointment/{outside}"))).send().await.unwrap()).await;
            let nope = answer(ann.delete(app.url("Appointment/nope")).send().await.unwrap()).await;
            assert_eq!(got.0, 204);
            same_apart_from_id(&got, outside, &nope, "nope");
        }
        assert_eq!(json(app.get("Appointment/a-bob").await).await["meta"]["versionId"], "1");
        assert_eq!(app.get("Appointment/a-gone").await.status(), 410, "still deleted, nothing written");
        // Without create, an update of an outside record is refused like one of a missing record.
        let updater = app.client_with("patient/*.ru", Some("ann"));
        let body = |id: &str| session(id, "5", &["ann"]);
        let got = answer(updater.put(app.url("Appointment/a-bob")).header("Content-Type", FHIR_JSON).body(body("a-bob").to_string()).send().await.unwrap()).await;
        let nope = answer(updater.put(app.url("Appointment/nope")).header("Content-Type", FHIR_JSON).body(body("nope").to_string()).send().await.unwrap()).await;
        assert_eq!(got.0, 403);
        same_apart_from_id(&got, "a-bob", &nope, "nope");
        // Her own records answer as ever.
        assert_eq!(ann.get(app.url("Appointment/a-ann")).send().await.unwrap().status(), 200);
        assert_eq!(ann.get(app.url("Appointment/a-ann/_history/1")).send().await.unwrap().status(), 200);
        assert_eq!(ann.delete(app.url("Appointment/a-ann")).send().await.unwrap().status(), 204);
        assert_eq!(ann.get(app.url("Appointment/a-ann")).send().await.unwrap().status(), 410);
        assert_eq!(ann.get(app.url("Appointment/a-ann/_history/2")).send().await.unwrap().status(), 410);
    }

    async fn a_reference_to_an_outside_record_is_refused_as_one_to_a_missing_record(app: TestApp) {
        let app = &app;
        seed_two_patients(app).await;
        let ann = app.client_with("patient/*.cruds", Some("ann"));
        let care_team = |other: &str| json!({"resourceType": "CareTeam", "status": "active", "subject": {"reference": "Patient/ann"},
            "participant": [{"member": {"reference": format!("Patient/{other}")}}, {"member": {"reference": "Practitioner/rivera"}}]});
        let post = |body: Value| { let ann = ann.clone(); async move {
            answer(ann.post(app.url("CareTeam")).header("Content-Type", FHIR_JSON).body(body.to_string()).send().await.unwrap()).await } };
        let before = app.version_count().await;
        let got = post(care_team("bob")).await;
        let nope = post(care_team("nobody")).await;
        assert_eq!(got.0, 422, "{}", got.1);
        same_apart_from_id(&got, "bob", &nope, "nobody");
        // The same in a transaction, where references are checked once every entry is written.
        let tx = |other: &str| json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": care_team(other), "request": {"method": "POST", "url": "CareTeam"}}]});
        let got = answer(post_bundle(app, &ann, &tx("bob")).await).await;
        let nope = answer(post_bundle(app, &ann, &tx("nobody")).await).await;
        assert_eq!(got.0, 422, "{}", got.1);
        same_apart_from_id(&got, "bob", &nope, "nobody");
        assert_eq!(app.version_count().await, before, "nothing written");
        // What she may see she may refer to: herself, a practitioner (in a note: a Practitioner
        // participant would assign her to him, which only the clinic may do).
        let mine = json!({"resourceType": "CareTeam", "status": "active", "subject": {"reference": "Patient/ann"},
            "participant": [{"member": {"reference": "Patient/ann"}}],
            "note": [{"authorReference": {"reference": "Practitioner/rivera"}, "text": "my own supports"}]});
        let res = ann.post(app.url("CareTeam")).header("Content-Type", FHIR_JSON)
            .body(mine.to_string()).send().await.unwrap();
        assert_eq!(res.status(), 201);
        let res = ann.post(app.url("CareTeam")).header("Content-Type", FHIR_JSON)
            .body(care_team("ann").to_string()).send().await.unwrap();
        assert_eq!(res.status(), 403, "a Practitioner participant is an assignment");
        // A session she shares with Bob (booked by the clinic) she sees without him, and may not
        // change: a write of her view would remove him, a write of the whole would need to see him.
        let res = app.put_json("Appointment/a-both", &session("a-both", "6", &["ann", "bob"])).await;
        assert_eq!(res.status(), 201);
        let mut shared = json(ann.get(app.url("Appointment/a-both")).send().await.unwrap()).await;
        assert!(!shared.to_string().contains("Patient/bob"), "{shared}");
        shared["comment"] = json!("running late");
        let res = ann.put(app.url("Appointment/a-both")).header("Content-Type", FHIR_JSON).body(shared.to_string()).send().await.unwrap();
        assert_eq!(res.status(), 403, "{}", res.text().await.unwrap());
        let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            binary_patch_entry("Appointment/a-both", &json!([{"op": "replace", "path": "/comment", "value": "on time"}]))]});
        assert_eq!(post_bundle(app, &ann, &tx).await.status(), 403);
        let stored = json(app.get("Appointment/a-both").await).await;
        assert_eq!(stored["meta"]["versionId"], "1", "nothing written");
    }

    async fn a_conditional_create_needs_search_and_shows_the_match_only_with_read(app: TestApp) {
        let app = &app;
        let mut p = patient("Moss");
        p["identifier"] = json!([{"system": "http://clinic.example/mrn", "value": "42"}]);
        app.create(&p).await;
        let create = |client: reqwest::Client| { let body = p.clone(); async move {
            client.post(app.url("Patient")).header("Content-Type", FHIR_JSON)
                .header("If-None-Exist", "identifier=http://clinic.example/mrn|42").body(body.to_string()).send().await.unwrap() } };
        // Create alone: refused, the match is not searched.
        let outcome = assert_outcome(create(app.client_with("system/Patient.c", None)).await, 403, "forbidden").await;
        assert!(outcome["issue"][0]["diagnostics"].as_str().unwrap().contains("'s'"), "{outcome}");
        // With search: 200, nothing created, but no body without read.
        let res = create(app.client_with("system/Patient.cs", None)).await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["etag"], "W/\"1\"");
        assert!(res.text().await.unwrap().is_empty());
        // With read too: the match.
        let res = create(app.client_with("system/Patient.crs", None)).await;
        assert_eq!(res.status(), 200);
        assert_eq!(json(res).await["name"][0]["family"], "Moss");
        // No match: created, and the caller sees what it sent.
        let res = app.client_with("system/Patient.cs", None).post(app.url("Patient")).header("Content-Type", FHIR_JSON)
            .header("If-None-Exist", "identifier=http://clinic.example/mrn|43").body(patient("Fern").to_string()).send().await.unwrap();
        assert_eq!(res.status(), 201);
        assert_eq!(json(res).await["name"][0]["family"], "Fern");
        // The same rules in a batch.
        let entry = json!({"resource": p, "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=http://clinic.example/mrn|42"}});
        let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [entry]});
        let out = entries(&json(post_bundle(app, &app.client_with("system/Patient.c", None), &batch).await).await);
        assert_eq!(out[0]["response"]["status"], "403 Forbidden", "{}", out[0]);
        let out = entries(&json(post_bundle(app, &app.client_with("system/Patient.cs", None), &batch).await).await);
        assert_eq!(out[0]["response"]["status"], "200 OK", "{}", out[0]);
        assert!(out[0].get("resource").is_none(), "{}", out[0]);
        let out = entries(&json(post_bundle(app, &app.client_with("system/Patient.crs", None), &batch).await).await);
        assert_eq!(out[0]["resource"]["name"][0]["family"], "Moss");
        assert_eq!(app.count("SELECT COUNT(*) AS n FROM resources WHERE res_type = 'Patient'"), 2);
    }

    async fn conditional_writes_need_search(app: TestApp) {
        let app = &app;
        let mut p = patient("Moss");
        p["identifier"] = json!([{"system": "http://clinic.example/mrn", "value": "42"}]);
        let id = app.create(&p).await["id"].as_str().unwrap().to_string();
        let q = "Patient?identifier=http://clinic.example/mrn|42";
        let mut updated = p.clone();
        updated["gender"] = json!("other");
        let put = |client: reqwest::Client| { let body = updated.clone(); async move {
            client.put(app.url(q)).header("Content-Type", FHIR_JSON).body(body.to_string()).send().await.unwrap() } };
        let ops = json!([{"op": "replace", "path": "/gender", "value": "unknown"}]);
        // Without search: refused, nothing written.
        assert_outcome(put(app.client_with("system/Patient.u", None)).await, 403, "forbidden").await;
        assert_outcome(patch(app, &app.client_with("system/Patient.u", None), q, &ops).await, 403, "forbidden").await;
        assert_outcome(app.client_with("system/Patient.d", None).delete(app.url(q)).send().await.unwrap(), 403, "forbidden").await;
        let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"resource": updated.clone(), "request": {"method": "PUT", "url": q}}, binary_patch_entry(q, &ops),
            {"request": {"method": "DELETE", "url": q}}]});
        let out = entries(&json(post_bundle(app, &app.client_with("system/Patient.ud", None), &batch).await).await);
        for e in &out {
            assert_eq!(e["response"]["status"], "403 Forbidden", "{e}");
        }
        assert_eq!(json(app.get(&format!("Patient/{id}")).await).await["meta"]["versionId"], "1");
        // With search: they run.
        assert_eq!(put(app.client_with("system/Patient.us", None)).await.status(), 200);
        assert_eq!(patch(app, &app.client_with("system/Patient.us", None), q, &ops).await.status(), 200);
        assert_eq!(app.client_with("system/Patient.ds", None).delete(app.url(q)).send().await.unwrap().status(), 204);
        assert_eq!(app.get(&format!("Patient/{id}")).await.status(), 410);
    }

    async fn a_patch_shows_its_result_only_with_read_and_an_empty_one_writes_nothing(app: TestApp) {
        let id = app.create(&patient("Moss")).await["id"].as_str().unwrap().to_string();
        let path = format!("Patient/{id}");
        let updater = app.client_with("system/Patient.u", None);
        let before = app.version_count().await;
        // Nothing to change: 200 with the current version, no new version, no history entry.
        for ops in [json!([]), json!([{"op": "test", "path": "/gender", "value": "female"}]),
                    json!([{"op": "replace", "path": "/gender", "value": "female"}])] {
            let res = patch(&app, &updater, &path, &ops).await;
            assert_eq!(res.status(), 200, "{ops}");
            assert_eq!(res.headers()["etag"], "W/\"1\"", "{ops}");
            assert!(res.text().await.unwrap().is_empty(), "no body without read: {ops}");
            let res = patch(&app, &app.client, &path, &ops).await;
            assert_eq!(res.status(), 200);
            assert_eq!(json(res).await["meta"]["versionId"], "1", "the current version: {ops}");
        }
        assert_eq!(app.version_count().await, before, "nothing written");
        let history = json(app.get(&format!("{path}/_history")).await).await;
        assert_eq!(entries(&history).len(), 1);
        // A change by an update-only token: stored, answered without the body.
        let res = patch(&app, &updater, &path, &json!([{"op": "replace", "path": "/gender", "value": "other"}])).await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["etag"], "W/\"2\"");
        assert!(res.text().await.unwrap().is_empty());
        // With read: the result.
        let reader = app.client_with("system/Patient.ru", None);
        let res = patch(&app, &reader, &path, &json!([{"op": "replace", "path": "/gender", "value": "male"}])).await;
        assert_eq!(json(res).await["gender"], "male");
        // In a batch: the entry carries no resource without read, and an empty patch writes nothing.
        let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
            binary_patch_entry(&path, &json!([])), binary_patch_entry(&path, &json!([{"op": "replace", "path": "/gender", "value": "unknown"}]))]});
        let out = entries(&json(post_bundle(&app, &updater, &batch).await).await);
        assert_eq!(out[0]["response"]["status"], "200 OK", "{}", out[0]);
        assert_eq!(out[0]["response"]["etag"], "W/\"3\"", "{}", out[0]);
        assert_eq!(out[1]["response"]["etag"], "W/\"4\"", "{}", out[1]);
        assert!(out.iter().all(|e| e.get("resource").is_none()), "{out:?}");
        let out = entries(&json(post_bundle(&app, &reader, &batch).await).await);
        assert_eq!(out[0]["resource"]["meta"]["versionId"], "4");
        assert_eq!(out[1]["resource"]["gender"], "unknown");
        assert_eq!(entries(&json(app.get(&format!("{path}/_history")).await).await).len(), 4);
        // In a transaction too.
        let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [binary_patch_entry(&path, &json!([]))]});
        let res = post_bundle(&app, &app.client, &tx).await;
        assert_eq!(res.status(), 200);
        let out = entries(&json(res).await);
        assert_eq!(out[0]["response"]["etag"], "W/\"4\"", "{}", out[0]);
        assert_eq!(entries(&json(app.get(&format!("{path}/_history")).await).await).len(), 4);
    }
}
