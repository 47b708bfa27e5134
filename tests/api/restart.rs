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

/// The ids a search matches, in order.
async fn search(app: &TestApp, query: String) -> Vec<String> {
    let bundle = json(app.get(&query).await).await;
    entries(&bundle)
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
        .collect()
}

both_backends! {
    async fn the_reference_date_migration_fills_the_rows_written_before_it(app: TestApp) {
        // Rows as a server before migration 000009 left them: the migration is taken back with its
        // own down.sql, and the restarted server runs it again over the data already there.
        let backend = app.backend;
        let session = |id: &str, start: &str| {
            json!({"resourceType": "Appointment", "id": id, "status": "booked", "start": start, "end": start,
                "participant": [{"actor": {"reference": "Practitioner/moss"}, "status": "accepted"},
                                {"actor": {"reference": "Location/room"}, "status": "accepted"}]})
        };
        for (path, body) in [
            ("Practitioner/moss", json!({"resourceType": "Practitioner", "id": "moss"})),
            ("Location/room", json!({"resourceType": "Location", "id": "room"})),
        ] {
            assert_eq!(app.put_json(path, &body).await.status(), 201);
        }
        for (id, start) in [("mon", "2026-03-02T09:00:00Z"), ("tue", "2026-03-03T09:00:00Z"), ("next", "2026-03-10T09:00:00Z")] {
            assert_eq!(app.put_json(&format!("Appointment/{id}"), &session(id, start)).await.status(), 201);
        }
        let team = json!({"resourceType": "CareTeam", "id": "team", "status": "active", "period": {"start": "2020-01-01"},
            "participant": [{"member": {"reference": "Practitioner/moss"}}]});
        assert_eq!(app.put_json("CareTeam/team", &team).await.status(), 201);
        let week = "date=ge2026-03-02&date=lt2026-03-09";
        // Every reference row here is an Appointment's or the CareTeam's, so each carries a date.
        let filled = "SELECT COUNT(*) AS n FROM idx_reference WHERE date_low IS NOT NULL AND date_long IS NOT NULL";
        let rows = app.count("SELECT COUNT(*) AS n FROM idx_reference");
        assert!(rows >= 7);
        assert_eq!(app.count(filled), rows);

        let down = match backend {
            Backend::Sqlite => include_str!("../../migrations/sqlite/2026-11-25-000009_reference_dates/down.sql"),
            Backend::Postgres => include_str!("../../migrations/postgres/2026-11-25-000009_reference_dates/down.sql"),
        };
        app.execute(down);
        app.execute("DELETE FROM __diesel_schema_migrations WHERE version = '20261125000009'");
        let app = TestApp::spawn_on(backend, app.stop().await).await;

        assert_eq!(app.count(filled), rows, "every reference row of a placed resource has its date again");
        assert_eq!(
            app.count("SELECT COUNT(*) AS n FROM idx_reference WHERE res_type = 'CareTeam' AND date_long = true AND date_high > 0"),
            1,
            "the open period is long"
        );
        assert_eq!(search(&app, format!("Appointment?actor=Practitioner/moss&{week}&_sort=date")).await, ["mon", "tue"]);
        assert_eq!(search(&app, format!("CareTeam?participant=Practitioner/moss&{week}")).await, ["team"]);

        // On PostgreSQL, replicas of the previous release go on writing during a rolling upgrade,
        // and their rows get the date from a trigger. (A SQLite file has one server: no such writer.)
        if backend == Backend::Postgres {
            app.execute(
                "INSERT INTO idx_reference (res_type, res_id, param, target_type, target_id, url)
                 VALUES ('Appointment', 'mon', 'actor', 'Patient', 'written-by-an-older-release', NULL)",
            );
            assert_eq!(
                app.count("SELECT COUNT(*) AS n FROM idx_reference WHERE target_id = 'written-by-an-older-release' AND date_long = false AND date_low = 1772442000000"),
                1
            );
        }
    }
}
