//! Conditional create, update, delete and patch (http.html), their 0 / 1 / many cases, JSON Patch,
//! and the same inside Bundles.

use base64::Engine;
use futures_util::future::join_all;
use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::*;

fn with_mrn(family: &str, mrn: &str) -> Value {
    json!({"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": mrn}], "name": [{"family": family}], "birthDate": "1980-05-17"})
}

async fn conditional_create(app: &TestApp, criteria: &str, body: &Value) -> reqwest::Response {
    app.client
        .post(app.url("Patient"))
        .header("Content-Type", FHIR_JSON)
        .header("If-None-Exist", criteria)
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

async fn send(
    app: &TestApp,
    method: reqwest::Method,
    path: impl AsRef<str>,
    content_type: &str,
    body: String,
) -> reqwest::Response {
    app.client
        .request(method, app.url(path.as_ref()))
        .header("Content-Type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn matching(app: &TestApp, query: &str) -> usize {
    entries(&json(app.get(&format!("Patient?{query}")).await).await).len()
}

const JSON_PATCH: &str = "application/json-patch+json";

both_backends! {
    async fn conditional_create_finds_none_one_or_many(app: TestApp) {
        // None: created.
        let res = conditional_create(&app, "identifier=urn:mrn|A1", &with_mrn("Okafor", "A1")).await;
        assert_eq!(res.status(), 201);
        let first = json(res).await;
        // One: nothing is created; 200 with the match.
        let before = app.version_count().await;
        let res = conditional_create(&app, "identifier=urn:mrn|A1", &with_mrn("Other", "A1")).await;
        assert_eq!(res.status(), 200);
        assert_eq!(json(res).await["id"], first["id"]);
        assert_eq!(app.version_count().await, before);
        // Many: 412, nothing written.
        app.create(&with_mrn("Twin", "DUP")).await;
        app.create(&with_mrn("Twin", "DUP")).await;
        let before = app.version_count().await;
        assert_outcome(conditional_create(&app, "identifier=urn:mrn|DUP", &with_mrn("Third", "DUP")).await, 412, "conflict").await;
        assert_eq!(app.version_count().await, before);
        // Criteria the server does not understand are refused, not ignored.
        assert_outcome(conditional_create(&app, "colour=blue", &with_mrn("X", "X1")).await, 400, "invalid").await;
    }

    async fn concurrent_conditional_creates_make_one_resource(app: TestApp) {
        let attempts = (0..12).map(|i| {
            let (client, url) = (app.client.clone(), app.url("Patient"));
            let body = with_mrn(&format!("Racer{i}"), "RACE").to_string();
            async move {
                client.post(url).header("Content-Type", FHIR_JSON).header("If-None-Exist", "identifier=urn:mrn|RACE")
                    .body(body).send().await.unwrap().status().as_u16()
            }
        });
        let statuses = join_all(attempts).await;
        assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?}");
        assert!(statuses.iter().all(|s| *s == 201 || *s == 200), "{statuses:?}");
        assert_eq!(matching(&app, "identifier=urn:mrn|RACE").await, 1);
    }

    async fn conditional_update_creates_updates_or_refuses(app: TestApp) {
        let put = |q: &str, body: &Value| send(&app, reqwest::Method::PUT, format!("Patient?{q}"), FHIR_JSON, body.to_string());
        // None: created with a new id.
        let res = put("identifier=urn:mrn|U1", &with_mrn("Nowak", "U1")).await;
        assert_eq!(res.status(), 201);
        let created = json(res).await;
        let id = created["id"].as_str().unwrap().to_string();
        // One: that resource is updated.
        let res = put("identifier=urn:mrn|U1", &with_mrn("Nowak-Kim", "U1")).await;
        assert_eq!(res.status(), 200);
        let updated = json(res).await;
        assert_eq!(updated["id"], id.as_str());
        assert_eq!(updated["meta"]["versionId"], "2");
        // A body id that is not the match's: 400.
        let mut wrong = with_mrn("X", "U1");
        wrong["id"] = json!("someone-else");
        assert_outcome(put("identifier=urn:mrn|U1", &wrong).await, 400, "invalid").await;
        // No match, and the body names an id that exists but does not match: 409.
        let mut taken = with_mrn("Y", "U2");
        taken["id"] = json!(id.clone());
        assert_outcome(put("identifier=urn:mrn|U2", &taken).await, 409, "conflict").await;
        // Many: 412.
        app.create(&with_mrn("A", "U3")).await;
        app.create(&with_mrn("B", "U3")).await;
        assert_outcome(put("identifier=urn:mrn|U3", &with_mrn("C", "U3")).await, 412, "conflict").await;
        // No criteria at all: 400.
        assert_outcome(send(&app, reqwest::Method::PUT, "Patient", FHIR_JSON, with_mrn("Z", "Z").to_string()).await, 400, "invalid").await;
    }

    async fn conditional_delete_removes_none_one_or_refuses_many(app: TestApp) {
        let delete = |q: &str| { let u = app.url(&format!("Patient?{q}")); let c = app.client.clone(); async move { c.delete(u).send().await.unwrap() } };
        assert_eq!(delete("identifier=urn:mrn|NONE").await.status(), 204);
        let one = app.create(&with_mrn("Solo", "D1")).await;
        assert_eq!(delete("identifier=urn:mrn|D1").await.status(), 204);
        assert_eq!(app.get(&format!("Patient/{}", one["id"].as_str().unwrap())).await.status(), 410);
        app.create(&with_mrn("A", "D2")).await;
        app.create(&with_mrn("B", "D2")).await;
        assert_outcome(delete("identifier=urn:mrn|D2").await, 412, "conflict").await;
        assert_eq!(matching(&app, "identifier=urn:mrn|D2").await, 2, "nothing was deleted");
    }

    async fn json_patch_updates_in_place_and_checks_version_and_validity(app: TestApp) {
        let p = app.create(&with_mrn("Patch", "P1")).await;
        let id = p["id"].as_str().unwrap().to_string();
        let url = format!("Patient/{id}");
        let patch = |ops: Value| ops.to_string();
        let res = send(&app, reqwest::Method::PATCH, &url, JSON_PATCH,
            patch(json!([{"op": "replace", "path": "/birthDate", "value": "1981-01-02"}, {"op": "add", "path": "/gender", "value": "female"}]))).await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["etag"], "W/\"2\"");
        let patched = json(res).await;
        assert_eq!(patched["birthDate"], "1981-01-02");
        assert_eq!(patched["gender"], "female");
        assert_eq!(patched["name"][0]["family"], "Patch");
        // Indexes follow: the new birth date finds it.
        assert_eq!(matching(&app, "birthdate=1981-01-02").await, 1);
        // A stale If-Match: 412, nothing changes.
        let before = app.version_count().await;
        let res = app.client.patch(app.url(&url)).header("Content-Type", JSON_PATCH).header("If-Match", "W/\"1\"")
            .body(patch(json!([{"op": "replace", "path": "/gender", "value": "male"}]))).send().await.unwrap();
        assert_outcome(res, 412, "conflict").await;
        let res = app.client.patch(app.url(&url)).header("Content-Type", JSON_PATCH).header("If-Match", "W/\"2\"")
            .body(patch(json!([{"op": "replace", "path": "/gender", "value": "male"}]))).send().await.unwrap();
        assert_eq!(res.status(), 200);
        // A result that is not a valid Patient, a failed test op, a change of id: 422, nothing written.
        let before2 = app.version_count().await;
        assert_eq!(before2, before + 1);
        for ops in [json!([{"op": "add", "path": "/colour", "value": "blue"}]),
                    json!([{"op": "test", "path": "/gender", "value": "female"}]),
                    json!([{"op": "replace", "path": "/id", "value": "other"}]),
                    json!([{"op": "add", "path": "/active", "value": "yes"}]),
                    json!([{"op": "replace", "path": "/birthDate", "value": "not a date"}])] {
            assert_outcome(send(&app, reqwest::Method::PATCH, &url, JSON_PATCH, patch(ops.clone())).await, 422, "processing").await;
        }
        assert_eq!(app.version_count().await, before2);
        // Not a JSON Patch, or another media type.
        assert_outcome(send(&app, reqwest::Method::PATCH, &url, JSON_PATCH, "{\"op\":1}".into()).await, 400, "invalid").await;
        assert_outcome(send(&app, reqwest::Method::PATCH, &url, FHIR_JSON, "[]".into()).await, 415, "not-supported").await;
        assert_outcome(send(&app, reqwest::Method::PATCH, "Patient/nobody", JSON_PATCH, "[]".into()).await, 404, "not-found").await;
        // Conditional patch: one match is patched; none is 404; many is 412.
        let res = send(&app, reqwest::Method::PATCH, "Patient?identifier=urn:mrn|P1", JSON_PATCH,
            patch(json!([{"op": "replace", "path": "/gender", "value": "other"}]))).await;
        assert_eq!(res.status(), 200);
        assert_eq!(json(res).await["gender"], "other");
        assert_eq!(send(&app, reqwest::Method::PATCH, "Patient?identifier=urn:mrn|NOPE", JSON_PATCH, "[]".into()).await.status(), 404);
        app.create(&with_mrn("A", "P2")).await;
        app.create(&with_mrn("B", "P2")).await;
        assert_eq!(send(&app, reqwest::Method::PATCH, "Patient?identifier=urn:mrn|P2", JSON_PATCH, "[]".into()).await.status(), 412);
    }

    async fn a_patch_is_held_to_the_scheduling_rules(app: TestApp) {
        app.put_json("Practitioner/p", &json!({"resourceType": "Practitioner", "id": "p"})).await;
        let session = |start: &str, end: &str| json!({"resourceType": "Appointment", "status": "booked", "start": start, "end": end,
            "participant": [{"actor": {"reference": "Practitioner/p"}, "status": "accepted"}]});
        app.create(&session("2026-12-01T10:00:00Z", "2026-12-01T11:00:00Z")).await;
        let later = app.create(&session("2026-12-01T12:00:00Z", "2026-12-01T13:00:00Z")).await;
        let url = format!("Appointment/{}", later["id"].as_str().unwrap());
        let ops = json!([{"op": "replace", "path": "/start", "value": "2026-12-01T10:30:00Z"}]);
        assert_outcome(send(&app, reqwest::Method::PATCH, &url, JSON_PATCH, ops.to_string()).await, 409, "conflict").await;
        assert_eq!(json(app.get(&url).await).await["meta"]["versionId"], "1");
    }

    async fn bundles_carry_conditional_entries_patches_and_searches(app: TestApp) {
        let existing = app.create(&with_mrn("Known", "B1")).await;
        let existing_id = existing["id"].as_str().unwrap().to_string();
        app.create(&with_mrn("Gone", "B2")).await;
        let patch = base64::engine::general_purpose::STANDARD.encode(json!([{"op": "add", "path": "/gender", "value": "female"}]).to_string());
        let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            // A conditional create that matches: the urn:uuid stands for the existing patient.
            {"fullUrl": "urn:uuid:0b5d8a2c-9a4e-4e38-9c1d-2f0a3cbd1e01", "resource": with_mrn("Known again", "B1"),
             "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:mrn|B1"}},
            // One that does not: created.
            {"fullUrl": "urn:uuid:0b5d8a2c-9a4e-4e38-9c1d-2f0a3cbd1e02", "resource": with_mrn("New", "B3"),
             "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:mrn|B3"}},
            {"resource": {"resourceType": "CareTeam", "status": "active", "subject": {"reference": "urn:uuid:0b5d8a2c-9a4e-4e38-9c1d-2f0a3cbd1e01"},
                          "participant": [{"member": {"reference": "urn:uuid:0b5d8a2c-9a4e-4e38-9c1d-2f0a3cbd1e02"}}]},
             "request": {"method": "POST", "url": "CareTeam"}},
            {"resource": with_mrn("Upserted", "B4"), "request": {"method": "PUT", "url": "Patient?identifier=urn:mrn|B4"}},
            {"request": {"method": "DELETE", "url": "Patient?identifier=urn:mrn|B2"}},
            {"resource": {"resourceType": "Binary", "contentType": "application/json-patch+json", "data": patch},
             "request": {"method": "PATCH", "url": format!("Patient/{existing_id}")}},
            {"request": {"method": "GET", "url": "Patient?identifier=urn:mrn|B1"}},
        ]});
        let res = app.post_json("", &tx).await;
        assert_eq!(res.status(), 200);
        let out = json(res).await;
        let status = |i: usize| out["entry"][i]["response"]["status"].as_str().unwrap().to_string();
        assert_eq!(status(0), "200 OK");
        assert_eq!(out["entry"][0]["resource"]["id"], existing_id.as_str());
        assert_eq!(status(1), "201 Created");
        let new_id = out["entry"][1]["resource"]["id"].as_str().unwrap().to_string();
        assert_eq!(status(2), "201 Created");
        assert_eq!(out["entry"][2]["resource"]["subject"]["reference"], format!("Patient/{existing_id}"));
        assert_eq!(out["entry"][2]["resource"]["participant"][0]["member"]["reference"], format!("Patient/{new_id}"));
        assert_eq!(status(3), "201 Created");
        assert_eq!(status(4), "204 No Content");
        assert_eq!(status(5), "200 OK");
        assert_eq!(out["entry"][5]["resource"]["gender"], "female");
        // The search runs last (GET after the writes) and sees the patched patient.
        assert_eq!(out["entry"][6]["resource"]["resourceType"], "Bundle");
        assert_eq!(out["entry"][6]["resource"]["total"], 1);
        assert_eq!(out["entry"][6]["resource"]["entry"][0]["resource"]["gender"], "female");
        assert_eq!(matching(&app, "identifier=urn:mrn|B2").await, 0);
        // A conditional entry that matches many fails the whole transaction.
        app.create(&with_mrn("A", "B5")).await;
        app.create(&with_mrn("B", "B5")).await;
        let before = app.version_count().await;
        let bad = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": with_mrn("New", "B6"), "request": {"method": "POST", "url": "Patient"}},
            {"request": {"method": "DELETE", "url": "Patient?identifier=urn:mrn|B5"}}]});
        assert_outcome(app.post_json("", &bad).await, 412, "conflict").await;
        assert_eq!(app.version_count().await, before);
        // An entry's ifMatch: a stale version fails the whole transaction, the current one writes.
        let guarded = |etag: &str| json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": with_mrn("New", "B7"), "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Patient", "id": existing_id, "active": false},
             "request": {"method": "PUT", "url": format!("Patient/{existing_id}"), "ifMatch": etag}}]});
        assert_outcome(app.post_json("", &guarded("W/\"1\"")).await, 412, "conflict").await;
        assert_eq!(app.version_count().await, before);
        let res = app.post_json("", &guarded("W/\"2\"")).await;
        assert_eq!(res.status(), 200);
        let out = json(res).await;
        assert_eq!(out["entry"][1]["response"]["status"], "200 OK");
        assert_eq!(out["entry"][1]["response"]["etag"], "W/\"3\"");
        assert_eq!(matching(&app, "identifier=urn:mrn|B7").await, 1);
    }
}
