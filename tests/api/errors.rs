//! Bad input: a clear OperationOutcome, the right 4xx, and nothing written.

use serde_json::json;

use crate::both_backends;
use crate::helpers::*;

both_backends! {
    async fn malformed_bodies_are_400_and_write_nothing(app: TestApp) {
        let seed = app.create(&patient("Seed")).await;
        let id = seed["id"].as_str().unwrap().to_string();
        let before = app.version_count().await;
        let cases: Vec<(&str, &str, Vec<u8>)> = vec![
            ("malformed JSON", FHIR_JSON, br#"{"resourceType": "Patient", "name": [}"#.to_vec()),
            ("malformed XML", FHIR_XML, br#"<Patient xmlns="http://hl7.org/fhir"><name><family value="x"/></Patient>"#.to_vec()),
            ("unknown element", FHIR_JSON, br#"{"resourceType": "Patient", "favouriteColour": "blue"}"#.to_vec()),
            ("unknown XML element", FHIR_XML, br#"<Patient xmlns="http://hl7.org/fhir"><colour value="blue"/></Patient>"#.to_vec()),
            ("wrong resourceType for the URL", FHIR_JSON, br#"{"resourceType": "Practitioner"}"#.to_vec()),
            ("not a resource", FHIR_JSON, br#"[1, 2, 3]"#.to_vec()),
            ("empty body", FHIR_JSON, Vec::new()),
            ("invalid UTF-8", FHIR_JSON, vec![b'{', 0xff, 0xfe, b'}']),
            ("wrong primitive type", FHIR_JSON, br#"{"resourceType": "Patient", "active": "yes"}"#.to_vec()),
            ("unknown resource type in body", FHIR_JSON, br#"{"resourceType": "Spaceship"}"#.to_vec()),
        ];
        for (what, ct, body) in cases {
            let res = app.post_raw("Patient", ct, body.clone()).await;
            assert_eq!(res.status(), 400, "{what}");
            let outcome = json(res).await;
            assert_eq!(outcome["resourceType"], "OperationOutcome", "{what}");
            let res = app.client.put(app.url(&format!("Patient/{id}"))).header("Content-Type", ct).body(body).send().await.unwrap();
            assert_eq!(res.status(), 400, "{what} (update)");
        }
        assert_eq!(app.version_count().await, before, "nothing was written");
    }

    async fn update_body_id_must_match_the_url(app: TestApp) {
        let created = app.create(&patient("Ma")).await;
        let id = created["id"].as_str().unwrap();
        let mut other = created.clone();
        other["id"] = json!("someone-else");
        let body = assert_outcome(app.put_json(&format!("Patient/{id}"), &other).await, 400, "structure").await;
        assert!(body["issue"][0]["diagnostics"].as_str().unwrap().contains("someone-else"));
        let mut missing = created.clone();
        missing.as_object_mut().unwrap().remove("id");
        assert_outcome(app.put_json(&format!("Patient/{id}"), &missing).await, 400, "structure").await;
        assert_outcome(app.put_json("Patient/not%2Fvalid", &created).await, 400, "invalid").await;
        assert_eq!(json(app.get(&format!("Patient/{id}")).await).await["meta"]["versionId"], "1");
    }

    async fn bodies_over_the_limit_are_413(app: TestApp) {
        let before = app.version_count().await;
        let huge = format!(r#"{{"resourceType":"Patient","name":[{{"text":"{}"}}]}}"#, "x".repeat(4 * 1024 * 1024 + 1));
        assert_outcome(app.post_raw("Patient", FHIR_JSON, huge).await, 413, "too-costly").await;
        assert_eq!(app.version_count().await, before);
    }

    async fn unsupported_media_types_are_415(app: TestApp) {
        let body = patient("X").to_string();
        assert_outcome(app.post_raw("Patient", "text/plain", body.clone()).await, 415, "not-supported").await;
        assert_outcome(app.post_raw("Patient", "application/x-www-form-urlencoded", body.clone()).await, 415, "not-supported").await;
        let none = app.client.post(app.url("Patient")).body(body).send().await.unwrap();
        assert_outcome(none, 415, "not-supported").await;
        assert_eq!(app.version_count().await, 0);
    }

    async fn unknown_resource_types_are_404(app: TestApp) {
        assert_outcome(app.get("Spaceship/1").await, 404, "not-supported").await;
        assert_outcome(app.post_json("MedicationRequest", &json!({"resourceType": "MedicationRequest"})).await, 404, "not-supported").await;
        assert_outcome(app.get("Spaceship/_history").await, 404, "not-supported").await;
        assert_outcome(app.get("Spaceship/1/2/3/4").await, 404, "not-supported").await;
        assert_outcome(app.get("no/such/thing/here/at/all").await, 404, "not-found").await;
    }

    async fn unsupported_methods_are_405_and_unacceptable_formats_406(app: TestApp) {
        let res = app.client.post(app.url("Patient/1")).send().await.unwrap();
        assert_eq!(res.headers()["allow"], "GET, HEAD, PUT, PATCH, DELETE");
        assert_outcome(res, 405, "not-supported").await;
        let res = app.client.delete(app.url("metadata")).send().await.unwrap();
        assert_eq!(res.headers()["allow"], "GET");
        assert_outcome(res, 405, "not-supported").await;
        // An unknown type is 404 whatever the method.
        assert_outcome(app.client.patch(app.url("Spaceship/1")).send().await.unwrap(), 404, "not-supported").await;
        assert_outcome(app.get("Spaceship").await, 404, "not-supported").await;
        let res = app.client.get(app.url("metadata")).header("Accept", "text/plain").send().await.unwrap();
        assert_outcome(res, 406, "not-supported").await;
        assert_outcome(app.get("metadata?_format=csv").await, 406, "not-supported").await;
    }

    async fn unresolvable_references_are_422_and_write_nothing(app: TestApp) {
        let team = json!({"resourceType": "CareTeam", "status": "active", "subject": {"reference": "Patient/ghost"},
            "participant": [{"member": {"reference": "Practitioner/also-ghost"}}]});
        let body = assert_outcome(app.post_json("CareTeam", &team).await, 422, "processing").await;
        let text = body["issue"][0]["diagnostics"].as_str().unwrap();
        assert!(text.contains("Patient/ghost") && text.contains("Practitioner/also-ghost"), "{text}");
        // References that are not to a hosted type, absolute, or contained are not checked.
        let ok = json!({"resourceType": "CareTeam", "status": "active",
            "subject": {"reference": "https://ehr.example.org/fhir/Patient/7"},
            "reasonReference": [{"reference": "Condition/elsewhere"}]});
        assert_eq!(app.post_json("CareTeam", &ok).await.status(), 201);
        assert_eq!(app.version_count().await, 1);
    }

    async fn values_that_break_r4_datatypes_or_required_codes_are_400(app: TestApp) {
        let cases = [
            json!({"resourceType": "Patient", "birthDate": "not a date"}),
            json!({"resourceType": "Patient", "birthDate": "1980-02-30"}),
            json!({"resourceType": "Patient", "gender": "f"}),
            json!({"resourceType": "Patient", "name": [{"family": ""}]}),
            json!({"resourceType": "Appointment", "status": "confirmed", "participant": [{"status": "accepted"}]}),
            json!({"resourceType": "Appointment", "status": "booked", "start": "2026-12-01T10:00", "participant": [{"status": "accepted"}]}),
            json!({"resourceType": "Appointment", "status": "booked"}),
            json!({"resourceType": "Consent", "status": "active", "scope": {"text": "x"}}),
        ];
        for body in cases {
            let rt = body["resourceType"].as_str().unwrap();
            let res = app.post_json(rt, &body).await;
            let outcome = assert_outcome(res, 400, "structure").await;
            assert!(outcome["issue"][0]["diagnostics"].as_str().unwrap().contains(rt), "{outcome}");
        }
        assert_eq!(app.version_count().await, 0);
    }
}
