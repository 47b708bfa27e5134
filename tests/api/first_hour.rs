//! What an integrator hits in the first hour (issue 23's smaller items): history records a PATCH as
//! PATCH, another FHIR version is 406/415, an ignored search parameter is `not-supported`, and
//! search criteria in a create's URL are refused rather than dropped.

use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::*;

const JSON_PATCH: &str = "application/json-patch+json";

both_backends! {
    async fn history_records_a_patch_as_patch(app: TestApp) {
        let created = app.create(&patient("Ito")).await;
        let id = created["id"].as_str().unwrap().to_string();
        let patch = json!([{"op": "replace", "path": "/gender", "value": "unknown"}]);
        let res = app.client.patch(app.url(&format!("Patient/{id}")))
            .header("Content-Type", JSON_PATCH).body(patch.to_string()).send().await.unwrap();
        assert_eq!(res.status(), 200);
        // A patch that changes nothing writes no version and no history entry.
        let res = app.client.patch(app.url(&format!("Patient/{id}")))
            .header("Content-Type", JSON_PATCH).body(patch.to_string()).send().await.unwrap();
        assert_eq!(res.status(), 200);
        let mut changed = json(app.get(&format!("Patient/{id}")).await).await;
        changed["gender"] = json!("other");
        assert_eq!(app.put_json(&format!("Patient/{id}"), &changed).await.status(), 200);

        let history = json(app.get(&format!("Patient/{id}/_history")).await).await;
        let methods: Vec<Value> = entries(&history).iter().map(|e| e["request"]["method"].clone()).collect();
        assert_eq!(methods, [json!("PUT"), json!("PATCH"), json!("POST")]);
        let patched = &entries(&history)[1];
        assert_eq!(patched["request"]["url"], format!("Patient/{id}"));
        assert_eq!(patched["response"]["status"], "200 OK");
        assert_eq!(patched["resource"]["gender"], "unknown");
        // The same in the type's and the system's history.
        let system = json(app.get("_history").await).await;
        assert!(entries(&system).iter().any(|e| e["request"]["method"] == "PATCH"));

        // A PATCH entry of a transaction is recorded the same way.
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{
            "resource": {"resourceType": "Binary", "contentType": JSON_PATCH,
                "data": base64(&json!([{"op": "replace", "path": "/gender", "value": "male"}]).to_string())},
            "request": {"method": "PATCH", "url": format!("Patient/{id}")}
        }]});
        assert_eq!(app.post_json("", &bundle).await.status(), 200);
        let history = json(app.get(&format!("Patient/{id}/_history?_count=1")).await).await;
        assert_eq!(entries(&history)[0]["request"]["method"], "PATCH");
        assert_eq!(entries(&history)[0]["resource"]["gender"], "male");
    }

    async fn another_fhir_version_is_not_acceptable(app: TestApp) {
        app.create(&patient("Ito")).await;
        // R4 named as the spec writes it, or in full, or not at all: answered.
        for accept in ["application/fhir+json; fhirVersion=4.0", "application/fhir+json; fhirVersion=4.0.1", "application/fhir+json"] {
            let res = app.client.get(app.url("Patient")).header("Accept", accept).send().await.unwrap();
            assert_eq!(res.status(), 200, "{accept}");
        }
        // Only another version asked for: 406, saying which version this server speaks.
        for accept in ["application/fhir+json; fhirVersion=3.0", "application/fhir+xml;fhirVersion=5.0"] {
            let res = app.client.get(app.url("Patient")).header("Accept", accept).send().await.unwrap();
            let outcome = assert_outcome(res, 406, "not-supported").await;
            assert!(outcome["issue"][0]["diagnostics"].as_str().unwrap().contains("4.0"), "{outcome}");
        }
        // One acceptable range among others is enough.
        let res = app.client.get(app.url("Patient"))
            .header("Accept", "application/fhir+json; fhirVersion=3.0, application/fhir+xml; fhirVersion=4.0; q=0.5")
            .send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert!(res.headers()["content-type"].to_str().unwrap().starts_with("application/fhir+xml"));
        let res = app.get("Patient?_format=application/fhir%2Bjson;fhirVersion=3.0").await;
        assert_outcome(res, 406, "not-supported").await;

        // A body of another version: 415, and nothing stored.
        let before = app.version_count().await;
        let res = app.post_raw("Patient", "application/fhir+json; fhirVersion=3.0", patient("Ott").to_string()).await;
        assert_outcome(res, 415, "not-supported").await;
        assert_eq!(app.version_count().await, before);
        let res = app.post_raw("Patient", "application/fhir+json; fhirVersion=4.0", patient("Ott").to_string()).await;
        assert_eq!(res.status(), 201);
    }

    async fn an_ignored_search_parameter_is_reported_as_not_supported(app: TestApp) {
        app.create(&patient("Ito")).await;
        let bundle = json(app.get("Patient?colour=blue").await).await;
        let outcome = entries(&bundle).into_iter().find(|e| e["search"]["mode"] == "outcome").expect("an outcome entry");
        let issue = &outcome["resource"]["issue"][0];
        assert_eq!((issue["severity"].as_str(), issue["code"].as_str()), (Some("warning"), Some("not-supported")));
        assert!(issue["diagnostics"].as_str().unwrap().contains("colour"));
        assert_eq!(bundle["total"], 1);
    }

    async fn criteria_in_a_create_url_are_refused_not_dropped(app: TestApp) {
        // fhirpy's get_or_create sends POST /Patient?identifier=…; FHIR defines no query there.
        let mut body = patient("Ito");
        body["identifier"] = json!([{"system": "urn:mrn", "value": "7"}]);
        assert_eq!(app.post_json("Patient", &body).await.status(), 201);
        let before = app.version_count().await;
        let outcome = assert_outcome(app.post_json("Patient?identifier=urn:mrn%7C7", &body).await, 400, "invalid").await;
        let text = outcome["issue"][0]["diagnostics"].as_str().unwrap();
        assert!(text.contains("If-None-Exist") && text.contains("identifier"), "{text}");
        assert_eq!(app.version_count().await, before, "nothing was created");
        // The header form is the conditional create: it finds the one that exists.
        let res = app.client.post(app.url("Patient")).header("Content-Type", FHIR_JSON)
            .header("If-None-Exist", "identifier=urn:mrn|7").body(body.to_string()).send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(app.version_count().await, before);
        // _format and _pretty are still welcome on a create.
        assert_eq!(app.post_json("Patient?_format=json&_pretty=true", &patient("Ott")).await.status(), 201);
    }
}

fn base64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}
