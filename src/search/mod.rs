//! FHIR search (search.html): parse a query into a typed search, then plan it into SQL over the
//! index tables ([`plan`]). Nothing here scans stored JSON.

pub mod audit;
pub mod plan;

use crate::error::Error;
use crate::resources::ResourceType;

/// What a criterion's key names: a parameter, a chain through a reference, or a reverse chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// `name` or `name:modifier`.
    Param { name: String, modifier: Option<String> },
    /// `ref[:Type].rest`: resources whose reference `ref` points to a resource matching `rest`.
    Chain {
        name: String,
        target_type: Option<String>,
        rest: Box<Key>,
    },
    /// `_has:Type:ref:rest`: resources pointed at (by `ref`) from a `Type` matching `rest`.
    Has {
        res_type: String,
        reference: String,
        rest: Box<Key>,
    },
}

/// One `key=value[,value…]` of the query: the values are alternatives (OR); criteria are ANDed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Criterion {
    pub raw_key: String,
    pub key: Key,
    pub values: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortKey {
    pub param: String,
    pub descending: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Include {
    pub source_type: String,
    /// The reference parameter, or None for `*`.
    pub param: Option<String>,
    pub target_type: Option<String>,
    pub iterate: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Total {
    None,
    Estimate,
    Accurate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Summary {
    /// `_summary=false` or absent: whole resources.
    Full,
    /// `_summary=true`: the elements R4 marks as summary.
    True,
    Count,
    Text,
    Data,
}

/// The longest search value, in characters. Longer stored values are still found (by their start,
/// or `:exact` and `:contains` within this length); the bound keeps every condition within what
/// both databases accept (SQLite refuses a LIKE pattern over 50,000 bytes: 4,096 characters of at
/// most 4 bytes, each escaped at most once, stay under 33,000).
pub const MAX_VALUE_CHARS: usize = 4096;

/// A parsed search.
#[derive(Debug, Clone)]
pub struct Search {
    pub criteria: Vec<Criterion>,
    pub sort: Vec<SortKey>,
    pub count: Option<i64>,
    pub total: Total,
    pub summary: Summary,
    pub elements: Vec<String>,
    pub includes: Vec<Include>,
    pub revincludes: Vec<Include>,
    /// The page cursor of a next/previous link (`_cursor`).
    pub cursor: Option<String>,
}

/// Most `_sort` keys in one search (all `_sort` parameters together). Each key is one correlated
/// subquery per matching row: 50 keys ran past 10 s (issue 21), and on 1,000 Patients each key
/// added about a second in a debug build. search.html's examples sort by one to three keys.
pub const MAX_SORT_KEYS: usize = 5;

/// Most comma-separated values (alternatives, ORed) of one criterion. Each is a term of one SQL
/// expression: SQLite refused 499 string, token or date alternatives (its expression tree is at
/// most 1,000 deep) and PostgreSQL 70,000 (65,535 bind parameters), both as a 500.
pub const MAX_VALUES: usize = 200;

/// Query parameters that shape the response rather than select resources, or that belong to the
/// HTTP layer.
const RESULT_PARAMS: [&str; 11] = [
    "_count",
    "_sort",
    "_total",
    "_summary",
    "_elements",
    "_include",
    "_revinclude",
    "_format",
    "_pretty",
    "_cursor",
    "_type",
];

/// The name/value pairs of a query string or a form body (`a=1&b=2`, percent- and plus-decoded,
/// in order): the one place a query is split, for URLs, `_search` bodies, conditional criteria,
/// Bundle entries and Subscription criteria alike.
pub fn pairs(query: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(query)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

impl Search {
    /// Parses the query pairs of a search. Criteria are kept as written; whether their parameters
    /// exist for the type is decided when planning.
    pub fn parse(pairs: &[(String, String)]) -> Result<Search, Error> {
        let mut search = Search {
            criteria: Vec::new(),
            sort: Vec::new(),
            count: None,
            total: Total::Accurate,
            summary: Summary::Full,
            elements: Vec::new(),
            includes: Vec::new(),
            revincludes: Vec::new(),
            cursor: None,
        };
        for (raw_key, value) in pairs {
            if let Some(c) = crate::fhir::control_character(raw_key).or_else(|| crate::fhir::control_character(value)) {
                // datatypes.html#string: no FHIR value holds one, so no search value may (and
                // PostgreSQL cannot compare text holding a NUL).
                return Err(Error::Invalid(format!(
                    "search parameter '{}' holds the control character U+{:04X}",
                    raw_key.escape_debug().take(64).collect::<String>(),
                    c as u32
                )));
            }
            let (base, modifier) = raw_key.split_once(':').unwrap_or((raw_key.as_str(), ""));
            if RESULT_PARAMS.contains(&base) {
                search.result_param(base, modifier, value)?;
                continue;
            }
            let key = parse_key(raw_key)
                .ok_or_else(|| Error::Invalid(format!("search parameter '{raw_key}' is malformed")))?;
            let values = split_values(value);
            if values.len() > MAX_VALUES {
                return Err(Error::TooCostly(format!(
                    "search parameter '{raw_key}' has {} values; this server takes at most {MAX_VALUES} alternatives per parameter",
                    values.len()
                )));
            }
            if values.iter().any(|v| v.chars().count() > MAX_VALUE_CHARS) {
                return Err(Error::TooCostly(format!(
                    "a value of search parameter '{raw_key}' is longer than {MAX_VALUE_CHARS} characters"
                )));
            }
            search.criteria.push(Criterion {
                raw_key: raw_key.clone(),
                key,
                values,
            });
        }
        Ok(search)
    }

    fn result_param(&mut self, name: &str, modifier: &str, value: &str) -> Result<(), Error> {
        let invalid = |what: &str| Error::Invalid(format!("{name} '{value}' is not valid: {what}"));
        match name {
            "_count" => {
                let n: i64 = value
                    .parse()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| invalid("expected a non-negative integer"))?;
                self.count = Some(n);
            }
            "_sort" => {
                for key in value.split(',').map(str::trim).filter(|k| !k.is_empty()) {
                    if self.sort.len() == MAX_SORT_KEYS {
                        return Err(Error::TooCostly(format!(
                            "_sort has more than {MAX_SORT_KEYS} keys; this server sorts by at most {MAX_SORT_KEYS}"
                        )));
                    }
                    let (descending, param) = match key.strip_prefix('-') {
                        Some(p) => (true, p),
                        None => (false, key),
                    };
                    self.sort.push(SortKey {
                        param: param.to_string(),
                        descending,
                    });
                }
            }
            "_total" => {
                self.total = match value {
                    "none" => Total::None,
                    "estimate" => Total::Estimate,
                    "accurate" => Total::Accurate,
                    _ => return Err(invalid("expected none, estimate or accurate")),
                }
            }
            "_summary" => {
                self.summary = match value {
                    "false" => Summary::Full,
                    "count" => Summary::Count,
                    "text" => Summary::Text,
                    "data" => Summary::Data,
                    "true" => Summary::True,
                    _ => return Err(invalid("expected true, text, data, count or false")),
                }
            }
            "_elements" => self.elements.extend(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|e| !e.is_empty())
                    .map(str::to_string),
            ),
            "_include" | "_revinclude" => {
                let include =
                    parse_include(value, modifier).ok_or_else(|| invalid("expected Type:param[:TargetType] or *"))?;
                if name == "_include" {
                    self.includes.push(include);
                } else {
                    self.revincludes.push(include);
                }
            }
            "_cursor" => self.cursor = Some(value.to_string()),
            _ => {} // _format, _pretty (HTTP layer), _type (system search)
        }
        Ok(())
    }
}

fn parse_include(value: &str, modifier: &str) -> Option<Include> {
    let iterate = match modifier {
        "" => false,
        "iterate" | "recurse" => true,
        _ => return None,
    };
    if value == "*" {
        return Some(Include {
            source_type: "*".into(),
            param: None,
            target_type: None,
            iterate,
        });
    }
    let parts: Vec<&str> = value.split(':').collect();
    let (source, param, target) = match parts.as_slice() {
        [s, p] => (*s, *p, None),
        [s, p, t] => (*s, *p, Some(t.to_string())),
        _ => return None,
    };
    if source.is_empty() || param.is_empty() {
        return None;
    }
    let param = if param == "*" { None } else { Some(param.to_string()) };
    Some(Include {
        source_type: source.to_string(),
        param,
        target_type: target,
        iterate,
    })
}

/// `a.b`, `a:Type.b`, `_has:Type:ref:rest`, `name:modifier`.
pub fn parse_key(raw: &str) -> Option<Key> {
    if let Some(rest) = raw.strip_prefix("_has:") {
        let mut parts = rest.splitn(3, ':');
        let res_type = parts.next().filter(|s| !s.is_empty())?;
        let reference = parts.next().filter(|s| !s.is_empty())?;
        let inner = parts.next().filter(|s| !s.is_empty())?;
        return Some(Key::Has {
            res_type: res_type.into(),
            reference: reference.into(),
            rest: Box::new(parse_key(inner)?),
        });
    }
    if let Some((head, tail)) = raw.split_once('.') {
        let (name, target_type) = match head.split_once(':') {
            Some((n, t)) => (n, Some(t.to_string())),
            None => (head, None),
        };
        if name.is_empty() || tail.is_empty() {
            return None;
        }
        return Some(Key::Chain {
            name: name.into(),
            target_type,
            rest: Box::new(parse_key(tail)?),
        });
    }
    let (name, modifier) = match raw.split_once(':') {
        Some((n, m)) => (n, Some(m.to_string())),
        None => (raw, None),
    };
    (!name.is_empty()).then(|| Key::Param {
        name: name.into(),
        modifier,
    })
}

/// Splits `a,b\,c` into `a` and `b,c` (search.html#escaping).
pub fn split_values(value: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(next @ (',' | '\\')) => push_char(&mut out, next),
                // `\|` and `\$` stay escaped until the value's own parts are split.
                Some(next) => {
                    push_char(&mut out, '\\');
                    push_char(&mut out, next);
                }
                None => push_char(&mut out, '\\'),
            },
            ',' => out.push(String::new()),
            c => push_char(&mut out, c),
        }
    }
    out
}

fn push_char(out: &mut [String], c: char) {
    if let Some(last) = out.last_mut() {
        last.push(c);
    }
}

/// Splits a token/quantity value at the first unescaped `|`, unescaping both sides.
pub fn split_pipe(value: &str) -> (Option<String>, String) {
    let mut in_escape = false;
    for (i, c) in value.char_indices() {
        match c {
            '\\' if !in_escape => in_escape = true,
            '|' if !in_escape => return (Some(unescape(&value[..i])), unescape(&value[i + 1..])),
            _ => in_escape = false,
        }
    }
    (None, unescape(value))
}

pub fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// The types a reference parameter may point to, narrowed by a `:Type` modifier.
pub fn reference_targets(rt: ResourceType, param: &str, modifier: Option<&str>) -> Vec<String> {
    let declared: Vec<String> = rt
        .search_params()
        .iter()
        .find(|p| p.code == param)
        .map(|p| p.targets.clone())
        .unwrap_or_default();
    match modifier {
        Some(t) => vec![t.to_string()],
        None => declared,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn keys_parse_into_params_chains_and_reverse_chains() {
        assert_eq!(
            parse_key("name:exact"),
            Some(Key::Param {
                name: "name".into(),
                modifier: Some("exact".into())
            })
        );
        assert_eq!(
            parse_key("actor:Practitioner.name"),
            Some(Key::Chain {
                name: "actor".into(),
                target_type: Some("Practitioner".into()),
                rest: Box::new(Key::Param {
                    name: "name".into(),
                    modifier: None
                })
            })
        );
        assert_eq!(
            parse_key("_has:Appointment:patient:status"),
            Some(Key::Has {
                res_type: "Appointment".into(),
                reference: "patient".into(),
                rest: Box::new(Key::Param {
                    name: "status".into(),
                    modifier: None
                })
            })
        );
        assert_eq!(parse_key("_has:Appointment:patient"), None);
        assert_eq!(parse_key(".x"), None);
    }

    #[test]
    fn values_split_on_unescaped_commas() {
        assert_eq!(split_values("a,b\\,c"), vec!["a".to_string(), "b,c".to_string()]);
        assert_eq!(split_pipe("http://s|c"), (Some("http://s".into()), "c".into()));
        assert_eq!(split_pipe("|c"), (Some(String::new()), "c".into()));
        assert_eq!(split_pipe("a\\|b"), (None, "a|b".into()));
    }

    #[test]
    fn result_parameters_are_understood() {
        let s = Search::parse(&pairs(&[
            ("_count", "10"),
            ("_sort", "-date,_id"),
            ("_include:iterate", "Appointment:patient"),
            ("_revinclude", "CareTeam:subject:Patient"),
            ("_total", "none"),
            ("family", "Chalmers,Smith"),
        ]))
        .unwrap();
        assert_eq!(s.count, Some(10));
        assert_eq!(
            s.sort,
            vec![
                SortKey {
                    param: "date".into(),
                    descending: true
                },
                SortKey {
                    param: "_id".into(),
                    descending: false
                }
            ]
        );
        assert!(s.includes[0].iterate);
        assert_eq!(s.revincludes[0].target_type.as_deref(), Some("Patient"));
        assert_eq!(s.total, Total::None);
        assert_eq!(s.criteria[0].values, vec!["Chalmers".to_string(), "Smith".to_string()]);
        assert!(Search::parse(&pairs(&[("_count", "x")])).is_err());
        assert!(Search::parse(&pairs(&[("_include", "nonsense")])).is_err());
    }
}
