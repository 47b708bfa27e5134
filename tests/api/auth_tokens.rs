//! Bearer tokens: which tokens a server with configured keys accepts, and how it starts.

use std::sync::LazyLock;

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::*;

const ISSUER: &str = "https://idp.clinic.example";
const AUDIENCE: &str = "https://fhir.clinic.example";

/// Keys of a pretend identity provider: an RSA key (kid rsa-1) and a P-256 key (kid ec-1), and a
/// JWKS with their public halves. Made once per test run.
struct Idp {
    rsa_private_pem: String,
    rsa_public_pem: String,
    ec_private_pem: String,
    jwks: Value,
}

static IDP: LazyLock<Idp> = LazyLock::new(|| {
    use p256::pkcs8::EncodePrivateKey;
    use rsa::pkcs8::{EncodePublicKey, LineEnding};
    use rsa::traits::PublicKeyParts;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let rsa = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048).expect("RSA key");
    let rsa_private_pem = rsa.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
    let rsa_public_pem = rsa.to_public_key().to_public_key_pem(LineEnding::LF).unwrap();
    let ec = p256::SecretKey::random(&mut rand_core::OsRng);
    let ec_private_pem = ec.to_pkcs8_pem(p256::pkcs8::LineEnding::LF).unwrap().to_string();
    let point = {
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        ec.public_key().to_encoded_point(false)
    };
    let jwks = json!({"keys": [
        {"kty": "RSA", "kid": "rsa-1", "use": "sig", "alg": "RS256",
         "n": b64(&rsa.n().to_bytes_be()), "e": b64(&rsa.e().to_bytes_be())},
        {"kty": "EC", "kid": "ec-1", "use": "sig", "alg": "ES256", "crv": "P-256",
         "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap())},
    ]});
    Idp {
        rsa_private_pem,
        rsa_public_pem,
        ec_private_pem,
        jwks,
    }
});

fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

fn claims() -> Value {
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "ehr-integration", "exp": now() + 300, "iat": now(),
           "scope": "system/*.cruds", "client_id": "ehr"})
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(IDP.rsa_private_pem.as_bytes()).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(IDP.ec_private_pem.as_bytes()).unwrap(),
        _ => unreachable!(),
    };
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

fn b64(value: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

/// A server that verifies tokens against the IdP's JWKS.
async fn spawn_with_jwks(backend: Backend) -> TestApp {
    let db = TestDb::new(backend);
    let path = db.dir.path().join("jwks.json");
    std::fs::write(&path, IDP.jwks.to_string()).unwrap();
    TestApp::spawn_configured_on(backend, db, |c| {
        c.auth_jwks_file = Some(path);
        c.auth_issuer = Some(ISSUER.into());
        c.auth_audience = Some(AUDIENCE.into());
    })
    .await
}

async fn status_with(app: &TestApp, authorization: Option<&str>) -> (u16, Option<String>, Value) {
    let mut req = app.anonymous.get(app.url("Patient"));
    if let Some(a) = authorization {
        req = req.header("Authorization", a);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let challenge = res
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    let body = res.json().await.unwrap_or(Value::Null);
    (status, challenge, body)
}

both_backends! {
    async fn tokens_are_checked_for_signature_algorithm_time_issuer_and_audience(app: TestApp) {
        let app = spawn_with_jwks(app.backend).await;
        let valid_rs = sign(Algorithm::RS256, Some("rsa-1"), &claims());
        let valid_es = sign(Algorithm::ES256, Some("ec-1"), &claims());
        let with = |f: &dyn Fn(&mut Value)| { let mut c = claims(); f(&mut c); c };

        // alg none: a header that names no algorithm, and no signature.
        let none = format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&claims()));
        // HS256 keyed with the RSA public key: the classic algorithm-confusion forgery.
        let confused = {
            let mut h = Header::new(Algorithm::HS256);
            h.kid = Some("rsa-1".into());
            jsonwebtoken::encode(&h, &claims(), &EncodingKey::from_secret(IDP.rsa_public_pem.as_bytes())).unwrap()
        };
        // A valid token whose claims were changed after signing (more scopes).
        let forged = {
            let parts: Vec<&str> = valid_rs.split('.').collect();
            let mut c = claims();
            c["scope"] = json!("system/*.cruds system/AuditEvent.rs");
            format!("{}.{}.{}", parts[0], b64(&c), parts[2])
        };
        let cases: Vec<(&str, String, u16)> = vec![
            ("valid RS256", valid_rs.clone(), 200),
            ("valid ES256", valid_es, 200),
            ("expired", sign(Algorithm::RS256, Some("rsa-1"), &with(&|c| { c["exp"] = json!(now() - 3600); })), 401),
            ("not yet valid", sign(Algorithm::RS256, Some("rsa-1"), &with(&|c| { c["nbf"] = json!(now() + 3600); })), 401),
            ("wrong issuer", sign(Algorithm::RS256, Some("rsa-1"), &with(&|c| { c["iss"] = json!("https://evil.example"); })), 401),
            ("wrong audience", sign(Algorithm::RS256, Some("rsa-1"), &with(&|c| { c["aud"] = json!("https://other.example"); })), 401),
            ("no exp", sign(Algorithm::RS256, Some("rsa-1"), &with(&|c| { c.as_object_mut().unwrap().remove("exp"); })), 401),
            ("alg none", none, 401),
            ("HS256 when only RS256/ES256 keys exist", confused, 401),
            ("forged signature", forged, 401),
            ("unknown kid", sign(Algorithm::RS256, Some("rsa-2"), &claims()), 401),
            ("ES256 token under the RSA key's kid", sign(Algorithm::ES256, Some("rsa-1"), &claims()), 401),
            ("garbage", "not-a-jwt".into(), 401),
        ];
        for (name, token, expected) in cases {
            let (status, challenge, body) = status_with(&app, Some(&format!("Bearer {token}"))).await;
            assert_eq!(status, expected, "{name}: {body}");
            if expected == 401 {
                assert_eq!(body["resourceType"], "OperationOutcome", "{name}");
                assert_eq!(body["issue"][0]["code"], "login", "{name}");
                let challenge = challenge.unwrap_or_else(|| panic!("{name}: no WWW-Authenticate"));
                assert!(challenge.starts_with("Bearer"), "{name}: {challenge}");
                assert!(challenge.contains("error=\"invalid_token\""), "{name}: {challenge}");
            }
        }
        // No token, and a header that is not a bearer token.
        let (status, challenge, body) = status_with(&app, None).await;
        assert_eq!((status, challenge.as_deref()), (401, Some("Bearer realm=\"tandem\"")), "{body}");
        let (status, challenge, _) = status_with(&app, Some("Basic dXNlcjpwYXNz")).await;
        assert_eq!(status, 401);
        assert!(challenge.unwrap().contains("invalid_request"));
        // The public endpoints need no token.
        for path in ["metadata", "healthz", "readyz", "CodeSystem/attendance", "SearchParameter/Appointment-group"] {
            assert_eq!(app.anonymous.get(app.url(path)).send().await.unwrap().status(), 200, "{path}");
        }
    }

    async fn hs256_is_accepted_only_when_explicitly_enabled(app: TestApp) {
        let secret = "a-shared-secret-of-at-least-32-bytes!!";
        let secret_file = app.db.dir.path().join("hs256.secret");
        std::fs::write(&secret_file, secret).unwrap();
        let backend = app.backend;
        // The secret alone does not turn HS256 on: the server refuses to start, saying why.
        let mut config = test_config(&TestDb::new(backend));
        config.auth_hs256_secret_file = Some(secret_file.clone());
        config.auth_issuer = Some(ISSUER.into());
        config.auth_audience = Some(AUDIENCE.into());
        let err = tandem::Application::build(config.clone()).err().expect("refused");
        assert!(err.to_string().contains("TANDEM_AUTH_ALLOW_HS256"), "{err}");

        let db = TestDb::new(backend);
        let app = TestApp::spawn_configured_on(backend, db, |c| {
            c.auth_hs256_secret_file = Some(secret_file.clone());
            c.auth_allow_hs256 = true;
            c.auth_issuer = Some(ISSUER.into());
            c.auth_audience = Some(AUDIENCE.into());
        }).await;
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims(), &EncodingKey::from_secret(secret.as_bytes())).unwrap();
        assert_eq!(status_with(&app, Some(&format!("Bearer {token}"))).await.0, 200);
        let wrong = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims(), &EncodingKey::from_secret(b"another-secret-another-secret-another")).unwrap();
        assert_eq!(status_with(&app, Some(&format!("Bearer {wrong}"))).await.0, 401);
    }

    async fn a_local_key_is_made_on_loopback_and_no_key_means_no_server_elsewhere(app: TestApp) {
        // The test server listens on loopback with no key configured: it made one in its data directory.
        let backend = app.backend;
        let key = app.db.dir.path().join(tandem::auth::token::LOCAL_KEY_FILE);
        assert!(key.exists(), "the local signing key was created");
        let (status, _, _) = status_with(&app, Some(&format!("Bearer {}", app.token("system/*.rs", None)))).await;
        assert_eq!(status, 200);
        // Anything signed by another local key (another data directory) is refused.
        let other = TestDb::new(backend);
        let mut other_config = test_config(&other);
        other_config.database_url = app.config.database_url.clone();
        let foreign = tandem::auth::token::mint(&other_config, "system/*.rs", None, "x", None, 60).unwrap();
        assert_eq!(status_with(&app, Some(&format!("Bearer {foreign}"))).await.0, 401);

        // On any other address, with no key configured, the server does not start.
        let mut config = test_config(&other);
        config.listen = "0.0.0.0:0".into();
        let err = tandem::Application::build(config.clone()).err().expect("refused to start");
        assert!(err.to_string().contains("refusing to serve"), "{err}");
        // With a key but no issuer or audience named, neither.
        let jwks = other.dir.path().join("jwks.json");
        std::fs::write(&jwks, IDP.jwks.to_string()).unwrap();
        config.auth_jwks_file = Some(jwks);
        let err = tandem::Application::build(config.clone()).err().expect("refused to start");
        assert!(err.to_string().contains("TANDEM_AUTH_ISSUER"), "{err}");
    }

    async fn smart_configuration_and_the_capability_statement_describe_the_security(app: TestApp) {
        let app = TestApp::spawn_configured(app.backend, |c| c.auth_token_endpoint = Some("https://idp.example/token".into())).await;
        let res = app.anonymous.get(app.url(".well-known/smart-configuration")).send().await.unwrap();
        assert_eq!(res.status(), 200);
        let doc = json(res).await;
        assert!(doc["capabilities"].as_array().unwrap().contains(&json!("permission-v2")));
        assert!(doc["scopes_supported"].as_array().unwrap().contains(&json!("system/AuditEvent.rs")));
        assert_eq!(doc["issuer"], tandem::auth::token::LOCAL_ISSUER);
        let cs = json(app.anonymous.get(app.url("metadata")).send().await.unwrap()).await;
        let security = &cs["rest"][0]["security"];
        assert_eq!(security["service"][0]["coding"][0]["code"], "SMART-on-FHIR");
        assert!(security["description"].as_str().unwrap().contains("Bearer"));
    }
}
