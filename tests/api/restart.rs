//! A restart on the same database finds every resource and version again.

use serde_json::json;

use crate::both_backends;
use crate::helpers::*;

both_backends! {
    async fn a_restarted_server_finds_every_resource_and_version(app: TestApp) {
        let backend = app.backend;
        let mut ids = Vec::new();
        for i in 0..3 {
            let created = app.create(&patient(&format!("Keep{i}"))).await;
            let id = created["id"].as_str().unwrap().to_string();
            let mut changed = created.clone();
            changed["gender"] = json!("unknown");
            assert_eq!(app.put_json(&format!("Patient/{id}"), &changed).await.status(), 200);
            ids.push(id);
        }
        app.client.delete(app.url(&format!("Patient/{}", ids[2]))).send().await.unwrap();
        let before = json(app.get("_history").await).await;

        let old_address = app.address.clone();
        let db = app.stop().await;
        let app = TestApp::spawn_on(backend, db).await;

        // Same entries; only the server's address in fullUrl differs.
        let after = json(app.get("_history").await).await;
        assert_eq!(after["entry"].to_string().replace(&app.address, &old_address), before["entry"].to_string());
        for id in &ids[..2] {
            let current = json(app.get(&format!("Patient/{id}")).await).await;
            assert_eq!(current["meta"]["versionId"], "2");
            assert_eq!(current["gender"], "unknown");
            assert_eq!(json(app.get(&format!("Patient/{id}/_history/1")).await).await["gender"], "female");
        }
        assert_eq!(app.get(&format!("Patient/{}", ids[2])).await.status(), 410);
        // Versions keep counting from where they were.
        let next = app.put_json(&format!("Patient/{}", ids[0]), &json(app.get(&format!("Patient/{}", ids[0])).await).await).await;
        assert_eq!(next.headers()["etag"], "W/\"3\"");
    }
}
