//! Narrative XHTML (`text.div`) kept exactly as written across formats.
//!
//! fhirbolt reads and writes XML with quick-xml's `trim_text(true)`, which also trims every text node
//! inside the narrative: `Thanks to <a>PKB</a> for` would become `Thanks to<a>PKB</a>for`. So
//! narratives bypass fhirbolt's XML path: on input each XHTML div is cut out of the document and put
//! back verbatim into the JSON; on output fhirbolt writes a placeholder that is replaced by the div.
//! The JSON form of a narrative is the XHTML markup itself, so both directions are exact.

use quick_xml::events::Event;
use serde_json::Value;

const XHTML_DIV_ATTRS: [&str; 2] = [
    "xmlns=\"http://www.w3.org/1999/xhtml\"",
    "xmlns='http://www.w3.org/1999/xhtml'",
];

/// Checks that a narrative is one well-formed XHTML `div` element (FHIR rule txt-1, in part).
pub fn check_div(div: &str) -> Result<(), String> {
    let trimmed = div.trim();
    if !trimmed.starts_with("<div") || !XHTML_DIV_ATTRS.iter().any(|a| first_tag(trimmed).contains(a)) {
        return Err("text.div must be an XHTML <div> element in the namespace http://www.w3.org/1999/xhtml".into());
    }
    let mut reader = quick_xml::Reader::from_str(trimmed);
    let mut depth = 0usize;
    let mut roots = 0usize;
    loop {
        match reader.read_event() {
            Ok(Event::Start(_)) => {
                if depth == 0 {
                    roots += 1;
                }
                depth += 1;
            }
            Ok(Event::End(_)) => depth = depth.saturating_sub(1),
            Ok(Event::Empty(_)) if depth == 0 => roots += 1,
            Ok(Event::Text(t)) if depth == 0 && !t.iter().all(u8::is_ascii_whitespace) => roots += 2,
            Ok(Event::Eof) => break,
            Ok(_) => {}
            Err(e) => return Err(format!("text.div is not well-formed XHTML: {e}")),
        }
    }
    if depth != 0 || roots != 1 {
        return Err("text.div is not one well-formed XHTML <div> element".into());
    }
    Ok(())
}

fn first_tag(s: &str) -> &str {
    s.find('>').map_or(s, |end| &s[..=end])
}

/// Every narrative `div` string in a resource (contained resources included).
fn for_each_div(value: &mut Value, f: &mut dyn FnMut(&mut String)) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if key == "div" {
                    if let Value::String(s) = v {
                        f(s);
                        continue;
                    }
                }
                for_each_div(v, f);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| for_each_div(v, f)),
        _ => {}
    }
}

/// Checks every narrative of a parsed resource.
pub fn check_all(resource: &mut Value) -> Result<(), String> {
    let mut result = Ok(());
    for_each_div(resource, &mut |div| {
        if result.is_ok() {
            result = check_div(div);
        }
    });
    result
}

fn marker(token: &str, i: usize) -> String {
    format!("tandem-narrative-{token}-{i}")
}

fn placeholder(token: &str, i: usize) -> String {
    format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">{}</div>", marker(token, i))
}

/// Input: replaces each XHTML div of an XML document by a placeholder; returns the document and the
/// divs cut out, to be put back with [`restore_input`] after parsing.
pub fn cut_from_xml(xml: &str, token: &str) -> (String, Vec<String>) {
    let mut out = String::with_capacity(xml.len());
    let mut divs = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find("<div") {
        let tag = first_tag(&rest[start..]);
        let is_xhtml_root = XHTML_DIV_ATTRS.iter().any(|a| tag.contains(a));
        let end = if is_xhtml_root {
            matching_end(&rest[start..])
        } else {
            None
        };
        match end {
            Some(len) => {
                out.push_str(&rest[..start]);
                out.push_str(&placeholder(token, divs.len()));
                divs.push(rest[start..start + len].to_string());
                rest = &rest[start + len..];
            }
            None => {
                out.push_str(&rest[..start + 4]);
                rest = &rest[start + 4..];
            }
        }
    }
    out.push_str(rest);
    (out, divs)
}

/// The length of the `<div …>…</div>` element that starts `s` (nested divs counted), if it closes.
fn matching_end(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = 0usize;
    let bytes = s.as_bytes();
    while i < bytes.len() {
        if bytes[i] == b'<' {
            let tag_len = tag_length(&s[i..])?;
            let tag = &s[i..i + tag_len];
            let is_div =
                |name: &str| tag[name.len()..].starts_with(|c: char| c.is_whitespace() || c == '>' || c == '/');
            if tag.starts_with("</div") && is_div("</div") {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i + tag_len);
                }
            } else if tag.starts_with("<div") && is_div("<div") && !tag.ends_with("/>") {
                depth += 1;
            } else if tag.starts_with("<div") && is_div("<div") && depth == 0 {
                return Some(tag_len);
            }
            i += tag_len;
        } else {
            i += 1;
        }
    }
    None
}

/// The length of the tag (or comment) starting at `s`, quotes respected.
fn tag_length(s: &str) -> Option<usize> {
    if s.starts_with("<!--") {
        return s.find("-->").map(|e| e + 3);
    }
    let mut quote: Option<char> = None;
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"') | (None, '\'') => quote = Some(c),
            (None, '>') => return Some(i + 1),
            _ => {}
        }
    }
    None
}

/// Input: puts the cut divs back into the parsed resource, in place of their placeholders.
pub fn restore_input(resource: &mut Value, token: &str, divs: &[String]) {
    for_each_div(resource, &mut |div| {
        if let Some(i) = (0..divs.len()).find(|i| div.contains(&marker(token, *i))) {
            *div = divs[i].clone();
        }
    });
}

/// Output: replaces each narrative by a placeholder before fhirbolt writes XML; returns the divs to
/// splice back with [`splice_output`].
pub fn cut_from_json(resource: &mut Value, token: &str) -> Vec<String> {
    let mut divs = Vec::new();
    for_each_div(resource, &mut |div| {
        let i = divs.len();
        divs.push(std::mem::replace(div, placeholder(token, i)));
    });
    divs
}

/// Output: puts each div back where fhirbolt wrote its placeholder.
pub fn splice_output(xml: &str, token: &str, divs: &[String]) -> String {
    let mut out = xml.to_string();
    for (i, div) in divs.iter().enumerate() {
        let m = marker(token, i);
        let Some(at) = out.find(&m) else { continue };
        let Some(start) = out[..at].rfind("<div") else { continue };
        let Some(end_rel) = out[at..].find("</div>") else {
            continue;
        };
        out.replace_range(start..at + end_rel + "</div>".len(), div);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const DIV: &str = r#"<div xmlns="http://www.w3.org/1999/xhtml"><p>Thanks to <a href="x">PKB</a> for <b>this</b> example</p><div> nested </div></div>"#;

    #[test]
    fn divs_are_cut_from_xml_and_restored_verbatim() {
        let xml = format!(
            r#"<Patient xmlns="http://hl7.org/fhir"><text><status value="generated"/>{DIV}</text><active value="true"/></Patient>"#
        );
        let (cut, divs) = cut_from_xml(&xml, "t");
        assert_eq!(divs, vec![DIV.to_string()]);
        assert!(cut.contains("tandem-narrative-t-0") && cut.ends_with("<active value=\"true\"/></Patient>"));
        let mut parsed =
            json!({"text": {"div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">tandem-narrative-t-0</div>"}});
        restore_input(&mut parsed, "t", &divs);
        assert_eq!(parsed["text"]["div"], DIV);
    }

    #[test]
    fn output_placeholders_are_spliced_back() {
        let mut r = json!({"text": {"status": "generated", "div": DIV}});
        let divs = cut_from_json(&mut r, "u");
        let written =
            "<text>\n  <div xmlns=\"http://www.w3.org/1999/xhtml\">\n    tandem-narrative-u-0\n  </div>\n</text>";
        assert_eq!(splice_output(written, "u", &divs), format!("<text>\n  {DIV}\n</text>"));
    }

    #[test]
    fn malformed_or_foreign_divs_are_refused() {
        assert!(check_div(DIV).is_ok());
        assert!(check_div(r#"<div xmlns="http://www.w3.org/1999/xhtml"><p>open</div>"#).is_err());
        assert!(check_div(r#"<div><p>no namespace</p></div>"#).is_err());
        assert!(check_div(
            r#"<div xmlns="http://www.w3.org/1999/xhtml">a</div><div xmlns="http://www.w3.org/1999/xhtml">b</div>"#
        )
        .is_err());
        assert!(check_div("plain text").is_err());
    }
}
