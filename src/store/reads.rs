//! Reading what is stored, on a connection the caller holds (a write's transaction, or a read's):
//! the current row, a version, and whether a reader of limited reach (compartment::Reach: a
//! `patient/` token, a practitioner's assigned clients, psychotherapy notes) may learn that either
//! exists.

use diesel::prelude::*;
use serde_json::Value;

use super::schema::{idx_reference, resource_versions, resources};
use super::{AnyConnection, Version};
use crate::error::Error;
use crate::resources::compartment::{Notes, Reach};
use crate::resources::ResourceType;

/// A hosted type by name, for the store's own writes (a name that is not hosted is our bug).
pub(super) fn hosted(name: &str) -> Result<ResourceType, Error> {
    ResourceType::parse(name).ok_or_else(|| Error::Internal(format!("{name} is not hosted")))
}

/// Ids per statement of [`current_bodies`]: within SQLite's limit on bound values.
const IDS_PER_READ: usize = 500;

/// The ids of the `rt` resources whose `param` is a local reference to `target_type`/`target_id`:
/// one probe of the reference index by target (so that no statistics can turn it into a scan).
pub(super) fn referring_ids(
    c: &mut AnyConnection,
    rt: &str,
    param: &str,
    target_type: &str,
    target_id: &str,
) -> Result<Vec<String>, diesel::result::Error> {
    idx_reference::table
        .filter(idx_reference::res_type.eq(rt))
        .filter(idx_reference::param.eq(param))
        .filter(idx_reference::target_id.eq(target_id))
        .filter(idx_reference::target_type.eq(target_type))
        .filter(idx_reference::url.is_null())
        .select(idx_reference::res_id)
        .load(c)
}

/// The current, not deleted `rt` resources of these ids as JSON (id, body), in id order, read by
/// key in chunks; none when `ids` is empty.
pub(super) fn current_bodies(
    c: &mut AnyConnection,
    rt: &str,
    ids: &[String],
) -> Result<Vec<(String, Value)>, diesel::result::Error> {
    let mut out = Vec::new();
    for chunk in ids.chunks(IDS_PER_READ) {
        let rows: Vec<(String, Option<String>)> = resources::table
            .filter(resources::res_type.eq(rt))
            .filter(resources::res_id.eq_any(chunk))
            .filter(resources::deleted.eq(false))
            .order(resources::res_id)
            .select((resources::res_id, resources::body))
            .load(c)?;
        out.extend(rows.into_iter().filter_map(|(id, body)| {
            let body = serde_json::from_str::<Value>(body.as_deref()?).ok()?;
            Some((id, body))
        }));
    }
    Ok(out)
}

#[derive(Queryable, Clone)]
pub(super) struct Current {
    pub(super) version_id: i64,
    pub(super) last_updated: i64,
    pub(super) deleted: bool,
    pub(super) body: Option<String>,
}

pub(super) fn read_in(conn: &mut AnyConnection, rt: ResourceType, id: &str) -> Result<Version, Error> {
    read_visible_in(conn, rt, id, &Reach::server())
}

/// The current version of `rt/id` for a reader of `reach`.
/// A resource the reader may not see answers exactly as one that does not exist, deleted or not,
/// so that a probe learns nothing (see [`may_see`]).
pub(super) fn read_visible_in(
    conn: &mut AnyConnection,
    rt: ResourceType,
    id: &str,
    reach: &Reach,
) -> Result<Version, Error> {
    let current = load_current(conn, rt, id)?.ok_or_else(|| not_found(rt, id))?;
    visible_current(conn, rt, id, current, reach)
}

/// [`read_visible_in`] on the current row of `rt/id`, already loaded.
pub(super) fn visible_current(
    conn: &mut AnyConnection,
    rt: ResourceType,
    id: &str,
    current: Current,
    reach: &Reach,
) -> Result<Version, Error> {
    if !may_see(conn, rt, id, &current, reach)? {
        return Err(not_found(rt, id));
    }
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

/// The body of the last version of `rt/id` before `version_id` that has one (the version a
/// deletion ended), if any.
fn body_before(
    c: &mut AnyConnection,
    rt: ResourceType,
    id: &str,
    version_id: i64,
) -> Result<Option<String>, diesel::result::Error> {
    Ok(resource_versions::table
        .filter(resource_versions::res_type.eq(rt.as_str()))
        .filter(resource_versions::res_id.eq(id))
        .filter(resource_versions::version_id.lt(version_id))
        .filter(resource_versions::body.is_not_null())
        .order(resource_versions::version_id.desc())
        .select(resource_versions::body)
        .first::<Option<String>>(c)
        .optional()?
        .flatten())
}

/// Whether a reader of `reach` may learn that this version of `rt/id` exists: the reach holds its
/// body or, for a deletion, the body it deleted. Anything else must be answered exactly like a
/// resource that does not exist.
fn version_visible(
    c: &mut AnyConnection,
    rt: ResourceType,
    id: &str,
    version_id: i64,
    body: Option<&str>,
    reach: &Reach,
) -> Result<bool, diesel::result::Error> {
    if !reach.limits(rt) && (reach == &Reach::server() || rt.as_str() != "DocumentReference") {
        return Ok(true);
    }
    let body = match body {
        Some(b) => Some(b.to_string()),
        None => body_before(c, rt, id, version_id)?,
    };
    Ok(body
        .and_then(|b| serde_json::from_str::<Value>(&b).ok())
        .is_some_and(|v| reach.sees(rt, id, &v)))
}

/// [`version_visible`] for the current row of `rt/id`: what every read, patch and delete by a
/// caller of limited reach decides first, before anything else is looked at or applied.
pub(super) fn may_see(
    c: &mut AnyConnection,
    rt: ResourceType,
    id: &str,
    current: &Current,
    reach: &Reach,
) -> Result<bool, diesel::result::Error> {
    let body = current.body.as_deref().filter(|_| !current.deleted);
    version_visible(c, rt, id, current.version_id, body, reach)
}

type VersionColumns = (
    resource_versions::res_type,
    resource_versions::res_id,
    resource_versions::version_id,
    resource_versions::last_updated,
    resource_versions::method,
    resource_versions::body,
);

/// One version (http.html#vread). A deletion version answers Gone.
pub(super) fn vread_in(c: &mut AnyConnection, rt: ResourceType, id: &str, version_id: i64) -> Result<Version, Error> {
    vread_visible_in(c, rt, id, version_id, &Reach::server())
}

/// One version for a reader of `reach`: a version the reader may not see answers exactly as a
/// resource that does not exist ("has no version n").
pub(super) fn vread_visible_in(
    c: &mut AnyConnection,
    rt: ResourceType,
    id: &str,
    version_id: i64,
    reach: &Reach,
) -> Result<Version, Error> {
    let unknown = || Error::NotFound(format!("{rt}/{id} has no version {version_id}"));
    let found: Option<Version> = resource_versions::table
        .filter(resource_versions::res_type.eq(rt.as_str()))
        .filter(resource_versions::res_id.eq(id))
        .filter(resource_versions::version_id.eq(version_id))
        .select(version_columns())
        .get_result(c)
        .optional()?;
    let Some(v) = found else { return Err(unknown()) };
    if !version_visible(c, rt, id, version_id, v.body.as_deref(), reach)? {
        return Err(unknown());
    }
    // An earlier version of what is now a psychotherapy note (labelled later) is as hidden as the
    // note: the reader may not learn it exists.
    if rt.as_str() == "DocumentReference" && reach.notes != Notes::All {
        let current = load_current(c, rt, id)?;
        if !current.is_some_and(|cur| may_see(c, rt, id, &cur, reach).unwrap_or(false)) {
            return Err(unknown());
        }
    }
    match v.body {
        Some(_) => Ok(v),
        None => Err(Error::Gone(format!(
            "version {} of {rt}/{id} is a deletion",
            v.version_id
        ))),
    }
}

type CurrentColumns = (
    resources::version_id,
    resources::last_updated,
    resources::deleted,
    resources::body,
);

/// The columns a [`Current`] is loaded from.
pub(super) fn current_columns() -> CurrentColumns {
    (
        resources::version_id,
        resources::last_updated,
        resources::deleted,
        resources::body,
    )
}

pub(super) fn version_columns() -> VersionColumns {
    (
        resource_versions::res_type,
        resource_versions::res_id,
        resource_versions::version_id,
        resource_versions::last_updated,
        resource_versions::method,
        resource_versions::body,
    )
}

pub(super) fn not_found(rt: ResourceType, id: &str) -> Error {
    Error::NotFound(format!("{rt}/{id} is not known"))
}

/// Reads the current row for a write. On PostgreSQL the row is locked first, so concurrent writers of
/// one resource queue behind each other instead of failing the compare-and-swap (SQLite writers are
/// already serialized by its write lock).
pub(super) fn load_current_for_write(
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

pub(super) fn load_current(
    c: &mut AnyConnection,
    rt: ResourceType,
    id: &str,
) -> Result<Option<Current>, diesel::result::Error> {
    resources::table
        .filter(resources::res_type.eq(rt.as_str()))
        .filter(resources::res_id.eq(id))
        .select(current_columns())
        .get_result::<Current>(c)
        .optional()
}

impl super::Store {
    /// Of these DocumentReference ids, those whose record a reader of `reach` may not see as it
    /// stands now (a psychotherapy note of someone else, or one deleted): every version of such a
    /// record is left out of that reader's history. One lookup per id, for a page of history.
    pub fn unseen_notes(&self, ids: &[String], reach: &Reach) -> Result<std::collections::HashSet<String>, Error> {
        let mut hidden = std::collections::HashSet::new();
        if reach.notes == Notes::All || ids.is_empty() {
            return Ok(hidden);
        }
        let rt = ResourceType::parse("DocumentReference").ok_or_else(|| Error::Internal("DocumentReference".into()))?;
        let mut conn = self.pool.get()?;
        for id in ids {
            let seen = match load_current(&mut conn, rt, id)? {
                Some(cur) => may_see(&mut conn, rt, id, &cur, reach)?,
                None => true,
            };
            if !seen {
                hidden.insert(id.clone());
            }
        }
        Ok(hidden)
    }
}
