//! Paging: following next links over 1,000 matches returns each exactly once while other writes go
//! on, and previous links return the earlier pages unchanged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures_util::future::join_all;
use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::*;

fn walker(i: usize) -> Value {
    json!({"resourceType": "Patient", "name": [{"family": "Walker", "given": [format!("W{i}")]}], "birthDate": "1970-01-01"})
}

both_backends! {
    async fn a_paging_walk_over_1000_matches_sees_each_once_while_writes_go_on(app: TestApp) {
        let mut originals = Vec::new();
        for chunk in (0..1000).collect::<Vec<_>>().chunks(25) {
            let bodies: Vec<Value> = chunk.iter().map(|i| walker(*i)).collect();
            let created = join_all(bodies.iter().map(|b| app.post_json("Patient", b))).await;
            for res in created {
                assert_eq!(res.status(), 201);
                originals.push(json(res).await["id"].as_str().unwrap().to_string());
            }
        }

        // The first page fixes the result set.
        let first: Value = app.get("Patient?family=walker&_count=37").await.json().await.unwrap();

        // Then another client keeps writing: new matching patients, and updates to the ones being paged.
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (client, base, stop, targets) = (app.client.clone(), app.address.clone(), stop.clone(), originals.clone());
            tokio::spawn(async move {
                let mut writes = 0usize;
                while !stop.load(Ordering::Relaxed) && writes < 2_000 {
                    let res = client.post(format!("{base}/Patient")).header("Content-Type", FHIR_JSON).body(walker(10_000 + writes).to_string()).send().await.unwrap();
                    assert_eq!(res.status(), 201);
                    let id = &targets[(writes * 7) % targets.len()];
                    let mut changed = walker(writes);
                    changed["id"] = json!(id);
                    let res = client.put(format!("{base}/Patient/{id}")).header("Content-Type", FHIR_JSON).body(changed.to_string()).send().await.unwrap();
                    assert_eq!(res.status(), 200);
                    writes += 1;
                }
                writes
            })
        };

        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut next_page = Some(first);
        let mut pages = Vec::new();
        let mut total = None;
        while let Some(page) = next_page.take() {
            total.get_or_insert(page["total"].as_i64().unwrap());
            let ids: Vec<String> = page["entry"].as_array().unwrap().iter().map(|e| e["resource"]["id"].as_str().unwrap().to_string()).collect();
            for id in &ids {
                *seen.entry(id.clone()).or_default() += 1;
            }
            if let Some(next) = page["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next") {
                next_page = Some(app.client.get(next["url"].as_str().unwrap()).send().await.unwrap().json().await.unwrap());
            }
            pages.push((page, ids));
        }
        stop.store(true, Ordering::Relaxed);
        let writes = writer.await.unwrap();
        assert!(writes > 0, "the writer ran during the walk");

        assert_eq!(total, Some(1000));
        assert_eq!(pages.len(), 1000usize.div_ceil(37));
        assert_eq!(seen.len(), 1000, "every original match, and only those");
        assert!(originals.iter().all(|id| seen.get(id) == Some(&1)), "each exactly once");

        // previous from the second page is the first page again.
        let second = &pages[1].0;
        let previous = second["link"].as_array().unwrap().iter().find(|l| l["relation"] == "previous").unwrap();
        let back: Value = app.client.get(previous["url"].as_str().unwrap()).send().await.unwrap().json().await.unwrap();
        let back_ids: Vec<String> = back["entry"].as_array().unwrap().iter().map(|e| e["resource"]["id"].as_str().unwrap().to_string()).collect();
        assert_eq!(back_ids, pages[0].1);

        // A cursor that is not one of ours is a 400; an unknown snapshot has expired (410).
        assert_outcome(app.get("Patient?family=walker&_cursor=garbage").await, 400, "invalid").await;
        assert_outcome(app.get("Patient?family=walker&_cursor=nosuchsnapshot:37").await, 410, "deleted").await;
    }
}

both_backends! {
    async fn concurrent_searches_that_need_snapshots_do_not_exhaust_a_small_pool(app: TestApp) {
        let _ = &app;
        let app = TestApp::spawn_configured(app.backend, |c| c.db_pool_size = 2).await;
        for i in 0..30 {
            assert_eq!(app.post_json("Patient", &walker(i)).await.status(), 201);
        }
        // Each search has more matches than its page, so each writes a snapshot while others read.
        let searches = (0..12).map(|_| app.get("Patient?family=walker&_count=5"));
        let pages = join_all(searches).await;
        for page in pages {
            assert_eq!(page.status(), 200);
            let bundle: Value = page.json().await.unwrap();
            assert_eq!(bundle["total"], 30);
            assert!(bundle["link"].as_array().unwrap().iter().any(|l| l["relation"] == "next"));
        }
    }
}
