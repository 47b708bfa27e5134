//! What tandem knows about the FHIR resource types it hosts: which types, their search parameters (from
//! the official R4 SearchParameter definitions), how to extract index values from a resource, and which
//! references a resource makes. Pure knowledge: this module imports nothing from search, store or api.

pub mod compartment;
pub mod dates;
pub mod index;
pub mod params;
pub mod summary;

pub use params::{ParamType, SearchParam};

/// The resource types this server hosts, in the order the CapabilityStatement lists them.
const HOSTED: [&str; 17] = [
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
    "Subscription",
];

/// The types that one single-valued date places in time, and its search parameter (R4 cardinality
/// 0..1: Appointment.start, CareTeam.period, Consent.dateTime, Encounter.period,
/// Observation.effective[x], PractitionerRole.period, QuestionnaireResponse.authored, Slot.start). Each
/// reference row of such a resource carries that date, so that a search by reference and date is one
/// index range (migration 000009 fills the rows written before it, from this same list).
const TIMELINES: [(&str, &str); 8] = [
    ("Appointment", "date"),
    ("CareTeam", "date"),
    ("Consent", "date"),
    ("Encounter", "date"),
    ("Observation", "date"),
    ("PractitionerRole", "date"),
    ("QuestionnaireResponse", "authored"),
    ("Slot", "start"),
];

/// A resource type hosted here. Only [`ResourceType::parse`] makes one, so holding one proves the
/// type is supported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceType(&'static str);

impl ResourceType {
    pub fn parse(name: &str) -> Option<ResourceType> {
        HOSTED.iter().find(|t| **t == name).map(|t| ResourceType(t))
    }

    pub fn all() -> impl Iterator<Item = ResourceType> {
        HOSTED.iter().map(|t| ResourceType(t))
    }

    pub fn as_str(&self) -> &'static str {
        self.0
    }

    /// The date parameter that places a resource of this type in time, if the type has one
    /// ([`TIMELINES`]): its value is copied onto the resource's reference index rows.
    pub fn timeline(&self) -> Option<&'static str> {
        TIMELINES.iter().find(|(t, _)| *t == self.0).map(|(_, p)| *p)
    }

    /// The search parameters that apply to this type (its own and the common ones).
    pub fn search_params(&self) -> &'static [SearchParam] {
        params::for_type(*self)
    }
}

impl std::fmt::Display for ResourceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// A new server-assigned id: a UUID v7, whose first 48 bits are the time in milliseconds. Ids so
/// made sort in creation order, which is the default search order, and each new row lands at the
/// end of the indexes keyed by id rather than on a random page of them.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// FHIR `id` datatype: 1 to 64 characters of `[A-Za-z0-9\-\.]`.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// A reference made by a resource, as found in any `Reference.reference` inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `Type/id` (or `Type/id/_history/n`) relative to this server.
    Local {
        res_type: String,
        id: String,
        version: Option<String>,
    },
    /// An absolute URL, a `urn:uuid:` / `urn:oid:` or anything else not relative to this server.
    External(String),
    /// `#id`, a contained resource.
    Contained(String),
}

/// Classifies a reference string per http.html#references.
pub fn parse_reference(reference: &str) -> Target {
    if let Some(frag) = reference.strip_prefix('#') {
        return Target::Contained(frag.to_string());
    }
    if reference.contains(':') {
        return Target::External(reference.to_string());
    }
    let parts: Vec<&str> = reference.split('/').collect();
    match parts.as_slice() {
        [t, id] if starts_upper(t) => Target::Local {
            res_type: t.to_string(),
            id: id.to_string(),
            version: None,
        },
        [t, id, "_history", v] if starts_upper(t) => Target::Local {
            res_type: t.to_string(),
            id: id.to_string(),
            version: Some(v.to_string()),
        },
        _ => Target::External(reference.to_string()),
    }
}

/// The id of a relative reference to `res_type` (`Patient/7` → `7`), or None for anything else.
pub fn local_id(reference: &str, res_type: &str) -> Option<String> {
    match parse_reference(reference) {
        Target::Local { res_type: t, id, .. } if t == res_type => Some(id),
        _ => None,
    }
}

fn starts_upper(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_uppercase())
}

/// Every `reference` string of the resource (Reference.reference), in document order. A `reference`
/// element that is itself a Reference (Consent.provision.actor.reference) is looked into.
pub fn references(value: &serde_json::Value) -> Vec<&str> {
    fn walk<'a>(value: &'a serde_json::Value, out: &mut Vec<&'a str>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("reference", serde_json::Value::String(r)) => out.push(r),
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(value, &mut out);
    out
}

/// Replaces every `reference` string of the resource for which `new` gives a replacement (the walk
/// of [`references`], writing).
fn map_references(value: &mut serde_json::Value, new: &mut impl FnMut(&str) -> Option<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                match (key.as_str(), &*v) {
                    ("reference", serde_json::Value::String(r)) => {
                        if let Some(replacement) = new(r) {
                            *v = serde_json::Value::String(replacement);
                        }
                    }
                    _ => map_references(v, new),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| map_references(v, new)),
        _ => {}
    }
}

/// Rewrites every `reference` equal to a `urn:uuid:` fullUrl into the id the server gave it.
pub fn rewrite_references(value: &mut serde_json::Value, ids: &std::collections::HashMap<String, String>) {
    map_references(value, &mut |r| ids.get(r).cloned());
}

/// Rewrites every absolute reference under `base` (this server, as the writer addressed it) to the
/// relative `Type/id` (or `Type/id/_history/v`) it names: references.html — "If the reference is to
/// a resource on the same server, ... the absolute URL and the relative one refer to the same
/// resource". Stored one way, the same actor is the same key everywhere (the double-booking rule,
/// compartments, searches); `http://here/fhir/Practitioner/p` no longer slips past a booking of
/// `Practitioner/p`. A URL under the base that is not `Type/id` is left as it is.
pub fn localize_references(value: &mut serde_json::Value, base: &str) {
    let base = base.trim_end_matches('/');
    if base.is_empty() {
        return;
    }
    map_references(value, &mut |r| same_server(r, base));
}

/// The relative form of `reference` if it is `{base}/Type/id[/_history/v]`. Scheme and host compare
/// without regard to case (RFC 3986 6.2.2.1), the path exactly.
fn same_server(reference: &str, base: &str) -> Option<String> {
    let head = reference.get(..base.len())?;
    let rest = reference[base.len()..].strip_prefix('/')?;
    let (base_origin, base_path) = split_origin(base);
    let (head_origin, head_path) = split_origin(head);
    if !base_origin.eq_ignore_ascii_case(head_origin) || base_path != head_path {
        return None;
    }
    match parse_reference(rest) {
        Target::Local { .. } if !rest.contains('?') => Some(rest.to_string()),
        _ => None,
    }
}

/// `scheme://host[:port]` and the path after it.
fn split_origin(url: &str) -> (&str, &str) {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(i) => url.split_at(after_scheme + i),
        None => (url, ""),
    }
}

/// Every relative reference in the resource to a type hosted here (these must resolve), deduplicated.
pub fn local_references(resource: &serde_json::Value) -> Vec<(ResourceType, String)> {
    let mut out: Vec<(ResourceType, String)> = references(resource)
        .into_iter()
        .filter_map(|r| match parse_reference(r) {
            Target::Local { res_type, id, .. } => ResourceType::parse(&res_type).map(|t| (t, id)),
            _ => None,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hosted_types_parse_and_others_do_not() {
        assert_eq!(ResourceType::parse("Patient").map(|t| t.as_str()), Some("Patient"));
        assert!(ResourceType::parse("MedicationRequest").is_none());
        assert!(ResourceType::parse("patient").is_none());
        assert_eq!(ResourceType::all().count(), 17);
    }

    #[test]
    fn ids_follow_the_fhir_id_datatype() {
        assert!(is_valid_id("abc-1.2"));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("a/b"));
        assert!(!is_valid_id(&"x".repeat(65)));
    }

    #[test]
    fn references_are_classified() {
        assert_eq!(
            parse_reference("Patient/7/_history/2"),
            Target::Local {
                res_type: "Patient".into(),
                id: "7".into(),
                version: Some("2".into())
            }
        );
        assert_eq!(
            parse_reference("https://ehr.example.org/fhir/Patient/7"),
            Target::External("https://ehr.example.org/fhir/Patient/7".into())
        );
        assert_eq!(parse_reference("#p1"), Target::Contained("p1".into()));
        assert_eq!(local_id("Patient/7/_history/2", "Patient").as_deref(), Some("7"));
        assert_eq!(local_id("Group/7", "Patient"), None);
        assert_eq!(local_id("https://ehr.example.org/fhir/Patient/7", "Patient"), None);
    }

    #[test]
    fn local_references_only_name_hosted_types() {
        let r = json!({"resourceType": "Appointment", "participant": [
            {"actor": {"reference": "Patient/1"}},
            {"actor": {"reference": "Device/2"}},
            {"actor": {"reference": "https://ehr.example.org/fhir/Practitioner/3"}},
            {"actor": {"reference": "Patient/1"}}
        ]});
        let refs = local_references(&r);
        assert_eq!(refs, vec![(ResourceType::parse("Patient").unwrap(), "1".to_string())]);
    }

    #[test]
    fn references_under_this_servers_base_become_relative() {
        let mut r = json!({"resourceType": "Appointment", "participant": [
            {"actor": {"reference": "https://Tandem.Example.org/fhir/Practitioner/p1"}},
            {"actor": {"reference": "https://tandem.example.org/fhir/Patient/a/_history/2"}},
            {"actor": {"reference": "https://tandem.example.org/fhirx/Patient/b"}},
            {"actor": {"reference": "https://tandem.example.org/FHIR/Patient/c"}},
            {"actor": {"reference": "https://ehr.example.org/fhir/Patient/7"}},
            {"actor": {"reference": "https://tandem.example.org/fhir/metadata"}},
            {"actor": {"reference": "https://tandem.example.org/fhir/Patient?identifier=x"}}
        ]});
        localize_references(&mut r, "https://tandem.example.org/fhir");
        let refs: Vec<&str> = r["participant"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["actor"]["reference"].as_str().unwrap())
            .collect();
        assert_eq!(
            refs,
            vec![
                "Practitioner/p1",
                "Patient/a/_history/2",
                "https://tandem.example.org/fhirx/Patient/b",
                "https://tandem.example.org/FHIR/Patient/c",
                "https://ehr.example.org/fhir/Patient/7",
                "https://tandem.example.org/fhir/metadata",
                "https://tandem.example.org/fhir/Patient?identifier=x",
            ]
        );
    }
}
