//! The wire: FHIR formats (JSON and XML through fhirbolt's R4 model), content negotiation,
//! OperationOutcome, Bundle and the CapabilityStatement.

pub mod capability;
pub mod invariants;
pub mod model;
pub mod narrative;
pub mod prescan;

use fhirbolt::model::r4::Resource as R4Resource;
use fhirbolt::serde::{DeserializationConfig, DeserializationMode};
use serde_json::{json, Value};

use crate::error::Error;

pub const FHIR_VERSION: &str = "4.0.1";

pub use prescan::Limits;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Xml,
}

impl Format {
    pub fn content_type(&self) -> &'static str {
        match self {
            Format::Json => "application/fhir+json; charset=utf-8",
            Format::Xml => "application/fhir+xml; charset=utf-8",
        }
    }

    /// The mime types listed in the CapabilityStatement.
    pub const ADVERTISED: [&'static str; 2] = ["application/fhir+json", "application/fhir+xml"];

    /// A FHIR mime type or `_format` value (json, xml, application/fhir+json, text/xml …).
    fn from_mime(mime: &str) -> Option<Format> {
        let essence = mime.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        match essence.as_str() {
            "json" | "application/fhir+json" | "application/json" | "application/json+fhir" => Some(Format::Json),
            "xml" | "application/fhir+xml" | "application/xml" | "text/xml" | "application/xml+fhir" => {
                Some(Format::Xml)
            }
            _ => None,
        }
    }

    /// The response format: `_format` wins over Accept (http.html#mime-type); JSON is the default.
    /// A FHIR type that asks for another FHIR version (`fhirVersion`, http.html#version-parameter)
    /// is not one this server can answer.
    pub fn negotiate(format_param: Option<&str>, accept: Option<&str>) -> Result<Format, Error> {
        if let Some(f) = format_param {
            let format = Format::from_mime(f)
                .ok_or_else(|| Error::NotAcceptable(format!("_format '{f}' is not supported; use json or xml")))?;
            return match other_fhir_version(f) {
                Some(v) => Err(Error::NotAcceptable(wrong_version("_format", v))),
                None => Ok(format),
            };
        }
        let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
            return Ok(Format::Json);
        };
        let mut ranges: Vec<(f32, usize, &str)> = accept
            .split(',')
            .enumerate()
            .map(|(i, item)| {
                let q = item
                    .split(';')
                    .skip(1)
                    .filter_map(|p| p.trim().strip_prefix("q="))
                    .find_map(|q| q.trim().parse::<f32>().ok())
                    .unwrap_or(1.0);
                (q, i, item)
            })
            .filter(|(q, _, _)| *q > 0.0)
            .collect();
        ranges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut asked_version = None;
        for (_, _, item) in ranges {
            let mime = item.split(';').next().unwrap_or("").trim();
            if let Some(v) = other_fhir_version(item) {
                asked_version.get_or_insert(v);
                continue;
            }
            if let Some(f) = Format::from_mime(mime) {
                return Ok(f);
            }
            if mime == "*/*" || mime == "application/*" {
                return Ok(Format::Json);
            }
        }
        Err(Error::NotAcceptable(match asked_version {
            Some(v) => wrong_version("Accept", v),
            None => "none of the Accept types is supported; use application/fhir+json or application/fhir+xml".into(),
        }))
    }

    /// The format of a request body, from its Content-Type.
    pub fn from_content_type(content_type: Option<&str>) -> Result<Format, Error> {
        let ct = content_type.ok_or_else(|| {
            Error::UnsupportedMediaType(
                "Content-Type is required: application/fhir+json or application/fhir+xml".into(),
            )
        })?;
        let charset_ok = mime_params(ct)
            .filter(|(k, _)| k.eq_ignore_ascii_case("charset"))
            .all(|(_, v)| v.eq_ignore_ascii_case("utf-8"));
        if let Some(v) = other_fhir_version(ct) {
            return Err(Error::UnsupportedMediaType(wrong_version("Content-Type", v)));
        }
        match Format::from_mime(ct) {
            Some(f) if charset_ok => Ok(f),
            Some(_) => Err(Error::UnsupportedMediaType(
                "only the UTF-8 charset is supported".into(),
            )),
            None => Err(Error::UnsupportedMediaType(format!(
                "Content-Type '{}' is not supported; use application/fhir+json or application/fhir+xml",
                ct.split(';').next().unwrap_or("").trim()
            ))),
        }
    }
}

/// The `fhirVersion` a mime type names when it is not this server's: R4, written `4.0` (the
/// spec's form, http.html#version-parameter) or `4.0.1`.
fn other_fhir_version(mime: &str) -> Option<&str> {
    mime_params(mime)
        .filter(|(k, _)| k.eq_ignore_ascii_case("fhirVersion"))
        .map(|(_, v)| v)
        .find(|v| *v != "4.0" && *v != FHIR_VERSION)
}

/// The `name=value` parameters of a mime type, trimmed, quotes taken off the value.
fn mime_params(mime: &str) -> impl Iterator<Item = (&str, &str)> {
    mime.split(';')
        .skip(1)
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim().trim_matches('"')))
}

fn wrong_version(source: &str, asked: &str) -> String {
    format!("{source} asks for fhirVersion={asked}; this server speaks FHIR R4 only (fhirVersion=4.0)")
}

/// Refuses a body that holds more than `limits` allow (413 for too many elements, 400 too-costly
/// for too deep a nesting), from one cheap pass over its bytes, before anything is built from it.
/// A body that is not well-formed is left to the parser that reads it next, which says why.
pub fn check_size(body: &[u8], format: Format, limits: Limits) -> Result<(), Error> {
    let scanned = match format {
        Format::Json => prescan::json(body, limits),
        // Not UTF-8: the XML parser refuses it.
        Format::Xml => std::str::from_utf8(body).map_or(Ok(()), |text| prescan::xml(text, limits)),
    };
    match scanned {
        Err(refusal @ prescan::Refusal::TooManyElements(_)) => Err(Error::PayloadTooLarge(format!(
            "{refusal}; this server takes at most {} (TANDEM_MAX_RESOURCE_ELEMENTS)",
            limits.max_elements
        ))),
        Err(refusal @ prescan::Refusal::TooDeep(_)) => Err(Error::TooCostly(format!(
            "{refusal}; this server takes at most {} levels (TANDEM_MAX_RESOURCE_DEPTH)",
            limits.max_depth
        ))),
        Err(prescan::Refusal::Malformed(_)) | Ok(()) => Ok(()),
    }
}

/// Parses a request body into the R4 model (strict: unknown elements are refused) and returns it in
/// its canonical JSON form. What breaks FHIR's structure is a 400 (a control character, a primitive
/// of the wrong form, a missing required element); valid structure that breaks an invariant of R4
/// (narratives of the allowed XHTML only, a period that ends before it starts…) is a 422 naming
/// each one ([`invariants`]). Narratives are kept verbatim.
pub fn parse_resource(body: &[u8], format: Format) -> Result<Value, Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::Invalid(
            "the request body is empty; a FHIR resource is expected".into(),
        ));
    }
    let config = Some(DeserializationConfig {
        mode: DeserializationMode::Strict,
    });
    let what = if format == Format::Json { "JSON" } else { "XML" };
    let invalid = |e: String| Error::Structure(format!("the body is not a valid FHIR R4 resource in {what}: {e}"));
    let value = match format {
        Format::Json => {
            // fhirbolt reads the first value only and keeps the last of duplicate keys: one
            // document, each key once, is checked here (json.html: a resource is one JSON object).
            prescan::json(body, Limits::SYNTAX).map_err(|r| invalid(r.to_string()))?;
            let resource: R4Resource =
                guarded(|| fhirbolt::json::from_slice(body, config)).map_err(|e| invalid(e.to_string()))?;
            to_json(resource)?
        }
        Format::Xml => {
            let text = std::str::from_utf8(body).map_err(|e| invalid(format!("not UTF-8 ({e})")))?;
            prescan::xml(text, Limits::SYNTAX).map_err(|r| invalid(r.to_string()))?;
            let token = uuid::Uuid::new_v4().simple().to_string();
            let (xml, divs) = narrative::cut_from_xml(text, &token);
            let resource: R4Resource =
                guarded(|| fhirbolt::xml::from_str(&xml, config)).map_err(|e| invalid(e.to_string()))?;
            let mut value = to_json(resource)?;
            narrative::restore_input(&mut value, &token, &divs);
            value
        }
    };
    let mut path = value
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or("Resource")
        .to_string();
    check_content(&value, &mut path).map_err(Error::Structure)?;
    model::validate(&value).map_err(|e| Error::Structure(format!("the body is not a valid FHIR R4 resource: {e}")))?;
    invariants::check(&value)?;
    Ok(value)
}

/// The first character that a FHIR string may not hold (datatypes.html#string: none below 32 but
/// tab, carriage return and line feed).
pub fn control_character(s: &str) -> Option<char> {
    s.chars().find(|c| (*c as u32) < 32 && !matches!(c, '\t' | '\r' | '\n'))
}

/// The rule every string of a parsed resource obeys, whatever its type, with the path of the first
/// that breaks it: datatypes.html#string: "Strings SHALL NOT contain Unicode character points below
/// 32, except for u0009 (horizontal tab), u000D (carriage return) and u000A (line feed)" (regex
/// `[ \r\n\t\S]+`). It holds for every primitive's string form (code, id, uri… are strings with
/// more rules), the narrative included; a NUL is also what PostgreSQL cannot store in text (it
/// answered 500).
fn check_content(value: &Value, path: &mut String) -> Result<(), String> {
    match value {
        Value::String(s) => match control_character(s) {
            Some(c) => Err(format!(
                "{path}: a FHIR string SHALL NOT contain control characters (here U+{:04X}; datatypes.html#string)",
                c as u32
            )),
            None => Ok(()),
        },
        Value::Array(items) => {
            let len = path.len();
            for (i, item) in items.iter().enumerate() {
                path.push_str(&format!("[{i}]"));
                check_content(item, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        Value::Object(map) => {
            let len = path.len();
            for (key, child) in map {
                path.push('.');
                path.push_str(key);
                check_content(child, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn to_json(resource: R4Resource) -> Result<Value, Error> {
    guarded(|| fhirbolt::json::to_json_value(resource, None))
        .map_err(|e| Error::Internal(format!("serializing a parsed resource: {e}")))
}

/// Runs a fhirbolt call, turning a panic inside it (it has a few `unwrap`s on shapes it does not
/// expect) into an error, so that no input can take a worker down.
fn guarded<T, E: std::fmt::Display>(work: impl FnOnce() -> Result<T, E>) -> Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err("the FHIR model library could not process this content".into()),
    }
}

/// FHIR JSON has no empty arrays, empty objects or nulls (json.html): leave them out of what is sent.
fn prune_empty(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.values_mut().for_each(prune_empty);
            map.retain(|_, v| match v {
                Value::Null => false,
                Value::Array(a) => !a.is_empty(),
                Value::Object(o) => !o.is_empty(),
                _ => true,
            });
        }
        Value::Array(items) => items.iter_mut().for_each(prune_empty),
        _ => {}
    }
}

/// Renders a resource (canonical JSON) in the wanted format. XML goes through the typed model, so
/// whatever leaves is valid R4 (and is always indented).
pub fn render(resource: &Value, format: Format, pretty: bool) -> Result<Vec<u8>, Error> {
    let mut value = resource.clone();
    prune_empty(&mut value);
    match format {
        Format::Json if pretty => {
            serde_json::to_vec_pretty(&value).map_err(|e| Error::Internal(format!("rendering JSON: {e}")))
        }
        Format::Json => serde_json::to_vec(&value).map_err(|e| Error::Internal(format!("rendering JSON: {e}"))),
        Format::Xml => {
            let token = uuid::Uuid::new_v4().simple().to_string();
            let divs = narrative::cut_from_json(&mut value, &token);
            let typed: R4Resource = guarded(|| fhirbolt::json::from_json_value(value, None))
                .map_err(|e| Error::Internal(format!("rendering XML: {e}")))?;
            let xml = guarded(|| fhirbolt::xml::to_string(&typed, None))
                .map_err(|e| Error::Internal(format!("rendering XML: {e}")))?;
            Ok(narrative::splice_output(&xml, &token, &divs).into_bytes())
        }
    }
}

/// An OperationOutcome with one issue.
pub fn operation_outcome(severity: &str, code: &str, diagnostics: &str) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{ "severity": severity, "code": code, "diagnostics": diagnostics }]
    })
}

/// The OperationOutcome of an error: one issue, or one per broken invariant, each with the path of
/// its element as `expression`.
pub fn error_outcome(e: &Error, request_id: &str) -> Value {
    let (_, code) = e.status_and_code();
    match e {
        Error::Invariant(broken) => json!({
            "resourceType": "OperationOutcome",
            "issue": broken.iter().map(|b| json!({
                "severity": "error",
                "code": code,
                "diagnostics": b.diagnostics,
                "expression": [b.expression],
            })).collect::<Vec<_>>()
        }),
        _ => operation_outcome("error", code, &e.diagnostics(request_id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_parameter_wins_over_accept() {
        assert_eq!(
            Format::negotiate(Some("xml"), Some("application/fhir+json")).unwrap(),
            Format::Xml
        );
        assert_eq!(
            Format::negotiate(None, Some("application/fhir+xml")).unwrap(),
            Format::Xml
        );
        assert_eq!(Format::negotiate(None, None).unwrap(), Format::Json);
        assert_eq!(
            Format::negotiate(None, Some("text/html, */*;q=0.8")).unwrap(),
            Format::Json
        );
        assert_eq!(
            Format::negotiate(None, Some("application/fhir+json;q=0.5, application/fhir+xml")).unwrap(),
            Format::Xml
        );
        assert!(Format::negotiate(None, Some("text/plain")).is_err());
        assert!(Format::negotiate(Some("csv"), None).is_err());
    }

    #[test]
    fn content_types_are_checked() {
        assert_eq!(
            Format::from_content_type(Some("application/fhir+json; charset=UTF-8")).unwrap(),
            Format::Json
        );
        assert_eq!(Format::from_content_type(Some("text/xml")).unwrap(), Format::Xml);
        assert!(Format::from_content_type(Some("text/plain")).is_err());
        assert!(Format::from_content_type(Some("application/fhir+json; charset=latin1")).is_err());
        assert!(Format::from_content_type(None).is_err());
    }

    #[test]
    fn unknown_elements_are_refused() {
        let err = parse_resource(br#"{"resourceType":"Patient","colour":"blue"}"#, Format::Json).unwrap_err();
        assert!(matches!(err, Error::Structure(_)));
    }

    #[test]
    fn narratives_keep_their_inline_whitespace_in_both_formats() {
        let div = r#"<div xmlns="http://www.w3.org/1999/xhtml"><p>No <b>penicillin</b> allergy</p></div>"#;
        let p =
            json!({"resourceType": "Patient", "id": "1", "text": {"status": "generated", "div": div}, "active": true});
        let xml = String::from_utf8(render(&p, Format::Xml, false).unwrap()).unwrap();
        assert!(xml.contains(div), "{xml}");
        assert!(xml.contains("\n  <id value=\"1\"/>"), "{xml}");
        let back = parse_resource(xml.as_bytes(), Format::Xml).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn deeply_nested_input_is_refused_not_a_stack_overflow() {
        let depth = 100_000;
        let xml = format!(
            r#"<Patient xmlns="http://hl7.org/fhir">{}{}</Patient>"#,
            r#"<extension url="urn:x">"#.repeat(depth),
            "</extension>".repeat(depth)
        );
        assert!(matches!(
            parse_resource(xml.as_bytes(), Format::Xml),
            Err(Error::Structure(_))
        ));
        let json = format!(
            r#"{{"resourceType":"Patient","extension":{}{}}}"#,
            r#"[{"url":"urn:x","extension":"#.repeat(depth),
            "[]}]".repeat(depth)
        );
        assert!(matches!(
            parse_resource(json.as_bytes(), Format::Json),
            Err(Error::Structure(_))
        ));
    }

    #[test]
    fn malformed_narratives_are_refused() {
        let body = br#"{"resourceType":"Patient","text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>open</div>"}}"#;
        assert!(matches!(parse_resource(body, Format::Json), Err(Error::Structure(_))));
    }

    #[test]
    fn malformed_or_forbidden_content_is_refused_with_its_path() {
        let refused = |body: &str, format: Format| match parse_resource(body.as_bytes(), format) {
            Err(Error::Structure(m)) => m,
            other => panic!("{body}: {other:?}"),
        };
        let json_cases = [
            (r#"{"resourceType":"Patient"} garbage"#, "trailing"),
            (r#"{"resourceType":"Patient"}{"resourceType":"Patient"}"#, "trailing"),
            (r#"{"resourceType":"Patient","id":"a","id":"b"}"#, "the key 'id' twice"),
            (
                "{\"resourceType\":\"Patient\",\"name\":[{\"family\":\"a\\u0000b\"}]}",
                "Patient.name[0].family: a FHIR string SHALL NOT contain control characters (here U+0000",
            ),
            (
                "{\"resourceType\":\"Patient\",\"name\":[{\"given\":[\"x\",\"a\\u0001\"]}]}",
                "Patient.name[0].given[1]",
            ),
            (
                r#"{"resourceType":"Group","type":"person","actual":true,"quantity":2147483648}"#,
                "Group.quantity: 2147483648 is not a valid FHIR unsignedInt",
            ),
        ];
        for (body, want) in json_cases {
            let m = refused(body, Format::Json);
            assert!(m.contains(want), "{body}: {m}");
        }
        let xml_cases = [
            (
                r#"<Patient xmlns="http://hl7.org/fhir"/><Patient xmlns="http://hl7.org/fhir"/>"#,
                "more than one root",
            ),
            (
                "<Patient xmlns=\"http://hl7.org/fhir\"><name><family value=\"a&#1;b\"/></name></Patient>",
                "Patient.name[0].family",
            ),
            (
                r#"<Group xmlns="http://hl7.org/fhir"><type value="person"/><actual value="true"/><quantity value="2147483648"/></Group>"#,
                "Group.quantity",
            ),
        ];
        for (body, want) in xml_cases {
            let m = refused(body, Format::Xml);
            assert!(m.contains(want), "{body}: {m}");
        }
        // What must still pass: tabs and line breaks, the largest values, one contained level (a
        // nested one breaks dom-2, an invariant: src/fhir/invariants.rs).
        for body in [
            "{\"resourceType\":\"Patient\",\"name\":[{\"text\":\"a\\tb\\r\\nc\"}]}",
            r#"{"resourceType":"Group","type":"person","actual":true,"quantity":2147483647}"#,
            r##"{"resourceType":"Patient","contained":[{"resourceType":"Patient","id":"x"}],"link":[{"other":{"reference":"#x"},"type":"seealso"}]}"##,
        ] {
            assert!(parse_resource(body.as_bytes(), Format::Json).is_ok(), "{body}");
        }
    }

    fn divs_of(value: &Value) -> Vec<&str> {
        match value {
            Value::Object(map) => map
                .iter()
                .flat_map(|(k, v)| match (k.as_str(), v) {
                    ("div", Value::String(s)) => vec![s.as_str()],
                    _ => divs_of(v),
                })
                .collect(),
            Value::Array(items) => items.iter().flat_map(divs_of).collect(),
            _ => Vec::new(),
        }
    }

    #[test]
    fn every_narrative_of_the_fixtures_passes_the_allow_list() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/r4");
        let mut checked = 0;
        for (sub, format) in [("json", Format::Json), ("xml", Format::Xml)] {
            for entry in std::fs::read_dir(format!("{dir}/{sub}")).unwrap() {
                let path = entry.unwrap().path();
                let body = std::fs::read(&path).unwrap();
                let value: Value = match format {
                    Format::Json => serde_json::from_slice(&body).unwrap(),
                    Format::Xml => {
                        let text = String::from_utf8(body.clone()).unwrap();
                        let (_, divs) = narrative::cut_from_xml(&text, "t");
                        Value::Array(divs.into_iter().map(|d| json!({ "div": d })).collect())
                    }
                };
                for div in divs_of(&value) {
                    narrative::check_div(div).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                }
                prescan::json(&serde_json::to_vec(&value).unwrap(), Limits::SYNTAX).unwrap();
                checked += 1;
            }
        }
        assert!(checked > 10, "{checked} fixtures");
    }
}
