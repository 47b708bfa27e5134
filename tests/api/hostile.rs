//! Hostile input: limits on what one request may ask for, slow clients, security headers, and no
//! patient data in the logs.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::*;

both_backends! {
    async fn requests_that_ask_for_too_much_are_refused_or_capped(app: TestApp) {
        let app = TestApp::spawn_configured(app.backend, |c| {
            c.max_count = 20;
            c.default_count = 10;
            c.max_bundle_entries = 5;
            c.max_search_params = 4;
        }).await;
        for i in 0..25 {
            app.put_json(&format!("Patient/p{i}"), &json!({"resourceType": "Patient", "id": format!("p{i}")})).await;
        }
        // _count above the limit is lowered to it.
        let page = json(app.get("Patient?_count=100000").await).await;
        assert_eq!(entries(&page).len(), 20);
        // More criteria and includes than allowed: 400 too-costly.
        let res = app.get("Patient?name=a&family=b&given=c&gender=d&birthdate=2000").await;
        assert_outcome(res, 400, "too-costly").await;
        let res = app.get("Patient?_id=p1&_include=Patient:link&_include=Patient:organization&_revinclude=Group:member&_revinclude=CareTeam:subject&_revinclude=Appointment:actor").await;
        assert_outcome(res, 400, "too-costly").await;
        // A Bundle with more entries than allowed: 413, nothing written.
        let six: Vec<Value> = (0..6).map(|_| json!({"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}})).collect();
        let before = app.version_count().await;
        let res = app.post_json("", &json!({"resourceType": "Bundle", "type": "batch", "entry": six})).await;
        assert_outcome(res, 413, "too-costly").await;
        assert_eq!(app.version_count().await, before);
        // _include:iterate follows a bounded number of rounds: a chain of 10 linked patients is cut.
        // Link targets must exist: write from the end of the chain.
        for i in (0..10).rev() {
            let mut p = json!({"resourceType": "Patient", "id": format!("chain{i}")});
            if i < 9 {
                p["link"] = json!([{"other": {"reference": format!("Patient/chain{}", i + 1)}, "type": "seealso"}]);
            }
            assert_eq!(app.put_json(&format!("Patient/chain{i}"), &p).await.status(), 201);
        }
        let bundle = json(app.get("Patient?_id=chain0&_include:iterate=Patient:link").await).await;
        let included = entries(&bundle).iter().filter(|e| e["search"]["mode"] == "include").count();
        assert!((1..9).contains(&included), "{included} included: iteration is bounded");
    }

    async fn every_answer_carries_security_headers(app: TestApp) {
        for (path, client) in [("Patient", &app.client), ("metadata", &app.anonymous), ("Patient/nope", &app.client), ("Patient", &app.anonymous)] {
            let res = client.get(app.url(path)).send().await.unwrap();
            let h = res.headers();
            assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
            assert_eq!(h["cache-control"], "no-store", "{path}");
            assert!(h["content-security-policy"].to_str().unwrap().contains("default-src 'none'"), "{path}");
            assert_eq!(h["x-frame-options"], "DENY", "{path}");
        }
    }

    async fn slow_clients_are_cut_off(app: TestApp) {
        let app = TestApp::spawn_configured(app.backend, |c| c.request_timeout_seconds = 1).await;
        let address = app.address.trim_start_matches("http://").to_string();
        let token = app.token("system/*.cruds", None);
        // A body that never finishes arriving: 408 after the request timeout, and nothing written.
        let started = Instant::now();
        let mut stream = std::net::TcpStream::connect(&address).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(stream, "POST /Patient HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/fhir+json\r\nContent-Length: 100\r\n\r\n{{\"resourceType\"").unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("OperationOutcome"), "{answer}");
        assert!(started.elapsed() < Duration::from_secs(8));
        assert_eq!(app.version_count().await, 0);
        // A request head that never finishes: the connection is closed.
        let mut stream = std::net::TcpStream::connect(&address).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        write!(stream, "GET /Patient HTTP/1.1\r\nHost: {address}\r\n").unwrap();
        let mut answer = Vec::new();
        let started = Instant::now();
        let _ = stream.read_to_end(&mut answer);
        assert!(started.elapsed() < Duration::from_secs(12), "the server closed the connection");
        let text = String::from_utf8_lossy(&answer);
        assert!(text.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
    }

    async fn logs_hold_no_patient_data(app: TestApp) {
        let mut server = ServerProcess::start(&app.db, &[("TANDEM_LOG", "info")]).await;
        let client = &app.client;
        let url = |p: &str| format!("{}/{p}", server.address);
        // Distinctive values in ids, bodies, query strings and headers.
        let patient = json!({"resourceType": "Patient", "id": "zz-secret-id", "name": [{"family": "Quixotenamex", "given": ["Zebedeeq"]}],
            "birthDate": "1971-03-04", "telecom": [{"system": "phone", "value": "555-0199-777"}]});
        client.put(url("Patient/zz-secret-id")).header("Content-Type", FHIR_JSON).body(patient.to_string()).send().await.unwrap();
        client.get(url("Patient?family=Quixotenamex&birthdate=1971-03-04")).send().await.unwrap();
        client.get(url("Patient/zz-secret-id")).send().await.unwrap();
        client.post(url("Patient")).header("Content-Type", FHIR_JSON).body("{\"resourceType\":\"Patient\",\"name\":[{\"family\":\"Quixotenamex\"").send().await.unwrap();
        client.get(url("Patient/zz-secret-id/_history/99")).send().await.unwrap();
        app.anonymous.get(url("Patient/zz-secret-id")).header("Authorization", "Bearer Quixotenamex").send().await.unwrap();
        assert!(server.terminate(), "clean exit on SIGTERM");
        let log = std::fs::read_to_string(&server.log).unwrap();
        assert!(log.contains("request completed"), "requests are logged: {log}");
        assert!(log.contains("/{type}/{id}"), "by route pattern");
        for secret in ["zz-secret-id", "Quixotenamex", "Zebedeeq", "1971-03-04", "555-0199-777"] {
            assert!(!log.contains(secret), "the log holds '{secret}':\n{log}");
        }
        // Every line is JSON: the default when the output is not a terminal.
        for line in log.lines() {
            serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        }
    }
}

/// A read that cannot finish (its table locked by another session) is cut off after the request
/// timeout with a 503, and the server goes on serving. PostgreSQL only: SQLite readers in WAL mode
/// are never blocked, so no read there can be made to hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_hangs_is_answered_503_after_the_timeout() {
    use diesel::connection::SimpleConnection;
    use diesel::Connection;
    let app = TestApp::spawn_configured(Backend::Postgres, |c| c.request_timeout_seconds = 1).await;
    app.put_json("Patient/p", &json!({"resourceType": "Patient", "id": "p"}))
        .await;
    let mut locker = diesel::PgConnection::establish(&app.db.url).unwrap();
    locker
        .batch_execute("BEGIN; LOCK TABLE resources IN ACCESS EXCLUSIVE MODE;")
        .unwrap();
    let started = Instant::now();
    let res = app.get("Patient/p").await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_outcome(res, 503, "transient").await;
    locker.batch_execute("ROLLBACK;").unwrap();
    assert_eq!(app.get("Patient/p").await.status(), 200);
}
