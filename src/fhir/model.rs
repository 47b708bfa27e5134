//! The R4 element definitions of the resources tandem serves (`r4-elements.json`, made by
//! `.ci/gen_r4_elements.py` from fhirbolt-model, which was generated from hl7.fhir.r4.core 4.0.1):
//! what checks what fhirbolt's parser leaves open — primitive formats (datatypes.html: a `date` is a
//! date, an `id` an id), required code bindings (`Appointment.status`), and repeating elements that
//! must appear at least once — and what the OpenAPI document describes.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Clone, Deserialize)]
pub struct Choice {
    pub suffix: String,
    #[serde(rename = "type")]
    pub type_name: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Element {
    pub name: String,
    pub min: u32,
    /// "1" or "*".
    pub max: String,
    pub doc: String,
    #[serde(rename = "type")]
    pub type_name: Option<String>,
    /// A choice element (`value[x]`): each type and the suffix of its JSON name.
    pub choice: Option<Vec<Choice>>,
    /// The codes of a required binding.
    pub codes: Option<Vec<String>>,
}

impl Element {
    pub fn repeats(&self) -> bool {
        self.max == "*"
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct TypeDef {
    /// resource, backbone or datatype.
    pub kind: String,
    /// The element path (`Appointment.participant` for a backbone element).
    pub path: String,
    pub doc: String,
    pub elements: Vec<Element>,
}

#[derive(Deserialize)]
struct Table {
    types: BTreeMap<String, TypeDef>,
}

static TABLE: &str = include_str!("r4-elements.json");

static TYPES: LazyLock<BTreeMap<String, TypeDef>> = LazyLock::new(|| {
    // Compiled into the binary and checked by a unit test: it cannot fail at run time.
    #[allow(clippy::expect_used)]
    let table: Table = serde_json::from_str(TABLE).expect("embedded R4 element table");
    table.types
});

/// Every type of the table, by name (`Patient`, `AppointmentParticipant`, `Period`…).
pub fn types() -> &'static BTreeMap<String, TypeDef> {
    &TYPES
}

/// The regular expression of a primitive type's string form (datatypes.html), for documentation.
pub fn primitive_pattern(type_name: &str) -> Option<&'static str> {
    Some(match type_name {
        "date" => {
            r"^([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1]))?)?$"
        }
        "dateTime" => {
            r"^([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1])(T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00)))?)?)?$"
        }
        "instant" => {
            r"^([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)-(0[1-9]|1[0-2])-(0[1-9]|[1-2][0-9]|3[0-1])T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00))$"
        }
        "time" => r"^([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?$",
        "id" => r"^[A-Za-z0-9\-\.]{1,64}$",
        "code" => r"^[^\s]+(\s[^\s]+)*$",
        "oid" => r"^urn:oid:[0-2](\.(0|[1-9][0-9]*))+$",
        "uuid" => r"^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
        "uri" | "url" | "canonical" => r"^\S*$",
        "base64Binary" => r"^(\s*([0-9a-zA-Z\+/=]){4}\s*)+$",
        _ => return None,
    })
}

/// A valid value of a primitive type that has a pattern, for the OpenAPI document's `examples`.
/// A renderer that builds sample bodies (Swagger UI at /docs) takes it instead of generating a
/// string from the pattern: that generation (randexp over FHIR's date and time expressions) was
/// most of the time an opened operation took to show, and its strings were not valid FHIR.
pub fn primitive_example(type_name: &str) -> Option<&'static str> {
    Some(match type_name {
        "date" => "2026-01-15",
        "dateTime" => "2026-01-15T09:00:00Z",
        "instant" => "2026-01-15T09:00:00.000Z",
        "time" => "09:00:00",
        "id" => "example",
        "code" => "example",
        "oid" => "urn:oid:2.16.840.1.113883.4.642",
        "uuid" => "urn:uuid:c757873d-ec9a-4326-a141-556f43239520",
        "uri" => "http://example.org/fhir",
        "url" => "https://example.org/fhir",
        "canonical" => "http://example.org/fhir/StructureDefinition/example",
        "base64Binary" => "aGVsbG8=",
        _ => return None,
    })
}

fn digits(s: &str, n: usize) -> Option<u32> {
    (s.len() == n && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// `YYYY`, `YYYY-MM` or `YYYY-MM-DD`, a real calendar date.
fn is_date(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    match parts.as_slice() {
        [y] => digits(y, 4).is_some_and(|y| y > 0),
        [y, m] => digits(y, 4).is_some_and(|y| y > 0) && digits(m, 2).is_some_and(|m| (1..=12).contains(&m)),
        [_, _, d] if d.len() == 2 => crate::resources::dates::parse_range(s).is_some(),
        _ => false,
    }
}

/// `hh:mm:ss[.f…]`.
fn is_time(s: &str) -> bool {
    let (clock, fraction) = s.split_once('.').unwrap_or((s, "0"));
    let parts: Vec<&str> = clock.split(':').collect();
    let ok = match parts.as_slice() {
        [h, m, sec] => {
            digits(h, 2).is_some_and(|h| h < 24)
                && digits(m, 2).is_some_and(|m| m < 60)
                && digits(sec, 2).is_some_and(|sec| sec <= 60)
        }
        _ => false,
    };
    ok && !fraction.is_empty() && fraction.bytes().all(|b| b.is_ascii_digit())
}

/// A full date, `T`, a time with seconds, and a zone.
fn is_instant(s: &str) -> bool {
    let Some((date, rest)) = s.split_once('T') else {
        return false;
    };
    if date.len() != 10 || !is_date(date) {
        return false;
    }
    let (clock, zone) = if let Some(c) = rest.strip_suffix('Z') {
        (c, None)
    } else {
        match rest.rfind(['+', '-']) {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => return false,
        }
    };
    let zone_ok = zone.is_none_or(|z| match z.split_once(':') {
        Some((h, m)) => (digits(h, 2).is_some_and(|h| h <= 13) && digits(m, 2).is_some_and(|m| m < 60)) || z == "14:00",
        None => false,
    });
    zone_ok && is_time(clock)
}

fn is_code(s: &str) -> bool {
    !s.is_empty() && s.trim() == s && !s.contains("  ") && !s.contains(['\t', '\n', '\r'])
}

fn is_base64(s: &str) -> bool {
    let compact: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    compact.len().is_multiple_of(4)
        && compact
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
}

/// Why a primitive value is not of its type, or None when it is.
fn primitive_problem(type_name: &str, value: &Value) -> Option<String> {
    let text = value.as_str();
    let ok = match (type_name, text) {
        ("date", Some(s)) => is_date(s),
        ("dateTime", Some(s)) => is_date(s) || is_instant(s),
        ("instant", Some(s)) => is_instant(s),
        ("time", Some(s)) => is_time(s),
        ("id", Some(s)) => crate::resources::is_valid_id(s),
        ("code", Some(s)) => is_code(s),
        ("oid", Some(s)) => s.strip_prefix("urn:oid:").is_some_and(|rest| {
            rest.split('.').count() >= 2
                && rest
                    .split('.')
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        }),
        ("uuid", Some(s)) => s.strip_prefix("urn:uuid:").is_some_and(|u| {
            u.len() == 36
                && u.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase() || b == b'-')
        }),
        ("uri" | "url" | "canonical", Some(s)) => !s.chars().any(char::is_whitespace),
        ("base64Binary", Some(s)) => is_base64(s),
        ("string" | "markdown", Some(s)) => !s.is_empty(),
        // datatypes.html: integer is a signed 32-bit value, unsignedInt 0..2^31-1, positiveInt
        // 1..2^31-1 (fhirbolt holds the latter two as u32 and lets 2147483648 and beyond through).
        // A null stands in a repeating element for an item that has only an extension (json.html).
        ("integer" | "positiveInt" | "unsignedInt", _) if value.is_null() => true,
        ("integer", _) => value.as_i64().is_some_and(|n| i32::try_from(n).is_ok()),
        ("positiveInt", _) => value.as_i64().is_some_and(|n| (1..=i64::from(i32::MAX)).contains(&n)),
        ("unsignedInt", _) => value.as_i64().is_some_and(|n| (0..=i64::from(i32::MAX)).contains(&n)),
        _ => true,
    };
    (!ok).then(|| format!("{value} is not a valid FHIR {type_name}"))
}

/// Checks a resource (canonical JSON, already parsed by the R4 model) against the element table:
/// primitive formats, required code bindings, and repeating elements that must not be absent.
/// Types the table does not hold (inside `contained` or a Bundle entry) are left to the parser.
pub fn validate(resource: &Value) -> Result<(), String> {
    let Some(rt) = resource.get("resourceType").and_then(Value::as_str) else {
        return Ok(());
    };
    let Some(def) = types().get(rt) else { return Ok(()) };
    check_object(def, resource, rt)
}

fn check_object(def: &TypeDef, value: &Value, path: &str) -> Result<(), String> {
    let Some(map) = value.as_object() else { return Ok(()) };
    for element in &def.elements {
        let present: Vec<(String, &str)> = match &element.choice {
            Some(choices) => choices
                .iter()
                .map(|c| (format!("{}{}", element.name, c.suffix), c.type_name.as_str()))
                .filter(|(k, _)| map.contains_key(k))
                .collect(),
            None => match &element.type_name {
                Some(t) if map.contains_key(&element.name) => vec![(element.name.clone(), t.as_str())],
                _ => Vec::new(),
            },
        };
        if present.is_empty() && element.min >= 1 {
            return Err(if element.repeats() {
                format!("{path}.{} must have at least one value", element.name)
            } else {
                format!("{path}.{} is required", element.name)
            });
        }
        for (key, type_name) in present {
            let child = &map[&key];
            let items: Vec<&Value> = match child {
                Value::Array(a) => a.iter().collect(),
                one => vec![one],
            };
            if element.min >= 1 && items.is_empty() {
                return Err(format!("{path}.{key} must have at least one value"));
            }
            for item in items {
                let here = format!("{path}.{key}");
                if let Some(problem) = primitive_problem(type_name, item) {
                    return Err(format!("{here}: {problem}"));
                }
                if let (Some(codes), Some(code)) = (&element.codes, item.as_str()) {
                    if !codes.iter().any(|c| c == code) {
                        return Err(format!("{here}: '{code}' is not one of {}", codes.join(", ")));
                    }
                }
                if type_name == "Resource" {
                    validate(item)?;
                } else if let Some(child_def) = types().get(type_name) {
                    check_object(child_def, item, &here)?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_table_holds_the_served_types() {
        for t in [
            "Patient",
            "Appointment",
            "Group",
            "Consent",
            "Subscription",
            "Bundle",
            "OperationOutcome",
        ] {
            assert!(types().contains_key(t), "{t}");
        }
        assert_eq!(types()["Appointment"].kind, "resource");
    }

    #[test]
    fn primitive_formats_follow_datatypes_html() {
        for (t, good, bad) in [
            ("date", "2026-02-28", "2026-02-30"),
            ("date", "2026", "26"),
            ("dateTime", "2026-11-24T10:00:00+01:00", "2026-11-24T10:00"),
            ("dateTime", "2026-11", "2026-11-24T10:00:00"),
            ("instant", "2026-11-24T10:00:00.123Z", "2026-11-24"),
            ("time", "23:59:60", "24:00:00"),
            ("code", "booked", " booked"),
            ("id", "a-1.b", "a_1"),
            ("uuid", "urn:uuid:0b5d8a2c-9a4e-4e38-9c1d-2f0a3cbd1e01", "urn:uuid:0B5D"),
            ("oid", "urn:oid:1.2.36", "urn:oid:x"),
            ("base64Binary", "aGVsbG8=", "aGVsbG8"),
            ("uri", "http://x/y", "http://x y"),
        ] {
            assert!(primitive_problem(t, &json!(good)).is_none(), "{t} {good}");
            assert!(primitive_problem(t, &json!(bad)).is_some(), "{t} {bad}");
        }
        assert!(primitive_problem("positiveInt", &json!(0)).is_some());
        assert!(primitive_problem("unsignedInt", &json!(0)).is_none());
        for (t, largest) in [
            ("integer", 2147483647i64),
            ("unsignedInt", 2147483647),
            ("positiveInt", 2147483647),
        ] {
            assert!(primitive_problem(t, &json!(largest)).is_none(), "{t}");
            assert!(primitive_problem(t, &json!(largest + 1)).is_some(), "{t}");
        }
        assert!(primitive_problem("integer", &json!(-2147483648i64)).is_none());
        assert!(primitive_problem("integer", &json!(-2147483649i64)).is_some());
    }

    #[test]
    fn every_patterned_primitive_has_a_valid_example() {
        for t in [
            "date",
            "dateTime",
            "instant",
            "time",
            "id",
            "code",
            "oid",
            "uuid",
            "uri",
            "url",
            "canonical",
            "base64Binary",
        ] {
            assert!(primitive_pattern(t).is_some(), "{t}");
            let example = primitive_example(t).unwrap_or_else(|| panic!("{t} has no example"));
            assert!(primitive_problem(t, &json!(example)).is_none(), "{t} {example}");
        }
        assert!(primitive_example("string").is_none());
    }

    #[test]
    fn resources_are_checked_deeply() {
        let ok = json!({"resourceType": "Appointment", "status": "booked",
            "participant": [{"status": "accepted", "period": {"start": "2026-12-01T10:00:00Z"}}]});
        assert!(validate(&ok).is_ok());
        let mut bad_status = ok.clone();
        bad_status["status"] = json!("confirmed");
        assert!(validate(&bad_status).unwrap_err().contains("Appointment.status"));
        let mut bad_date = ok.clone();
        bad_date["participant"][0]["period"]["start"] = json!("yesterday");
        assert!(validate(&bad_date).unwrap_err().contains("participant.period.start"));
        let mut no_participant = ok.clone();
        no_participant.as_object_mut().unwrap().remove("participant");
        assert!(validate(&no_participant).is_err());
        let consent = json!({"resourceType": "Consent", "status": "active", "category": [{"text": "x"}]});
        assert!(validate(&consent).unwrap_err().contains("Consent.scope is required"));
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": {"resourceType": "Patient", "birthDate": "1980-13-01"}}]});
        assert!(validate(&bundle).unwrap_err().contains("Patient.birthDate"));
    }
}
