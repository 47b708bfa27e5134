//! Search parameters of the hosted types, read from the official R4 SearchParameter definitions
//! (`r4-search-parameters.json`: hl7.fhir.r4.core 4.0.1, the entries whose base is one of our types,
//! Resource or DomainResource; HL7, CC0). Each FHIRPath expression is compiled into a [`Path`] that
//! [`super::index`] walks at write time.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde::Deserialize;

use super::ResourceType;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    Number,
    Date,
    String,
    Token,
    Reference,
    Composite,
    Quantity,
    Uri,
    Special,
}

impl ParamType {
    pub fn as_str(&self) -> &'static str {
        match self {
            ParamType::Number => "number",
            ParamType::Date => "date",
            ParamType::String => "string",
            ParamType::Token => "token",
            ParamType::Reference => "reference",
            ParamType::Composite => "composite",
            ParamType::Quantity => "quantity",
            ParamType::Uri => "uri",
            ParamType::Special => "special",
        }
    }
}

/// One step of a compiled search-parameter path.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// A child element; `choice` narrows a choice element (`value as CodeableConcept`).
    Field { name: String, choice: Option<String> },
    /// `.where(resolve() is Type)`: keep references whose target has this type.
    ResolvesTo(String),
    /// `.where(field='value')`.
    WhereEquals { field: String, value: String },
}

/// How a parameter's values are found in a resource.
#[derive(Debug, Clone, PartialEq)]
pub enum Path {
    /// Follow the steps from the resource root; every node reached is a value.
    Steps(Vec<Step>),
    /// `X.exists() and X != false`: a boolean token that is true when X holds anything but `false`.
    PresentAndNotFalse(Vec<Step>),
}

#[derive(Debug, Clone)]
pub struct SearchParam {
    pub code: String,
    /// The canonical URL of the parameter's definition.
    pub url: String,
    pub kind: ParamType,
    pub description: String,
    /// The reference target types, for reference parameters.
    pub targets: Vec<String>,
    /// For a composite parameter: each component's type and path relative to a node of `paths`.
    pub components: Vec<(ParamType, Vec<Step>)>,
    /// The paths for this resource type (a union); empty when the server handles the parameter
    /// natively (`_id`, `_lastUpdated`) or when the definition has no expression (`_text`).
    pub paths: Vec<Path>,
}

#[derive(Deserialize)]
struct DefinitionBundle {
    entry: Vec<DefinitionEntry>,
}

#[derive(Deserialize)]
struct DefinitionEntry {
    resource: Definition,
}

#[derive(Deserialize)]
struct Definition {
    url: String,
    code: String,
    #[serde(rename = "type")]
    kind: ParamType,
    base: Vec<String>,
    #[serde(default)]
    description: String,
    expression: Option<String>,
    #[serde(default)]
    target: Vec<String>,
    #[serde(default)]
    component: Vec<ComponentDefinition>,
}

#[derive(Deserialize)]
struct ComponentDefinition {
    definition: String,
    expression: String,
}

static DEFINITIONS: &str = include_str!("r4-search-parameters.json");
/// Parameters tandem defines itself (the `group` of a group session), in the same format.
static OWN_DEFINITIONS: &str = include_str!("tandem-search-parameters.json");

/// tandem's own SearchParameter resources as they are published (their url under the default
/// canonical base).
pub fn own_definitions() -> Vec<serde_json::Value> {
    let bundle: serde_json::Value = serde_json::from_str(OWN_DEFINITIONS).unwrap_or_default();
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["resource"].clone())
        .collect()
}

static BY_TYPE: LazyLock<BTreeMap<ResourceType, Vec<SearchParam>>> = LazyLock::new(|| {
    // The file is compiled into the binary and checked by a unit test: it cannot fail at run time.
    #[allow(clippy::expect_used)]
    let bundle: DefinitionBundle = serde_json::from_str(DEFINITIONS).expect("embedded R4 search parameter definitions");
    #[allow(clippy::expect_used)]
    let own: DefinitionBundle =
        serde_json::from_str(OWN_DEFINITIONS).expect("embedded tandem search parameter definitions");
    let mut map = BTreeMap::new();
    for rt in ResourceType::all() {
        let mut params: Vec<SearchParam> = bundle
            .entry
            .iter()
            .chain(own.entry.iter())
            .map(|e| &e.resource)
            .filter(|d| {
                d.base
                    .iter()
                    .any(|b| b == rt.as_str() || b == "Resource" || b == "DomainResource")
            })
            .map(|d| compile(rt, d, &bundle.entry))
            .collect();
        params.sort_by(|a, b| a.code.cmp(&b.code));
        map.insert(rt, params);
    }
    map
});

impl SearchParam {
    /// Whether this server can search by it: a type whose values it indexes (not composite or
    /// special) and either a path to index or native handling (`_id`, `_lastUpdated`).
    pub fn is_searchable(&self) -> bool {
        let native = matches!(self.code.as_str(), "_id" | "_lastUpdated");
        match self.kind {
            // near is the one special parameter of our types: positions are indexed for it.
            ParamType::Special => self.code == "near" && !self.paths.is_empty(),
            // Composites of two components, a token or a reference then a token, are indexed as pairs.
            ParamType::Composite => {
                !self.paths.is_empty()
                    && matches!(
                        self.components.as_slice(),
                        [(ParamType::Token | ParamType::Reference, _), (ParamType::Token, _)]
                    )
            }
            _ => native || !self.paths.is_empty(),
        }
    }
}

pub(super) fn for_type(rt: ResourceType) -> &'static [SearchParam] {
    BY_TYPE.get(&rt).map(Vec::as_slice).unwrap_or(&[])
}

/// Forces the definitions to be parsed (call at start-up, so the first request does not pay for it).
pub fn load() {
    LazyLock::force(&BY_TYPE);
}

/// A composite component's expression. R4's DocumentReference-relationship gives its components'
/// expressions crossed — `code` for the relatesto (reference) component, `target` for the relation
/// (token) one — so that neither could ever match; the parameter means relatesto = `target` and
/// relation = `code` (`relationship=DocumentReference/1$replaces`), as Microsoft's FHIR Server
/// pairs them.
fn component_expression<'a>(param_url: &str, component: &str, expression: &'a str) -> &'a str {
    match (param_url, component, expression) {
        (
            "http://hl7.org/fhir/SearchParameter/DocumentReference-relationship",
            "http://hl7.org/fhir/SearchParameter/DocumentReference-relatesto",
            "code",
        ) => "target",
        (
            "http://hl7.org/fhir/SearchParameter/DocumentReference-relationship",
            "http://hl7.org/fhir/SearchParameter/DocumentReference-relation",
            "target",
        ) => "code",
        _ => expression,
    }
}

fn compile(rt: ResourceType, def: &Definition, all: &[DefinitionEntry]) -> SearchParam {
    // A component is named by its definition's URL; its type is that definition's type.
    let components = def
        .component
        .iter()
        .filter_map(|c| {
            let kind = all.iter().find(|e| e.resource.url == c.definition)?.resource.kind;
            let steps = split_dots(component_expression(&def.url, &c.definition, &c.expression))
                .into_iter()
                .map(compile_step)
                .collect::<Option<Vec<_>>>()?;
            Some((kind, fold_as(steps)))
        })
        .collect();
    let native = matches!(def.code.as_str(), "_id" | "_lastUpdated");
    let paths = match (&def.expression, native) {
        (Some(expr), false) => split_union(expr)
            .into_iter()
            .filter_map(|branch| compile_branch(rt, branch))
            .collect(),
        _ => Vec::new(),
    };
    SearchParam {
        code: def.code.clone(),
        url: def.url.clone(),
        kind: def.kind,
        description: def.description.clone(),
        targets: def.target.clone(),
        components,
        paths,
    }
}

/// Splits `a | b | (c as T)` at the top-level `|`.
fn split_union(expr: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in expr.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            '|' if depth == 0 => {
                parts.push(expr[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(expr[start..].trim());
    parts
}

/// Compiles one branch if it applies to `rt` (it starts with `rt.` or `Resource.`).
fn compile_branch(rt: ResourceType, branch: &str) -> Option<Path> {
    let mut b = branch.trim();
    while b.starts_with('(') && b.ends_with(')') {
        b = b[1..b.len() - 1].trim();
    }
    if let Some((left, _)) = b.split_once(" and ") {
        // `Patient.deceased.exists() and Patient.deceased != false`
        let base = left.trim().strip_suffix(".exists()")?;
        return compile_steps(rt, base).map(Path::PresentAndNotFalse);
    }
    let (path, choice) = match b.split_once(" as ") {
        Some((p, t)) => (p.trim(), Some(t.trim().to_string())),
        None => (b, None),
    };
    let mut steps = compile_steps(rt, path)?;
    if let (Some(t), Some(Step::Field { choice, .. })) = (choice, steps.last_mut()) {
        *choice = Some(t);
    }
    Some(Path::Steps(steps))
}

fn compile_steps(rt: ResourceType, path: &str) -> Option<Vec<Step>> {
    let segments = split_dots(path);
    let (root, rest) = segments.split_first()?;
    if *root != rt.as_str() && *root != "Resource" && *root != "DomainResource" {
        return None;
    }
    rest.iter()
        .map(|s| compile_step(s))
        .collect::<Option<Vec<_>>>()
        .map(fold_as)
}

/// `value.as(CodeableConcept)`: the type an `as()` names is the choice of the element before it
/// (`valueCodeableConcept`), not a child of that element.
fn fold_as(steps: Vec<Step>) -> Vec<Step> {
    let mut out: Vec<Step> = Vec::with_capacity(steps.len());
    for step in steps {
        match (step, out.last_mut()) {
            (
                Step::Field { name, choice: Some(t) },
                Some(Step::Field {
                    choice: previous @ None,
                    ..
                }),
            ) if name.is_empty() => {
                *previous = Some(t);
            }
            (step, _) => out.push(step),
        }
    }
    out
}

fn split_dots(path: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in path.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            '.' if depth == 0 => {
                parts.push(&path[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&path[start..]);
    parts
}

fn compile_step(segment: &str) -> Option<Step> {
    if let Some(inner) = segment.strip_prefix("where(").and_then(|s| s.strip_suffix(')')) {
        if let Some(t) = inner.strip_prefix("resolve() is ") {
            return Some(Step::ResolvesTo(t.trim().to_string()));
        }
        let (field, value) = inner.split_once('=')?;
        return Some(Step::WhereEquals {
            field: field.trim().to_string(),
            value: value.trim().trim_matches('\'').to_string(),
        });
    }
    if let Some(t) = segment.strip_prefix("as(").and_then(|s| s.strip_suffix(')')) {
        return Some(Step::Field {
            name: String::new(),
            choice: Some(t.to_string()),
        });
    }
    if segment.contains('(') || segment.contains('[') {
        return None; // a FHIRPath function we do not need for our types
    }
    Some(Step::Field {
        name: segment.to_string(),
        choice: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(rt: &str, code: &str) -> &'static SearchParam {
        let rt = ResourceType::parse(rt).unwrap();
        rt.search_params().iter().find(|p| p.code == code).unwrap()
    }

    #[test]
    fn every_hosted_type_gets_its_own_and_the_common_parameters() {
        for rt in ResourceType::all() {
            let codes: Vec<&str> = rt.search_params().iter().map(|p| p.code.as_str()).collect();
            for common in ["_id", "_lastUpdated", "_tag", "_profile", "_security", "_source"] {
                assert!(codes.contains(&common), "{rt} lacks {common}");
            }
        }
        assert_eq!(param("Appointment", "actor").kind, ParamType::Reference);
        assert_eq!(param("Patient", "birthdate").kind, ParamType::Date);
    }

    #[test]
    fn union_expressions_keep_only_the_branch_of_the_type() {
        let p = param("Practitioner", "address-city");
        assert_eq!(
            p.paths,
            vec![Path::Steps(vec![
                Step::Field {
                    name: "address".into(),
                    choice: None
                },
                Step::Field {
                    name: "city".into(),
                    choice: None
                },
            ])]
        );
    }

    #[test]
    fn where_and_as_are_compiled() {
        let p = param("Appointment", "patient");
        assert_eq!(
            p.paths,
            vec![Path::Steps(vec![
                Step::Field {
                    name: "participant".into(),
                    choice: None
                },
                Step::Field {
                    name: "actor".into(),
                    choice: None
                },
                Step::ResolvesTo("Patient".into()),
            ])]
        );
        let v = param("Group", "value");
        assert_eq!(v.paths.len(), 2);
        let d = param("Patient", "deceased");
        assert!(matches!(d.paths[0], Path::PresentAndNotFalse(_)));
        let e = param("Patient", "email");
        assert!(
            matches!(&e.paths[0], Path::Steps(s) if s.last() == Some(&Step::WhereEquals { field: "system".into(), value: "email".into() }))
        );
    }

    #[test]
    fn the_group_of_a_group_session_is_a_parameter_of_appointment() {
        let p = param("Appointment", "group");
        assert_eq!(p.kind, ParamType::Reference);
        assert_eq!(
            p.paths,
            vec![Path::Steps(vec![
                Step::Field {
                    name: "extension".into(),
                    choice: None
                },
                Step::WhereEquals {
                    field: "url".into(),
                    value: "http://hl7.org/fhir/5.0/StructureDefinition/extension-Appointment.subject".into()
                },
                Step::Field {
                    name: "value".into(),
                    choice: Some("Reference".into())
                },
            ])]
        );
        assert!(p.is_searchable());
        assert!(!param("Patient", "_text").is_searchable());
        let composite = param("Group", "characteristic-value");
        assert!(composite.is_searchable());
        assert_eq!(composite.components.len(), 2);
        assert!(param("Location", "near").is_searchable());
    }

    #[test]
    fn native_parameters_have_no_paths() {
        assert!(param("Patient", "_id").paths.is_empty());
        assert!(param("Patient", "_lastUpdated").paths.is_empty());
        assert!(!param("Patient", "_tag").paths.is_empty());
    }
}
