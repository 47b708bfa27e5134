//! Browser apps (CORS on an allow-list of origins) and SMART discovery that publishes only what holds.

use serde_json::json;

use crate::both_backends;
use crate::helpers::*;

const APP: &str = "https://app.clinic.example";

async fn preflight(app: &TestApp, origin: &str) -> reqwest::Response {
    app.anonymous
        .request(reqwest::Method::OPTIONS, app.url("Patient"))
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "authorization, content-type, if-none-exist",
        )
        .send()
        .await
        .unwrap()
}

fn allow_origin(res: &reqwest::Response) -> Option<String> {
    res.headers()
        .get("access-control-allow-origin")
        .map(|v| v.to_str().unwrap_or_default().to_string())
}

both_backends! {
    async fn browser_apps_on_allowed_origins_may_call_and_no_others(app: TestApp) {
        // Off by default: no CORS headers, and the CapabilityStatement says so.
        assert_eq!(allow_origin(&preflight(&app, APP).await), None);
        let cs = json(app.anonymous.get(app.url("metadata")).send().await.unwrap()).await;
        assert_eq!(cs["rest"][0]["security"]["cors"], false);

        let app = TestApp::spawn_configured(app.backend, |c| c.cors_origins = vec![APP.into(), "http://localhost:3000".into()]).await;
        let res = preflight(&app, APP).await;
        assert!(res.status().is_success(), "a preflight needs no token: {}", res.status());
        assert_eq!(allow_origin(&res).as_deref(), Some(APP));
        let allowed_headers = res.headers()["access-control-allow-headers"].to_str().unwrap().to_ascii_lowercase();
        for h in ["authorization", "content-type", "if-none-exist"] {
            assert!(allowed_headers.contains(h), "{allowed_headers}");
        }
        assert!(res.headers()["access-control-allow-methods"].to_str().unwrap().contains("POST"));

        // The call itself: the answer carries the origin and exposes what a FHIR client reads.
        let res = app.client.post(app.url("Patient")).header("Origin", APP)
            .header("Content-Type", FHIR_JSON).body(patient("Okafor").to_string()).send().await.unwrap();
        assert_eq!(res.status(), 201);
        assert_eq!(allow_origin(&res).as_deref(), Some(APP));
        let exposed = res.headers()["access-control-expose-headers"].to_str().unwrap().to_ascii_lowercase();
        for h in ["location", "etag", "last-modified", "x-request-id"] {
            assert!(exposed.contains(h), "{exposed}");
        }
        // A preflight is no FHIR interaction and needs no token; a call without one is still 401.
        let res = app.anonymous.get(app.url("Patient")).header("Origin", APP).send().await.unwrap();
        assert_eq!(res.status(), 401);

        // Another origin gets no CORS headers (the browser withholds the answer), on preflight and call.
        let other = "https://evil.example";
        assert_eq!(allow_origin(&preflight(&app, other).await), None);
        let res = app.client.get(app.url("Patient")).header("Origin", other).send().await.unwrap();
        assert_eq!(res.status(), 200, "a server client that sends an Origin is not refused");
        assert_eq!(allow_origin(&res), None);

        let cs = json(app.anonymous.get(app.url("metadata")).send().await.unwrap()).await;
        assert_eq!(cs["rest"][0]["security"]["cors"], true);
    }

    async fn smart_configuration_publishes_only_what_the_configuration_holds(app: TestApp) {
        // No authorization server named: nothing to publish (SMART requires token_endpoint).
        let res = app.anonymous.get(app.url(".well-known/smart-configuration")).send().await.unwrap();
        let outcome = assert_outcome(res, 404, "not-found").await;
        assert!(outcome.to_string().contains("TANDEM_AUTH_TOKEN_ENDPOINT"), "{outcome}");

        let token = "https://idp.clinic.example/token";
        let backend = app.backend;
        let app = TestApp::spawn_configured(backend, |c| c.auth_token_endpoint = Some(token.into())).await;
        let doc = json(app.anonymous.get(app.url(".well-known/smart-configuration")).send().await.unwrap()).await;
        assert_eq!(doc["token_endpoint"], token);
        assert_eq!(doc["grant_types_supported"], json!(["client_credentials"]));
        assert!(doc["capabilities"].as_array().unwrap().contains(&json!("client-confidential-asymmetric")));
        assert!(doc.get("authorization_endpoint").is_none());
        assert!(doc.get("code_challenge_methods_supported").is_none());
        // What user/ scopes reach (TANDEM_USER_ACCESS), here and in the CapabilityStatement.
        assert_eq!(doc["user_access"]["mode"], "assigned");
        let cs = json(app.anonymous.get(app.url("metadata")).send().await.unwrap()).await;
        assert!(cs["rest"][0]["security"]["description"].as_str().unwrap().contains("TANDEM_USER_ACCESS=assigned"));
        let app = TestApp::spawn_configured_on(backend, app.stop().await, |c| {
            c.auth_token_endpoint = Some(token.into());
            c.user_access = tandem::config::UserAccess::All;
        }).await;
        let doc = json(app.anonymous.get(app.url(".well-known/smart-configuration")).send().await.unwrap()).await;
        assert_eq!(doc["user_access"]["mode"], "all");

        let authorize = "https://idp.clinic.example/authorize";
        let app = TestApp::spawn_configured(backend, |c| {
            c.auth_token_endpoint = Some(token.into());
            c.auth_authorization_endpoint = Some(authorize.into());
        }).await;
        let doc = json(app.anonymous.get(app.url(".well-known/smart-configuration")).send().await.unwrap()).await;
        assert_eq!(doc["authorization_endpoint"], authorize);
        assert_eq!(doc["grant_types_supported"], json!(["authorization_code", "client_credentials"]));
        assert_eq!(doc["code_challenge_methods_supported"], json!(["S256"]));
        let cs = json(app.anonymous.get(app.url("metadata")).send().await.unwrap()).await;
        let uris = &cs["rest"][0]["security"]["extension"][0]["extension"];
        assert_eq!(uris, &json!([{"url": "token", "valueUri": token}, {"url": "authorize", "valueUri": authorize}]));
    }
}

#[test]
fn a_wildcard_or_a_path_is_not_an_origin() {
    let db = TestDb::new(Backend::Sqlite);
    for bad in ["*", "https://app.clinic.example/", "app.clinic.example"] {
        let mut config = test_config(&db);
        config.cors_origins = vec![bad.into()];
        let err = config.validate().expect_err(bad);
        assert!(err.contains("TANDEM_CORS_ORIGINS"), "{err}");
    }
}
