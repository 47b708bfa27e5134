//! transaction Bundles in one database transaction (see api::bundle for the HTTP side).

use serde_json::Value;

use super::write::{check_references, create_in, delete_in, not_found, read_in, update_in};
use super::{Abort, Store, UpdateOutcome, Version, WriteAccess};
use crate::error::Error;
use crate::resources::{compartment, ResourceType};

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

impl Store {
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

}
