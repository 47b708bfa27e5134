use serde_json::json;

use crate::both_backends;
use crate::helpers::*;

both_backends! {
    async fn capability_statement_lists_what_the_server_really_does(app: TestApp) {
        let res = app.get("metadata").await;
        assert_eq!(res.status(), 200);
        let cs = json(res).await;
        assert_eq!(cs["resourceType"], "CapabilityStatement");
        assert_eq!(cs["fhirVersion"], "4.0.1");
        assert_eq!(cs["kind"], "instance");
        assert_eq!(cs["format"], serde_json::json!(["application/fhir+json", "application/fhir+xml"]));
        let resources = cs["rest"][0]["resource"].as_array().unwrap();
        let types: Vec<&str> = resources.iter().map(|r| r["type"].as_str().unwrap()).collect();
        assert_eq!(
            types,
            ["Appointment", "CareTeam", "Consent", "DocumentReference", "Encounter", "Group", "Location", "Observation", "Organization", "Patient", "Practitioner", "PractitionerRole", "Questionnaire", "QuestionnaireResponse", "Schedule", "Slot", "Subscription",
             "StructureDefinition", "CodeSystem", "OperationDefinition", "SearchParameter", "AuditEvent"]
        );

        // Every operation listed has a definition this server serves (or HL7's, for $everything).
        let operations: Vec<(String, String, String)> = resources.iter().flat_map(|r| {
            r["operation"].as_array().into_iter().flatten().map(move |o| (r["type"].as_str().unwrap().to_string(), o["name"].as_str().unwrap().to_string(), o["definition"].as_str().unwrap().to_string()))
        }).collect();
        let names: Vec<&str> = operations.iter().map(|(_, n, _)| n.as_str()).collect();
        assert_eq!(names, ["find", "cancel-series", "book-session", "attendance", "outcomes", "export", "outcomes", "everything", "export", "caseload"]);
        for (_, name, definition) in &operations {
            if let Some(id) = definition.strip_prefix("https://tandem.example.org/fhir/OperationDefinition/") {
                let d = json(app.get(&format!("OperationDefinition/{id}")).await).await;
                assert_eq!(d["url"], definition.as_str());
                assert_eq!(d["code"], name.as_str());
            } else if name == "export" {
                assert!(definition.starts_with("http://hl7.org/fhir/uv/bulkdata/OperationDefinition/"), "{definition}");
            } else {
                assert_eq!(definition, "http://hl7.org/fhir/OperationDefinition/Patient-everything");
            }
        }

        // Each declared interaction is answered by the server (not 404/405) for every declared type.
        for r in resources {
            let rt = r["type"].as_str().unwrap();
            let declared: Vec<&str> = r["interaction"].as_array().unwrap().iter().map(|i| i["code"].as_str().unwrap()).collect();
            for interaction in declared {
                let status = match interaction {
                    "read" => app.get(&format!("{rt}/x")).await.status().as_u16(),
                    "vread" => app.get(&format!("{rt}/x/_history/1")).await.status().as_u16(),
                    "history-instance" => app.get(&format!("{rt}/x/_history")).await.status().as_u16(),
                    "history-type" => app.get(&format!("{rt}/_history")).await.status().as_u16(),
                    "create" => app.client.post(app.url(rt)).header("Content-Type", FHIR_JSON).body("{}").send().await.unwrap().status().as_u16(),
                    "update" => app.client.put(app.url(&format!("{rt}/x"))).header("Content-Type", FHIR_JSON).body("{}").send().await.unwrap().status().as_u16(),
                    "delete" => app.client.delete(app.url(&format!("{rt}/x"))).send().await.unwrap().status().as_u16(),
                    "patch" => app.client.patch(app.url(&format!("{rt}/x"))).header("Content-Type", "application/json-patch+json").body("[]").send().await.unwrap().status().as_u16(),
                    "search-type" => app.get(rt).await.status().as_u16(),
                    other => panic!("declared interaction {other} is not exercised by this test"),
                };
                // 404 "not-found" for the unknown id x is a real answer; 405 would mean no route.
                assert_ne!(status, 405, "{rt} {interaction}");
                assert!(status != 404 || matches!(interaction, "read" | "vread" | "history-instance" | "patch"), "{rt} {interaction}: {status}");
            }
        }
        let system: Vec<&str> = cs["rest"][0]["interaction"].as_array().unwrap().iter().map(|i| i["code"].as_str().unwrap()).collect();
        assert_eq!(system, ["transaction", "batch", "history-system", "search-system"]);
        let empty = json!({"resourceType": "Bundle", "type": "transaction"});
        assert_eq!(app.post_json("", &empty).await.status(), 200);
        assert_eq!(app.get("_history").await.status(), 200);
        assert_eq!(app.get("").await.status(), 200);

        // Every search parameter listed is one the server answers (not refused as unknown/unsupported).
        // The audit trail's parameters, with a privacy officer's token, each with a value of its type.
        let officer = app.client_with("system/AuditEvent.rs", None);
        for r in resources.iter().filter(|r| r["type"] == "AuditEvent") {
            for p in r["searchParam"].as_array().unwrap() {
                let name = p["name"].as_str().unwrap();
                let value = match p["type"].as_str().unwrap() {
                    "date" => "ge2026-01-01",
                    "reference" => "Patient/x",
                    _ => "x",
                };
                let res = officer.get(app.url("AuditEvent")).query(&[(name, value)]).header("Prefer", "handling=strict").send().await.unwrap();
                assert_eq!(res.status(), 200, "AuditEvent?{name}={value}: {}", res.text().await.unwrap());
            }
        }
        for r in resources.iter().filter(|r| r["type"] != "AuditEvent") {
            let rt = r["type"].as_str().unwrap();
            for p in r["searchParam"].as_array().unwrap() {
                let name = p["name"].as_str().unwrap();
                assert!(p["definition"].as_str().unwrap().starts_with("http"), "{rt}.{name}");
                let res = app.client.get(app.url(rt)).query(&[(format!("{name}:missing"), "false")]).header("Prefer", "handling=strict").send().await.unwrap();
                let status = res.status().as_u16();
                // _id and _lastUpdated take no :missing; everything else must be searchable.
                if !matches!(name, "_id" | "_lastUpdated") {
                    assert_eq!(status, 200, "{rt}?{name}:missing=false: {}", res.text().await.unwrap());
                }
            }
        }
    }

    async fn capability_statement_is_valid_xml_too(app: TestApp) {
        let res = app.get("metadata?_format=xml").await;
        assert_eq!(res.status(), 200);
        let text = res.text().await.unwrap();
        assert!(text.starts_with("<?xml"));
        assert!(text.contains("<CapabilityStatement xmlns=\"http://hl7.org/fhir\">"));
        assert!(text.contains("<fhirVersion value=\"4.0.1\"/>"));
    }

    async fn health_and_readiness(app: TestApp) {
        assert_eq!(app.get("healthz").await.status(), 200);
        assert_eq!(app.get("readyz").await.status(), 200);
    }
}
