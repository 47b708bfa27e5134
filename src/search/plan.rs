//! Planning a search into SQL. Every criterion becomes a subquery that yields the ids of one type
//! (`SELECT res_id FROM idx_… WHERE res_type = ? AND param = ? AND …`), so chains and `_has` nest
//! naturally, and the top level is `r.res_id [NOT] IN (…)`: index lookups, never a JSON scan.
//! Placeholders are written `?` and numbered for PostgreSQL at the end ([`Sql::text_for`]).

use super::{reference_targets, split_pipe, unescape, Criterion, Key, Search, SortKey};
use crate::error::Error;
use crate::resources::compartment::{Notes, Reach};
use crate::resources::{compartment, dates, index, ParamType, ResourceType, SearchParam};

#[derive(Debug, Clone, PartialEq)]
pub enum Bind {
    Text(String),
    BigInt(i64),
    Double(f64),
}

/// SQL text with `?` placeholders and their values, in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sql {
    pub text: String,
    pub binds: Vec<Bind>,
    /// Conditions written for a probe of one candidate (EXISTS) leave out the redundant bounds that
    /// only help a criterion that lists its own matches: given them, a planner without statistics
    /// may search by the bound instead of by the candidate.
    pub probe: bool,
}

impl Sql {
    pub fn new(text: &str) -> Sql {
        Sql {
            text: text.to_string(),
            binds: Vec::new(),
            probe: false,
        }
    }

    pub fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    pub fn text_bind(&mut self, value: impl Into<String>) -> &mut Self {
        self.text.push('?');
        self.binds.push(Bind::Text(value.into()));
        self
    }

    /// The values as text binds separated by commas (`?, ?, ?`), for an `IN (…)` list.
    pub fn text_binds<S: Into<String>>(&mut self, values: impl IntoIterator<Item = S>) -> &mut Self {
        for (i, value) in values.into_iter().enumerate() {
            if i > 0 {
                self.text.push_str(", ");
            }
            self.text_bind(value);
        }
        self
    }

    pub fn int_bind(&mut self, value: i64) -> &mut Self {
        self.text.push('?');
        self.binds.push(Bind::BigInt(value));
        self
    }

    /// ` LIMIT n`, written into the text rather than bound: SQLite's planner reads a bound LIMIT, so
    /// binding one marks the statement for recompiling, and every search was compiled twice (once
    /// when prepared, again at its first step). A number the server chose, never the caller's text.
    pub fn limit(&mut self, n: i64) -> &mut Self {
        self.text.push_str(&format!(" LIMIT {n}"));
        self
    }

    pub fn float_bind(&mut self, value: f64) -> &mut Self {
        self.text.push('?');
        self.binds.push(Bind::Double(value));
        self
    }

    /// `column` holds `needle` as it is (no pattern, case-sensitive): SQLite's `instr`, which
    /// [`Sql::text_for`] writes as PostgreSQL's `strpos` (the same arguments and answer).
    pub fn contains(&mut self, column: &str, needle: &str) -> &mut Self {
        self.text.push_str("instr(");
        self.text.push_str(column);
        self.text.push_str(", ");
        self.text_bind(needle);
        self.text.push_str(") > 0");
        self
    }

    pub fn append(&mut self, other: &Sql) -> &mut Self {
        self.text.push_str(&other.text);
        self.binds.extend(other.binds.iter().cloned());
        self
    }

    /// The text in PostgreSQL's words or SQLite's: [`Sql::contains`]'s `instr(` is PostgreSQL's
    /// `strpos(` (the same arguments and answer). The `?` placeholders stay: diesel numbers them
    /// `$1, $2…` for PostgreSQL as it binds the values (store::fixed::Fixed::planned).
    pub fn text_for(&self, postgres: bool) -> std::borrow::Cow<'_, str> {
        if postgres {
            self.text.replace("instr(", "strpos(").into()
        } else {
            self.text.as_str().into()
        }
    }
}

/// Writes the condition of one value of a criterion (the values of a criterion are ORed).
type ValueCondition = fn(&mut Sql, &str, &Criterion) -> Result<(), Error>;

/// A set of resource ids of one type, or (negated) its complement.
struct Matching {
    negated: bool,
    /// `SELECT res_id FROM …`: the set, to drive a search (`r.res_id IN (…)`).
    ids: Sql,
    /// `SELECT 1 FROM … WHERE res_type = r.res_type AND res_id = r.res_id AND …`: the same test for
    /// one candidate, through the index table's owner index (`EXISTS (…)`). Range criteria have
    /// one, so that they check the candidates of a selective criterion instead of listing every
    /// resource in their range.
    probe: Option<Sql>,
}

/// The default order, and the key of keyset paging.
pub const KEYSET_ORDER: &str = "r.res_type ASC, r.res_id ASC";

/// A planned search: `FROM resources r WHERE …` and `ORDER BY …` (ending with the tie-breakers).
#[derive(Debug, Clone)]
pub struct Planned {
    pub from_where: Sql,
    pub order_by: Sql,
    /// True when the order is the default one, `r.res_type, r.res_id`: a key no write changes, so
    /// pages can be served by keyset (after the last row of the page before) with no snapshot.
    pub keyset: bool,
    /// Criteria that were ignored (unknown parameters), for the OperationOutcome of a lenient search.
    pub ignored: Vec<String>,
    /// The criteria that were applied, as `key=value` pairs, for the self link.
    pub applied: Vec<(String, String)>,
}

/// Which resources of a type a search may see ([`Reach`]), or `Err` none (403). Applied to the
/// types searched and to every type a chain or `_has` passes through, so that no criterion can
/// reveal what the caller could not read.
pub type Visibility<'a> = &'a dyn Fn(ResourceType) -> Result<Reach, Error>;

/// The visibility of the server's own reports (run on behalf of a full grant): every record but
/// the psychotherapy notes, which only their author sees.
pub fn see_everything(_: ResourceType) -> Result<Reach, Error> {
    Ok(Reach::unlimited(None))
}

/// The ids of `rt` in the compartment of any of `patients`, or None when `rt` is not in the Patient
/// compartment. Local references only: an absolute reference names another server's patient.
pub fn compartment_ids(rt: ResourceType, patients: &[String]) -> Option<Sql> {
    let params = compartment::patient_params(rt)?;
    if patients.is_empty() {
        return Some(Sql::new("SELECT res_id FROM resources WHERE 1 = 0"));
    }
    let mut sql = Sql::new("SELECT res_id FROM idx_reference WHERE target_type = 'Patient' AND target_id IN (");
    sql.text_binds(patients.iter().map(String::as_str))
        .push(") AND url IS NULL AND res_type = ")
        .text_bind(rt.as_str())
        .push(" AND param IN (")
        .text_binds(params.iter().copied())
        .push(")");
    if rt.as_str() == "Patient" {
        sql.push(" UNION SELECT res_id FROM resources WHERE res_type = 'Patient' AND res_id IN (")
            .text_binds(patients.iter().map(String::as_str))
            .push(")");
    }
    Some(sql)
}

/// The psychotherapy notes (DocumentReference labelled v3-ActCode PSYTHPN) a reader may not see:
/// every one but those `author` wrote (`SELECT res_id …`).
pub fn hidden_notes(author: Option<&str>) -> Sql {
    let mut sql = Sql::new(
        "SELECT res_id FROM idx_token WHERE res_type = 'DocumentReference' AND param = '_security' AND system = ",
    );
    sql.text_bind(key(compartment::ACT_CODE))
        .push(" AND code = ")
        .text_bind(key(compartment::PSYTHPN));
    if let Some(author) = author {
        sql.push(
            " AND res_id NOT IN (SELECT res_id FROM idx_reference WHERE res_type = 'DocumentReference' \
             AND param = 'author' AND target_type = 'Practitioner' AND url IS NULL AND target_id = ",
        )
        .text_bind(author)
        .push(")");
    }
    sql
}

/// The condition on `column` that keeps only the visible ids of `rt`, or None when every resource
/// of `rt` is visible.
fn visible_condition(column: &str, rt: ResourceType, visible: Visibility) -> Result<Option<Sql>, Error> {
    let reach = visible(rt)?;
    let mut parts = Vec::new();
    if let Some(ids) = reach.patients.as_deref().and_then(|p| compartment_ids(rt, p)) {
        let mut sql = Sql::new(&format!("{column} IN ("));
        sql.append(&ids).push(")");
        parts.push(sql);
    }
    if let (Notes::AuthoredBy(author), "DocumentReference") = (&reach.notes, rt.as_str()) {
        let mut sql = Sql::new(&format!("{column} NOT IN ("));
        sql.append(&hidden_notes(author.as_deref())).push(")");
        parts.push(sql);
    }
    let mut parts = parts.into_iter();
    let Some(mut sql) = parts.next() else { return Ok(None) };
    for more in parts {
        sql.push(" AND ").append(&more);
    }
    Ok(Some(sql))
}

/// The parameters a patient's own token may not search group sessions and Groups by: they are
/// read from every participant or member, and the patient's view holds only its own entry (a
/// `part-status=declined` match would tell that another member declined; `quantity`, how many).
const UNREDACTABLE: [(&str, &str); 2] = [("Appointment", "part-status"), ("Group", "quantity")];

/// Plans a search over one type, or several (whole-system search), showing only what `visible` allows.
pub fn plan(types: &[ResourceType], search: &Search, strict: bool, visible: Visibility) -> Result<Planned, Error> {
    let mut from_where = Sql::new("FROM resources r WHERE r.deleted = false AND ");
    match types {
        [rt] => {
            from_where.push("r.res_type = ").text_bind(rt.as_str());
            if let Some(cond) = visible_condition("r.res_id", *rt, visible)? {
                from_where.push(" AND ").append(&cond);
            }
        }
        _ => {
            let conditions = types
                .iter()
                .map(|rt| visible_condition("r.res_id", *rt, visible))
                .collect::<Result<Vec<_>, _>>()?;
            if conditions.iter().all(Option::is_none) {
                from_where
                    .push("r.res_type IN (")
                    .text_binds(types.iter().map(|rt| rt.as_str()))
                    .push(")");
            } else {
                from_where.push("(");
                for (i, (rt, cond)) in types.iter().zip(conditions).enumerate() {
                    if i > 0 {
                        from_where.push(" OR ");
                    }
                    from_where.push("(r.res_type = ").text_bind(rt.as_str());
                    if let Some(cond) = cond {
                        from_where.push(" AND ").append(&cond);
                    }
                    from_where.push(")");
                }
                from_where.push(")");
            }
        }
    }
    let mut ignored = Vec::new();
    let mut applied = Vec::new();
    let mut planned_criteria = Vec::new();
    let window = match types {
        [rt] => timeline_window(*rt, &search.criteria),
        _ => None,
    };
    for criterion in &search.criteria {
        let mut per_type = Vec::new();
        for rt in types {
            if let Some(m) = matching(*rt, &criterion.key, &criterion.values, criterion, visible)? {
                per_type.push((*rt, m));
            }
        }
        // A reference criterion of a search that also bounds the type's date reads only the
        // references in that window (the date criteria still check every candidate, as before).
        if let (Some(window), [(rt, m)]) = (window, per_type.as_mut_slice()) {
            if let Some(ids) = dated_reference_ids(*rt, criterion, window) {
                m.ids = ids;
            }
        }
        if per_type.is_empty() {
            if strict {
                return Err(Error::Invalid(format!(
                    "unknown search parameter '{}'",
                    criterion.raw_key
                )));
            }
            ignored.push(criterion.raw_key.clone());
            continue;
        }
        applied.push((
            criterion.raw_key.clone(),
            criterion
                .values
                .iter()
                .map(|v| v.replace(',', "\\,"))
                .collect::<Vec<_>>()
                .join(","),
        ));
        planned_criteria.push(per_type);
    }
    // Which criteria drive (IN) and which probe (EXISTS): with one type, a criterion without a probe
    // (an equality on a token, reference or id, a chain) drives, and range criteria check its
    // candidates through the owner index. With nothing else to drive, the first criterion does.
    let single = types.len() == 1;
    let mut driver_chosen = planned_criteria
        .iter()
        .any(|per_type| per_type.iter().any(|(_, m)| m.probe.is_none() && !m.negated));
    for per_type in planned_criteria {
        from_where.push(" AND ");
        if !single {
            from_where.push("(");
        }
        for (i, (rt, m)) in per_type.iter().enumerate() {
            if i > 0 {
                from_where.push(" OR ");
            }
            if !single {
                from_where.push("(r.res_type = ").text_bind(rt.as_str()).push(" AND ");
            }
            match &m.probe {
                Some(probe) if single && (driver_chosen || m.negated) => {
                    from_where
                        .push(if m.negated { "NOT EXISTS (" } else { "EXISTS (" })
                        .append(probe)
                        .push(")");
                }
                _ => {
                    driver_chosen |= !m.negated;
                    from_where
                        .push(if m.negated {
                            "r.res_id NOT IN ("
                        } else {
                            "r.res_id IN ("
                        })
                        .append(&m.ids)
                        .push(")");
                }
            }
            if !single {
                from_where.push(")");
            }
        }
        if !single {
            from_where.push(")");
        }
    }
    let order_by = order_by(types, &search.sort)?;
    Ok(Planned {
        from_where,
        order_by,
        keyset: search.sort.is_empty(),
        ignored,
        applied,
    })
}

/// Where the date criteria of a search place a match in time, on the type's timeline parameter
/// ([`ResourceType::timeline`]): the matching range ends at or after `ends_from` and starts at or
/// before `starts_by`, where known. None when the criteria bound neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Window {
    ends_from: Option<i64>,
    starts_by: Option<i64>,
}

/// The bounds that a date value with `prefix` puts on a matching range [low, high], as
/// (`high >= …`, `low <= …`); each follows from [`range_condition`] for that prefix. `ne` and `ap`
/// give none.
fn prefix_bounds(prefix: Prefix, s_low: i64, s_high: i64) -> (Option<i64>, Option<i64>) {
    match prefix {
        // low >= s_low and high <= s_high, with low <= high.
        Prefix::Eq => (Some(s_low), Some(s_high)),
        // high > s_high; sa: low > s_high, so high > s_high too.
        Prefix::Gt | Prefix::Sa => (Some(s_high.saturating_add(1)), None),
        // high >= s_low, the bound range_condition writes first.
        Prefix::Ge => (Some(s_low), None),
        // low < s_low; eb: high < s_low, so low < s_low too.
        Prefix::Lt | Prefix::Eb => (None, Some(s_low.saturating_sub(1))),
        // low <= s_high.
        Prefix::Le => (None, Some(s_high)),
        Prefix::Ne | Prefix::Ap => (None, None),
    }
}

/// The window that the criteria on `rt`'s timeline parameter put its matches in. A criterion's
/// values are alternatives, so it bounds a side only if every value does; criteria all hold, so
/// the tightest bound of each side applies. A value that does not parse gives no window (its
/// criterion reports the error).
fn timeline_window(rt: ResourceType, criteria: &[Criterion]) -> Option<Window> {
    let param = rt.timeline()?;
    let mut window = Window::default();
    for c in criteria {
        match &c.key {
            Key::Param { name, modifier: None } if name == param => {}
            _ => continue,
        }
        let (mut ends_from, mut starts_by) = (Some(i64::MAX), Some(i64::MIN));
        for value in &c.values {
            let (prefix, date) = split_prefix(value);
            let range = dates::parse_range(date)?;
            let (e, s) = prefix_bounds(prefix, range.low, range.high);
            ends_from = ends_from.zip(e).map(|(a, b)| a.min(b));
            starts_by = starts_by.zip(s).map(|(a, b)| a.max(b));
        }
        if let Some(e) = ends_from {
            window.ends_from = Some(window.ends_from.map_or(e, |w| w.max(e)));
        }
        if let Some(s) = starts_by {
            window.starts_by = Some(window.starts_by.map_or(s, |w| w.min(s)));
        }
    }
    (window != Window::default()).then_some(window)
}

/// The resources whose reference `criterion` (each value `Type/id`, or an id with a `:Type`
/// modifier) points at its targets and whose timeline date (carried on the reference row) can lie
/// in `window`: a range of the lookup index (target, date_long, date_low) per target. Short ranges
/// are found by where they start (no earlier than a day before the window); long ones, rare, apart.
/// A superset of the references that also match the date criteria, which still check every row.
/// None when the criterion is not such a reference criterion.
fn dated_reference_ids(rt: ResourceType, criterion: &Criterion, window: Window) -> Option<Sql> {
    let Key::Param { name, modifier } = &criterion.key else {
        return None;
    };
    if find_param(rt, name)?.kind != ParamType::Reference {
        return None;
    }
    let mut targets = Vec::new();
    for value in &criterion.values {
        let parts: Vec<&str> = value.split('/').collect();
        let target = match (modifier.as_deref(), parts.as_slice()) {
            (None, [t, id] | [t, id, "_history", _]) => (*t, *id),
            (Some(t), [id]) | (Some(t), [_, id]) if parts.len() == 1 || parts[0] == t => (t, *id),
            _ => return None,
        };
        ResourceType::parse(target.0)?;
        targets.push(target);
    }
    let mut sql = Sql::new("");
    for (i, (target_type, target_id)) in targets.into_iter().enumerate() {
        for long in [false, true] {
            if i > 0 || long {
                sql.push(" UNION ALL ");
            }
            sql.push("SELECT res_id FROM idx_reference WHERE res_type = ")
                .text_bind(rt.as_str())
                .push(" AND param = ")
                .text_bind(name.as_str())
                .push(" AND target_id = ")
                .text_bind(key(target_id))
                .push(" AND target_type = ")
                .text_bind(target_type)
                .push(if long {
                    " AND date_long = true"
                } else {
                    " AND date_long = false"
                });
            match (long, window.ends_from) {
                // A short range that ends at or after ends_from starts less than a day before it.
                (false, Some(e)) => {
                    sql.push(" AND date_low >= ")
                        .int_bind(e.saturating_sub(index::LONG_DATE_MS))
                        .push(" AND date_high >= ")
                        .int_bind(e);
                }
                (true, Some(e)) => {
                    sql.push(" AND date_high >= ").int_bind(e);
                }
                (_, None) => {}
            }
            if let Some(s) = window.starts_by {
                sql.push(" AND date_low <= ").int_bind(s);
            } else {
                sql.push(" AND date_low IS NOT NULL");
            }
        }
    }
    Some(sql)
}

fn find_param(rt: ResourceType, name: &str) -> Option<&'static SearchParam> {
    rt.search_params().iter().find(|p| p.code == name)
}

pub(super) fn bad_value(criterion: &Criterion, value: &str, why: &str) -> Error {
    Error::Invalid(format!(
        "search parameter '{}': value '{value}' {why}",
        criterion.raw_key
    ))
}

/// The ids of `rt` that match `key` with any of `values`. None when the parameter is unknown for `rt`.
fn matching(
    rt: ResourceType,
    key: &Key,
    values: &[String],
    c: &Criterion,
    visible: Visibility,
) -> Result<Option<Matching>, Error> {
    match key {
        Key::Param { name, modifier } => {
            // A patient's own view of a group session or a Group holds no other patient: its
            // criteria match that view, not the whole resource.
            let own = match rt.as_str() {
                "Appointment" | "Group" => visible(rt)?.own_patient,
                _ => None,
            };
            if own.is_some() && UNREDACTABLE.contains(&(rt.as_str(), name.as_str())) {
                return Err(Error::Invalid(format!(
                    "search parameter '{}' is not available to a patient's token: it reads every participant of a {rt}",
                    c.raw_key
                )));
            }
            param_matching(rt, name, modifier.as_deref(), values, c, own.as_deref())
        }
        Key::Chain {
            name,
            target_type,
            rest,
        } => {
            let Some(p) = find_param(rt, name) else { return Ok(None) };
            if p.kind != ParamType::Reference {
                return Err(Error::Invalid(format!(
                    "search parameter '{}': '{name}' is not a reference and cannot be chained",
                    c.raw_key
                )));
            }
            let mut ids = Sql::new("SELECT res_id FROM idx_reference WHERE res_type = ");
            ids.text_bind(rt.as_str())
                .push(" AND param = ")
                .text_bind(name.as_str())
                .push(" AND (");
            let mut any = false;
            for target in reference_targets(rt, name, target_type.as_deref()) {
                let Some(target_rt) = ResourceType::parse(&target) else {
                    continue;
                };
                let Some(inner) = matching(target_rt, rest, values, c, visible)? else {
                    continue;
                };
                let hidden = visible_condition("target_id", target_rt, visible)?;
                if any {
                    ids.push(" OR ");
                }
                any = true;
                ids.push("(target_type = ")
                    .text_bind(target_rt.as_str())
                    .push(" AND target_id IN (");
                ids.append(&positive(target_rt, inner)).push(")");
                if let Some(cond) = hidden {
                    ids.push(" AND ").append(&cond);
                }
                ids.push(")");
            }
            if !any {
                return Err(Error::Invalid(format!(
                    "search parameter '{}': no type that '{name}' refers to has the chained parameter",
                    c.raw_key
                )));
            }
            ids.push(")");
            Ok(Some(Matching {
                negated: false,
                ids,
                probe: None,
            }))
        }
        Key::Has {
            res_type,
            reference,
            rest,
        } => {
            let source = ResourceType::parse(res_type).ok_or_else(|| {
                Error::Invalid(format!(
                    "search parameter '{}': type '{res_type}' is not hosted here",
                    c.raw_key
                ))
            })?;
            match find_param(source, reference) {
                Some(p) if p.kind == ParamType::Reference => {}
                _ => {
                    return Err(Error::Invalid(format!(
                        "search parameter '{}': '{reference}' is not a reference parameter of {source}",
                        c.raw_key
                    )))
                }
            }
            let Some(inner) = matching(source, rest, values, c, visible)? else {
                return Err(Error::Invalid(format!(
                    "search parameter '{}': unknown parameter for {source}",
                    c.raw_key
                )));
            };
            let mut ids = Sql::new("SELECT target_id FROM idx_reference WHERE res_type = ");
            ids.text_bind(source.as_str())
                .push(" AND param = ")
                .text_bind(reference.as_str())
                .push(" AND target_type = ")
                .text_bind(rt.as_str())
                .push(" AND res_id IN (")
                .append(&positive(source, inner))
                .push(")");
            if let Some(cond) = visible_condition("res_id", source, visible)? {
                ids.push(" AND ").append(&cond);
            }
            Ok(Some(Matching {
                negated: false,
                ids,
                probe: None,
            }))
        }
    }
}

/// The ids of a matching as a positive set (a negated one becomes "every live resource but these").
fn positive(rt: ResourceType, m: Matching) -> Sql {
    if !m.negated {
        return m.ids;
    }
    let mut sql = Sql::new("SELECT res_id FROM resources WHERE res_type = ");
    sql.text_bind(rt.as_str())
        .push(" AND deleted = false AND res_id NOT IN (")
        .append(&m.ids)
        .push(")");
    sql
}

fn table_of(kind: ParamType) -> Option<&'static str> {
    match kind {
        ParamType::Token => Some("idx_token"),
        ParamType::String => Some("idx_string"),
        ParamType::Date => Some("idx_date"),
        ParamType::Reference => Some("idx_reference"),
        ParamType::Uri => Some("idx_uri"),
        ParamType::Number | ParamType::Quantity => Some("idx_number"),
        ParamType::Composite => Some("idx_composite"),
        ParamType::Special => Some("idx_position"),
    }
}

/// `SELECT res_id FROM <table> WHERE res_type = ? AND param = ?`, ready for `AND (…)`.
fn select_ids(table: &str, rt: ResourceType, param: &str) -> Sql {
    let mut sql = Sql::new(&format!("SELECT res_id FROM {table} WHERE res_type = "));
    sql.text_bind(rt.as_str()).push(" AND param = ").text_bind(param);
    sql
}

/// `own_patient`: the reader is this patient, whose view of the type leaves other patients out
/// (compartment::redact), so a reference to another patient matches nothing.
fn param_matching(
    rt: ResourceType,
    name: &str,
    modifier: Option<&str>,
    values: &[String],
    c: &Criterion,
    own_patient: Option<&str>,
) -> Result<Option<Matching>, Error> {
    if values.iter().all(|v| v.is_empty()) {
        return Err(Error::Invalid(format!("search parameter '{}' has no value", c.raw_key)));
    }
    match name {
        "_id" => return id_matching(rt, modifier, values, c).map(Some),
        "_lastUpdated" => return last_updated_matching(rt, modifier, values, c).map(Some),
        _ => {}
    }
    let Some(p) = find_param(rt, name) else { return Ok(None) };
    if !p.is_searchable() {
        return Err(Error::Invalid(format!(
            "search parameter '{}' is not supported by this server",
            c.raw_key
        )));
    }
    let table = table_of(p.kind).ok_or_else(|| {
        Error::Invalid(format!(
            "search parameter '{}': {} parameters are not supported yet",
            c.raw_key,
            p.kind.as_str()
        ))
    })?;
    if modifier == Some("missing") {
        let missing = match values {
            [v] if v == "true" => true,
            [v] if v == "false" => false,
            _ => return Err(bad_value(c, &values.join(","), "is not true or false")),
        };
        return Ok(Some(Matching {
            negated: missing,
            ids: select_ids(table, rt, name),
            probe: None,
        }));
    }
    let (negated, column_param, per_value): (bool, String, ValueCondition) = match (p.kind, modifier) {
        (ParamType::Token, None) => (false, name.to_string(), token_condition),
        (ParamType::Token, Some("not")) => (true, name.to_string(), token_condition),
        (ParamType::Token, Some("text")) => (false, name.to_string(), token_text_condition),
        (ParamType::Token, Some("of-type")) if name == "identifier" => {
            (false, format!("{name}{}", index::OF_TYPE_SUFFIX), of_type_condition)
        }
        (ParamType::String, None) => (false, name.to_string(), string_prefix_condition),
        (ParamType::String, Some("exact")) => (false, name.to_string(), string_exact_condition),
        (ParamType::String, Some("contains")) => (false, name.to_string(), string_contains_condition),
        (ParamType::Date, None) => (false, name.to_string(), date_condition),
        (ParamType::Reference, None) => (false, name.to_string(), reference_condition),
        (ParamType::Reference, Some("identifier")) if own_patient.is_some() => {
            // The index does not say whose identifier it is: the patient's view matches none.
            return Ok(Some(Matching {
                negated: false,
                ids: Sql::new("SELECT res_id FROM resources WHERE 1 = 0"),
                probe: None,
            }));
        }
        (ParamType::Reference, Some("identifier")) => {
            (false, format!("{name}{}", index::IDENTIFIER_SUFFIX), token_condition)
        }
        (ParamType::Reference, Some(t))
            if ResourceType::parse(t).is_some() || t.starts_with(|ch: char| ch.is_ascii_uppercase()) =>
        {
            let mut ids = select_ids(table, rt, name);
            ids.push(" AND target_type = ").text_bind(t).push(" AND (");
            for (i, v) in values.iter().enumerate() {
                if i > 0 {
                    ids.push(" OR ");
                }
                let id = v.strip_prefix(&format!("{t}/")).unwrap_or(v);
                if id.contains('/') {
                    return Err(bad_value(c, v, &format!("is not an id of a {t}")));
                }
                ids.push("target_id = ").text_bind(key(id));
            }
            ids.push(")");
            if let Some(own) = own_patient {
                others_left_out(&mut ids, rt, name, own);
            }
            return Ok(Some(Matching {
                negated: false,
                ids,
                probe: None,
            }));
        }
        (ParamType::Composite, None) => (false, name.to_string(), composite_condition),
        (ParamType::Special, None) => (false, name.to_string(), near_condition),
        (ParamType::Uri, None) => (false, name.to_string(), uri_condition),
        (ParamType::Uri, Some("below")) => (false, name.to_string(), uri_below_condition),
        (ParamType::Uri, Some("above")) => (false, name.to_string(), uri_above_condition),
        (ParamType::Number | ParamType::Quantity, None) => (false, name.to_string(), number_condition),
        (kind, Some(m)) => {
            return Err(Error::Invalid(format!(
                "search parameter '{}': modifier ':{m}' is not supported for {} parameters",
                c.raw_key,
                kind.as_str()
            )))
        }
    };
    let table = if column_param.ends_with(index::IDENTIFIER_SUFFIX) {
        "idx_token"
    } else {
        table
    };
    let tail = |probe: bool| -> Result<Sql, Error> {
        let mut tail = Sql::new(" AND param = ");
        tail.probe = probe;
        tail.text_bind(column_param.as_str()).push(" AND (");
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                tail.push(" OR ");
            }
            tail.push("(");
            per_value(&mut tail, v, c)?;
            tail.push(")");
        }
        tail.push(")");
        if let (Some(own), ParamType::Reference) = (own_patient, p.kind) {
            others_left_out(&mut tail, rt, name, own);
        }
        Ok(tail)
    };
    let mut ids = Sql::new(&format!("SELECT res_id FROM {table} WHERE res_type = "));
    ids.text_bind(rt.as_str()).append(&tail(false)?);
    let is_range = matches!(
        p.kind,
        ParamType::Date | ParamType::String | ParamType::Number | ParamType::Quantity | ParamType::Special
    ) || (p.kind == ParamType::Token && modifier == Some("text"));
    let probe = if is_range || negated {
        let mut probe = Sql::new(&format!(
            "SELECT 1 FROM {table} WHERE res_type = r.res_type AND res_id = r.res_id"
        ));
        probe.append(&tail(true)?);
        Some(probe)
    } else {
        None
    };
    Ok(Some(Matching { negated, ids, probe }))
}

/// Leaves out the reference rows a patient's redacted view does not hold (compartment::redact):
/// for the parameters read from a session's participants or a Group's members, every row but her
/// own and those naming a practitioner, place, service or device (the view's allow-list); for the
/// others, rows naming other local patients or an absolute Patient URL.
fn others_left_out(sql: &mut Sql, rt: ResourceType, name: &str, own_patient: &str) {
    let participants = matches!(
        (rt.as_str(), name),
        ("Appointment", "actor" | "patient" | "practitioner" | "location") | ("Group", "member")
    );
    if participants {
        sql.push(" AND ((target_type = 'Patient' AND url IS NULL AND target_id = ")
            .text_bind(own_patient)
            .push(")");
        if rt.as_str() == "Appointment" {
            sql.push(
                " OR target_type IN ('Practitioner', 'PractitionerRole', 'Location', 'HealthcareService', 'Device')",
            );
        }
        sql.push(")");
    } else {
        sql.push(" AND NOT (target_type = 'Patient' AND target_id <> ")
            .text_bind(own_patient)
            .push(") AND (url IS NULL OR url NOT LIKE '%/Patient/%')");
    }
}

fn token_condition(sql: &mut Sql, value: &str, _: &Criterion) -> Result<(), Error> {
    // The index holds bounded keys of long values (index::index_key): a search value is keyed alike.
    let (system, code) = split_pipe(value);
    let (system, code) = (system.map(|s| key(&s)), key(&code));
    match (system, code) {
        (None, code) => {
            sql.push("code = ").text_bind(code);
        }
        (Some(system), code) if system.is_empty() => {
            sql.push("system IS NULL AND code = ").text_bind(code);
        }
        (Some(system), code) if code.is_empty() => {
            sql.push("system = ").text_bind(system);
        }
        (Some(system), code) => {
            sql.push("system = ")
                .text_bind(system)
                .push(" AND code = ")
                .text_bind(code);
        }
    }
    Ok(())
}

/// A value as the index columns hold it (index::index_key).
fn key(value: &str) -> String {
    index::index_key(value).into_owned()
}

/// `column LIKE 'prefix%'` that stays exact for a prefix longer than the keys keep
/// (index::KEY_PREFIX_SAFE_BYTES): the index narrows by the part the keys hold, and the whole value
/// (`full`, NULL where the key is the value) decides.
fn prefix_condition(sql: &mut Sql, column: &str, full: &str, prefix: &str) {
    if prefix.len() <= index::KEY_PREFIX_SAFE_BYTES {
        sql.push(&format!("{column} LIKE "))
            .text_bind(format!("{}%", like_escape(prefix)))
            .push(" ESCAPE '\\'");
        return;
    }
    let head = index::prefix_at_most(prefix, index::KEY_PREFIX_SAFE_BYTES);
    sql.push(&format!("{column} LIKE "))
        .text_bind(format!("{}%", like_escape(head)))
        .push(&format!(" ESCAPE '\\' AND COALESCE({full}, {column}) LIKE "))
        .text_bind(format!("{}%", like_escape(prefix)))
        .push(" ESCAPE '\\'");
}

/// Mean earth radius in km (WGS84 mean radius), for `near`.
const EARTH_RADIUS_KM: f64 = 6371.0088;
/// The distance `near` uses when the search gives none ("at the server's discretion"), in km.
const DEFAULT_NEAR_KM: f64 = 5.0;

/// `near=latitude|longitude|distance|units` (units km, m, [mi_i] or mi; km when absent): positions
/// within that great-circle distance, as a latitude band (index) and a dot product of unit vectors.
fn near_condition(sql: &mut Sql, value: &str, c: &Criterion) -> Result<(), Error> {
    let parts: Vec<&str> = value.split('|').collect();
    let number = |i: usize| parts.get(i).filter(|p| !p.is_empty()).map(|p| p.parse::<f64>());
    let (Some(Ok(lat)), Some(Ok(lon))) = (number(0), number(1)) else {
        return Err(bad_value(c, value, "is not latitude|longitude[|distance|units]"));
    };
    if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
        return Err(bad_value(c, value, "has a latitude or longitude out of range"));
    }
    let distance = match number(2) {
        None => DEFAULT_NEAR_KM,
        Some(Ok(d)) if d >= 0.0 && d.is_finite() => d,
        Some(_) => return Err(bad_value(c, value, "has a distance that is not a non-negative number")),
    };
    let km = match parts.get(3).copied().unwrap_or("km") {
        "km" | "" => distance,
        "m" => distance / 1000.0,
        "[mi_i]" | "mi" => distance * 1.609_344,
        _ => return Err(bad_value(c, value, "has units other than km, m or [mi_i]")),
    };
    let angle = (km / EARTH_RADIUS_KM).min(std::f64::consts::PI);
    let band = angle.to_degrees();
    let q = index::unit_vector(lat, lon);
    sql.push("latitude >= ")
        .float_bind(lat - band)
        .push(" AND latitude <= ")
        .float_bind(lat + band)
        .push(" AND x * ")
        .float_bind(q[0])
        .push(" + y * ")
        .float_bind(q[1])
        .push(" + z * ")
        .float_bind(q[2])
        .push(" >= ")
        .float_bind(angle.cos() - 1e-12);
    Ok(())
}

/// `first$second`, each a token (`code`, `system|code`, `|code`, `system|`), both from one element.
fn composite_condition(sql: &mut Sql, value: &str, c: &Criterion) -> Result<(), Error> {
    let mut in_escape = false;
    let split = value.char_indices().find_map(|(i, ch)| match ch {
        '\\' if !in_escape => {
            in_escape = true;
            None
        }
        '$' if !in_escape => Some(i),
        _ => {
            in_escape = false;
            None
        }
    });
    let Some(at) = split else {
        return Err(bad_value(c, value, "is not a composite value first$second"));
    };
    let mut parts = [
        (value[..at].to_string(), "system1", "code1"),
        (value[at + 1..].to_string(), "system2", "code2"),
    ]
    .into_iter()
    .peekable();
    while let Some((part, system_col, code_col)) = parts.next() {
        let (system, code) = split_pipe(&part);
        match (system.map(|s| key(&s)), key(&code)) {
            (None, code) => sql.push(&format!("{code_col} = ")).text_bind(code),
            (Some(system), code) if system.is_empty() => sql
                .push(&format!("{system_col} IS NULL AND {code_col} = "))
                .text_bind(code),
            (Some(system), code) if code.is_empty() => sql.push(&format!("{system_col} = ")).text_bind(system),
            (Some(system), code) => sql
                .push(&format!("{system_col} = "))
                .text_bind(system)
                .push(&format!(" AND {code_col} = "))
                .text_bind(code),
        };
        if parts.peek().is_some() {
            sql.push(" AND ");
        }
    }
    Ok(())
}

fn token_text_condition(sql: &mut Sql, value: &str, _: &Criterion) -> Result<(), Error> {
    sql.push("display LIKE ")
        .text_bind(format!("%{}%", like_escape(&index::normalize(&unescape(value)))))
        .push(" ESCAPE '\\'");
    Ok(())
}

/// `identifier:of-type=system|code|value` (the type's system and code, then the identifier value).
fn of_type_condition(sql: &mut Sql, value: &str, c: &Criterion) -> Result<(), Error> {
    let parts: Vec<&str> = value.splitn(3, '|').collect();
    match parts.as_slice() {
        [system, code, v] if !code.is_empty() && !v.is_empty() => {
            sql.push("code = ").text_bind(key(&format!("{code}|{v}")));
            if !system.is_empty() {
                sql.push(" AND system = ").text_bind(key(system));
            }
            Ok(())
        }
        _ => Err(bad_value(c, value, "is not system|code|value")),
    }
}

fn like_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
}

fn string_prefix_condition(sql: &mut Sql, value: &str, _: &Criterion) -> Result<(), Error> {
    prefix_condition(sql, "norm", "norm_full", &index::normalize(&unescape(value)));
    Ok(())
}

fn string_contains_condition(sql: &mut Sql, value: &str, _: &Criterion) -> Result<(), Error> {
    // A scan of the parameter's rows either way: the whole value, where the key holds only its start.
    sql.push("COALESCE(norm_full, norm) LIKE ")
        .text_bind(format!("%{}%", like_escape(&index::normalize(&unescape(value)))))
        .push(" ESCAPE '\\'");
    Ok(())
}

fn string_exact_condition(sql: &mut Sql, value: &str, _: &Criterion) -> Result<(), Error> {
    sql.push("exact = ").text_bind(unescape(value));
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

fn split_prefix(value: &str) -> (Prefix, &str) {
    let prefixes = [
        ("eq", Prefix::Eq),
        ("ne", Prefix::Ne),
        ("gt", Prefix::Gt),
        ("lt", Prefix::Lt),
        ("ge", Prefix::Ge),
        ("le", Prefix::Le),
        ("sa", Prefix::Sa),
        ("eb", Prefix::Eb),
        ("ap", Prefix::Ap),
    ];
    for (text, prefix) in prefixes {
        if let Some(rest) = value.strip_prefix(text) {
            return (prefix, rest);
        }
    }
    (Prefix::Eq, value)
}

/// search.html#prefix for ranges: the target [low, high] against the search value [s_low, s_high].
fn range_condition(sql: &mut Sql, prefix: Prefix, low: &str, high: &str, s_low: i64, s_high: i64) {
    let contained = |sql: &mut Sql| {
        sql.push(&format!("({low} >= "))
            .int_bind(s_low)
            .push(&format!(" AND {high} <= "))
            .int_bind(s_high)
            .push(")");
    };
    match prefix {
        Prefix::Eq => contained(sql),
        Prefix::Ne => {
            sql.push("NOT ");
            contained(sql);
        }
        Prefix::Gt => {
            sql.push(&format!("{high} > ")).int_bind(s_high);
        }
        Prefix::Lt => {
            sql.push(&format!("{low} < ")).int_bind(s_low);
        }
        // search.html: ge = "above the value, or within it", which is high > s_high OR low >= s_low
        // (a range not above it that starts within it also ends within it); le likewise. Each
        // implies a plain bound, written first so an index on that bound narrows the rows.
        Prefix::Ge => {
            if !sql.probe {
                sql.push(&format!("{high} >= ")).int_bind(s_low).push(" AND ");
            }
            sql.push(&format!("({high} > "))
                .int_bind(s_high)
                .push(&format!(" OR {low} >= "))
                .int_bind(s_low)
                .push(")");
        }
        Prefix::Le => {
            if !sql.probe {
                sql.push(&format!("{low} <= ")).int_bind(s_high).push(" AND ");
            }
            sql.push(&format!("({low} < "))
                .int_bind(s_low)
                .push(&format!(" OR {high} <= "))
                .int_bind(s_high)
                .push(")");
        }
        Prefix::Sa => {
            sql.push(&format!("{low} > ")).int_bind(s_high);
        }
        Prefix::Eb => {
            sql.push(&format!("{high} < ")).int_bind(s_low);
        }
        Prefix::Ap => {
            // Approximately: within 10% of the distance from now (at least a day), as search.html suggests.
            let gap = (dates::now_millis() - s_low).abs() / 10;
            let slack = gap.max(86_400_000);
            sql.push(&format!("({low} <= "))
                .int_bind(s_high.saturating_add(slack))
                .push(&format!(" AND {high} >= "))
                .int_bind(s_low.saturating_sub(slack))
                .push(")");
        }
    }
}

fn date_condition(sql: &mut Sql, value: &str, c: &Criterion) -> Result<(), Error> {
    date_columns_condition(sql, value, c, "low", "high")
}

/// A date value (with its prefix) against the range held in columns `low` and `high`.
pub(super) fn date_columns_condition(
    sql: &mut Sql,
    value: &str,
    c: &Criterion,
    low: &str,
    high: &str,
) -> Result<(), Error> {
    let (prefix, date) = split_prefix(value);
    let range = dates::parse_range(date).ok_or_else(|| bad_value(c, value, "is not a FHIR date (such as 2026, 2026-11, 2026-11-23 or 2026-11-23T10:00:00Z) with an optional prefix (eq ne lt gt le ge sa eb ap)"))?;
    range_condition(sql, prefix, low, high, range.low, range.high);
    Ok(())
}

fn reference_condition(sql: &mut Sql, value: &str, c: &Criterion) -> Result<(), Error> {
    if value.contains("://") || value.starts_with("urn:") {
        sql.push("url = ").text_bind(value);
        return Ok(());
    }
    let parts: Vec<&str> = value.split('/').collect();
    match parts.as_slice() {
        [id] => {
            sql.push("target_id = ").text_bind(key(id));
        }
        [t, id] | [t, id, "_history", _] => {
            sql.push("target_type = ")
                .text_bind(key(t))
                .push(" AND target_id = ")
                .text_bind(key(id));
        }
        _ => {
            return Err(bad_value(
                c,
                value,
                "is not a reference (id, Type/id or an absolute URL)",
            ))
        }
    }
    Ok(())
}

fn uri_condition(sql: &mut Sql, value: &str, _: &Criterion) -> Result<(), Error> {
    sql.push("uri = ").text_bind(key(value));
    Ok(())
}

fn uri_below_condition(sql: &mut Sql, value: &str, _: &Criterion) -> Result<(), Error> {
    prefix_condition(sql, "uri", "uri_full", value);
    Ok(())
}

fn uri_above_condition(sql: &mut Sql, value: &str, _: &Criterion) -> Result<(), Error> {
    sql.push("substr(")
        .text_bind(value)
        .push(", 1, length(COALESCE(uri_full, uri))) = COALESCE(uri_full, uri)");
    Ok(())
}

/// `[prefix]number[|system|code]`; a number matches within its implicit precision (search.html#number).
fn number_condition(sql: &mut Sql, value: &str, c: &Criterion) -> Result<(), Error> {
    let (prefix, rest) = split_prefix(value);
    let mut parts = rest.splitn(3, '|');
    let number = parts.next().unwrap_or("");
    let n: f64 = number
        .parse()
        .map_err(|_| bad_value(c, value, "is not a number with an optional prefix"))?;
    let decimals = number.split_once('.').map_or(0, |(_, d)| d.len()) as i32;
    let half = 0.5 * 10f64.powi(-decimals);
    // A value given to more digits than a double holds still matches itself: the range is never
    // narrower than the neighbouring doubles (66.89999999999999 ± 5e-15 rounds to itself).
    let (low, high) = ((n - half).min(n.next_down()), (n + half).max(n.next_up()));
    match prefix {
        Prefix::Eq | Prefix::Ap => sql
            .push("value >= ")
            .float_bind(low)
            .push(" AND value < ")
            .float_bind(high),
        Prefix::Ne => sql
            .push("NOT (value >= ")
            .float_bind(low)
            .push(" AND value < ")
            .float_bind(high)
            .push(")"),
        Prefix::Gt | Prefix::Sa => sql.push("value > ").float_bind(n),
        Prefix::Lt | Prefix::Eb => sql.push("value < ").float_bind(n),
        Prefix::Ge => sql.push("value >= ").float_bind(n),
        Prefix::Le => sql.push("value <= ").float_bind(n),
    };
    if let Some(system) = parts.next().filter(|s| !s.is_empty()) {
        sql.push(" AND system = ").text_bind(system);
    }
    if let Some(code) = parts.next().filter(|s| !s.is_empty()) {
        sql.push(" AND code = ").text_bind(code);
    }
    Ok(())
}

fn id_matching(rt: ResourceType, modifier: Option<&str>, values: &[String], c: &Criterion) -> Result<Matching, Error> {
    let negated = match modifier {
        None => false,
        Some("not") => true,
        Some(m) => {
            return Err(Error::Invalid(format!(
                "search parameter '{}': modifier ':{m}' is not supported for _id",
                c.raw_key
            )))
        }
    };
    let mut ids = Sql::new("SELECT res_id FROM resources WHERE res_type = ");
    ids.text_bind(rt.as_str())
        .push(" AND res_id IN (")
        .text_binds(values.iter().map(String::as_str))
        .push(")");
    Ok(Matching {
        negated,
        ids,
        probe: None,
    })
}

fn last_updated_matching(
    rt: ResourceType,
    modifier: Option<&str>,
    values: &[String],
    c: &Criterion,
) -> Result<Matching, Error> {
    if let Some(m) = modifier {
        return Err(Error::Invalid(format!(
            "search parameter '{}': modifier ':{m}' is not supported for _lastUpdated",
            c.raw_key
        )));
    }
    let mut ids = Sql::new("SELECT res_id FROM resources WHERE res_type = ");
    ids.text_bind(rt.as_str()).push(" AND (");
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            ids.push(" OR ");
        }
        let (prefix, date) = split_prefix(v);
        let range = dates::parse_range(date)
            .ok_or_else(|| bad_value(c, v, "is not a FHIR date or instant with an optional prefix"))?;
        range_condition(&mut ids, prefix, "last_updated", "last_updated", range.low, range.high);
    }
    ids.push(")");
    Ok(Matching {
        negated: false,
        ids,
        probe: None,
    })
}

/// `ORDER BY` for `_sort`: a multi-valued parameter sorts by its lowest value ascending, its highest
/// descending (search.html#_sort); ties are broken by last update and id, so the order is total.
/// With no `_sort` the order is type and id (search.html leaves it to the server): ids this server
/// assigns are time-ordered, so that is creation order, and no update moves a resource in it.
fn order_by(types: &[ResourceType], sort: &[SortKey]) -> Result<Sql, Error> {
    if sort.is_empty() {
        return Ok(Sql::new(KEYSET_ORDER));
    }
    let mut sql = Sql::new("");
    for key in sort {
        let dir = if key.descending { "DESC" } else { "ASC" };
        match key.param.as_str() {
            "_id" => {
                sql.push(&format!("r.res_id {dir}, "));
                continue;
            }
            "_lastUpdated" => {
                sql.push(&format!("r.last_updated {dir}, "));
                continue;
            }
            _ => {}
        }
        let kind = types
            .iter()
            .find_map(|rt| find_param(*rt, &key.param))
            .map(|p| p.kind)
            .ok_or_else(|| Error::Invalid(format!("_sort: unknown search parameter '{}'", key.param)))?;
        let agg = if key.descending { "MAX" } else { "MIN" };
        let (table, column) = match kind {
            ParamType::String => ("idx_string", "norm"),
            ParamType::Token => ("idx_token", "code"),
            ParamType::Date => ("idx_date", if key.descending { "high" } else { "low" }),
            ParamType::Reference => ("idx_reference", "target_id"),
            ParamType::Uri => ("idx_uri", "uri"),
            ParamType::Number | ParamType::Quantity => ("idx_number", "value"),
            ParamType::Composite | ParamType::Special => {
                return Err(Error::Invalid(format!(
                    "_sort: cannot sort by the {} parameter '{}'",
                    kind.as_str(),
                    key.param
                )))
            }
        };
        // `x.param || ''` is the parameter's name as an expression, which no index can look up.
        // Otherwise the planner may answer the bare MIN/MAX from the lookup index (res_type, param,
        // column), which is in the key's order, walking it from its end for each resource until it
        // meets the resource's own row: a scan of the type's rows per resource. Without planner
        // statistics (a database just loaded) both SQLite and PostgreSQL chose that: `_sort=-date`
        // over 20,000 Appointments took 52 s of CPU on SQLite, measured. Without the name, the
        // owner index (res_type, res_id, …) is the only one that narrows the rows, and it finds the
        // resource's few rows whatever the statistics say (tests/api/search_plan.rs).
        sql.push(&format!("(SELECT {agg}(x.{column}) FROM {table} x WHERE x.res_type = r.res_type AND x.res_id = r.res_id AND x.param || '' = "))
            .text_bind(key.param.as_str())
            .push(&format!(") {dir} NULLS LAST, "));
    }
    sql.push("r.last_updated ASC, r.res_type ASC, r.res_id ASC");
    Ok(sql)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planned(rt: &str, q: &[(&str, &str)]) -> Result<Planned, Error> {
        let pairs: Vec<(String, String)> = q.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        plan(
            &[ResourceType::parse(rt).unwrap()],
            &Search::parse(&pairs)?,
            false,
            &see_everything,
        )
    }

    #[test]
    fn placeholders_stay_for_sqlite() {
        let mut sql = Sql::new("a = ");
        sql.text_bind("x").push(" AND b = ").int_bind(1);
        assert_eq!(sql.text_for(false), "a = ? AND b = ?");
    }

    #[test]
    fn criteria_become_index_subqueries() {
        let p = planned(
            "Patient",
            &[
                ("birthdate", "ge1990-01-01"),
                ("general-practitioner", "Practitioner/d1"),
            ],
        )
        .unwrap();
        let text = &p.from_where.text;
        // The reference criterion drives; the date range probes its candidates by the owner index.
        assert!(
            text.contains(
                "EXISTS (SELECT 1 FROM idx_date WHERE res_type = r.res_type AND res_id = r.res_id AND param = ?"
            ),
            "{text}"
        );
        assert!(text.contains("r.res_id IN (SELECT res_id FROM idx_reference"), "{text}");
        assert!(text.contains("SELECT res_id FROM idx_reference WHERE res_type = ? AND param = ? AND ((target_type = ? AND target_id = ?))"), "{text}");
        assert!(!text.contains("body"), "never the stored JSON");
    }

    #[test]
    fn a_reference_and_the_timeline_date_read_one_window_of_the_reference_index() {
        let p = planned(
            "Appointment",
            &[
                ("date", "ge2026-03-02T00:00:00Z"),
                ("date", "lt2026-03-09T00:00:00Z"),
                ("actor", "Practitioner/d1"),
            ],
        )
        .unwrap();
        let text = &p.from_where.text;
        let monday = dates::parse_range("2026-03-02T00:00:00Z").unwrap().low;
        let next_monday = dates::parse_range("2026-03-09T00:00:00Z").unwrap().low;
        assert!(text.contains("r.res_id IN (SELECT res_id FROM idx_reference WHERE res_type = ? AND param = ? AND target_id = ? AND target_type = ? AND date_long = false AND date_low >= ? AND date_high >= ? AND date_low <= ? UNION ALL SELECT res_id FROM idx_reference WHERE res_type = ? AND param = ? AND target_id = ? AND target_type = ? AND date_long = true AND date_high >= ? AND date_low <= ?)"), "{text}");
        let ints: Vec<i64> = p
            .from_where
            .binds
            .iter()
            .filter_map(|b| match b {
                Bind::BigInt(n) => Some(*n),
                _ => None,
            })
            .collect();
        // After the date criteria's own values (written first, as they come first in the query),
        // the window's bounds: short ranges, then long ones.
        assert_eq!(
            ints[ints.len() - 5..],
            [
                monday - index::LONG_DATE_MS,
                monday,
                next_monday - 1,
                monday,
                next_monday - 1
            ]
        );
        // The date criteria still check every candidate.
        assert_eq!(text.matches("EXISTS (SELECT 1 FROM idx_date").count(), 2, "{text}");

        // No window without a date bound, on a type without a timeline, or for a bare id.
        for (rt, q) in [
            (
                "Appointment",
                vec![("actor", "Practitioner/d1"), ("date", "ne2026-03-02")],
            ),
            ("Appointment", vec![("actor", "d1"), ("date", "ge2026-03-02")]),
            (
                "Patient",
                vec![("general-practitioner", "Practitioner/d1"), ("birthdate", "ge2026")],
            ),
        ] {
            let text = planned(rt, &q).unwrap().from_where.text;
            assert!(!text.contains("date_low"), "{q:?}: {text}");
        }
        // A type modifier names the target type, like Type/id.
        let text = planned("CareTeam", &[("participant:Practitioner", "d1"), ("date", "eq2026")])
            .unwrap()
            .from_where
            .text;
        assert!(text.contains("date_long = false"), "{text}");
    }

    /// search.html#prefix: whether [low, high] matches a date value [s_low, s_high] with `prefix`,
    /// written as the page states it rather than simplified.
    #[allow(clippy::nonminimal_bool)]
    fn matches(prefix: Prefix, low: i64, high: i64, s_low: i64, s_high: i64) -> bool {
        match prefix {
            Prefix::Eq => low >= s_low && high <= s_high,
            Prefix::Ne => !(low >= s_low && high <= s_high),
            Prefix::Gt => high > s_high,
            Prefix::Lt => low < s_low,
            // The range above (below) the value overlaps the target, or the value contains it.
            Prefix::Ge => high > s_high || (low >= s_low && high <= s_high),
            Prefix::Le => low < s_low || (low >= s_low && high <= s_high),
            Prefix::Sa => low > s_high,
            Prefix::Eb => high < s_low,
            Prefix::Ap => true,
        }
    }

    #[test]
    fn every_match_of_a_date_value_lies_within_the_bounds_of_its_prefix() {
        let points = [0, 3, 5, 8, 10, 13, 15, 20];
        let ranges: Vec<(i64, i64)> = points
            .iter()
            .flat_map(|l| points.iter().filter(move |h| *h >= l).map(move |h| (*l, *h)))
            .collect();
        let prefixes = [
            Prefix::Eq,
            Prefix::Ne,
            Prefix::Gt,
            Prefix::Lt,
            Prefix::Ge,
            Prefix::Le,
            Prefix::Sa,
            Prefix::Eb,
            Prefix::Ap,
        ];
        let mut bounded = 0;
        for prefix in prefixes {
            for &(s_low, s_high) in &ranges {
                let (ends_from, starts_by) = prefix_bounds(prefix, s_low, s_high);
                for &(low, high) in &ranges {
                    if !matches(prefix, low, high, s_low, s_high) {
                        continue;
                    }
                    assert!(
                        ends_from.is_none_or(|e| high >= e),
                        "{prefix:?} {s_low}..{s_high}: {low}..{high}"
                    );
                    assert!(
                        starts_by.is_none_or(|s| low <= s),
                        "{prefix:?} {s_low}..{s_high}: {low}..{high}"
                    );
                    bounded += usize::from(ends_from.is_some() || starts_by.is_some());
                }
            }
        }
        assert!(bounded > 500, "{bounded}");
    }

    #[test]
    fn a_lone_range_criterion_drives_and_negations_probe() {
        let p = planned(
            "Patient",
            &[("birthdate", "lt2000"), ("family", "x"), ("gender:not", "male")],
        )
        .unwrap();
        let text = &p.from_where.text;
        assert!(text.contains("r.res_id IN (SELECT res_id FROM idx_date"), "{text}");
        assert!(text.contains("EXISTS (SELECT 1 FROM idx_string"), "{text}");
        assert!(text.contains("NOT EXISTS (SELECT 1 FROM idx_token"), "{text}");
    }

    #[test]
    fn unknown_parameters_are_ignored_or_refused() {
        let p = planned("Patient", &[("colour", "blue"), ("family", "x")]).unwrap();
        assert_eq!(p.ignored, vec!["colour".to_string()]);
        let pairs = vec![("colour".to_string(), "blue".to_string())];
        assert!(plan(
            &[ResourceType::parse("Patient").unwrap()],
            &Search::parse(&pairs).unwrap(),
            true,
            &see_everything
        )
        .is_err());
    }

    #[test]
    fn malformed_values_name_the_parameter() {
        let Err(Error::Invalid(msg)) = planned("Patient", &[("birthdate", "gt2026-13-45")]) else {
            panic!()
        };
        assert!(msg.contains("birthdate"), "{msg}");
        assert!(planned("Patient", &[("family:below", "x")]).is_err());
        assert!(planned("Patient", &[("_sort", "colour")]).is_err());
        assert!(planned("Patient", &[("active:missing", "maybe")]).is_err());
    }
}
