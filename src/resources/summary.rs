//! `_summary=true` (search.html#summary): the elements R4 marks as summary (Σ, `isSummary`).
//!
//! `r4-summary-elements.json` lists, per hosted type, the paths whose R4 element definition has
//! `isSummary: true`, taken from the Firely .NET SDK's R4 model classes generated from
//! hl7.fhir.r4.core 4.0.1 (`[FhirElement(…, InSummary=true)]`). Choice elements are listed by their
//! base name (`deceased`); a backbone element whose children are summary is kept as their container
//! even when it is not marked itself (Appointment.participant). Subscription (hosted for rest-hook
//! notifications) was added from the R4 Subscription definition (subscription.html), in which every
//! element is Σ. Encounter and DocumentReference come from the same SDK's R4 classes
//! (FirelyTeam/firely-net-sdk, src/Hl7.Fhir.R4/Model/Generated/{Encounter,DocumentReference}.cs),
//! checked against HAPI's R4 model (`@Child(summary = true)`); Observation, Questionnaire and
//! QuestionnaireResponse from the same files (Observation.cs and Questionnaire.cs at 08d6dba9,
//! QuestionnaireResponse.cs at 0a80a438), checked against HAPI's (hapifhir/org.hl7.fhir.core,
//! org.hl7.fhir.r4 model): Observation.category, Questionnaire.derivedFrom and .description are
//! not Σ in R4 (they became so in R5).
//! Schedule and Slot from the same SDK's Schedule.cs and Slot.cs, checked against HAPI's.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde_json::{Map, Value};

use super::ResourceType;

static TABLE: &str = include_str!("r4-summary-elements.json");

static SUMMARY: LazyLock<BTreeMap<String, Vec<String>>> = LazyLock::new(|| {
    // Compiled into the binary and checked by a unit test.
    #[allow(clippy::expect_used)]
    serde_json::from_str(TABLE).expect("embedded R4 summary element table")
});

/// Resource-level elements every summary keeps (Resource.id, .meta, .implicitRules are Σ).
const ALWAYS: [&str; 4] = ["resourceType", "id", "meta", "implicitRules"];

/// The resource reduced to its summary elements.
pub fn summarize(rt: ResourceType, resource: Value) -> Value {
    let paths: Vec<&str> = SUMMARY
        .get(rt.as_str())
        .map(|v| v.iter().map(String::as_str).collect())
        .unwrap_or_default();
    match resource {
        Value::Object(map) => Value::Object(filter(map, &paths, true)),
        other => other,
    }
}

/// The name a JSON key has in the element definitions (`deceasedBoolean` → `deceased` when that is
/// a listed choice element).
fn element_name<'a>(key: &'a str, paths: &[&'a str]) -> &'a str {
    let listed = |name: &str| {
        paths
            .iter()
            .any(|p| *p == name || p.strip_prefix(name).is_some_and(|r| r.starts_with('.')))
    };
    if listed(key) {
        return key;
    }
    paths
        .iter()
        .map(|p| p.split('.').next().unwrap_or(p))
        .find(|base| {
            key.strip_prefix(base)
                .and_then(|r| r.chars().next())
                .is_some_and(|c| c.is_ascii_uppercase())
        })
        .unwrap_or(key)
}

fn filter(map: Map<String, Value>, paths: &[&str], top: bool) -> Map<String, Value> {
    let mut out = Map::new();
    for (key, value) in map {
        if top && ALWAYS.contains(&key.as_str()) {
            out.insert(key, value);
            continue;
        }
        let name = element_name(&key, paths);
        let marked = paths.contains(&name);
        let prefix = format!("{name}.");
        let children: Vec<&str> = paths.iter().filter_map(|p| p.strip_prefix(prefix.as_str())).collect();
        if !marked && children.is_empty() {
            continue;
        }
        if children.is_empty() {
            out.insert(key, value);
            continue;
        }
        let kept = match value {
            Value::Object(m) => Value::Object(filter(m, &children, false)),
            Value::Array(items) => Value::Array(
                items
                    .into_iter()
                    .map(|v| match v {
                        Value::Object(m) => Value::Object(filter(m, &children, false)),
                        other => other,
                    })
                    .collect(),
            ),
            other => other,
        };
        out.insert(key, kept);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_hosted_type_has_summary_elements() {
        for rt in ResourceType::all() {
            assert!(SUMMARY.get(rt.as_str()).is_some_and(|v| !v.is_empty()), "{rt}");
        }
    }

    #[test]
    fn summaries_keep_marked_elements_choices_and_containers_of_marked_children() {
        let p = json!({"resourceType": "Patient", "id": "1", "meta": {"versionId": "1"}, "text": {"status": "generated", "div": "<div/>"},
            "name": [{"family": "Ng"}], "deceasedBoolean": false, "maritalStatus": {"text": "M"}, "contact": [{"name": {"family": "X"}}],
            "link": [{"other": {"reference": "Patient/2"}, "type": "seealso", "extension": [{"url": "urn:x", "valueString": "y"}]}]});
        let s = summarize(ResourceType::parse("Patient").unwrap(), p);
        assert_eq!(
            s,
            json!({"resourceType": "Patient", "id": "1", "meta": {"versionId": "1"}, "name": [{"family": "Ng"}],
            "deceasedBoolean": false, "link": [{"other": {"reference": "Patient/2"}, "type": "seealso"}]})
        );

        let a = json!({"resourceType": "Appointment", "status": "booked", "comment": "private",
            "participant": [{"actor": {"reference": "Patient/1"}, "status": "accepted", "period": {"start": "2026-01-01"}}]});
        let s = summarize(ResourceType::parse("Appointment").unwrap(), a);
        assert_eq!(
            s,
            json!({"resourceType": "Appointment", "status": "booked",
            "participant": [{"actor": {"reference": "Patient/1"}, "status": "accepted"}]})
        );
    }
}
