//! Paging: following next links over 1,000 matches returns each exactly once while other writes go
//! on, and previous links return the earlier pages unchanged, in the default order (keyset) and in a
//! `_sort` order (snapshot).

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

/// Creates 1,000 matching patients, reads the first page of `query`, then walks its next links while
/// another client creates new matches and updates the ones being paged; returns the ids in page order
/// and the pages.
async fn walk_while_writing(app: &TestApp, query: &str) -> (Vec<String>, Vec<(Value, Vec<String>)>) {
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
    let first: Value = app.get(query).await.json().await.unwrap();

    // Then another client keeps writing: new matching patients, and updates to the ones being paged.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (client, base, stop, targets) = (app.client.clone(), app.address.clone(), stop.clone(), originals.clone());
        tokio::spawn(async move {
            let mut writes = 0usize;
            while !stop.load(Ordering::Relaxed) && writes < 2_000 {
                let res = client
                    .post(format!("{base}/Patient"))
                    .header("Content-Type", FHIR_JSON)
                    .body(walker(10_000 + writes).to_string())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 201);
                let id = &targets[(writes * 7) % targets.len()];
                let mut changed = walker(writes);
                changed["id"] = json!(id);
                let res = client
                    .put(format!("{base}/Patient/{id}"))
                    .header("Content-Type", FHIR_JSON)
                    .body(changed.to_string())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 200);
                writes += 1;
            }
            writes
        })
    };

    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut walked = Vec::new();
    let mut next_page = Some(first);
    let mut pages = Vec::new();
    let mut total = None;
    while let Some(page) = next_page.take() {
        total.get_or_insert(page["total"].as_i64().unwrap());
        let ids = page_ids(&page);
        for id in &ids {
            *seen.entry(id.clone()).or_default() += 1;
            walked.push(id.clone());
        }
        if let Some(next) = link(&page, "next") {
            next_page = Some(app.client.get(next).send().await.unwrap().json().await.unwrap());
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
    (walked, pages)
}

fn link(page: &Value, relation: &str) -> Option<String> {
    page["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == relation)
        .map(|l| l["url"].as_str().unwrap().to_string())
}

fn page_ids(page: &Value) -> Vec<String> {
    page["entry"].as_array().map_or(Vec::new(), |entries| {
        entries
            .iter()
            .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
            .collect()
    })
}

both_backends! {
    async fn a_paging_walk_over_1000_matches_sees_each_once_while_writes_go_on(app: TestApp) {
        // The default order (type, id) pages by keyset: nothing is stored for the walk.
        let (walked, pages) = walk_while_writing(&app, "Patient?family=walker&_count=37").await;

        // Server-assigned ids are time-ordered, so the default order is creation order.
        let mut sorted = walked.clone();
        sorted.sort();
        assert_eq!(walked, sorted, "pages follow the id order");

        // previous links walk back over the same pages, from the last to the first.
        let mut back = pages.last().unwrap().0.clone();
        for (page, ids) in pages.iter().rev().skip(1) {
            let previous = link(&back, "previous").expect("a previous link on every page but the first");
            back = app.client.get(previous).send().await.unwrap().json().await.unwrap();
            assert_eq!(&page_ids(&back), ids);
            assert_eq!(back["total"], page["total"]);
            assert!(link(&back, "next").is_some(), "a page reached backwards links forwards");
        }
        assert!(link(&back, "previous").is_none(), "the first page has no previous link");

        // A cursor that is not one of ours is a 400.
        assert_outcome(app.get("Patient?family=walker&_cursor=garbage").await, 400, "invalid").await;
        assert_outcome(app.get("Patient?family=walker&_cursor=k~1~2~c~Patient~x").await, 400, "invalid").await;
        assert_outcome(app.get("Patient?family=walker&_cursor=k~1~2~a~Patient~x%27--").await, 400, "invalid").await;
    }
}

both_backends! {
    async fn a_sorted_paging_walk_reads_a_snapshot_that_updates_do_not_reorder(app: TestApp) {
        // _lastUpdated changes with each update the writer makes, so this order pages from a snapshot.
        let (_, pages) = walk_while_writing(&app, "Patient?family=walker&_count=37&_sort=_lastUpdated").await;

        // previous from the second page is the first page again.
        let previous = link(&pages[1].0, "previous").unwrap();
        let back: Value = app.client.get(previous).send().await.unwrap().json().await.unwrap();
        assert_eq!(page_ids(&back), pages[0].1);

        // An unknown snapshot has expired (410); a cursor that is not one of ours is a 400.
        assert_outcome(app.get("Patient?family=walker&_sort=_lastUpdated&_cursor=nosuchsnapshot:37").await, 410, "deleted").await;
        assert_outcome(app.get("Patient?family=walker&_sort=_lastUpdated&_cursor=k~1~2~a~Patient~x").await, 400, "invalid").await;
    }
}

both_backends! {
    async fn concurrent_searches_that_need_snapshots_do_not_exhaust_a_small_pool(app: TestApp) {
        let _ = &app;
        let app = TestApp::spawn_configured(app.backend, |c| c.db_pool_size = 2).await;
        for i in 0..30 {
            assert_eq!(app.post_json("Patient", &walker(i)).await.status(), 201);
        }
        // Each search has more matches than its page and a _sort, so each writes a snapshot while
        // others read.
        let searches = (0..12).map(|_| app.get("Patient?family=walker&_count=5&_sort=birthdate"));
        let pages = join_all(searches).await;
        for page in pages {
            assert_eq!(page.status(), 200);
            let bundle: Value = page.json().await.unwrap();
            assert_eq!(bundle["total"], 30);
            assert!(bundle["link"].as_array().unwrap().iter().any(|l| l["relation"] == "next"));
        }
    }
}
