//! tandem's own conformance resources: every OperationDefinition is valid R4 (opd-1: a parameter has
//! a type or parts) and every operation's output matches its definition (only `out` parameters,
//! each within its cardinality, each value of the declared type, parts as declared); every
//! SearchParameter of ours that the CapabilityStatement names is served at its URL.

use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::*;
use crate::scheduling::{clinic, put_ok};

/// The value[x] element name of a FHIR type (`integer` → `valueInteger`).
fn value_key(fhir_type: &str) -> String {
    let mut chars = fhir_type.chars();
    let first = chars.next().map(|c| c.to_ascii_uppercase()).unwrap_or_default();
    format!("value{first}{}", chars.as_str())
}

/// Checks `given` (the parameters of an output, or the parts of one) against `declared` (the
/// definition's parameters or parts), naming the first disagreement.
fn check(declared: &[Value], given: &[Value], at: &str) -> Result<(), String> {
    for p in given {
        let name = p["name"].as_str().ok_or(format!("{at}: a parameter without a name"))?;
        let def = declared
            .iter()
            .find(|d| d["name"] == name && d["use"] == "out")
            .ok_or(format!("{at}: '{name}' is not an out parameter of the definition"))?;
        let values: Vec<&String> = p
            .as_object()
            .into_iter()
            .flat_map(|m| m.keys())
            .filter(|k| k.starts_with("value") || *k == "resource")
            .collect();
        match (def["type"].as_str(), def["part"].as_array()) {
            (Some(t), None) => {
                let is_resource = t.starts_with(|c: char| c.is_ascii_uppercase()) && t != "Reference";
                let expected = if is_resource {
                    "resource".to_string()
                } else {
                    value_key(t)
                };
                if values.len() != 1 || *values[0] != expected || p.get("part").is_some() {
                    return Err(format!("{at}: '{name}' should carry only {expected}, has {values:?}"));
                }
                if is_resource && p["resource"]["resourceType"] != t {
                    return Err(format!("{at}: '{name}' should be a {t}"));
                }
            }
            (None, Some(parts)) => {
                if !values.is_empty() {
                    return Err(format!("{at}: '{name}' has parts and no value, has {values:?}"));
                }
                let given_parts = p["part"].as_array().cloned().unwrap_or_default();
                check(parts, &given_parts, &format!("{at}.{name}"))?;
            }
            _ => return Err(format!("{at}: the definition of '{name}' breaks opd-1")),
        }
    }
    for def in declared.iter().filter(|d| d["use"] == "out") {
        let name = def["name"].as_str().unwrap_or_default();
        let n = given.iter().filter(|p| p["name"] == name).count() as u64;
        let min = def["min"].as_u64().unwrap_or(0);
        let max = match def["max"].as_str() {
            Some("*") => u64::MAX,
            Some(m) => m.parse().unwrap_or(0),
            None => 0,
        };
        if n < min || n > max {
            return Err(format!(
                "{at}: '{name}' appears {n} times, the definition allows {min}..{max}"
            ));
        }
    }
    Ok(())
}

async fn definition(app: &TestApp, id: &str) -> Value {
    let res = app
        .anonymous
        .get(app.url(&format!("OperationDefinition/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "OperationDefinition/{id}");
    res.json().await.unwrap()
}

fn out_of(definition: &Value, output: &Value) -> Result<(), String> {
    let declared = definition["parameter"].as_array().cloned().unwrap_or_default();
    let outs: Vec<&Value> = declared.iter().filter(|d| d["use"] == "out").collect();
    // operations.html#response: an operation whose only out parameter is a resource named
    // `return` answers with that resource itself.
    if let [only] = outs.as_slice() {
        if only["name"] == "return" && output["resourceType"] != "Parameters" {
            return match only["type"].as_str() {
                // `Resource`: any resource (an Appointment, or a Bundle of a series).
                Some(t) if output["resourceType"] == t || t == "Resource" => Ok(()),
                t => Err(format!(
                    "the output is a {}, the definition returns {t:?}",
                    output["resourceType"]
                )),
            };
        }
    }
    if output["resourceType"] != "Parameters" {
        return Err(format!("the output is a {}, not Parameters", output["resourceType"]));
    }
    check(
        &declared,
        output["parameter"].as_array().map_or(&[][..], Vec::as_slice),
        "Parameters",
    )
}

both_backends! {
    async fn every_operation_definition_is_valid_and_every_output_matches_its_definition(app: TestApp) {
        let listed: Value = app.anonymous.get(app.url("OperationDefinition")).send().await.unwrap().json().await.unwrap();
        let defs = entries(&listed);
        assert_eq!(defs.len(), 7);
        for d in &defs {
            let d = &d["resource"];
            for p in d["parameter"].as_array().unwrap() {
                let has_type = p.get("type").is_some();
                let has_parts = p.get("part").is_some();
                assert!(has_type != has_parts, "opd-1 (type or parts) on {}.{}", d["id"], p["name"]);
                for part in p["part"].as_array().into_iter().flatten() {
                    assert!(part.get("type").is_some(), "opd-1 on {}.{}.{}", d["id"], p["name"], part["name"]);
                }
            }
        }

        clinic(&app).await;
        let booking = json!({"resourceType": "Parameters", "parameter": [
            {"name": "start", "valueDateTime": "2026-12-07T18:00:00Z"},
            {"name": "end", "valueDateTime": "2026-12-07T19:30:00Z"},
            {"name": "practitioner", "valueReference": {"reference": "Practitioner/moss"}},
            {"name": "location", "valueReference": {"reference": "Location/room-1"}}]});
        let res = app.post_json("Group/grief/$book-session", &booking).await;
        assert_eq!(res.status(), 201);
        let mut session = json(res).await;
        out_of(&definition(&app, "Group-book-session").await, &session).unwrap();

        // Attendance recorded for two members, so that the report has something to count.
        let attendance = "https://tandem.example.org/fhir/StructureDefinition/participant-attendance";
        session["status"] = json!("fulfilled");
        for (i, code) in [(2, "attended"), (3, "no-show")] {
            session["participant"][i]["extension"] = json!([{"url": attendance, "valueCode": code}]);
        }
        put_ok(&app, session).await;

        // Two PHQ-9s of a member, so that $outcomes has scores, a change and a trend to report.
        for (day, code) in [("01", "LA6571-9"), ("20", "LA6569-3")] {
            let items: Vec<Value> = ["44250-9", "44255-8", "44259-0", "44254-1", "44251-7", "44258-2", "44252-5", "44253-3", "44260-8"]
                .iter().map(|l| json!({"linkId": l, "answer": [{"valueCoding": {"system": "http://loinc.org", "code": code}}]})).collect();
            let r = json!({"resourceType": "QuestionnaireResponse", "status": "completed", "questionnaire": "https://tandem.example.org/fhir/Questionnaire/phq-9",
                "subject": {"reference": "Patient/p1"}, "authored": format!("2026-12-{day}T09:00:00Z"), "item": items});
            app.create(&r).await;
        }
        // A weekly series answers with a Bundle; $find and $cancel-series with theirs.
        let mut weekly = booking.clone();
        weekly["parameter"][0]["valueDateTime"] = json!("2026-12-14T18:00:00Z");
        weekly["parameter"][1]["valueDateTime"] = json!("2026-12-14T19:30:00Z");
        weekly["parameter"].as_array_mut().unwrap().push(json!({"name": "count", "valueInteger": 2}));
        let res = app.post_json("Group/grief/$book-session", &weekly).await;
        assert_eq!(res.status(), 201);
        let series = json(res).await;
        out_of(&definition(&app, "Group-book-session").await, &series).unwrap();
        let res = app.post(&format!("Appointment/{}/$cancel-series", series["entry"][0]["resource"]["id"].as_str().unwrap())).await;
        assert_eq!(res.status(), 200);
        out_of(&definition(&app, "Appointment-cancel-series").await, &json(res).await).unwrap();
        let res = app.get("Appointment/$find?practitioner=moss&start=2026-12-07T09:00:00Z&end=2026-12-07T17:00:00Z").await;
        assert_eq!(res.status(), 200);
        out_of(&definition(&app, "Appointment-find").await, &json(res).await).unwrap();
        for (id, path) in [
            ("Group-outcomes", "Group/grief/$outcomes?measure=phq-9&start=2026-12-01&end=2027-01-01"),
            ("Group-outcomes", "Group/grief/$outcomes?measure=gad-7"),
            ("Patient-outcomes", "Patient/p1/$outcomes?start=2026-12-01&end=2027-01-01"),
            ("Patient-outcomes", "Patient/p2/$outcomes?measure=phq-9"),
            ("Group-attendance", "Group/grief/$attendance?start=2026-12-01&end=2027-01-01"),
            ("Group-attendance", "Group/grief/$attendance"),
            ("Practitioner-caseload", "Practitioner/moss/$caseload?start=2026-12-01T00:00:00Z&end=2026-12-31"),
            ("Practitioner-caseload", "Practitioner/moss/$caseload"),
        ] {
            let res = app.get(path).await;
            assert_eq!(res.status(), 200, "{path}");
            let output = json(res).await;
            out_of(&definition(&app, id).await, &output).unwrap_or_else(|e| panic!("{path}: {e}\n{output}"));
        }
    }
}

both_backends! {
    async fn our_search_parameters_are_served_under_the_configured_canonical_base(app: TestApp) {
        let _ = &app;
        let app = TestApp::spawn_configured(app.backend, |c| c.canonical_base = "https://fhir.clinic.example/r4".into()).await;
        let get = |path: String| {
            let client = app.anonymous.clone();
            async move { client.get(path).send().await.unwrap() }
        };
        let res = get(app.url("SearchParameter/Appointment-group")).await;
        assert_eq!(res.status(), 200, "no token is needed for a definition");
        let sp = json(res).await;
        assert_eq!(sp["resourceType"], "SearchParameter");
        assert_eq!(sp["url"], "https://fhir.clinic.example/r4/SearchParameter/Appointment-group");
        assert_eq!((sp["code"].as_str(), sp["type"].as_str()), (Some("group"), Some("reference")));
        assert_eq!(get(app.url("SearchParameter/nope")).await.status(), 404);

        let listed = json(get(app.url("SearchParameter?url=https://fhir.clinic.example/r4/SearchParameter/Appointment-group")).await).await;
        assert_eq!(entries(&listed).len(), 1);
        let none = json(get(app.url("SearchParameter?url=https://tandem.example.org/fhir/SearchParameter/Appointment-group")).await).await;
        assert!(entries(&none).is_empty(), "the default base is not this server's");

        // The CapabilityStatement names the same URL, and lists SearchParameter among our types.
        let cs = json(get(app.url("metadata")).await).await;
        let resources = cs["rest"][0]["resource"].as_array().unwrap();
        let appointment = resources.iter().find(|r| r["type"] == "Appointment").unwrap();
        let group = appointment["searchParam"].as_array().unwrap().iter().find(|p| p["name"] == "group").unwrap();
        assert_eq!(group["definition"], sp["url"]);
        assert!(resources.iter().any(|r| r["type"] == "SearchParameter"));
        // Every definition of ours that the CapabilityStatement names answers.
        for r in resources {
            for p in r["searchParam"].as_array().into_iter().flatten() {
                let d = p["definition"].as_str().unwrap_or_default();
                if let Some(path) = d.strip_prefix("https://fhir.clinic.example/r4/") {
                    assert_eq!(get(app.url(path)).await.status(), 200, "{d}");
                }
            }
        }
    }
}

#[test]
fn the_check_refuses_what_a_definition_does_not_declare() {
    let def = json!({"parameter": [
        {"name": "start", "use": "in", "min": 0, "max": "1", "type": "date"},
        {"name": "sessions", "use": "out", "min": 1, "max": "1", "type": "integer"},
        {"name": "member", "use": "out", "min": 0, "max": "*", "part": [
            {"name": "attended", "use": "out", "min": 1, "max": "1", "type": "integer"}]}]});
    let ok = json!({"resourceType": "Parameters", "parameter": [
        {"name": "sessions", "valueInteger": 2},
        {"name": "member", "part": [{"name": "attended", "valueInteger": 1}]}]});
    assert_eq!(out_of(&def, &ok), Ok(()));
    for bad in [
        // an input echoed as a string (what $attendance did)
        json!({"resourceType": "Parameters", "parameter": [{"name": "sessions", "valueInteger": 2}, {"name": "start", "valueString": "2026"}]}),
        json!({"resourceType": "Parameters", "parameter": [{"name": "sessions", "valueDecimal": 2.0}]}),
        json!({"resourceType": "Parameters", "parameter": []}),
        json!({"resourceType": "Parameters", "parameter": [{"name": "sessions", "valueInteger": 2}, {"name": "member", "part": []}]}),
    ] {
        assert!(out_of(&def, &bad).is_err(), "{bad}");
    }
}
