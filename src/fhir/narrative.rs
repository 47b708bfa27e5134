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

/// The elements a narrative may hold: the basic HTML formatting of FHIR's fhir-xhtml.xsd
/// (narrative.html, txt-1: "The narrative SHALL contain only the basic html formatting elements and
/// attributes described in chapters 7-11 (except section 4 of chapter 9) and 15 of the HTML 4.0
/// standard, <a> elements (either name or href), images and internally contained style attributes").
/// No head, body, script, style, form, input, base, link, meta, frame, iframe, object, embed…
const ALLOWED_ELEMENTS: [&str; 55] = [
    "a",
    "abbr",
    "acronym",
    "address",
    "b",
    "bdo",
    "big",
    "blockquote",
    "br",
    "caption",
    "cite",
    "code",
    "col",
    "colgroup",
    "dd",
    "del",
    "dfn",
    "div",
    "dl",
    "dt",
    "em",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "hr",
    "i",
    "img",
    "ins",
    "kbd",
    "li",
    "ol",
    "p",
    "pre",
    "q",
    "s",
    "samp",
    "small",
    "span",
    "strong",
    "sub",
    "sup",
    "table",
    "tbody",
    "td",
    "tfoot",
    "th",
    "thead",
    "tr",
    "tt",
    "u",
    "ul",
    "var",
];

/// Attributes any element may carry (HTML 4.0 %coreattrs, %i18n; no event attributes: txt-1).
const GLOBAL_ATTRIBUTES: [&str; 7] = ["id", "class", "style", "title", "lang", "xml:lang", "dir"];

/// Attributes of particular elements.
const ELEMENT_ATTRIBUTES: [(&str, &[&str]); 15] = [
    (
        "a",
        &[
            "href", "name", "rel", "rev", "hreflang", "type", "charset", "shape", "coords",
        ],
    ),
    ("img", &["src", "alt", "width", "height", "longdesc"]),
    (
        "table",
        &[
            "border",
            "cellpadding",
            "cellspacing",
            "summary",
            "width",
            "frame",
            "rules",
        ],
    ),
    (
        "td",
        &[
            "colspan", "rowspan", "headers", "abbr", "axis", "scope", "align", "valign", "char", "charoff",
        ],
    ),
    (
        "th",
        &[
            "colspan", "rowspan", "headers", "abbr", "axis", "scope", "align", "valign", "char", "charoff",
        ],
    ),
    ("tr", &["align", "valign", "char", "charoff"]),
    ("thead", &["align", "valign", "char", "charoff"]),
    ("tbody", &["align", "valign", "char", "charoff"]),
    ("tfoot", &["align", "valign", "char", "charoff"]),
    ("col", &["span", "width", "align", "valign", "char", "charoff"]),
    ("colgroup", &["span", "width", "align", "valign", "char", "charoff"]),
    ("ol", &["start", "type"]),
    ("li", &["value", "type"]),
    ("blockquote", &["cite"]),
    ("q", &["cite"]),
];

/// Attributes that hold a URL (and the two elements with `cite` the table above leaves out).
const URL_ATTRIBUTES: [&str; 4] = ["href", "src", "longdesc", "cite"];
const CITE_ELEMENTS: [&str; 2] = ["ins", "del"];

/// The URL schemes a narrative may link to; a URL without a scheme (relative, `#anchor`) is fine.
/// `javascript:`, `vbscript:`, `data:` and every other scheme are refused: a narrative is shown to
/// clinicians in EHR screens, and a link or image there must not run code or smuggle content.
const ALLOWED_SCHEMES: [&str; 6] = ["http", "https", "mailto", "tel", "urn", "cid"];

fn attribute_allowed(element: &str, attribute: &str) -> bool {
    GLOBAL_ATTRIBUTES.contains(&attribute)
        || ELEMENT_ATTRIBUTES
            .iter()
            .any(|(e, attrs)| *e == element && attrs.contains(&attribute))
        || (attribute == "cite" && CITE_ELEMENTS.contains(&element))
        || (attribute == "datetime" && CITE_ELEMENTS.contains(&element))
}

/// Why a URL in a narrative is refused, if it is.
fn url_problem(url: &str) -> Option<String> {
    // Browsers drop ASCII whitespace and control characters inside a URL before reading its scheme
    // (`java\tscript:` runs), so they are dropped here too.
    let compact: String = url
        .chars()
        .filter(|c| !c.is_ascii_whitespace() && !c.is_ascii_control())
        .collect();
    let scheme = compact.split_once(':').map(|(s, _)| s).filter(|s| {
        s.starts_with(|c: char| c.is_ascii_alphabetic())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    });
    match scheme {
        Some(s) if !ALLOWED_SCHEMES.iter().any(|a| s.eq_ignore_ascii_case(a)) => Some(format!(
            "a '{}:' URL (allowed: {}, or a relative URL)",
            s.to_ascii_lowercase().chars().take(32).collect::<String>(),
            ALLOWED_SCHEMES.join(", ")
        )),
        _ => None,
    }
}

/// Why an inline style is refused, if it is: a style may format, not fetch or run anything.
fn style_problem(style: &str) -> Option<&'static str> {
    let lower = style.to_ascii_lowercase();
    if lower.contains('\\') {
        return Some("a CSS escape");
    }
    let compact: String = lower.chars().filter(|c| !c.is_whitespace()).collect();
    [
        "url(",
        "expression(",
        "@import",
        "javascript:",
        "behavior:",
        "-moz-binding",
    ]
    .iter()
    .any(|bad| compact.contains(bad))
    .then_some("a URL, import or script")
}

/// Why a narrative is refused: `key` names the R4 invariant it breaks (txt-1, txt-2), or is None
/// when it is not one well-formed XHTML `div` at all (a structure error, like any unparsable value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DivProblem {
    pub key: Option<&'static str>,
    pub message: String,
}

impl DivProblem {
    fn structure(message: impl Into<String>) -> DivProblem {
        DivProblem {
            key: None,
            message: message.into(),
        }
    }

    fn txt_1(message: impl Into<String>) -> DivProblem {
        DivProblem {
            key: Some("txt-1"),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for DivProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Checks that a narrative is one well-formed XHTML `div` element of the allowed elements and
/// attributes (txt-1) with some content (txt-2: "The narrative SHALL have some non-whitespace
/// content"; an image counts).
pub fn check_div(div: &str) -> Result<(), DivProblem> {
    let trimmed = div.trim();
    if !trimmed.starts_with("<div") || !XHTML_DIV_ATTRS.iter().any(|a| first_tag(trimmed).contains(a)) {
        return Err(DivProblem::structure(
            "text.div must be an XHTML <div> element in the namespace http://www.w3.org/1999/xhtml",
        ));
    }
    let mut reader = quick_xml::Reader::from_str(trimmed);
    reader.check_end_names(true).check_comments(true);
    let mut depth = 0usize;
    let mut roots = 0usize;
    let mut content = false;
    // Inside <pre> whitespace is shown as written, so it is content: the official R4 example
    // questionnaire-example-zika-virus-exposure-assessment has nothing else in its narrative.
    let mut in_pre = 0usize;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| DivProblem::structure(format!("text.div is not well-formed XHTML: {e}")))?;
        if let Event::Start(e) | Event::Empty(e) = &event {
            check_element(e)?;
            content |= e.local_name().as_ref() == b"img";
        }
        match event {
            Event::Start(e) => {
                if depth == 0 {
                    roots += 1;
                }
                depth += 1;
                in_pre += usize::from(e.local_name().as_ref() == b"pre");
            }
            Event::End(e) => {
                depth = depth.saturating_sub(1);
                in_pre -= usize::from(e.local_name().as_ref() == b"pre" && in_pre > 0);
            }
            Event::Empty(_) if depth == 0 => roots += 1,
            Event::Text(t) if depth == 0 && !t.iter().all(u8::is_ascii_whitespace) => roots += 2,
            Event::Text(t) => content |= (in_pre > 0 && !t.is_empty()) || !t.iter().all(u8::is_ascii_whitespace),
            Event::CData(t) => content |= !t.iter().all(u8::is_ascii_whitespace),
            Event::DocType(_) | Event::PI(_) => {
                return Err(DivProblem::txt_1(
                    "text.div may not hold a DOCTYPE or processing instruction",
                ))
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if depth != 0 || roots != 1 {
        return Err(DivProblem::structure(
            "text.div is not one well-formed XHTML <div> element",
        ));
    }
    if !content {
        return Err(DivProblem {
            key: Some("txt-2"),
            message: "The narrative SHALL have some non-whitespace content".into(),
        });
    }
    Ok(())
}

/// One element of a narrative: an allowed name without a prefix, allowed attributes, safe URLs.
fn check_element(e: &quick_xml::events::BytesStart) -> Result<(), DivProblem> {
    let raw_name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
    let name: String = raw_name.chars().take(32).collect();
    if !ALLOWED_ELEMENTS.contains(&raw_name.as_str()) {
        return Err(DivProblem::txt_1(format!(
            "text.div may not hold a <{name}> element: a narrative holds only basic HTML formatting"
        )));
    }
    for attribute in e.attributes().with_checks(true) {
        let attribute =
            attribute.map_err(|err| DivProblem::structure(format!("text.div is not well-formed XHTML: {err}")))?;
        let key = String::from_utf8_lossy(attribute.key.as_ref()).into_owned();
        let shown: String = key.chars().take(32).collect();
        if key == "xmlns" {
            let value = attribute
                .unescape_value()
                .map_err(|err| DivProblem::structure(format!("text.div: {err}")))?;
            if value != "http://www.w3.org/1999/xhtml" {
                return Err(DivProblem::txt_1(
                    "text.div may hold XHTML only (xmlns http://www.w3.org/1999/xhtml)",
                ));
            }
            continue;
        }
        if !attribute_allowed(&raw_name, &key) {
            return Err(DivProblem::txt_1(format!(
                "text.div may not hold the attribute '{shown}' on <{name}>: no event attributes, no other namespaces"
            )));
        }
        if URL_ATTRIBUTES.contains(&key.as_str()) || key == "style" {
            let value = attribute.unescape_value().map_err(|err| {
                DivProblem::structure(format!("text.div: the attribute '{shown}' on <{name}>: {err}"))
            })?;
            let problem = if key == "style" {
                style_problem(&value).map(str::to_string)
            } else {
                url_problem(&value)
            };
            if let Some(problem) = problem {
                return Err(DivProblem::txt_1(format!(
                    "text.div may not hold {problem} in '{shown}' on <{name}>"
                )));
            }
        }
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

    #[test]
    fn the_narrative_allow_list() {
        let wrap = |inner: &str| format!(r#"<div xmlns="http://www.w3.org/1999/xhtml">{inner}</div>"#);
        for ok in [
            "<p>Ann <b>Smith</b>, <i>born</i> 1980</p>",
            r#"<table border="1"><tbody><tr><td colspan="2" style="color: red">x</td></tr></tbody></table>"#,
            r#"<a href="http://example.org/x">x</a> <a href="HTTPS://example.org">y</a> <a href="mailto:a@b.c">z</a>"#,
            r##"<a href="#top">up</a> <a href="genomics.html">rel</a> <a name="top">anchor</a>"##,
            r#"<img src="pkb.png" alt="logo"/>"#,
            r#"<ul><li>one</li></ul><ol start="2"><li value="2">two</li></ol><pre>  x  </pre><br/><hr/>"#,
            r#"<span xml:lang="en" lang="en" dir="ltr" id="a1" class="c" title="t">x</span>"#,
            "<!-- a comment --><p>text &amp; &#160;more</p>",
            "\n      <pre>\n      </pre>\n    ",
            r#"<blockquote cite="http://example.org">quote</blockquote>"#,
        ] {
            assert_eq!(check_div(&wrap(ok)), Ok(()), "{ok}");
        }
        for bad in [
            "<script>alert(1)</script>",
            "<p>x<script src=\"http://evil\"/></p>",
            r#"<p onclick="alert(1)">x</p>"#,
            r#"<img src="x.png" onerror="alert(1)"/>"#,
            r#"<p ONMOUSEOVER="alert(1)">x</p>"#,
            r#"<a href="javascript:alert(1)">x</a>"#,
            r#"<a href=" JaVaScRiPt:alert(1)">x</a>"#,
            "<a href=\"java&#9;script:alert(1)\">x</a>",
            r#"<a href="&#106;avascript:alert(1)">x</a>"#,
            r#"<a href="vbscript:x">x</a>"#,
            r#"<img src="data:image/png;base64,iVBORw0KGgo="/>"#,
            r#"<iframe src="http://example.org"></iframe>"#,
            r#"<form action="http://example.org"><input name="x"/></form>"#,
            "<object data=\"x\"></object>",
            "<embed src=\"x\"/>",
            "<frameset><frame src=\"x\"/></frameset>",
            "<head><title>x</title></head>",
            "<body>x</body>",
            r#"<base href="http://evil/"/>"#,
            r#"<link rel="stylesheet" href="http://evil/x.css"/>"#,
            "<style>p { color: red }</style>",
            "<meta http-equiv=\"refresh\" content=\"0\"/>",
            r#"<a xmlns:xlink="http://www.w3.org/1999/xlink" xlink:href="javascript:alert(1)">x</a>"#,
            r#"<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>"#,
            r#"<p xmlns="http://www.w3.org/2000/svg">x</p>"#,
            r#"<span style="background: url(http://evil/track.png)">x</span>"#,
            r#"<span style="width: expression(alert(1))">x</span>"#,
            r#"<span style="\75rl(x)">x</span>"#,
            r#"<p id="a" id="b">x</p>"#,
            "<?php echo 1 ?><p>x</p>",
            "   ",
            "<p> </p><br/>",
        ] {
            assert!(check_div(&wrap(bad)).is_err(), "{bad}");
        }
    }
}
