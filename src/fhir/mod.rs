//! The wire: FHIR formats (JSON and XML through fhirbolt's R4 model), content negotiation,
//! OperationOutcome, Bundle and the CapabilityStatement.

pub mod capability;
pub mod model;
pub mod narrative;

use fhirbolt::model::r4::Resource as R4Resource;
use fhirbolt::serde::{DeserializationConfig, DeserializationMode};
use serde_json::{json, Value};

use crate::error::Error;

pub const FHIR_VERSION: &str = "4.0.1";

/// Deepest element nesting accepted in XML (JSON has serde_json's limit of 128). fhirbolt's XML
/// reader recurses per level, so an unbounded depth could exhaust the stack.
const MAX_XML_DEPTH: usize = 128;

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
    pub fn negotiate(format_param: Option<&str>, accept: Option<&str>) -> Result<Format, Error> {
        if let Some(f) = format_param {
            return Format::from_mime(f)
                .ok_or_else(|| Error::NotAcceptable(format!("_format '{f}' is not supported; use json or xml")));
        }
        let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
            return Ok(Format::Json);
        };
        let mut ranges: Vec<(f32, usize, &str)> = accept
            .split(',')
            .enumerate()
            .map(|(i, item)| {
                let mut parts = item.split(';');
                let mime = parts.next().unwrap_or("").trim();
                let q = parts
                    .filter_map(|p| p.trim().strip_prefix("q="))
                    .find_map(|q| q.trim().parse::<f32>().ok())
                    .unwrap_or(1.0);
                (q, i, mime)
            })
            .filter(|(q, _, _)| *q > 0.0)
            .collect();
        ranges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        for (_, _, mime) in ranges {
            if let Some(f) = Format::from_mime(mime) {
                return Ok(f);
            }
            if mime == "*/*" || mime == "application/*" {
                return Ok(Format::Json);
            }
        }
        Err(Error::NotAcceptable(
            "none of the Accept types is supported; use application/fhir+json or application/fhir+xml".into(),
        ))
    }

    /// The format of a request body, from its Content-Type.
    pub fn from_content_type(content_type: Option<&str>) -> Result<Format, Error> {
        let ct = content_type.ok_or_else(|| {
            Error::UnsupportedMediaType(
                "Content-Type is required: application/fhir+json or application/fhir+xml".into(),
            )
        })?;
        let charset_ok = ct.split(';').skip(1).all(|p| match p.trim().split_once('=') {
            Some((k, v)) if k.trim().eq_ignore_ascii_case("charset") => {
                v.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
            }
            _ => true,
        });
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

/// Parses a request body into the R4 model (strict: unknown elements are refused) and returns it in
/// its canonical JSON form. Narratives are kept verbatim and must be well-formed XHTML.
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
    let mut value = match format {
        Format::Json => {
            let resource: R4Resource =
                guarded(|| fhirbolt::json::from_slice(body, config)).map_err(|e| invalid(e.to_string()))?;
            to_json(resource)?
        }
        Format::Xml => {
            let text = std::str::from_utf8(body).map_err(|e| invalid(format!("not UTF-8 ({e})")))?;
            let token = uuid::Uuid::new_v4().simple().to_string();
            let (xml, divs) = narrative::cut_from_xml(text, &token);
            check_xml_depth(&xml).map_err(invalid)?;
            let resource: R4Resource =
                guarded(|| fhirbolt::xml::from_str(&xml, config)).map_err(|e| invalid(e.to_string()))?;
            let mut value = to_json(resource)?;
            narrative::restore_input(&mut value, &token, &divs);
            value
        }
    };
    narrative::check_all(&mut value).map_err(Error::Structure)?;
    model::validate(&value).map_err(|e| Error::Structure(format!("the body is not a valid FHIR R4 resource: {e}")))?;
    Ok(value)
}

fn check_xml_depth(xml: &str) -> Result<(), String> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut depth = 0usize;
    loop {
        match reader.read_event() {
            Ok(quick_xml::events::Event::Start(_)) => {
                depth += 1;
                if depth > MAX_XML_DEPTH {
                    return Err(format!("elements are nested more than {MAX_XML_DEPTH} deep"));
                }
            }
            Ok(quick_xml::events::Event::End(_)) => depth = depth.saturating_sub(1),
            Ok(quick_xml::events::Event::Eof) => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
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
}
