//! The audit trail's table: batched appends from the audit writer, reads and keyset-paged searches.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};

use super::schema::{audit_events, audit_refs};
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
                diesel::sql_query("SET LOCAL synchronous_commit = off").execute(pg)?;
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
                insert_rows!(
                    c,
                    audit_refs::table,
                    chunk
                        .iter()
                        .flat_map(|r| {
                            r.refs.iter().map(move |(kind, reference)| {
                                (
                                    audit_refs::event_id.eq(&r.id),
                                    audit_refs::kind.eq(*kind),
                                    audit_refs::ref_.eq(reference),
                                )
                            })
                        })
                        .collect(),
                    INSERT_CHUNK * 3
                );
            }
            Ok(())
        })
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
