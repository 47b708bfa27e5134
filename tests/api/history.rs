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
        assert_eq!(entries(&json(app.get("_history").await).await).len(), 6);

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
