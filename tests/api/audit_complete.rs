//! A complete trail (issue 27), tried as an integrator would: conditional writes and refusals leave
//! their events, a patient's refused update and a read of her history name her, a search's event
//! names every patient it returned (IHE BALP), and TANDEM_AUDIT_READS=none records writes only.

use std::time::Duration;

use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::*;

/// The events of `AuditEvent?{query}` (newest first) once `pred` holds for them, or panics.
async fn events_until(app: &TestApp, query: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let officer = app.client_with("system/AuditEvent.rs", None);
    let mut last = Vec::new();
    for _ in 0..200 {
        let bundle = json(
            officer
                .get(app.url(&format!("AuditEvent?{query}&_count=500")))
                .send()
                .await
                .unwrap(),
        )
        .await;
        last = entries(&bundle).into_iter().map(|e| e["resource"].clone()).collect();
        if pred(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("AuditEvent?{query}: the events never held what was expected: {last:?}");
}

fn interaction(e: &Value) -> &str {
    e["subtype"][0]["code"].as_str().unwrap_or_default()
}

fn outcome_desc(e: &Value) -> &str {
    e["outcomeDesc"].as_str().unwrap_or_default()
}

fn names(e: &Value, reference: &str) -> bool {
    e["entity"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|x| x["what"]["reference"] == reference)
}

/// The request ids of the events, to find one request's event.
fn with_request(events: &[Value], request_id: &str) -> Option<Value> {
    events
        .iter()
        .find(|e| {
            e["entity"].as_array().into_iter().flatten().any(|x| {
                x["detail"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|d| d["type"] == "request-id" && d["valueString"] == request_id)
            })
        })
        .cloned()
}

async fn sent(req: reqwest::RequestBuilder) -> (u16, String) {
    let res = req.send().await.unwrap();
    let id = res.headers().get("x-request-id").unwrap().to_str().unwrap().to_string();
    (res.status().as_u16(), id)
}

/// The request ids of every event in the trail, read straight from the audit store.
fn trail_request_ids(app: &TestApp) -> std::collections::HashSet<String> {
    use diesel::{Connection, RunQueryDsl};
    #[derive(diesel::QueryableByName)]
    struct Body {
        #[diesel(sql_type = diesel::sql_types::Text)]
        body: String,
    }
    let sql = "SELECT body FROM audit_events";
    let bodies: Vec<Body> = match app.backend {
        Backend::Sqlite => {
            let mut c =
                diesel::SqliteConnection::establish(app.db.audit_url().trim_start_matches("sqlite://")).unwrap();
            diesel::sql_query(sql).load(&mut c).unwrap()
        }
        Backend::Postgres => {
            let mut c = diesel::PgConnection::establish(&app.db.audit_url()).unwrap();
            diesel::sql_query(sql).load(&mut c).unwrap()
        }
    };
    bodies
        .iter()
        .filter_map(|b| serde_json::from_str::<Value>(&b.body).ok())
        .filter_map(|v| v["request_id"].as_str().map(str::to_string))
        .collect()
}

both_backends! {
    async fn a_sigterm_under_read_load_loses_no_event_a_response_was_sent_for(app: TestApp) {
        assert_eq!(app.put_json("Patient/ann", &json!({"resourceType": "Patient", "id": "ann"})).await.status(), 201);
        let mut server = ServerProcess::start(&app.db, &[]).await;
        let url = format!("{}/Patient/ann", server.address);
        // Eight clients read as fast as they can until the server stops answering (at most 3,000
        // reads each), each keeping the request id of every 200 it got.
        let readers: Vec<_> = (0..8)
            .map(|_| {
                let (client, url) = (app.client.clone(), url.clone());
                tokio::spawn(async move {
                    let mut answered = Vec::new();
                    for _ in 0..3_000 {
                        let Ok(res) = client.get(&url).send().await else { break };
                        let id = res.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_string);
                        if res.status() == 200 && res.bytes().await.is_ok() {
                            answered.extend(id);
                        }
                    }
                    answered
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let clean = tokio::task::spawn_blocking(move || server.terminate()).await.unwrap();
        assert!(clean, "the server exits cleanly on SIGTERM");
        let mut answered = Vec::new();
        for r in readers {
            answered.extend(r.await.unwrap());
        }
        assert!(answered.len() >= 100, "only {} reads were answered before the stop", answered.len());
        let trail = trail_request_ids(&app);
        let lost: Vec<&String> = answered.iter().filter(|id| !trail.contains(*id)).collect();
        assert!(lost.is_empty(), "{} of {} answered reads have no audit event: {:?}", lost.len(), answered.len(), &lost[..lost.len().min(5)]);
    }


    async fn conditional_writes_refusals_and_searches_name_their_patients(app: TestApp) {
        let c = &app.client;
        let put = |path: &str, body: Value| c.put(app.url(path)).header("Content-Type", FHIR_JSON).body(body.to_string());
        assert_eq!(sent(put("Patient/ann", json!({"resourceType": "Patient", "id": "ann", "identifier": [{"system": "urn:mrn", "value": "A1"}]}))).await.0, 201);
        assert_eq!(sent(put("Patient/ben", json!({"resourceType": "Patient", "id": "ben"}))).await.0, 201);
        assert_eq!(sent(put("Practitioner/moss", json!({"resourceType": "Practitioner", "id": "moss"}))).await.0, 201);

        // Conditional create, update, patch and delete: each leaves its event, naming the resource
        // and its patient.
        let appt = json!({"resourceType": "Appointment", "status": "booked", "start": "2031-01-07T10:00:00Z", "end": "2031-01-07T11:00:00Z",
            "identifier": [{"system": "urn:appt", "value": "X1"}],
            "participant": [{"actor": {"reference": "Patient/ann"}, "status": "accepted"}, {"actor": {"reference": "Practitioner/moss"}, "status": "accepted"}]});
        let (status, create) = sent(c.post(app.url("Appointment")).header("Content-Type", FHIR_JSON).header("If-None-Exist", "identifier=urn:appt|X1").body(appt.to_string())).await;
        assert_eq!(status, 201);
        let mut changed = appt.clone();
        changed["comment"] = json!("moved room");
        let (status, update) = sent(put("Appointment?identifier=urn:appt|X1", changed)).await;
        assert_eq!(status, 200);
        let (status, patch) = sent(c.patch(app.url("Appointment?identifier=urn:appt|X1")).header("Content-Type", "application/json-patch+json")
            .body(json!([{"op": "replace", "path": "/comment", "value": "room 2"}]).to_string())).await;
        assert_eq!(status, 200);
        // A refused (412) update of Ann's record, and a read of her history.
        let (status, refused) = sent(put("Patient/ann", json!({"resourceType": "Patient", "id": "ann"})).header("If-Match", "W/\"9\"")).await;
        assert_eq!(status, 412);
        let (status, history) = sent(c.get(app.url("Patient/ann/_history"))).await;
        assert_eq!(status, 200);
        // A search whose results hold Ann's session, and one that returns both patients.
        let (status, search) = sent(c.get(app.url("Appointment?actor=Practitioner/moss"))).await;
        assert_eq!(status, 200);
        let (status, both) = sent(c.get(app.url("Patient?_count=10"))).await;
        assert_eq!(status, 200);
        let (status, delete) = sent(c.delete(app.url("Appointment?identifier=urn:appt|X1"))).await;
        assert_eq!(status, 204);

        let wanted = [&create, &update, &patch, &refused, &history, &search, &both];
        let ann = events_until(&app, "patient=Patient/ann", |es| wanted.iter().all(|id| with_request(es, id).is_some())).await;
        let event = |id: &str| with_request(&ann, id).unwrap();
        assert_eq!(interaction(&event(&create)), "create");
        assert_eq!(interaction(&event(&update)), "update");
        assert_eq!(interaction(&event(&patch)), "patch");
        assert_eq!((interaction(&event(&refused)), outcome_desc(&event(&refused))), ("update", "412 Precondition Failed"));
        assert_eq!(interaction(&event(&history)), "history-instance");
        assert_eq!(interaction(&event(&search)), "search-type");
        // One event per search, naming each patient it returned.
        let listed = event(&both);
        assert!(names(&listed, "Patient/ann") && names(&listed, "Patient/ben"), "{listed}");
        let ben = events_until(&app, "patient=Patient/ben", |es| with_request(es, &both).is_some()).await;
        assert!(with_request(&ben, &search).is_none(), "Ben was in no session the search returned");
        // The conditional delete is an event too, of the Appointment deleted.
        let deleted = events_until(&app, "subtype=delete", |es| with_request(es, &delete).is_some()).await;
        assert!(with_request(&deleted, &delete).unwrap()["entity"].as_array().unwrap().iter()
            .any(|x| x["what"]["reference"].as_str().is_some_and(|r| r.starts_with("Appointment/"))));
    }

    async fn the_trail_is_kept_in_its_own_store(app: TestApp) {
        let (status, id) = sent(app.client.put(app.url("Patient/ann")).header("Content-Type", FHIR_JSON).body(json!({"resourceType": "Patient", "id": "ann"}).to_string())).await;
        assert_eq!(status, 201);
        events_until(&app, "patient=Patient/ann", |es| with_request(es, &id).is_some()).await;
        match app.backend {
            // SQLite: a file of its own beside the main one; the main file's trail tables stay empty.
            Backend::Sqlite => {
                let audit = app.db.audit_url();
                assert_ne!(audit, app.db.url);
                assert!(std::path::Path::new(audit.trim_start_matches("sqlite://")).exists(), "{audit}");
                assert_eq!(app.count("SELECT COUNT(*) AS n FROM audit_events"), 0);
            }
            // PostgreSQL: the same database (its transactions skip the synchronous commit).
            Backend::Postgres => assert!(app.count("SELECT COUNT(*) AS n FROM audit_events") > 0),
        }
    }

    async fn an_upgrade_keeps_the_trail_kept_in_the_main_database(app: TestApp) {
        // An earlier version kept the trail in the main database: as if so, with the audit URL the
        // main one, one event is written; restarted the new way, /AuditEvent still finds it.
        let main = app.db.url.clone();
        let app = TestApp::spawn_configured_on(app.backend, app.stop().await, move |c| c.audit_database_url = Some(main)).await;
        let (status, before) = sent(app.client.put(app.url("Patient/ann")).header("Content-Type", FHIR_JSON).body(json!({"resourceType": "Patient", "id": "ann"}).to_string())).await;
        assert_eq!(status, 201);
        events_until(&app, "patient=Patient/ann", |es| with_request(es, &before).is_some()).await;
        let app = TestApp::spawn_on(app.backend, app.stop().await).await;
        let (_, after) = sent(app.client.get(app.url("Patient/ann"))).await;
        let events = events_until(&app, "patient=Patient/ann", |es| with_request(es, &after).is_some()).await;
        assert!(with_request(&events, &before).is_some(), "the event written before the upgrade is found");
        // Started again, nothing is copied twice.
        let app = TestApp::spawn_on(app.backend, app.stop().await).await;
        let events = events_until(&app, "patient=Patient/ann", |es| with_request(es, &after).is_some()).await;
        assert_eq!(events.iter().filter(|e| with_request(std::slice::from_ref(e), &before).is_some()).count(), 1);
    }

    async fn with_audit_reads_none_only_writes_are_recorded(app: TestApp) {
        let app = TestApp::spawn_configured_on(app.backend, app.stop().await, |c| c.audit_reads = tandem::config::AuditReads::None).await;
        let c = &app.client;
        let (status, write) = sent(c.put(app.url("Patient/ann")).header("Content-Type", FHIR_JSON).body(json!({"resourceType": "Patient", "id": "ann"}).to_string())).await;
        assert_eq!(status, 201);
        // A Bulk Data kick-off is a GET that starts a job: recorded.
        let (status, export) = sent(c.get(app.url("Patient/$export")).header("Prefer", "respond-async")).await;
        assert_eq!(status, 202);
        let (_, read) = sent(c.get(app.url("Patient/ann"))).await;
        let (_, search) = sent(c.get(app.url("Patient?_id=ann"))).await;
        let (_, posted) = sent(c.post(app.url("Patient/_search")).header("Content-Type", "application/x-www-form-urlencoded").body("_id=ann")).await;
        // A refused write is a write: recorded.
        let (status, refused) = sent(c.put(app.url("Patient/ann")).header("Content-Type", FHIR_JSON).header("If-Match", "W/\"7\"").body(json!({"resourceType": "Patient", "id": "ann"}).to_string())).await;
        assert_eq!(status, 412);
        let events = events_until(&app, "patient=Patient/ann", |es| with_request(es, &write).is_some() && with_request(es, &refused).is_some()).await;
        for id in [&read, &search, &posted] {
            assert!(with_request(&events, id).is_none(), "a read was recorded: {id}");
        }
        events_until(&app, "subtype=operation", |es| with_request(es, &export).is_some()).await;
    }
}

/// The ids of `AuditEvent?{query}` as the store answers it (every page), and its accurate total.
fn store_search(store: &tandem::store::Store, query: &[(&str, &str)]) -> (Vec<String>, i64) {
    let pairs: Vec<(String, String)> = query.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let plan = tandem::search::audit::plan_audit(&tandem::search::Search::parse(&pairs).unwrap(), true).unwrap();
    let (mut ids, mut cursor, mut total) = (Vec::new(), None, None);
    loop {
        let page = store.audit_search(&plan, 4, cursor, total.is_none()).unwrap();
        total = total.or(page.total);
        ids.extend(page.bodies.iter().map(|b| {
            serde_json::from_str::<Value>(b).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        }));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return (ids, total.unwrap()),
        }
    }
}

fn event(id: &str, refs: &[(&'static str, &str)]) -> tandem::store::AuditRow {
    tandem::store::AuditRow {
        id: id.into(),
        recorded: 1_800_000_000_000,
        action: "R".into(),
        subtype: "read".into(),
        outcome: "0".into(),
        altid: None,
        client_id: None,
        address: None,
        body: json!({"id": id, "recorded": 1_800_000_000_000_i64, "interaction": "read", "status": 200, "request_id": id, "method": "GET"}).to_string(),
        refs: refs.iter().map(|(k, r)| (*k, r.to_string())).collect(),
    }
}

both_backends! {
    async fn a_search_is_exact_across_the_indexed_and_the_waiting_references(app: TestApp) {
        // A store of its own, with no indexer running: the test moves the references itself.
        let db = TestDb::new(app.backend);
        let store = tandem::store::Store::open_audit(&db.audit_url(), 2, 10_000).unwrap();
        store.migrate().unwrap();
        let mut rows = Vec::new();
        for i in 0..30 {
            rows.push(event(&format!("ann-{i:02}"), &[("agent", "Practitioner/p|1"), ("entity", "Patient/ann"), ("patient", "Patient/ann")]));
        }
        // Look-alikes that must not match: a longer id, a shorter one, the same id of another kind.
        rows.push(event("anna", &[("patient", "Patient/anna")]));
        rows.push(event("an", &[("patient", "Patient/an")]));
        rows.push(event("entity-only", &[("entity", "Patient/ann")]));
        rows.push(event("none", &[]));
        for part in rows.chunks(7) {
            store.insert_audit(part).unwrap();
        }
        let ann: Vec<String> = (0..30).rev().map(|i| format!("ann-{i:02}")).collect();
        let check = |moment: &str| {
            let (ids, total) = store_search(&store, &[("patient", "Patient/ann")]);
            assert_eq!(ids, ann, "{moment}: each event once, newest first");
            assert_eq!(total, 30, "{moment}");
            let (ids, _) = store_search(&store, &[("patient", "ann,an")]);
            assert_eq!(ids.len(), 31, "{moment}: {ids:?}");
            let (ids, total) = store_search(&store, &[("entity", "Patient/ann")]);
            assert_eq!((ids.len(), total), (31, 31), "{moment}");
            let (_, total) = store_search(&store, &[("agent", "Practitioner/p|1"), ("patient", "Patient/ann")]);
            assert_eq!(total, 30, "{moment}");
            let (_, total) = store_search(&store, &[("agent", "Practitioner/p")]);
            assert_eq!(total, 0, "{moment}: a prefix of a reference is not the reference");
        };
        check("all waiting");
        // Part moved: the oldest 12 events' references are indexed, the rest wait.
        assert_eq!(store.index_audit_refs(12, 0).unwrap(), 12);
        check("12 indexed, the rest waiting");
        // Everything moved; nothing is moved twice.
        assert_eq!(store.index_audit_refs(1000, 0).unwrap(), rows.iter().filter(|r| !r.refs.is_empty()).count() - 12);
        assert_eq!(store.index_audit_refs(1000, 0).unwrap(), 0);
        check("all indexed");
    }

    async fn the_indexer_moves_the_references_behind_the_writer(app: TestApp) {
        let (status, id) = sent(app.client.put(app.url("Patient/ann")).header("Content-Type", FHIR_JSON).body(json!({"resourceType": "Patient", "id": "ann"}).to_string())).await;
        assert_eq!(status, 201);
        for _ in 0..5 {
            assert_eq!(app.client.get(app.url("Patient/ann")).send().await.unwrap().status(), 200);
        }
        let events = events_until(&app, "patient=Patient/ann", |es| with_request(es, &id).is_some() && es.len() == 6).await;
        assert_eq!(events.len(), 6);
        // Within a few indexer rounds nothing waits, and the same search finds the same events.
        let audit = app.db.audit_url();
        let waiting = || TestApp::count_on(app.backend, &audit, "SELECT COUNT(*) AS n FROM audit_refs_pending");
        for _ in 0..100 {
            if waiting() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(waiting(), 0, "the references were indexed");
        let again = events_until(&app, "patient=Patient/ann", |es| es.len() == 6).await;
        assert_eq!(again, events);
    }
}
