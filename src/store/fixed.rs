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
    Text(Vec<&'a str>),
    OptText(Vec<Option<&'a str>>),
    Int(Vec<i64>),
    OptInt(Vec<Option<i64>>),
    OptBool(Vec<Option<bool>>),
    Float(Vec<f64>),
}

/// A statement whose text is a constant, `?` where each bind goes, in order.
pub(super) struct Fixed<'a> {
    sql: &'static str,
    binds: Vec<Bind<'a>>,
}

impl<'a> Fixed<'a> {
    pub(super) fn new(sql: &'static str, binds: Vec<Bind<'a>>) -> Fixed<'a> {
        debug_assert_eq!(sql.matches('?').count(), binds.len(), "{sql}");
        Fixed { sql, binds }
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
        let mut parts = self.sql.split('?');
        out.push_sql(parts.next().unwrap_or_default());
        for (bind, part) in self.binds.iter().zip(parts) {
            match bind {
                Bind::One(v) => out.push_bind_param::<Text, _>(v)?,
                Bind::OneInt(v) => out.push_bind_param::<BigInt, _>(v)?,
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
