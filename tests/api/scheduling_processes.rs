//! Two `tandem serve` processes on one database, many clients booking one therapist into overlapping
//! slots at once: afterwards no overlap exists, and every refused client got a 409.

use futures_util::future::join_all;
use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::*;

both_backends! {
    async fn two_processes_never_double_book_a_therapist(app: TestApp) {
        // The test app migrated the database; seed the people there.
        assert_eq!(app.put_json("Practitioner/moss", &json!({"resourceType": "Practitioner", "id": "moss"})).await.status(), 201);
        let n = 40;
        for i in 0..n {
            let res = app.put_json(&format!("Patient/p{i}"), &json!({"resourceType": "Patient", "id": format!("p{i}")})).await;
            assert_eq!(res.status(), 201);
        }
        let servers = [ServerProcess::start(&app.db, &[]).await, ServerProcess::start(&app.db, &[]).await];

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
