//! Extraction of search-index values from a resource, following the compiled R4 search-parameter
//! paths. The input is the resource as the typed fhirbolt model serializes it to JSON, so every
//! element has its R4 name and shape. Runs on every write; the store saves the rows in the same
//! transaction as the resource.

use serde_json::Value;
use unicode_normalization::UnicodeNormalization;

use super::dates;
use super::params::{ParamType, Path, Step};
use super::{parse_reference, ResourceType, Target};

#[derive(Debug, Clone, PartialEq)]
pub struct TokenEntry {
    pub param: String,
    pub system: Option<String>,
    pub code: Option<String>,
    pub display: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StringEntry {
    pub param: String,
    /// The normalised value as the lookup index holds it ([`index_key`]).
    pub norm: String,
    /// The whole normalised value, when `norm` holds only its key (a value over [`MAX_KEY_BYTES`]).
    pub norm_full: Option<String>,
    pub exact: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DateEntry {
    pub param: String,
    pub low: i64,
    pub high: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceEntry {
    pub param: String,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    pub url: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UriEntry {
    pub param: String,
    /// The uri as the lookup index holds it ([`index_key`]).
    pub uri: String,
    /// The whole uri, when `uri` holds only its key.
    pub uri_full: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NumberEntry {
    pub param: String,
    pub value: f64,
    pub system: Option<String>,
    pub code: Option<String>,
}

/// A pair of token values taken from one element, for a composite parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct CompositeEntry {
    pub param: String,
    pub system1: Option<String>,
    pub code1: Option<String>,
    pub system2: Option<String>,
    pub code2: Option<String>,
}

/// A position on the earth (WGS84 degrees) and its unit vector on the sphere, for `near`.
#[derive(Debug, Clone, PartialEq)]
pub struct PositionEntry {
    pub param: String,
    pub latitude: f64,
    pub longitude: f64,
    pub xyz: [f64; 3],
}

/// The unit vector of a latitude/longitude in degrees.
pub fn unit_vector(latitude: f64, longitude: f64) -> [f64; 3] {
    let (lat, lon) = (latitude.to_radians(), longitude.to_radians());
    [lat.cos() * lon.cos(), lat.cos() * lon.sin(), lat.sin()]
}

/// A date range of at least this many milliseconds (a day), or with an open end, is "long": a search
/// cannot bound where it starts by where the search's own range starts, so it is indexed apart.
pub const LONG_DATE_MS: i64 = 86_400_000;

/// A resource's place in time, as its reference rows carry it: the range of its timeline parameter
/// ([`ResourceType::timeline`]), and whether that range is long ([`LONG_DATE_MS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateSpan {
    pub low: i64,
    pub high: i64,
    pub long: bool,
}

/// The timeline date of a resource from its index values: the hull of every bound of its rows for
/// the timeline parameter. That is one row, as the parameter is single-valued; a hull would still
/// contain every row. Taking both bounds of a row also orders a period that ends before it starts
/// (which R4's per-1 forbids but nothing here refuses), so that the hull contains whatever such a
/// row matches by either bound.
pub fn timeline(rt: ResourceType, entries: &Entries) -> Option<DateSpan> {
    let param = rt.timeline()?;
    let bounds = entries
        .dates
        .iter()
        .filter(|d| d.param == param)
        .flat_map(|d| [d.low, d.high]);
    let (low, high) = bounds.fold(None, |hull: Option<(i64, i64)>, b| {
        Some(hull.map_or((b, b), |(l, h)| (l.min(b), h.max(b))))
    })?;
    let long = high.checked_sub(low).is_none_or(|span| span >= LONG_DATE_MS);
    Some(DateSpan { low, high, long })
}

/// All index values of one resource.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Entries {
    pub tokens: Vec<TokenEntry>,
    pub strings: Vec<StringEntry>,
    pub dates: Vec<DateEntry>,
    pub references: Vec<ReferenceEntry>,
    pub uris: Vec<UriEntry>,
    pub numbers: Vec<NumberEntry>,
    pub composites: Vec<CompositeEntry>,
    pub positions: Vec<PositionEntry>,
}

/// Suffix of the token rows that carry `Identifier.type` for the `:of-type` modifier
/// (system = type system, code = `type-code|value`).
pub const OF_TYPE_SUFFIX: &str = ":of-type";
/// Suffix of the token rows that carry `Reference.identifier` for the `:identifier` modifier.
pub const IDENTIFIER_SUFFIX: &str = ":identifier";

/// The longest value, in bytes, that an index column holds as it is. PostgreSQL's btree refuses an
/// entry over 2,704 bytes (a third of a page) that does not compress, and one lookup index holds
/// two such columns (`code` and `system`, `code1` and `code2`) beside the type and parameter names,
/// so each keeps at most 1,000 bytes; FHIR's strings may be up to 1 MB (datatypes.html#string).
pub const MAX_KEY_BYTES: usize = 1000;
/// How much of a longer value its key keeps in front of the value's SHA-256 digest.
const KEY_PREFIX_BYTES: usize = 900;
/// A prefix search for a value at most this long can read the keys alone: every key starts with at
/// least this many bytes of its value (the prefix is cut at a character boundary, 3 bytes less at
/// worst).
pub const KEY_PREFIX_SAFE_BYTES: usize = KEY_PREFIX_BYTES - 3;

/// The form in which an index column holds `value`: the value itself when it has at most
/// [`MAX_KEY_BYTES`] bytes; otherwise its first ~900 bytes, U+0001 and the hex SHA-256 of the whole
/// value. Equal values have equal keys, a key never equals a value kept as it is (FHIR strings
/// refuse U+0001), and a key starts with its value's first
/// [`KEY_PREFIX_SAFE_BYTES`] bytes, so exact and prefix searches stay exact. Search values go through
/// the same function.
pub fn index_key(value: &str) -> std::borrow::Cow<'_, str> {
    use sha2::Digest;
    if value.len() <= MAX_KEY_BYTES {
        return std::borrow::Cow::Borrowed(value);
    }
    let digest = sha2::Sha256::digest(value.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    std::borrow::Cow::Owned(format!("{}\u{1}{hex}", prefix_at_most(value, KEY_PREFIX_BYTES)))
}

/// The longest prefix of `s` of at most `bytes` bytes that ends at a character boundary.
pub fn prefix_at_most(s: &str, bytes: usize) -> &str {
    if s.len() <= bytes {
        return s;
    }
    let mut cut = bytes;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

fn key(value: Option<String>) -> Option<String> {
    value.map(|v| index_key(&v).into_owned())
}

/// Lower case, accents removed: the form string search compares (search.html#string).
pub fn normalize(s: &str) -> String {
    s.nfd()
        .filter(|c| !unicode_normalization::char::is_combining_mark(*c))
        .collect::<String>()
        .to_lowercase()
}

pub fn extract(rt: ResourceType, resource: &Value) -> Entries {
    let mut out = Entries::default();
    for param in rt.search_params() {
        for path in &param.paths {
            match path {
                Path::Steps(steps) if param.kind == ParamType::Composite => {
                    for node in walk(resource, steps) {
                        add_composite(&mut out, param, node);
                    }
                }
                Path::Steps(steps) => {
                    for node in walk(resource, steps) {
                        add_value(&mut out, &param.code, param.kind, node);
                    }
                }
                Path::PresentAndNotFalse(steps) => {
                    let nodes = walk(resource, steps);
                    let present = nodes.iter().any(|n| n.as_bool() != Some(false));
                    out.tokens.push(TokenEntry {
                        param: param.code.clone(),
                        system: None,
                        code: Some(present.to_string()),
                        display: None,
                    });
                }
            }
        }
    }
    // Every value an index column holds is bounded (strings and uris keep their whole value beside
    // the key, for :contains and long prefixes; see add_string and the Uri arm of add_value).
    for t in &mut out.tokens {
        t.system = key(t.system.take());
        t.code = key(t.code.take());
    }
    for c in &mut out.composites {
        c.system1 = key(c.system1.take());
        c.code1 = key(c.code1.take());
        c.system2 = key(c.system2.take());
        c.code2 = key(c.code2.take());
    }
    for r in &mut out.references {
        r.target_type = key(r.target_type.take());
        r.target_id = key(r.target_id.take());
    }
    out
}

/// The reference values of only the named parameters of `rt` (a cheap subset of [`extract`]).
pub fn references(rt: ResourceType, resource: &Value, params: &[&str]) -> Vec<ReferenceEntry> {
    let mut out = Entries::default();
    for param in rt.search_params().iter().filter(|p| params.contains(&p.code.as_str())) {
        for path in &param.paths {
            if let Path::Steps(steps) = path {
                for node in walk(resource, steps) {
                    add_reference(&mut out, &param.code, node);
                }
            }
        }
    }
    out.references
}

fn walk<'a>(root: &'a Value, steps: &[Step]) -> Vec<&'a Value> {
    let mut nodes = vec![root];
    for step in steps {
        let mut next = Vec::new();
        for node in nodes {
            match step {
                Step::Field { name, choice } => child(node, name, choice.as_deref(), &mut next),
                Step::ResolvesTo(t) => {
                    let keep = node
                        .get("reference")
                        .and_then(Value::as_str)
                        .is_some_and(|r| reference_type(r).as_deref() == Some(t.as_str()))
                        || node.get("type").and_then(Value::as_str) == Some(t.as_str());
                    if keep {
                        next.push(node);
                    }
                }
                Step::WhereEquals { field, value } => {
                    if node.get(field).and_then(Value::as_str) == Some(value.as_str()) {
                        next.push(node);
                    }
                }
            }
        }
        nodes = next;
    }
    nodes
}

/// Children named `name`; a choice element (`deceased[x]`) matches `deceasedBoolean`, `deceasedDateTime`…
/// unless `choice` names the one type wanted.
fn child<'a>(node: &'a Value, name: &str, choice: Option<&str>, out: &mut Vec<&'a Value>) {
    let Some(map) = node.as_object() else { return };
    let mut push = |v: &'a Value| match v {
        Value::Array(items) => out.extend(items.iter()),
        other => out.push(other),
    };
    match choice {
        Some(t) => {
            let mut key = name.to_string();
            let mut chars = t.chars();
            if let Some(first) = chars.next() {
                key.push(first.to_ascii_uppercase());
                key.extend(chars);
            }
            if let Some(v) = map.get(&key) {
                push(v);
            }
        }
        None => {
            if let Some(v) = map.get(name) {
                push(v);
            } else {
                for (k, v) in map {
                    let is_choice = k
                        .strip_prefix(name)
                        .and_then(|rest| rest.chars().next())
                        .is_some_and(|c| c.is_ascii_uppercase());
                    if is_choice {
                        push(v);
                    }
                }
            }
        }
    }
}

fn reference_type(reference: &str) -> Option<String> {
    match parse_reference(reference) {
        Target::Local { res_type, .. } => Some(res_type),
        Target::External(url) => {
            let parts: Vec<&str> = url.trim_end_matches('/').rsplit('/').collect();
            match parts.as_slice() {
                [_id, t, ..] => Some(t.to_string()),
                _ => None,
            }
        }
        Target::Contained(_) => None,
    }
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

fn add_value(out: &mut Entries, param: &str, kind: ParamType, node: &Value) {
    match kind {
        ParamType::Token => add_token(out, param, node),
        ParamType::String => add_string(out, param, node),
        ParamType::Date => add_date(out, param, node),
        ParamType::Reference => add_reference(out, param, node),
        ParamType::Uri => {
            if let Some(s) = node.as_str() {
                let keyed = index_key(s).into_owned();
                out.uris.push(UriEntry {
                    param: param.to_string(),
                    uri_full: (keyed != s).then(|| s.to_string()),
                    uri: keyed,
                });
            }
        }
        ParamType::Number | ParamType::Quantity => add_number(out, param, node),
        // Location near: the position's coordinates.
        ParamType::Special => {
            let (lat, lon) = (
                node.get("latitude").and_then(Value::as_f64),
                node.get("longitude").and_then(Value::as_f64),
            );
            if let (Some(latitude), Some(longitude)) = (lat, lon) {
                if (-90.0..=90.0).contains(&latitude) && (-180.0..=180.0).contains(&longitude) {
                    out.positions.push(PositionEntry {
                        param: param.to_string(),
                        latitude,
                        longitude,
                        xyz: unit_vector(latitude, longitude),
                    });
                }
            }
        }
        // Composites are indexed as pairs by add_composite.
        ParamType::Composite => {}
    }
}

/// Every pair of the two token components found under one node (Group.characteristic: its code
/// and its value).
fn add_composite(out: &mut Entries, param: &super::SearchParam, node: &Value) {
    let [(first_kind, first), (ParamType::Token, second)] = param.components.as_slice() else {
        return;
    };
    // A component's values as (system, code) pairs: a token's own; a reference's `Type/id` (local)
    // or URL (absolute) as a code without system, as a search value `Type/id$code` names it.
    let values = |kind: ParamType, steps: &[Step]| -> Vec<(Option<String>, Option<String>)> {
        let mut e = Entries::default();
        for n in walk(node, steps) {
            match kind {
                ParamType::Reference => add_reference(&mut e, "", n),
                _ => add_token(&mut e, "", n),
            }
        }
        let references = e
            .references
            .into_iter()
            .filter_map(|r| match (r.target_type, r.target_id, r.url) {
                (_, _, Some(url)) => Some((None, Some(url))),
                (Some(t), Some(id), None) => Some((None, Some(format!("{t}/{id}")))),
                _ => None,
            });
        e.tokens
            .into_iter()
            .filter(|t| t.code.is_some())
            .map(|t| (t.system, t.code))
            .chain(references)
            .collect()
    };
    if !matches!(first_kind, ParamType::Token | ParamType::Reference) {
        return;
    }
    let (left, right) = (values(*first_kind, first), values(ParamType::Token, second));
    for (system1, code1) in &left {
        for (system2, code2) in &right {
            out.composites.push(CompositeEntry {
                param: param.code.clone(),
                system1: system1.clone(),
                code1: code1.clone(),
                system2: system2.clone(),
                code2: code2.clone(),
            });
        }
    }
}

fn add_token(out: &mut Entries, param: &str, node: &Value) {
    let mut push = |system: Option<String>, code: Option<String>, display: Option<String>| {
        out.tokens.push(TokenEntry {
            param: param.to_string(),
            system,
            code,
            display: display.map(|d| normalize(&d)),
        });
    };
    match node {
        Value::String(s) => push(None, Some(s.clone()), None),
        Value::Bool(b) => push(None, Some(b.to_string()), None),
        Value::Object(map)
            if map.contains_key("coding") || (map.contains_key("text") && !map.contains_key("value")) =>
        {
            // CodeableConcept
            let concept_text = text(node, "text");
            let codings = map
                .get("coding")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            for coding in codings {
                push(
                    text(coding, "system"),
                    text(coding, "code"),
                    concept_text.clone().or_else(|| text(coding, "display")),
                );
            }
            if codings.is_empty() {
                push(None, None, concept_text);
            }
        }
        Value::Object(map) if map.contains_key("value") => {
            // Identifier or ContactPoint: the value is the code.
            let is_contact_point = matches!(
                map.get("system").and_then(Value::as_str),
                Some("phone" | "fax" | "email" | "pager" | "url" | "sms" | "other")
            ) || map.contains_key("rank");
            let value = text(node, "value");
            if is_contact_point {
                push(None, value, None);
                return;
            }
            let type_text = map.get("type").and_then(|t| text(t, "text"));
            push(text(node, "system"), value.clone(), type_text);
            let type_codings = map.get("type").and_then(|t| t.get("coding")).and_then(Value::as_array);
            for coding in type_codings.into_iter().flatten() {
                if let (Some(code), Some(v)) = (text(coding, "code"), value.as_ref()) {
                    out.tokens.push(TokenEntry {
                        param: format!("{param}{OF_TYPE_SUFFIX}"),
                        system: text(coding, "system"),
                        code: Some(format!("{code}|{v}")),
                        display: None,
                    });
                }
            }
        }
        Value::Object(_) => {
            // Coding
            push(text(node, "system"), text(node, "code"), text(node, "display"));
        }
        _ => {}
    }
}

fn add_string(out: &mut Entries, param: &str, node: &Value) {
    let mut push = |s: &str| {
        if !s.trim().is_empty() {
            let norm = normalize(s);
            let keyed = index_key(&norm).into_owned();
            out.strings.push(StringEntry {
                param: param.to_string(),
                norm_full: (keyed != norm).then_some(norm),
                norm: keyed,
                exact: s.to_string(),
            });
        }
    };
    match node {
        Value::String(s) => push(s),
        Value::Object(map) => {
            // HumanName and Address: every part is searchable on its own.
            const PARTS: [&str; 11] = [
                "text",
                "family",
                "given",
                "prefix",
                "suffix",
                "line",
                "city",
                "district",
                "state",
                "postalCode",
                "country",
            ];
            for part in PARTS {
                match map.get(part) {
                    Some(Value::String(s)) => push(s),
                    Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).for_each(&mut push),
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

fn add_date(out: &mut Entries, param: &str, node: &Value) {
    let range = match node {
        Value::String(s) => dates::parse_range(s),
        Value::Object(map) if map.contains_key("start") || map.contains_key("end") => {
            // Period: an open end is unbounded.
            let low = map
                .get("start")
                .and_then(Value::as_str)
                .and_then(dates::parse_range)
                .map_or(i64::MIN, |r| r.low);
            let high = map
                .get("end")
                .and_then(Value::as_str)
                .and_then(dates::parse_range)
                .map_or(i64::MAX, |r| r.high);
            Some(dates::Range { low, high })
        }
        _ => None,
    };
    if let Some(r) = range {
        out.dates.push(DateEntry {
            param: param.to_string(),
            low: r.low,
            high: r.high,
        });
    }
}

/// The index entry of a reference: a local one by type and id, an absolute one by URL (and by type
/// and id when its path names them); None for a contained one (`#id`).
fn reference_entry(param: &str, reference: &str) -> Option<ReferenceEntry> {
    match parse_reference(reference) {
        Target::Local { res_type, id, .. } => Some(ReferenceEntry {
            param: param.to_string(),
            target_type: Some(res_type),
            target_id: Some(id),
            url: None,
        }),
        Target::External(url) => {
            let t = reference_type(&url);
            let id = url.trim_end_matches('/').rsplit('/').next().map(str::to_string);
            let (target_type, target_id) = if t.is_some() { (t, id) } else { (None, None) };
            Some(ReferenceEntry {
                param: param.to_string(),
                target_type,
                target_id,
                url: Some(url),
            })
        }
        Target::Contained(_) => None,
    }
}

fn add_reference(out: &mut Entries, param: &str, node: &Value) {
    let Some(map) = node.as_object() else {
        if let Some(s) = node.as_str() {
            // A canonical (or uri) used as a reference: without its `|version`, found by its URL,
            // and by type and id when it names one (`Questionnaire/gcs`, `{base}/Questionnaire/phq-9`).
            let url = s.split_once('|').map_or(s, |(u, _)| u);
            let entry = reference_entry(param, url).unwrap_or_else(|| ReferenceEntry {
                param: param.to_string(),
                target_type: None,
                target_id: None,
                url: Some(url.to_string()),
            });
            out.references.push(entry);
        }
        return;
    };
    if let Some(reference) = map.get("reference").and_then(Value::as_str) {
        out.references.extend(reference_entry(param, reference));
    }
    if let Some(identifier) = map.get("identifier") {
        out.tokens.push(TokenEntry {
            param: format!("{param}{IDENTIFIER_SUFFIX}"),
            system: text(identifier, "system"),
            code: text(identifier, "value"),
            display: None,
        });
    }
}

fn add_number(out: &mut Entries, param: &str, node: &Value) {
    let (value, system, code) = match node {
        Value::Number(n) => (n.as_f64(), None, None),
        Value::Object(_) => (
            node.get("value").and_then(Value::as_f64),
            text(node, "system"),
            text(node, "code").or_else(|| text(node, "unit")),
        ),
        _ => (None, None, None),
    };
    if let Some(value) = value {
        out.numbers.push(NumberEntry {
            param: param.to_string(),
            value,
            system,
            code,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn index_keys_are_bounded_exact_and_keep_the_start_of_their_value() {
        let short = "a".repeat(MAX_KEY_BYTES);
        assert_eq!(index_key(&short), short.as_str(), "a value that fits is its own key");
        let long = format!("{}b", "é".repeat(600)); // 1,201 bytes, a 2-byte character at the cut
        let other = format!("{}c", "é".repeat(600));
        let (k1, k2) = (index_key(&long), index_key(&other));
        assert!(
            k1.len() <= MAX_KEY_BYTES && k1.len() > KEY_PREFIX_SAFE_BYTES,
            "{}",
            k1.len()
        );
        assert_ne!(k1, k2, "values that differ past the prefix have different keys");
        assert_eq!(index_key(&long), k1, "equal values, equal keys");
        assert!(k1.starts_with(prefix_at_most(&long, KEY_PREFIX_SAFE_BYTES)));
        assert!(k1.contains('\u{1}'), "a key carries a character no FHIR string holds");
        assert_eq!(prefix_at_most("aé", 2), "a", "cut at a character boundary");
    }

    fn rt(name: &str) -> ResourceType {
        ResourceType::parse(name).unwrap()
    }

    #[test]
    fn the_timeline_is_the_ordered_hull_of_the_date_and_says_whether_it_is_long() {
        let team = |period: serde_json::Value| {
            timeline(
                rt("CareTeam"),
                &extract(rt("CareTeam"), &json!({"resourceType": "CareTeam", "period": period})),
            )
        };
        let day = team(json!({"start": "2026-03-05", "end": "2026-03-05"})).unwrap();
        assert_eq!(day.high - day.low, LONG_DATE_MS - 1);
        assert!(!day.long);
        assert!(team(json!({"start": "2026-03", "end": "2026-03"})).unwrap().long);
        let open = team(json!({"start": "2020-01-01"})).unwrap();
        assert!(open.long && open.high == i64::MAX);
        assert!(team(json!({"end": "2020-01-01"})).unwrap().long);
        // A period that ends before it starts still gives low <= high, spanning both dates.
        let inverted = team(json!({"start": "2026-03-10", "end": "2026-03-01"})).unwrap();
        let (march_1, march_10) = (
            dates::parse_range("2026-03-01").unwrap(),
            dates::parse_range("2026-03-10").unwrap(),
        );
        assert_eq!((inverted.low, inverted.high), (march_1.high, march_10.low));
        assert!(team(json!(null)).is_none());
        assert!(timeline(rt("Patient"), &Entries::default()).is_none());
    }

    #[test]
    fn strings_are_normalised_for_case_and_accents() {
        assert_eq!(normalize("Ångström Éva"), "angstrom eva");
    }

    #[test]
    fn patient_values_are_indexed_by_parameter() {
        let p = json!({
            "resourceType": "Patient", "id": "1",
            "meta": {"tag": [{"system": "urn:t", "code": "x"}]},
            "identifier": [{"system": "urn:mrn", "value": "12345", "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}}],
            "name": [{"family": "Chalmers", "given": ["Peter", "James"]}],
            "telecom": [{"system": "email", "value": "p@example.org"}],
            "gender": "male",
            "birthDate": "1974-12-25",
            "deceasedBoolean": false,
            "generalPractitioner": [{"reference": "Practitioner/9"}]
        });
        let e = extract(rt("Patient"), &p);
        let has_token = |param: &str, system: Option<&str>, code: &str| {
            e.tokens
                .iter()
                .any(|t| t.param == param && t.system.as_deref() == system && t.code.as_deref() == Some(code))
        };
        assert!(has_token("identifier", Some("urn:mrn"), "12345"));
        assert!(has_token(
            "identifier:of-type",
            Some("http://terminology.hl7.org/CodeSystem/v2-0203"),
            "MR|12345"
        ));
        assert!(has_token("email", None, "p@example.org"));
        assert!(has_token("telecom", None, "p@example.org"));
        assert!(!e.tokens.iter().any(|t| t.param == "phone"));
        assert!(has_token("gender", None, "male"));
        assert!(has_token("deceased", None, "false"));
        assert!(has_token("_tag", Some("urn:t"), "x"));
        for (param, value) in [("family", "chalmers"), ("given", "james"), ("name", "peter")] {
            assert!(e.strings.iter().any(|s| s.param == param && s.norm == value), "{param}");
        }
        let birth = e.dates.iter().find(|d| d.param == "birthdate").unwrap();
        assert_eq!(dates::format_instant(birth.low), "1974-12-25T00:00:00.000Z");
        assert!(e.references.iter().any(|r| r.param == "general-practitioner"
            && r.target_type.as_deref() == Some("Practitioner")
            && r.target_id.as_deref() == Some("9")));
    }

    #[test]
    fn appointment_actor_references_split_by_target_type() {
        let a = json!({"resourceType": "Appointment", "status": "booked",
        "start": "2026-11-23T10:00:00Z",
        "participant": [
            {"actor": {"reference": "Patient/p1"}, "status": "accepted"},
            {"actor": {"reference": "https://ehr.example.org/fhir/Practitioner/d1"}, "status": "accepted"},
            {"actor": {"reference": "Location/room1"}, "status": "accepted"}
        ]});
        let e = extract(rt("Appointment"), &a);
        let refs = |param: &str| e.references.iter().filter(|r| r.param == param).count();
        assert_eq!(refs("actor"), 3);
        assert_eq!(refs("patient"), 1);
        assert_eq!(refs("practitioner"), 1);
        assert_eq!(refs("location"), 1);
        let practitioner = e.references.iter().find(|r| r.param == "practitioner").unwrap();
        assert_eq!(
            practitioner.url.as_deref(),
            Some("https://ehr.example.org/fhir/Practitioner/d1")
        );
        assert!(e.tokens.iter().filter(|t| t.param == "part-status").count() == 3);
        assert!(e.dates.iter().any(|d| d.param == "date"));
    }

    #[test]
    fn periods_with_an_open_end_are_unbounded() {
        let c = json!({"resourceType": "Consent", "provision": {"period": {"start": "2026-01-01"}}});
        let e = extract(rt("Consent"), &c);
        let period = e.dates.iter().find(|d| d.param == "period").unwrap();
        assert_eq!(period.high, i64::MAX);
    }

    #[test]
    fn group_choice_values_follow_their_type() {
        let g = json!({"resourceType": "Group", "type": "person", "actual": true,
            "characteristic": [{"code": {"text": "focus"}, "valueCodeableConcept": {"coding": [{"system": "urn:f", "code": "grief"}]}, "exclude": false},
                               {"code": {"text": "adults"}, "valueBoolean": true, "exclude": false}]});
        let e = extract(rt("Group"), &g);
        let values: Vec<_> = e
            .tokens
            .iter()
            .filter(|t| t.param == "value")
            .map(|t| t.code.clone().unwrap_or_default())
            .collect();
        assert_eq!(values, vec!["grief".to_string(), "true".to_string()]);
        assert!(e
            .tokens
            .iter()
            .any(|t| t.param == "actual" && t.code.as_deref() == Some("true")));
    }
}
