//! The operation executor. Every write runs here, as a list of operations in one database
//! transaction: a single create, update, patch or delete (plain or conditional), an operation that
//! writes (`$book-session`), a server-side write — a list of one; a transaction Bundle — its
//! entries in processing order (see api::bundle for the HTTP side). One executor and one
//! transaction context (store::write::Tx), so conditional resolution, `urn:uuid` references, access
//! checks and the per-type rules (store::hooks) behave the same everywhere.

use std::collections::HashMap;

use serde_json::Value;

use super::conditional::{matches, resolve, Patcher, Target};
use super::reads::{
    load_current, load_current_for_write, may_see, not_found, read_in, read_visible_in, vread_visible_in,
};
use super::search::{first_page_sql, load, load_current_many, IdRow};
use super::write::{check_references, create_in, delete_in, matches_version, update_in, Tx, Via};
use super::{Abort, AnyConnection, Store, UpdateOutcome, Version, WriteAccess};
use crate::error::Error;
use crate::resources::compartment::Reach;
use crate::resources::{rewrite_references, ResourceType};
use crate::search::plan::Planned;

/// One operation; `label` names it in errors (the Bundle entry).
#[derive(Debug, Clone)]
pub enum Op {
    /// Create with the server-chosen `id`, unless `if_none_exist` criteria match a resource.
    Create {
        label: String,
        rt: ResourceType,
        id: String,
        resource: Value,
        access: WriteAccess,
        if_none_exist: Option<Planned>,
        /// The entry's `urn:uuid:` fullUrl, which references in other entries may use.
        full_url: Option<String>,
    },
    Update {
        label: String,
        rt: ResourceType,
        target: Target,
        resource: Value,
        if_match: Option<i64>,
        access: WriteAccess,
        full_url: Option<String>,
    },
    Patch {
        label: String,
        rt: ResourceType,
        target: Target,
        patcher: Patcher,
        if_match: Option<i64>,
        access: WriteAccess,
    },
    Delete {
        label: String,
        rt: ResourceType,
        target: Target,
        /// Only if this is the current version (http.html#concurrency), else 412.
        if_match: Option<i64>,
        access: WriteAccess,
    },
    Read {
        label: String,
        rt: ResourceType,
        id: String,
        /// A version (vread), or None for the current one.
        version: Option<i64>,
        /// What the reader may see.
        reach: Reach,
    },
    /// A search inside a Bundle (`GET Patient?identifier=…`): its first page.
    Search {
        label: String,
        planned: Planned,
        count: i64,
    },
}

#[derive(Debug)]
pub enum OpResult {
    Created(Version),
    /// A conditional create whose criteria matched this resource: nothing was written.
    Existing(Version),
    Updated(UpdateOutcome),
    /// The deletion version, or None when there was nothing to delete.
    Deleted(Option<Version>),
    Read(Version),
    Found {
        matches: Vec<Version>,
        total: i64,
    },
}

/// The version, if a reader of `reach` may see it; else NotFound, as if it did not exist.
pub fn visible_to(reach: &Reach, rt: ResourceType, v: Version) -> Result<Version, Error> {
    let body: Value = v
        .body
        .as_deref()
        .and_then(|b| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    if reach.sees(rt, &v.res_id, &body) {
        Ok(v)
    } else {
        Err(not_found(rt, &v.res_id))
    }
}

/// What an operation resolved to before anything is written.
enum Resolved {
    /// Create this id.
    New(String),
    /// A conditional create matched this existing resource.
    Existing(String),
    /// Write to this id.
    At(String),
    /// A conditional delete that matched nothing.
    Nothing,
    /// Reads and searches resolve nothing.
    Unused,
}

impl Store {
    /// The current version of `rt/id` for a reader of `reach`
    /// limit). What that reader may not see answers exactly as what does not exist, deleted or not.
    pub fn read_visible(&self, rt: ResourceType, id: &str, reach: &Reach) -> Result<Version, Error> {
        let mut conn = self.pool.get()?;
        read_visible_in(&mut conn, rt, id, reach)
    }

    /// [`Store::read_visible`], answered with the reads that arrive at the same time (see
    /// gather.rs). When the gathering threads are gone, `id` and `reach` come back for the caller
    /// to read on its own.
    pub fn read_gathered(
        &self,
        rt: ResourceType,
        id: String,
        reach: Reach,
    ) -> Result<impl std::future::Future<Output = Result<Version, Error>>, (String, Reach)> {
        let answered = self.gatherer.ask(rt, id, reach)?;
        Ok(async move {
            answered
                .await
                .unwrap_or_else(|_| Err(Error::Internal("the read was not answered".into())))
        })
    }

    /// One version, for a reader of `reach` (see [`Store::read_visible`]).
    pub fn vread_visible(&self, rt: ResourceType, id: &str, version_id: i64, reach: &Reach) -> Result<Version, Error> {
        let mut conn = self.pool.get()?;
        vread_visible_in(&mut conn, rt, id, version_id, reach)
    }

    /// Runs one operation in its own transaction.
    pub fn run(&self, op: Op) -> Result<OpResult, Error> {
        let mut results = self.transaction(std::slice::from_ref(&op))?;
        results
            .pop()
            .ok_or_else(|| Error::Internal("an operation gave no result".into()))
    }

    /// Creates a resource with a server-assigned id and full access (server-side writes, operations).
    pub fn create(&self, rt: ResourceType, resource: Value, access: &WriteAccess) -> Result<Version, Error> {
        let op = Op::Create {
            label: format!("create {rt}"),
            rt,
            id: crate::resources::new_id(),
            resource,
            access: access.clone(),
            if_none_exist: None,
            full_url: None,
        };
        match self.run(op)? {
            OpResult::Created(v) => Ok(v),
            other => Err(Error::Internal(format!("create answered {other:?}"))),
        }
    }

    /// Runs operations (already in processing order) in one database transaction: all are written,
    /// or none. Conditional targets are resolved first, then `urn:uuid:` references are rewritten to
    /// the ids found or assigned, then the operations run, then references are checked (so entries
    /// may refer to each other). A failure names its operation (`label`).
    pub fn transaction(&self, ops: &[Op]) -> Result<Vec<OpResult>, Error> {
        self.transaction_with(ops, &[])
    }

    /// [`Store::transaction`], with the conditional references of a transaction Bundle
    /// (`Patient?identifier=…`, http.html#trules) resolved on the same transaction before anything
    /// is written: exactly one match is the reference; none is 400, more than one 412.
    pub fn transaction_with(&self, ops: &[Op], conditional_refs: &[ConditionalRef]) -> Result<Vec<OpResult>, Error> {
        // A single write checks its references before the scheduling rules, as a plain interaction.
        let check_early = ops.len() == 1;
        self.write(|c, now| {
            let mut tx = Tx {
                c,
                rules: &self.rules,
                now,
            };
            let tx = &mut tx;
            let resolved = ops
                .iter()
                .map(|op| resolve_op(tx.c, op).map_err(|a| in_entry(label_of(op), a)))
                .collect::<Result<Vec<_>, _>>()?;
            if ops.len() > 1 {
                one_entry_per_resource(ops, &resolved)?;
            }
            let mut urns = urn_map(ops, &resolved);
            for r in conditional_refs {
                let found = matches(tx.c, &r.planned).map_err(|a| in_entry(&r.label, a))?;
                let id = match found.as_slice() {
                    [id] => id,
                    [] => {
                        return Err(Error::Invalid(format!(
                            "{}: the conditional reference '{}' matches no resource",
                            r.label, r.reference
                        ))
                        .into())
                    }
                    _ => {
                        return Err(Error::PreconditionFailed(format!(
                            "{}: the conditional reference '{}' matches more than one resource",
                            r.label, r.reference
                        ))
                        .into())
                    }
                };
                urns.insert(r.reference.clone(), format!("{}/{id}", r.rt));
            }
            let mut results = Vec::with_capacity(ops.len());
            let mut written: Vec<WrittenEntry> = Vec::new();
            for (op, target) in ops.iter().zip(resolved) {
                let label = label_of(op);
                // A compartment-limited writer keeps the references the version it replaces held.
                let limited = access_of(op).is_some_and(|a| a.reach.patients.is_some());
                let previous = match (op, &target, limited) {
                    (Op::Update { rt, .. } | Op::Patch { rt, .. }, Resolved::At(id), true) if !check_early => {
                        load_current(tx.c, *rt, id)?
                            .filter(|cur| !cur.deleted)
                            .and_then(|cur| cur.body)
                            .and_then(|b| serde_json::from_str::<Value>(&b).ok())
                    }
                    _ => None,
                };
                let result = self
                    .execute(tx, op, target, &urns, check_early)
                    .map_err(|a| in_entry(label, a))?;
                if !check_early {
                    if let (OpResult::Created(v) | OpResult::Updated(UpdateOutcome { version: v, .. }), Some(rt)) =
                        (&result, ResourceType::parse(&result_type(&result)))
                    {
                        // A patch that changed nothing wrote nothing: there is nothing to check.
                        if v.method == NO_OP_PATCH {
                            results.push(result);
                            continue;
                        }
                        if let Some(body) = v.body.as_deref().and_then(|b| serde_json::from_str(b).ok()) {
                            written.push(WrittenEntry {
                                label,
                                rt,
                                id: v.res_id.clone(),
                                body,
                                reach: access_of(op).map(|a| &a.reach),
                                previous,
                            });
                        }
                    }
                }
                results.push(result);
            }
            for w in &written {
                check_references(tx.c, &w.body, w.rt, &w.id, w.reach, w.previous.as_ref())
                    .map_err(|a| in_entry(w.label, a))?;
            }
            Ok(results)
        })
    }

    fn execute(
        &self,
        tx: &mut Tx,
        op: &Op,
        target: Resolved,
        urns: &HashMap<String, String>,
        check_refs: bool,
    ) -> Result<OpResult, Abort> {
        let rewritten = |resource: &Value| {
            let mut r = resource.clone();
            if !urns.is_empty() {
                rewrite_references(&mut r, urns);
            }
            r
        };
        Ok(match (op, target) {
            (Op::Create { rt, .. }, Resolved::Existing(id)) => OpResult::Existing(read_in(tx.c, *rt, &id)?),
            (
                Op::Create {
                    rt, resource, access, ..
                },
                Resolved::New(id),
            ) => OpResult::Created(create_in(tx, *rt, &rewritten(resource), &id, check_refs, access)?),
            (
                Op::Update {
                    rt,
                    resource,
                    if_match,
                    access,
                    ..
                },
                Resolved::At(id),
            ) => OpResult::Updated(update_in(
                tx,
                *rt,
                &id,
                &rewritten(resource),
                *if_match,
                Via {
                    method: "PUT",
                    check_refs,
                },
                access,
            )?),
            (
                Op::Patch {
                    rt,
                    patcher,
                    if_match,
                    access,
                    ..
                },
                Resolved::At(id),
            ) => {
                // The current version is locked before it is read, so no other write slips between
                // the patch's read and its write.
                let current = load_current_for_write(tx.c, *rt, &id)?.ok_or_else(|| not_found(*rt, &id))?;
                // Visibility first, before the version, the If-Match or a single op is looked at: a
                // patch (its `test` ops, an empty one) on a record the caller may not see answers
                // exactly as one on a record that does not exist.
                if !may_see(tx.c, *rt, &id, &current, &access.reach)? {
                    return Err(not_found(*rt, &id).into());
                }
                let body: Value = match (&current.body, current.deleted) {
                    (Some(b), false) => {
                        serde_json::from_str(b).map_err(|e| Error::Internal(format!("stored JSON: {e}")))?
                    }
                    _ => return Err(Error::Gone(format!("{rt}/{id} was deleted")).into()),
                };
                // Before a single op runs: a `test` op would probe what the caller's view leaves out.
                access.check_whole(*rt, &id, &body)?;
                matches_version(*rt, &id, *if_match, current.version_id)?;
                // A client's own patch applies to what she sees (no host key, so no `test` op can
                // probe it), and keeps the stored key (scheduling::keep_session_key).
                let own_view = access.reach.own_patient.is_some() && rt.as_str() == "Appointment";
                let patched = if own_view {
                    let mut view = body.clone();
                    crate::scheduling::strip_session_key(&mut view);
                    let mut patched = (patcher.0)(&view)?;
                    crate::scheduling::keep_session_key(&mut patched, &body);
                    patched
                } else {
                    (patcher.0)(&body)?
                };
                if patched.get("resourceType") != body.get("resourceType") || patched.get("id") != body.get("id") {
                    return Err(
                        Error::Unprocessable("a patch may not change the resourceType or the id".into()).into(),
                    );
                }
                // A patch that changes nothing (`[]`, `test` ops, a value replaced by itself) writes
                // nothing: no new version, no history entry; the answer is the current version.
                if without_version_meta(&patched) == without_version_meta(&body) {
                    access.check(*rt, &id, &body)?;
                    return Ok(OpResult::Updated(UpdateOutcome {
                        version: Version {
                            res_type: rt.as_str().into(),
                            res_id: id.clone(),
                            version_id: current.version_id,
                            last_updated: current.last_updated,
                            method: NO_OP_PATCH.into(),
                            body: current.body.clone(),
                        },
                        created: false,
                    }));
                }
                let via = Via {
                    method: "PATCH",
                    check_refs,
                };
                OpResult::Updated(update_in(tx, *rt, &id, &patched, *if_match, via, access)?)
            }
            (
                Op::Delete {
                    rt, access, if_match, ..
                },
                Resolved::At(id),
            ) => OpResult::Deleted(delete_in(tx, *rt, &id, *if_match, access)?),
            (
                Op::Delete {
                    rt, if_match: Some(v), ..
                },
                Resolved::Nothing,
            ) => {
                return Err(Error::PreconditionFailed(format!(
                    "no {rt} matches the criteria, so version {v} does not match"
                ))
                .into())
            }
            (Op::Delete { .. }, Resolved::Nothing) => OpResult::Deleted(None),
            (
                Op::Read {
                    rt, id, version, reach, ..
                },
                _,
            ) => {
                let v = match version {
                    Some(n) => vread_visible_in(tx.c, *rt, id, *n, reach)?,
                    None => read_visible_in(tx.c, *rt, id, reach)?,
                };
                OpResult::Read(v)
            }
            (Op::Search { planned, count, .. }, _) => {
                let rows: Vec<IdRow> = load(tx.c, &first_page_sql(planned, *count))?;
                let ids: Vec<(String, String)> = rows.into_iter().map(|r| (r.res_type, r.res_id)).collect();
                let matches = load_current_many(tx.c, &ids)?;
                OpResult::Found {
                    total: matches.len() as i64,
                    matches,
                }
            }
            _ => return Err(Error::Internal("an operation resolved to a target it cannot use".into()).into()),
        })
    }
}

/// The `method` of the version a patch that changed nothing answers with (it wrote none, so no stored
/// version carries it; a written patch is `PATCH`).
/// The method of the version a patch that changed nothing answers with (nothing was written).
pub const NO_OP_PATCH: &str = "PATCH (nothing written)";

/// A write of a transaction whose references are checked once every entry is written.
struct WrittenEntry<'a> {
    label: &'a str,
    rt: ResourceType,
    id: String,
    body: Value,
    /// What the writer may see (None: everything).
    reach: Option<&'a Reach>,
    /// The version this write replaced, for a compartment-limited writer.
    previous: Option<Value>,
}

fn access_of(op: &Op) -> Option<&WriteAccess> {
    match op {
        Op::Create { access, .. }
        | Op::Update { access, .. }
        | Op::Patch { access, .. }
        | Op::Delete { access, .. } => Some(access),
        Op::Read { .. } | Op::Search { .. } => None,
    }
}

/// A resource without what every write stamps anew (meta.versionId, meta.lastUpdated), to tell
/// whether a patch changed anything.
fn without_version_meta(resource: &Value) -> Value {
    let mut r = resource.clone();
    if let Some(meta) = r.get_mut("meta").and_then(Value::as_object_mut) {
        meta.shift_remove("versionId");
        meta.shift_remove("lastUpdated");
        if meta.is_empty() {
            if let Some(fields) = r.as_object_mut() {
                fields.shift_remove("meta");
            }
        }
    }
    r
}

fn label_of(op: &Op) -> &str {
    match op {
        Op::Create { label, .. }
        | Op::Update { label, .. }
        | Op::Patch { label, .. }
        | Op::Delete { label, .. }
        | Op::Read { label, .. }
        | Op::Search { label, .. } => label,
    }
}

fn result_type(r: &OpResult) -> String {
    match r {
        OpResult::Created(v) | OpResult::Existing(v) | OpResult::Read(v) => v.res_type.clone(),
        OpResult::Updated(o) => o.version.res_type.clone(),
        _ => String::new(),
    }
}

fn in_entry(label: &str, a: Abort) -> Abort {
    match a {
        Abort::Error(e) => Abort::Error(e.in_context(label)),
        retry => retry,
    }
}

/// Which resource each operation is for, found on the transaction before anything is written.
fn resolve_op(c: &mut AnyConnection, op: &Op) -> Result<Resolved, Abort> {
    Ok(match op {
        Op::Create {
            id,
            if_none_exist: None,
            ..
        } => Resolved::New(id.clone()),
        Op::Create {
            rt,
            id,
            if_none_exist: Some(planned),
            ..
        } => {
            let mut found = matches(c, planned)?;
            match found.len() {
                0 => Resolved::New(id.clone()),
                1 => Resolved::Existing(found.remove(0)),
                _ => {
                    return Err(Error::PreconditionFailed(format!(
                        "the If-None-Exist criteria match more than one {rt}"
                    ))
                    .into())
                }
            }
        }
        Op::Update {
            rt, target, resource, ..
        } => Resolved::At(update_id(c, *rt, target, resource)?),
        Op::Patch { rt, target, .. } => match resolve(c, *rt, target)? {
            Some(id) => Resolved::At(id),
            None => return Err(Error::NotFound(format!("no {rt} matches the criteria of the patch")).into()),
        },
        Op::Delete { rt, target, .. } => match resolve(c, *rt, target)? {
            Some(id) => Resolved::At(id),
            None => Resolved::Nothing,
        },
        Op::Read { .. } | Op::Search { .. } => Resolved::Unused,
    })
}

/// The id a (conditional) update writes to. With criteria (http.html#cond-update): one match is
/// updated (an id in the body must be its id); no match creates — with the body's id when it has
/// one that is not taken, else a new id.
fn update_id(c: &mut AnyConnection, rt: ResourceType, target: &Target, resource: &Value) -> Result<String, Abort> {
    let body_id = resource.get("id").and_then(Value::as_str);
    match (resolve(c, rt, target)?, target, body_id) {
        (Some(id), Target::Id(_), _) => Ok(id),
        (Some(id), Target::Search(_), Some(b)) if b != id => {
            Err(Error::Invalid(format!("the criteria match {rt}/{id}, but the body's id is '{b}'")).into())
        }
        (Some(id), _, _) => Ok(id),
        (None, _, Some(b)) => {
            if load_current_many(c, &[(rt.as_str().to_string(), b.to_string())])?.is_empty() {
                Ok(b.to_string())
            } else {
                Err(Error::Conflict(format!(
                    "{rt}/{b} exists but does not match the criteria; update it by its id instead"
                ))
                .into())
            }
        }
        (None, _, None) => Ok(crate::resources::new_id()),
    }
}

/// A conditional reference in an entry of a transaction: `reference` as written, the criteria
/// planned with what the writer may search.
#[derive(Debug, Clone)]
pub struct ConditionalRef {
    pub label: String,
    pub reference: String,
    pub rt: ResourceType,
    pub planned: Planned,
}

/// http.html#transaction: "If any resource identities (including resolved identities from
/// conditional update/delete) overlap in steps 1-3, then the transaction SHALL fail." Two entries
/// that write one resource are a 400, before anything is written.
fn one_entry_per_resource(ops: &[Op], resolved: &[Resolved]) -> Result<(), Abort> {
    let mut seen: HashMap<(ResourceType, &str), &str> = HashMap::new();
    for (op, r) in ops.iter().zip(resolved) {
        let rt = match op {
            Op::Create { rt, .. } | Op::Update { rt, .. } | Op::Patch { rt, .. } | Op::Delete { rt, .. } => *rt,
            Op::Read { .. } | Op::Search { .. } => continue,
        };
        let id = match r {
            Resolved::New(id) | Resolved::At(id) => id.as_str(),
            // A conditional create that matched writes nothing: the spec counts "resolved
            // identities from conditional update/delete", and the entry only names what exists.
            Resolved::Existing(_) | Resolved::Nothing | Resolved::Unused => continue,
        };
        if let Some(first) = seen.insert((rt, id), label_of(op)) {
            return Err(Error::Invalid(format!(
                "{first} and {} both write {rt}/{id}; a transaction may touch a resource once (http.html#transaction)",
                label_of(op)
            ))
            .into());
        }
    }
    Ok(())
}

/// `urn:uuid:` fullUrls of creates and updates, mapped to the `Type/id` they resolved to.
fn urn_map(ops: &[Op], resolved: &[Resolved]) -> HashMap<String, String> {
    let mut map = HashMap::new();
    for (op, r) in ops.iter().zip(resolved) {
        let (rt, full_url) = match op {
            Op::Create { rt, full_url, .. } | Op::Update { rt, full_url, .. } => (rt, full_url),
            _ => continue,
        };
        let id = match r {
            Resolved::New(id) | Resolved::Existing(id) | Resolved::At(id) => id,
            _ => continue,
        };
        if let Some(u) = full_url.as_ref().filter(|u| u.starts_with("urn:uuid:")) {
            map.insert(u.clone(), format!("{rt}/{id}"));
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_patch_changes_nothing_when_only_the_stamped_meta_differs() {
        let stored = json!({"resourceType": "Patient", "id": "a", "meta": {"versionId": "3", "lastUpdated": "2026-01-01T00:00:00Z"}, "gender": "female"});
        let restamped = json!({"resourceType": "Patient", "id": "a", "meta": {"versionId": "9"}, "gender": "female"});
        let unstamped = json!({"resourceType": "Patient", "id": "a", "gender": "female"});
        assert_eq!(without_version_meta(&stored), without_version_meta(&restamped));
        assert_eq!(without_version_meta(&stored), without_version_meta(&unstamped));
        let labelled = json!({"resourceType": "Patient", "id": "a", "meta": {"versionId": "3", "security": [{"code": "R"}]}, "gender": "female"});
        assert_ne!(without_version_meta(&stored), without_version_meta(&labelled));
        let changed = json!({"resourceType": "Patient", "id": "a", "meta": {"versionId": "3"}, "gender": "male"});
        assert_ne!(without_version_meta(&stored), without_version_meta(&changed));
    }
}
