//! The audit trail under attack: no request can stop it (ids with NUL bytes or thousands of
//! characters, hostile query values and token claims), readiness reports a writer that falls behind,
//! and a read cut off by the request timeout is audited like any other answer.

use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::Connection;
use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::*;

/// The AuditEvents of a search of the trail (`AuditEvent?{query}`), polled until `done` holds for
/// them (the writer writes in batches, a few milliseconds after the request).
async fn trail_until(app: &TestApp, query: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let officer = app.client_with("system/AuditEvent.rs", None);
    let mut events = Vec::new();
    for _ in 0..300 {
        let res = officer
            .get(app.url(&format!("AuditEvent?{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "searching the trail");
        events = entries(&json(res).await)
            .iter()
            .map(|e| e["resource"].clone())
            .collect();
        if done(&events) {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the trail never held what was expected for {query}: {events:#?}");
}

/// The request id an event records (its `HTTP request` entity).
fn request_id(event: &Value) -> Option<&str> {
    event["entity"]
        .as_array()?
        .iter()
        .find(|e| e["description"] == "HTTP request")?["detail"]
        .as_array()?
        .iter()
        .find(|d| d["type"] == "request-id")?["valueString"]
        .as_str()
}

/// The event of the request that was answered with this `X-Request-Id`.
async fn event_of(app: &TestApp, id: &str) -> Value {
    let events = trail_until(app, "_count=500", |events| {
        events.iter().any(|e| request_id(e) == Some(id))
    })
    .await;
    events.into_iter().find(|e| request_id(e) == Some(id)).unwrap()
}

fn answered_id(res: &reqwest::Response) -> String {
    res.headers()["x-request-id"].to_str().unwrap().to_string()
}

fn descriptions(event: &Value) -> Vec<String> {
    event["entity"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["description"].as_str().map(str::to_string))
        .collect()
}

/// A connection of the test's own that holds the database's write lock (SQLite) or an exclusive lock
/// on `table` (PostgreSQL) until it is dropped or `release` is called.
enum Lock {
    Sqlite(diesel::SqliteConnection),
    Postgres(diesel::PgConnection),
}

impl Lock {
    fn take(app: &TestApp, table: &str) -> Lock {
        match app.backend {
            Backend::Sqlite => {
                // The audit trail's tables live in a file of their own.
                let url = if table.starts_with("audit") {
                    app.db.audit_url()
                } else {
                    app.db.url.clone()
                };
                let mut c = diesel::SqliteConnection::establish(url.trim_start_matches("sqlite://")).unwrap();
                c.batch_execute("PRAGMA busy_timeout = 15000; BEGIN IMMEDIATE;")
                    .unwrap();
                Lock::Sqlite(c)
            }
            Backend::Postgres => {
                let mut c = diesel::PgConnection::establish(&app.db.url).unwrap();
                c.batch_execute(&format!("BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE;"))
                    .unwrap();
                Lock::Postgres(c)
            }
        }
    }

    fn release(self) {
        match self {
            Lock::Sqlite(mut c) => c.batch_execute("ROLLBACK;").unwrap(),
            Lock::Postgres(mut c) => c.batch_execute("ROLLBACK;").unwrap(),
        }
    }
}

both_backends! {
    async fn no_request_stops_the_trail(app: TestApp) {
        let client = &app.client;
        assert_eq!(app.put_json("Patient/before", &json!({"resourceType": "Patient", "id": "before"})).await.status(), 201);
        let long_id = "x".repeat(5_000);
        let big_value = "v".repeat(100_000);
        // Each hostile request, and the status it must get (None: whatever it gets, it is audited).
        let mut hostile: Vec<(reqwest::Response, Option<u16>)> = vec![
            (client.get(app.url("Patient/%00x")).send().await.unwrap(), Some(404)),
            (client.get(app.url(&format!("Patient/{long_id}"))).send().await.unwrap(), Some(404)),
            (client.get(app.url(&format!("Patient/{long_id}/_history/1"))).send().await.unwrap(), Some(404)),
            (client.get(app.url("Patient/before/_history/%00")).send().await.unwrap(), None),
            (client.get(app.url("Patient/before/$%00evil")).send().await.unwrap(), None),
            (client.get(app.url("Patient?name=%00")).send().await.unwrap(), None),
            // (The longest URL a client can send is under 64 KB; the 100 KB value goes in a form.)
            (client.get(app.url(&format!("Patient?name={}", &big_value[..50_000]))).send().await.unwrap(), None),
            (client.post(app.url("Patient/_search")).header("Content-Type", "application/x-www-form-urlencoded")
                .body(format!("name={big_value}")).send().await.unwrap(), None),
        ];
        // Token claims with control characters and excess length, if the verifier lets them in.
        let claims = tandem::auth::token::mint(&app.config, "system/*.rs", None, "evil\u{0}\u{1b}sub",
            Some(format!("Practitioner/{}\u{0}", "y".repeat(3_000))), 600).unwrap();
        hostile.push((bearer_client(&claims).get(app.url("Patient/before")).send().await.unwrap(), None));
        let mut ids = Vec::new();
        for (res, expected) in hostile {
            let status = res.status().as_u16();
            if let Some(expected) = expected {
                // A control character in the URL is refused before routing (400); a malformed id
                // names no resource (404): either way a 4xx, and audited with that status.
                let same_class = status == expected || (expected == 404 && status == 400);
                assert!(same_class, "{} answered {status}, expected {expected}", res.url());
            }
            ids.push((answered_id(&res), status));
        }

        // The trail goes on: an ordinary request after them is recorded and found by its entity.
        assert_eq!(app.put_json("Patient/after", &json!({"resourceType": "Patient", "id": "after"})).await.status(), 201);
        assert_eq!(app.get("Patient/after").await.status(), 200);
        let after = trail_until(&app, "entity=Patient/after", |e| e.len() >= 2).await;
        assert_eq!(after.len(), 2, "the update and the read of Patient/after");
        assert!(after.iter().all(|e| e["outcome"] == "0"));

        // And every hostile request has its event, with its outcome and nothing raw in it.
        for (id, status) in &ids {
            let event = event_of(&app, id).await;
            assert_eq!(event["outcomeDesc"].as_str().unwrap().split(' ').next(), Some(status.to_string().as_str()), "{event}");
            let text = event.to_string();
            assert!(!text.contains("\\u0000") && !text.contains("\\u001b"), "a control character is stored: {text}");
            assert!(!text.contains(&"x".repeat(100)) && !text.contains(&"y".repeat(300)), "an unbounded value is stored");
            assert!(text.len() < 12_000, "{}", text.len());
        }
        // An invalid id is a 404, audited as a refusal that names no resource.
        let nul = event_of(&app, &ids[0].0).await;
        assert_eq!((nul["outcome"].as_str(), nul["subtype"][0]["code"].as_str()), (Some("4"), Some("read")));
        assert!(descriptions(&nul).contains(&"the request named no valid resource: Patient with an invalid id or version".to_string()), "{nul}");
        let long = event_of(&app, &ids[1].0).await;
        assert_eq!(long["outcome"], "4");
        assert!(!long["entity"].as_array().unwrap().iter().any(|e| e["what"]["reference"].as_str().is_some_and(|r| r.starts_with("Patient/x"))));
        // The long queries (50 KB in the URL, 100 KB in a form) are kept in part, with their length.
        for i in [6, 7] {
            let big = event_of(&app, &ids[i].0).await;
            let query = big["entity"].as_array().unwrap().iter().find(|e| e.get("query").is_some()).unwrap();
            assert_eq!(query["detail"][0]["type"], "query-length", "{query}");
        }
        // The hostile token's claims are kept escaped, and its fhirUser is not indexed.
        let token_event = event_of(&app, &ids[8].0).await;
        if ids[8].1 == 200 {
            assert_eq!(token_event["agent"][0]["altId"], "evil\\u{0}\\u{1b}sub");
            assert!(token_event["agent"][0]["who"]["reference"].as_str().unwrap().ends_with('…'));
        }
        assert!(!trail_until(&app, "entity=Patient/before", |e| !e.is_empty()).await.is_empty());
        // Searching the trail for a control character is refused, not a server error.
        let officer = app.client_with("system/AuditEvent.rs", None);
        for q in ["entity=Patient/%00", "altid=%00", "address=%1b"] {
            assert_outcome(officer.get(app.url(&format!("AuditEvent?{q}"))).send().await.unwrap(), 400, "invalid").await;
        }
    }

    async fn readiness_reports_a_writer_that_cannot_write(app: TestApp) {
        let app = TestApp::spawn_configured(app.backend, |c| c.background_workers = false).await;
        assert_eq!(app.anonymous.get(app.url("readyz")).send().await.unwrap().status(), 200);
        assert_eq!(app.put_json("Patient/p", &json!({"resourceType": "Patient", "id": "p"})).await.status(), 201);
        trail_until(&app, "entity=Patient/p", |e| !e.is_empty()).await;
        // The trail's table locked by another session: reads go on, their events wait.
        let lock = Lock::take(&app, "audit_events");
        assert_eq!(app.get("Patient/p").await.status(), 200);
        // (On SQLite the lock also holds back the database check, which may answer first.)
        let started = Instant::now();
        let mut not_ready = None;
        while started.elapsed() < Duration::from_secs(20) {
            let res = app.anonymous.get(app.url("readyz")).send().await.unwrap();
            if res.status() == 503 {
                let body = json(res).await;
                if body["status"] == "audit backlog" {
                    not_ready = Some(body);
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let not_ready = not_ready.expect("readiness fails while audit events cannot be written");
        assert!(started.elapsed() >= Duration::from_secs(3), "not at the first delay");
        assert!(not_ready["reason"].as_str().unwrap().contains("stalled"), "{not_ready}");
        assert_eq!(app.anonymous.get(app.url("healthz")).send().await.unwrap().status(), 200, "liveness is unaffected");
        let metrics = app.anonymous.get(app.url("metrics")).send().await.unwrap().text().await.unwrap();
        let waiting: u64 = metrics.lines().find_map(|l| l.strip_prefix("tandem_audit_queue_events ")).unwrap().parse().unwrap();
        assert!(waiting >= 1, "{metrics}");
        // Unlocked, the writer catches up: ready again, and the read is recorded.
        lock.release();
        trail_until(&app, "entity=Patient/p&subtype=read", |e| !e.is_empty()).await;
        let mut ready = false;
        for _ in 0..100 {
            if app.anonymous.get(app.url("readyz")).send().await.unwrap().status() == 200 {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ready, "ready again once the events are written");
        // The gauge drains to zero (readyz and metrics are not audited; the trail's searches are).
        let mut drained = false;
        for _ in 0..100 {
            let metrics = app.anonymous.get(app.url("metrics")).send().await.unwrap().text().await.unwrap();
            if metrics.lines().any(|l| l == "tandem_audit_queue_events 0") {
                drained = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(drained, "the audit queue drains");
    }

    async fn a_request_cut_off_by_the_timeout_is_audited(app: TestApp) {
        // Two writes wait on a lock another session holds. On PostgreSQL each holds one of the
        // pool's two connections while it waits, so a read then waits for a connection past its
        // one-second limit (the pool waits 10 s). On SQLite writes take turns on the one connection
        // they write through and hold none of the pool's: the read is answered, and the write that
        // waits for its turn past the limit is the request cut off.
        let app = TestApp::spawn_configured(app.backend, |c| {
            c.request_timeout_seconds = 1;
            c.db_pool_size = 2;
            c.background_workers = false;
        }).await;
        assert_eq!(app.put_json("Patient/p", &json!({"resourceType": "Patient", "id": "p"})).await.status(), 201);
        trail_until(&app, "entity=Patient/p", |e| !e.is_empty()).await;
        let lock = Lock::take(&app, "resources");
        let writes: Vec<_> = (0..2).map(|i| {
            let request = app.client.put(app.url(&format!("Patient/w{i}"))).header("Content-Type", FHIR_JSON)
                .body(json!({"resourceType": "Patient", "id": format!("w{i}")}).to_string());
            tokio::spawn(async move { request.send().await.map(|r| (r.status().as_u16(), answered_id(&r))) })
        }).collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let reader = tandem::auth::token::mint(&app.config, "system/*.rs", None, "slow-reader", None, 600).unwrap();
        let started = Instant::now();
        let res = bearer_client(&reader).get(app.url("Patient/p")).send().await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        let id = answered_id(&res);
        if app.backend == Backend::Sqlite {
            assert_eq!(res.status(), 200, "a read does not wait for writers on SQLite");
            tokio::time::sleep(Duration::from_millis(1_000)).await;
            lock.release();
            let mut answers = Vec::new();
            for w in writes {
                answers.push(w.await.unwrap().unwrap());
            }
            answers.sort();
            assert_eq!(answers.iter().map(|a| a.0).collect::<Vec<_>>(), [201, 503], "{answers:?}");
            let event = event_of(&app, &answers[1].1).await;
            assert_eq!(event["outcome"], "8");
            assert_eq!(event["outcomeDesc"], "503 Service Unavailable");
            assert_eq!(event["subtype"][0]["code"], "update");
            let event = event_of(&app, &id).await;
            assert_eq!(event["outcome"], "0");
            assert_eq!(event["agent"][0]["altId"], "slow-reader");
            // The write cut off wrote nothing; the other went through once the lock was released.
            let (w0, w1) = (app.get("Patient/w0").await.status(), app.get("Patient/w1").await.status());
            assert_eq!([w0.as_u16().min(w1.as_u16()), w0.as_u16().max(w1.as_u16())], [200, 404]);
            return;
        }
        let outcome = assert_outcome(res, 503, "transient").await;
        assert!(outcome["issue"][0]["diagnostics"].as_str().unwrap().contains("did not complete within 1 seconds"), "{outcome}");
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        lock.release();
        for w in writes {
            w.await.unwrap().unwrap();
        }
        // The client got a 503: the trail says who asked for what, and that it failed.
        let event = event_of(&app, &id).await;
        assert_eq!(event["outcome"], "8");
        assert_eq!(event["outcomeDesc"], "503 Service Unavailable");
        assert_eq!(event["subtype"][0]["code"], "read");
        assert_eq!(event["agent"][0]["altId"], "slow-reader");
        assert!(event["entity"].as_array().unwrap().iter().any(|e| e["what"]["reference"] == "Patient/p"), "{event}");
        assert!(!trail_until(&app, "entity=Patient/p&outcome=8", |e| !e.is_empty()).await.is_empty());
        // And an ordinary read after it is answered and recorded as before.
        assert_eq!(app.get("Patient/p").await.status(), 200);
        trail_until(&app, "entity=Patient/p&outcome=0&subtype=read", |e| !e.is_empty()).await;
    }
}

both_backends! {
    async fn sigterm_completes_while_the_trail_cannot_be_written(app: TestApp) {
        let mut server = ServerProcess::start(&app.db, &[
            ("TANDEM_REQUEST_TIMEOUT_SECONDS", "2"),
            ("TANDEM_BACKGROUND_WORKERS", "false"),
            ("TANDEM_SHUTDOWN_GRACE_SECONDS", "2"),
        ]).await;
        let url = |p: &str| format!("{}/{p}", server.address);
        let put = app.client.put(url("Patient/p")).header("Content-Type", FHIR_JSON)
            .body(json!({"resourceType": "Patient", "id": "p"}).to_string()).send().await.unwrap();
        assert_eq!(put.status(), 201);
        // The trail's table locked: the events of these reads cannot be written.
        let lock = Lock::take(&app, "audit_events");
        tokio::time::sleep(Duration::from_millis(300)).await;
        for _ in 0..3 {
            assert_eq!(app.client.get(url("Patient/p")).send().await.unwrap().status(), 200);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let started = Instant::now();
        let exited = tokio::task::spawn_blocking(move || server.terminate()).await.unwrap();
        assert!(exited, "a clean exit on SIGTERM");
        // The writer waits at most 10 s for the database once stopping, plus the attempt under way
        // (SQLite's busy timeout is 15 s).
        assert!(started.elapsed() < Duration::from_secs(40), "{:?}", started.elapsed());
        lock.release();
    }
}
