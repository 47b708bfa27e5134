//! Many writers at once: versions are never lost or duplicated, and If-Match lets exactly one win.

use futures_util::future::join_all;
use serde_json::json;

use crate::both_backends;
use crate::helpers::*;

both_backends! {
    async fn concurrent_updates_with_the_same_if_match_have_exactly_one_winner(app: TestApp) {
        let created = app.create(&patient("Race")).await;
        let id = created["id"].as_str().unwrap().to_string();
        let requests = (0..8).map(|i| {
            let mut body = created.clone();
            body["name"][0]["given"] = json!([format!("Writer{i}")]);
            app.client.put(app.url(&format!("Patient/{id}"))).header("Content-Type", FHIR_JSON).header("If-Match", "W/\"1\"").body(body.to_string()).send()
        });
        let statuses: Vec<u16> = join_all(requests).await.into_iter().map(|r| r.unwrap().status().as_u16()).collect();
        assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "{statuses:?}");
        assert_eq!(statuses.iter().filter(|s| **s == 412).count(), 7, "{statuses:?}");
        let history = json(app.get(&format!("Patient/{id}/_history")).await).await;
        assert_eq!(history["entry"].as_array().unwrap().len(), 2);
        assert_eq!(json(app.get(&format!("Patient/{id}")).await).await["meta"]["versionId"], "2");
    }

    async fn concurrent_updates_without_if_match_all_land_as_distinct_versions(app: TestApp) {
        let created = app.create(&patient("Crowd")).await;
        let id = created["id"].as_str().unwrap().to_string();
        let n = 12;
        let requests = (0..n).map(|i| {
            let mut body = created.clone();
            body["name"][0]["given"] = json!([format!("Writer{i}")]);
            app.client.put(app.url(&format!("Patient/{id}"))).header("Content-Type", FHIR_JSON).body(body.to_string()).send()
        });
        let statuses: Vec<u16> = join_all(requests).await.into_iter().map(|r| r.unwrap().status().as_u16()).collect();
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
        let history = json(app.get(&format!("Patient/{id}/_history")).await).await;
        let mut versions: Vec<i64> = history["entry"].as_array().unwrap().iter()
            .map(|e| e["response"]["etag"].as_str().unwrap().trim_start_matches("W/\"").trim_end_matches('"').parse().unwrap())
            .collect();
        versions.sort();
        assert_eq!(versions, (1..=n + 1).collect::<Vec<i64>>(), "every version once, none lost");
        // Every written name is in exactly one version.
        let mut givens: Vec<String> = history["entry"].as_array().unwrap().iter()
            .map(|e| e["resource"]["name"][0]["given"][0].as_str().unwrap().to_string()).collect();
        givens.sort();
        givens.dedup();
        assert_eq!(givens.len() as i64, n + 1);
    }

    async fn concurrent_creates_with_the_same_client_id_make_one_resource(app: TestApp) {
        let body = json!({"resourceType": "Location", "id": "room-7", "name": "Room 7"});
        let requests = (0..6).map(|_| app.put_json("Location/room-7", &body));
        let statuses: Vec<u16> = join_all(requests).await.into_iter().map(|r| r.status().as_u16()).collect();
        assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?}");
        assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 5, "{statuses:?}");
        let history = json(app.get("Location/room-7/_history").await).await;
        assert_eq!(history["entry"].as_array().unwrap().len(), 6);
    }
}

both_backends! {
    // Reads by id that arrive together are answered together (store::gather): each still gets its
    // own resource, a missing one 404, a deleted one 410, and a reader of limited reach exactly what
    // a read of its own would answer, an unseen resource (deleted or not) as one that does not exist.
    async fn reads_arriving_together_each_get_their_own_answer(app: TestApp) {
        let families = ["Ames", "Boyd", "Cruz", "Diaz", "Egan", "Ford"];
        let mut ids = Vec::new();
        for family in families {
            ids.push(app.create(&patient(family)).await["id"].as_str().unwrap().to_string());
        }
        let gone = ids[5].clone();
        assert_eq!(app.client.delete(app.url(&format!("Patient/{gone}"))).send().await.unwrap().status(), 204);
        let own = app.client_with("patient/*.rs", Some(&ids[0]));

        // (client, path, expected status, expected family)
        let mut asked: Vec<(&reqwest::Client, String, u16, Option<&str>)> = Vec::new();
        for round in 0..5 {
            for (i, family) in families.iter().enumerate().take(5) {
                asked.push((&app.client, format!("Patient/{}", ids[i]), 200, Some(family)));
            }
            asked.push((&app.client, format!("Patient/{gone}"), 410, None));
            asked.push((&app.client, format!("Patient/nobody-{round}"), 404, None));
            asked.push((&own, format!("Patient/{}", ids[0]), 200, Some("Ames")));
            // Someone else's record, current or deleted: as if it did not exist.
            asked.push((&own, format!("Patient/{}", ids[1]), 404, None));
            asked.push((&own, format!("Patient/{gone}"), 404, None));
        }
        let answers = join_all(asked.iter().map(|(client, path, _, _)| client.get(app.url(path)).send())).await;
        for ((_, path, status, family), answer) in asked.iter().zip(answers) {
            let answer = answer.unwrap();
            assert_eq!(answer.status().as_u16(), *status, "{path}");
            let body: serde_json::Value = answer.json().await.unwrap();
            match family {
                Some(family) => {
                    assert_eq!(body["resourceType"], "Patient", "{path}");
                    assert_eq!(format!("Patient/{}", body["id"].as_str().unwrap()), *path);
                    assert_eq!(body["name"][0]["family"], *family, "{path}");
                }
                None => {
                    assert_eq!(body["resourceType"], "OperationOutcome", "{path}");
                    let text = body.to_string();
                    assert!(families.iter().all(|f| !text.contains(f)), "{path}: {text}");
                }
            }
        }
    }
}
