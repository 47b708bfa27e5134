//! Running planned searches: the first page straight from the indexes, and — when there are more
//! matches than fit a page — a snapshot of the ordered ids, from which every page is then served.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Double, Text};

use super::schema::{idx_reference, resources, search_results, search_snapshots};
use super::{Abort, AnyConnection, Store, Version};
use crate::error::Error;
use crate::resources::{dates, ResourceType};
use crate::search::plan::{Bind, Planned, Sql};
use crate::search::Include;

/// Rows per INSERT of an operation's snapshot: 4,000 bound values at most (4 columns).
const SNAPSHOT_CHUNK: usize = 1000;

/// How long a search snapshot (and so its next/previous links) stays valid.
const SNAPSHOT_TTL_MS: i64 = 30 * 60 * 1000;

/// One page of a search.
#[derive(Debug)]
pub struct SearchPage {
    pub matches: Vec<Version>,
    pub total: i64,
    /// The snapshot that serves the other pages, when the matches do not fit one page.
    pub snapshot: Option<String>,
    pub offset: i64,
}

#[derive(QueryableByName)]
pub(super) struct IdRow {
    #[diesel(sql_type = Text)]
    pub(super) res_type: String,
    #[diesel(sql_type = Text)]
    pub(super) res_id: String,
}

#[derive(QueryableByName)]
pub(super) struct CountRow {
    #[diesel(sql_type = BigInt)]
    pub(super) n: i64,
}

#[derive(QueryableByName)]
struct SqlitePlanRow {
    #[diesel(sql_type = Text)]
    detail: String,
}

#[derive(QueryableByName)]
struct PgPlanRow {
    #[diesel(sql_type = Text, column_name = "QUERY PLAN")]
    line: String,
}

macro_rules! bound {
    ($backend:ty, $sql:expr, $postgres:expr) => {{
        let mut q = diesel::sql_query($sql.text_for($postgres)).into_boxed::<$backend>();
        for b in &$sql.binds {
            q = match b {
                Bind::Text(s) => q.bind::<Text, _>(s.clone()),
                Bind::BigInt(i) => q.bind::<BigInt, _>(*i),
                Bind::Double(d) => q.bind::<Double, _>(*d),
            };
        }
        q
    }};
}

/// Runs a planned SELECT on whichever backend the connection is.
pub(super) fn load<T>(c: &mut AnyConnection, sql: &Sql) -> QueryResult<Vec<T>>
where
    T: QueryableByName<diesel::sqlite::Sqlite> + QueryableByName<diesel::pg::Pg> + 'static,
{
    match c {
        AnyConnection::Sqlite(c) => bound!(diesel::sqlite::Sqlite, sql, false).load(c),
        AnyConnection::Postgresql(c) => bound!(diesel::pg::Pg, sql, true).load(c),
    }
}

fn execute(c: &mut AnyConnection, sql: &Sql) -> QueryResult<usize> {
    match c {
        AnyConnection::Sqlite(c) => bound!(diesel::sqlite::Sqlite, sql, false).execute(c),
        AnyConnection::Postgresql(c) => bound!(diesel::pg::Pg, sql, true).execute(c),
    }
}

pub(super) fn first_page_sql(planned: &Planned, limit: i64) -> Sql {
    let mut sql = Sql::new("SELECT r.res_type, r.res_id ");
    sql.append(&planned.from_where)
        .push(" ORDER BY ")
        .append(&planned.order_by)
        .push(" LIMIT ")
        .int_bind(limit);
    sql
}

impl Store {
    /// One page of matches: the first (no cursor) or the one a cursor from a link names.
    pub fn search(&self, planned: &Planned, count: i64, cursor: Option<&str>) -> Result<SearchPage, Error> {
        if let Some(cursor) = cursor {
            let (snapshot, offset) = parse_cursor(cursor)?;
            let mut pooled = self.pool.get()?;
            return self.snapshot_page(&mut pooled, &snapshot, offset, count);
        }
        {
            let mut pooled = self.pool.get()?;
            let conn: &mut AnyConnection = &mut pooled;
            if count == 0 {
                let total = self.count_in(conn, planned)?;
                return Ok(SearchPage {
                    matches: Vec::new(),
                    total,
                    snapshot: None,
                    offset: 0,
                });
            }
            let first: Vec<IdRow> = load(conn, &first_page_sql(planned, count + 1))?;
            if first.len() as i64 <= count {
                let ids: Vec<(String, String)> = first.into_iter().map(|r| (r.res_type, r.res_id)).collect();
                let matches = load_current_many(conn, &ids)?;
                return Ok(SearchPage {
                    total: ids.len() as i64,
                    matches,
                    snapshot: None,
                    offset: 0,
                });
            }
            // The connection goes back to the pool here: the snapshot's write transaction takes its
            // own, and a request must never hold one connection while waiting for another (with every
            // connection so held, the pool would deadlock).
        }
        let snapshot = self.new_snapshot(|c, id| {
            let mut insert = Sql::new("INSERT INTO search_results (search_id, pos, res_type, res_id) SELECT ");
            insert
                .text_bind(id)
                .push(", ROW_NUMBER() OVER (ORDER BY ")
                .append(&planned.order_by)
                .push("), r.res_type, r.res_id ");
            insert.append(&planned.from_where);
            Ok(execute(c, &insert)? as i64)
        })?;
        let mut pooled = self.pool.get()?;
        self.snapshot_page(&mut pooled, &snapshot, 0, count)
    }

    /// Stores a new snapshot whose rows `fill` writes (returning how many), after removing expired
    /// ones; returns its id.
    fn new_snapshot(&self, fill: impl Fn(&mut AnyConnection, &str) -> Result<i64, Abort>) -> Result<String, Error> {
        let snapshot = uuid::Uuid::new_v4().simple().to_string();
        let now = dates::now_millis();
        self.write(|c, _| {
            let expired = now - SNAPSHOT_TTL_MS;
            let old: Vec<String> = search_snapshots::table
                .filter(search_snapshots::created.lt(expired))
                .select(search_snapshots::id)
                .load(c)?;
            diesel::delete(search_results::table.filter(search_results::search_id.eq_any(&old))).execute(c)?;
            diesel::delete(search_snapshots::table.filter(search_snapshots::created.lt(expired))).execute(c)?;
            let total = fill(c, &snapshot)?;
            diesel::insert_into(search_snapshots::table)
                .values((
                    search_snapshots::id.eq(&snapshot),
                    search_snapshots::created.eq(now),
                    search_snapshots::total.eq(total),
                ))
                .execute(c)?;
            Ok(())
        })?;
        Ok(snapshot)
    }

    fn snapshot_page(
        &self,
        conn: &mut AnyConnection,
        snapshot: &str,
        offset: i64,
        count: i64,
    ) -> Result<SearchPage, Error> {
        let total: Option<i64> = search_snapshots::table
            .filter(search_snapshots::id.eq(snapshot))
            .filter(search_snapshots::created.ge(dates::now_millis() - SNAPSHOT_TTL_MS))
            .select(search_snapshots::total)
            .first(conn)
            .optional()?;
        let total = total.ok_or_else(|| Error::Gone("this search has expired; run it again for fresh pages".into()))?;
        let ids: Vec<(String, String)> = search_results::table
            .filter(search_results::search_id.eq(snapshot))
            .filter(search_results::pos.gt(offset))
            .filter(search_results::pos.le(offset + count))
            .order(search_results::pos.asc())
            .select((search_results::res_type, search_results::res_id))
            .load(conn)?;
        let matches = load_current_many(conn, &ids)?;
        Ok(SearchPage {
            matches,
            total,
            snapshot: Some(snapshot.to_string()),
            offset,
        })
    }

    fn count_in(&self, conn: &mut AnyConnection, planned: &Planned) -> Result<i64, Error> {
        let mut sql = Sql::new("SELECT COUNT(*) AS n ");
        sql.append(&planned.from_where);
        let rows: Vec<CountRow> = load(conn, &sql)?;
        Ok(rows.first().map_or(0, |r| r.n))
    }

    /// Every match of a search, in order, up to `cap` (more is refused: the caller narrows the query).
    pub fn search_all(&self, planned: &Planned, cap: i64) -> Result<Vec<Version>, Error> {
        let mut pooled = self.pool.get()?;
        let conn: &mut AnyConnection = &mut pooled;
        let rows: Vec<IdRow> = load(conn, &first_page_sql(planned, cap + 1))?;
        if rows.len() as i64 > cap {
            return Err(Error::Unprocessable(format!(
                "more than {cap} resources match; narrow the period"
            )));
        }
        let ids: Vec<(String, String)> = rows.into_iter().map(|r| (r.res_type, r.res_id)).collect();
        Ok(load_current_many(conn, &ids)?)
    }

    /// One page of a fixed list of resources (an operation's result): a page from the list, or — when
    /// it does not fit one page — from a snapshot of it, like a search.
    pub fn page_of(&self, ids: &[(String, String)], count: i64, cursor: Option<&str>) -> Result<SearchPage, Error> {
        if let Some(cursor) = cursor {
            let (snapshot, offset) = parse_cursor(cursor)?;
            let mut pooled = self.pool.get()?;
            return self.snapshot_page(&mut pooled, &snapshot, offset, count);
        }
        if ids.len() as i64 <= count {
            let mut pooled = self.pool.get()?;
            let matches = load_current_many(&mut pooled, ids)?;
            return Ok(SearchPage {
                total: matches.len() as i64,
                matches,
                snapshot: None,
                offset: 0,
            });
        }
        let snapshot = self.new_snapshot(|c, id| {
            // A patient's record is hundreds of rows, each a round trip to PostgreSQL when inserted alone.
            insert_rows!(
                c,
                search_results::table,
                ids.iter()
                    .enumerate()
                    .map(|(i, (t, res_id))| {
                        (
                            search_results::search_id.eq(id),
                            search_results::pos.eq(i as i64 + 1),
                            search_results::res_type.eq(t),
                            search_results::res_id.eq(res_id),
                        )
                    })
                    .collect(),
                SNAPSHOT_CHUNK
            );
            Ok(ids.len() as i64)
        })?;
        let mut pooled = self.pool.get()?;
        self.snapshot_page(&mut pooled, &snapshot, 0, count)
    }

    /// The resources of a patient's record here (for $everything): what refers to the patient
    /// through the given (type, reference parameter) pairs, distinct, in type and id order.
    pub fn referring(&self, target: (&str, &str), via: &[(&str, &str)]) -> Result<Vec<(String, String)>, Error> {
        let mut conn = self.pool.get()?;
        let mut out: Vec<(String, String)> = Vec::new();
        for (res_type, param) in via {
            let found: Vec<(String, String)> = idx_reference::table
                .filter(idx_reference::target_type.eq(target.0))
                .filter(idx_reference::target_id.eq(target.1))
                .filter(idx_reference::url.is_null())
                .filter(idx_reference::res_type.eq(*res_type))
                .filter(idx_reference::param.eq(*param))
                .select((idx_reference::res_type, idx_reference::res_id))
                .distinct()
                .load(&mut conn)?;
            out.extend(found);
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// The number of matches (`_summary=count`).
    pub fn count(&self, planned: &Planned) -> Result<i64, Error> {
        let mut conn = self.pool.get()?;
        self.count_in(&mut conn, planned)
    }

    /// The database's plan for the first page of a search (EXPLAIN), one line per row.
    pub fn explain(&self, planned: &Planned, count: i64) -> Result<Vec<String>, Error> {
        let mut pooled = self.pool.get()?;
        let conn: &mut AnyConnection = &mut pooled;
        let query = first_page_sql(planned, count + 1);
        let lines = match conn {
            AnyConnection::Sqlite(_) => {
                let mut sql = Sql::new("EXPLAIN QUERY PLAN ");
                sql.append(&query);
                load::<SqlitePlanRow>(conn, &sql)?
                    .into_iter()
                    .map(|r| r.detail)
                    .collect()
            }
            AnyConnection::Postgresql(_) => {
                let mut sql = Sql::new("EXPLAIN ");
                sql.append(&query);
                load::<PgPlanRow>(conn, &sql)?.into_iter().map(|r| r.line).collect()
            }
        };
        Ok(lines)
    }

    /// The current versions of the resources that `include` reaches from `sources` (`_include`).
    pub fn include(&self, sources: &[(String, String)], include: &Include) -> Result<Vec<Version>, Error> {
        let mut conn = self.pool.get()?;
        let mut targets: Vec<(String, String)> = Vec::new();
        for (source_type, ids) in group_by_type(sources) {
            if include.source_type != "*" && include.source_type != source_type {
                continue;
            }
            let mut q = idx_reference::table
                .filter(idx_reference::res_type.eq(source_type))
                .filter(idx_reference::res_id.eq_any(ids))
                .filter(idx_reference::url.is_null())
                .into_boxed();
            if let Some(p) = &include.param {
                q = q.filter(idx_reference::param.eq(p.clone()));
            }
            if let Some(t) = &include.target_type {
                q = q.filter(idx_reference::target_type.eq(t.clone()));
            }
            let found: Vec<(Option<String>, Option<String>)> = q
                .select((idx_reference::target_type, idx_reference::target_id))
                .distinct()
                .load(&mut conn)?;
            targets.extend(found.into_iter().filter_map(|(t, id)| Some((t?, id?))));
        }
        targets.retain(|(t, _)| ResourceType::parse(t).is_some());
        targets.sort();
        targets.dedup();
        Ok(load_current_many(&mut conn, &targets)?)
    }

    /// The current versions of the resources that refer to `targets` as `include` says (`_revinclude`).
    pub fn revinclude(&self, targets: &[(String, String)], include: &Include) -> Result<Vec<Version>, Error> {
        let mut conn = self.pool.get()?;
        let mut sources: Vec<(String, String)> = Vec::new();
        for (target_type, ids) in group_by_type(targets) {
            if include.target_type.as_deref().is_some_and(|t| t != target_type) {
                continue;
            }
            let mut q = idx_reference::table
                .filter(idx_reference::target_type.eq(target_type))
                .filter(idx_reference::target_id.eq_any(ids))
                .into_boxed();
            if include.source_type != "*" {
                q = q.filter(idx_reference::res_type.eq(include.source_type.clone()));
            }
            if let Some(p) = &include.param {
                q = q.filter(idx_reference::param.eq(p.clone()));
            }
            let found: Vec<(String, String)> = q
                .select((idx_reference::res_type, idx_reference::res_id))
                .distinct()
                .load(&mut conn)?;
            sources.extend(found);
        }
        sources.sort();
        sources.dedup();
        Ok(load_current_many(&mut conn, &sources)?)
    }
}

fn parse_cursor(cursor: &str) -> Result<(String, i64), Error> {
    cursor
        .rsplit_once(':')
        .and_then(|(s, o)| Some((s.to_string(), o.parse::<i64>().ok().filter(|o| *o >= 0)?)))
        .ok_or_else(|| Error::Invalid(format!("_cursor '{cursor}' is not a cursor from a search link")))
}

fn group_by_type(refs: &[(String, String)]) -> Vec<(String, Vec<String>)> {
    let mut map: std::collections::BTreeMap<String, Vec<String>> = std::collections::BTreeMap::new();
    for (t, id) in refs {
        map.entry(t.clone()).or_default().push(id.clone());
    }
    map.into_iter().collect()
}

/// The live current versions of `ids`, in the order given (deleted or unknown ones left out).
/// One query per type.
pub(super) fn load_current_many(c: &mut AnyConnection, ids: &[(String, String)]) -> QueryResult<Vec<Version>> {
    let mut found: std::collections::HashMap<(String, String), Version> = std::collections::HashMap::new();
    for (t, type_ids) in group_by_type(ids) {
        let rows: Vec<(String, String, i64, i64, Option<String>)> = resources::table
            .filter(resources::res_type.eq(&t))
            .filter(resources::res_id.eq_any(&type_ids))
            .filter(resources::deleted.eq(false))
            .select((
                resources::res_type,
                resources::res_id,
                resources::version_id,
                resources::last_updated,
                resources::body,
            ))
            .load(c)?;
        for (res_type, res_id, version_id, last_updated, body) in rows {
            let key = (res_type.clone(), res_id.clone());
            found.insert(
                key,
                Version {
                    res_type,
                    res_id,
                    version_id,
                    last_updated,
                    method: "PUT".into(),
                    body,
                },
            );
        }
    }
    Ok(ids.iter().filter_map(|k| found.remove(k)).collect())
}
