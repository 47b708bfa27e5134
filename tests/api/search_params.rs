//! Every search parameter of every hosted type finds what it should (a hit) and nothing when no
//! resource has the value (a miss). The corpus is the official HL7 examples, stored through the API,
//! plus a few resources of ours for parameters no official example exercises.

use std::collections::BTreeSet;

use serde_json::{json, Value};
use tandem::resources::{dates, index, ResourceType};

use crate::both_backends;
use crate::examples::{manifest, put_stubs};
use crate::helpers::*;

/// Resources for the parameters that no official example of our types has a value for.
fn extra_resources() -> Vec<Value> {
    vec![
        json!({"resourceType": "Patient", "id": "extra-patient", "deceasedDateTime": "2020-02-02T10:00:00Z"}),
        // The first occurrence of the series the next one belongs to (originating-appointment).
        json!({"resourceType": "Appointment", "id": "extra-first-occurrence", "status": "proposed",
               "extension": [{"url": "http://hl7.org/fhir/5.0/StructureDefinition/extension-Appointment.subject", "valueReference": {"reference": "Group/extra-group"}},
                             {"url": "http://hl7.org/fhir/5.0/StructureDefinition/extension-Appointment.recurrenceId", "valuePositiveInt": 1}],
               "participant": [{"actor": {"reference": "Patient/extra-patient"}, "status": "accepted"}]}),
        // Without times, so proposed (app-3: a booked one has a start and an end).
        json!({"resourceType": "Appointment", "id": "extra-appointment", "status": "proposed",
               "basedOn": [{"reference": "ServiceRequest/sr-1"}], "slot": [{"reference": "Slot/slot-1"}],
               "reasonReference": [{"reference": "Condition/cond-1"}], "supportingInformation": [{"reference": "Patient/extra-patient"}],
               "extension": [{"url": "http://hl7.org/fhir/5.0/StructureDefinition/extension-Appointment.subject", "valueReference": {"reference": "Group/extra-group"}},
                             {"url": "http://hl7.org/fhir/5.0/StructureDefinition/extension-Appointment.recurrenceId", "valuePositiveInt": 2},
                             {"url": "http://hl7.org/fhir/5.0/StructureDefinition/extension-Appointment.originatingAppointment", "valueReference": {"reference": "Appointment/extra-first-occurrence"}}],
               "participant": [{"actor": {"reference": "Patient/extra-patient"}, "status": "accepted"}]}),
        json!({"resourceType": "Group", "id": "extra-group", "type": "person", "actual": true, "code": {"coding": [{"system": "https://tandem.example.org/fhir/CodeSystem/group-focus", "code": "grief"}]},
               "identifier": [{"system": "urn:tandem:group", "value": "G-1"}], "managingEntity": {"reference": "Practitioner/extra-practitioner"},
               "characteristic": [{"code": {"coding": [{"system": "https://tandem.example.org/fhir/CodeSystem/group-characteristic", "code": "focus"}]},
                                   "valueCodeableConcept": {"coding": [{"system": "https://tandem.example.org/fhir/CodeSystem/group-focus", "code": "grief"}]}, "exclude": false}]}),
        json!({"resourceType": "Practitioner", "id": "extra-practitioner", "active": true,
               "address": [{"use": "work", "city": "Harbourton", "state": "HT", "postalCode": "1234", "country": "NZ"}],
               "telecom": [{"system": "email", "value": "moss@clinic.example"}, {"system": "phone", "value": "+64 9 555 0100"}],
               "communication": [{"coding": [{"system": "urn:ietf:bcp:47", "code": "en"}]}]}),
        json!({"resourceType": "PractitionerRole", "id": "extra-role", "active": true, "period": {"start": "2026-01-01"},
               "identifier": [{"system": "urn:tandem:role", "value": "R-1"}], "practitioner": {"reference": "Practitioner/extra-practitioner"},
               "healthcareService": [{"reference": "HealthcareService/hs-1"}], "endpoint": [{"reference": "Endpoint/ep-1"}],
               "telecom": [{"system": "phone", "value": "+64 9 555 0101"}, {"system": "email", "value": "role@clinic.example"}]}),
        json!({"resourceType": "Location", "id": "extra-location", "operationalStatus": {"system": "http://terminology.hl7.org/CodeSystem/v2-0116", "code": "O"},
               "endpoint": [{"reference": "Endpoint/ep-2"}], "partOf": {"reference": "Location/1"}}),
        json!({"resourceType": "Organization", "id": "extra-organization", "name": "Extra clinic", "endpoint": [{"reference": "Endpoint/ep-3"}], "partOf": {"reference": "Organization/1"}}),
        json!({"resourceType": "CareTeam", "id": "extra-careteam", "status": "active", "identifier": [{"system": "urn:tandem:team", "value": "T-1"}],
               "category": [{"coding": [{"system": "http://loinc.org", "code": "LA27976-2"}]}]}),
        // Encounter.length, .location and .reason-reference have no value in the official examples.
        json!({"resourceType": "Encounter", "id": "extra-encounter", "status": "finished",
               "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
               "subject": {"reference": "Patient/extra-patient"}, "length": {"value": 50, "unit": "min", "system": "http://unitsofmeasure.org", "code": "min"},
               "location": [{"location": {"reference": "Location/extra-location"}}], "reasonReference": [{"reference": "Condition/cond-1"}]}),
        json!({"resourceType": "DocumentReference", "id": "extra-note", "status": "current",
               "type": {"coding": [{"system": "http://loinc.org", "code": "11506-3", "display": "Progress note"}]},
               "subject": {"reference": "Patient/extra-patient"}, "context": {"encounter": [{"reference": "Encounter/extra-encounter"}]},
               "content": [{"attachment": {"contentType": "text/plain", "data": "U2xlcHQgYmV0dGVyLg=="}}]}),
        // Observation.basedOn and a coded value (with a coded component) have no value in the official examples.
        json!({"resourceType": "Observation", "id": "extra-observation", "status": "final",
               "basedOn": [{"reference": "ServiceRequest/sr-1"}],
               "code": {"coding": [{"system": "http://loinc.org", "code": "72166-2", "display": "Tobacco smoking status"}]},
               "subject": {"reference": "Patient/extra-patient"},
               "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "266919005", "display": "Never smoked tobacco"}]},
               "component": [{"code": {"coding": [{"system": "http://loinc.org", "code": "88031-0"}]},
                              "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "722499006"}]}}]}),
        // Questionnaire.useContext (coded and quantity) and item.definition.
        json!({"resourceType": "Questionnaire", "id": "extra-questionnaire", "status": "active",
               "url": "https://ehr.example.org/fhir/Questionnaire/intake", "version": "2",
               "useContext": [
                   {"code": {"system": "http://terminology.hl7.org/CodeSystem/usage-context-type", "code": "focus"},
                    "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "35489007", "display": "Depressive disorder"}]}},
                   {"code": {"system": "http://terminology.hl7.org/CodeSystem/usage-context-type", "code": "age"},
                    "valueQuantity": {"value": 18, "unit": "a", "system": "http://unitsofmeasure.org", "code": "a"}}],
               "item": [{"linkId": "1", "definition": "http://hl7.org/fhir/StructureDefinition/Patient#Patient.birthDate", "text": "Date of birth", "type": "date"}]}),
        json!({"resourceType": "QuestionnaireResponse", "id": "extra-response", "status": "completed",
               "questionnaire": "https://ehr.example.org/fhir/Questionnaire/intake|2",
               "basedOn": [{"reference": "CarePlan/cp-1"}], "subject": {"reference": "Patient/extra-patient"},
               "item": [{"linkId": "1", "answer": [{"valueDate": "1990-04-02"}]}]}),
        // The official Schedule and Slot examples carry no meta (_tag, _profile, _security, _source).
        json!({"resourceType": "Schedule", "id": "extra-schedule", "active": true, "actor": [{"reference": "Practitioner/extra-practitioner"}]}),
        json!({"resourceType": "Slot", "id": "extra-slot", "schedule": {"reference": "Schedule/extra-schedule"}, "status": "free",
               "start": "2027-01-05T17:00:00Z", "end": "2027-01-05T21:00:00Z"}),
        // No official R4 Subscription example is in the corpus; an "off" one needs no allowed host.
        json!({"resourceType": "Subscription", "id": "extra-subscription", "status": "off", "reason": "EHR sync",
               "meta": {"tag": [{"system": "urn:tandem:tag", "code": "sync"}], "profile": ["http://hl7.org/fhir/StructureDefinition/Subscription"],
                        "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "N"}], "source": "urn:tandem:source"},
               "contact": [{"system": "email", "value": "integrations@ehr.example"}],
               "criteria": "Appointment?status=booked",
               "channel": {"type": "rest-hook", "endpoint": "https://hooks.ehr.example/fhir", "payload": "application/fhir+json"}}),
        json!({"resourceType": "Consent", "id": "extra-consent", "status": "active", "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
               "category": [{"coding": [{"system": "https://tandem.example.org/fhir/CodeSystem/consent-category", "code": "group-confidentiality"}]}],
               "identifier": [{"system": "urn:tandem:consent", "value": "C-1"}],
               "patient": {"reference": "Patient/extra-patient"}, "policy": [{"uri": "https://clinic.example/agreements/group"}],
               "sourceReference": {"reference": "Contract/k-1"},
               "provision": {"period": {"start": "2026-01-01", "end": "2026-12-31"}, "actor": [{"role": {"text": "member"}, "reference": {"reference": "Group/extra-group"}}],
                             "securityLabel": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}],
                             "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}],
                             "data": [{"meaning": "related", "reference": {"reference": "Patient/extra-patient"}}]}}),
    ]
}

/// Escapes a value part as search.html#escaping requires.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace(',', "\\,")
        .replace('|', "\\|")
        .replace('$', "\\$")
}

/// A query value that must find `entry`'s resource, or None when the entry is not searchable as such.
fn hit_query(e: &Entry) -> Option<(String, String)> {
    match e {
        Entry::Token(t) if !t.param.contains(':') => match (&t.system, &t.code) {
            (Some(s), Some(c)) => Some((t.param.clone(), format!("{}|{}", esc(s), esc(c)))),
            (None, Some(c)) => Some((t.param.clone(), esc(c))),
            (_, None) => t.display.as_ref().map(|d| (format!("{}:text", t.param), esc(d))),
        },
        Entry::String(s) => Some((format!("{}:exact", s.param), esc(&s.exact))),
        Entry::Date(d) if d.low != i64::MIN => Some((d.param.clone(), format!("ge{}", dates::format_instant(d.low)))),
        Entry::Date(d) => Some((d.param.clone(), format!("le{}", dates::format_instant(d.high)))),
        Entry::Reference(r) => match (&r.target_type, &r.target_id, &r.url) {
            (_, _, Some(url)) => Some((r.param.clone(), url.clone())),
            (Some(t), Some(id), None) => Some((r.param.clone(), format!("{t}/{id}"))),
            _ => None,
        },
        Entry::Uri(u) => Some((u.param.clone(), u.uri.clone())),
        Entry::Position(p) => Some((p.param.clone(), format!("{}|{}|1|km", p.latitude, p.longitude))),
        Entry::Number(n) => Some((
            n.param.clone(),
            match (&n.system, &n.code) {
                (Some(s), Some(c)) => format!("{}|{}|{}", n.value, esc(s), esc(c)),
                (None, Some(c)) => format!("{}||{}", n.value, esc(c)),
                _ => n.value.to_string(),
            },
        )),
        Entry::Composite(c) => {
            let token = |system: &Option<String>, code: &Option<String>| match system {
                Some(s) => format!("{}|{}", esc(s), esc(code.as_deref().unwrap_or(""))),
                None => esc(code.as_deref().unwrap_or("")),
            };
            Some((
                c.param.clone(),
                format!("{}${}", token(&c.system1, &c.code1), token(&c.system2, &c.code2)),
            ))
        }
        _ => None,
    }
}

/// A query value of the parameter's type that no resource in the corpus has.
fn miss_query(kind: tandem::resources::ParamType, param: &str) -> (String, String) {
    use tandem::resources::ParamType::*;
    match kind {
        Token => (param.to_string(), "urn:no-such-system|no-such-code".into()),
        String => (format!("{param}:exact"), "no such text at all".into()),
        Date => (param.to_string(), "eb0001-01-01".into()),
        Reference => (param.to_string(), "Patient/no-such-patient".into()),
        Uri => (param.to_string(), "urn:no-such-uri".into()),
        Composite => (param.to_string(), "urn:no-such-system|a$urn:no-such-system|b".into()),
        Special => (param.to_string(), "-60|-140|10|km".into()), // the southern Pacific
        Number | Quantity => (param.to_string(), "-987654321".into()),
    }
}

enum Entry {
    Token(index::TokenEntry),
    String(index::StringEntry),
    Date(index::DateEntry),
    Reference(index::ReferenceEntry),
    Uri(index::UriEntry),
    Composite(index::CompositeEntry),
    Position(index::PositionEntry),
    Number(index::NumberEntry),
}

async fn ids(app: &TestApp, rt: &str, key: &str, value: &str) -> Vec<String> {
    let res = app
        .client
        .get(app.url(rt))
        .query(&[(key, value), ("_count", "500")])
        .header("Prefer", "handling=strict")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{rt}?{key}={value}");
    let bundle: Value = res.json().await.unwrap();
    bundle["entry"].as_array().map_or(vec![], |e| {
        e.iter()
            .filter(|e| e["search"]["mode"] == "match")
            .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
            .collect()
    })
}

both_backends! {
    async fn every_search_parameter_has_a_hit_and_a_miss(app: TestApp) {
        let mut corpus: Vec<Value> = manifest()
            .into_iter()
            .map(|(_, _, json_file, _)| serde_json::from_str(&fixture(&format!("json/{json_file}"))).unwrap())
            .collect();
        corpus.extend(extra_resources().into_iter().map(|mut r| {
            // The official JSON examples carry no meta: these give _tag, _profile, _security, _source a value.
            r["meta"] = json!({
                "profile": [format!("https://tandem.example.org/fhir/StructureDefinition/{}", r["resourceType"].as_str().unwrap())],
                "source": "https://ehr.example.org/fhir",
                "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}],
                "tag": [{"system": "https://tandem.example.org/fhir/CodeSystem/tag", "code": "imported"}]
            });
            r
        }));
        for r in &corpus {
            let (rt, id) = (r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap());
            put_stubs(&app, rt, id, r).await;
            let res = app.put_json(&format!("{rt}/{id}"), r).await;
            assert!(res.status().is_success(), "{rt}/{id}: {}", res.text().await.unwrap());
        }

        let mut covered: BTreeSet<(String, String)> = BTreeSet::new();
        for r in &corpus {
            let (rt, id) = (r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap());
            let stored = json(app.get(&format!("{rt}/{id}")).await).await;
            let e = index::extract(ResourceType::parse(rt).unwrap(), &stored);
            let entries = e.tokens.into_iter().map(Entry::Token)
                .chain(e.strings.into_iter().map(Entry::String))
                .chain(e.dates.into_iter().map(Entry::Date))
                .chain(e.references.into_iter().map(Entry::Reference))
                .chain(e.uris.into_iter().map(Entry::Uri))
                .chain(e.composites.into_iter().map(Entry::Composite))
                .chain(e.positions.into_iter().map(Entry::Position))
                .chain(e.numbers.into_iter().map(Entry::Number));
            let mut asked = BTreeSet::new();
            for entry in entries {
                let Some((key, value)) = hit_query(&entry) else { continue };
                let param = key.split(':').next().unwrap().to_string();
                if !asked.insert(param.clone()) {
                    continue; // one hit per parameter and resource keeps the run short
                }
                let found = ids(&app, rt, &key, &value).await;
                assert!(found.contains(&id.to_string()), "{rt}?{key}={value} should find {rt}/{id}, found {found:?}");
                covered.insert((rt.to_string(), param));
            }
        }

        let mut uncovered = Vec::new();
        for rt in ResourceType::all() {
            for p in rt.search_params().iter().filter(|p| p.is_searchable()) {
                match p.code.as_str() {
                    "_id" => {
                        assert!(!ids(&app, rt.as_str(), "_id", corpus.iter().find(|r| r["resourceType"] == rt.as_str()).unwrap()["id"].as_str().unwrap()).await.is_empty());
                        assert!(ids(&app, rt.as_str(), "_id", "no-such-id").await.is_empty());
                    }
                    "_lastUpdated" => {
                        assert!(!ids(&app, rt.as_str(), "_lastUpdated", "gt2000-01-01").await.is_empty());
                        assert!(ids(&app, rt.as_str(), "_lastUpdated", "lt2000-01-01").await.is_empty());
                    }
                    code => {
                        if !covered.contains(&(rt.as_str().to_string(), code.to_string())) {
                            uncovered.push(format!("{rt}.{code}"));
                            continue;
                        }
                        let (key, value) = miss_query(p.kind, code);
                        let found = ids(&app, rt.as_str(), &key, &value).await;
                        assert!(found.is_empty(), "{rt}?{key}={value} should find nothing, found {found:?}");
                    }
                }
            }
        }
        assert!(uncovered.is_empty(), "parameters with no hit in the corpus: {uncovered:?}");
    }
}
