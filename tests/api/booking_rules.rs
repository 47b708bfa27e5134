//! The booking and Bundle rules an outside test bypassed (issue 21), each with the case refused and
//! the case that still passes:
//! - an absolute reference to this very server is the same actor as the relative one (it is stored
//!   relative), so it cannot slip past the double-booking rule;
//! - a 409 names the clashing Appointment and its time only to a caller who may read it;
//! - a transaction touches each resource once, fullUrls are unique (bdl-7), every `urn:uuid:`
//!   reference names an entry, and conditional references resolve to exactly one match (0 is 400,
//!   more than one 412), with nothing written when any of it fails;
//! - `Forwarded` / `X-Forwarded-*` shape links only when they come from a trusted proxy.

use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::*;
use crate::scheduling::{appointment, put, put_ok};

const AT: (&str, &str) = ("2026-12-14T10:00:00Z", "2026-12-14T11:00:00Z");

async fn people(app: &TestApp) {
    put_ok(
        app,
        json!({"resourceType": "Practitioner", "id": "moss", "name": [{"family": "Moss"}]}),
    )
    .await;
    for p in ["p1", "p2"] {
        put_ok(
            app,
            json!({"resourceType": "Patient", "id": p, "name": [{"family": p}]}),
        )
        .await;
    }
    put_ok(
        app,
        appointment("a1", "booked", AT.0, AT.1, &["Practitioner/moss", "Patient/p1"]),
    )
    .await;
}

fn diagnostics(outcome: &Value) -> String {
    outcome["issue"][0]["diagnostics"].as_str().unwrap_or("").to_string()
}

fn transaction(entries: Vec<Value>) -> Value {
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

both_backends! {
    async fn an_absolute_reference_to_this_server_is_the_same_actor(app: TestApp) {
        people(&app).await;
        let own = format!("{}/Practitioner/moss", app.address);
        // The same therapist by this server's absolute URL: the clash is found.
        let res = put(&app, appointment("a2", "booked", AT.0, AT.1, &[&own, "Patient/p2"])).await;
        let outcome = assert_outcome(res, 409, "conflict").await;
        assert!(diagnostics(&outcome).contains("Practitioner/moss"), "{outcome}");
        assert_eq!(app.count("SELECT COUNT(*) AS n FROM resources WHERE res_id = 'a2'"), 0);
        // Free time: stored as the relative reference, found by a search on it.
        let later = ("2026-12-14T12:00:00Z", "2026-12-14T13:00:00Z");
        put_ok(&app, appointment("a3", "booked", later.0, later.1, &[&own, "Patient/p2"])).await;
        let stored = json(app.get("Appointment/a3").await).await;
        assert_eq!(stored["participant"][0]["actor"]["reference"], "Practitioner/moss", "{stored}");
        let found = json(app.get("Appointment?practitioner=Practitioner/moss&date=2026-12-14T12:00:00Z").await).await;
        assert_eq!(entries(&found).len(), 1, "{found}");
        // Another server's URL of the same shape is another actor.
        let other = "https://ehr.example.org/fhir/Practitioner/moss";
        put_ok(&app, appointment("a4", "booked", AT.0, AT.1, &[other])).await;
        let stored = json(app.get("Appointment/a4").await).await;
        assert_eq!(stored["participant"][0]["actor"]["reference"], other);
    }

    async fn a_clash_is_named_only_to_a_caller_who_may_see_it(app: TestApp) {
        people(&app).await;
        let clash = appointment("a2", "booked", AT.0, AT.1, &["Practitioner/moss", "Patient/p2"]);
        // Another client's token, create only, or create and read: p1's session stays hidden.
        for scope in ["patient/Appointment.c", "patient/Appointment.cr patient/Practitioner.r"] {
            let client = app.client_with(scope, Some("p2"));
            let res = client
                .post(app.url("Appointment"))
                .header("Content-Type", FHIR_JSON)
                .body(clash.to_string())
                .send()
                .await
                .unwrap();
            let outcome = assert_outcome(res, 409, "conflict").await;
            let text = diagnostics(&outcome);
            assert!(text.contains("Practitioner/moss") && text.contains("not free"), "{scope}: {text}");
            assert!(!text.contains("a1") && !text.contains("10:00"), "{scope} learned of p1's session: {text}");
        }
        // The same through a transaction Bundle and a batch entry.
        let client = app.client_with("patient/Appointment.c", Some("p2"));
        for kind in ["transaction", "batch"] {
            let bundle = json!({"resourceType": "Bundle", "type": kind, "entry": [
                {"resource": clash, "request": {"method": "POST", "url": "Appointment"}}]});
            let res = client
                .post(app.url(""))
                .header("Content-Type", FHIR_JSON)
                .body(bundle.to_string())
                .send()
                .await
                .unwrap();
            // A transaction fails whole with the 409; a batch answers it in the entry.
            let status = res.status().as_u16();
            let text = res.text().await.unwrap();
            match kind {
                "transaction" => assert_eq!(status, 409, "{text}"),
                _ => assert!(status == 200 && text.contains("\"409"), "{text}"),
            }
            // (The Bundle's own random id may hold any letters: look for the Appointment's reference.)
            assert!(text.contains("not free") && !text.contains("Appointment/a1") && !text.contains("10:00"), "{kind} learned of p1's session: {text}");
        }
        // A clinic token may read every Appointment: it is told which one holds the time.
        let res = app.post_json("Appointment", &clash).await;
        let text = diagnostics(&assert_outcome(res, 409, "conflict").await);
        assert!(text.contains("Appointment/a1") && text.contains("2026-12-14T10:00:00"), "{text}");
        // p1's own token sees its own session named.
        let client = app.client_with("patient/Appointment.cr", Some("p1"));
        let mine = appointment("a3", "booked", AT.0, AT.1, &["Patient/p1"]);
        let res = client
            .post(app.url("Appointment"))
            .header("Content-Type", FHIR_JSON)
            .body(mine.to_string())
            .send()
            .await
            .unwrap();
        let text = diagnostics(&assert_outcome(res, 409, "conflict").await);
        assert!(text.contains("Appointment/a1"), "{text}");
        assert_eq!(app.count("SELECT COUNT(*) AS n FROM resources WHERE res_type = 'Appointment'"), 1);
    }

    async fn a_transaction_touches_each_resource_once(app: TestApp) {
        let before = app.version_count().await;
        let twice = transaction(vec![
            json!({"resource": {"resourceType": "Patient", "id": "x", "gender": "female"}, "request": {"method": "PUT", "url": "Patient/x"}}),
            json!({"resource": {"resourceType": "Patient", "id": "x", "gender": "male"}, "request": {"method": "PUT", "url": "Patient/x"}}),
        ]);
        let outcome = assert_outcome(app.post_json("", &twice).await, 400, "invalid").await;
        assert!(diagnostics(&outcome).contains("Patient/x"), "{outcome}");
        assert_eq!(app.get("Patient/x").await.status(), 404);
        // A conditional update that resolves to the resource another entry deletes: the same rule.
        put_ok(&app, json!({"resourceType": "Patient", "id": "y", "identifier": [{"system": "urn:s", "value": "y"}]})).await;
        let overlap = transaction(vec![
            json!({"request": {"method": "DELETE", "url": "Patient/y"}}),
            json!({"resource": {"resourceType": "Patient", "gender": "male"}, "request": {"method": "PUT", "url": "Patient?identifier=urn:s|y"}}),
        ]);
        assert_outcome(app.post_json("", &overlap).await, 400, "invalid").await;
        assert_eq!(app.get("Patient/y").await.status(), 200);
        assert_eq!(app.version_count().await, before + 1);
        // Two different resources pass.
        let two = transaction(vec![
            json!({"resource": {"resourceType": "Patient", "id": "x"}, "request": {"method": "PUT", "url": "Patient/x"}}),
            json!({"resource": {"resourceType": "Patient", "id": "z"}, "request": {"method": "PUT", "url": "Patient/z"}}),
        ]);
        assert_eq!(app.post_json("", &two).await.status(), 200);
    }

    async fn full_urls_are_unique_and_urn_references_name_an_entry(app: TestApp) {
        let before = app.version_count().await;
        let u = "urn:uuid:6f1c3b2e-0c7a-4b8e-9a51-3d2f0e1c4b5a";
        let duplicate = transaction(vec![
            json!({"fullUrl": u, "resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}}),
            json!({"fullUrl": u, "resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}}),
        ]);
        let outcome = assert_outcome(app.post_json("", &duplicate).await, 400, "invalid").await;
        assert!(diagnostics(&outcome).contains("bdl-7"), "{outcome}");
        let mut batch = duplicate.clone();
        batch["type"] = json!("batch");
        assert_outcome(app.post_json("", &batch).await, 400, "invalid").await;
        let dangling = transaction(vec![
            json!({"fullUrl": u, "resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}}),
            json!({"resource": {"resourceType": "CareTeam", "subject": {"reference": "urn:uuid:00000000-0000-4000-8000-000000000000"}},
                   "request": {"method": "POST", "url": "CareTeam"}}),
        ]);
        let outcome = assert_outcome(app.post_json("", &dangling).await, 400, "invalid").await;
        assert!(diagnostics(&outcome).contains("urn:uuid:00000000"), "{outcome}");
        assert_eq!(app.version_count().await, before, "nothing written");
        // In a batch an entry stands alone: its urn reference fails that entry only.
        let mut batch = dangling.clone();
        batch["type"] = json!("batch");
        let answer = json(app.post_json("", &batch).await).await;
        let statuses: Vec<String> = entries(&answer).iter().map(|e| e["response"]["status"].as_str().unwrap().to_string()).collect();
        assert!(statuses[0].starts_with("201") && statuses[1].starts_with("400"), "{answer}");
        // Resolved within a transaction: the reference becomes the new id.
        let linked = transaction(vec![
            json!({"fullUrl": u, "resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}}),
            json!({"resource": {"resourceType": "CareTeam", "subject": {"reference": u}}, "request": {"method": "POST", "url": "CareTeam"}}),
        ]);
        let answer = json(app.post_json("", &linked).await).await;
        let team = json(app.get(entries(&answer)[1]["response"]["location"].as_str().unwrap()).await).await;
        assert!(team["subject"]["reference"].as_str().unwrap().starts_with("Patient/"), "{team}");
    }

    async fn conditional_references_resolve_to_exactly_one_match(app: TestApp) {
        for (id, value) in [("one", "1"), ("two-a", "2"), ("two-b", "2")] {
            put_ok(&app, json!({"resourceType": "Patient", "id": id, "identifier": [{"system": "urn:mrn", "value": value}]})).await;
        }
        let team = |reference: &str| transaction(vec![
            json!({"resource": {"resourceType": "CareTeam", "subject": {"reference": reference}}, "request": {"method": "POST", "url": "CareTeam"}}),
            json!({"resource": {"resourceType": "Patient", "id": "side"}, "request": {"method": "PUT", "url": "Patient/side"}}),
        ]);
        let answer = app.post_json("", &team("Patient?identifier=urn:mrn|1")).await;
        assert_eq!(answer.status(), 200);
        let answer = json(answer).await;
        let stored = json(app.get(entries(&answer)[0]["response"]["location"].as_str().unwrap()).await).await;
        assert_eq!(stored["subject"]["reference"], "Patient/one", "{stored}");
        app.execute("DELETE FROM resources WHERE res_id = 'side'");
        let before = app.version_count().await;
        let outcome = assert_outcome(app.post_json("", &team("Patient?identifier=urn:mrn|9")).await, 400, "invalid").await;
        assert!(diagnostics(&outcome).contains("matches no resource"), "{outcome}");
        let outcome = assert_outcome(app.post_json("", &team("Patient?identifier=urn:mrn|2")).await, 412, "conflict").await;
        assert!(diagnostics(&outcome).contains("more than one"), "{outcome}");
        assert_outcome(app.post_json("", &team("Patient?nonsense=1")).await, 400, "invalid").await;
        assert_eq!(app.version_count().await, before, "nothing written");
        // A patient/ token resolves only within what it may see: an outside match is no match.
        let client = app.client_with("patient/*.cruds", Some("two-a"));
        let res = client
            .post(app.url(""))
            .header("Content-Type", FHIR_JSON)
            .body(transaction(vec![
                json!({"resource": {"resourceType": "CareTeam", "subject": {"reference": "Patient?identifier=urn:mrn|1"}}, "request": {"method": "POST", "url": "CareTeam"}}),
            ]).to_string())
            .send()
            .await
            .unwrap();
        assert_outcome(res, 400, "invalid").await;
        assert_eq!(app.version_count().await, before, "nothing written");
    }

    async fn forwarding_headers_from_anyone_do_not_shape_links(app: TestApp) {
        let res = app
            .client
            .post(app.url("Patient"))
            .header("Content-Type", FHIR_JSON)
            .header("X-Forwarded-Host", "evil.example")
            .header("X-Forwarded-Proto", "https")
            .header("Forwarded", "host=evil.example;proto=https")
            .body(patient("Forwarded").to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        let location = res.headers()["location"].to_str().unwrap().to_string();
        assert!(location.starts_with(&app.address), "{location}");
        let page = app
            .client
            .get(app.url("Patient?_count=1"))
            .header("X-Forwarded-Host", "evil.example")
            .send()
            .await
            .unwrap();
        let page = json(page).await;
        assert!(page["link"][0]["url"].as_str().unwrap().starts_with(&app.address), "{page}");
    }
}

mod behind_a_trusted_proxy {
    use super::*;

    async fn run(backend: Backend) {
        let app = TestApp::spawn_configured(backend, |c| c.trusted_proxies = vec!["127.0.0.0/8".into()]).await;
        let res = app
            .client
            .post(app.url("Patient"))
            .header("Content-Type", FHIR_JSON)
            .header("X-Forwarded-Host", "fhir.clinic.example")
            .header("X-Forwarded-Proto", "https")
            .body(patient("Proxied").to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        let location = res.headers()["location"].to_str().unwrap().to_string();
        assert!(
            location.starts_with("https://fhir.clinic.example/Patient/"),
            "{location}"
        );
        // The proxy's base is this server's base: an absolute reference under it is local.
        put_ok(&app, json!({"resourceType": "Patient", "id": "p9"})).await;
        let res = app
            .client
            .put(app.url("CareTeam/t1"))
            .header("Content-Type", FHIR_JSON)
            .header("X-Forwarded-Host", "fhir.clinic.example")
            .header("X-Forwarded-Proto", "https")
            .body(json!({"resourceType": "CareTeam", "id": "t1", "subject": {"reference": "https://fhir.clinic.example/Patient/p9"}}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        let team = json(app.get("CareTeam/t1").await).await;
        assert_eq!(team["subject"]["reference"], "Patient/p9", "{team}");
        // A proxy list that is not addresses does not start.
        let mut config = test_config(&TestDb::new(backend));
        config.trusted_proxies = vec!["ingress".into()];
        assert!(config.validate().unwrap_err().contains("TANDEM_TRUSTED_PROXIES"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        run(Backend::Sqlite).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        run(Backend::Postgres).await
    }
}
