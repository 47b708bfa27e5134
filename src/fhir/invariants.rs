//! The invariants of FHIR R4 (4.0.1), checked on every resource written: each `constraint` of
//! severity error in the definitions of the hosted types, of AuditEvent (which the server writes
//! itself) and of every data type they use — the ones an extension's `value[x]` may carry included —
//! as code, one function per key. Each function quotes the key, the human text and the FHIRPath
//! expression of the R4 definition: hl7.fhir.r4.core 4.0.1, `StructureDefinition-<type>.json` (the
//! entries of the specification's profiles-resources.json and profiles-types.json; read from the
//! package as vendored in github.com/google/fhir, spec/hl7.fhir.core/4.0.1/package).
//!
//! No FHIRPath engine: the crates that evaluate these expressions do not build with our toolchain
//! and dependencies, or evaluate some of them wrongly; each rule here has a table test.
//!
//! One walk over the resource (canonical JSON, after the R4 model and the element table have
//! accepted its structure), typed by the element table of [`super::model`], collects every broken
//! invariant with the FHIRPath of its element. Where an expression cannot be evaluated as written,
//! the function says what is done instead:
//! - ctm-1 resolves `member` from the reference itself (its type in a literal reference, `type`, or
//!   the contained resource), never from the database; a member it cannot place passes, as
//!   `resolve().iif(empty(), true, …)` does;
//! - ppc-2..ppc-5 compare the scope with the placeholder system `'something'`, which no consent
//!   carries: as written they hold for every Consent. They are checked as their human text says,
//!   against the system of Consent.scope's value set (consentscope);
//! - app-4 names the status `'no-show'`; the R4 code is `noshow` (appointmentstatus), as its human
//!   text says;
//! - rng-2 compares quantities of the same unit only (comparing others needs UCUM conversion); per-1
//!   refuses a period only when its end is surely before its start, as FHIRPath's comparison of
//!   dates of different precision does;
//! - txt-1 and txt-2 are the allow-list of [`super::narrative`].
//!
//! Besides R4's, one rule of this server: an Appointment's `end` is not before its `start` (R4 has
//! no invariant for it, and a session that ends before it starts holds no time in the bookings).
//!
//! Skipped: the warnings and best practices (dom-6 and the value-set bindings), the invariants of
//! types that are not hosted (inside a contained resource of another type only the data types and
//! the DomainResource rules are checked), and those of the Bundle itself (bdl-7 is checked by the
//! Bundle processing). A transaction or batch Bundle is checked entry by entry as it is processed
//! ([`check_at`]), so a batch answers each entry on its own.

use std::collections::HashSet;

use serde_json::{Map, Value};

use super::model::{types, TypeDef};
use super::narrative;
use crate::error::{BrokenInvariant, Error};
use crate::resources::dates;

/// The most invariants one answer lists.
const MOST_REPORTED: usize = 20;

/// `%ucum`.
const UCUM: &str = "http://unitsofmeasure.org";

/// The system of Consent.scope's codes (R4 value set consent-scope).
const CONSENT_SCOPE: &str = "http://terminology.hl7.org/CodeSystem/consentscope";

/// The elements that are a SimpleQuantity (sqty-1), by the type of their parent (the element table
/// names a data type's own backbone elements by type: `DosageDoseAndRate` is Dosage.doseAndRate).
const SIMPLE_QUANTITIES: [(&str, &str); 7] = [
    ("Range", "low"),
    ("Range", "high"),
    ("SampledData", "origin"),
    ("DosageDoseAndRate", "doseQuantity"),
    ("DosageDoseAndRate", "rateQuantity"),
    ("Dosage", "maxDosePerAdministration"),
    ("Dosage", "maxDosePerLifetime"),
];

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub key: &'static str,
    pub human: String,
    /// The FHIRPath of the element (`Appointment.participant[0]`).
    pub path: String,
}

impl Violation {
    fn broken(self) -> BrokenInvariant {
        BrokenInvariant {
            diagnostics: format!("{}: {}", self.key, self.human),
            expression: self.path,
        }
    }
}

/// Checks a parsed resource: a 422 naming every broken invariant (at most [`MOST_REPORTED`]), or a
/// 400 for a narrative that is not XHTML at all.
pub fn check(resource: &Value) -> Result<(), Error> {
    let root = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or("Resource");
    check_at(resource, root)
}

/// [`check`] for a resource found at `root` (`Bundle.entry[2].resource`): paths start there.
pub fn check_at(resource: &Value, root: &str) -> Result<(), Error> {
    let (mut found, structure) = walk(resource, root);
    if let Some(e) = structure {
        return Err(e);
    }
    if found.is_empty() {
        return Ok(());
    }
    found.truncate(MOST_REPORTED);
    Err(Error::Invariant(found.into_iter().map(Violation::broken).collect()))
}

/// Every broken invariant of a resource, in the order the walk meets them (the rules of an element
/// after those of the elements inside it).
pub fn violations(resource: &Value) -> Vec<Violation> {
    let root = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or("Resource");
    walk(resource, root).0
}

fn walk(resource: &Value, root: &str) -> (Vec<Violation>, Option<Error>) {
    let mut w = Walk {
        scopes: Vec::new(),
        found: Vec::new(),
        structure: None,
        top: true,
        skip_entry_resources: false,
    };
    let mut path = root.to_string();
    w.resource(resource, &mut path, None);
    (w.found, w.structure)
}

/// What the rules of a resource see of it: `%rootResource` of ref-1, `%resource` of dom-3.
struct Scope<'a> {
    /// The id and type of each contained resource.
    contained: Vec<(Option<&'a str>, &'a str)>,
    /// Every `#…` value of a reference, canonical, uri or url in the resource.
    local_refs: HashSet<&'a str>,
    /// Per contained resource: whether it refers to its container (`#`).
    refers_to_container: Vec<bool>,
    /// The contained resource the walk is in.
    inside: Option<usize>,
}

struct Walk<'a> {
    scopes: Vec<Scope<'a>>,
    found: Vec<Violation>,
    structure: Option<Error>,
    /// The walk is at the resource that was sent (not a resource inside it).
    top: bool,
    /// The resource sent is a Bundle processed entry by entry, which checks its entries then.
    skip_entry_resources: bool,
}

/// A value that is there: not null, not an empty array.
fn present(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Array(a)) => a.iter().any(|i| !i.is_null()),
        Some(_) => true,
    }
}

/// FHIRPath `name.exists()`: the element, a primitive's value or its extensions (`_name`).
fn exists(obj: &Map<String, Value>, name: &str) -> bool {
    present(obj.get(name)) || present(obj.get(&format!("_{name}")))
}

/// `name[x].exists()`: any type of a choice element.
fn choice_exists(obj: &Map<String, Value>, name: &str) -> bool {
    let underscored = format!("_{name}");
    obj.iter().any(|(k, v)| {
        let rest = k.strip_prefix(name).or_else(|| k.strip_prefix(&underscored));
        rest.is_some_and(|r| r.starts_with(|c: char| c.is_ascii_uppercase())) && present(Some(v))
    })
}

fn text<'v>(obj: &'v Map<String, Value>, name: &str) -> Option<&'v str> {
    obj.get(name).and_then(Value::as_str)
}

fn number(obj: &Map<String, Value>, name: &str) -> Option<f64> {
    obj.get(name).and_then(Value::as_f64)
}

fn items<'v>(obj: &'v Map<String, Value>, name: &str) -> impl Iterator<Item = (usize, &'v Map<String, Value>)> {
    obj.get(name)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, v)| v.as_object().map(|o| (i, o)))
}

/// Whether a primitive type's values are URLs that a contained resource may be named by (dom-3).
fn is_url_type(type_name: &str) -> bool {
    matches!(type_name, "canonical" | "uri" | "url")
}

/// The resource type a literal reference names: `Practitioner/1`, `…/fhir/Practitioner/1/_history/2`.
pub fn reference_type(reference: &str) -> Option<&str> {
    if reference.starts_with("urn:") || reference.starts_with('#') {
        return None;
    }
    let reference = reference.split(['?', '#']).next().unwrap_or(reference);
    let parts: Vec<&str> = reference.split('/').collect();
    let n = parts.len();
    let at = if n >= 4 && parts[n - 2] == "_history" {
        n - 4
    } else {
        n.checked_sub(2)?
    };
    let t = parts[at];
    (t.starts_with(|c: char| c.is_ascii_uppercase()) && t.chars().all(|c| c.is_ascii_alphabetic())).then_some(t)
}

impl<'a> Walk<'a> {
    fn broken(&mut self, key: &'static str, human: impl Into<String>, path: &str) {
        self.found.push(Violation {
            key,
            human: human.into(),
            path: path.to_string(),
        });
    }

    /// A resource: the one sent, one inside it (`contained`, index `contained`), a Bundle entry's
    /// or a parameter's.
    fn resource(&mut self, r: &'a Value, path: &mut String, contained: Option<usize>) {
        let Some(map) = r.as_object() else { return };
        let rt = map.get("resourceType").and_then(Value::as_str).unwrap_or("");
        if std::mem::replace(&mut self.top, false) {
            self.skip_entry_resources = rt == "Bundle" && matches!(text(map, "type"), Some("batch" | "transaction"));
        }
        // (A resource in a contained one breaks dom-2; the walk goes on in its container's scope.)
        let mut outer = None;
        match contained {
            Some(i) => {
                if let Some(scope) = self.scopes.last_mut() {
                    outer = scope.inside.replace(i);
                }
            }
            None => {
                let listed: Vec<(Option<&str>, &str)> = map
                    .get("contained")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|c| {
                        (
                            c.get("id").and_then(Value::as_str),
                            c.get("resourceType").and_then(Value::as_str).unwrap_or(""),
                        )
                    })
                    .collect();
                self.scopes.push(Scope {
                    refers_to_container: vec![false; listed.len()],
                    contained: listed,
                    local_refs: HashSet::new(),
                    inside: None,
                });
            }
        }
        match types().get(rt).filter(|d| d.kind == "resource") {
            Some(def) => self.typed_object(def, map, path),
            None => self.other_resource(map, path),
        }
        self.domain_resource(map, path);
        self.resource_rules(rt, map, path);
        match contained {
            Some(_) => {
                if let Some(scope) = self.scopes.last_mut() {
                    scope.inside = outer;
                }
            }
            None => {
                if let Some(scope) = self.scopes.pop() {
                    self.dom_3(&scope, path);
                }
            }
        }
    }

    /// A resource of a type the element table does not hold (contained, say): its Resource and
    /// DomainResource elements typed, the rest walked without types.
    fn other_resource(&mut self, map: &'a Map<String, Value>, path: &mut String) {
        for (key, child) in map {
            if let Some(base) = key.strip_prefix('_') {
                self.primitive(base, "", map.get(base), Some(child), path);
                continue;
            }
            let typed = match key.as_str() {
                "meta" => Some("Meta"),
                "text" => Some("Narrative"),
                "extension" | "modifierExtension" => Some("Extension"),
                _ => None,
            };
            let len = path.len();
            path.push('.');
            path.push_str(key);
            match (key.as_str(), typed) {
                ("contained", _) => self.contained(child, path),
                (_, Some(t)) => self.each(child, path, |w, item, p| w.element(t, item, p, None)),
                _ => self.untyped(child, path),
            }
            path.truncate(len);
        }
    }

    fn contained(&mut self, list: &'a Value, path: &mut String) {
        let Some(list) = list.as_array() else { return };
        let len = path.len();
        for (i, item) in list.iter().enumerate() {
            path.push_str(&format!("[{i}]"));
            self.resource(item, path, Some(i));
            path.truncate(len);
        }
    }

    /// `f` on a value, or on each item of an array with its index in the path.
    fn each(&mut self, v: &'a Value, path: &mut String, mut f: impl FnMut(&mut Self, &'a Value, &mut String)) {
        match v {
            Value::Array(list) => {
                let len = path.len();
                for (i, item) in list.iter().enumerate() {
                    path.push_str(&format!("[{i}]"));
                    f(self, item, path);
                    path.truncate(len);
                }
            }
            one => f(self, one, path),
        }
    }

    /// The elements of an object of a known type, then the rules of its type.
    fn typed_object(&mut self, def: &'static TypeDef, map: &'a Map<String, Value>, path: &mut String) {
        for element in &def.elements {
            let keys: Vec<(String, &str)> = match (&element.choice, &element.type_name) {
                (Some(choices), _) => choices
                    .iter()
                    .map(|c| (format!("{}{}", element.name, c.suffix), c.type_name.as_str()))
                    .collect(),
                (None, Some(t)) => vec![(element.name.clone(), t.as_str())],
                (None, None) => Vec::new(),
            };
            for (key, type_name) in keys {
                let primitive = type_name.starts_with(|c: char| c.is_ascii_lowercase());
                let value = map.get(&key);
                if primitive {
                    let under = map.get(&format!("_{key}"));
                    if value.is_none() && under.is_none() {
                        continue;
                    }
                    self.primitive(&key, type_name, value, under, path);
                    continue;
                }
                let Some(value) = value else { continue };
                let len = path.len();
                path.push('.');
                path.push_str(&key);
                if key == "contained" {
                    self.contained(value, path);
                } else if type_name == "Resource" {
                    if !(self.skip_entry_resources && def.path == "Bundle.entry") {
                        self.each(value, path, |w, item, p| w.resource(item, p, None));
                    }
                } else {
                    let simple = SIMPLE_QUANTITIES.contains(&(def.path.as_str(), key.as_str()));
                    self.each(value, path, |w, item, p| {
                        w.element(type_name, item, p, simple.then_some("SimpleQuantity"))
                    });
                }
                path.truncate(len);
            }
        }
        self.type_rules(&def.path, map, path);
    }

    /// A primitive element: its value(s) and its `_name` part(s) (id, extensions), item by item.
    fn primitive(
        &mut self,
        key: &str,
        type_name: &str,
        value: Option<&'a Value>,
        under: Option<&'a Value>,
        path: &mut String,
    ) {
        let len = path.len();
        path.push('.');
        path.push_str(key);
        let values = value.and_then(Value::as_array);
        let parts = under.and_then(Value::as_array);
        let not_null = |v: &&'a Value| !v.is_null();
        if values.is_some() || parts.is_some() {
            let n = values.map_or(0, Vec::len).max(parts.map_or(0, Vec::len));
            let base = path.len();
            for i in 0..n {
                path.push_str(&format!("[{i}]"));
                let v = values.and_then(|a| a.get(i)).filter(not_null);
                let p = parts.and_then(|a| a.get(i)).filter(not_null);
                self.primitive_part(v, p, type_name, path);
                path.truncate(base);
            }
        } else {
            self.primitive_part(value.filter(not_null), under.filter(not_null), type_name, path);
        }
        path.truncate(len);
    }

    fn primitive_part(
        &mut self,
        value: Option<&'a Value>,
        part: Option<&'a Value>,
        type_name: &str,
        path: &mut String,
    ) {
        if let Some(s) = value.and_then(Value::as_str) {
            if type_name == "xhtml" {
                self.narrative(s, path);
            } else if is_url_type(type_name) && s.starts_with('#') {
                self.local_ref(s);
            }
        }
        let part = part.and_then(Value::as_object);
        if value.is_none() {
            // ele-1 on a primitive: no value, and nothing but an id beside it.
            if part.is_none_or(|p| p.keys().all(|k| k == "id")) {
                self.ele_1(path);
            }
        }
        if let Some(part) = part {
            if let Some(ext) = part.get("extension") {
                let len = path.len();
                path.push_str(".extension");
                self.each(ext, path, |w, item, p| w.element("Extension", item, p, None));
                path.truncate(len);
            }
        }
    }

    /// An element of a data type (or a backbone element): ele-1, its elements, its rules.
    fn element(&mut self, type_name: &str, v: &'a Value, path: &mut String, profile: Option<&str>) {
        let Some(map) = v.as_object() else { return };
        if map.keys().all(|k| k == "id") {
            self.ele_1(path);
            return;
        }
        match types().get(type_name) {
            Some(def) => self.typed_object(def, map, path),
            None => self.untyped(v, path),
        }
        if profile == Some("SimpleQuantity") {
            self.sqty_1(map, path);
        }
    }

    /// What holds for any element of any type: ele-1, extensions (ext-1), references (ref-1),
    /// narratives (txt-1, txt-2), resources inside.
    fn untyped(&mut self, v: &'a Value, path: &mut String) {
        match v {
            Value::Array(_) => self.each(v, path, |w, item, p| w.untyped(item, p)),
            Value::Object(map) if map.contains_key("resourceType") => self.resource(v, path, None),
            // Without types, any `#…` may be a canonical or uri naming a contained resource (dom-3).
            Value::String(s) if s.starts_with('#') => self.local_ref(s),
            Value::Object(map) => {
                if map.keys().all(|k| k == "id") {
                    self.ele_1(path);
                    return;
                }
                if map.get("reference").is_some_and(Value::is_string) {
                    self.ref_1(map, path);
                }
                for (key, child) in map {
                    if let Some(base) = key.strip_prefix('_') {
                        // A primitive's id and extensions, beside its value (or values).
                        self.primitive(base, "", map.get(base), Some(child), path);
                        continue;
                    }
                    let len = path.len();
                    path.push('.');
                    path.push_str(key);
                    match (key.as_str(), child) {
                        ("extension" | "modifierExtension", _) => {
                            self.each(child, path, |w, item, p| w.element("Extension", item, p, None))
                        }
                        ("div", Value::String(s)) => self.narrative(s, path),
                        ("contained", _) => self.contained(child, path),
                        _ => self.untyped(child, path),
                    }
                    path.truncate(len);
                }
            }
            _ => {}
        }
    }

    fn local_ref(&mut self, value: &'a str) {
        let Some(scope) = self.scopes.last_mut() else { return };
        if value == "#" {
            if let Some(i) = scope.inside {
                // (`i` is out of range only inside a resource nested in a contained one: dom-2.)
                if let Some(refers) = scope.refers_to_container.get_mut(i) {
                    *refers = true;
                }
            }
        } else {
            scope.local_refs.insert(value);
        }
    }

    /// txt-1, txt-2 (Narrative.div): the allow-list of [`narrative::check_div`]. A div that is not
    /// XHTML at all is a structure error (400), like any value that does not parse.
    fn narrative(&mut self, div: &str, path: &str) {
        match narrative::check_div(div) {
            Ok(()) => {}
            Err(narrative::DivProblem {
                key: Some(key),
                message,
            }) => self.broken(key, message, path),
            Err(problem) => {
                if self.structure.is_none() {
                    self.structure = Some(Error::Structure(format!("{path}: {problem}")));
                }
            }
        }
    }

    /// ele-1 (Element): "All FHIR elements must have a @value or children";
    /// `hasValue() or (children().count() > id.count())`.
    fn ele_1(&mut self, path: &str) {
        self.broken("ele-1", "All FHIR elements must have a @value or children", path);
    }

    /// The rules of the contained resources, seen from the DomainResource that holds them.
    fn domain_resource(&mut self, map: &'a Map<String, Value>, path: &str) {
        for (i, c) in items(map, "contained") {
            let here = format!("{path}.contained[{i}]");
            // dom-2: "If the resource is contained in another resource, it SHALL NOT contain nested
            // Resources"; `contained.contained.empty()`.
            if present(c.get("contained")) {
                self.broken(
                    "dom-2",
                    "If the resource is contained in another resource, it SHALL NOT contain nested Resources",
                    &here,
                );
            }
            let meta = c.get("meta").and_then(Value::as_object);
            // dom-4: "If a resource is contained in another resource, it SHALL NOT have a
            // meta.versionId or a meta.lastUpdated";
            // `contained.meta.versionId.empty() and contained.meta.lastUpdated.empty()`.
            if meta.is_some_and(|m| exists(m, "versionId") || exists(m, "lastUpdated")) {
                self.broken(
                    "dom-4",
                    "If a resource is contained in another resource, it SHALL NOT have a meta.versionId or a meta.lastUpdated",
                    &format!("{here}.meta"),
                );
            }
            // dom-5: "If a resource is contained in another resource, it SHALL NOT have a security
            // label"; `contained.meta.security.empty()`.
            if meta.is_some_and(|m| present(m.get("security"))) {
                self.broken(
                    "dom-5",
                    "If a resource is contained in another resource, it SHALL NOT have a security label",
                    &format!("{here}.meta"),
                );
            }
        }
    }

    /// dom-3 (DomainResource): "If the resource is contained in another resource, it SHALL be
    /// referred to from elsewhere in the resource or SHALL refer to the containing resource";
    /// `contained.where((('#'+id in (%resource.descendants().reference |
    /// %resource.descendants().as(canonical) | %resource.descendants().as(uri) |
    /// %resource.descendants().as(url))) or descendants().where(reference = '#').exists() or
    /// descendants().where(as(canonical) = '#').exists() or
    /// descendants().where(as(canonical) = '#').exists()).not()).trace('unmatched', id).empty()`.
    fn dom_3(&mut self, scope: &Scope<'_>, path: &str) {
        for (i, (id, _)) in scope.contained.iter().enumerate() {
            let named = id.is_some_and(|id| scope.local_refs.contains(format!("#{id}").as_str()));
            if !named && !scope.refers_to_container.get(i).copied().unwrap_or(false) {
                self.broken(
                    "dom-3",
                    "If the resource is contained in another resource, it SHALL be referred to from elsewhere in the resource or SHALL refer to the containing resource",
                    &format!("{path}.contained[{i}]"),
                );
            }
        }
    }

    /// The rules of a resource type, on the resource itself.
    fn resource_rules(&mut self, rt: &str, map: &Map<String, Value>, path: &str) {
        match rt {
            "Appointment" => {
                self.app_2(map, path);
                self.app_3(map, path);
                self.app_4(map, path);
                self.appointment_end_after_start(map, path);
            }
            "Consent" => {
                self.ppc_1(map, path);
                self.ppc_2_to_5(map, path);
            }
            "Group" => self.grp_1(map, path),
            "Organization" => {
                self.org_1(map, path);
                self.org_2_and_3(map, path);
            }
            _ => {}
        }
    }

    /// The rules of a data type or backbone element, by its path in the element table: the R4 path
    /// of a resource's backbone element (`Appointment.participant`), the type name of a data type
    /// and of a data type's own elements (`TimingRepeat` is Timing.repeat).
    fn type_rules(&mut self, type_path: &str, map: &'a Map<String, Value>, path: &str) {
        match type_path {
            "Appointment.participant" => self.app_1(map, path),
            "CareTeam.participant" => self.ctm_1(map, path),
            "Patient.contact" => self.pat_1(map, path),
            "AuditEvent.entity" => self.sev_1(map, path),
            "Extension" => self.ext_1(map, path),
            "Reference" => self.ref_1(map, path),
            "Period" => self.per_1(map, path),
            "ContactPoint" => self.cpt_2(map, path),
            "Attachment" => self.att_1(map, path),
            "Quantity" => self.qty_3(map, path),
            "Age" => {
                self.qty_3(map, path);
                self.age_1(map, path);
            }
            "Count" => {
                self.qty_3(map, path);
                self.cnt_3(map, path);
            }
            "Distance" => {
                self.qty_3(map, path);
                self.dis_1(map, path);
            }
            "Duration" => {
                self.qty_3(map, path);
                self.drt_1(map, path);
            }
            "Range" => self.rng_2(map, path),
            "Ratio" => self.rat_1(map, path),
            "TimingRepeat" => self.timing_repeat(map, path),
            "DataRequirementCodeFilter" => self.drq(map, path, "drq-1"),
            "DataRequirementDateFilter" => self.drq(map, path, "drq-2"),
            "Expression" => self.exp_1(map, path),
            "TriggerDefinition" => self.trd(map, path),
            _ => {}
        }
    }

    // --- Appointment -------------------------------------------------------------------------

    /// app-1 (Appointment.participant): "Either the type or actor on the participant SHALL be
    /// specified"; `type.exists() or actor.exists()`.
    fn app_1(&mut self, map: &Map<String, Value>, path: &str) {
        if !exists(map, "type") && !exists(map, "actor") {
            self.broken(
                "app-1",
                "Either the type or actor on the participant SHALL be specified",
                path,
            );
        }
    }

    /// app-2 (Appointment): "Either start and end are specified, or neither";
    /// `start.exists() = end.exists()`.
    fn app_2(&mut self, map: &Map<String, Value>, path: &str) {
        if exists(map, "start") != exists(map, "end") {
            self.broken("app-2", "Either start and end are specified, or neither", path);
        }
    }

    /// app-3 (Appointment): "Only proposed or cancelled appointments can be missing start/end
    /// dates"; `(start.exists() and end.exists()) or (status in ('proposed' | 'cancelled' |
    /// 'waitlist'))`.
    fn app_3(&mut self, map: &Map<String, Value>, path: &str) {
        let timed = exists(map, "start") && exists(map, "end");
        if !timed && !matches!(text(map, "status"), Some("proposed" | "cancelled" | "waitlist")) {
            self.broken(
                "app-3",
                "Only proposed or cancelled appointments can be missing start/end dates",
                path,
            );
        }
    }

    /// app-4 (Appointment): "Cancelation reason is only used for appointments that have been
    /// cancelled, or no-show"; `Appointment.cancelationReason.exists() implies
    /// (Appointment.status='no-show' or Appointment.status='cancelled')`. (R4's code for a no-show
    /// is `noshow`; `'no-show'` is no status at all.)
    fn app_4(&mut self, map: &Map<String, Value>, path: &str) {
        if exists(map, "cancelationReason") && !matches!(text(map, "status"), Some("noshow" | "cancelled")) {
            self.broken(
                "app-4",
                "Cancelation reason is only used for appointments that have been cancelled, or no-show",
                path,
            );
        }
    }

    /// This server's rule, not R4's: an Appointment's `end` is not before its `start` (both
    /// instants, compared across time zones). A session that ends before it starts would hold no
    /// time in the bookings that the double-booking rule reads. (One that ends as it starts is
    /// valid R4 and is kept: it holds no time either.)
    fn appointment_end_after_start(&mut self, map: &Map<String, Value>, path: &str) {
        let instant = |k: &str| text(map, k).and_then(dates::parse_range).map(|r| r.low);
        if let (Some(start), Some(end)) = (instant("start"), instant("end")) {
            if end < start {
                self.broken(
                    "appointment-period",
                    "Appointment.end is before Appointment.start",
                    path,
                );
            }
        }
    }

    // --- CareTeam, Consent, Group, Organization, Patient, AuditEvent --------------------------

    /// ctm-1 (CareTeam.participant): "CareTeam.participant.onBehalfOf can only be populated when
    /// CareTeam.participant.member is a Practitioner"; `onBehalfOf.exists() implies
    /// (member.resolve().iif(empty(), true, ofType(Practitioner).exists()))`. The member is placed
    /// by its reference alone (module docs).
    fn ctm_1(&mut self, map: &Map<String, Value>, path: &str) {
        if !exists(map, "onBehalfOf") {
            return;
        }
        let Some(member) = map.get("member").and_then(Value::as_object) else {
            return;
        };
        let by_type = text(member, "type").map(|t| t.rsplit('/').next().unwrap_or(t));
        let by_reference = text(member, "reference").and_then(|r| match r.strip_prefix('#') {
            Some(id) => self
                .scopes
                .last()
                .and_then(|s| s.contained.iter().find(|(cid, _)| *cid == Some(id)))
                .map(|(_, t)| *t),
            None => reference_type(r),
        });
        if by_reference.or(by_type).is_some_and(|t| t != "Practitioner") {
            self.broken(
                "ctm-1",
                "CareTeam.participant.onBehalfOf can only be populated when CareTeam.participant.member is a Practitioner",
                path,
            );
        }
    }

    /// ppc-1 (Consent): "Either a Policy or PolicyRule"; `policy.exists() or policyRule.exists()`.
    fn ppc_1(&mut self, map: &Map<String, Value>, path: &str) {
        if !exists(map, "policy") && !exists(map, "policyRule") {
            self.broken("ppc-1", "Either a Policy or PolicyRule", path);
        }
    }

    /// ppc-2 (Consent): "IF Scope=privacy, there must be a patient"; `patient.exists() or
    /// scope.coding.where(system='something' and code='patient-privacy').exists().not()`.
    /// ppc-3: "IF Scope=research, there must be a patient" (code 'research'); ppc-4: "IF Scope=adr,
    /// there must be a patient" ('adr'); ppc-5: "IF Scope=treatment, there must be a patient"
    /// ('treatment'). Checked against the consentscope system (module docs).
    fn ppc_2_to_5(&mut self, map: &Map<String, Value>, path: &str) {
        if exists(map, "patient") {
            return;
        }
        let rules: [(&'static str, &str, &str); 4] = [
            ("ppc-2", "patient-privacy", "IF Scope=privacy, there must be a patient"),
            ("ppc-3", "research", "IF Scope=research, there must be a patient"),
            ("ppc-4", "adr", "IF Scope=adr, there must be a patient"),
            ("ppc-5", "treatment", "IF Scope=treatment, there must be a patient"),
        ];
        let Some(scope) = map.get("scope").and_then(Value::as_object) else {
            return;
        };
        for (key, code, human) in rules {
            let coded = items(scope, "coding")
                .any(|(_, c)| text(c, "system") == Some(CONSENT_SCOPE) && text(c, "code") == Some(code));
            if coded {
                self.broken(key, human, path);
            }
        }
    }

    /// grp-1 (Group): "Can only have members if group is \"actual\""; `member.empty() or (actual =
    /// true)`.
    fn grp_1(&mut self, map: &Map<String, Value>, path: &str) {
        if present(map.get("member")) && map.get("actual") != Some(&Value::Bool(true)) {
            self.broken("grp-1", "Can only have members if group is \"actual\"", path);
        }
    }

    /// org-1 (Organization): "The organization SHALL at least have a name or an identifier, and
    /// possibly more than one"; `(identifier.count() + name.count()) > 0`.
    fn org_1(&mut self, map: &Map<String, Value>, path: &str) {
        if !exists(map, "identifier") && !exists(map, "name") {
            self.broken(
                "org-1",
                "The organization SHALL at least have a name or an identifier, and possibly more than one",
                path,
            );
        }
    }

    /// org-2 (Organization.address): "An address of an organization can never be of use 'home'";
    /// org-3 (Organization.telecom): "The telecom of an organization can never be of use 'home'";
    /// both `where(use = 'home').empty()`.
    fn org_2_and_3(&mut self, map: &Map<String, Value>, path: &str) {
        for (element, key, human) in [
            (
                "address",
                "org-2",
                "An address of an organization can never be of use 'home'",
            ),
            (
                "telecom",
                "org-3",
                "The telecom of an organization can never be of use 'home'",
            ),
        ] {
            for (i, item) in items(map, element) {
                if text(item, "use") == Some("home") {
                    self.broken(key, human, &format!("{path}.{element}[{i}]"));
                }
            }
        }
    }

    /// pat-1 (Patient.contact): "SHALL at least contain a contact's details or a reference to an
    /// organization"; `name.exists() or telecom.exists() or address.exists() or
    /// organization.exists()`.
    fn pat_1(&mut self, map: &Map<String, Value>, path: &str) {
        if !["name", "telecom", "address", "organization"]
            .iter()
            .any(|k| exists(map, k))
        {
            self.broken(
                "pat-1",
                "SHALL at least contain a contact's details or a reference to an organization",
                path,
            );
        }
    }

    /// sev-1 (AuditEvent.entity): "Either a name or a query (NOT both)"; `name.empty() or
    /// query.empty()`.
    fn sev_1(&mut self, map: &Map<String, Value>, path: &str) {
        if exists(map, "name") && exists(map, "query") {
            self.broken("sev-1", "Either a name or a query (NOT both)", path);
        }
    }

    // --- Data types -----------------------------------------------------------------------------

    /// ext-1 (Extension): "Must have either extensions or value[x], not both";
    /// `extension.exists() != value.exists()`.
    fn ext_1(&mut self, map: &Map<String, Value>, path: &str) {
        if exists(map, "extension") == choice_exists(map, "value") {
            self.broken("ext-1", "Must have either extensions or value[x], not both", path);
        }
    }

    /// ref-1 (Reference): "SHALL have a contained resource if a local reference is provided";
    /// `reference.startsWith('#').not() or (reference.substring(1).trace('url') in
    /// %rootResource.contained.id.trace('ids'))`. `#` alone names the containing resource
    /// (references.html#contained) and is allowed.
    fn ref_1(&mut self, map: &'a Map<String, Value>, path: &str) {
        let Some(reference) = text(map, "reference").filter(|r| r.starts_with('#')) else {
            return;
        };
        self.local_ref(reference);
        let id = &reference[1..];
        if id.is_empty() {
            return;
        }
        let known = self
            .scopes
            .last()
            .is_some_and(|s| s.contained.iter().any(|(cid, _)| *cid == Some(id)));
        if !known {
            self.broken(
                "ref-1",
                "SHALL have a contained resource if a local reference is provided",
                path,
            );
        }
    }

    /// per-1 (Period): "If present, start SHALL have a lower value than end";
    /// `start.hasValue().not() or end.hasValue().not() or (start <= end)`. Refused only when the
    /// end is surely before the start: `2026-03` and `2026-03-15` compare as unknown, which holds.
    fn per_1(&mut self, map: &Map<String, Value>, path: &str) {
        let range = |k: &str| text(map, k).and_then(dates::parse_range);
        if let (Some(start), Some(end)) = (range("start"), range("end")) {
            if start.low > end.high {
                self.broken("per-1", "If present, start SHALL have a lower value than end", path);
            }
        }
    }

    /// cpt-2 (ContactPoint): "A system is required if a value is provided."; `value.empty() or
    /// system.exists()`.
    fn cpt_2(&mut self, map: &Map<String, Value>, path: &str) {
        if exists(map, "value") && !exists(map, "system") {
            self.broken("cpt-2", "A system is required if a value is provided.", path);
        }
    }

    /// att-1 (Attachment): "If the Attachment has data, it SHALL have a contentType";
    /// `data.empty() or contentType.exists()`.
    fn att_1(&mut self, map: &Map<String, Value>, path: &str) {
        if exists(map, "data") && !exists(map, "contentType") {
            self.broken("att-1", "If the Attachment has data, it SHALL have a contentType", path);
        }
    }

    /// qty-3 (Quantity, and the types made from it: Age, Count, Distance, Duration,
    /// SimpleQuantity): "If a code for the unit is present, the system SHALL also be present";
    /// `code.empty() or system.exists()`.
    fn qty_3(&mut self, map: &Map<String, Value>, path: &str) {
        if exists(map, "code") && !exists(map, "system") {
            self.broken(
                "qty-3",
                "If a code for the unit is present, the system SHALL also be present",
                path,
            );
        }
    }

    /// sqty-1 (SimpleQuantity: Range.low and high, SampledData.origin, the doses of Dosage): "The
    /// comparator is not used on a SimpleQuantity"; `comparator.empty()`.
    fn sqty_1(&mut self, map: &Map<String, Value>, path: &str) {
        if exists(map, "comparator") {
            self.broken("sqty-1", "The comparator is not used on a SimpleQuantity", path);
        }
    }

    /// The three parts that Age, Count and Distance share: a code when there is a value, UCUM as
    /// the system.
    fn coded_ucum(map: &Map<String, Value>) -> bool {
        (exists(map, "code") || !exists(map, "value")) && (!exists(map, "system") || text(map, "system") == Some(UCUM))
    }

    /// age-1 (Age): "There SHALL be a code if there is a value and it SHALL be an expression of
    /// time.  If system is present, it SHALL be UCUM.  If value is present, it SHALL be positive.";
    /// `(code.exists() or value.empty()) and (system.empty() or system = %ucum) and (value.empty()
    /// or value.hasValue().not() or value > 0)`.
    fn age_1(&mut self, map: &Map<String, Value>, path: &str) {
        let positive = number(map, "value").is_none_or(|v| v > 0.0);
        if !(Self::coded_ucum(map) && positive) {
            self.broken(
                "age-1",
                "There SHALL be a code if there is a value and it SHALL be an expression of time.  If system is present, it SHALL be UCUM.  If value is present, it SHALL be positive.",
                path,
            );
        }
    }

    /// cnt-3 (Count): "There SHALL be a code with a value of \"1\" if there is a value. If system
    /// is present, it SHALL be UCUM.  If present, the value SHALL be a whole number.";
    /// `(code.exists() or value.empty()) and (system.empty() or system = %ucum) and (code.empty()
    /// or code = '1') and (value.empty() or value.hasValue().not() or
    /// value.toString().contains('.').not())`.
    fn cnt_3(&mut self, map: &Map<String, Value>, path: &str) {
        let code_one = !exists(map, "code") || text(map, "code") == Some("1");
        let whole = map
            .get("value")
            .and_then(Value::as_number)
            .is_none_or(|n| !n.to_string().contains(['.', 'e', 'E']));
        if !(Self::coded_ucum(map) && code_one && whole) {
            self.broken(
                "cnt-3",
                "There SHALL be a code with a value of \"1\" if there is a value. If system is present, it SHALL be UCUM.  If present, the value SHALL be a whole number.",
                path,
            );
        }
    }

    /// dis-1 (Distance): "There SHALL be a code if there is a value and it SHALL be an expression
    /// of length.  If system is present, it SHALL be UCUM."; `(code.exists() or value.empty()) and
    /// (system.empty() or system = %ucum)`.
    fn dis_1(&mut self, map: &Map<String, Value>, path: &str) {
        if !Self::coded_ucum(map) {
            self.broken(
                "dis-1",
                "There SHALL be a code if there is a value and it SHALL be an expression of length.  If system is present, it SHALL be UCUM.",
                path,
            );
        }
    }

    /// drt-1 (Duration): "There SHALL be a code if there is a value and it SHALL be an expression
    /// of time.  If system is present, it SHALL be UCUM."; `code.exists() implies ((system = %ucum)
    /// and value.exists())`.
    fn drt_1(&mut self, map: &Map<String, Value>, path: &str) {
        if exists(map, "code") && !(text(map, "system") == Some(UCUM) && exists(map, "value")) {
            self.broken(
                "drt-1",
                "There SHALL be a code if there is a value and it SHALL be an expression of time.  If system is present, it SHALL be UCUM.",
                path,
            );
        }
    }

    /// rng-2 (Range): "If present, low SHALL have a lower value than high"; `low.empty() or
    /// high.empty() or (low <= high)`. Compared when both have a value in the same unit.
    fn rng_2(&mut self, map: &Map<String, Value>, path: &str) {
        let low = map.get("low").and_then(Value::as_object);
        let high = map.get("high").and_then(Value::as_object);
        let (Some(low), Some(high)) = (low, high) else { return };
        fn unit(q: &Map<String, Value>) -> (Option<&str>, Option<&str>) {
            (text(q, "system"), text(q, "code").or(text(q, "unit")))
        }
        if let (Some(l), Some(h)) = (number(low, "value"), number(high, "value")) {
            if unit(low) == unit(high) && l > h {
                self.broken("rng-2", "If present, low SHALL have a lower value than high", path);
            }
        }
    }

    /// rat-1 (Ratio): "Numerator and denominator SHALL both be present, or both are absent. If
    /// both are absent, there SHALL be some extension present"; `(numerator.empty() xor
    /// denominator.exists()) and (numerator.exists() or extension.exists())`.
    fn rat_1(&mut self, map: &Map<String, Value>, path: &str) {
        let (n, d) = (exists(map, "numerator"), exists(map, "denominator"));
        if (!n ^ d) && (n || exists(map, "extension")) {
            return;
        }
        self.broken(
            "rat-1",
            "Numerator and denominator SHALL both be present, or both are absent. If both are absent, there SHALL be some extension present",
            path,
        );
    }

    /// tim-1, tim-2, tim-4..tim-10 (Timing.repeat).
    fn timing_repeat(&mut self, map: &Map<String, Value>, path: &str) {
        let has = |k: &str| exists(map, k);
        let rules: [(&'static str, &'static str, bool); 9] = [
            // tim-1: `duration.empty() or durationUnit.exists()`.
            (
                "tim-1",
                "if there's a duration, there needs to be duration units",
                !has("duration") || has("durationUnit"),
            ),
            // tim-2: `period.empty() or periodUnit.exists()`.
            (
                "tim-2",
                "if there's a period, there needs to be period units",
                !has("period") || has("periodUnit"),
            ),
            // tim-4: `duration.exists() implies duration >= 0`.
            (
                "tim-4",
                "duration SHALL be a non-negative value",
                number(map, "duration").is_none_or(|d| d >= 0.0),
            ),
            // tim-5: `period.exists() implies period >= 0`.
            (
                "tim-5",
                "period SHALL be a non-negative value",
                number(map, "period").is_none_or(|p| p >= 0.0),
            ),
            // tim-6: `periodMax.empty() or period.exists()`.
            (
                "tim-6",
                "If there's a periodMax, there must be a period",
                !has("periodMax") || has("period"),
            ),
            // tim-7: `durationMax.empty() or duration.exists()`.
            (
                "tim-7",
                "If there's a durationMax, there must be a duration",
                !has("durationMax") || has("duration"),
            ),
            // tim-8: `countMax.empty() or count.exists()`.
            (
                "tim-8",
                "If there's a countMax, there must be a count",
                !has("countMax") || has("count"),
            ),
            // tim-9: `offset.empty() or (when.exists() and ((when in ('C' | 'CM' | 'CD' |
            // 'CV')).not()))`.
            (
                "tim-9",
                "If there's an offset, there must be a when (and not C, CM, CD, CV)",
                !has("offset")
                    || (has("when")
                        && !map
                            .get("when")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                            .any(|w| matches!(w.as_str(), Some("C" | "CM" | "CD" | "CV")))),
            ),
            // tim-10: `timeOfDay.empty() or when.empty()`.
            (
                "tim-10",
                "If there's a timeOfDay, there cannot be a when, or vice versa",
                !has("timeOfDay") || !has("when"),
            ),
        ];
        for (key, human, holds) in rules {
            if !holds {
                self.broken(key, human, path);
            }
        }
    }

    /// drq-1 (DataRequirement.codeFilter), drq-2 (DataRequirement.dateFilter): "Either a path or a
    /// searchParam must be provided, but not both"; `path.exists() xor searchParam.exists()`.
    fn drq(&mut self, map: &Map<String, Value>, path: &str, key: &'static str) {
        if exists(map, "path") == exists(map, "searchParam") {
            self.broken(
                key,
                "Either a path or a searchParam must be provided, but not both",
                path,
            );
        }
    }

    /// exp-1 (Expression): "An expression or a reference must be provided"; `expression.exists()
    /// or reference.exists()`.
    fn exp_1(&mut self, map: &Map<String, Value>, path: &str) {
        if !exists(map, "expression") && !exists(map, "reference") {
            self.broken("exp-1", "An expression or a reference must be provided", path);
        }
    }

    /// trd-1..trd-3 (TriggerDefinition).
    fn trd(&mut self, map: &Map<String, Value>, path: &str) {
        let data = exists(map, "data");
        let timing = choice_exists(map, "timing");
        // trd-1: "Either timing, or a data requirement, but not both"; `data.empty() or
        // timing.empty()`.
        if data && timing {
            self.broken("trd-1", "Either timing, or a data requirement, but not both", path);
        }
        // trd-2: "A condition only if there is a data requirement"; `condition.exists() implies
        // data.exists()`.
        if exists(map, "condition") && !data {
            self.broken("trd-2", "A condition only if there is a data requirement", path);
        }
        // trd-3: "A named event requires a name, a periodic event requires timing, and a data
        // event requires data"; `(type = 'named-event' implies name.exists()) and (type =
        // 'periodic' implies timing.exists()) and (type.startsWith('data-') implies
        // data.exists())`.
        let kind = text(map, "type").unwrap_or("");
        let holds = (kind != "named-event" || exists(map, "name"))
            && (kind != "periodic" || timing)
            && (!kind.starts_with("data-") || data);
        if !holds {
            self.broken(
                "trd-3",
                "A named event requires a name, a periodic event requires timing, and a data event requires data",
                path,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::{parse_resource, Format};
    use serde_json::json;

    /// Every key this module enforces.
    const KEYS: [&str; 52] = [
        "app-1",
        "app-2",
        "app-3",
        "app-4",
        "appointment-period",
        "ctm-1",
        "ppc-1",
        "ppc-2",
        "ppc-3",
        "ppc-4",
        "ppc-5",
        "grp-1",
        "org-1",
        "org-2",
        "org-3",
        "pat-1",
        "sev-1",
        "dom-2",
        "dom-3",
        "dom-4",
        "dom-5",
        "ele-1",
        "ext-1",
        "txt-1",
        "txt-2",
        "ref-1",
        "per-1",
        "cpt-2",
        "att-1",
        "qty-3",
        "sqty-1",
        "age-1",
        "cnt-3",
        "dis-1",
        "drt-1",
        "rng-2",
        "rat-1",
        "tim-1",
        "tim-2",
        "tim-4",
        "tim-5",
        "tim-6",
        "tim-7",
        "tim-8",
        "tim-9",
        "tim-10",
        "drq-1",
        "drq-2",
        "exp-1",
        "trd-1",
        "trd-2",
        "trd-3",
    ];

    fn parsed(v: &Value) -> Result<Value, Error> {
        parse_resource(v.to_string().as_bytes(), Format::Json)
    }

    fn broken(v: &Value) -> Vec<BrokenInvariant> {
        match parsed(v) {
            Err(Error::Invariant(b)) => b,
            other => panic!("{v}: {other:?}"),
        }
    }

    fn keys(b: &[BrokenInvariant]) -> Vec<&str> {
        b.iter()
            .map(|b| b.diagnostics.split(':').next().unwrap_or(""))
            .collect()
    }

    #[test]
    fn each_key_is_refused_with_its_path_and_its_passing_example_accepted() {
        let table: Value = serde_json::from_str(include_str!("../../tests/fixtures/invariants.json")).unwrap();
        let rows = table["rows"].as_array().unwrap();
        for row in rows {
            let (key, path) = (row["key"].as_str().unwrap(), row["path"].as_str().unwrap());
            let found = broken(&row["refused"]);
            assert_eq!(keys(&found), [key], "{key}: {found:?}");
            assert_eq!(found[0].expression, path, "{key}");
            assert!(
                !found[0].diagnostics[key.len() + 2..].is_empty(),
                "{key}: the human text"
            );
            if let Err(e) = parsed(&row["accepted"]) {
                panic!("{key}: the passing example is refused: {e}");
            }
        }
        let listed: Vec<&str> = rows.iter().map(|r| r["key"].as_str().unwrap()).collect();
        assert_eq!(listed, KEYS, "one row per key, in this order");
    }

    #[test]
    fn the_official_examples_keep_every_invariant() {
        let mut dirs = vec![concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/r4/json").to_string()];
        // The full corpus beside the repository, when there is one (the fixtures are a copy of part of it).
        let shared = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fhir/json");
        if std::path::Path::new(shared).is_dir() {
            dirs.push(shared.to_string());
        }
        let mut checked = 0;
        for dir in dirs {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                let body = std::fs::read(&path).unwrap();
                let value: Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(violations(&value), [], "{}", path.display());
                // A transaction or batch leaves its entries to their processing: check them here.
                for (i, entry) in value["entry"].as_array().into_iter().flatten().enumerate() {
                    if entry["resource"].is_object() {
                        assert_eq!(violations(&entry["resource"]), [], "{} entry {i}", path.display());
                    }
                }
                checked += 1;
            }
        }
        assert!(checked >= 77, "{checked} examples");
        // The XML copies, through the parser.
        let xml = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/r4/xml");
        for entry in std::fs::read_dir(xml).unwrap() {
            let path = entry.unwrap().path();
            let body = std::fs::read(&path).unwrap();
            if let Err(e) = parse_resource(&body, Format::Xml) {
                panic!("{}: {e}", path.display());
            }
        }
    }

    #[test]
    fn primitives_references_and_appointments_at_the_edges() {
        // ele-1 on a primitive: an id alone is not a value; an extension is.
        let p = json!({"resourceType": "Patient", "_birthDate": {"id": "b"}});
        assert_eq!(broken(&p)[0].expression, "Patient.birthDate");
        let p = json!({"resourceType": "Patient", "name": [{"given": ["Ann", null], "_given": [null, {"id": "g"}]}]});
        assert_eq!(broken(&p)[0].expression, "Patient.name[0].given[1]");
        let p = json!({"resourceType": "Patient", "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}]}});
        assert!(parsed(&p).is_ok());
        // ext-1 inside a primitive's extensions, with its path.
        let p =
            json!({"resourceType": "Patient", "birthDate": "1980", "_birthDate": {"extension": [{"url": "urn:x"}]}});
        assert_eq!(broken(&p)[0].expression, "Patient.birthDate.extension[0]");
        // `#` names the container (a contained resource that refers back to it passes dom-3).
        let p = json!({"resourceType": "Patient", "id": "p",
            "contained": [{"resourceType": "Organization", "id": "o", "name": "C",
                           "extension": [{"url": "urn:x", "valueReference": {"reference": "#"}}]}]});
        assert!(parsed(&p).is_ok());
        // A contained resource named by a canonical or uri elsewhere counts as referred to.
        let p = json!({"resourceType": "Patient", "contained": [{"resourceType": "Organization", "id": "o", "name": "C"}],
            "extension": [{"url": "urn:x", "valueUri": "#o"}]});
        assert!(parsed(&p).is_ok());
        // ctm-1 places the member by its contained resource, or by Reference.type.
        let team = |member: Value| {
            json!({"resourceType": "CareTeam", "status": "active",
            "contained": [{"resourceType": "Patient", "id": "c"}],
            "participant": [{"member": member, "onBehalfOf": {"display": "Clinic"}}],
            "subject": {"reference": "#c"}})
        };
        assert_eq!(keys(&broken(&team(json!({"reference": "#c"})))), ["ctm-1"]);
        assert_eq!(
            keys(&broken(&team(json!({"type": "Patient", "identifier": {"value": "7"}})))),
            ["ctm-1"]
        );
        assert!(parsed(&team(json!({"type": "Practitioner", "identifier": {"value": "7"}}))).is_ok());
        assert!(
            parsed(&team(json!({"display": "Someone"}))).is_ok(),
            "a member that cannot be placed passes"
        );
        // app-4: R4's no-show status is `noshow`.
        let a = json!({"resourceType": "Appointment", "status": "noshow", "cancelationReason": {"text": "x"},
            "start": "2026-12-01T10:00:00Z", "end": "2026-12-01T11:00:00Z", "participant": [{"type": [{"text": "t"}], "status": "accepted"}]});
        assert!(parsed(&a).is_ok());
        // A session does not end before it starts; time zones count, and ending as it starts is R4.
        let mut a = a.clone();
        a["status"] = json!("booked");
        a.as_object_mut().unwrap().remove("cancelationReason");
        a["end"] = json!("2026-12-01T11:59:59+02:00");
        let found = broken(&a);
        assert_eq!(keys(&found), ["appointment-period"]);
        assert!(
            found[0]
                .diagnostics
                .contains("Appointment.end is before Appointment.start"),
            "{found:?}"
        );
        a["end"] = json!("2026-12-01T12:00:00+02:00");
        assert!(parsed(&a).is_ok());
        // A booked session without an end breaks app-2 and app-3, both reported.
        a.as_object_mut().unwrap().remove("end");
        assert_eq!(keys(&broken(&a)), ["app-2", "app-3"]);
        // per-1 compares instants across zones; rng-2 leaves quantities of different units alone.
        let period = |start: &str, end: &str| json!({"resourceType": "Patient", "name": [{"family": "L", "period": {"start": start, "end": end}}]});
        assert!(parsed(&period("2026-01-01T10:00:00+01:00", "2026-01-01T09:30:00Z")).is_ok());
        assert_eq!(
            keys(&broken(&period("2026-01-01T10:00:00Z", "2026-01-01T10:30:00+01:00"))),
            ["per-1"]
        );
        let range = json!({"resourceType": "Patient", "extension": [{"url": "urn:x", "valueRange": {
            "low": {"value": 2, "system": "http://unitsofmeasure.org", "code": "h"},
            "high": {"value": 30, "system": "http://unitsofmeasure.org", "code": "min"}}}]});
        assert!(parsed(&range).is_ok());
        // ppc-2 asks for the consentscope system.
        let consent = json!({"resourceType": "Consent", "status": "active", "category": [{"text": "x"}], "policyRule": {"text": "x"},
            "scope": {"coding": [{"system": "urn:other", "code": "patient-privacy"}]}});
        assert!(parsed(&consent).is_ok());
    }

    #[test]
    fn resources_nested_in_a_contained_one_break_dom_2_without_confusing_the_walk() {
        let inner: Vec<Value> = (0..3)
            .map(|i| {
                json!({"resourceType": "Organization", "id": format!("i{i}"), "name": "I",
                "extension": [{"url": "urn:x", "valueReference": {"reference": "#"}}]})
            })
            .collect();
        let p = json!({"resourceType": "Patient", "contained": [{"resourceType": "Organization", "id": "o", "name": "O", "contained": inner}],
            "managingOrganization": {"reference": "#o"}});
        assert_eq!(keys(&broken(&p)), ["dom-2"]);
    }

    #[test]
    fn types_the_table_does_not_hold_are_checked_without_types() {
        // A contained Medication: its primitives' parts, extensions and references.
        let with = |medication: Value| {
            json!({"resourceType": "Patient", "contained": [medication],
            "extension": [{"url": "urn:x", "valueReference": {"reference": "#m"}}]})
        };
        let ok = with(
            json!({"resourceType": "Medication", "id": "m", "status": "active", "_status": {"id": "s"},
            "code": {"text": "x"}, "manufacturer": {"reference": "#"}}),
        );
        assert_eq!(violations(&ok), []);
        let bad = with(json!({"resourceType": "Medication", "id": "m", "_status": {"id": "s"},
            "extension": [{"url": "urn:y"}], "manufacturer": {"reference": "#nope"}}));
        let found: Vec<String> = violations(&bad)
            .iter()
            .map(|v| format!("{} {}", v.key, v.path))
            .collect();
        assert_eq!(
            found,
            [
                "ele-1 Patient.contained[0].status",
                "ext-1 Patient.contained[0].extension[0]",
                "ref-1 Patient.contained[0].manufacturer"
            ]
        );
    }

    #[test]
    fn every_broken_invariant_is_listed_up_to_a_bound() {
        let telecom: Vec<Value> = (0..30).map(|i| json!({"value": format!("555-{i}")})).collect();
        let p = json!({"resourceType": "Patient", "telecom": telecom});
        let found = broken(&p);
        assert_eq!(found.len(), MOST_REPORTED);
        assert_eq!(found[3].expression, "Patient.telecom[3]");
        assert_eq!(violations(&p).len(), 30);
    }

    #[test]
    fn bundles_processed_entry_by_entry_leave_their_entries_to_that() {
        let bad = json!({"resourceType": "Patient", "telecom": [{"value": "555"}]});
        for kind in ["transaction", "batch"] {
            let b = json!({"resourceType": "Bundle", "type": kind, "entry": [{"resource": bad, "request": {"method": "POST", "url": "Patient"}}]});
            assert!(parsed(&b).is_ok(), "{kind}");
        }
        let collection = json!({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": bad}]});
        assert_eq!(broken(&collection)[0].expression, "Bundle.entry[0].resource.telecom[0]");
        let Err(Error::Invariant(found)) = check_at(&bad, "Bundle.entry[2].resource") else {
            panic!()
        };
        assert_eq!(found[0].expression, "Bundle.entry[2].resource.telecom[0]");
    }

    #[test]
    fn a_narrative_that_is_not_xhtml_is_a_structure_error() {
        let p = json!({"resourceType": "Patient", "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>open</div>"}});
        match parsed(&p) {
            Err(Error::Structure(m)) => assert!(m.starts_with("Patient.text.div: "), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn literal_references_name_their_type() {
        for (reference, t) in [
            ("Practitioner/1", Some("Practitioner")),
            ("https://ehr.example.org/fhir/Patient/7/_history/2", Some("Patient")),
            ("Patient/7/_history/2", Some("Patient")),
            ("urn:uuid:0b5d8a2c-9a4e-4e38-9c1d-2f0a3cbd1e01", None),
            ("#c", None),
            ("7", None),
            ("Patient?identifier=x|1", None),
        ] {
            assert_eq!(reference_type(reference), t, "{reference}");
        }
    }
}
