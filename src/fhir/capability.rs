//! The CapabilityStatement, assembled from what the server registers: the hosted types, the
//! interactions the api layer routes, and the formats the wire layer speaks.

use serde_json::{json, Value};

use super::{Format, FHIR_VERSION};
use crate::resources::ResourceType;

/// What the api layer supports, as it declares it next to its routes.
pub struct Supported<'a> {
    /// Interactions on every hosted type (read, vread, update, delete, history-instance, history-type, create…).
    pub type_interactions: &'a [&'a str],
    /// Whole-system interactions (history-system…).
    pub system_interactions: &'a [&'a str],
    pub update_create: bool,
    pub conditional_create: bool,
    pub conditional_update: bool,
    /// not-supported, single or multiple.
    pub conditional_delete: &'a str,
    /// Instance operations: (type, name, definition). A definition starting with `/` is tandem's own,
    /// under the canonical base.
    pub operations: &'a [(&'a str, &'a str, &'a str)],
    /// Whole-system operations: (name, definition).
    pub system_operations: &'a [(&'a str, &'a str)],
    /// Conformance resources served read-only (tandem's own definitions).
    pub definition_types: &'a [&'a str],
    /// The search parameters of the audit trail (AuditEvent: read and search only): name, type,
    /// documentation.
    pub audit_event_params: &'a [(&'a str, &'a str, &'a str)],
}

pub fn capability_statement(
    base_url: &str,
    canonical_base: &str,
    software_version: &str,
    supported: &Supported<'_>,
    security: Value,
) -> Value {
    let definition = |d: &str| {
        if d.starts_with('/') {
            format!("{canonical_base}{d}")
        } else {
            d.to_string()
        }
    };
    let operations_of = |t: &str| -> Vec<Value> {
        supported
            .operations
            .iter()
            .filter(|(ot, _, _)| *ot == t)
            .map(|(_, name, d)| json!({"name": name, "definition": definition(d)}))
            .collect()
    };
    let mut resources: Vec<Value> = ResourceType::all()
        .map(|rt| {
            json!({
                "type": rt.as_str(),
                "profile": format!("http://hl7.org/fhir/StructureDefinition/{rt}"),
                "interaction": supported.type_interactions.iter().map(|i| json!({"code": i})).collect::<Vec<_>>(),
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": supported.update_create,
                "conditionalCreate": supported.conditional_create,
                "conditionalUpdate": supported.conditional_update,
                "conditionalDelete": supported.conditional_delete,
                "conditionalRead": "not-supported",
                "referencePolicy": ["literal", "logical", "resolves"],
                "operation": operations_of(rt.as_str()),
                "searchInclude": ["*"],
                "searchRevInclude": ["*"],
                "searchParam": rt.search_params().iter().filter(|p| p.is_searchable()).map(|p| json!({
                    "name": p.code,
                    // tandem's own parameters are published under the configured canonical base.
                    "definition": crate::scheduling::Canonical::new(canonical_base).own(&p.url),
                    "type": p.kind.as_str(),
                    "documentation": p.description,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    resources.extend(supported.definition_types.iter().map(|t| {
        json!({
            "type": t,
            "profile": format!("http://hl7.org/fhir/StructureDefinition/{t}"),
            "documentation": format!("tandem's own {t} resources (its extensions and codes), read-only"),
            "interaction": [{"code": "read"}, {"code": "search-type"}],
            "searchParam": [{"name": "url", "definition": "http://hl7.org/fhir/SearchParameter/conformance-url", "type": "uri"}],
        })
    }));
    resources.push(json!({
        "type": "AuditEvent",
        "profile": "http://hl7.org/fhir/StructureDefinition/AuditEvent",
        "documentation": "The audit trail: one AuditEvent per interaction, refused ones included. Read and search \
            only, with a system/ scope that names AuditEvent (wildcards do not reach it); never updated or deleted.",
        "interaction": [{"code": "read"}, {"code": "search-type"}],
        "versioning": "no-version",
        "readHistory": false,
        "updateCreate": false,
        "searchParam": supported.audit_event_params.iter().map(|(name, kind, doc)| json!({
            "name": name,
            "definition": if name.starts_with('_') {
                format!("http://hl7.org/fhir/SearchParameter/Resource{}", name.replace('_', "-"))
            } else {
                format!("http://hl7.org/fhir/SearchParameter/AuditEvent-{name}")
            },
            "type": kind,
            "documentation": doc,
        })).collect::<Vec<_>>(),
    }));
    for r in &mut resources {
        if r.get("operation").and_then(Value::as_array).is_some_and(Vec::is_empty) {
            if let Some(map) = r.as_object_mut() {
                map.remove("operation");
            }
        }
    }
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": crate::resources::dates::format_instant(crate::resources::dates::now_millis()),
        "publisher": "tandem",
        "kind": "instance",
        "software": { "name": "tandem", "version": software_version },
        "implementation": { "description": "tandem FHIR R4 server for individual and group therapy", "url": base_url },
        "fhirVersion": FHIR_VERSION,
        "format": Format::ADVERTISED,
        "rest": [{
            "mode": "server",
            "security": security,
            "resource": resources,
            "interaction": supported.system_interactions.iter().map(|i| json!({"code": i})).collect::<Vec<_>>(),
            "operation": supported.system_operations.iter().map(|(name, d)| json!({"name": name, "definition": d})).collect::<Vec<_>>(),
        }]
    })
}
