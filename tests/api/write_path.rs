//! The one write path (issue 22): every delete honours If-Match as updates do — a stale version is
//! 412 and nothing is deleted, the current one deletes — plainly, by criteria and in Bundles.

use serde_json::json;

use crate::both_backends;
use crate::helpers::*;

async fn delete_if_match(app: &TestApp, path: &str, etag: &str) -> reqwest::Response {
    app.client
        .delete(app.url(path))
        .header("If-Match", etag)
        .send()
        .await
        .unwrap()
}

both_backends! {
    async fn a_stale_if_match_on_delete_is_412_and_deletes_nothing(app: TestApp) {
        let mut p = patient("Stale");
        p["id"] = json!("d1");
        app.put_json("Patient/d1", &p).await;
        p["gender"] = json!("male");
        app.put_json("Patient/d1", &p).await; // version 2
        let outcome = assert_outcome(delete_if_match(&app, "Patient/d1", "W/\"1\"").await, 412, "conflict").await;
        assert!(outcome["issue"][0]["diagnostics"].as_str().unwrap().contains("version 2"), "{outcome}");
        let current = json(app.get("Patient/d1").await).await;
        assert_eq!(current["meta"]["versionId"], "2", "still readable, unchanged");
        // Not a version ETag: 400.
        assert_outcome(delete_if_match(&app, "Patient/d1", "yesterday").await, 400, "invalid").await;
        // By criteria: the match's version decides.
        let outcome = delete_if_match(&app, "Patient?_id=d1", "W/\"1\"").await;
        assert_outcome(outcome, 412, "conflict").await;
        assert_eq!(app.get("Patient/d1").await.status(), 200);
        // The current version deletes.
        let res = delete_if_match(&app, "Patient/d1", "W/\"2\"").await;
        assert_eq!(res.status(), 204);
        assert_eq!(app.get("Patient/d1").await.status(), 410);
        // Gone or never there: no version matches.
        assert_outcome(delete_if_match(&app, "Patient/d1", "W/\"3\"").await, 412, "conflict").await;
        assert_outcome(delete_if_match(&app, "Patient/never", "W/\"1\"").await, 412, "conflict").await;
        // Without If-Match, deleting what is gone still succeeds (http.html#delete).
        assert_eq!(app.client.delete(app.url("Patient/d1")).send().await.unwrap().status(), 204);
    }

    async fn a_stale_if_match_in_a_transaction_fails_it_whole(app: TestApp) {
        for id in ["t1", "t2"] {
            let mut p = patient("Tx");
            p["id"] = json!(id);
            app.put_json(&format!("Patient/{id}"), &p).await;
            app.put_json(&format!("Patient/{id}"), &p).await; // version 2
        }
        let before = app.version_count().await;
        let bundle = |etag: &str| json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"request": {"method": "DELETE", "url": "Patient/t1", "ifMatch": etag}},
            {"request": {"method": "DELETE", "url": "Patient/t2"}},
        ]});
        assert_outcome(app.post_json("", &bundle("W/\"1\"")).await, 412, "conflict").await;
        assert_eq!(app.version_count().await, before, "nothing written");
        assert_eq!(app.get("Patient/t1").await.status(), 200);
        assert_eq!(app.get("Patient/t2").await.status(), 200);
        // In a batch the stale entry alone fails.
        let mut batch = bundle("W/\"1\"");
        batch["type"] = json!("batch");
        let answer = json(app.post_json("", &batch).await).await;
        let statuses: Vec<String> = entries(&answer).iter().map(|e| e["response"]["status"].as_str().unwrap().to_string()).collect();
        assert!(statuses[0].starts_with("412") && statuses[1].starts_with("204"), "{answer}");
        assert_eq!(app.get("Patient/t1").await.status(), 200);
        // The current version deletes.
        let res = app.post_json("", &bundle("W/\"2\"")).await;
        assert_eq!(res.status(), 200);
        assert_eq!(app.get("Patient/t1").await.status(), 410);
    }
}
