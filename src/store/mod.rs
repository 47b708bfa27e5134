//! Storage: resources kept whole as FHIR JSON with every version, and the search-index rows, written
//! in one transaction per interaction. The same code runs on SQLite and PostgreSQL.
//!
//! Concurrency: a version is written only by a compare-and-swap on the current row
//! (`UPDATE … WHERE version_id = <the version read>`), backed by the unique key on
//! (type, id, version) in the version table, so two writers can never both produce version n+1.
//! On SQLite every write transaction first takes the database write lock.

/// Inserts `rows` (column-value tuples) into `table` on whichever backend `c` is.
///
/// PostgreSQL: one multi-row INSERT per `chunk` rows, one round trip per chunk rather than per row
/// (`chunk` × the columns stays under the protocol's 65,535 bound values). SQLite: one single-row
/// INSERT per row. There is no round trip to save, and a multi-row INSERT is a new statement text
/// for every row count, so diesel cannot keep it prepared: it was parsed and compiled again at every
/// write (SQLite's parser and code generator were a tenth of the writer's samples under creates).
/// The single-row statement is prepared once per connection and stepped once per row.
macro_rules! insert_rows {
    ($c:expr, $table:path, $rows:expr, $chunk:expr) => {{
        let rows: Vec<_> = $rows;
        match &mut *$c {
            AnyConnection::Sqlite(c) => {
                for row in rows {
                    diesel::insert_into($table).values(row).execute(c)?;
                }
            }
            AnyConnection::Postgresql(c) => {
                for part in rows.chunks($chunk) {
                    diesel::insert_into($table).values(part).execute(c)?;
                }
            }
        }
    }};
}

mod audit;
mod care;
mod conditional;
mod connection;
mod executor;
mod export;
mod fixed;
mod gather;
mod hooks;
mod index_rows;
mod measures;
pub mod pool;
mod reads;
mod scheduling;
mod schema;
mod search;
mod subscriptions;
mod write;
mod writer;

pub(crate) use audit::pending_ref_needle;
pub use audit::{AuditPage, AuditRow};
pub use conditional::{Patcher, Target};
pub use executor::{visible_to, ConditionalRef, Op, OpResult, NO_OP_PATCH};
pub use export::{ExportFile, ExportJob, NewExport};
pub use search::SearchPage;
pub use subscriptions::Delivery;

use diesel::prelude::*;
use serde_json::Value;

pub use connection::AnyConnection;
use pool::{DatabaseUrl, DbPool};
use reads::{load_current, not_found, read_in, version_columns, vread_in};
use schema::{resource_versions, write_lock};

use crate::error::Error;
use crate::resources::compartment::Reach;
use crate::resources::ResourceType;

/// How many times a write is retried after losing a race with another writer (no If-Match given).
const WRITE_ATTEMPTS: usize = 5;

/// One version of a resource as stored.
#[derive(Debug, Clone, Queryable)]
pub struct Version {
    pub res_type: String,
    pub res_id: String,
    pub version_id: i64,
    pub last_updated: i64,
    /// POST, PUT or DELETE: the interaction that wrote this version.
    pub method: String,
    /// The resource as FHIR JSON; None for a deletion.
    pub body: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryScope<'a> {
    Instance(ResourceType, &'a str),
    Type(ResourceType),
    System,
}

/// A page of history, newest first, and the cursor for the next (older) page.
#[derive(Debug)]
pub struct HistoryPage {
    pub entries: Vec<Version>,
    pub next_before: Option<i64>,
}

/// What a writer may touch, checked inside the write transaction against the rows it locks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteAccess {
    /// What the writer may see: only resources it holds, before and after the write.
    pub reach: Reach,
    /// Whether an update may create the resource (the caller also holds create on the type).
    pub may_create: bool,
    /// Whether the writer may read the type it writes: a refusal names another record (the
    /// Appointment a booking clashes with) only to a writer who may see that record.
    pub may_read: bool,
    /// The base URL the writer addressed this server by: an absolute reference under it is a
    /// reference to a resource here, and is stored as the relative `Type/id` (references.html:
    /// "a reference to a resource on the same server ... the server base URL is the same").
    pub base: Option<String>,
    /// The types a Subscription written by this writer may watch (None: any): those it may search
    /// and read with no compartment or assignment limit, since a notification carries every match.
    pub subscribable: Option<Vec<String>>,
}

impl WriteAccess {
    /// A caller who may write anything.
    pub fn full() -> WriteAccess {
        WriteAccess {
            reach: Reach::server(),
            may_create: true,
            may_read: true,
            base: None,
            subscribable: None,
        }
    }

    /// Refuses (403) a resource outside the caller's compartments. `id` is the resource's id.
    /// (Psychotherapy notes are checked by their own rule, store::notes, which says why.)
    fn check(&self, rt: ResourceType, id: &str, resource: &Value) -> Result<(), Error> {
        let Some(patients) = &self.reach.patients else {
            return Ok(());
        };
        let unlabelled = Reach {
            notes: crate::resources::compartment::Notes::All,
            ..self.reach.clone()
        };
        if unlabelled.sees(rt, id, resource) {
            return Ok(());
        }
        Err(Error::Forbidden(match (&self.reach.own_patient, patients.as_slice()) {
            (Some(patient), _) => {
                format!("{rt}/{id} is outside the compartment of Patient/{patient}, the only one this token may write")
            }
            _ => format!("{rt}/{id} is outside the records of the clients assigned to this token's practitioner"),
        }))
    }

    /// Refuses (403) a change, by a patient's own token, of a resource that token sees only in
    /// part (a group session, a Group: compartment::hides_others): the write would replace, or remove,
    /// entries the caller cannot see. `current` is the stored resource.
    fn check_whole(&self, rt: ResourceType, id: &str, current: &Value) -> Result<(), Error> {
        match &self.reach.own_patient {
            Some(own) if crate::resources::compartment::hides_others(own, rt, current) => {
                Err(Error::Forbidden(format!(
                    "{rt}/{id} names other patients, whom this token may not see; a patient's token may not change it"
                )))
            }
            _ => Ok(()),
        }
    }
}

#[derive(Debug)]
pub struct UpdateOutcome {
    pub version: Version,
    pub created: bool,
}

#[derive(Clone)]
pub struct Store {
    pool: DbPool,
    backend: &'static str,
    rules: crate::scheduling::Rules,
    /// Alive while any clone of this store is: SQLite's log keeper stops when it is gone.
    _alive: std::sync::Arc<()>,
    /// SQLite only: this process's write transactions take turns here, on one connection of their
    /// own. SQLite has one writer at a time anyway; a writer that finds the file locked sleeps in its
    /// busy handler (1, 2, 5, 10 … 100 ms) and tries again, so under load most of a write's time was
    /// sleeping. Waiting here wakes the next writer as soon as the last commits. The file lock still
    /// guards the data (other processes, and writes outside [`Store::write`]). See [`Writer`].
    sqlite_writer: Option<std::sync::Arc<Writer>>,
    /// The migrations this store runs: the whole schema, or the audit trail's alone.
    schema: pool::Schema,
    /// Reads by id answered together (see gather.rs); its threads start at the first read.
    gatherer: std::sync::Arc<gather::Gatherer>,
}

/// How often SQLite's log keeper looks at the size of the write-ahead log.
const WAL_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// How often the log keeper copies what was written into the database (a passive checkpoint).
const WAL_COPY_EVERY: std::time::Duration = std::time::Duration::from_millis(100);
const COPIES_PER_CHECK: u32 = (WAL_CHECK_EVERY.as_millis() / WAL_COPY_EVERY.as_millis()) as u32;

/// The size of the write-ahead log beyond which the log keeper empties it (SQLite's automatic
/// checkpoints keep it near 4 MiB when they can start it over). 1 MiB in unit tests.
const WAL_TRUNCATE_ABOVE_BYTES: u64 = if cfg!(test) { 1 << 20 } else { 16 << 20 };
/// The longest the log keeper waits for the writer lock and for the readers of the moment, in ms.
const WAL_TRUNCATE_WAIT_MS: u32 = 10_000;

/// The log keeper looks at SQLite's planner statistics every this many of its rounds (10 s).
const STATS_CHECK_ROUNDS: u64 = 10;

/// Brings SQLite's planner statistics in step with the data, for every connection of every process.
///
/// Statistics taken while the tables were small (or none, on a database just loaded) steer queries to
/// bad plans: an `_include` search ran at 85 req/s with stale statistics and 4,500 with fresh ones,
/// measured. `PRAGMA optimize` with 0x10000 looks at every table and re-analyzes those that grew or
/// shrank a lot since they were last analyzed (0x02, bounded by analysis_limit); 0x01 only lists what it
/// would do. But SQLite loads statistics into a connection with the schema, and ANALYZE does not
/// change the schema: the other connections, of this pool and of other processes, would plan with
/// the old statistics until they reconnect. So when there is something to analyze, the same
/// transaction also creates and drops an empty table, which changes the schema's version; every
/// connection then reloads the schema, and the statistics with it, before its next statement
/// (sqlite.org/lang_analyze.html, "ANALYZE ... statistics are loaded with the schema"). That happens
/// when a table's size changes tenfold, a few times in a database's life. Returns whether it
/// analyzed.
pub(crate) fn refresh_statistics(c: &mut diesel::SqliteConnection) -> Result<bool, diesel::result::Error> {
    use diesel::connection::SimpleConnection;
    #[derive(diesel::QueryableByName)]
    struct Step {
        #[diesel(sql_type = diesel::sql_types::Text)]
        optimize: String,
    }
    let due: Vec<Step> = diesel::sql_query("PRAGMA optimize = 0x10003").load(c)?;
    let steps: Vec<&str> = due
        .iter()
        .map(|s| s.optimize.as_str())
        .filter(|s| s.starts_with("ANALYZE"))
        .collect();
    if steps.is_empty() {
        return Ok(false);
    }
    let mut batch = String::from("BEGIN IMMEDIATE; ");
    for step in steps {
        batch.push_str(step.trim_end_matches(';'));
        batch.push_str("; ");
    }
    batch.push_str("CREATE TABLE tandem_statistics_reload (n INTEGER); DROP TABLE tandem_statistics_reload; COMMIT;");
    if let Err(e) = c.batch_execute(&batch) {
        let _ = c.batch_execute("ROLLBACK;");
        return Err(e);
    }
    Ok(true)
}

/// SQLite's log keeper: a thread per SQLite store that empties the write-ahead log when it has grown.
///
/// Under steady load SQLite's automatic checkpoints copy the log into the database but never start
/// the log over (some transaction is always using it), so the -wal file grows without bound: 3.8 GB
/// while loading 100,000 appointments, measured. A truncating checkpoint takes the writer lock,
/// waits for the readers of the moment and empties the file; writers wait meanwhile, as they wait
/// for each other. It runs on its own thread so that no request pays for it, and stops when the
/// store is dropped.
fn keep_wal_small(pool: DbPool, wal: String, alive: std::sync::Weak<()>) {
    let spawned = std::thread::Builder::new()
        .name("tandem-sqlite-wal".into())
        .spawn(move || wal_keeper_rounds(&pool, &wal, &alive));
    if let Err(e) = spawned {
        tracing::warn!(cause = %e, "starting SQLite's log keeper failed");
    }
}

/// The log keeper's rounds, until the store is gone.
fn wal_keeper_rounds(pool: &DbPool, wal: &str, alive: &std::sync::Weak<()>) {
    use diesel::connection::SimpleConnection;
    let mut round = 0u64;
    let mut tick = 0u32;
    let mut looked_at: Option<(u64, Option<std::time::SystemTime>)> = None;
    let mut copied_at: Option<(u64, Option<std::time::SystemTime>)> = None;
    loop {
        std::thread::sleep(WAL_COPY_EVERY);
        if alive.strong_count() == 0 {
            return;
        }
        let log = std::fs::metadata(wal).ok();
        let log_state = log.as_ref().map(|m| (m.len(), m.modified().ok()));
        // The writer's commits do not copy the log into the database (see Writer::connect): a
        // passive checkpoint does it here, beside the writer, whenever something was written.
        if log_state != copied_at {
            if let Ok(mut conn) = pool.get() {
                if let AnyConnection::Sqlite(c) = &mut *conn {
                    if let Err(e) = c.batch_execute("PRAGMA wal_checkpoint(PASSIVE);") {
                        tracing::debug!(cause = %e, "copying the SQLite write-ahead log: not this time");
                    }
                }
            }
            copied_at = log_state;
        }
        tick += 1;
        if !tick.is_multiple_of(COPIES_PER_CHECK) {
            continue;
        }
        round += 1;
        // Statistics: looked at when the log changed since the last look (something was written).
        if round.is_multiple_of(STATS_CHECK_ROUNDS) && log_state != looked_at {
            if let Ok(mut conn) = pool.get() {
                if let AnyConnection::Sqlite(c) = &mut *conn {
                    if let Err(e) = refresh_statistics(c) {
                        tracing::debug!(cause = %e, "refreshing SQLite statistics: not this time");
                    }
                }
            }
            looked_at = log_state;
        }
        if log.map_or(0, |m| m.len()) <= WAL_TRUNCATE_ABOVE_BYTES {
            continue;
        }
        let Ok(mut conn) = pool.get() else { continue };
        let AnyConnection::Sqlite(c) = &mut *conn else { return };
        let truncate = format!("PRAGMA busy_timeout = {WAL_TRUNCATE_WAIT_MS}; PRAGMA wal_checkpoint(TRUNCATE);");
        let checkpoint = c.batch_execute(&truncate);
        // Whether or not the checkpoint went through, the connection goes back to the pool with the
        // pool's own timeout.
        let _ = c.batch_execute(&format!("PRAGMA busy_timeout = {};", pool::SQLITE_BUSY_TIMEOUT_MS));
        if let Err(e) = checkpoint {
            tracing::debug!(cause = %e, "emptying the SQLite write-ahead log: not this time");
        }
    }
}

#[derive(diesel::QueryableByName)]
struct TxClock {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    now: i64,
}

/// Starts a write transaction and returns its time, stamped on what it writes.
///
/// SQLite: takes the database write lock first (see the write_lock table), so writers commit in the
/// order of their stamps. PostgreSQL: makes the transaction a writing one at once (it gets its xid,
/// so it shows in pg_stat_activity with `backend_xid` and `xact_start`) and reads the database's
/// clock, the one clock shared by every replica. Each stamp is then at or after the start of a
/// transaction that [`Store::watermark`] can see while it runs.
fn begin_write(c: &mut AnyConnection) -> Result<i64, diesel::result::Error> {
    match c {
        AnyConnection::Sqlite(_) => {
            diesel::update(write_lock::table)
                .set(write_lock::n.eq(write_lock::n + 1))
                .execute(c)?;
            Ok(crate::resources::dates::now_millis())
        }
        AnyConnection::Postgresql(pg) => {
            // The write's statements are prepared, and their plans do not depend on the values
            // (primary keys, the bookings' exclusion index): the generic plan, made once per
            // connection, instead of a new custom plan at every execution, which was 13% of
            // PostgreSQL's CPU under creates (perf). For this transaction only.
            let clock: TxClock = fixed::Fixed::new(
                "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS now, pg_current_xact_id()::text AS xid, \
                 set_config('plan_cache_mode', 'force_generic_plan', true) AS plans",
                Vec::new(),
            )
            .get_result(pg)?;
            Ok(clock.now)
        }
    }
}

/// Why a write transaction was abandoned: a real error, or a lost race worth trying again.
enum Abort {
    Error(Error),
    Retry,
}

impl From<diesel::result::Error> for Abort {
    fn from(e: diesel::result::Error) -> Self {
        match e {
            diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _)
            // Another replica booked the same time first: the retry's overlap check names it.
            | diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::ExclusionViolation, _)
            | diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::SerializationFailure, _) => {
                Abort::Retry
            }
            // PostgreSQL chose this transaction as a deadlock victim (40P01, which diesel reports as
            // Unknown): it wrote nothing, and running it again is the documented remedy.
            diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::Unknown, ref info)
                if info.message().contains("deadlock detected") =>
            {
                Abort::Retry
            }
            other => Abort::Error(other.into()),
        }
    }
}

impl From<Error> for Abort {
    fn from(e: Error) -> Self {
        Abort::Error(e)
    }
}

/// Runs `work` in a write transaction on `conn`, again when it lost a race to another writer.
fn write_on<T>(
    conn: &mut AnyConnection,
    mut work: impl FnMut(&mut AnyConnection, i64) -> Result<T, Abort>,
) -> Result<T, Error> {
    retrying(|| {
        conn.transaction::<T, Abort, _>(|c| {
            let now = begin_write(c)?;
            work(c, now)
        })
    })
}

/// Runs `attempt` until it does not lose a race (Abort::Retry), at most WRITE_ATTEMPTS times.
fn retrying<T>(mut attempt: impl FnMut() -> Result<T, Abort>) -> Result<T, Error> {
    for _ in 0..WRITE_ATTEMPTS {
        match attempt() {
            Ok(v) => return Ok(v),
            Err(Abort::Error(e)) => return Err(e),
            Err(Abort::Retry) => continue,
        }
    }
    Err(Error::Conflict(
        "the resource is being changed by other requests at the same time; try again".into(),
    ))
}

use writer::Writer;

impl Store {
    pub fn open(url: &str, pool_size: u32) -> Result<Store, Error> {
        Store::open_with_timeout(url, pool_size, 0)
    }

    /// Opens the store; on PostgreSQL no statement may run longer than `statement_timeout_ms`
    /// (0: no limit), and one that does fails with 503 instead of holding its connection.
    pub fn open_with_timeout(url: &str, pool_size: u32, statement_timeout_ms: u64) -> Result<Store, Error> {
        let url = DatabaseUrl::parse(url);
        let pool = pool::open_pool(&url, pool_size, statement_timeout_ms)?;
        let alive = std::sync::Arc::new(());
        let sqlite_writer = match &url {
            DatabaseUrl::Sqlite(path) => Some(std::sync::Arc::new(Writer::new(path, pool.connection_timeout()))),
            DatabaseUrl::Postgres(_) => None,
        };
        let gatherer = std::sync::Arc::new(gather::Gatherer::new(pool.clone()));
        if let DatabaseUrl::Sqlite(path) = &url {
            keep_wal_small(pool.clone(), format!("{path}-wal"), std::sync::Arc::downgrade(&alive));
        }
        Ok(Store {
            pool,
            backend: url.backend_name(),
            rules: crate::scheduling::Rules::default(),
            _alive: alive,
            sqlite_writer,
            gatherer,
            schema: pool::Schema::Main,
        })
    }

    /// The scheduling rules this store enforces (canonical base, consent policy).
    pub fn with_rules(mut self, rules: crate::scheduling::Rules) -> Store {
        self.rules = rules;
        self
    }

    pub fn rules(&self) -> &crate::scheduling::Rules {
        &self.rules
    }

    pub fn backend(&self) -> &'static str {
        self.backend
    }

    pub fn migrate(&self) -> Result<usize, Error> {
        pool::run_migrations(&self.pool, self.schema)
    }

    /// The audit trail's store (TANDEM_AUDIT_DATABASE_URL): a pool of its own on `url`, whose
    /// migrations create the trail's tables alone. On SQLite a file beside the main one has its own
    /// write-ahead log and writer, so writing the trail never takes turns with the clinic's writes;
    /// on PostgreSQL its transactions do not wait for their commit to reach disk (see
    /// [`Store::insert_audit`]).
    pub fn open_audit(url: &str, pool_size: u32, statement_timeout_ms: u64) -> Result<Store, Error> {
        let mut store = Store::open_with_timeout(url, pool_size, statement_timeout_ms)?;
        store.schema = pool::Schema::Audit;
        Ok(store)
    }

    /// This store as the audit trail's, when the trail shares its database: the same pool (no
    /// second pool, nor a second log keeper, on one database).
    pub fn as_audit(&self) -> Store {
        let mut store = self.clone();
        store.schema = pool::Schema::Audit;
        store
    }

    /// The database answers within `wait` and no migration of this build is pending (migrations of a
    /// newer build do not matter: an older replica still serves during a rolling upgrade).
    pub fn ready(&self, wait: std::time::Duration) -> Result<bool, Error> {
        pool::migrations_current(&self.pool, wait, self.schema)
    }

    /// The connection pool now: (connections open, idle, most allowed).
    pub fn pool_state(&self) -> (u32, u32, u32) {
        let state = self.pool.state();
        (state.connections, state.idle_connections, self.pool.max_size())
    }

    /// Runs `work` in a write transaction, retrying when it lost a race to another writer. `work`
    /// gets the transaction's time, which stamps what it writes (see [`Store::watermark`]).
    fn write<T>(&self, work: impl FnMut(&mut AnyConnection, i64) -> Result<T, Abort>) -> Result<T, Error> {
        match &self.sqlite_writer {
            Some(writer) => writer.write(work),
            None => write_on(&mut *self.pool.get()?, work),
        }
    }

    /// The current version. NotFound for an unknown id, Gone for a deleted resource.
    pub fn read(&self, rt: ResourceType, id: &str) -> Result<Version, Error> {
        let mut conn = self.pool.get()?;
        read_in(&mut conn, rt, id)
    }
}

impl Store {
    /// One version (http.html#vread). A deletion version answers Gone.
    pub fn vread(&self, rt: ResourceType, id: &str, version_id: i64) -> Result<Version, Error> {
        let mut conn = self.pool.get()?;
        vread_in(&mut conn, rt, id, version_id)
    }

    /// The latest instant before which every write has committed: a client that asks next for
    /// changes `_since` this instant misses none, whatever is in flight now and however many replicas
    /// write. PostgreSQL: the database clock, or the start of the oldest transaction that is writing
    /// (every stamp is at or after the start of its transaction); SQLite: the time at which this call
    /// has its turn to write (the writes before it have committed, or are in its group's transaction,
    /// and it is answered only once that has committed: see writer.rs).
    pub fn watermark(&self) -> Result<i64, Error> {
        let mut pooled = self.pool.get()?;
        if let AnyConnection::Postgresql(pg) = &mut *pooled {
            let clock: TxClock = diesel::sql_query(
                "SELECT (extract(epoch FROM LEAST(clock_timestamp(), COALESCE((SELECT min(xact_start) \
                 FROM pg_stat_activity WHERE backend_xid IS NOT NULL AND datname = current_database()), \
                 clock_timestamp()))) * 1000)::bigint - 1 AS now",
            )
            .get_result(pg)?;
            return Ok(clock.now);
        }
        drop(pooled);
        self.write(|_, now| Ok(now))
    }

    /// History, newest first (http.html#history). `since` keeps versions written at or after that
    /// instant; `at` (low, high) keeps versions that were current at some time in that range;
    /// `before` is the cursor from the previous page (versions older than it).
    pub fn history(
        &self,
        scope: HistoryScope<'_>,
        since: Option<i64>,
        at: Option<(i64, i64)>,
        before: Option<i64>,
        count: i64,
    ) -> Result<HistoryPage, Error> {
        let mut conn = self.pool.get()?;
        if let HistoryScope::Instance(rt, id) = scope {
            if load_current(&mut conn, rt, id)?.is_none() {
                return Err(not_found(rt, id));
            }
        }
        let mut query = resource_versions::table.into_boxed();
        match scope {
            HistoryScope::Instance(rt, id) => {
                query = query
                    .filter(resource_versions::res_type.eq(rt.as_str()))
                    .filter(resource_versions::res_id.eq(id.to_string()));
            }
            HistoryScope::Type(rt) => query = query.filter(resource_versions::res_type.eq(rt.as_str())),
            HistoryScope::System => {}
        }
        if let Some(since) = since {
            query = query.filter(resource_versions::last_updated.ge(since));
        }
        if let Some((low, high)) = at {
            // Current at some time in [low, high]: written by the end of it, and not replaced by a
            // later version before it began.
            let next = diesel::alias!(resource_versions as next_versions);
            query = query
                .filter(resource_versions::last_updated.le(high))
                .filter(diesel::dsl::not(diesel::dsl::exists(
                    next.filter(next.field(resource_versions::res_type).eq(resource_versions::res_type))
                        .filter(next.field(resource_versions::res_id).eq(resource_versions::res_id))
                        .filter(
                            next.field(resource_versions::version_id)
                                .eq(resource_versions::version_id + 1),
                        )
                        .filter(next.field(resource_versions::last_updated).lt(low)),
                )));
        }
        if let Some(before) = before {
            query = query.filter(resource_versions::seq.lt(before));
        }
        let rows: Vec<(i64, Version)> = query
            .order(resource_versions::seq.desc())
            .limit(count + 1)
            .select((resource_versions::seq, version_columns()))
            .load(&mut conn)?;
        let more = rows.len() as i64 > count;
        let mut entries = Vec::with_capacity(rows.len());
        let mut last_seq = None;
        for (seq, v) in rows.into_iter().take(count as usize) {
            last_seq = Some(seq);
            entries.push(v);
        }
        Ok(HistoryPage {
            entries,
            next_before: if more { last_seq } else { None },
        })
    }
}

/// A migrated SQLite store in a new directory of its own (`tandem-{name}-{pid}`, its file `t.db`),
/// for the store's unit tests; the test removes the directory when done.
#[cfg(test)]
fn scratch_sqlite(name: &str, pool_size: u32) -> (Store, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("tandem-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store = Store::open(&format!("sqlite://{}", dir.join("t.db").display()), pool_size).unwrap();
    store.migrate().unwrap();
    (store, dir)
}

#[cfg(test)]
mod tests {
    use super::write::stamp;

    #[test]
    fn stamp_puts_server_fields_first_and_keeps_client_meta() {
        let r = serde_json::json!({"resourceType": "Patient", "active": true, "id": "ignored",
            "meta": {"versionId": "99", "tag": [{"code": "t"}]}});
        let s = stamp(&r, "abc", 3, 0);
        assert_eq!(
            s,
            r#"{"resourceType":"Patient","id":"abc","meta":{"versionId":"3","lastUpdated":"1970-01-01T00:00:00.000Z","tag":[{"code":"t"}]},"active":true}"#
        );
    }
}

#[cfg(test)]
mod wal {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    fn wal_bytes(db: &std::path::Path) -> u64 {
        std::fs::metadata(db.with_extension("db-wal")).map_or(0, |m| m.len())
    }

    /// Writes while another thread always has a read going: SQLite alone would never start its log
    /// over, and the -wal file would keep every page written. The store truncates it.
    #[test]
    fn steady_reads_and_writes_do_not_grow_the_write_ahead_log_without_bound() {
        let (store, dir) = scratch_sqlite("wal", 4);
        let store = Arc::new(store);
        let db = dir.join("t.db");
        let rt = ResourceType::parse("Patient").unwrap();
        let patient =
            |i: usize| serde_json::json!({"resourceType": "Patient", "name": [{"family": format!("Wal{i}")}]});
        let first = store.create(rt, patient(0), &WriteAccess::full()).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (store, stop, id) = (store.clone(), stop.clone(), first.res_id.clone());
                std::thread::spawn(move || {
                    // Bounded, like every loop here: it stops when told or after a million reads.
                    for _ in 0..1_000_000 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        store.read(rt, &id).unwrap();
                    }
                })
            })
            .collect();
        // Writes until the log is past the keeper's threshold (at most 5,000 writes or 20 s).
        let started = Instant::now();
        let mut written = 0;
        while wal_bytes(&db) <= 2 * WAL_TRUNCATE_ABOVE_BYTES
            && written < 5_000
            && started.elapsed() < Duration::from_secs(20)
        {
            store.create(rt, patient(written), &WriteAccess::full()).unwrap();
            written += 1;
        }
        let grown = wal_bytes(&db);
        // The readers go on; the keeper empties the log within a few of its rounds.
        let waited = Instant::now();
        while wal_bytes(&db) > 0 && waited.elapsed() < WAL_CHECK_EVERY * 5 {
            std::thread::sleep(Duration::from_millis(50));
        }
        let after = wal_bytes(&db);
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            r.join().unwrap();
        }
        assert!(
            grown > 2 * WAL_TRUNCATE_ABOVE_BYTES,
            "{written} writes made a log of only {grown} bytes"
        );
        assert_eq!(
            after, 0,
            "the log was emptied while reads went on (it had reached {grown} bytes)"
        );
        drop(store);
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[cfg(test)]
mod statistics {
    use super::*;
    use diesel::connection::SimpleConnection;

    #[derive(diesel::QueryableByName)]
    struct PlanRow {
        #[diesel(sql_type = diesel::sql_types::Text)]
        detail: String,
    }

    /// The plan of a correlated MAX over one resource's dates, written with a bare parameter name,
    /// which the planner answers from the owner index only when it knows the table's sizes.
    fn max_probe(c: &mut diesel::SqliteConnection) -> String {
        let rows: Vec<PlanRow> = diesel::sql_query(
            "EXPLAIN QUERY PLAN SELECT r.res_id FROM resources r WHERE r.res_type = 'Appointment' ORDER BY \
             (SELECT MAX(x.high) FROM idx_date x WHERE x.res_type = r.res_type AND x.res_id = r.res_id AND x.param = 'date')",
        )
        .load(c)
        .unwrap();
        rows.into_iter().map(|r| r.detail).collect::<Vec<_>>().join("\n")
    }

    fn schema_version(c: &mut diesel::SqliteConnection) -> i32 {
        #[derive(diesel::QueryableByName)]
        struct V {
            #[diesel(sql_type = diesel::sql_types::Integer)]
            schema_version: i32,
        }
        diesel::sql_query("PRAGMA schema_version")
            .get_result::<V>(c)
            .unwrap()
            .schema_version
    }

    fn load(c: &mut diesel::SqliteConnection, from: i64, to: i64) {
        c.batch_execute(&format!(
            "WITH RECURSIVE seq(g) AS (SELECT {from} UNION ALL SELECT g + 1 FROM seq WHERE g < {to})
             INSERT INTO idx_date (res_type, res_id, param, low, high) SELECT 'Appointment', 'a' || g, 'date', g, g + 1 FROM seq;
             WITH RECURSIVE seq(g) AS (SELECT {from} UNION ALL SELECT g + 1 FROM seq WHERE g < {to})
             INSERT INTO resources (res_type, res_id, version_id, last_updated, deleted, body)
               SELECT 'Appointment', 'a' || g, 1, g, false, '{{}}' FROM seq;"
        ))
        .unwrap();
    }

    /// A database loaded in bulk after its statistics were taken: a refresh analyzes it again, and a
    /// connection that was open all along (another request's) plans with the new statistics from
    /// its next statement. ANALYZE alone would leave it with the old ones: SQLite reads statistics
    /// with the schema, and only creating sqlite_stat1 changes the schema.
    #[test]
    fn a_refresh_reaches_the_connections_already_open() {
        let (store, dir) = scratch_sqlite("stats", 2);
        let mut open_all_along = store.pool.get().unwrap();
        let AnyConnection::Sqlite(old) = &mut *open_all_along else {
            unreachable!()
        };
        let mut other = store.pool.get().unwrap();
        let AnyConnection::Sqlite(refresher) = &mut *other else {
            unreachable!()
        };

        load(old, 1, 10);
        assert!(
            refresh_statistics(refresher).unwrap(),
            "tables never analyzed are analyzed"
        );
        let version = schema_version(old);
        load(old, 11, 20_000);
        assert!(
            refresh_statistics(refresher).unwrap(),
            "a table 2,000 times its analyzed size is analyzed again"
        );
        assert!(
            !refresh_statistics(refresher).unwrap(),
            "nothing changed since: nothing to analyze"
        );
        assert!(
            schema_version(old) > version,
            "the schema's version changed, so every connection reloads it"
        );

        // The old connection's next statement that reads the database finds the schema changed and
        // loads it again, statistics included (EXPLAIN alone does not read the database).
        old.batch_execute("SELECT count(*) FROM resources;").unwrap();
        let after = max_probe(old);
        assert!(
            after.contains("idx_date_owner"),
            "the connection open all along plans with the statistics: {after}"
        );
        assert!(max_probe(refresher).contains("idx_date_owner"));
        drop((open_all_along, other, store));
        let _ = std::fs::remove_dir_all(dir);
    }
}
