//! A cheap pass over a body's bytes before the FHIR model library reads it: it counts the
//! elements, bounds their nesting, and refuses what is not one well-formed document — trailing
//! bytes or a second document after the first, duplicate JSON keys, duplicate XML attributes, a
//! second XML root. It builds nothing (no tree, keys borrowed from the input where they have no
//! escapes), so a body that would cost much to parse costs only one read here before it is refused.
//!
//! Why: fhirbolt and serde_json's tree cost far more than the bytes. A 4 MB Patient holding a
//! million `given` strings took 10–40 s to parse and store, grew the process by about 1.1 GB and
//! left a 520 MB SQLite WAL (issue 21); fhirbolt's JSON reader also stops after the first value
//! (`{…} garbage` and two documents in one body were stored) and keeps the last of duplicate keys.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// How much one body may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most elements: in JSON every object and every primitive value (array items counted one by
    /// one, the array itself not), in XML every element and every attribute.
    pub max_elements: usize,
    /// Deepest nesting: of JSON objects and arrays, of XML elements.
    pub max_depth: usize,
}

/// The deepest nesting any body may have whatever the settings: serde_json stops at 128 levels,
/// and fhirbolt's XML reader recurses once per element, so a deeper document could exhaust a
/// worker's stack.
pub const MAX_DEPTH: usize = 128;

impl Limits {
    /// Only what the parsers themselves need: used where a body is checked for being one
    /// well-formed document, after its size was bounded by the configured limits.
    pub const SYNTAX: Limits = Limits {
        max_elements: usize::MAX,
        max_depth: MAX_DEPTH,
    };
}

/// Why a body was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// More elements than allowed (the body is too large: 413).
    TooManyElements(usize),
    /// Nested deeper than allowed (too costly: 400).
    TooDeep(usize),
    /// Not one well-formed document.
    Malformed(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::TooManyElements(max) => write!(f, "the body holds more than {max} elements"),
            Refusal::TooDeep(max) => write!(f, "the body's elements are nested more than {max} deep"),
            Refusal::Malformed(m) => f.write_str(m),
        }
    }
}

/// Scans a JSON document.
pub fn json(body: &[u8], limits: Limits) -> Result<(), Refusal> {
    let mut state = State {
        limits,
        elements: 0,
        depth: 0,
        refusal: None,
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let scanned = Node(&mut state).deserialize(&mut de).and_then(|()| de.end());
    match (scanned, state.refusal) {
        (_, Some(refusal)) => Err(refusal),
        (Err(e), None) => Err(Refusal::Malformed(format!(
            "the body is not one well-formed JSON document: {e}"
        ))),
        (Ok(()), None) => Ok(()),
    }
}

struct State {
    limits: Limits,
    elements: usize,
    depth: usize,
    /// A limit that was hit (the error serde carries is only text).
    refusal: Option<Refusal>,
}

impl State {
    fn count<E: serde::de::Error>(&mut self) -> Result<(), E> {
        self.elements += 1;
        if self.elements > self.limits.max_elements {
            return Err(self.refuse(Refusal::TooManyElements(self.limits.max_elements)));
        }
        Ok(())
    }

    fn enter<E: serde::de::Error>(&mut self) -> Result<(), E> {
        self.depth += 1;
        if self.depth > self.limits.max_depth {
            return Err(self.refuse(Refusal::TooDeep(self.limits.max_depth)));
        }
        Ok(())
    }

    fn refuse<E: serde::de::Error>(&mut self, refusal: Refusal) -> E {
        let e = E::custom(&refusal);
        self.refusal = Some(refusal);
        e
    }
}

/// One JSON value.
struct Node<'s>(&'s mut State);

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        self.0.count()
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        self.0.count()
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        self.0.count()
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        self.0.count()
    }

    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> {
        self.0.count()
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.0.count()
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.0.enter()?;
        while seq.next_element_seed(Node(self.0))?.is_some() {}
        self.0.depth -= 1;
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.0.count()?;
        self.0.enter()?;
        let mut keys: HashSet<Cow<'de, str>> = HashSet::new();
        while let Some(key) = map.next_key_seed(Key)? {
            if keys.contains(&key) {
                return Err(self.0.refuse(Refusal::Malformed(format!(
                    "the JSON object holds the key '{}' twice",
                    key.chars().take(64).collect::<String>()
                ))));
            }
            keys.insert(key);
            map.next_value_seed(Node(self.0))?;
        }
        self.0.depth -= 1;
        Ok(())
    }
}

/// An object key, borrowed from the input when it has no escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object key")
    }

    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_string()))
    }
}

/// Scans an XML document: one root element, nothing but whitespace, comments and processing
/// instructions around it, no DOCTYPE (FHIR XML has none: xml.html), no duplicate attribute.
pub fn xml(body: &str, limits: Limits) -> Result<(), Refusal> {
    use quick_xml::events::Event;
    let malformed = |m: String| Refusal::Malformed(format!("the body is not one well-formed XML document: {m}"));
    let mut reader = quick_xml::Reader::from_str(body);
    reader.check_end_names(true).check_comments(true);
    let mut elements = 0usize;
    let mut depth = 0usize;
    let mut roots = 0usize;
    let mut count = |n: usize| {
        elements = elements.saturating_add(n);
        if elements > limits.max_elements {
            Err(Refusal::TooManyElements(limits.max_elements))
        } else {
            Ok(())
        }
    };
    loop {
        let event = reader.read_event().map_err(|e| malformed(e.to_string()))?;
        let start = match &event {
            Event::Start(e) | Event::Empty(e) => Some(e),
            _ => None,
        };
        if let Some(e) = start {
            if depth == 0 {
                roots += 1;
                if roots > 1 {
                    return Err(malformed("it has more than one root element".into()));
                }
            }
            let mut attributes = 0usize;
            for attribute in e.attributes().with_checks(true) {
                attribute.map_err(|e| malformed(e.to_string()))?;
                attributes += 1;
            }
            count(1 + attributes)?;
        }
        match event {
            Event::Start(_) => {
                depth += 1;
                if depth > limits.max_depth {
                    return Err(Refusal::TooDeep(limits.max_depth));
                }
            }
            Event::End(_) => depth = depth.saturating_sub(1),
            Event::Text(t) if depth == 0 && !t.iter().all(u8::is_ascii_whitespace) => {
                return Err(malformed("it has text outside its root element".into()))
            }
            Event::CData(_) if depth == 0 => return Err(malformed("it has text outside its root element".into())),
            Event::DocType(_) => return Err(malformed("FHIR XML has no DOCTYPE".into())),
            Event::Eof if roots == 0 => return Err(malformed("it has no root element".into())),
            Event::Eof if depth > 0 => return Err(malformed("its root element is not closed".into())),
            Event::Eof => return Ok(()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: Limits = Limits {
        max_elements: 10,
        max_depth: 4,
    };

    #[test]
    fn json_table() {
        use Refusal::*;
        let malformed = |r: Result<(), Refusal>| matches!(r, Err(Malformed(_)));
        for (body, want) in [
            (r#"{"resourceType":"Patient"}"#, Ok(())),
            (" {\"a\":[1,2,{\"b\":true}]} \n", Ok(())),
            // 1 object + 9 strings = 10; one more is too many.
            (r#"{"given":["a","b","c","d","e","f","g","h","i"]}"#, Ok(())),
            (
                r#"{"given":["a","b","c","d","e","f","g","h","i","j"]}"#,
                Err(TooManyElements(10)),
            ),
            // Four levels of objects and arrays pass, five do not.
            (r#"{"a":[{"b":[1]}]}"#, Ok(())),
            (r#"{"a":[{"b":[[1]]}]}"#, Err(TooDeep(4))),
            (r#"{"a":1,"b":2}"#, Ok(())),
        ] {
            assert_eq!(json(body.as_bytes(), SMALL), want, "{body}");
        }
        for body in [
            r#"{"resourceType":"Patient"} garbage"#,
            r#"{"resourceType":"Patient"}{"resourceType":"Patient"}"#,
            r#"{"id":"a","id":"b"}"#,
            // A key written with an escape is the same key.
            r#"{"id":"a","\u0069d":"b"}"#,
            r#"{"a":{"x":1,"x":1}}"#,
            r#"{"a":"#,
            "",
        ] {
            assert!(malformed(json(body.as_bytes(), Limits::SYNTAX)), "{body}");
        }
        // Depth beyond serde_json's own limit is refused, not a stack overflow.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(json(deep.as_bytes(), Limits::SYNTAX).is_err());
    }

    #[test]
    fn xml_table() {
        use Refusal::*;
        let malformed = |r: Result<(), Refusal>| matches!(r, Err(Malformed(_)));
        for (body, want) in [
            (r#"<?xml version="1.0"?><Patient xmlns="http://hl7.org/fhir"/>"#, Ok(())),
            // Root + 2 elements with 1 attribute each + 1 = 6 (the xmlns is an attribute).
            (
                r#"<Patient xmlns="http://hl7.org/fhir"><id value="a"/><active value="true"/></Patient>"#,
                Ok(()),
            ),
            (
                r#"<P><a v="1"/><a v="1"/><a v="1"/><a v="1"/><a v="1"/><a v="1"/></P>"#,
                Err(TooManyElements(10)),
            ),
            // An empty element is a leaf, like a JSON primitive: it adds no level.
            ("<a><b><c><d><e/></d></c></b></a>", Ok(())),
            ("<a><b><c><d><e></e></d></c></b></a>", Err(TooDeep(4))),
            ("<!-- before --><a/>\n", Ok(())),
        ] {
            assert_eq!(xml(body, SMALL), want, "{body}");
        }
        for body in [
            r#"<Patient xmlns="http://hl7.org/fhir"/><Patient xmlns="http://hl7.org/fhir"/>"#,
            r#"<Patient xmlns="http://hl7.org/fhir"/> junk"#,
            r#"<Patient xmlns="http://hl7.org/fhir"><id value="a" value="b"/></Patient>"#,
            r#"<!DOCTYPE p [<!ENTITY x "y">]><Patient/>"#,
            "<a><b></a></b>",
            "<a>",
            "   ",
        ] {
            assert!(malformed(xml(body, Limits::SYNTAX)), "{body}");
        }
        let deep = format!("<a>{}{}</a>", "<b>".repeat(100_000), "</b>".repeat(100_000));
        assert_eq!(xml(&deep, Limits::SYNTAX), Err(TooDeep(MAX_DEPTH)));
    }
}
