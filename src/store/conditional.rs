//! Conditional interactions (http.html#cond-update and friends): which resource a write is for
//! when the client names it by search criteria, resolved on the open write transaction.
//!
//! Two conditional writes with the same criteria must not both decide "no match" and both create:
//! on PostgreSQL each takes a transaction-scoped advisory lock keyed by its criteria before it
//! searches, so the second waits for the first to commit and then sees what it created; on SQLite
//! the single writer already serializes them.

use std::sync::Arc;

use serde_json::Value;
use sha2::Digest;

use super::search::{first_page_sql, load, IdRow};
use super::{Abort, AnyConnection};
use crate::error::Error;
use crate::resources::ResourceType;
use crate::search::plan::{Bind, Planned};

/// Which resource an update, patch or delete is for.
#[derive(Debug, Clone)]
pub enum Target {
    Id(String),
    /// The one resource of the type that these criteria match (`PUT Patient?identifier=…`).
    Search(Planned),
}

/// A JSON Patch (or any change) to apply to the current version, checked by the caller's code
/// (the api layer validates the result against the R4 model).
pub type PatchFn = dyn Fn(&Value) -> Result<Value, Error> + Send + Sync;

#[derive(Clone)]
pub struct Patcher(pub Arc<PatchFn>);

impl std::fmt::Debug for Patcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Patcher")
    }
}

/// The advisory-lock key of a set of criteria: the same criteria give the same planned SQL and values.
fn lock_key(planned: &Planned) -> i64 {
    let mut hasher = sha2::Sha256::new();
    hasher.update(planned.from_where.text.as_bytes());
    for b in &planned.from_where.binds {
        match b {
            Bind::Text(t) => hasher.update(t.as_bytes()),
            Bind::BigInt(i) => hasher.update(i.to_le_bytes()),
            Bind::Double(d) => hasher.update(d.to_le_bytes()),
        }
        hasher.update([0u8]);
    }
    let digest = hasher.finalize();
    let mut key = [0u8; 8];
    key.copy_from_slice(&digest[..8]);
    i64::from_le_bytes(key)
}

/// The ids (at most two: enough to tell none, one and many) that `planned` matches, after taking
/// the criteria's lock.
pub(super) fn matches(c: &mut AnyConnection, planned: &Planned) -> Result<Vec<String>, Abort> {
    if let AnyConnection::Postgresql(pg) = c {
        use diesel::RunQueryDsl;
        diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
            .bind::<diesel::sql_types::BigInt, _>(lock_key(planned))
            .execute(pg)?;
    }
    let rows: Vec<IdRow> = load(c, &first_page_sql(planned, 2))?;
    Ok(rows.into_iter().map(|r| r.res_id).collect())
}

/// The one id that `target` names: None when search criteria match nothing; 412 when they match
/// more than one resource.
pub(super) fn resolve(c: &mut AnyConnection, rt: ResourceType, target: &Target) -> Result<Option<String>, Abort> {
    match target {
        Target::Id(id) => Ok(Some(id.clone())),
        Target::Search(planned) => {
            let mut ids = matches(c, planned)?;
            match ids.len() {
                0 => Ok(None),
                1 => Ok(ids.pop()),
                _ => Err(Error::PreconditionFailed(format!(
                    "the criteria match more than one {rt}; a conditional interaction needs them to match one"
                ))
                .into()),
            }
        }
    }
}
