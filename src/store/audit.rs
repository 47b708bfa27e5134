//! The audit trail's table: batched appends from the audit writer, reads and keyset-paged searches.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};

use super::schema::{audit_events, audit_refs, audit_refs_pending};
use super::search::{load, CountRow};
use super::{AnyConnection, Store};
use crate::error::Error;
use crate::search::audit::AuditPlan;
use crate::search::plan::Sql;

/// One AuditEvent as stored, with the references its search parameters use.
#[derive(Debug, Clone)]
pub struct AuditRow {
    pub id: String,
    pub recorded: i64,
    pub action: String,
    pub subtype: String,
    pub outcome: String,
    pub altid: Option<String>,
    pub client_id: Option<String>,
    pub address: Option<String>,
    pub body: String,
    /// (kind, reference): agent, entity and patient references.
    pub refs: Vec<(&'static str, String)>,
}

/// What finds one reference in audit_refs_pending's text (see [`pending_refs`]): `\nkind|ref\n`.
pub(crate) fn pending_ref_needle(kind: &str, reference: &str) -> String {
    format!("\n{kind}|{reference}\n")
}

/// An event's references as audit_refs_pending keeps them: `\nkind|ref` each, then `\n`.
pub(crate) fn pending_refs(refs: &[(&'static str, String)]) -> String {
    let mut out = String::with_capacity(refs.iter().map(|(k, r)| k.len() + r.len() + 2).sum::<usize>() + 1);
    for (kind, reference) in refs {
        out.push('\n');
        out.push_str(kind);
        out.push('|');
        out.push_str(reference);
    }
    out.push('\n');
    out
}

/// A page of AuditEvents, and the cursor of the next one.
#[derive(Debug)]
pub struct AuditPage {
    pub bodies: Vec<String>,
    pub next_cursor: Option<i64>,
    pub total: Option<i64>,
}

#[derive(QueryableByName)]
struct AuditHit {
    #[diesel(sql_type = BigInt)]
    seq: i64,
    #[diesel(sql_type = Text)]
    body: String,
}

/// Rows per INSERT statement (SQLite allows 32,766 bound values; 10 columns each).
const INSERT_CHUNK: usize = 200;

/// Reference rows per INSERT statement when the indexer moves them (3 columns each).
const REF_CHUNK: usize = 2_000;

/// [`Store::insert_audit`] on PostgreSQL: the batch in two statements of a fixed text (see
/// store::fixed), whatever its size.
fn insert_audit_pg(pg: &mut diesel::PgConnection, rows: &[AuditRow]) -> Result<(), Error> {
    use super::fixed::{col, insert, Bind, Fixed};
    // The batch's commit does not wait for its WAL to be flushed (the rest of the server's
    // transactions still do). A crash of the database server may then lose the batches of its
    // last moments (up to three wal_writer_delay, 600 ms by default); the events are held in
    // memory that long already (audit::GATHER), and nothing else may be lost: a transaction is
    // never half applied.
    Fixed::new("SET LOCAL synchronous_commit = off", Vec::new()).execute(pg)?;
    insert(
        pg,
        rows.len(),
        // In the batch's order, which seq keeps.
        "INSERT INTO audit_events (id, recorded, action, subtype, outcome, altid, client_id, address, body) \
         SELECT id, recorded, action, subtype, outcome, altid, client_id, address, body \
         FROM unnest(?, ?, ?, ?, ?, ?, ?, ?, ?) WITH ORDINALITY \
         AS u(id, recorded, action, subtype, outcome, altid, client_id, address, body, n) ORDER BY n",
        vec![
            Bind::Text(col(rows, |r| r.id.as_str())),
            Bind::Int(col(rows, |r| r.recorded)),
            Bind::Text(col(rows, |r| r.action.as_str())),
            Bind::Text(col(rows, |r| r.subtype.as_str())),
            Bind::Text(col(rows, |r| r.outcome.as_str())),
            Bind::OptText(col(rows, |r| r.altid.as_deref())),
            Bind::OptText(col(rows, |r| r.client_id.as_deref())),
            Bind::OptText(col(rows, |r| r.address.as_deref())),
            Bind::Text(col(rows, |r| r.body.as_str())),
        ],
    )?;
    let waiting: Vec<(&str, String)> = rows
        .iter()
        .filter(|r| !r.refs.is_empty())
        .map(|r| (r.id.as_str(), pending_refs(&r.refs)))
        .collect();
    insert(
        pg,
        waiting.len(),
        "INSERT INTO audit_refs_pending (event_id, refs) SELECT * FROM unnest(?, ?)",
        vec![
            Bind::Text(col(&waiting, |w| w.0)),
            Bind::Text(col(&waiting, |w| w.1.as_str())),
        ],
    )?;
    Ok(())
}

impl Store {
    /// Appends a batch of events in one transaction.
    pub fn insert_audit(&self, rows: &[AuditRow]) -> Result<(), Error> {
        // A transaction of its own, not [`Store::write`]: an audit store has no write_lock table nor
        // a use for the transaction clock, and the one audit writer of a process races no one here.
        let mut pooled = self.pool.get()?;
        let conn: &mut AnyConnection = &mut pooled;
        conn.transaction::<(), Error, _>(|c| {
            // PostgreSQL: the batch's commit does not wait for its WAL to be flushed (the rest of the
            // server's transactions still do). A crash of the database server may then lose the
            // batches of its last moments (up to three wal_writer_delay, 600 ms by default); the
            // events are held in memory that long already (audit::GATHER), and nothing else may
            // be lost: a transaction is never half applied.
            if let AnyConnection::Postgresql(pg) = c {
                return insert_audit_pg(pg, rows);
            }
            for chunk in rows.chunks(INSERT_CHUNK) {
                insert_rows!(
                    c,
                    audit_events::table,
                    chunk
                        .iter()
                        .map(|r| {
                            (
                                audit_events::id.eq(&r.id),
                                audit_events::recorded.eq(r.recorded),
                                audit_events::action.eq(&r.action),
                                audit_events::subtype.eq(&r.subtype),
                                audit_events::outcome.eq(&r.outcome),
                                audit_events::altid.eq(&r.altid),
                                audit_events::client_id.eq(&r.client_id),
                                audit_events::address.eq(&r.address),
                                audit_events::body.eq(&r.body),
                            )
                        })
                        .collect(),
                    INSERT_CHUNK
                );
                // The references wait in audit_refs_pending, one appended row per event, for
                // the indexer (Store::index_audit_refs) to move them into audit_refs sorted.
                insert_rows!(
                    c,
                    audit_refs_pending::table,
                    chunk
                        .iter()
                        .filter(|r| !r.refs.is_empty())
                        .map(|r| {
                            (
                                audit_refs_pending::event_id.eq(&r.id),
                                audit_refs_pending::refs.eq(pending_refs(&r.refs)),
                            )
                        })
                        .collect(),
                    INSERT_CHUNK
                );
            }
            Ok(())
        })
    }

    /// Moves the references of up to `max_events` of the oldest events waiting in
    /// audit_refs_pending into audit_refs, sorted by (kind, ref, event), in one transaction: the
    /// rows deleted there are exactly the rows inserted here (`DELETE … RETURNING`), so a search,
    /// which reads both tables in one statement, finds each event once at every moment, and
    /// indexers of several replicas sharing a PostgreSQL database never move a row twice (each
    /// skips the rows another has locked). Returns the events moved.
    /// Only events after `after` (a seq) are moved: the indexer passes the seq of an event whose
    /// references the store refused, so that it stays behind, still found by searches there.
    pub fn index_audit_refs(&self, max_events: usize, after: i64) -> Result<usize, Error> {
        #[derive(QueryableByName)]
        struct Moved {
            #[diesel(sql_type = Text)]
            event_id: String,
            #[diesel(sql_type = Text)]
            refs: String,
        }
        let mut pooled = self.pool.get()?;
        let conn: &mut AnyConnection = &mut pooled;
        let max = i64::try_from(max_events).unwrap_or(i64::MAX);
        conn.transaction::<usize, Error, _>(|c| {
            let moved: Vec<Moved> = match c {
                AnyConnection::Postgresql(pg) => {
                    diesel::sql_query("SET LOCAL synchronous_commit = off").execute(pg)?;
                    diesel::sql_query(
                        "DELETE FROM audit_refs_pending WHERE seq IN (SELECT seq FROM audit_refs_pending \
                         WHERE seq > $1 ORDER BY seq LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING event_id, refs",
                    )
                    .bind::<BigInt, _>(after)
                    .bind::<BigInt, _>(max)
                    .load(pg)?
                }
                AnyConnection::Sqlite(lite) => diesel::sql_query(
                    "DELETE FROM audit_refs_pending WHERE seq IN (SELECT seq FROM audit_refs_pending \
                     WHERE seq > ? ORDER BY seq LIMIT ?) RETURNING event_id, refs",
                )
                .bind::<BigInt, _>(after)
                .bind::<BigInt, _>(max)
                .load(lite)?,
            };
            let mut rows: Vec<(&str, &str, &str)> = moved
                .iter()
                .flat_map(|m| {
                    m.refs
                        .split('\n')
                        .filter_map(|r| r.split_once('|'))
                        .map(move |(kind, reference)| (kind, reference, m.event_id.as_str()))
                })
                .collect();
            // In key order: each page of the (kind, ref, event) B-tree is then written once per
            // batch, however many of the batch's rows land on it.
            rows.sort_unstable();
            let values: Vec<_> = rows
                .iter()
                .map(|(kind, reference, event)| {
                    (
                        audit_refs::event_id.eq(*event),
                        audit_refs::kind.eq(*kind),
                        audit_refs::ref_.eq(*reference),
                    )
                })
                .collect();
            for part in values.chunks(REF_CHUNK) {
                match &mut *c {
                    // An event's references were each inserted once; a row already there (a trail
                    // copied by adopt_audit_trail) is left as it is.
                    AnyConnection::Sqlite(lite) => diesel::insert_or_ignore_into(audit_refs::table)
                        .values(part)
                        .execute(lite)?,
                    AnyConnection::Postgresql(pg) => diesel::insert_into(audit_refs::table).values(part).execute(pg)?,
                };
            }
            Ok(moved.len())
        })
    }

    /// The oldest event after `after` whose references wait for the indexer.
    pub fn oldest_pending_audit_ref(&self, after: i64) -> Result<Option<i64>, Error> {
        let mut conn = self.pool.get()?;
        Ok(audit_refs_pending::table
            .filter(audit_refs_pending::seq.gt(after))
            .select(audit_refs_pending::seq)
            .order(audit_refs_pending::seq)
            .first(&mut conn)
            .optional()?)
    }

    /// SQLite: takes over the trail kept in the main file `main_path` by a version before the trail
    /// had a file of its own, once, while this store's trail is empty — so that an upgrade loses no
    /// event from `/AuditEvent`. The rows are copied in one transaction, in their order (the main
    /// file's are left as they are: the trail is append-only). Returns the events copied.
    pub fn adopt_audit_trail(&self, main_path: &str) -> Result<usize, Error> {
        use diesel::connection::SimpleConnection;
        let mut pooled = self.pool.get()?;
        let AnyConnection::Sqlite(c) = &mut *pooled else {
            return Ok(0);
        };
        if main_path.contains('?') || main_path.starts_with(':') {
            return Ok(0);
        }
        let own: CountRow = diesel::sql_query("SELECT COUNT(*) AS n FROM audit_events").get_result(c)?;
        if own.n > 0 {
            return Ok(0);
        }
        c.batch_execute(&format!(
            "ATTACH DATABASE '{}' AS tandem_main",
            main_path.replace('\'', "''")
        ))?;
        let copied = (|| -> Result<usize, Error> {
            let has_trail: CountRow = diesel::sql_query(
                "SELECT COUNT(*) AS n FROM tandem_main.sqlite_master WHERE type = 'table' AND name = 'audit_events'",
            )
            .get_result(c)?;
            if has_trail.n == 0 {
                return Ok(0);
            }
            c.immediate_transaction::<usize, Error, _>(|c| {
                let n = diesel::sql_query(
                    "INSERT INTO audit_events (id, recorded, action, subtype, outcome, altid, client_id, address, body) \
                     SELECT id, recorded, action, subtype, outcome, altid, client_id, address, body FROM tandem_main.audit_events ORDER BY seq",
                )
                .execute(c)?;
                diesel::sql_query(
                    "INSERT OR IGNORE INTO audit_refs (kind, ref, event_id) SELECT kind, ref, event_id FROM tandem_main.audit_refs",
                )
                .execute(c)?;
                // References that were still waiting for that file's indexer wait here.
                let has_pending: CountRow = diesel::sql_query(
                    "SELECT COUNT(*) AS n FROM tandem_main.sqlite_master WHERE type = 'table' AND name = 'audit_refs_pending'",
                )
                .get_result(c)?;
                if has_pending.n > 0 {
                    diesel::sql_query(
                        "INSERT INTO audit_refs_pending (event_id, refs) SELECT event_id, refs FROM tandem_main.audit_refs_pending ORDER BY seq",
                    )
                    .execute(c)?;
                }
                Ok(n)
            })
        })();
        c.batch_execute("DETACH DATABASE tandem_main")?;
        copied
    }

    /// One AuditEvent as FHIR JSON.
    pub fn audit_read(&self, id: &str) -> Result<Option<String>, Error> {
        let mut conn = self.pool.get()?;
        Ok(audit_events::table
            .filter(audit_events::id.eq(id))
            .select(audit_events::body)
            .get_result(&mut conn)
            .optional()?)
    }

    /// A page of a planned AuditEvent search, after the keyset `cursor` (a seq from the last page).
    pub fn audit_search(
        &self,
        plan: &AuditPlan,
        count: i64,
        cursor: Option<i64>,
        with_total: bool,
    ) -> Result<AuditPage, Error> {
        let mut pooled = self.pool.get()?;
        let conn: &mut AnyConnection = &mut pooled;
        let total = if with_total {
            let mut sql = Sql::new("SELECT COUNT(*) AS n FROM audit_events a WHERE ");
            sql.append(&plan.where_sql);
            let rows: Vec<CountRow> = load(conn, &sql)?;
            Some(rows.first().map_or(0, |r| r.n))
        } else {
            None
        };
        let mut sql = Sql::new("SELECT a.seq, a.body FROM audit_events a WHERE ");
        sql.append(&plan.where_sql);
        if let Some(after) = cursor {
            sql.push(if plan.newest_first {
                " AND a.seq < "
            } else {
                " AND a.seq > "
            })
            .int_bind(after);
        }
        sql.push(if plan.newest_first {
            " ORDER BY a.seq DESC"
        } else {
            " ORDER BY a.seq ASC"
        })
        .limit(count + 1);
        let mut hits: Vec<AuditHit> = load(conn, &sql)?;
        let more = hits.len() as i64 > count;
        hits.truncate(count.max(0) as usize);
        Ok(AuditPage {
            next_cursor: if more { hits.last().map(|h| h.seq) } else { None },
            bodies: hits.into_iter().map(|h| h.body).collect(),
            total,
        })
    }
}
