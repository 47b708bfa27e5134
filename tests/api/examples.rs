//! The official R4 examples of our types (tests/fixtures/r4, written by HL7, not by us) survive
//! JSON → XML → JSON through the server unchanged, and the official XML reads back as the official JSON.

use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::*;

pub const HOSTED: [&str; 16] = [
    "Appointment",
    "CareTeam",
    "Consent",
    "DocumentReference",
    "Encounter",
    "Group",
    "Location",
    "Observation",
    "Organization",
    "Patient",
    "Practitioner",
    "PractitionerRole",
    "Questionnaire",
    "QuestionnaireResponse",
    "Schedule",
    "Slot",
];

/// (type, id, json file, xml file) for every example of a hosted type.
pub fn manifest() -> Vec<(String, String, String, String)> {
    fixture("MANIFEST.tsv")
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            HOSTED.contains(&cols[0]).then(|| {
                (
                    cols[0].to_string(),
                    cols[1].to_string(),
                    cols[2].to_string(),
                    cols[3].to_string(),
                )
            })
        })
        .collect()
}

fn local_references(value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v.as_str()) {
                    ("reference", Some(r)) => {
                        let parts: Vec<&str> = r.split('/').collect();
                        if parts.len() >= 2 && HOSTED.contains(&parts[0]) && !r.contains(':') {
                            out.push((parts[0].to_string(), parts[1].to_string()));
                        }
                    }
                    _ => local_references(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| local_references(v, out)),
        _ => {}
    }
}

/// The smallest valid resource of a type, to stand in for a reference target.
fn stub(rt: &str, id: &str) -> Value {
    let mut body = match rt {
        "Group" => json!({"type": "person", "actual": true}),
        "Appointment" => {
            json!({"status": "proposed", "participant": [{"status": "needs-action", "type": [{"text": "stub"}]}]})
        }
        "Consent" => {
            json!({"status": "active", "scope": {"text": "stub"}, "category": [{"text": "stub"}], "policyRule": {"text": "stub"}})
        }
        // org-1: a name or an identifier.
        "Organization" => json!({"name": "stub"}),
        "Encounter" => {
            json!({"status": "finished", "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}})
        }
        "DocumentReference" => {
            json!({"status": "current", "content": [{"attachment": {"contentType": "text/plain", "data": "c3R1Yg=="}}]})
        }
        "Observation" => json!({"status": "final", "code": {"text": "stub"}}),
        "Questionnaire" => json!({"status": "active"}),
        "QuestionnaireResponse" => json!({"status": "completed"}),
        "Schedule" => json!({"actor": [{"display": "stub"}]}),
        "Slot" => {
            json!({"status": "free", "schedule": {"display": "stub"}, "start": "2027-01-01T09:00:00Z", "end": "2027-01-01T10:00:00Z"})
        }
        _ => json!({}),
    };
    body["resourceType"] = json!(rt);
    body["id"] = json!(id);
    body
}

/// A narrative as parsed XHTML: text unescaped, attributes sorted; whitespace kept exactly. The two
/// official files of one example spell the same XHTML differently (`"` or `&quot;`, attribute order).
fn canonical_narrative(v: &mut Value) {
    let Some(div) = v.get_mut("text").and_then(|t| t.get_mut("div")) else {
        return;
    };
    let mut reader = quick_xml::Reader::from_str(div.as_str().unwrap());
    let mut events = Vec::new();
    loop {
        match reader.read_event().expect("well-formed XHTML") {
            quick_xml::events::Event::Start(e) | quick_xml::events::Event::Empty(e) => {
                let mut attrs: Vec<String> = e
                    .attributes()
                    .map(|a| {
                        let a = a.unwrap();
                        format!(
                            "{}={}",
                            String::from_utf8_lossy(a.key.as_ref()),
                            a.unescape_value().unwrap()
                        )
                    })
                    .collect();
                attrs.sort();
                events.push(format!(
                    "<{} {}>",
                    String::from_utf8_lossy(e.name().as_ref()),
                    attrs.join(" ")
                ));
            }
            quick_xml::events::Event::End(e) => {
                events.push(format!("</{}>", String::from_utf8_lossy(e.name().as_ref())))
            }
            quick_xml::events::Event::Text(t) => events.push(t.unescape().unwrap().into_owned()),
            quick_xml::events::Event::Eof => break,
            _ => {}
        }
    }
    *div = json!(events.concat());
}

/// The resource without what the server keeps itself: meta.versionId, meta.lastUpdated, and the
/// quantity of a Group that carries its roster (the server sets it to the active member count).
fn without_server_meta(mut v: Value) -> Value {
    if v["resourceType"] == "Group" && v.get("member").is_some() {
        v.as_object_mut().unwrap().remove("quantity");
    }
    if let Some(meta) = v.get_mut("meta").and_then(Value::as_object_mut) {
        meta.remove("versionId");
        meta.remove("lastUpdated");
        if meta.is_empty() {
            v.as_object_mut().unwrap().remove("meta");
        }
    }
    v
}

/// Where two JSON values first differ, as a path with both sides, for readable failures.
fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|k| match (x.get(k), y.get(k)) {
                (Some(l), Some(r)) => first_difference(l, r, &format!("{path}.{k}")),
                (l, r) => Some(format!("{path}.{k}: {l:?} vs {r:?}")),
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (l, r))| first_difference(l, r, &format!("{path}[{i}]"))),
        _ if a == b => None,
        _ => Some(format!("{path}: {a} vs {b}")),
    }
}

pub async fn put_stubs(app: &TestApp, rt: &str, id: &str, example: &Value) {
    let mut refs = Vec::new();
    local_references(example, &mut refs);
    for (t, target) in refs {
        if (t.as_str(), target.as_str()) == (rt, id) || app.get(&format!("{t}/{target}")).await.status() == 200 {
            continue;
        }
        let res = app.put_json(&format!("{t}/{target}"), &stub(&t, &target)).await;
        assert!(
            res.status().is_success(),
            "stub {t}/{target}: {}",
            res.text().await.unwrap()
        );
    }
}

both_backends! {
    async fn official_examples_round_trip_json_xml_json(app: TestApp) {
        let examples = manifest();
        assert!(examples.len() >= 30, "the fixtures hold the official examples");
        for (rt, id, json_file, _) in examples {
            let original: Value = serde_json::from_str(&fixture(&format!("json/{json_file}"))).unwrap();
            put_stubs(&app, &rt, &id, &original).await;
            let path = format!("{rt}/{id}");
            let res = app.put_json(&path, &original).await;
            assert!(res.status().is_success(), "{json_file}: {}", res.text().await.unwrap());

            let xml = app.get(&format!("{path}?_format=xml")).await.text().await.unwrap();
            let res = app.client.put(app.url(&path)).header("Content-Type", FHIR_XML).body(xml).send().await.unwrap();
            assert_eq!(res.status(), 200, "{json_file} as XML: {}", res.text().await.unwrap());

            let back = json(app.get(&path).await).await;
            let (back, original) = (without_server_meta(back), without_server_meta(original));
            assert!(back == original, "{json_file}: {:?}", first_difference(&back, &original, ""));
        }
    }

    async fn official_xml_examples_read_back_as_the_official_json(app: TestApp) {
        for (rt, id, json_file, xml_file) in manifest().into_iter().filter(|(_, _, _, xml)| !xml.is_empty()) {
            let official_json: Value = serde_json::from_str(&fixture(&format!("json/{json_file}"))).unwrap();
            put_stubs(&app, &rt, &id, &official_json).await;
            let path = format!("{rt}/{id}");
            let res = app.client.put(app.url(&path)).header("Content-Type", FHIR_XML).body(fixture(&format!("xml/{xml_file}"))).send().await.unwrap();
            assert!(res.status().is_success(), "{xml_file}: {}", res.text().await.unwrap());
            let mut back = json(app.get(&path).await).await;
            let mut expected = official_json;
            // The XML examples carry an extra HTEST security label in meta; compare everything else.
            back.as_object_mut().unwrap().remove("meta");
            expected.as_object_mut().unwrap().remove("meta");
            canonical_narrative(&mut back);
            canonical_narrative(&mut expected);
            let (back, expected) = (without_server_meta(back), without_server_meta(expected));
            assert!(back == expected, "{xml_file}: {:?}", first_difference(&back, &expected, ""));
        }
    }
}
