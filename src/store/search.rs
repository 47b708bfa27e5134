//! Running planned searches. In the default order (type, id), every page comes straight from the
//! indexes: a keyset cursor names the row a page starts after (or ends before) and the newest
//! version sequence number when the first page was served, and later pages leave out resources
//! created after it. Nothing is written, and no update moves a resource in that order, so pages
//! neither shift nor repeat while data changes. A `_sort` order can change under writes, so there —
//! when the matches do not fit one page — a snapshot of the ordered ids is stored, and every page
//! is served from it.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Double, Nullable, Text};

use super::schema::{idx_reference, resources, search_results, search_snapshots};
use super::{Abort, AnyConnection, Store, Version};
use crate::error::Error;
use crate::resources::{compartment, dates, is_valid_id, ResourceType};
use crate::search::plan::{Bind, Planned, Sql, KEYSET_ORDER};
use crate::search::Include;

/// Rows per INSERT of an operation's snapshot: 4,000 bound values at most (4 columns).
const SNAPSHOT_CHUNK: usize = 1000;

/// How long a search snapshot (and so its next/previous links) stays valid.
const SNAPSHOT_TTL_MS: i64 = 30 * 60 * 1000;

/// One page of a search.
#[derive(Debug)]
pub struct SearchPage {
    pub matches: Vec<Version>,
    /// The number of matches (when counted: see `Store::search`).
    pub total: i64,
    /// The cursors of the next and previous pages, when there are such pages.
    pub next: Option<String>,
    pub previous: Option<String>,
}

impl SearchPage {
    fn single(matches: Vec<Version>) -> SearchPage {
        SearchPage {
            total: matches.len() as i64,
            matches,
            next: None,
            previous: None,
        }
    }
}

/// Where a keyset page starts: after (or, for a previous link, before) the row (`res_type`,
/// `res_id`), among the resources created no later than version sequence number `as_of`.
/// Written `k~as_of~total~a|b~type~id`: `~` is in no type or id, and needs no escaping in a URL.
#[derive(Debug, Clone, PartialEq)]
struct Keyset {
    as_of: i64,
    total: i64,
    before: bool,
    res_type: String,
    res_id: String,
}

impl Keyset {
    fn at(as_of: i64, total: i64, before: bool, row: &Version) -> String {
        let dir = if before { "b" } else { "a" };
        format!("k~{as_of}~{total}~{dir}~{}~{}", row.res_type, row.res_id)
    }

    fn parse(cursor: &str) -> Option<Keyset> {
        let mut parts = cursor.strip_prefix("k~")?.split('~');
        let as_of = parts.next()?.parse().ok()?;
        let total = parts.next()?.parse().ok()?;
        let before = match parts.next()? {
            "a" => false,
            "b" => true,
            _ => return None,
        };
        let res_type = parts.next()?;
        let res_id = parts.next()?;
        // Type names are ids' characters too: letters only.
        if parts.next().is_some() || !is_valid_id(res_type) || !is_valid_id(res_id) {
            return None;
        }
        Some(Keyset {
            as_of,
            total,
            before,
            res_type: res_type.to_string(),
            res_id: res_id.to_string(),
        })
    }
}

/// A row of a keyset page: the current version, and the newest version sequence number the
/// statement saw (the `as_of` of the cursors of a first page).
#[derive(QueryableByName)]
struct KeysetRow {
    #[diesel(sql_type = Text)]
    res_type: String,
    #[diesel(sql_type = Text)]
    res_id: String,
    #[diesel(sql_type = BigInt)]
    version_id: i64,
    #[diesel(sql_type = BigInt)]
    last_updated: i64,
    #[diesel(sql_type = Nullable<Text>)]
    body: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    as_of: Option<i64>,
}

/// One keyset page, in the default order: the first (`key` None), or the rows after or before a
/// cursor's key that existed when its first page was served. `limit` is one more than the page,
/// to tell whether a further page exists.
fn keyset_sql(planned: &Planned, key: Option<&Keyset>, limit: i64) -> Sql {
    let mut sql = Sql::new(
        "SELECT r.res_type, r.res_id, r.version_id, r.last_updated, r.body, \
         (SELECT MAX(seq) FROM resource_versions) AS as_of ",
    );
    sql.append(&planned.from_where);
    if let Some(k) = key {
        sql.push(if k.before {
            " AND (r.res_type, r.res_id) < ("
        } else {
            " AND (r.res_type, r.res_id) > ("
        })
        .text_bind(&k.res_type)
        .push(", ")
        .text_bind(&k.res_id)
        .push(
            ") AND NOT EXISTS (SELECT 1 FROM resource_versions v WHERE v.res_type = r.res_type \
                 AND v.res_id = r.res_id AND v.version_id = 1 AND v.seq > ",
        )
        .int_bind(k.as_of)
        .push(")");
    }
    sql.push(" ORDER BY ")
        .push(if key.is_some_and(|k| k.before) {
            "r.res_type DESC, r.res_id DESC"
        } else {
            KEYSET_ORDER
        })
        .limit(limit);
    sql
}

#[derive(QueryableByName)]
pub(super) struct IdRow {
    #[diesel(sql_type = Text)]
    pub(super) res_type: String,
    #[diesel(sql_type = Text)]
    pub(super) res_id: String,
}

/// One `id` column.
#[derive(QueryableByName)]
pub(super) struct IdOnly {
    #[diesel(sql_type = Text)]
    pub(super) id: String,
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

/// A planned statement on SQLite (PostgreSQL's is store::fixed::Fixed::planned).
fn sqlite_query(
    sql: &Sql,
) -> diesel::query_builder::BoxedSqlQuery<'static, diesel::sqlite::Sqlite, diesel::query_builder::SqlQuery> {
    let mut q = diesel::sql_query(sql.text_for(false).into_owned()).into_boxed();
    for b in &sql.binds {
        q = match b {
            Bind::Text(s) => q.bind::<Text, _>(s.clone()),
            Bind::BigInt(i) => q.bind::<BigInt, _>(*i),
            Bind::Double(d) => q.bind::<Double, _>(*d),
        };
    }
    q
}

/// Runs a planned SELECT on whichever backend the connection is.
pub(super) fn load<T>(c: &mut AnyConnection, sql: &Sql) -> QueryResult<Vec<T>>
where
    T: QueryableByName<diesel::sqlite::Sqlite> + QueryableByName<diesel::pg::Pg> + 'static,
{
    match c {
        AnyConnection::Sqlite(c) => sqlite_query(sql).load(c),
        AnyConnection::Postgresql(c) => super::fixed::Fixed::planned(sql).load(c),
    }
}

fn execute(c: &mut AnyConnection, sql: &Sql) -> QueryResult<usize> {
    match c {
        AnyConnection::Sqlite(c) => sqlite_query(sql).execute(c),
        AnyConnection::Postgresql(c) => super::fixed::Fixed::planned(sql).execute(c),
    }
}

pub(super) fn first_page_sql(planned: &Planned, limit: i64) -> Sql {
    let mut sql = Sql::new("SELECT r.res_type, r.res_id ");
    sql.append(&planned.from_where)
        .push(" ORDER BY ")
        .append(&planned.order_by)
        .limit(limit);
    sql
}

impl Store {
    /// One page of matches: the first (no cursor) or the one a cursor from a link names. `with_total`
    /// counts the matches for a first page that does not hold them all (`_total=none` skips that).
    pub fn search(
        &self,
        planned: &Planned,
        count: i64,
        cursor: Option<&str>,
        with_total: bool,
    ) -> Result<SearchPage, Error> {
        if planned.keyset {
            if let Some(key) = cursor.and_then(Keyset::parse) {
                return self.keyset_page(planned, count, Some(&key), with_total);
            }
        }
        if let Some(cursor) = cursor {
            let (snapshot, offset) = parse_cursor(cursor)?;
            let mut pooled = self.pool.get()?;
            return self.snapshot_page(&mut pooled, &snapshot, offset, count);
        }
        if count == 0 {
            let mut pooled = self.pool.get()?;
            let total = self.count_in(&mut pooled, planned)?;
            return Ok(SearchPage {
                matches: Vec::new(),
                total,
                next: None,
                previous: None,
            });
        }
        if planned.keyset {
            return self.keyset_page(planned, count, None, with_total);
        }
        {
            let mut pooled = self.pool.get()?;
            let conn: &mut AnyConnection = &mut pooled;
            let first: Vec<IdRow> = load(conn, &first_page_sql(planned, count + 1))?;
            if first.len() as i64 <= count {
                let ids: Vec<(String, String)> = first.into_iter().map(|r| (r.res_type, r.res_id)).collect();
                return Ok(SearchPage::single(load_current_many(conn, &ids)?));
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

    /// A page in the default order, read straight from the indexes (see the module's doc). One
    /// statement reads the page's rows, their bodies and the `as_of` of a first page; a first page
    /// that does not hold every match counts them with a second.
    fn keyset_page(
        &self,
        planned: &Planned,
        count: i64,
        key: Option<&Keyset>,
        with_total: bool,
    ) -> Result<SearchPage, Error> {
        let mut pooled = self.pool.get()?;
        let conn: &mut AnyConnection = &mut pooled;
        let rows: Vec<KeysetRow> = load(conn, &keyset_sql(planned, key, count + 1))?;
        let more = rows.len() as i64 > count;
        let as_of = match key {
            Some(k) => k.as_of,
            None => rows.first().and_then(|r| r.as_of).unwrap_or(0),
        };
        let mut matches: Vec<Version> = rows
            .into_iter()
            .take(count as usize)
            .map(|r| Version {
                res_type: r.res_type,
                res_id: r.res_id,
                version_id: r.version_id,
                last_updated: r.last_updated,
                method: "PUT".into(),
                body: r.body,
            })
            .collect();
        let backwards = key.is_some_and(|k| k.before);
        if backwards {
            matches.reverse();
        }
        let total = match key {
            Some(k) => k.total,
            None if !more => matches.len() as i64,
            // Counted in a statement of its own, so a resource created in between may be in the
            // count and not in the pages; it is never in the pages and not in the count.
            None if with_total => self.count_in(conn, planned)?,
            None => -1,
        };
        // A further page in the direction read exists when the statement found one row more; one
        // in the other direction exists when a cursor led here, since its key row lies that way.
        let (after, before) = if backwards {
            (key.is_some(), more)
        } else {
            (more, key.is_some())
        };
        let next = match matches.last() {
            Some(last) if after => Some(Keyset::at(as_of, total, false, last)),
            _ => None,
        };
        let previous = match matches.first() {
            Some(first) if before => Some(Keyset::at(as_of, total, true, first)),
            _ => None,
        };
        Ok(SearchPage {
            matches,
            total,
            next,
            previous,
        })
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
            .get_result(conn)
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
            next: (offset + count < total).then(|| format!("{snapshot}:{}", offset + count)),
            previous: (offset > 0).then(|| format!("{snapshot}:{}", (offset - count).max(0))),
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
            return Ok(SearchPage::single(load_current_many(&mut pooled, ids)?));
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
    /// through the given (type, reference parameter) pairs, distinct, in type and id order, less
    /// the psychotherapy notes `notes` may not see (compartment::Reach).
    pub fn referring(
        &self,
        target: (&str, &str),
        via: &[(&str, &str)],
        notes: &compartment::Notes,
    ) -> Result<Vec<(String, String)>, Error> {
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
        if let compartment::Notes::AuthoredBy(author) = notes {
            if out.iter().any(|(t, _)| t == "DocumentReference") {
                let mut sql = Sql::new("SELECT 'DocumentReference' AS res_type, res_id FROM (");
                sql.append(&crate::search::plan::hidden_notes(author.as_deref()))
                    .push(") hidden");
                let hidden: std::collections::HashSet<(String, String)> = load::<IdRow>(&mut conn, &sql)?
                    .into_iter()
                    .map(|r| (r.res_type, r.res_id))
                    .collect();
                out.retain(|k| !hidden.contains(k));
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(res_type: &str, res_id: &str) -> Version {
        Version {
            res_type: res_type.into(),
            res_id: res_id.into(),
            version_id: 1,
            last_updated: 0,
            method: "PUT".into(),
            body: None,
        }
    }

    #[test]
    fn keyset_cursors_read_back_as_written() {
        let row = row("Patient", "0194c2a1-7d2e-7000-8000-000000000001");
        let cursor = Keyset::at(42, 1000, true, &row);
        assert_eq!(cursor, "k~42~1000~b~Patient~0194c2a1-7d2e-7000-8000-000000000001");
        assert_eq!(
            Keyset::parse(&cursor),
            Some(Keyset {
                as_of: 42,
                total: 1000,
                before: true,
                res_type: "Patient".into(),
                res_id: row.res_id.clone(),
            })
        );
    }

    #[test]
    fn anything_else_is_not_a_keyset_cursor() {
        for bad in [
            "",
            "k~",
            "k~1~2~a~Patient",
            "k~1~2~a~Patient~x~extra",
            "k~x~2~a~Patient~x",
            "k~1~2~z~Patient~x",
            "k~1~2~a~~x",
            "k~1~2~a~Patient~x'--",
            "k~1~2~a~Patient~a b",
            "0f3e:37",
        ] {
            assert_eq!(Keyset::parse(bad), None, "{bad}");
        }
    }
}
