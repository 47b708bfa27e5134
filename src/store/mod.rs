//! Storage: resources kept whole as FHIR JSON with every version, and the search-index rows, written
//! in one transaction per interaction. The same code runs on SQLite and PostgreSQL.
//!
//! Concurrency: a version is written only by a compare-and-swap on the current row
//! (`UPDATE … WHERE version_id = <the version read>`), backed by the unique key on
//! (type, id, version) in the version table, so two writers can never both produce version n+1.
//! On SQLite every write transaction first takes the database write lock.

mod audit;
mod connection;
pub mod pool;
mod scheduling;
mod schema;
mod search;

pub use audit::{AuditPage, AuditRow};
pub use search::SearchPage;

use diesel::prelude::*;
use serde_json::{Map, Value};

pub use connection::AnyConnection;
use pool::{DatabaseUrl, DbPool};
use schema::{
    idx_composite, idx_date, idx_number, idx_position, idx_reference, idx_string, idx_token, idx_uri,
    resource_versions, resources, write_lock,
};

use crate::error::Error;
use crate::resources::{compartment, dates, index, local_references, ResourceType};

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
    /// Only resources in this patient's compartment, before and after the write.
    pub compartment: Option<String>,
    /// Whether an update may create the resource (the caller also holds create on the type).
    pub may_create: bool,
}

impl WriteAccess {
    /// A caller who may write anything.
    pub fn full() -> WriteAccess {
        WriteAccess {
            compartment: None,
            may_create: true,
        }
    }

    /// Refuses (403) a resource outside the caller's compartment. `id` is the resource's id.
    fn check(&self, rt: ResourceType, id: &str, resource: &Value) -> Result<(), Error> {
        let Some(patient) = &self.compartment else {
            return Ok(());
        };
        let own_record = rt.as_str() == "Patient" && id == patient;
        if own_record || compartment::contains(patient, rt, resource) {
            return Ok(());
        }
        Err(Error::Forbidden(format!(
            "{rt}/{id} is outside the compartment of Patient/{patient}, the only one this token may write"
        )))
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
    /// Write transactions committed by this process (see [`Store::after_write`]).
    writes: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// SQLite re-checks its planner statistics every this many committed writes.
const OPTIMIZE_EVERY_WRITES: u64 = 500;

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

#[derive(Queryable)]
struct Current {
    version_id: i64,
    last_updated: i64,
    deleted: bool,
    body: Option<String>,
}

impl Store {
    pub fn open(url: &str, pool_size: u32) -> Result<Store, Error> {
        Store::open_with_timeout(url, pool_size, 0)
    }

    /// Opens the store; on PostgreSQL no statement may run longer than `statement_timeout_ms`
    /// (0: no limit), and one that does fails with 503 instead of holding its connection.
    pub fn open_with_timeout(url: &str, pool_size: u32, statement_timeout_ms: u64) -> Result<Store, Error> {
        let url = DatabaseUrl::parse(url);
        let pool = pool::open_pool(&url, pool_size, statement_timeout_ms)?;
        Ok(Store {
            pool,
            backend: url.backend_name(),
            rules: crate::scheduling::Rules::default(),
            writes: Default::default(),
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
        pool::run_migrations(&self.pool)
    }

    /// The database answers within `wait` and no migration of this build is pending (migrations of a
    /// newer build do not matter: an older replica still serves during a rolling upgrade).
    pub fn ready(&self, wait: std::time::Duration) -> Result<bool, Error> {
        pool::migrations_current(&self.pool, wait)
    }

    /// The connection pool now: (connections open, idle, most allowed).
    pub fn pool_state(&self) -> (u32, u32, u32) {
        let state = self.pool.state();
        (state.connections, state.idle_connections, self.pool.max_size())
    }

    /// Runs `work` in a write transaction, retrying when it lost a race to another writer.
    fn write<T>(&self, mut work: impl FnMut(&mut AnyConnection) -> Result<T, Abort>) -> Result<T, Error> {
        let mut pooled = self.pool.get()?;
        let conn: &mut AnyConnection = &mut pooled;
        for _ in 0..WRITE_ATTEMPTS {
            let result = conn.transaction::<T, Abort, _>(|c| {
                if let AnyConnection::Sqlite(_) = c {
                    // Take SQLite's write lock before reading anything (see the write_lock table).
                    diesel::update(write_lock::table)
                        .set(write_lock::n.eq(write_lock::n + 1))
                        .execute(c)?;
                }
                work(c)
            });
            match result {
                Ok(v) => {
                    self.after_write(conn);
                    return Ok(v);
                }
                Err(Abort::Error(e)) => return Err(e),
                Err(Abort::Retry) => continue,
            }
        }
        Err(Error::Conflict(
            "the resource is being changed by other requests at the same time; try again".into(),
        ))
    }

    /// Keeps SQLite's planner statistics in step with the data: statistics taken while the tables
    /// were small (at start, on an empty database) steer later queries to bad plans (measured: an
    /// `_include` search at 85 req/s with stale statistics, 4,500 req/s with fresh ones). `PRAGMA
    /// optimize` re-analyzes only tables that grew a lot since, bounded by analysis_limit.
    /// PostgreSQL's autovacuum does the same on its side.
    fn after_write(&self, conn: &mut AnyConnection) {
        let n = self.writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if !n.is_multiple_of(OPTIMIZE_EVERY_WRITES) {
            return;
        }
        if let AnyConnection::Sqlite(c) = conn {
            use diesel::connection::SimpleConnection;
            if let Err(e) = c.batch_execute("PRAGMA optimize;") {
                tracing::warn!(cause = %e, "refreshing SQLite statistics failed");
            }
        }
    }

    /// Creates a resource with a server-assigned id (http.html#create).
    pub fn create(&self, rt: ResourceType, resource: Value, access: &WriteAccess) -> Result<Version, Error> {
        self.write(|c| {
            let id = uuid::Uuid::new_v4().to_string();
            create_in(c, &self.rules, rt, &resource, &id, true, access)
        })
    }

    /// Updates a resource, or creates it with the client's id when it does not exist
    /// (http.html#update). `if_match` is the version the client last saw.
    pub fn update(
        &self,
        rt: ResourceType,
        id: &str,
        resource: Value,
        if_match: Option<i64>,
        access: &WriteAccess,
    ) -> Result<UpdateOutcome, Error> {
        self.write(|c| update_in(c, &self.rules, rt, id, &resource, if_match, true, access))
    }

    /// Deletes a resource logically (http.html#delete). Returns the deletion version, or None when
    /// there was nothing to delete (unknown, or already deleted).
    pub fn delete(&self, rt: ResourceType, id: &str, access: &WriteAccess) -> Result<Option<Version>, Error> {
        self.write(|c| delete_in(c, rt, id, access))
    }

    /// Runs a transaction Bundle's entries (already in processing order) in one database
    /// transaction: all are written, or none. References are checked once every entry is written, so
    /// entries may refer to each other. A failure names its entry (`label`).
    pub fn transaction(&self, ops: &[BundleOp]) -> Result<Vec<BundleResult>, Error> {
        self.write(|c| {
            let mut results = Vec::with_capacity(ops.len());
            let in_entry = |label: &str, a: Abort| match a {
                Abort::Error(e) => Abort::Error(e.in_context(label)),
                retry => retry,
            };
            for op in ops {
                let result = match op {
                    BundleOp::Create {
                        label,
                        rt,
                        id,
                        resource,
                        access,
                    } => create_in(c, &self.rules, *rt, resource, id, false, access)
                        .map(BundleResult::Created)
                        .map_err(|a| in_entry(label, a))?,
                    BundleOp::Update {
                        label,
                        rt,
                        id,
                        resource,
                        if_match,
                        access,
                    } => update_in(c, &self.rules, *rt, id, resource, *if_match, false, access)
                        .map(BundleResult::Updated)
                        .map_err(|a| in_entry(label, a))?,
                    BundleOp::Delete { label, rt, id, access } => delete_in(c, *rt, id, access)
                        .map(BundleResult::Deleted)
                        .map_err(|a| in_entry(label, a))?,
                    BundleOp::Read {
                        label,
                        rt,
                        id,
                        compartment,
                    } => read_in(c, *rt, id)
                        .and_then(|v| visible_to(compartment.as_deref(), *rt, v))
                        .map(BundleResult::Read)
                        .map_err(|e| in_entry(label, e.into()))?,
                };
                results.push(result);
            }
            for op in ops {
                if let BundleOp::Create {
                    label,
                    rt,
                    id,
                    resource,
                    ..
                }
                | BundleOp::Update {
                    label,
                    rt,
                    id,
                    resource,
                    ..
                } = op
                {
                    check_references(c, resource, *rt, id).map_err(|a| in_entry(label, a))?;
                }
            }
            Ok(results)
        })
    }

    /// The current version. NotFound for an unknown id, Gone for a deleted resource.
    pub fn read(&self, rt: ResourceType, id: &str) -> Result<Version, Error> {
        let mut conn = self.pool.get()?;
        read_in(&mut conn, rt, id)
    }
}

/// One entry of a transaction Bundle, for [`Store::transaction`]; `label` names it in errors.
#[derive(Debug, Clone)]
pub enum BundleOp {
    Create {
        label: String,
        rt: ResourceType,
        id: String,
        resource: Value,
        access: WriteAccess,
    },
    Update {
        label: String,
        rt: ResourceType,
        id: String,
        resource: Value,
        if_match: Option<i64>,
        access: WriteAccess,
    },
    Delete {
        label: String,
        rt: ResourceType,
        id: String,
        access: WriteAccess,
    },
    Read {
        label: String,
        rt: ResourceType,
        id: String,
        /// A `patient/` reader sees only this patient's compartment.
        compartment: Option<String>,
    },
}

/// The version, if a reader limited to `patient`'s compartment may see it; else NotFound, as if
/// it did not exist.
pub fn visible_to(patient: Option<&str>, rt: ResourceType, v: Version) -> Result<Version, Error> {
    let (Some(patient), Some(_)) = (patient, compartment::patient_params(rt)) else {
        return Ok(v);
    };
    let body: Value = v
        .body
        .as_deref()
        .and_then(|b| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    if compartment::contains(patient, rt, &body) {
        Ok(v)
    } else {
        Err(not_found(rt, &v.res_id))
    }
}

#[derive(Debug)]
pub enum BundleResult {
    Created(Version),
    Updated(UpdateOutcome),
    /// The deletion version, or None when there was nothing to delete.
    Deleted(Option<Version>),
    Read(Version),
}

fn read_in(conn: &mut AnyConnection, rt: ResourceType, id: &str) -> Result<Version, Error> {
    {
        let current = load_current(conn, rt, id)?.ok_or_else(|| not_found(rt, id))?;
        match current.body {
            Some(body) if !current.deleted => Ok(Version {
                res_type: rt.as_str().into(),
                res_id: id.into(),
                version_id: current.version_id,
                last_updated: current.last_updated,
                method: "PUT".into(),
                body: Some(body),
            }),
            _ => Err(Error::Gone(format!(
                "{rt}/{id} was deleted (version {})",
                current.version_id
            ))),
        }
    }
}

impl Store {
    /// One version (http.html#vread). A deletion version answers Gone.
    pub fn vread(&self, rt: ResourceType, id: &str, version_id: i64) -> Result<Version, Error> {
        let mut conn = self.pool.get()?;
        let found: Option<Version> = resource_versions::table
            .filter(resource_versions::res_type.eq(rt.as_str()))
            .filter(resource_versions::res_id.eq(id))
            .filter(resource_versions::version_id.eq(version_id))
            .select(version_columns())
            .first(&mut conn)
            .optional()?;
        match found {
            Some(v) if v.body.is_some() => Ok(v),
            Some(v) => Err(Error::Gone(format!(
                "version {} of {rt}/{id} is a deletion",
                v.version_id
            ))),
            None => Err(Error::NotFound(format!("{rt}/{id} has no version {version_id}"))),
        }
    }

    /// History, newest first (http.html#history). `since` keeps versions written at or after that
    /// instant; `before` is the cursor from the previous page (versions older than it).
    pub fn history(
        &self,
        scope: HistoryScope<'_>,
        since: Option<i64>,
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

/// Creates `rt/id` (the id chosen by the caller) on an open write transaction. `check_refs` is false
/// inside a transaction Bundle, whose references are checked once all its entries are written.
fn create_in(
    c: &mut AnyConnection,
    rules: &crate::scheduling::Rules,
    rt: ResourceType,
    resource: &Value,
    id: &str,
    check_refs: bool,
    access: &WriteAccess,
) -> Result<Version, Abort> {
    access.check(rt, id, resource)?;
    if check_refs {
        check_references(c, resource, rt, id)?;
    }
    let mut resource = resource.clone();
    scheduling::before_write(c, rules, rt, id, &mut resource, None)?;
    let entries = index::extract(rt, &resource);
    let now = dates::now_millis();
    let body = stamp(&resource, id, 1, now);
    diesel::insert_into(resources::table)
        .values((
            resources::res_type.eq(rt.as_str()),
            resources::res_id.eq(id),
            resources::version_id.eq(1i64),
            resources::last_updated.eq(now),
            resources::deleted.eq(false),
            resources::body.eq(Some(&body)),
        ))
        .execute(c)?;
    let version = Version {
        res_type: rt.as_str().into(),
        res_id: id.to_string(),
        version_id: 1,
        last_updated: now,
        method: "POST".into(),
        body: Some(body),
    };
    insert_version(c, &version)?;
    write_index(c, rt, &version.res_id, &entries)?;
    Ok(version)
}

/// Updates (or creates with the client's id) `rt/id` on an open write transaction.
#[allow(clippy::too_many_arguments)]
fn update_in(
    c: &mut AnyConnection,
    rules: &crate::scheduling::Rules,
    rt: ResourceType,
    id: &str,
    resource: &Value,
    if_match: Option<i64>,
    check_refs: bool,
    access: &WriteAccess,
) -> Result<UpdateOutcome, Abort> {
    access.check(rt, id, resource)?;
    if check_refs {
        check_references(c, resource, rt, id)?;
    }
    let current = load_current_for_write(c, rt, id)?;
    let previous: Option<Value> = current
        .as_ref()
        .filter(|cur| !cur.deleted)
        .and_then(|cur| cur.body.as_deref())
        .and_then(|b| serde_json::from_str(b).ok());
    if let Some(previous) = &previous {
        access.check(rt, id, previous)?;
    } else if !access.may_create {
        return Err(Error::Forbidden(format!(
            "{rt}/{id} does not exist, and the token's scopes do not grant create on {rt}"
        ))
        .into());
    }
    let mut resource = resource.clone();
    scheduling::before_write(c, rules, rt, id, &mut resource, previous.as_ref())?;
    let entries = index::extract(rt, &resource);
    let now = dates::now_millis();
    let Some(current) = current else {
        if let Some(v) = if_match {
            return Err(
                Error::PreconditionFailed(format!("{rt}/{id} does not exist, so version {v} does not match")).into(),
            );
        }
        let body = stamp(&resource, id, 1, now);
        // A concurrent creator of the same id makes this insert fail; the retry then updates.
        diesel::insert_into(resources::table)
            .values((
                resources::res_type.eq(rt.as_str()),
                resources::res_id.eq(id),
                resources::version_id.eq(1i64),
                resources::last_updated.eq(now),
                resources::deleted.eq(false),
                resources::body.eq(Some(&body)),
            ))
            .execute(c)?;
        let version = Version {
            res_type: rt.as_str().into(),
            res_id: id.into(),
            version_id: 1,
            last_updated: now,
            method: "PUT".into(),
            body: Some(body),
        };
        insert_version(c, &version)?;
        write_index(c, rt, id, &entries)?;
        return Ok(UpdateOutcome { version, created: true });
    };
    if let Some(v) = if_match {
        if v != current.version_id {
            return Err(Error::PreconditionFailed(format!(
                "version {v} of {rt}/{id} is not the current one (version {})",
                current.version_id
            ))
            .into());
        }
    }
    let version_id = current.version_id + 1;
    let last_updated = now.max(current.last_updated + 1);
    let body = stamp(&resource, id, version_id, last_updated);
    swap_current(
        c,
        rt,
        id,
        current.version_id,
        version_id,
        last_updated,
        Some(&body),
        if_match,
    )?;
    let version = Version {
        res_type: rt.as_str().into(),
        res_id: id.into(),
        version_id,
        last_updated,
        method: "PUT".into(),
        body: Some(body),
    };
    insert_version(c, &version)?;
    clear_index(c, rt, id)?;
    write_index(c, rt, id, &entries)?;
    Ok(UpdateOutcome {
        version,
        created: current.deleted,
    })
}

/// Deletes `rt/id` logically on an open write transaction; None when there was nothing to delete.
fn delete_in(
    c: &mut AnyConnection,
    rt: ResourceType,
    id: &str,
    access: &WriteAccess,
) -> Result<Option<Version>, Abort> {
    let Some(current) = load_current_for_write(c, rt, id)? else {
        return Ok(None);
    };
    if current.deleted {
        return Ok(None);
    }
    if access.compartment.is_some() {
        let body: Value = current
            .body
            .as_deref()
            .and_then(|b| serde_json::from_str(b).ok())
            .unwrap_or(Value::Null);
        access.check(rt, id, &body)?;
    }
    let version_id = current.version_id + 1;
    let last_updated = dates::now_millis().max(current.last_updated + 1);
    swap_current(c, rt, id, current.version_id, version_id, last_updated, None, None)?;
    scheduling::on_delete(c, rt, id)?;
    let version = Version {
        res_type: rt.as_str().into(),
        res_id: id.into(),
        version_id,
        last_updated,
        method: "DELETE".into(),
        body: None,
    };
    insert_version(c, &version)?;
    clear_index(c, rt, id)?;
    Ok(Some(version))
}

type VersionColumns = (
    resource_versions::res_type,
    resource_versions::res_id,
    resource_versions::version_id,
    resource_versions::last_updated,
    resource_versions::method,
    resource_versions::body,
);

fn version_columns() -> VersionColumns {
    (
        resource_versions::res_type,
        resource_versions::res_id,
        resource_versions::version_id,
        resource_versions::last_updated,
        resource_versions::method,
        resource_versions::body,
    )
}

fn not_found(rt: ResourceType, id: &str) -> Error {
    Error::NotFound(format!("{rt}/{id} is not known"))
}

/// Reads the current row for a write. On PostgreSQL the row is locked first, so concurrent writers of
/// one resource queue behind each other instead of failing the compare-and-swap (SQLite writers are
/// already serialized by its write lock).
fn load_current_for_write(
    c: &mut AnyConnection,
    rt: ResourceType,
    id: &str,
) -> Result<Option<Current>, diesel::result::Error> {
    if let AnyConnection::Postgresql(pg) = c {
        diesel::sql_query("SELECT 1 FROM resources WHERE res_type = $1 AND res_id = $2 FOR UPDATE")
            .bind::<diesel::sql_types::Text, _>(rt.as_str())
            .bind::<diesel::sql_types::Text, _>(id)
            .execute(pg)?;
    }
    load_current(c, rt, id)
}

fn load_current(c: &mut AnyConnection, rt: ResourceType, id: &str) -> Result<Option<Current>, diesel::result::Error> {
    resources::table
        .filter(resources::res_type.eq(rt.as_str()))
        .filter(resources::res_id.eq(id))
        .select((
            resources::version_id,
            resources::last_updated,
            resources::deleted,
            resources::body,
        ))
        .first::<Current>(c)
        .optional()
}

/// Moves the current row from `from_version` to `to_version`, only if no one else moved it first.
#[allow(clippy::too_many_arguments)]
fn swap_current(
    c: &mut AnyConnection,
    rt: ResourceType,
    id: &str,
    from_version: i64,
    to_version: i64,
    last_updated: i64,
    body: Option<&String>,
    if_match: Option<i64>,
) -> Result<(), Abort> {
    let changed = diesel::update(
        resources::table
            .filter(resources::res_type.eq(rt.as_str()))
            .filter(resources::res_id.eq(id))
            .filter(resources::version_id.eq(from_version)),
    )
    .set((
        resources::version_id.eq(to_version),
        resources::last_updated.eq(last_updated),
        resources::deleted.eq(body.is_none()),
        resources::body.eq(body),
    ))
    .execute(c)?;
    match (changed, if_match) {
        (1, _) => Ok(()),
        // Someone else wrote a version after we read: the version the client matched is stale.
        (_, Some(v)) => {
            Err(Error::PreconditionFailed(format!("version {v} of {rt}/{id} is no longer the current one")).into())
        }
        (_, None) => Err(Abort::Retry),
    }
}

fn insert_version(c: &mut AnyConnection, v: &Version) -> Result<(), Abort> {
    diesel::insert_into(resource_versions::table)
        .values((
            resource_versions::res_type.eq(&v.res_type),
            resource_versions::res_id.eq(&v.res_id),
            resource_versions::version_id.eq(v.version_id),
            resource_versions::last_updated.eq(v.last_updated),
            resource_versions::method.eq(&v.method),
            resource_versions::body.eq(&v.body),
        ))
        .execute(c)?;
    Ok(())
}

/// Every relative reference to a hosted type must name a resource that exists and is not deleted.
/// One query per referenced type.
fn check_references(c: &mut AnyConnection, resource: &Value, rt: ResourceType, own_id: &str) -> Result<(), Abort> {
    let refs = local_references(resource);
    let mut by_type: std::collections::BTreeMap<ResourceType, Vec<String>> = std::collections::BTreeMap::new();
    for (t, id) in refs {
        if !(t == rt && id == own_id) {
            by_type.entry(t).or_default().push(id);
        }
    }
    let mut missing = Vec::new();
    for (t, ids) in by_type {
        let found: Vec<String> = schema::resources::table
            .filter(schema::resources::res_type.eq(t.as_str()))
            .filter(schema::resources::res_id.eq_any(&ids))
            .filter(schema::resources::deleted.eq(false))
            .select(schema::resources::res_id)
            .load(c)?;
        missing.extend(
            ids.iter()
                .filter(|id| !found.contains(id))
                .map(|id| format!("{t}/{id}")),
        );
    }
    if !missing.is_empty() {
        return Err(Error::Unprocessable(format!(
            "the resource refers to {} which {} not exist on this server",
            missing.join(", "),
            if missing.len() == 1 { "does" } else { "do" }
        ))
        .into());
    }
    Ok(())
}

/// The resource as stored: server-kept id, meta.versionId and meta.lastUpdated, in FHIR element order.
fn stamp(resource: &Value, id: &str, version_id: i64, last_updated: i64) -> String {
    let mut out = Map::new();
    let empty = Map::new();
    let fields = resource.as_object().unwrap_or(&empty);
    out.insert(
        "resourceType".into(),
        fields.get("resourceType").cloned().unwrap_or(Value::Null),
    );
    out.insert("id".into(), Value::String(id.to_string()));
    let mut meta = fields
        .get("meta")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    meta.shift_remove("versionId");
    meta.shift_remove("lastUpdated");
    let mut new_meta = Map::new();
    new_meta.insert("versionId".into(), Value::String(version_id.to_string()));
    new_meta.insert("lastUpdated".into(), Value::String(dates::format_instant(last_updated)));
    new_meta.extend(meta);
    out.insert("meta".into(), Value::Object(new_meta));
    for (k, v) in fields {
        if !matches!(k.as_str(), "resourceType" | "id" | "meta") {
            out.insert(k.clone(), v.clone());
        }
    }
    Value::Object(out).to_string()
}

fn clear_index(c: &mut AnyConnection, rt: ResourceType, id: &str) -> Result<(), diesel::result::Error> {
    macro_rules! clear {
        ($table:ident) => {
            diesel::delete(
                $table::table
                    .filter($table::res_type.eq(rt.as_str()))
                    .filter($table::res_id.eq(id)),
            )
            .execute(c)?;
        };
    }
    clear!(idx_token);
    clear!(idx_string);
    clear!(idx_date);
    clear!(idx_reference);
    clear!(idx_uri);
    clear!(idx_number);
    clear!(idx_composite);
    clear!(idx_position);
    Ok(())
}

fn write_index(
    c: &mut AnyConnection,
    rt: ResourceType,
    id: &str,
    e: &index::Entries,
) -> Result<(), diesel::result::Error> {
    let t = rt.as_str();
    for v in &e.tokens {
        diesel::insert_into(idx_token::table)
            .values((
                idx_token::res_type.eq(t),
                idx_token::res_id.eq(id),
                idx_token::param.eq(&v.param),
                idx_token::system.eq(&v.system),
                idx_token::code.eq(&v.code),
                idx_token::display.eq(&v.display),
            ))
            .execute(c)?;
    }
    for v in &e.strings {
        diesel::insert_into(idx_string::table)
            .values((
                idx_string::res_type.eq(t),
                idx_string::res_id.eq(id),
                idx_string::param.eq(&v.param),
                idx_string::norm.eq(&v.norm),
                idx_string::exact.eq(&v.exact),
            ))
            .execute(c)?;
    }
    for v in &e.dates {
        diesel::insert_into(idx_date::table)
            .values((
                idx_date::res_type.eq(t),
                idx_date::res_id.eq(id),
                idx_date::param.eq(&v.param),
                idx_date::low.eq(v.low),
                idx_date::high.eq(v.high),
            ))
            .execute(c)?;
    }
    for v in &e.references {
        diesel::insert_into(idx_reference::table)
            .values((
                idx_reference::res_type.eq(t),
                idx_reference::res_id.eq(id),
                idx_reference::param.eq(&v.param),
                idx_reference::target_type.eq(&v.target_type),
                idx_reference::target_id.eq(&v.target_id),
                idx_reference::url.eq(&v.url),
            ))
            .execute(c)?;
    }
    for v in &e.uris {
        diesel::insert_into(idx_uri::table)
            .values((
                idx_uri::res_type.eq(t),
                idx_uri::res_id.eq(id),
                idx_uri::param.eq(&v.param),
                idx_uri::uri.eq(&v.uri),
            ))
            .execute(c)?;
    }
    for v in &e.numbers {
        diesel::insert_into(idx_number::table)
            .values((
                idx_number::res_type.eq(t),
                idx_number::res_id.eq(id),
                idx_number::param.eq(&v.param),
                idx_number::value.eq(v.value),
                idx_number::system.eq(&v.system),
                idx_number::code.eq(&v.code),
            ))
            .execute(c)?;
    }
    for v in &e.composites {
        diesel::insert_into(idx_composite::table)
            .values((
                idx_composite::res_type.eq(t),
                idx_composite::res_id.eq(id),
                idx_composite::param.eq(&v.param),
                idx_composite::system1.eq(&v.system1),
                idx_composite::code1.eq(&v.code1),
                idx_composite::system2.eq(&v.system2),
                idx_composite::code2.eq(&v.code2),
            ))
            .execute(c)?;
    }
    for v in &e.positions {
        diesel::insert_into(idx_position::table)
            .values((
                idx_position::res_type.eq(t),
                idx_position::res_id.eq(id),
                idx_position::param.eq(&v.param),
                idx_position::latitude.eq(v.latitude),
                idx_position::longitude.eq(v.longitude),
                idx_position::x.eq(v.xyz[0]),
                idx_position::y.eq(v.xyz[1]),
                idx_position::z.eq(v.xyz[2]),
            ))
            .execute(c)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
