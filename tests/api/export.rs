//! Bulk Data export: the async pattern, a group's data read back and validated, access to jobs and
//! files, and a job that survives a restart of the server.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::*;

/// Kicks off an export; returns the status URL.
pub(crate) async fn kick_off(app: &TestApp, client: &reqwest::Client, path: &str) -> String {
    let res = client
        .get(app.url(path))
        .header("Prefer", "respond-async")
        .header("Accept", "application/fhir+json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202, "{path}: {}", res.text().await.unwrap());
    res.headers()["content-location"].to_str().unwrap().to_string()
}

/// Polls a status URL until the manifest is there.
pub(crate) async fn manifest(client: &reqwest::Client, status_url: &str) -> Value {
    for _ in 0..400 {
        let res = client.get(status_url).send().await.unwrap();
        match res.status().as_u16() {
            202 => {
                assert!(res.headers().contains_key("x-progress"));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            200 => return res.json().await.unwrap(),
            other => panic!("status {other}: {}", res.text().await.unwrap()),
        }
    }
    panic!("the export did not finish");
}

/// Every resource of a manifest's files, each checked against the R4 model: (type, id) pairs.
pub(crate) async fn read_back(client: &reqwest::Client, manifest: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for file in manifest["output"].as_array().unwrap() {
        let res = client.get(file["url"].as_str().unwrap()).send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-type"], "application/fhir+ndjson");
        let text = res.text().await.unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len() as u64, file["count"].as_u64().unwrap());
        for line in lines {
            let parsed =
                tandem::fhir::parse_resource(line.as_bytes(), tandem::fhir::Format::Json).expect("a valid R4 resource");
            assert_eq!(parsed["resourceType"], file["type"]);
            out.insert((
                parsed["resourceType"].as_str().unwrap().to_string(),
                parsed["id"].as_str().unwrap().to_string(),
            ));
        }
    }
    out
}

async fn seed_clinic(app: &TestApp) {
    for id in ["m1", "m2", "out"] {
        app.put_json(&format!("Patient/{id}"), &json!({"resourceType": "Patient", "id": id}))
            .await;
    }
    app.put_json(
        "Practitioner/rivera",
        &json!({"resourceType": "Practitioner", "id": "rivera"}),
    )
    .await;
    app.put_json(
        "Group/g",
        &json!({"resourceType": "Group", "id": "g", "type": "person", "actual": true,
        "member": [{"entity": {"reference": "Patient/m1"}}, {"entity": {"reference": "Patient/m2"}}]}),
    )
    .await;
    let session = |id: &str, day: &str, who: &[&str]| {
        let mut participants = vec![json!({"actor": {"reference": "Practitioner/rivera"}, "status": "accepted"})];
        participants.extend(
            who.iter()
                .map(|p| json!({"actor": {"reference": format!("Patient/{p}")}, "status": "accepted"})),
        );
        json!({"resourceType": "Appointment", "id": id, "status": "booked", "start": format!("2026-12-0{day}T10:00:00Z"),
               "end": format!("2026-12-0{day}T11:00:00Z"), "participant": participants})
    };
    app.put_json("Appointment/a-m1", &session("a-m1", "1", &["m1"])).await;
    app.put_json("Appointment/a-group", &session("a-group", "2", &["m1", "m2"]))
        .await;
    app.put_json("Appointment/a-out", &session("a-out", "3", &["out"]))
        .await;
    app.put_json(
        "CareTeam/t-m2",
        &json!({"resourceType": "CareTeam", "id": "t-m2", "status": "active", "subject": {"reference": "Patient/m2"}}),
    )
    .await;
    app.put_json("CareTeam/t-out", &json!({"resourceType": "CareTeam", "id": "t-out", "status": "active", "subject": {"reference": "Patient/out"}})).await;
}

fn pairs(list: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    list.iter().map(|(t, i)| (t.to_string(), i.to_string())).collect()
}

both_backends! {
    async fn a_group_export_holds_its_members_records_and_nothing_else(app: TestApp) {
        seed_clinic(&app).await;
        let status = kick_off(&app, &app.client, "Group/g/$export").await;
        let m = manifest(&app.client, &status).await;
        assert_eq!(m["requiresAccessToken"], true);
        assert!(m["request"].as_str().unwrap().ends_with("/Group/g/$export"));
        assert!(tandem::resources::dates::parse_range(m["transactionTime"].as_str().unwrap()).is_some());
        let got = read_back(&app.client, &m).await;
        assert_eq!(got, pairs(&[("Patient", "m1"), ("Patient", "m2"), ("Appointment", "a-m1"), ("Appointment", "a-group"),
                                 ("CareTeam", "t-m2"), ("Group", "g")]));
        // The job and its files belong to who asked: another subject sees nothing, no token is 401.
        let file_url = m["output"][0]["url"].as_str().unwrap().to_string();
        let other = bearer_client(&tandem::auth::token::mint(&app.config, "system/*.rs", None, "someone-else", None, 600).unwrap());
        assert_eq!(other.get(&file_url).send().await.unwrap().status(), 404);
        assert_eq!(other.get(&status).send().await.unwrap().status(), 404);
        assert_eq!(app.anonymous.get(&file_url).send().await.unwrap().status(), 401);
        // Cancelling (deleting) the job removes it and its files.
        assert_eq!(app.client.delete(&status).send().await.unwrap().status(), 202);
        assert_eq!(app.client.get(&status).send().await.unwrap().status(), 404);
        assert_eq!(app.client.get(&file_url).send().await.unwrap().status(), 404);
    }

    async fn system_and_patient_exports_follow_type_and_since(app: TestApp) {
        seed_clinic(&app).await;
        let all = read_back(&app.client, &manifest(&app.client, &kick_off(&app, &app.client, "$export").await).await).await;
        assert!(all.contains(&("Practitioner".into(), "rivera".into())));
        assert!(all.contains(&("Appointment".into(), "a-out".into())));
        assert!(all.contains(&("Questionnaire".into(), "phq-9".into())) && all.contains(&("Questionnaire".into(), "gad-7".into())));
        assert_eq!(all.len(), 12, "3 patients, a practitioner, a group, 3 sessions, 2 care teams, and the published PHQ-9 and GAD-7");
        let patients = read_back(&app.client, &manifest(&app.client, &kick_off(&app, &app.client, "Patient/$export?_type=Patient,CareTeam").await).await).await;
        assert_eq!(patients, pairs(&[("Patient", "m1"), ("Patient", "m2"), ("Patient", "out"), ("CareTeam", "t-m2"), ("CareTeam", "t-out")]));
        let later = tandem::resources::dates::format_instant(tandem::resources::dates::now_millis() + 3_600_000).replace('+', "%2B");
        let none = manifest(&app.client, &kick_off(&app, &app.client, &format!("$export?_since={later}")).await).await;
        assert_eq!(none["output"].as_array().unwrap().len(), 0);
    }

    async fn kick_offs_are_checked(app: TestApp) {
        app.put_json("Group/g", &json!({"resourceType": "Group", "id": "g", "type": "person", "actual": true})).await;
        let get = |path: &str, prefer: Option<&str>, client: &reqwest::Client| {
            let mut r = client.get(app.url(path));
            if let Some(p) = prefer { r = r.header("Prefer", p); }
            r.send()
        };
        assert_outcome(get("$export", None, &app.client).await.unwrap(), 400, "invalid").await;
        assert_outcome(get("$export?_outputFormat=text/csv", Some("respond-async"), &app.client).await.unwrap(), 400, "invalid").await;
        assert_outcome(get("$export?_typeFilter=Patient%3Factive%3Dtrue", Some("respond-async"), &app.client).await.unwrap(), 400, "invalid").await;
        assert_eq!(get("$export?_typeFilter=x", Some("respond-async, handling=lenient"), &app.client).await.unwrap().status(), 202);
        assert_outcome(get("$export?_type=Spaceship", Some("respond-async"), &app.client).await.unwrap(), 400, "invalid").await;
        assert_outcome(get("Patient/$export?_type=Practitioner", Some("respond-async"), &app.client).await.unwrap(), 400, "invalid").await;
        assert_outcome(get("Group/nope/$export", Some("respond-async"), &app.client).await.unwrap(), 404, "not-found").await;
        // A patient/ token, or one that reads nothing system-wide, cannot export.
        let patient = app.client_with("patient/*.rs", Some("m1"));
        assert_eq!(get("Patient/$export", Some("respond-async"), &patient).await.unwrap().status(), 403);
        let narrow = app.client_with("system/Patient.rs", None);
        assert_eq!(get("$export?_type=Appointment", Some("respond-async"), &narrow).await.unwrap().status(), 403);
        assert_eq!(get("$export", Some("respond-async"), &narrow).await.unwrap().status(), 202);
    }

    async fn an_export_survives_a_restart_of_the_server(app: TestApp) {
        let backend = app.backend;
        drop(app);
        // A server that runs no background work takes the kick-off and stops before the job runs.
        let first = TestApp::spawn_configured(backend, |c| c.background_workers = false).await;
        seed_clinic(&first).await;
        let status = kick_off(&first, &first.client, "Group/g/$export").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(first.client.get(&status).send().await.unwrap().status(), 202, "queued, nothing runs it");
        let client = first.client.clone();
        let db = first.stop().await;
        // Another server on the same database finishes it; the status URL keeps working.
        let second = TestApp::spawn_on(backend, db).await;
        let status = status.replace(&status[..status.find("/$export-status").unwrap()], &second.address);
        let m = manifest(&client, &status).await;
        let got = read_back(&client, &m).await;
        assert!(got.contains(&("Patient".into(), "m1".into())) && got.contains(&("Appointment".into(), "a-group".into())), "{got:?}");
    }
}
