use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::*;

both_backends! {
    async fn instance_history_is_newest_first_with_request_and_response(app: TestApp) {
        let created = app.create(&patient("Vega")).await;
        let id = created["id"].as_str().unwrap().to_string();
        let mut changed = created.clone();
        changed["gender"] = json!("other");
        assert_eq!(app.put_json(&format!("Patient/{id}"), &changed).await.status(), 200);
        app.client.delete(app.url(&format!("Patient/{id}"))).send().await.unwrap();

        let bundle = json(app.get(&format!("Patient/{id}/_history")).await).await;
        assert_eq!(bundle["resourceType"], "Bundle");
        assert_eq!(bundle["type"], "history");
        let e = entries(&bundle);
        assert_eq!(e.len(), 3);
        assert_eq!(e[0]["request"], json!({"method": "DELETE", "url": format!("Patient/{id}")}));
        assert!(e[0].get("resource").is_none());
        assert_eq!(e[0]["response"]["etag"], "W/\"3\"");
        assert_eq!(e[1]["request"]["method"], "PUT");
        assert_eq!(e[1]["response"]["status"], "200 OK");
        assert_eq!(e[1]["resource"]["gender"], "other");
        assert_eq!(e[2]["request"], json!({"method": "POST", "url": "Patient"}));
        assert_eq!(e[2]["response"]["status"], "201 Created");
        assert_eq!(e[2]["resource"]["meta"]["versionId"], "1");
        assert_eq!(e[2]["fullUrl"], app.url(&format!("Patient/{id}")).as_str());
        // The deleted resource's history stays readable; an unknown one is 404.
        assert_outcome(app.get("Patient/unknown/_history").await, 404, "not-found").await;
    }

    async fn type_and_system_history_cover_their_scope_and_page_with_next_links(app: TestApp) {
        for i in 0..5 {
            app.create(&patient(&format!("P{i}"))).await;
        }
        app.create(&json!({"resourceType": "Location", "name": "Room 1"})).await;
        let all = json(app.get("Patient/_history").await).await;
        assert_eq!(entries(&all).len(), 5);
        assert!(entries(&all).iter().all(|e| e["resource"]["resourceType"] == "Patient"));
        // The system history also holds the two Questionnaires the server published at start.
        let system = json(app.get("_history").await).await;
        assert_eq!(entries(&system).len(), 8);
        assert_eq!(entries(&system).iter().filter(|e| published(e["fullUrl"].as_str().unwrap())).count(), 2);

        // Pages of two, following next links, see every version exactly once, newest first.
        let mut seen = Vec::new();
        let mut url = app.url("Patient/_history?_count=2");
        loop {
            let page: Value = app.client.get(&url).send().await.unwrap().json().await.unwrap();
            assert!(entries(&page).len() <= 2);
            seen.extend(entries(&page).iter().map(|e| e["resource"]["name"][0]["family"].as_str().unwrap().to_string()));
            // A write between pages must not shift what the next page shows.
            app.create(&patient("Late")).await;
            match page["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next") {
                Some(next) => url = next["url"].as_str().unwrap().to_string(),
                None => break,
            }
        }
        assert_eq!(seen, vec!["P4", "P3", "P2", "P1", "P0"]);
    }

    async fn since_limits_history_to_later_versions(app: TestApp) {
        let first = app.create(&patient("Early")).await;
        let cut = first["meta"]["lastUpdated"].as_str().unwrap().to_string();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        app.create(&patient("Later")).await;
        let since = app.get(&format!("Patient/_history?_since={}", cut.replace('+', "%2B"))).await;
        let names: Vec<String> = entries(&json(since).await).iter().map(|e| e["resource"]["name"][0]["family"].as_str().unwrap().to_string()).collect();
        assert_eq!(names, vec!["Later", "Early"]);
        let future = json(app.get("Patient/_history?_since=2999-01-01T00:00:00Z").await).await;
        assert!(entries(&future).is_empty());
        assert_outcome(app.get("Patient/_history?_since=yesterday").await, 400, "invalid").await;
        assert_outcome(app.get("Patient/_history?_count=-1").await, 400, "invalid").await;
    }
}

/// Everything `_history?_since=…` shows, following next links: (type/id, version) pairs, and the
/// Bundle.meta.lastUpdated of the first page (the `_since` for the next round).
async fn sync_round(client: &reqwest::Client, base: &str, since: Option<&str>) -> (Vec<(String, String)>, String) {
    let mut url = match since {
        Some(s) => format!("{base}/_history?_count=40&_since={}", s.replace('+', "%2B")),
        None => format!("{base}/_history?_count=40"),
    };
    let mut seen = Vec::new();
    let mut watermark = None;
    loop {
        let page: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
        watermark.get_or_insert_with(|| page["meta"]["lastUpdated"].as_str().unwrap().to_string());
        for e in entries(&page) {
            let full = e["fullUrl"].as_str().unwrap();
            let instance = full.rsplitn(3, '/').take(2).collect::<Vec<_>>();
            let etag = e["response"]["etag"].as_str().unwrap();
            let version = etag.trim_start_matches("W/").trim_matches('"').to_string();
            seen.push((format!("{}/{}", instance[1], instance[0]), version));
        }
        match page["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
        {
            Some(next) => url = next["url"].as_str().unwrap().to_string(),
            None => break,
        }
    }
    (seen, watermark.unwrap())
}

both_backends! {
    async fn a_since_sync_loop_sees_every_write_made_during_it(app: TestApp) {
        use std::sync::{Arc, Mutex};
        let written: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let stop = std::time::Instant::now() + std::time::Duration::from_secs(3);
        let writers: Vec<_> = (0..4).map(|w| {
            let (client, base, written) = (app.client.clone(), app.address.clone(), written.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while std::time::Instant::now() < stop {
                    n += 1;
                    // New patients, and new versions of earlier ones.
                    let id = format!("s{w}-{}", n % 7);
                    let body = json!({"resourceType": "Patient", "id": id, "name": [{"family": format!("F{n}")}]});
                    let res = client.put(format!("{base}/Patient/{id}")).header("Content-Type", FHIR_JSON).body(body.to_string()).send().await.unwrap();
                    assert!(res.status().is_success());
                    let v: Value = res.json().await.unwrap();
                    written.lock().unwrap().push((format!("Patient/{id}"), v["meta"]["versionId"].as_str().unwrap().to_string()));
                }
            })
        }).collect();
        // The integration: a round every 100 ms, each from the last round's watermark.
        let mut seen = std::collections::HashSet::new();
        let mut since: Option<String> = None;
        let mut rounds = 0;
        while std::time::Instant::now() < stop {
            let (found, next) = sync_round(&app.client, &app.address, since.as_deref()).await;
            seen.extend(found);
            since = Some(next);
            rounds += 1;
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        for w in writers { w.await.unwrap(); }
        let (found, _) = sync_round(&app.client, &app.address, since.as_deref()).await;
        seen.extend(found);
        let written = written.lock().unwrap().clone();
        assert!(written.len() > 100 && rounds > 10, "{} writes, {rounds} rounds", written.len());
        let missed: Vec<_> = written.iter().filter(|w| !seen.contains(*w)).collect();
        assert!(missed.is_empty(), "{} of {} writes never seen, such as {:?}", missed.len(), written.len(), &missed[..missed.len().min(5)]);
    }

    async fn at_shows_the_versions_current_during_a_time(app: TestApp) {
        app.put_json("Patient/a", &json!({"resourceType": "Patient", "id": "a", "active": true})).await;
        let v1_time = json(app.get("Patient/a").await).await["meta"]["lastUpdated"].as_str().unwrap().to_string();
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        let between = tandem::resources::dates::format_instant(tandem::resources::dates::now_millis());
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        app.put_json("Patient/a", &json!({"resourceType": "Patient", "id": "a", "active": false})).await;
        let at = |t: &str| format!("Patient/a/_history?_at={}", t.replace('+', "%2B"));
        let then = json(app.get(&at(&between)).await).await;
        let versions: Vec<String> = entries(&then).iter().map(|e| e["resource"]["meta"]["versionId"].as_str().unwrap().to_string()).collect();
        assert_eq!(versions, ["1"], "at {between}, version 1 was current");
        let at_start = json(app.get(&at(&v1_time)).await).await;
        assert_eq!(entries(&at_start).len(), 1);
        let today = json(app.get(&at(&between[..10])).await).await;
        assert_eq!(entries(&today).len(), 2, "both were current at some time that day");
        assert_outcome(app.get("Patient/a/_history?_at=soon").await, 400, "invalid").await;
    }
}
