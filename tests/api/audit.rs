//! The audit trail: an AuditEvent for every interaction, refused ones included, that only a token
//! with system/AuditEvent.rs can read, and that no one can change.

use std::time::Duration;

use base64::Engine;
use diesel::{Connection, RunQueryDsl};
use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::*;

/// Whether an event records a look at the audit trail itself (the officer's own searches).
fn is_trail_access(e: &Value) -> bool {
    e["entity"].as_array().unwrap().iter().any(|x| {
        x["description"] == "AuditEvent"
            || x["what"]["reference"]
                .as_str()
                .is_some_and(|r| r.starts_with("AuditEvent/"))
    })
}

/// Every AuditEvent but those of reading the trail (newest first), once at least `n` are written.
async fn audit_events(app: &TestApp, officer: &reqwest::Client, n: usize) -> Vec<Value> {
    for _ in 0..200 {
        let bundle = json(officer.get(app.url("AuditEvent?_count=500")).send().await.unwrap()).await;
        let events: Vec<Value> = entries(&bundle)
            .iter()
            .map(|e| e["resource"].clone())
            .filter(|e| !is_trail_access(e))
            .collect();
        if events.len() >= n {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("fewer than {n} audit events were written");
}

fn subtype(e: &Value) -> &str {
    e["subtype"][0]["code"].as_str().unwrap()
}

fn entity_refs(e: &Value) -> Vec<&str> {
    e["entity"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x["what"]["reference"].as_str())
        .collect()
}

both_backends! {
    async fn every_interaction_and_every_refusal_leaves_an_audit_event(app: TestApp) {
        // The therapist's token reaches every record (TANDEM_USER_ACCESS=all): assignment is tested
        // in care_access; here each interaction is.
        let app = TestApp::spawn_configured_on(app.backend, app.stop().await, |c| c.user_access = tandem::config::UserAccess::All).await;
        let therapist = {
            let token = tandem::auth::token::mint(&app.config, "user/*.cruds", None, "sam", Some("Practitioner/rivera".into()), 600).unwrap();
            bearer_client(&token)
        };
        let officer = app.client_with("system/AuditEvent.rs", None);
        let send = |req: reqwest::RequestBuilder| async move { req.send().await.unwrap().status().as_u16() };
        let body = |v: Value| v.to_string();

        assert_eq!(send(therapist.put(app.url("Patient/ann")).header("Content-Type", FHIR_JSON).body(body(json!({"resourceType": "Patient", "id": "ann"})))).await, 201);
        assert_eq!(send(therapist.put(app.url("Practitioner/rivera")).header("Content-Type", FHIR_JSON).body(body(json!({"resourceType": "Practitioner", "id": "rivera"})))).await, 201);
        let appt = json!({"resourceType": "Appointment", "status": "booked", "start": "2026-12-01T10:00:00Z", "end": "2026-12-01T11:00:00Z",
            "participant": [{"actor": {"reference": "Patient/ann"}, "status": "accepted"}, {"actor": {"reference": "Practitioner/rivera"}, "status": "accepted"}]});
        let res = therapist.post(app.url("Appointment")).header("Content-Type", FHIR_JSON).body(body(appt)).send().await.unwrap();
        assert_eq!(res.status(), 201);
        let appt_id = json(res).await["id"].as_str().unwrap().to_string();
        assert_eq!(send(therapist.get(app.url(&format!("Appointment/{appt_id}")))).await, 200);
        assert_eq!(send(therapist.get(app.url(&format!("Appointment/{appt_id}/_history/1")))).await, 200);
        assert_eq!(send(therapist.get(app.url("Appointment?patient=Patient/ann&status=booked"))).await, 200);
        assert_eq!(send(therapist.get(app.url("Patient/ann/_history"))).await, 200);
        assert_eq!(send(therapist.get(app.url("Patient/ann/$everything"))).await, 200);
        let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": {"resourceType": "Patient", "id": "bo"}, "request": {"method": "PUT", "url": "Patient/bo"}}]});
        assert_eq!(send(therapist.post(app.url("")).header("Content-Type", FHIR_JSON).body(body(tx))).await, 200);
        assert_eq!(send(therapist.delete(app.url("Patient/bo"))).await, 204);
        let patch = json!([{"op": "add", "path": "/active", "value": true}]);
        assert_eq!(send(therapist.patch(app.url("Patient/ann")).header("Content-Type", "application/json-patch+json").body(body(patch))).await, 200);
        assert_eq!(send(therapist.get(app.url("?_type=Patient"))).await, 200);
        assert_eq!(send(therapist.get(app.url("Patient/_history"))).await, 200);
        assert_eq!(send(therapist.get(app.url("_history"))).await, 200);
        // Refused: a token without the scope, a token for another patient, and no token at all.
        assert_eq!(send(app.client_with("system/Practitioner.r", None).get(app.url("Patient/ann"))).await, 403);
        assert_eq!(send(app.client_with("patient/*.rs", Some("zoe")).get(app.url(&format!("Appointment/{appt_id}")))).await, 404);
        assert_eq!(send(app.anonymous.get(app.url("Patient/ann"))).await, 401);
        // Public endpoints are not audited.
        assert_eq!(send(app.anonymous.get(app.url("metadata"))).await, 200);

        let events = audit_events(&app, &officer, 17).await;
        assert_eq!(events.len(), 17, "one event per interaction: {:#?}", events.iter().map(subtype).collect::<Vec<_>>());
        let find = |sub: &str, outcome: &str| -> Value {
            events.iter().find(|e| subtype(e) == sub && e["outcome"] == outcome).cloned()
                .unwrap_or_else(|| panic!("no {sub} event with outcome {outcome}"))
        };
        let created = find("create", "0");
        assert_eq!(created["action"], "C");
        assert_eq!(created["agent"][0]["who"]["reference"], "Practitioner/rivera");
        assert_eq!(created["agent"][0]["altId"], "sam");
        assert_eq!(created["agent"][0]["network"]["address"], "127.0.0.1");
        assert!(entity_refs(&created).contains(&format!("Appointment/{appt_id}/_history/1").as_str()));
        assert!(entity_refs(&created).contains(&"Patient/ann"), "the patient the record belongs to");
        let read = find("read", "0");
        assert_eq!(read["action"], "R");
        assert!(entity_refs(&read).contains(&"Patient/ann"));
        for sub in ["vread", "update", "patch", "history-instance", "history-type", "history-system", "search-system", "transaction", "delete"] {
            find(sub, "0");
        }
        let search = find("search-type", "0");
        assert_eq!(search["action"], "E");
        let query = search["entity"].as_array().unwrap().iter().find_map(|e| e["query"].as_str()).unwrap();
        let decoded = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(query).unwrap()).unwrap();
        assert_eq!(decoded, "patient=Patient/ann&status=booked");
        let everything = find("operation", "0");
        assert_eq!(everything["subtype"][1]["code"], "$everything");
        // The refusals: 403, 404 for another patient's record, and 401 with no one to name.
        let forbidden = events.iter().find(|e| e["outcomeDesc"] == "403 Forbidden").expect("the 403 is audited");
        assert_eq!((subtype(forbidden), forbidden["outcome"].as_str()), ("read", Some("4")));
        assert!(entity_refs(forbidden).contains(&"Patient/ann"));
        let unauthenticated = events.iter().find(|e| e["outcomeDesc"] == "401 Unauthorized").expect("the 401 is audited");
        assert_eq!(unauthenticated["agent"][0]["who"]["display"], "unauthenticated caller");
        let other_patient = events.iter().find(|e| e["outcomeDesc"] == "404 Not Found").expect("the 404 is audited");
        assert!(entity_refs(other_patient).contains(&"Patient/zoe"), "the patient in the token's context");

        // Searching the trail: by patient, by user, by outcome, by date, paged.
        let search = |q: &str| { let url = app.url(&format!("AuditEvent?{q}")); let c = officer.clone(); async move { json(c.get(url).send().await.unwrap()).await } };
        let about_ann = search("patient=ann").await;
        let ann_events = entries(&about_ann);
        let subtypes: Vec<&str> = ann_events.iter().map(|e| subtype(&e["resource"])).collect();
        assert!(subtypes.contains(&"create") && subtypes.contains(&"read") && subtypes.contains(&"operation"), "{subtypes:?}");
        assert_eq!(entries(&search("agent=Practitioner/rivera&outcome=4").await).len(), 0);
        assert_eq!(entries(&search("outcome=4").await).len(), 3);
        assert_eq!(search("subtype=read&_total=accurate").await["total"], 4, "one read and three refused reads");
        assert_eq!(entries(&search("date=lt2000-01-01").await).len(), 0);
        assert_eq!(entries(&search("date=ge2000-01-01&altid=sam").await).len(), 14);
        let id = about_ann["entry"][0]["resource"]["id"].as_str().unwrap();
        assert_eq!(officer.get(app.url(&format!("AuditEvent/{id}"))).send().await.unwrap().status(), 200);
        let mut seen = Vec::new();
        let mut url = Some(app.url("AuditEvent?_count=5"));
        while let Some(u) = url {
            let page = json(officer.get(u).send().await.unwrap()).await;
            seen.extend(entries(&page).iter().map(|e| e["resource"]["id"].as_str().unwrap().to_string()));
            url = page["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next").map(|l| l["url"].as_str().unwrap().to_string());
        }
        assert!(seen.len() >= 17);
        let mut unique = seen.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), seen.len(), "pages do not repeat events");
    }

    async fn only_an_audit_scope_reads_the_trail_and_no_one_changes_it(app: TestApp) {
        app.get("Patient").await;
        let officer = app.client_with("system/AuditEvent.rs", None);
        let events = audit_events(&app, &officer, 1).await;
        let id = events[0]["id"].as_str().unwrap().to_string();
        for (scope, patient) in [("system/*.cruds", None), ("user/*.cruds", None), ("patient/*.cruds", Some("ann")), ("user/AuditEvent.rs", None), ("system/AuditEvent.c", None)] {
            let c = app.client_with(scope, patient);
            assert_eq!(c.get(app.url("AuditEvent")).send().await.unwrap().status(), 403, "{scope}");
            assert_eq!(c.get(app.url(&format!("AuditEvent/{id}"))).send().await.unwrap().status(), 403, "{scope}");
        }
        let all = app.client_with("system/AuditEvent.cruds", None);
        let put = all.put(app.url(&format!("AuditEvent/{id}"))).header("Content-Type", FHIR_JSON).body(events[0].to_string()).send().await.unwrap();
        assert_eq!(put.status(), 405);
        assert_eq!(all.delete(app.url(&format!("AuditEvent/{id}"))).send().await.unwrap().status(), 405);
        assert_eq!(all.post(app.url("AuditEvent")).header("Content-Type", FHIR_JSON).body(events[0].to_string()).send().await.unwrap().status(), 405);
        let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{"request": {"method": "DELETE", "url": format!("AuditEvent/{id}")}}]});
        assert_eq!(all.post(app.url("")).header("Content-Type", FHIR_JSON).body(tx.to_string()).send().await.unwrap().status(), 404);
        // And the database itself refuses to change or remove an audit record.
        let sql = format!("UPDATE audit_events SET outcome = '0' WHERE id = '{id}'");
        let delete = format!("DELETE FROM audit_events WHERE id = '{id}'");
        for statement in [sql, delete] {
            let refused = match app.backend {
                Backend::Sqlite => {
                    let mut c = diesel::SqliteConnection::establish(app.db.audit_url().trim_start_matches("sqlite://")).unwrap();
                    diesel::sql_query(&statement).execute(&mut c).is_err()
                }
                Backend::Postgres => {
                    let mut c = diesel::PgConnection::establish(&app.db.url).unwrap();
                    diesel::sql_query(&statement).execute(&mut c).is_err()
                }
            };
            assert!(refused, "{statement}");
        }
        assert_eq!(officer.get(app.url(&format!("AuditEvent/{id}"))).send().await.unwrap().status(), 200);
    }
}
