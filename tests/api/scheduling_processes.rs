//! Two `tandem serve` processes on one database, many clients booking one therapist into overlapping
//! slots at once: afterwards no overlap exists, and every refused client got a 409.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::*;

/// A server process, stopped when dropped.
struct Server {
    child: Child,
    address: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_process(db: &TestDb) -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .arg("serve")
        .env("TANDEM_LISTEN", format!("127.0.0.1:{port}"))
        .env("TANDEM_DATABASE_URL", &db.url)
        .env("TANDEM_DATA_DIR", db.dir.path())
        .env("TANDEM_LOG", "warn")
        .env("TANDEM_WORKERS", "2")
        .env("TANDEM_DB_POOL_SIZE", "4")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tandem serve");
    let server = Server {
        child,
        address: format!("http://127.0.0.1:{port}"),
    };
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if client
            .get(format!("{}/readyz", server.address))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("tandem serve did not become ready at {}", server.address);
}

both_backends! {
    async fn two_processes_never_double_book_a_therapist(app: TestApp) {
        // The test app migrated the database; seed the people there.
        assert_eq!(app.put_json("Practitioner/moss", &json!({"resourceType": "Practitioner", "id": "moss"})).await.status(), 201);
        let n = 40;
        for i in 0..n {
            let res = app.put_json(&format!("Patient/p{i}"), &json!({"resourceType": "Patient", "id": format!("p{i}")})).await;
            assert_eq!(res.status(), 201);
        }
        let servers = [start_process(&app.db).await, start_process(&app.db).await];

        // Client i asks for an hour with moss starting i*15 minutes after 09:00: each slot overlaps
        // its neighbours, and every request goes to one of the two processes at the same time.
        let base = 1_796_115_600_000i64; // 2026-12-01T09:00:00Z
        let requests = (0..n).map(|i| {
            let start = tandem::resources::dates::format_instant(base + i as i64 * 15 * 60_000);
            let end = tandem::resources::dates::format_instant(base + i as i64 * 15 * 60_000 + 60 * 60_000);
            let body = json!({"resourceType": "Appointment", "status": "booked", "start": start, "end": end,
                "participant": [{"actor": {"reference": "Practitioner/moss"}, "status": "accepted"},
                                {"actor": {"reference": format!("Patient/p{i}")}, "status": "accepted"}]});
            let url = format!("{}/Appointment", servers[i % 2].address);
            let client = app.client.clone();
            async move {
                let res = client.post(url).header("Content-Type", FHIR_JSON).body(body.to_string()).send().await.unwrap();
                let status = res.status().as_u16();
                let body: Value = res.json().await.unwrap();
                (status, body)
            }
        });
        let results = join_all(requests).await;
        let created = results.iter().filter(|(s, _)| *s == 201).count();
        for (status, body) in &results {
            match status {
                201 => {}
                409 => assert_eq!(body["issue"][0]["code"], "conflict", "{body}"),
                other => panic!("unexpected {other}: {body}"),
            }
        }
        // However the race goes, the accepted hours form a maximal set: each blocks at most 7 of the
        // 15-minute-spaced slots, so at least 40/7 are accepted.
        assert!(created >= 6, "{created} accepted");
        assert!(created < n, "overlapping requests were refused");

        // What is stored: moss's booked sessions, none overlapping another.
        let found = json(app.get("Appointment?practitioner=Practitioner/moss&status=booked&_count=500&_sort=date").await).await;
        let mut windows: Vec<(String, String)> = found["entry"].as_array().unwrap().iter()
            .map(|e| (e["resource"]["start"].as_str().unwrap().to_string(), e["resource"]["end"].as_str().unwrap().to_string()))
            .collect();
        assert_eq!(windows.len(), created);
        windows.sort();
        for pair in windows.windows(2) {
            assert!(pair[0].1 <= pair[1].0, "overlap: {pair:?}");
        }
        drop(servers);
    }
}
