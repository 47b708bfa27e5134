//! Opening the database: which backend a URL names, the connection pool, per-connection settings and
//! the embedded migrations.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::connection::{Instrumentation, InstrumentationEvent, SimpleConnection};
use diesel::r2d2::{self, ManageConnection, Pool};
use diesel::result::DatabaseErrorKind;
use diesel::{Connection, PgConnection, RunQueryDsl, SqliteConnection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use super::connection::AnyConnection;
use crate::error::Error;

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");
/// The audit store's own migrations (its tables only), for a database that holds just the trail.
const AUDIT_SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/audit/sqlite");
const AUDIT_POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/audit/postgres");

/// Which migrations a store runs: the whole schema, or the audit trail's tables alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    Main,
    Audit,
}

impl Schema {
    fn sets(self) -> (EmbeddedMigrations, EmbeddedMigrations) {
        match self {
            Schema::Main => (SQLITE_MIGRATIONS, POSTGRES_MIGRATIONS),
            Schema::Audit => (AUDIT_SQLITE_MIGRATIONS, AUDIT_POSTGRES_MIGRATIONS),
        }
    }
}

/// How long a SQLite connection waits for another connection's lock before giving up.
pub(super) const SQLITE_BUSY_TIMEOUT_MS: u32 = 15_000;

/// An arbitrary, fixed key for the advisory lock that serializes migrations across replicas.
const MIGRATION_LOCK_KEY: i64 = 0x7461_6e64_656d; // "tandem"

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Postgres(String),
    /// A file path (created with its directory if missing).
    Sqlite(String),
}

impl DatabaseUrl {
    /// `postgres://…` / `postgresql://…` select PostgreSQL; `sqlite://PATH`, `sqlite:PATH` or a bare path
    /// select SQLite.
    pub fn parse(url: &str) -> DatabaseUrl {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            DatabaseUrl::Postgres(url.to_string())
        } else {
            let path = url
                .strip_prefix("sqlite://")
                .or_else(|| url.strip_prefix("sqlite:"))
                .unwrap_or(url);
            DatabaseUrl::Sqlite(path.to_string())
        }
    }

    pub fn backend_name(&self) -> &'static str {
        match self {
            DatabaseUrl::Postgres(_) => "postgresql",
            DatabaseUrl::Sqlite(_) => "sqlite",
        }
    }
}

/// Establishes connections of exactly the backend the URL names (never falling back to another).
#[derive(Debug)]
pub struct Manager {
    url: DatabaseUrl,
    /// PostgreSQL `statement_timeout` in milliseconds (0: none): no query runs longer.
    statement_timeout_ms: u64,
    /// PostgreSQL connections found lost so far (see [`LastAnswer`]).
    outages: Arc<AtomicU64>,
}

impl ManageConnection for Manager {
    type Connection = AnyConnection;
    type Error = r2d2::Error;

    fn connect(&self) -> Result<AnyConnection, r2d2::Error> {
        match &self.url {
            DatabaseUrl::Postgres(url) => {
                let mut conn = PgConnection::establish(url).map_err(r2d2::Error::ConnectionError)?;
                conn.set_instrumentation(LastAnswer {
                    at: Some(Instant::now()),
                    outages_seen: self.outages.load(Ordering::Relaxed),
                    outages: self.outages.clone(),
                    checking: false,
                });
                if self.statement_timeout_ms > 0 {
                    conn.batch_execute(&format!("SET statement_timeout = {}", self.statement_timeout_ms))
                        .map_err(r2d2::Error::QueryError)?;
                }
                Ok(AnyConnection::Postgresql(conn))
            }
            DatabaseUrl::Sqlite(path) => Ok(AnyConnection::Sqlite(connect_sqlite(path)?)),
        }
    }

    fn is_valid(&self, conn: &mut AnyConnection) -> Result<(), r2d2::Error> {
        let AnyConnection::Postgresql(pg) = conn else {
            return conn.batch_execute("SELECT 1").map_err(r2d2::Error::QueryError);
        };
        let outages = self.outages.load(Ordering::Relaxed);
        if pg
            .instrumentation()
            .downcast_ref::<LastAnswer>()
            .is_some_and(LastAnswer::recent)
        {
            return Ok(());
        }
        if let Some(last) = pg.instrumentation().downcast_mut::<LastAnswer>() {
            last.checking = true;
        }
        let checked = pg.batch_execute("SELECT 1");
        if let Some(last) = pg.instrumentation().downcast_mut::<LastAnswer>() {
            last.checking = false;
            last.outages_seen = outages;
        }
        checked.map_err(r2d2::Error::QueryError)
    }

    fn has_broken(&self, _conn: &mut AnyConnection) -> bool {
        false
    }
}

/// A PostgreSQL connection that answered a query this recently is taken from the pool as it is; one
/// idle for longer is checked with `SELECT 1` first (as HikariCP does with its 500 ms window). A
/// check on every checkout cost every request a round trip (measured: reads by id 8,000 → 9,300/s).
const RECENTLY_ANSWERED: Duration = Duration::from_millis(500);

/// What [`Manager::is_valid`] knows of a PostgreSQL connection: when it last answered a query (None
/// after a query that failed), and how many lost connections the pool had seen by then. A connection
/// found lost makes the pool check every other one before its next use: they went through the same
/// network or server.
struct LastAnswer {
    at: Option<Instant>,
    outages_seen: u64,
    outages: Arc<AtomicU64>,
    /// The pool's own check is running: a connection that fails it is dropped, and the others
    /// need no second look on its account.
    checking: bool,
}

impl LastAnswer {
    /// Whether the connection can be handed out unchecked.
    fn recent(&self) -> bool {
        self.outages_seen == self.outages.load(Ordering::Relaxed)
            && self.at.is_some_and(|at| at.elapsed() < RECENTLY_ANSWERED)
    }
}

impl Instrumentation for LastAnswer {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        let InstrumentationEvent::FinishQuery { error, .. } = event else {
            return;
        };
        self.at = error.is_none().then(Instant::now);
        if error.is_some_and(may_be_lost) && !self.checking {
            self.outages.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Whether a failed query may mean the connection is gone. A refusal by a constraint or by
/// serialization is the data's answer on a live connection; any other database error may be the
/// server going away (a restart or `pg_terminate_backend` reports 57P01 first, which diesel calls
/// Unknown unless libpq has already seen the socket close).
fn may_be_lost(error: &diesel::result::Error) -> bool {
    match error {
        diesel::result::Error::DatabaseError(kind, _) => !matches!(
            kind,
            DatabaseErrorKind::UniqueViolation
                | DatabaseErrorKind::ForeignKeyViolation
                | DatabaseErrorKind::NotNullViolation
                | DatabaseErrorKind::CheckViolation
                | DatabaseErrorKind::ExclusionViolation
                | DatabaseErrorKind::RestrictViolation
                | DatabaseErrorKind::SerializationFailure
                | DatabaseErrorKind::ReadOnlyTransaction
        ),
        _ => false,
    }
}

pub type DbPool = Pool<Manager>;

pub fn open_pool(url: &DatabaseUrl, max_size: u32, statement_timeout_ms: u64) -> Result<DbPool, Error> {
    if let DatabaseUrl::Sqlite(path) = url {
        if let Some(dir) = std::path::Path::new(path)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::Internal(format!("creating the database directory {}: {e}", dir.display())))?;
        }
        set_wal(path)?;
    }
    // How long a request waits for a connection. On PostgreSQL 10 s: a connection that long in
    // coming means the server is gone, and the answer is a 503 to retry. A SQLite file has one
    // writer at a time, shared with every process that opens it: under load a request waits its
    // turn, as long as the request may take (two processes and 400 clients booking at once got
    // 4 503s in 6,000 bookings with a 10 s wait, none with the request's own).
    let wait = match url {
        DatabaseUrl::Sqlite(_) if statement_timeout_ms > 0 => std::time::Duration::from_millis(statement_timeout_ms),
        _ => std::time::Duration::from_secs(10),
    };
    Pool::builder()
        .max_size(max_size)
        .connection_timeout(wait)
        // A PostgreSQL connection can die with its server or the network between, so each one is
        // checked (`SELECT 1`) as it leaves the pool. A SQLite connection is a handle on a local file
        // and cannot: checking it cost every request a statement.
        .test_on_check_out(matches!(url, DatabaseUrl::Postgres(_)))
        .build(Manager {
            url: url.clone(),
            statement_timeout_ms,
            outages: Arc::default(),
        })
        .map_err(|e| Error::Internal(format!("opening the {} database: {e}", url.backend_name())))
}

/// A SQLite connection with this service's per-connection settings, its statistics refreshed.
pub(super) fn connect_sqlite(path: &str) -> Result<SqliteConnection, r2d2::Error> {
    let mut conn = SqliteConnection::establish(path).map_err(r2d2::Error::ConnectionError)?;
    // Per-connection settings only, none of which takes a lock: the busy timeout makes this
    // connection wait for a lock instead of failing at once. WAL is a property of the file,
    // set once by `open_pool` before any connection of the pool exists.
    conn.batch_execute(&format!(
        "PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}; PRAGMA synchronous = NORMAL; \
         PRAGMA foreign_keys = ON; PRAGMA analysis_limit = 400;"
    ))
    .map_err(r2d2::Error::QueryError)?;
    // Refreshes the planner's statistics where they are missing or stale, as SQLite advises
    // for long-lived connections. It may have to write (ANALYZE); a connection is usable
    // without it, and the store's log keeper looks again every few seconds after writes.
    if let Err(e) = super::refresh_statistics(&mut conn) {
        tracing::debug!(cause = %e, "refreshing SQLite statistics on connect failed");
    }
    Ok(conn)
}

/// Switches the SQLite file to write-ahead logging (readers run beside the one writer). The mode is
/// stored in the file, so one connection sets it before the pool opens: switching needs an exclusive
/// lock, and doing it on every new connection made connections fail with "database is locked" while
/// others were busy.
fn set_wal(path: &str) -> Result<(), Error> {
    let fail = |e: &dyn std::fmt::Display| Error::Internal(format!("opening the sqlite database: {e}"));
    let mut conn = SqliteConnection::establish(path).map_err(|e| fail(&e))?;
    conn.batch_execute(&format!(
        "PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}; PRAGMA journal_mode = WAL;"
    ))
    .map_err(|e| fail(&e))
}

/// Runs the pending migrations of the pool's backend. On PostgreSQL an advisory lock makes replicas
/// that start together migrate one after the other.
pub fn run_migrations(pool: &DbPool, schema: Schema) -> Result<usize, Error> {
    let (sqlite, postgres) = schema.sets();
    let mut conn = pool.get()?;
    let applied = match &mut *conn {
        AnyConnection::Sqlite(c) => c.run_pending_migrations(sqlite).map(|v| v.len()),
        AnyConnection::Postgresql(c) => {
            diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})")).execute(c)?;
            let result = c.run_pending_migrations(postgres).map(|v| v.len());
            diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})")).execute(c)?;
            result
        }
    };
    applied.map_err(|e| Error::Internal(format!("running migrations: {e}")))
}

/// True when no migration is pending (for readiness).
pub fn migrations_current(pool: &DbPool, wait: std::time::Duration, schema: Schema) -> Result<bool, Error> {
    let (sqlite, postgres) = schema.sets();
    let mut conn = pool.get_timeout(wait)?;
    let pending = match &mut *conn {
        AnyConnection::Sqlite(c) => c.pending_migrations(sqlite).map(|v| v.is_empty()),
        AnyConnection::Postgresql(c) => c.pending_migrations(postgres).map(|v| v.is_empty()),
    };
    pending.map_err(|e| Error::Internal(format!("checking migrations: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_select_the_backend() {
        assert_eq!(
            DatabaseUrl::parse("postgres://u@h/db"),
            DatabaseUrl::Postgres("postgres://u@h/db".into())
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite://data/t.db"),
            DatabaseUrl::Sqlite("data/t.db".into())
        );
        assert_eq!(DatabaseUrl::parse("data/t.db"), DatabaseUrl::Sqlite("data/t.db".into()));
    }
}

#[cfg(test)]
mod sqlite_settings {
    use super::*;
    use diesel::sql_types::{BigInt, Text};

    #[derive(diesel::QueryableByName)]
    struct Mode {
        #[diesel(sql_type = Text)]
        journal_mode: String,
    }

    #[derive(diesel::QueryableByName)]
    struct Timeout {
        #[diesel(sql_type = BigInt)]
        timeout: i64,
    }

    #[test]
    fn the_pool_opens_the_file_in_wal_mode_with_a_busy_timeout() {
        let dir = std::env::temp_dir().join(format!("tandem-pool-{}", std::process::id()));
        let url = DatabaseUrl::Sqlite(dir.join("t.db").to_string_lossy().into_owned());
        let pool = open_pool(&url, 2, 0).unwrap();
        let mut conn = pool.get().unwrap();
        let AnyConnection::Sqlite(c) = &mut *conn else {
            panic!("not sqlite")
        };
        let mode: Mode = diesel::sql_query("PRAGMA journal_mode").get_result(c).unwrap();
        assert_eq!(mode.journal_mode, "wal");
        let busy: Timeout = diesel::sql_query("PRAGMA busy_timeout").get_result(c).unwrap();
        assert_eq!(busy.timeout, i64::from(SQLITE_BUSY_TIMEOUT_MS));
        drop(conn);
        drop(pool);
        let _ = std::fs::remove_dir_all(dir);
    }
}
