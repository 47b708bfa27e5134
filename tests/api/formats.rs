//! JSON and XML, chosen by Accept, _format and Content-Type; _pretty.

use serde_json::json;

use crate::both_backends;
use crate::helpers::*;

both_backends! {
    async fn format_follows_format_parameter_then_accept(app: TestApp) {
        let created = app.create(&patient("Haddad")).await;
        let id = created["id"].as_str().unwrap();
        let xml = app.get(&format!("Patient/{id}?_format=xml")).await;
        assert_eq!(xml.headers()["content-type"], "application/fhir+xml; charset=utf-8");
        let text = xml.text().await.unwrap();
        assert!(text.contains("<Patient xmlns=\"http://hl7.org/fhir\">"), "{text}");
        assert!(text.contains("<family value=\"Haddad\"/>"), "{text}");

        let by_accept = app.client.get(app.url(&format!("Patient/{id}"))).header("Accept", "application/fhir+xml").send().await.unwrap();
        assert!(by_accept.headers()["content-type"].to_str().unwrap().starts_with(FHIR_XML));
        let param_wins = app.client.get(app.url(&format!("Patient/{id}?_format=json"))).header("Accept", "application/fhir+xml").send().await.unwrap();
        assert!(param_wins.headers()["content-type"].to_str().unwrap().starts_with(FHIR_JSON));
        let encoded = app.get(&format!("Patient/{id}?_format=application%2Ffhir%2Bxml")).await;
        assert!(encoded.headers()["content-type"].to_str().unwrap().starts_with(FHIR_XML));
    }

    async fn xml_bodies_are_accepted_and_errors_follow_the_format(app: TestApp) {
        let xml = r#"<Patient xmlns="http://hl7.org/fhir"><active value="true"/><name><family value="Quinn"/></name></Patient>"#;
        let res = app.client.post(app.url("Patient")).header("Content-Type", "application/fhir+xml").header("Accept", "application/fhir+json").body(xml).send().await.unwrap();
        assert_eq!(res.status(), 201);
        let created = json(res).await;
        assert_eq!(created["name"][0]["family"], "Quinn");
        assert_eq!(created["active"], true);

        let err = app.client.get(app.url("Patient/missing")).header("Accept", "application/fhir+xml").send().await.unwrap();
        assert_eq!(err.status(), 404);
        let text = err.text().await.unwrap();
        assert!(text.contains("<OperationOutcome xmlns=\"http://hl7.org/fhir\">"), "{text}");
    }

    async fn pretty_output_is_indented_and_equal(app: TestApp) {
        let created = app.create(&json!({"resourceType": "Organization", "name": "Harbour Clinic"})).await;
        let id = created["id"].as_str().unwrap();
        let compact = app.get(&format!("Organization/{id}")).await.text().await.unwrap();
        let pretty = app.get(&format!("Organization/{id}?_pretty=true")).await.text().await.unwrap();
        assert!(!compact.contains('\n'));
        assert!(pretty.contains("\n  \"name\": \"Harbour Clinic\""), "{pretty}");
        let a: serde_json::Value = serde_json::from_str(&compact).unwrap();
        let b: serde_json::Value = serde_json::from_str(&pretty).unwrap();
        assert_eq!(a, b);
        let pretty_xml = app.get(&format!("Organization/{id}?_format=xml&_pretty=true")).await.text().await.unwrap();
        assert!(pretty_xml.contains("\n  <name value=\"Harbour Clinic\"/>"), "{pretty_xml}");
    }
}
