use serde_json::json;

use crate::both_backends;
use crate::helpers::*;

both_backends! {
    async fn create_assigns_an_id_and_answers_201_with_location_and_etag(app: TestApp) {
        let mut body = patient("Okafor");
        body["id"] = json!("client-chosen");
        let res = app.post_json("Patient", &body).await;
        assert_eq!(res.status(), 201);
        let etag = res.headers()["etag"].to_str().unwrap().to_string();
        let location = res.headers()["location"].to_str().unwrap().to_string();
        assert!(res.headers().contains_key("last-modified"));
        let created = json(res).await;
        let id = created["id"].as_str().unwrap();
        assert_ne!(id, "client-chosen", "the server assigns the id on create");
        assert_eq!(etag, "W/\"1\"");
        assert_eq!(location, app.url(&format!("Patient/{id}/_history/1")));
        assert_eq!(created["meta"]["versionId"], "1");
        assert!(created["meta"]["lastUpdated"].as_str().unwrap().ends_with('Z'));
        assert_eq!(created["name"][0]["family"], "Okafor");
    }

    async fn read_returns_the_current_version_with_etag_and_last_modified(app: TestApp) {
        let created = app.create(&patient("Lund")).await;
        let id = created["id"].as_str().unwrap();
        let res = app.get(&format!("Patient/{id}")).await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["etag"], "W/\"1\"");
        assert!(res.headers()["content-type"].to_str().unwrap().starts_with(FHIR_JSON));
        assert!(res.headers()["last-modified"].to_str().unwrap().ends_with(" GMT"));
        assert_eq!(json(res).await, created);
    }

    async fn read_of_an_unknown_id_is_404(app: TestApp) {
        assert_outcome(app.get("Patient/does-not-exist").await, 404, "not-found").await;
    }

    async fn update_makes_a_new_version_and_vread_finds_both(app: TestApp) {
        let created = app.create(&patient("Brandt")).await;
        let id = created["id"].as_str().unwrap().to_string();
        let mut changed = created.clone();
        changed["name"][0]["family"] = json!("Brandt-Nowak");
        let res = app.put_json(&format!("Patient/{id}"), &changed).await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["etag"], "W/\"2\"");
        let updated = json(res).await;
        assert_eq!(updated["meta"]["versionId"], "2");
        assert!(updated["meta"]["lastUpdated"].as_str().unwrap() > created["meta"]["lastUpdated"].as_str().unwrap());

        let v1 = json(app.get(&format!("Patient/{id}/_history/1")).await).await;
        assert_eq!(v1["name"][0]["family"], "Brandt");
        let v2_res = app.get(&format!("Patient/{id}/_history/2")).await;
        assert_eq!(v2_res.headers()["etag"], "W/\"2\"");
        assert_eq!(json(v2_res).await["name"][0]["family"], "Brandt-Nowak");
        assert_outcome(app.get(&format!("Patient/{id}/_history/3")).await, 404, "not-found").await;
        assert_outcome(app.get(&format!("Patient/{id}/_history/x")).await, 404, "not-found").await;
    }

    async fn update_as_create_uses_the_client_id(app: TestApp) {
        let body = json!({"resourceType": "Practitioner", "id": "dr-moss", "name": [{"family": "Moss"}]});
        let res = app.put_json("Practitioner/dr-moss", &body).await;
        assert_eq!(res.status(), 201);
        assert_eq!(res.headers()["location"], app.url("Practitioner/dr-moss/_history/1").as_str());
        let read = json(app.get("Practitioner/dr-moss").await).await;
        assert_eq!(read["id"], "dr-moss");
        assert_eq!(read["meta"]["versionId"], "1");
    }

    async fn if_match_guards_updates(app: TestApp) {
        let created = app.create(&patient("Reyes")).await;
        let id = created["id"].as_str().unwrap().to_string();
        let path = format!("Patient/{id}");
        let send = |etag: &'static str| {
            app.client.put(app.url(&path)).header("Content-Type", FHIR_JSON).header("If-Match", etag).body(created.to_string()).send()
        };
        let ok = send("W/\"1\"").await.unwrap();
        assert_eq!(ok.status(), 200);
        assert_outcome(send("W/\"1\"").await.unwrap(), 412, "conflict").await;
        assert_outcome(send("garbage").await.unwrap(), 400, "invalid").await;
        assert_eq!(json(app.get(&path).await).await["meta"]["versionId"], "2");
    }

    async fn delete_is_logical_and_a_later_read_is_410(app: TestApp) {
        let created = app.create(&patient("Kim")).await;
        let id = created["id"].as_str().unwrap().to_string();
        let res = app.client.delete(app.url(&format!("Patient/{id}"))).send().await.unwrap();
        assert_eq!(res.status(), 204);
        assert_eq!(res.headers()["etag"], "W/\"2\"");
        assert_outcome(app.get(&format!("Patient/{id}")).await, 410, "deleted").await;
        // Earlier versions stay readable; the deletion version itself is gone.
        assert_eq!(app.get(&format!("Patient/{id}/_history/1")).await.status(), 200);
        assert_outcome(app.get(&format!("Patient/{id}/_history/2")).await, 410, "deleted").await;
        // Deleting again, or deleting what never existed, succeeds without a new version.
        let again = app.client.delete(app.url(&format!("Patient/{id}"))).send().await.unwrap();
        assert_eq!(again.status(), 204);
        assert!(again.headers().get("etag").is_none());
        assert_eq!(app.client.delete(app.url("Patient/never-was")).send().await.unwrap().status(), 204);
        // An update brings it back as version 3.
        let res = app.put_json(&format!("Patient/{id}"), &created).await;
        assert_eq!(res.status(), 201);
        assert_eq!(res.headers()["etag"], "W/\"3\"");
        assert_eq!(app.get(&format!("Patient/{id}")).await.status(), 200);
    }

    async fn prefer_return_shapes_the_answer(app: TestApp) {
        let minimal = app.client.post(app.url("Patient")).header("Content-Type", FHIR_JSON).header("Prefer", "return=minimal")
            .body(patient("Ito").to_string()).send().await.unwrap();
        assert_eq!(minimal.status(), 201);
        assert!(minimal.headers().contains_key("location"));
        assert_eq!(minimal.headers()["etag"], "W/\"1\"");
        assert!(minimal.bytes().await.unwrap().is_empty());

        let outcome = app.client.post(app.url("Patient")).header("Content-Type", FHIR_JSON).header("Prefer", "return=OperationOutcome")
            .body(patient("Ito").to_string()).send().await.unwrap();
        assert_eq!(outcome.status(), 201);
        let body = json(outcome).await;
        assert_eq!(body["resourceType"], "OperationOutcome");
        assert_eq!(body["issue"][0]["severity"], "information");

        let representation = app.client.post(app.url("Patient")).header("Content-Type", FHIR_JSON).header("Prefer", "return=representation")
            .body(patient("Ito").to_string()).send().await.unwrap();
        assert_eq!(json(representation).await["resourceType"], "Patient");
    }

    async fn references_to_hosted_resources_must_resolve(app: TestApp) {
        let p = app.create(&patient("Nguyen")).await;
        let pid = p["id"].as_str().unwrap();
        let dr = app.create(&json!({"resourceType": "Practitioner", "name": [{"family": "Adler"}]})).await;
        let did = dr["id"].as_str().unwrap();
        let appointment = json!({"resourceType": "Appointment", "status": "booked",
            "start": "2026-12-01T10:00:00Z", "end": "2026-12-01T10:50:00Z",
            "participant": [
                {"actor": {"reference": format!("Patient/{pid}")}, "status": "accepted"},
                {"actor": {"reference": format!("Practitioner/{did}")}, "status": "accepted"},
                {"actor": {"reference": "https://ehr.example.org/fhir/Location/room-2"}, "status": "accepted"}
            ]});
        assert_eq!(app.post_json("Appointment", &appointment).await.status(), 201);

        // A deleted target no longer resolves.
        app.client.delete(app.url(&format!("Practitioner/{did}"))).send().await.unwrap();
        let before = app.version_count().await;
        let body = assert_outcome(app.post_json("Appointment", &appointment).await, 422, "processing").await;
        assert!(body["issue"][0]["diagnostics"].as_str().unwrap().contains(&format!("Practitioner/{did}")));
        assert_eq!(app.version_count().await, before, "nothing was written");
    }

    async fn head_answers_headers_without_a_body(app: TestApp) {
        let created = app.create(&patient("Sato")).await;
        let id = created["id"].as_str().unwrap();
        let res = app.client.head(app.url(&format!("Patient/{id}"))).send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["etag"], "W/\"1\"");
        assert!(res.bytes().await.unwrap().is_empty());
    }

    async fn every_hosted_type_supports_create_and_read(app: TestApp) {
        let bodies = [
            json!({"resourceType": "Patient"}),
            json!({"resourceType": "Practitioner"}),
            json!({"resourceType": "PractitionerRole"}),
            json!({"resourceType": "Organization", "name": "Riverside Counselling"}),
            json!({"resourceType": "Location", "name": "Room 2"}),
            json!({"resourceType": "Appointment", "status": "proposed", "participant": [{"status": "needs-action", "type": [{"text": "facilitator"}]}]}),
            json!({"resourceType": "CareTeam", "status": "active"}),
            json!({"resourceType": "Group", "type": "person", "actual": true}),
            json!({"resourceType": "Consent", "status": "active", "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]}, "category": [{"text": "group confidentiality agreement"}],
                "patient": {"reference": "https://ehr.example.org/fhir/Patient/7"}, "policyRule": {"text": "group confidentiality rules"}}),
        ];
        for body in bodies {
            let created = app.create(&body).await;
            let rt = body["resourceType"].as_str().unwrap();
            let read = app.get(&format!("{rt}/{}", created["id"].as_str().unwrap())).await;
            assert_eq!(read.status(), 200, "{rt}");
        }
    }

    async fn search_indexes_follow_every_write(app: TestApp) {
        let created = app.create(&patient("Okafor")).await;
        let id = created["id"].as_str().unwrap().to_string();
        let strings = |norm: &str| format!("SELECT COUNT(*) AS n FROM idx_string WHERE res_type = 'Patient' AND res_id = '{id}' AND param = 'family' AND norm = '{norm}'");
        assert_eq!(app.count(&strings("okafor")), 1);
        assert_eq!(app.count(&format!("SELECT COUNT(*) AS n FROM idx_token WHERE res_id = '{id}' AND param = 'gender' AND code = 'female'")), 1);
        assert_eq!(app.count(&format!("SELECT COUNT(*) AS n FROM idx_date WHERE res_id = '{id}' AND param = 'birthdate'")), 1);

        let mut changed = created.clone();
        changed["name"][0]["family"] = json!("Nowak");
        assert_eq!(app.put_json(&format!("Patient/{id}"), &changed).await.status(), 200);
        assert_eq!(app.count(&strings("okafor")), 0, "old values leave the index");
        assert_eq!(app.count(&strings("nowak")), 1);

        app.client.delete(app.url(&format!("Patient/{id}"))).send().await.unwrap();
        for table in ["idx_token", "idx_string", "idx_date", "idx_reference", "idx_uri", "idx_number"] {
            assert_eq!(app.count(&format!("SELECT COUNT(*) AS n FROM {table} WHERE res_id = '{id}'")), 0, "{table}");
        }

        // A refused write leaves no index rows behind.
        let team = json!({"resourceType": "CareTeam", "status": "active", "subject": {"reference": "Patient/ghost"}});
        assert_eq!(app.post_json("CareTeam", &team).await.status(), 422);
        assert_eq!(app.count("SELECT COUNT(*) AS n FROM idx_reference WHERE target_id = 'ghost'"), 0);
        assert_eq!(app.count("SELECT COUNT(*) AS n FROM idx_token WHERE res_type = 'CareTeam'"), 0);
    }

    async fn request_ids_are_returned(app: TestApp) {
        let res = app.client.get(app.url("metadata")).header("X-Request-Id", "ehr-trace-42").send().await.unwrap();
        assert_eq!(res.headers()["x-request-id"], "ehr-trace-42");
        let res = app.get("Patient/nope").await;
        assert!(!res.headers()["x-request-id"].to_str().unwrap().is_empty());
    }
}
