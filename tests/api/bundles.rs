//! transaction and batch Bundles: all or nothing, urn:uuid references, spec order, and the
//! scheduling rules inside bundles as everywhere.

use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::*;
use crate::scheduling::{appointment, clinic, put_ok};

fn entry(method: &str, url: &str, full_url: Option<&str>, resource: Option<Value>) -> Value {
    let mut e = json!({"request": {"method": method, "url": url}});
    if let Some(f) = full_url {
        e["fullUrl"] = json!(f);
    }
    if let Some(r) = resource {
        e["resource"] = r;
    }
    e
}

fn bundle(kind: &str, entries: Vec<Value>) -> Value {
    json!({"resourceType": "Bundle", "type": kind, "entry": entries})
}

fn statuses(response: &Value) -> Vec<String> {
    response["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap().to_string())
        .collect()
}

both_backends! {
    async fn a_transaction_resolves_urn_uuid_references_and_commits_whole(app: TestApp) {
        let b = bundle("transaction", vec![
            entry("POST", "Appointment", None, Some(json!({"resourceType": "Appointment", "status": "booked",
                "start": "2026-12-01T10:00:00Z", "end": "2026-12-01T10:50:00Z",
                "participant": [{"actor": {"reference": "urn:uuid:5a0c3f6e-0001-4000-8000-000000000001"}, "status": "accepted"},
                                {"actor": {"reference": "urn:uuid:5a0c3f6e-0001-4000-8000-000000000002"}, "status": "accepted"}]}))),
            entry("POST", "Patient", Some("urn:uuid:5a0c3f6e-0001-4000-8000-000000000001"), Some(patient("Tui"))),
            entry("POST", "Practitioner", Some("urn:uuid:5a0c3f6e-0001-4000-8000-000000000002"), Some(json!({"resourceType": "Practitioner", "name": [{"family": "Moss"}]}))),
            entry("PUT", "Location/room-9", None, Some(json!({"resourceType": "Location", "id": "room-9", "name": "Room 9"}))),
        ]);
        let res = app.post_json("", &b).await;
        assert_eq!(res.status(), 200);
        let out = json(res).await;
        assert_eq!(out["type"], "transaction-response");
        assert_eq!(statuses(&out), ["201 Created", "201 Created", "201 Created", "201 Created"], "in request order");
        let patient_location = out["entry"][1]["response"]["location"].as_str().unwrap().to_string();
        let patient_ref = patient_location.split("/_history").next().unwrap().to_string();
        let appointment = &out["entry"][0]["resource"];
        assert_eq!(appointment["participant"][0]["actor"]["reference"], patient_ref.as_str(), "urn:uuid rewritten");
        let stored = json(app.get(&patient_ref).await).await;
        assert_eq!(stored["name"][0]["family"], "Tui");
        let found = json(app.get(&format!("Appointment?patient={patient_ref}")).await).await;
        assert_eq!(found["total"], 1);
    }

    async fn five_hundred_entries_commit_whole_and_one_bad_entry_leaves_no_trace(app: TestApp) {
        let entries = |bad: bool| {
            let mut e = Vec::new();
            for i in 0..250 {
                let uuid = format!("urn:uuid:00000000-0000-4000-8000-{i:012}");
                e.push(entry("POST", "Patient", Some(&uuid), Some(patient(&format!("Bulk{i}")))));
                let subject = if bad && i == 249 { "Patient/ghost".to_string() } else { uuid.clone() };
                e.push(entry("POST", "CareTeam", None, Some(json!({"resourceType": "CareTeam", "status": "active", "subject": {"reference": subject}}))));
            }
            bundle("transaction", e)
        };
        let before = app.version_count().await;
        let body = assert_outcome(app.post_json("", &entries(true)).await, 422, "processing").await;
        assert!(body["issue"][0]["diagnostics"].as_str().unwrap().contains("Patient/ghost"));
        assert_eq!(app.version_count().await, before, "no trace of the failed transaction");
        assert_eq!(json(app.get("Patient?_summary=count").await).await["total"], 0);

        let res = app.post_json("", &entries(false)).await;
        assert_eq!(res.status(), 200);
        let out = json(res).await;
        assert_eq!(out["entry"].as_array().unwrap().len(), 500);
        assert_eq!(json(app.get("Patient?_summary=count").await).await["total"], 250);
        assert_eq!(json(app.get("CareTeam?subject:missing=false&_summary=count").await).await["total"], 250);
        assert_eq!(json(app.get("Patient?_has:CareTeam:subject:status=active&_summary=count").await).await["total"], 250);
    }

    async fn scheduling_rules_hold_inside_transactions(app: TestApp) {
        clinic(&app).await;
        let before = app.version_count().await;
        // Two overlapping sessions for one therapist in one bundle: 409, nothing written.
        let clash = bundle("transaction", vec![
            entry("PUT", "Appointment/t1", None, Some(appointment("t1", "booked", "2026-12-09T10:00:00Z", "2026-12-09T11:00:00Z", &["Practitioner/moss", "Patient/p1"]))),
            entry("PUT", "Appointment/t2", None, Some(appointment("t2", "booked", "2026-12-09T10:30:00Z", "2026-12-09T11:30:00Z", &["Practitioner/moss", "Patient/p2"]))),
        ]);
        let body = assert_outcome(app.post_json("", &clash).await, 409, "conflict").await;
        assert!(body["issue"][0]["diagnostics"].as_str().unwrap().contains("Appointment/t1"), "{body}");
        assert_eq!(app.version_count().await, before);
        // A group session for a patient without an agreement: 422 inside the bundle too.
        app.client.delete(app.url("Consent/c2")).send().await.unwrap();
        let mut session = appointment("g1", "booked", "2026-12-09T18:00:00Z", "2026-12-09T19:00:00Z", &["Practitioner/moss", "Patient/p1", "Patient/p2"]);
        session["extension"] = json!([{"url": "http://hl7.org/fhir/5.0/StructureDefinition/extension-Appointment.subject", "valueReference": {"reference": "Group/grief"}}]);
        let b = bundle("transaction", vec![entry("PUT", "Appointment/g1", None, Some(session.clone()))]);
        assert_outcome(app.post_json("", &b).await, 422, "processing").await;
        // The agreement in the same bundle, written first (POST before PUT), makes it valid.
        let agreement = json!({"resourceType": "Consent", "status": "active",
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "https://tandem.example.org/fhir/CodeSystem/consent-category", "code": "group-confidentiality"}]}],
            "patient": {"reference": "Patient/p2"},
            "policyRule": {"coding": [{"system": "https://tandem.example.org/fhir/CodeSystem/consent-category", "code": "group-confidentiality-rules"}]},
            "provision": {"period": {"start": "2026-01-01"}, "actor": [{"role": {"text": "member"}, "reference": {"reference": "Group/grief"}}]}});
        let b = bundle("transaction", vec![entry("PUT", "Appointment/g1", None, Some(session)), entry("POST", "Consent", None, Some(agreement))]);
        let res = app.post_json("", &b).await;
        assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    }

    async fn deletes_run_before_creates(app: TestApp) {
        clinic(&app).await;
        put_ok(&app, appointment("old", "booked", "2026-12-10T10:00:00Z", "2026-12-10T11:00:00Z", &["Practitioner/moss"])).await;
        // Listed first, the new booking would clash; DELETE is processed first, so it does not.
        let b = bundle("transaction", vec![
            entry("POST", "Appointment", None, Some(appointment("x", "booked", "2026-12-10T10:00:00Z", "2026-12-10T11:00:00Z", &["Practitioner/moss"]))),
            entry("DELETE", "Appointment/old", None, None),
        ]);
        let out = json(app.post_json("", &b).await).await;
        assert_eq!(statuses(&out), ["201 Created", "204 No Content"]);
        assert_eq!(app.get("Appointment/old").await.status(), 410);
    }

    async fn a_batch_reports_each_outcome(app: TestApp) {
        clinic(&app).await;
        put_ok(&app, appointment("held", "booked", "2026-12-11T10:00:00Z", "2026-12-11T11:00:00Z", &["Practitioner/moss"])).await;
        let b = bundle("batch", vec![
            entry("POST", "Patient", None, Some(patient("Batch"))),
            entry("POST", "Appointment", None, Some(appointment("y", "booked", "2026-12-11T10:30:00Z", "2026-12-11T11:30:00Z", &["Practitioner/moss"]))),
            entry("GET", "Patient/nobody", None, None),
            entry("GET", "Patient/p1", None, None),
        ]);
        let out = json(app.post_json("", &b).await).await;
        assert_eq!(out["type"], "batch-response");
        assert_eq!(statuses(&out), ["201 Created", "409 Conflict", "404 Not Found", "200 OK"]);
        assert_eq!(out["entry"][1]["response"]["outcome"]["issue"][0]["code"], "conflict");
        assert_eq!(json(app.get("Patient?family=batch").await).await["total"], 1, "the good entry stands");
    }

    async fn malformed_bundles_are_refused(app: TestApp) {
        assert_outcome(app.post_json("", &json!({"resourceType": "Bundle", "type": "collection"})).await, 400, "invalid").await;
        assert_outcome(app.post_json("", &patient("X")).await, 400, "structure").await;
        let wrong = bundle("transaction", vec![entry("POST", "Patient", None, Some(json!({"resourceType": "Practitioner"})))]);
        assert_outcome(app.post_json("", &wrong).await, 400, "structure").await;
        // A conditional read is refused rather than ignored.
        let mut conditional = bundle("transaction", vec![entry("GET", "Patient/x", None, None)]);
        conditional["entry"][0]["request"]["ifNoneMatch"] = json!("W/\"1\"");
        assert_outcome(app.post_json("", &conditional).await, 400, "invalid").await;
        assert_eq!(app.version_count().await, 0);
    }
}
