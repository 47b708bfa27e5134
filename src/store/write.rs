//! Writing one version on an open write transaction: create, update and delete, each with its
//! version row, its search-index rows and the per-type rules (store::hooks), all in that
//! transaction. What runs the writes (resolving targets, Bundles) is store::executor.

use diesel::prelude::*;
use serde_json::{Map, Value};

use super::hooks::{self, Change, Written};
use super::index_rows::{clear_index, write_index};
use super::reads::{load_current_for_write, may_see};
use super::schema::{resource_versions, resources};
use super::{schema, Abort, AnyConnection, UpdateOutcome, Version, WriteAccess};
use crate::error::Error;
use crate::resources::compartment::Reach;
use crate::resources::{dates, index, local_references, ResourceType};
use crate::scheduling::Rules;

/// A write's transaction: its connection, the rules, and its own time — one instant for every
/// version and rule of the write, read once when the transaction began (see Store::write).
pub(super) struct Tx<'a> {
    pub(super) c: &'a mut AnyConnection,
    pub(super) rules: &'a Rules,
    pub(super) now: i64,
}

/// The resource as it is stored: absolute references to this server made relative.
fn localized(resource: &Value, access: &WriteAccess) -> Value {
    let mut resource = resource.clone();
    if let Some(base) = &access.base {
        crate::resources::localize_references(&mut resource, base);
    }
    resource
}

/// Creates `rt/id` (the id chosen by the caller) on an open write transaction. `check_refs` is false
/// inside a transaction Bundle, whose references are checked once all its entries are written.
pub(super) fn create_in(
    tx: &mut Tx,
    rt: ResourceType,
    resource: &Value,
    id: &str,
    check_refs: bool,
    access: &WriteAccess,
) -> Result<Version, Abort> {
    let mut resource = localized(resource, access);
    access.check(rt, id, &resource)?;
    if check_refs {
        check_references(tx.c, &resource, rt, id, Some(&access.reach), None)?;
    }
    let change = Change {
        rt,
        id,
        previous: None,
        access,
    };
    hooks::before_write(tx, &change, &mut resource)?;
    insert_first(tx, rt, id, &resource, "POST")
}

/// Stores version 1 of `rt/id` (a create, or an update that creates), with its index rows and the
/// after-write rules. A concurrent creator of the same id makes the insert fail; a retry then finds
/// the resource.
fn insert_first(tx: &mut Tx, rt: ResourceType, id: &str, resource: &Value, method: &str) -> Result<Version, Abort> {
    let entries = index::extract(rt, resource);
    let body = stamp(resource, id, 1, tx.now);
    diesel::insert_into(resources::table)
        .values((
            resources::res_type.eq(rt.as_str()),
            resources::res_id.eq(id),
            resources::version_id.eq(1i64),
            resources::last_updated.eq(tx.now),
            resources::deleted.eq(false),
            resources::body.eq(Some(&body)),
        ))
        .execute(tx.c)?;
    let version = Version {
        res_type: rt.as_str().into(),
        res_id: id.to_string(),
        version_id: 1,
        last_updated: tx.now,
        method: method.into(),
        body: Some(body),
    };
    insert_version(tx.c, &version)?;
    write_index(tx.c, rt, id, &entries)?;
    hooks::after_write(
        tx,
        &Written {
            rt,
            id,
            version_id: 1,
            resource,
        },
    )?;
    Ok(version)
}

/// How an update arrived: the interaction that history records for it (R4 HTTPVerb: `PUT`, or
/// `PATCH` for a patch), and whether its references are checked here (a Bundle checks them once,
/// after every entry).
#[derive(Clone, Copy)]
pub(super) struct Via {
    pub method: &'static str,
    pub check_refs: bool,
}

/// Updates (or creates with the client's id) `rt/id` on an open write transaction.
pub(super) fn update_in(
    tx: &mut Tx,
    rt: ResourceType,
    id: &str,
    resource: &Value,
    if_match: Option<i64>,
    via: Via,
    access: &WriteAccess,
) -> Result<UpdateOutcome, Abort> {
    let mut resource = localized(resource, access);
    access.check(rt, id, &resource)?;
    let current = load_current_for_write(tx.c, rt, id)?;
    let no_create = || {
        Error::Forbidden(format!(
            "{rt}/{id} does not exist, and the token's scopes do not grant create on {rt}"
        ))
    };
    // A record the caller may not see is answered as one that does not exist, as far as that can
    // be: without create, the same refusal; with create, the id is taken (the one thing a client
    // choosing its own ids in a shared id space learns), but nothing of what holds it.
    if let Some(cur) = &current {
        if !may_see(tx.c, rt, id, cur, &access.reach)? {
            if !access.may_create {
                return Err(no_create().into());
            }
            return Err(Error::Forbidden(format!(
                "{rt}/{id} is outside the compartment this token may write; choose another id"
            ))
            .into());
        }
    }
    let previous: Option<Value> = current
        .as_ref()
        .filter(|cur| !cur.deleted)
        .and_then(|cur| cur.body.as_deref())
        .and_then(|b| serde_json::from_str(b).ok());
    if let Some(previous) = &previous {
        access.check(rt, id, previous)?;
        access.check_whole(rt, id, previous)?;
    } else if !access.may_create {
        return Err(no_create().into());
    }
    if via.check_refs {
        check_references(tx.c, &resource, rt, id, Some(&access.reach), previous.as_ref())?;
    }
    let change = Change {
        rt,
        id,
        previous: previous.as_ref(),
        access,
    };
    hooks::before_write(tx, &change, &mut resource)?;
    let Some(current) = current else {
        if let Some(v) = if_match {
            return Err(
                Error::PreconditionFailed(format!("{rt}/{id} does not exist, so version {v} does not match")).into(),
            );
        }
        let version = insert_first(tx, rt, id, &resource, via.method)?;
        return Ok(UpdateOutcome { version, created: true });
    };
    matches_version(rt, id, if_match, current.version_id)?;
    let entries = index::extract(rt, &resource);
    let version_id = current.version_id + 1;
    let last_updated = tx.now.max(current.last_updated + 1);
    let version = Version {
        res_type: rt.as_str().into(),
        res_id: id.into(),
        version_id,
        last_updated,
        method: via.method.into(),
        body: Some(stamp(&resource, id, version_id, last_updated)),
    };
    swap_current(tx.c, current.version_id, &version, if_match)?;
    insert_version(tx.c, &version)?;
    clear_index(tx.c, rt, id)?;
    write_index(tx.c, rt, id, &entries)?;
    hooks::after_write(
        tx,
        &Written {
            rt,
            id,
            version_id,
            resource: &resource,
        },
    )?;
    Ok(UpdateOutcome {
        version,
        created: current.deleted,
    })
}

/// Deletes `rt/id` logically on an open write transaction; None when there was nothing to delete.
pub(super) fn delete_in(
    tx: &mut Tx,
    rt: ResourceType,
    id: &str,
    if_match: Option<i64>,
    access: &WriteAccess,
) -> Result<Option<Version>, Abort> {
    // http.html#delete: deleting what does not exist succeeds; a record the caller may not see is
    // answered the same way (and left alone), so that a DELETE is no probe. With If-Match, neither
    // has the version asked for: 412, as an update would answer.
    let current = match load_current_for_write(tx.c, rt, id)? {
        Some(cur) if !cur.deleted && may_see(tx.c, rt, id, &cur, &access.reach)? => cur,
        _ => {
            return match if_match {
                Some(v) => Err(Error::PreconditionFailed(format!(
                    "{rt}/{id} does not exist, so version {v} does not match"
                ))
                .into()),
                None => Ok(None),
            }
        }
    };
    matches_version(rt, id, if_match, current.version_id)?;
    let body: Value = current
        .body
        .as_deref()
        .and_then(|b| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    if access.reach.patients.is_some() {
        access.check(rt, id, &body)?;
        access.check_whole(rt, id, &body)?;
    }
    let version = Version {
        res_type: rt.as_str().into(),
        res_id: id.into(),
        version_id: current.version_id + 1,
        last_updated: tx.now.max(current.last_updated + 1),
        method: "DELETE".into(),
        body: None,
    };
    swap_current(tx.c, current.version_id, &version, None)?;
    let change = Change {
        rt,
        id,
        previous: Some(&body),
        access,
    };
    hooks::on_delete(tx, &change)?;
    insert_version(tx.c, &version)?;
    clear_index(tx.c, rt, id)?;
    Ok(Some(version))
}

/// If-Match (http.html#concurrency): the version asked for must be the current one, else 412.
pub(super) fn matches_version(rt: ResourceType, id: &str, if_match: Option<i64>, current: i64) -> Result<(), Abort> {
    match if_match {
        Some(v) if v != current => Err(Error::PreconditionFailed(format!(
            "version {v} of {rt}/{id} is not the current one (version {current})"
        ))
        .into()),
        _ => Ok(()),
    }
}

/// Moves the current row from `from_version` to `version` (its body, or none for a deletion), only
/// if no one else moved it first.
fn swap_current(
    c: &mut AnyConnection,
    from_version: i64,
    version: &Version,
    if_match: Option<i64>,
) -> Result<(), Abort> {
    let (rt, id) = (&version.res_type, &version.res_id);
    let changed = diesel::update(
        resources::table
            .filter(resources::res_type.eq(rt))
            .filter(resources::res_id.eq(id))
            .filter(resources::version_id.eq(from_version)),
    )
    .set((
        resources::version_id.eq(version.version_id),
        resources::last_updated.eq(version.last_updated),
        resources::deleted.eq(version.body.is_none()),
        resources::body.eq(&version.body),
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

/// Every relative reference to a hosted type must name a resource that exists and is not deleted
/// and, for a caller limited to Patient/`patient`'s compartment, that it may see: a reference to a
/// record outside the compartment is refused exactly like one to a missing record (else a create
/// would tell which ids exist). References the `previous` version already held are the caller's
/// to keep (it may see that version, so they reveal nothing).
pub(super) fn check_references(
    c: &mut AnyConnection,
    resource: &Value,
    rt: ResourceType,
    own_id: &str,
    reach: Option<&Reach>,
    previous: Option<&Value>,
) -> Result<(), Abort> {
    let mut wanted: Vec<(ResourceType, String)> = local_references(resource)
        .into_iter()
        .filter(|(t, id)| !(*t == rt && id == own_id))
        .collect();
    wanted.sort();
    wanted.dedup();
    if wanted.is_empty() {
        return Ok(());
    }
    // Only a reach that limits some type asks for the bodies: a psychotherapy note, or a record
    // outside the writer's compartments, is refused exactly like a missing record.
    let limited = reach.filter(|r| {
        **r != Reach::server()
            && wanted
                .iter()
                .any(|(t, _)| r.limits(*t) || t.as_str() == "DocumentReference")
    });
    let rows = existing_of(c, &wanted, limited.is_some())?;
    let mut found: Vec<(String, String)> = match limited {
        None => rows.into_iter().map(|(t, id, _)| (t, id)).collect(),
        Some(reach) => {
            let mut kept: Vec<(ResourceType, String)> = previous.map(local_references).unwrap_or_default();
            kept.sort();
            rows.into_iter()
                .filter(|(t, id, body)| {
                    let Some(t) = ResourceType::parse(t) else { return false };
                    kept.binary_search(&(t, id.clone())).is_ok()
                        || body
                            .as_deref()
                            .and_then(|b| serde_json::from_str::<Value>(b).ok())
                            .is_some_and(|v| reach.sees(t, id, &v))
                })
                .map(|(t, id, _)| (t, id))
                .collect()
        }
    };
    // Sorted, so each wanted pair is a binary search (a Group's roster can name thousands).
    found.sort_unstable();
    let missing: Vec<String> = wanted
        .iter()
        .filter(|(t, id)| {
            found
                .binary_search_by(|(ft, fid)| (ft.as_str(), fid.as_str()).cmp(&(t.as_str(), id.as_str())))
                .is_err()
        })
        .map(|(t, id)| format!("{t}/{id}"))
        .collect();
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

/// Which of the `wanted` resources exist and are not deleted: (type, id, and the body when
/// `bodies`). PostgreSQL: one statement for all of them, the types and the ids each as an array (a
/// superset of the pairs, which the primary key answers; `= ANY($1)`, a fixed text that diesel keeps
/// prepared), the pairs matched by the caller. SQLite: one primary-key lookup per pair, a statement
/// of a fixed text that diesel keeps prepared, where an `IN (?, ?, …)` list changes its text with
/// its length and was compiled again at every write.
fn existing_of(
    c: &mut AnyConnection,
    wanted: &[(ResourceType, String)],
    bodies: bool,
) -> Result<Vec<(String, String, Option<String>)>, Abort> {
    use schema::resources as r;
    if let AnyConnection::Postgresql(pg) = c {
        let mut types: Vec<&str> = wanted.iter().map(|(t, _)| t.as_str()).collect();
        types.sort_unstable();
        types.dedup();
        let ids: Vec<&str> = wanted.iter().map(|(_, id)| id.as_str()).collect();
        let existing = r::table
            .filter(r::res_type.eq_any(&types))
            .filter(r::res_id.eq_any(&ids))
            .filter(r::deleted.eq(false));
        return Ok(if bodies {
            existing.select((r::res_type, r::res_id, r::body)).load(pg)?
        } else {
            existing
                .select((r::res_type, r::res_id))
                .load::<(String, String)>(pg)?
                .into_iter()
                .map(|(t, id)| (t, id, None))
                .collect()
        });
    }
    let mut found = Vec::with_capacity(wanted.len());
    for (t, id) in wanted {
        let one = r::table
            .filter(r::res_type.eq(t.as_str()))
            .filter(r::res_id.eq(id))
            .filter(r::deleted.eq(false));
        let row: Option<(String, String, Option<String>)> = if bodies {
            one.select((r::res_type, r::res_id, r::body)).first(c).optional()?
        } else {
            one.select((r::res_type, r::res_id))
                .first::<(String, String)>(c)
                .optional()?
                .map(|(t, id)| (t, id, None))
        };
        found.extend(row);
    }
    Ok(found)
}

/// The resource as stored: server-kept id, meta.versionId and meta.lastUpdated, in FHIR element order.
pub(super) fn stamp(resource: &Value, id: &str, version_id: i64, last_updated: i64) -> String {
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
