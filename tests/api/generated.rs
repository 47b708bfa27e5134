//! Generated input (proptest): control characters, long strings, deep and wide structures and JSON
//! Patch sequences thrown at create, update, PATCH, search and transaction. Whatever comes in, no
//! answer is a 5xx or a dropped connection, every refusal is an OperationOutcome, and a refused
//! write leaves the database exactly as it was. Bounded: a fixed number of cases per backend, each
//! a single request, and no shrinking past a few dozen steps.

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use serde_json::{json, Value};

use crate::helpers::*;

/// Characters an attacker reaches for: every C0 control, DEL, quotes and escapes, markup,
/// surrogates' neighbours and a non-BMP character.
fn nasty_char() -> impl Strategy<Value = char> {
    prop_oneof![
        3 => Just('\0'),
        3 => (1u32..32).prop_map(|c| char::from_u32(c).unwrap_or('\0')),
        1 => Just('\u{7f}'),
        1 => Just('"'),
        1 => Just('\\'),
        1 => Just('<'),
        1 => Just('&'),
        1 => Just('%'),
        1 => Just('\u{feff}'),
        1 => Just('\u{fffd}'),
        1 => Just('\u{10ffff}'),
        1 => Just('😀'),
        4 => proptest::char::range('a', 'z'),
    ]
}

fn nasty_string() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::collection::vec(nasty_char(), 0..40).prop_map(|v| v.into_iter().collect()),
        1 => (1usize..6, nasty_char()).prop_map(|(k, c)| {
            // Long: 1,000 to 60,000 characters around the index and search bounds.
            let n = [1_000, 2_704, 4_097, 20_000, 60_000][k - 1];
            std::iter::repeat_n(c, n).collect()
        }),
    ]
}

/// A JSON value nested `depth` deep (arrays in objects), or `width` elements wide.
fn shape() -> impl Strategy<Value = Value> {
    prop_oneof![
        2 => (1usize..400).prop_map(|depth| {
            let mut v = json!("leaf");
            for i in 0..depth {
                v = if i % 2 == 0 { json!([v]) } else { json!({"given": v}) };
            }
            v
        }),
        1 => (0usize..10).prop_map(|k| {
            let width = [100, 1_000, 1_000, 5_000, 5_000, 20_000, 20_000, 50_000, 50_000, 300_000][k];
            Value::Array((0..width).map(|i| json!(format!("g{i}"))).collect())
        }),
        6 => nasty_string().prop_map(Value::String),
        1 => any::<i64>().prop_map(|n| json!(n)),
        1 => any::<f64>().prop_map(|n| json!(n)),
    ]
}

/// A JSON Patch operation on a Patient.
fn patch_op() -> impl Strategy<Value = Value> {
    let path = prop_oneof![
        Just("/name".to_string()),
        Just("/name/0".to_string()),
        Just("/name/0/given".to_string()),
        Just("/name/0/given/-".to_string()),
        Just("/id".to_string()),
        Just("/meta".to_string()),
        Just("/resourceType".to_string()),
        Just("".to_string()),
        Just("/".to_string()),
        Just("/contained".to_string()),
        Just("/~1/~0".to_string()),
        nasty_string().prop_map(|s| format!("/{s}")),
    ];
    let op = prop_oneof![
        Just("add"),
        Just("remove"),
        Just("replace"),
        Just("move"),
        Just("copy"),
        Just("test"),
        Just("nope")
    ];
    (op, path.clone(), path, shape())
        .prop_map(|(op, path, from, value)| json!({"op": op, "path": path, "from": from, "value": value}))
}

#[derive(Debug, Clone)]
enum Attack {
    Create(Value),
    Update(Value),
    Patch(Vec<Value>),
    Search(String, String),
    Transaction(Vec<Value>),
}

fn patient_with(field: &'static str, value: Value) -> Value {
    let mut p = json!({"resourceType": "Patient", "name": [{"family": "Gen"}]});
    match field {
        "family" => p["name"][0]["family"] = value,
        "given" => p["name"][0]["given"] = value,
        "text" => p["text"] = json!({"status": "generated", "div": value}),
        "extension" => p["extension"] = json!([{"url": "https://x.example/e", "valueString": value}]),
        "identifier" => p["identifier"] = json!([{"system": "urn:x", "value": value}]),
        "contained" => p["contained"] = json!([{"resourceType": "Patient", "contained": [value]}]),
        _ => p[field] = value,
    }
    p
}

fn attack() -> impl Strategy<Value = Attack> {
    let field = prop_oneof![
        Just("family"),
        Just("given"),
        Just("text"),
        Just("extension"),
        Just("identifier"),
        Just("contained"),
        Just("birthDate"),
        Just("id")
    ];
    let param = prop_oneof![
        Just("family"),
        Just("family:exact"),
        Just("family:contains"),
        Just("identifier"),
        Just("_id"),
        Just("birthdate"),
        Just("_sort"),
        Just("_profile:below"),
        Just("general-practitioner"),
        Just("_has:Appointment:patient:status"),
    ];
    prop_oneof![
        (field.clone(), shape()).prop_map(|(f, v)| Attack::Create(patient_with(f, v))),
        (field, shape()).prop_map(|(f, v)| {
            let mut p = patient_with(f, v);
            p["id"] = json!("target");
            Attack::Update(p)
        }),
        proptest::collection::vec(patch_op(), 0..30).prop_map(Attack::Patch),
        (param, nasty_string()).prop_map(|(p, v)| Attack::Search(p.to_string(), v)),
        proptest::collection::vec(
            (nasty_string(), prop_oneof![Just("POST"), Just("PUT"), Just("DELETE")], shape()).prop_map(
                |(full_url, method, given)| {
                    let mut resource = patient_with("given", given);
                    resource["managingOrganization"] = json!({"reference": format!("urn:uuid:{full_url}")});
                    json!({"fullUrl": format!("urn:uuid:{full_url}"), "resource": resource,
                           "request": {"method": method, "url": if method == "POST" { "Patient".to_string() } else { "Patient/target".to_string() }}})
                }
            ),
            0..6
        )
        .prop_map(Attack::Transaction),
    ]
}

fn versions(app: &TestApp) -> i64 {
    app.count("SELECT COUNT(*) AS n FROM resource_versions")
}

fn resources_text(app: &TestApp) -> i64 {
    // Every stored current version, as its length: a write that changed nothing leaves it alike.
    app.count("SELECT COALESCE(SUM(LENGTH(body)), 0) AS n FROM resources")
}

async fn send(app: &TestApp, attack: &Attack) -> reqwest::Result<reqwest::Response> {
    let c = &app.client;
    match attack {
        Attack::Create(body) => {
            c.post(app.url("Patient"))
                .header("Content-Type", FHIR_JSON)
                .body(body.to_string())
                .send()
                .await
        }
        Attack::Update(body) => {
            c.put(app.url("Patient/target"))
                .header("Content-Type", FHIR_JSON)
                .body(body.to_string())
                .send()
                .await
        }
        Attack::Patch(ops) => {
            c.patch(app.url("Patient/target"))
                .header("Content-Type", "application/json-patch+json")
                .body(Value::Array(ops.clone()).to_string())
                .send()
                .await
        }
        Attack::Search(param, value) => {
            c.post(app.url("Patient/_search"))
                .form(&[(param.as_str(), value.as_str())])
                .send()
                .await
        }
        Attack::Transaction(entries) => {
            let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
            c.post(&app.address)
                .header("Content-Type", FHIR_JSON)
                .body(bundle.to_string())
                .send()
                .await
        }
    }
}

/// Every string in a JSON value, keys included.
fn strings(value: &Value, f: &mut dyn FnMut(&str)) {
    match value {
        Value::String(s) => f(s),
        Value::Array(items) => items.iter().for_each(|v| strings(v, f)),
        Value::Object(map) => map.iter().for_each(|(k, v)| {
            f(k);
            strings(v, f)
        }),
        _ => {}
    }
}

fn brief(attack: &Attack) -> String {
    let text = format!("{attack:?}");
    text.chars().take(300).collect()
}

async fn check(app: &TestApp, attack: Attack) -> Result<(), TestCaseError> {
    let (before, text_before) = (versions(app), resources_text(app));
    let res = send(app, &attack)
        .await
        .map_err(|e| TestCaseError::fail(format!("the connection failed ({e}) on {}", brief(&attack))))?;
    let status = res.status().as_u16();
    let body = res.text().await.unwrap_or_default();
    prop_assert!(
        status < 500,
        "{status} {} on {}",
        &body[..body.len().min(300)],
        brief(&attack)
    );
    if status >= 400 {
        let outcome: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        prop_assert_eq!(
            &outcome["resourceType"],
            "OperationOutcome",
            "{} on {}",
            status,
            brief(&attack)
        );
        prop_assert_eq!(
            versions(app),
            before,
            "a refused request wrote a version: {}",
            brief(&attack)
        );
        prop_assert_eq!(
            resources_text(app),
            text_before,
            "a refused request changed a resource: {}",
            brief(&attack)
        );
    }
    if status < 300 && !matches!(attack, Attack::Search(..)) {
        // What was written is valid FHIR: no string holds a control character but tab, CR and LF
        // (datatypes.html#string). The body is JSON, so a stored one shows as a \u escape.
        let value: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let mut bad = None;
        strings(&value, &mut |s| {
            if s.chars().any(|c| (c as u32) < 32 && !matches!(c, '\t' | '\r' | '\n')) {
                bad = Some(s.chars().take(40).collect::<String>());
            }
        });
        prop_assert!(
            bad.is_none(),
            "a control character was stored ({:?}) by {}",
            bad,
            brief(&attack)
        );
    }
    if matches!(attack, Attack::Search(..)) {
        prop_assert_eq!(versions(app), before, "a search wrote a version");
    }
    Ok(())
}

fn run(backend: Backend) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let app = runtime.block_on(async {
        let app = TestApp::spawn(backend).await;
        let target = json!({"resourceType": "Patient", "id": "target", "name": [{"family": "Target", "given": ["A"]}]});
        assert_eq!(app.put_json("Patient/target", &target).await.status(), 201);
        app
    });
    let config = ProptestConfig {
        cases: 64,
        max_shrink_iters: 32,
        failure_persistence: None,
        // The same cases every run, so a failure names a request that can be sent again.
        rng_algorithm: proptest::test_runner::RngAlgorithm::ChaCha,
        ..ProptestConfig::default()
    };
    let mut runner = TestRunner::new_with_rng(
        config,
        proptest::test_runner::TestRng::from_seed(proptest::test_runner::RngAlgorithm::ChaCha, &[7; 32]),
    );
    let result = runner.run(&attack(), |a| runtime.block_on(check(&app, a)));
    runtime.block_on(async { app.stop().await });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn generated_input_never_fails_the_server_sqlite() {
    run(Backend::Sqlite);
}

#[test]
fn generated_input_never_fails_the_server_postgres() {
    run(Backend::Postgres);
}
