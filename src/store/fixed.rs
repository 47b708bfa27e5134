//! PostgreSQL statements of a fixed shape, which diesel prepares once per connection and keeps in
//! its statement cache (keyed by their text), where its own builder sends a statement of a new
//! shape each time, parsed and planned again by the server as an unnamed statement: a multi-row
//! `INSERT … VALUES (…), (…)` (its text changes with the number of rows) and any `sql_query`
//! (diesel cannot know that its text is fixed).
//!
//! Rows go in as `INSERT … SELECT … FROM unnest($1, $2, …)`, one array per column, whatever their
//! number (PostgreSQL's `unnest` of several arrays yields their rows side by side:
//! functions-array.html#ARRAY-FUNCTIONS-TABLE). SQLite has no arrays; it keeps the multi-row
//! inserts, whose preparation costs it little (no server round trip, no planner of note).

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::{Array, BigInt, Bool, Double, Nullable, Text, Untyped};
use diesel::{PgConnection, QueryResult, RunQueryDsl};

/// One bound value: a column's array, or one value for every row.
pub(super) enum Bind<'a> {
    One(&'a str),
    OneInt(i64),
    OneFloat(f64),
    Text(Vec<&'a str>),
    OptText(Vec<Option<&'a str>>),
    Int(Vec<i64>),
    OptInt(Vec<Option<i64>>),
    OptBool(Vec<Option<bool>>),
    Float(Vec<f64>),
}

/// A statement, `?` where each bind goes, in order: a constant text ([`Fixed::new`]) or one of the
/// search planner's ([`Fixed::planned`]).
pub(super) struct Fixed<'a> {
    sql: std::borrow::Cow<'a, str>,
    binds: Vec<Bind<'a>>,
    /// Prepared once per connection and kept (diesel's cache, by text); else sent unnamed.
    keep: bool,
}

impl<'a> Fixed<'a> {
    pub(super) fn new(sql: &'static str, binds: Vec<Bind<'a>>) -> Fixed<'a> {
        debug_assert_eq!(sql.matches('?').count(), binds.len(), "{sql}");
        Fixed {
            sql: sql.into(),
            binds,
            keep: true,
        }
    }

    /// A planned statement ([`crate::search::plan::Sql`]), kept prepared when [`keep_prepared`]
    /// says so.
    pub(super) fn planned(sql: &'a crate::search::plan::Sql) -> Fixed<'a> {
        use crate::search::plan::Bind as B;
        let text = sql.text_for(true);
        let keep = keep_prepared(&text);
        Fixed {
            sql: text,
            binds: sql
                .binds
                .iter()
                .map(|b| match b {
                    B::Text(v) => Bind::One(v),
                    B::BigInt(v) => Bind::OneInt(*v),
                    B::Double(v) => Bind::OneFloat(*v),
                })
                .collect(),
            keep,
        }
    }
}

impl QueryId for Fixed<'_> {
    type QueryId = ();
    // Cached by its text (and its binds' types), which is the same every time.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl Query for Fixed<'_> {
    type SqlType = Untyped;
}

impl RunQueryDsl<PgConnection> for Fixed<'_> {}

impl QueryFragment<Pg> for Fixed<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        if !self.keep {
            out.unsafe_to_cache_prepared();
        }
        // Every value is bound, so the only `?` in the text are placeholders.
        let mut parts = self.sql.split('?');
        out.push_sql(parts.next().unwrap_or_default());
        for (bind, part) in self.binds.iter().zip(parts) {
            match bind {
                Bind::One(v) => out.push_bind_param::<Text, _>(v)?,
                Bind::OneInt(v) => out.push_bind_param::<BigInt, _>(v)?,
                Bind::OneFloat(v) => out.push_bind_param::<Double, _>(v)?,
                Bind::Text(v) => out.push_bind_param::<Array<Text>, _>(v)?,
                Bind::OptText(v) => out.push_bind_param::<Array<Nullable<Text>>, _>(v)?,
                Bind::Int(v) => out.push_bind_param::<Array<BigInt>, _>(v)?,
                Bind::OptInt(v) => out.push_bind_param::<Array<Nullable<BigInt>>, _>(v)?,
                Bind::OptBool(v) => out.push_bind_param::<Array<Nullable<Bool>>, _>(v)?,
                Bind::Float(v) => out.push_bind_param::<Array<Double>, _>(v)?,
            }
            out.push_sql(part);
        }
        Ok(())
    }
}

/// Runs `sql` with `binds` unless there are no rows to insert.
pub(super) fn insert(pg: &mut PgConnection, rows: usize, sql: &'static str, binds: Vec<Bind<'_>>) -> QueryResult<()> {
    if rows > 0 {
        Fixed::new(sql, binds).execute(pg)?;
    }
    Ok(())
}

/// `values` of one column.
pub(super) fn col<'a, T: 'a, V>(rows: &'a [T], f: impl Fn(&'a T) -> V) -> Vec<V> {
    rows.iter().map(f).collect()
}

/// Statement texts of the search planner's that a connection may keep prepared. A search's text
/// depends only on its criteria's shape (every value is bound), so a few shapes serve nearly every
/// request; kept prepared, PostgreSQL parses them once per connection and, where its generic plan
/// costs no more than planning each time would (its own choice, plancache.c), plans them once
/// too. Measured on 1,000,000 Appointments, planning was 1.3 of a search's 2.1 ms. The first
/// [`SHAPES_MAX`] texts the process meets are the ones kept, so that no caller can make the server
/// keep an unbounded number of statements; any other is sent unnamed, as before ([`Fixed::planned`]).
static SHAPES: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<String>>> = std::sync::OnceLock::new();
const SHAPES_MAX: usize = 64;

fn keep_prepared(text: &str) -> bool {
    let mut shapes = SHAPES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if shapes.contains(text) {
        return true;
    }
    if shapes.len() < SHAPES_MAX {
        shapes.insert(text.to_string());
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_for_postgres() {
        let mut sql = crate::search::plan::Sql::new("a = ");
        sql.text_bind("x").push(" AND b = ").int_bind(1);
        let sent = diesel::debug_query::<Pg, _>(&Fixed::planned(&sql)).to_string();
        assert!(sent.starts_with("a = $1 AND b = $2 "), "{sent}");
    }

    #[test]
    fn no_more_than_shapes_max_texts_are_kept_prepared() {
        let mut kept = Vec::new();
        let refused = (0..=SHAPES_MAX)
            .map(|i| format!("SELECT {i} -- a shape of this test"))
            .find(|text| {
                let keep = keep_prepared(text);
                if keep {
                    kept.push(text.clone());
                }
                !keep
            })
            .expect("a text past the limit is not kept");
        assert!(kept.len() <= SHAPES_MAX);
        assert!(kept.iter().all(|t| keep_prepared(t)), "a kept text stays kept");
        assert!(!keep_prepared(&refused), "and a refused one stays refused");
    }
}
