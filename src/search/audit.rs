//! Search over the audit trail (`GET /AuditEvent?…`). AuditEvents live in their own append-only
//! table, not among the hosted resources, so they have their own small planner: the R4 AuditEvent
//! parameters a privacy officer asks with — `_id`, `date`, `action`, `outcome`, `subtype`, `type`,
//! `altid`, `address`, `agent`, `entity`, `patient` — over indexed columns, newest first, paged by a
//! keyset cursor (the log only grows, so pages never shift).

use super::plan::{bad_value, date_columns_condition, Sql};
use super::{split_pipe, Criterion, Key, Search};
use crate::error::Error;

/// The parameters tandem answers for AuditEvent, with their R4 types and what they match.
pub const AUDIT_PARAMS: [(&str, &str, &str); 11] = [
    ("_id", "token", "The id of the AuditEvent"),
    ("date", "date", "When the event was recorded"),
    ("action", "token", "C R U D E: the kind of action"),
    (
        "outcome",
        "token",
        "0 success, 4 refused or failed (4xx), 8 server failure (5xx)",
    ),
    (
        "subtype",
        "token",
        "The restful interaction (read, search-type, create, operation…)",
    ),
    ("type", "token", "Always rest (RESTful Operation)"),
    ("altid", "token", "The token subject (sub) of the caller"),
    ("address", "string", "The caller's network address"),
    (
        "agent",
        "reference",
        "The caller's FHIR user (fhirUser), such as Practitioner/7",
    ),
    ("entity", "reference", "A resource acted on, such as Appointment/123"),
    ("patient", "reference", "A patient whose record was concerned"),
];

/// A planned AuditEvent search: `WHERE …` over `audit_events a`, and the order.
#[derive(Debug, Clone)]
pub struct AuditPlan {
    pub where_sql: Sql,
    pub newest_first: bool,
    pub ignored: Vec<String>,
    pub applied: Vec<(String, String)>,
}

fn column_equals(sql: &mut Sql, column: &str, values: &[String]) {
    sql.push("(");
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            sql.push(" OR ");
        }
        let (_, code) = split_pipe(v);
        sql.push(&format!("{column} = ")).text_bind(code);
    }
    sql.push(")");
}

/// Events with a `kind` reference to one of `values`: those already indexed (audit_refs, by its
/// key), and those whose references still wait for the indexer (audit_refs_pending, a short table,
/// scanned; see Store::index_audit_refs). One statement reads both, so each event is found once.
fn refs(sql: &mut Sql, kind: &str, values: &[String], default_type: Option<&str>) {
    let values: Vec<String> = values
        .iter()
        .map(|v| match default_type {
            Some(t) if !v.contains('/') => format!("{t}/{v}"),
            _ => v.clone(),
        })
        .collect();
    sql.push("a.id IN (SELECT event_id FROM audit_refs WHERE kind = ")
        .text_bind(kind)
        .push(" AND ref IN (")
        .text_binds(values.iter().cloned())
        .push(") UNION ALL SELECT event_id FROM audit_refs_pending WHERE ");
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            sql.push(" OR ");
        }
        // A reference with a line break can match no stored one (see store::audit::pending_refs).
        sql.contains("refs", &crate::store::pending_ref_needle(kind, v));
    }
    sql.push(")");
}

/// Plans an AuditEvent search. Unknown parameters are ignored (reported) or, with `strict`, refused.
pub fn plan_audit(search: &Search, strict: bool) -> Result<AuditPlan, Error> {
    let mut where_sql = Sql::new("1 = 1");
    let mut ignored = Vec::new();
    let mut applied = Vec::new();
    for c in &search.criteria {
        let Key::Param { name, modifier } = &c.key else {
            return Err(Error::Invalid(format!(
                "search parameter '{}': AuditEvent searches take no chains",
                c.raw_key
            )));
        };
        if modifier.is_some() {
            return Err(Error::Invalid(format!(
                "search parameter '{}': modifiers are not supported on AuditEvent",
                c.raw_key
            )));
        }
        if c.values.iter().any(String::is_empty) {
            return Err(Error::Invalid(format!("search parameter '{}' has no value", c.raw_key)));
        }
        // The trail stores no control character (audit::clean escapes them; FHIR strings should hold
        // none, R4 datatypes.html#string), so a value with one matches nothing, and PostgreSQL
        // refuses a NUL in a bound value: refuse it here.
        if c.values.iter().any(|v| v.chars().any(char::is_control)) {
            return Err(Error::Invalid(format!(
                "search parameter '{}': a value holds a control character",
                c.raw_key
            )));
        }
        where_sql.push(" AND ");
        match name.as_str() {
            "_id" => column_equals(&mut where_sql, "a.id", &c.values),
            "action" => column_equals(&mut where_sql, "a.action", &c.values),
            "outcome" => column_equals(&mut where_sql, "a.outcome", &c.values),
            "subtype" => column_equals(&mut where_sql, "a.subtype", &c.values),
            "altid" => column_equals(&mut where_sql, "a.altid", &c.values),
            "type" => {
                let rest = c.values.iter().any(|v| split_pipe(v).1 == "rest");
                where_sql.push(if rest { "1 = 1" } else { "1 = 0" });
            }
            "address" => {
                where_sql.push("(");
                for (i, v) in c.values.iter().enumerate() {
                    if i > 0 {
                        where_sql.push(" OR ");
                    }
                    where_sql.push("a.address = ").text_bind(v.clone());
                }
                where_sql.push(")");
            }
            "date" => {
                where_sql.push("(");
                for (i, v) in c.values.iter().enumerate() {
                    if i > 0 {
                        where_sql.push(" OR ");
                    }
                    date_columns_condition(&mut where_sql, v, c, "a.recorded", "a.recorded")?;
                }
                where_sql.push(")");
            }
            "agent" => refs(&mut where_sql, "agent", &c.values, None),
            "entity" => refs(&mut where_sql, "entity", &c.values, None),
            "patient" => refs(&mut where_sql, "patient", &c.values, Some("Patient")),
            _ => {
                // Undo the " AND " just written.
                where_sql.text.truncate(where_sql.text.len() - 5);
                if strict {
                    return Err(Error::Invalid(format!("unknown search parameter '{}'", c.raw_key)));
                }
                ignored.push(c.raw_key.clone());
                continue;
            }
        }
        applied.push((c.raw_key.clone(), c.values.join(",")));
    }
    let newest_first = match search.sort.as_slice() {
        [] => true,
        [k] if k.param == "date" || k.param == "_lastUpdated" => k.descending,
        [k, ..] => {
            return Err(bad_value(
                &Criterion {
                    raw_key: "_sort".into(),
                    key: Key::Param {
                        name: "_sort".into(),
                        modifier: None,
                    },
                    values: vec![],
                },
                &k.param,
                "cannot sort AuditEvents: use date or -date",
            ))
        }
    };
    if !search.includes.is_empty() || !search.revincludes.is_empty() {
        return Err(Error::Invalid(
            "_include and _revinclude are not supported on AuditEvent".into(),
        ));
    }
    Ok(AuditPlan {
        where_sql,
        newest_first,
        ignored,
        applied,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planned(q: &[(&str, &str)]) -> Result<AuditPlan, Error> {
        let pairs: Vec<(String, String)> = q.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        plan_audit(&Search::parse(&pairs)?, false)
    }

    #[test]
    fn parameters_become_bound_conditions() {
        let p = planned(&[
            ("patient", "p1"),
            ("outcome", "4"),
            ("date", "ge2026-11-01"),
            ("foo", "x"),
        ])
        .unwrap();
        assert!(p.where_sql.text.contains("audit_refs"));
        assert!(p.where_sql.text.contains("a.outcome = ?"));
        assert!(p
            .where_sql
            .binds
            .contains(&super::super::plan::Bind::Text("Patient/p1".into())));
        assert_eq!(p.ignored, vec!["foo".to_string()]);
        assert!(p.newest_first);
        assert!(planned(&[("_sort", "date")]).is_ok_and(|p| !p.newest_first));
        assert!(planned(&[("_sort", "action")]).is_err());
        assert!(planned(&[("date", "yesterday")]).is_err());
        assert!(
            planned(&[("entity", "Patient/\u{0}")]).is_err(),
            "a control character is refused"
        );
        assert!(planned(&[("altid", "a\u{1b}b")]).is_err());
    }
}
