//! tandem's operations (each documented in the README): Group $book-session, $attendance and
//! $outcomes, Practitioner $caseload, Patient $everything and $outcomes; and the read-only
//! StructureDefinitions and CodeSystems of its own extensions and codes.

use super::docs;
use std::collections::{BTreeMap, BTreeSet};

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::search::searchset;
use super::{blocking, query_pairs, read_body, resource_type, AppState, Ctx};
use crate::auth::Permission;
use crate::error::Error;
use crate::fhir::{self, Format};
use crate::measures::{self, outcomes};
use crate::resources::{dates, ResourceType};
use crate::scheduling::{self, definitions, APPOINTMENT_SUBJECT};
use crate::search::plan::{plan, see_everything};
use crate::search::Search;
use crate::store::{Op, OpResult, Version, WriteAccess};

/// The current version of `res_type/id`, as JSON (404/410 as for a read).
async fn read_json(state: &AppState, res_type: &'static str, id: &str) -> Result<Value, Error> {
    let rt = ResourceType::parse(res_type).ok_or_else(|| Error::Internal(format!("{res_type} is not hosted")))?;
    let store = state.store.clone();
    let id = id.to_string();
    let version = blocking(move || store.read(rt, &id)).await?;
    super::search::parse_body(&version)
}

/// Most sessions one $attendance or $caseload report reads.
const REPORT_CAP: i64 = 10_000;

/// The instance operations: the type, the operation and the one method it takes. The dispatcher
/// below and the OpenAPI document (each operation's function carries its description) follow it.
pub const OPERATIONS: [(&str, &str, &str); 8] = [
    ("Group", "$book-session", "POST"),
    ("Appointment", "$cancel-series", "POST"),
    ("Group", "$attendance", "GET"),
    ("Group", "$export", "GET"),
    ("Group", "$outcomes", "GET"),
    ("Practitioner", "$caseload", "GET"),
    ("Patient", "$everything", "GET"),
    ("Patient", "$outcomes", "GET"),
];

/// `/{type}/{id}/$operation`: dispatches to the operation, or 404 for one this type does not have.
pub async fn instance_operation(
    req: HttpRequest,
    ctx: Ctx,
    path: web::Path<(String, String, String)>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    let (type_name, id, operation) = path.into_inner();
    ctx.negotiated()?;
    let rt = resource_type(&type_name)?;
    let method = req.method().as_str();
    let Some((_, _, expected)) = OPERATIONS.iter().find(|(t, o, _)| *t == rt.as_str() && *o == operation) else {
        return Err(Error::UnsupportedType(format!(
            "{rt} has no operation '{operation}' on this server"
        )));
    };
    if method != *expected {
        return Err(Error::MethodNotAllowed(format!(
            "{method} is not supported for {operation}: use {expected}"
        )));
    }
    match operation.as_str() {
        "$book-session" => book_session(&req, &ctx, &state, &id, payload).await,
        "$cancel-series" => super::calendar::cancel_series(&req, &ctx, &state, &id, payload).await,
        "$export" => super::export::group_export(&req, &ctx, &state, &id).await,
        "$attendance" => attendance(&req, &ctx, &state, &id).await,
        "$caseload" => caseload(&req, &ctx, &state, &id).await,
        "$outcomes" if rt.as_str() == "Group" => group_outcomes(&req, &ctx, &state, &id).await,
        "$outcomes" => patient_outcomes(&req, &ctx, &state, &id).await,
        _ => everything(&req, &ctx, &state, &id).await,
    }
}

/// The Parameters resource an operation takes as its body: its Content-Type checked (415) before the
/// body is read, then [`parse_parameters`].
pub(super) async fn read_parameters(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    operation: &str,
) -> Result<Value, Error> {
    body_format(req)?;
    let body = read_body(req, payload, state.config.max_body_bytes).await?;
    parse_parameters(req, &body, operation)
}

/// `body` as the Parameters resource of `operation`, in the format its Content-Type names (415 for
/// another, 400 for a body that is not a Parameters).
pub(super) fn parse_parameters(req: &HttpRequest, body: &[u8], operation: &str) -> Result<Value, Error> {
    let params = fhir::parse_resource(body, body_format(req)?)?;
    if params.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(Error::Structure(format!("{operation} takes a Parameters resource")));
    }
    Ok(params)
}

fn body_format(req: &HttpRequest) -> Result<Format, Error> {
    Format::from_content_type(req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()))
}

/// The one `name` parameter, if given (400 when it is given more than once).
fn single_parameter<'a>(params: &'a Value, name: &str) -> Result<Option<&'a Value>, Error> {
    let mut found = parameter(params, name);
    let first = found.next();
    if found.next().is_some() {
        return Err(Error::Invalid(format!("parameter '{name}' may be given once")));
    }
    Ok(first)
}

pub(super) fn parameter<'a>(params: &'a Value, name: &str) -> impl Iterator<Item = &'a Value> {
    let name = name.to_string();
    params
        .get("parameter")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(move |p| p.get("name").and_then(Value::as_str) == Some(name.as_str()))
}

fn time_parameter(params: &Value, name: &str) -> Result<(String, i64), Error> {
    let p = parameter(params, name)
        .next()
        .ok_or_else(|| Error::Invalid(format!("parameter '{name}' is required")))?;
    let text = ["valueDateTime", "valueInstant"]
        .iter()
        .find_map(|k| p.get(*k).and_then(Value::as_str))
        .ok_or_else(|| Error::Invalid(format!("parameter '{name}' must be a dateTime")))?;
    let at = dates::parse_range(text)
        .filter(|_| text.contains('T'))
        .ok_or_else(|| Error::Invalid(format!("parameter '{name}' must be a dateTime with a time and zone")))?;
    Ok((text.to_string(), at.low))
}

fn references(params: &Value, name: &str, expected_type: &str) -> Result<Vec<String>, Error> {
    parameter(params, name)
        .map(|p| {
            let r = p
                .get("valueReference")
                .and_then(|v| v.get("reference"))
                .and_then(Value::as_str)
                .unwrap_or("");
            if r.starts_with(&format!("{expected_type}/"))
                || (r.contains("://") && r.contains(&format!("/{expected_type}/")))
            {
                Ok(r.to_string())
            } else {
                Err(Error::Invalid(format!(
                    "parameter '{name}' must be a reference to a {expected_type}"
                )))
            }
        })
        .collect()
}

/// POST Group/{id}/$book-session: one group session, every active member invited (or the chosen
/// subset), checked against all scheduling rules in the one transaction that creates it.
#[utoipa::path(
    post,
    path = "/Group/{id}/$book-session",
    operation_id = "bookSession",
    summary = "Book a group session",
    description = "Books one group session: an Appointment for the group's facilitator(s), its active members and the room, checked against every participant's calendar (no double booking), the group's capacity, and each member's signed confidentiality agreement. Documented at OperationDefinition/Group-book-session.",
    params(("id" = String, Path, description = "The logical id of the resource")),
    request_body(content = docs::Parameters, content_type = "application/fhir+json", description = "start, end, practitioner (one or more), optional location and description"),
    responses(
        (status = 201, description = "Booked: the new Appointment", body = docs::Appointment, content_type = "application/fhir+json", headers(("Location" = String, description = "The new version's URL: [base]/[type]/[id]/_history/[vid]"), ("ETag" = String, description = "The version, as W/\"n\""), ("Last-Modified" = String, description = "When this version was stored"))),
        (status = 404, description = "No Group has this id", body = docs::OperationOutcome, content_type = "application/fhir+json"),
        (status = 409, description = "A participant or the room is already booked then", body = docs::OperationOutcome, content_type = "application/fhir+json"),
        (status = 422, description = "The session breaks a rule: no agreement signed, over capacity, no active member", body = docs::OperationOutcome, content_type = "application/fhir+json"),
    ),
    extensions(("x-scopes" = json!(["Group.r", "Appointment.c"])), ("x-contexts" = json!(["system", "user"]))),
)]
pub(crate) async fn book_session(
    req: &HttpRequest,
    ctx: &Ctx,
    state: &AppState,
    group_id: &str,
    payload: web::Payload,
) -> Result<HttpResponse, Error> {
    ctx.grant_all("Group", Permission::Read)?;
    ctx.grant_all("Appointment", Permission::Create)?;
    let params = read_parameters(req, payload, state, "$book-session").await?;
    let (start_text, start) = time_parameter(&params, "start")?;
    let (end_text, end) = time_parameter(&params, "end")?;
    if end <= start {
        return Err(Error::Invalid("'end' must be after 'start'".into()));
    }
    let practitioners = references(&params, "practitioner", "Practitioner")?;
    if practitioners.is_empty() {
        return Err(Error::Invalid(
            "at least one 'practitioner' (the facilitator) is required".into(),
        ));
    }
    let locations = references(&params, "location", "Location")?;
    if locations.len() > 1 {
        return Err(Error::Invalid("at most one 'location'".into()));
    }
    let chosen = references(&params, "member", "Patient")?;
    let description = parameter(&params, "description")
        .next()
        .and_then(|p| p.get("valueString"))
        .cloned();
    let count = integer_parameter(&params, "count", 1, MAX_SERIES)?.unwrap_or(1);
    let interval = integer_parameter(&params, "interval", 1, MAX_INTERVAL_WEEKS)?.unwrap_or(1);
    let video = virtual_service_parameter(&params)?;
    let zone = parameter(&params, "timezone")
        .next()
        .map(|p| {
            let name = p.get("valueCode").and_then(Value::as_str).unwrap_or_default();
            dates::time_zone(name).ok_or_else(|| {
                Error::Invalid(format!(
                    "parameter 'timezone' must be a valueCode naming an IANA time zone (America/New_York), not '{name}'"
                ))
            })
        })
        .transpose()?;
    let offset = dates::offset_minutes(&start_text).unwrap_or(0);
    let length = end - start;
    let beyond = || Error::Invalid("the series reaches past the year 9999".into());

    let group = read_json(state, "Group", group_id).await?;
    let appointment_rt = resource_type("Appointment")?;
    let ids: Vec<String> = (0..count).map(|_| crate::resources::new_id()).collect();
    let mut ops = Vec::with_capacity(ids.len());
    let mut invited: Vec<String> = Vec::new();
    for (k, id) in ids.iter().enumerate() {
        // Occurrence k is k·interval weeks on, at the same wall-clock time: in `timezone` across its
        // daylight-saving changes, else in the start's UTC offset. It lasts as long as the first.
        let weeks = k as i64 * interval;
        let (at, at_text, until_text) = match (&zone, k) {
            (None, 0) => (start, start_text.clone(), end_text.clone()),
            (None, _) => {
                let at = start + weeks * WEEK_MS;
                let text = |ms| dates::format_at_offset(ms, offset).ok_or_else(beyond);
                (at, text(at)?, text(at + length)?)
            }
            (Some(zone), _) => {
                let (at, local) = dates::add_weeks_in_zone(start, weeks, zone).ok_or_else(beyond)?;
                let text = |ms| dates::format_at_offset(ms, local).ok_or_else(beyond);
                (at, text(at)?, text(at + length)?)
            }
        };
        let label = if count == 1 {
            "the session".to_string()
        } else {
            format!("occurrence {} of {count} ({at_text})", k + 1)
        };
        // Chosen members who are not active are refused by the store's roster rule (store::scheduling),
        // as on every other path a session is written by, and counted by the refused-bookings metric.
        let members: Vec<String> = if chosen.is_empty() {
            scheduling::active_members(&group, at)
                .into_iter()
                .map(|id| format!("Patient/{id}"))
                .collect()
        } else {
            chosen.clone()
        };
        if members.is_empty() {
            return Err(Error::Unprocessable(format!(
                "{label}: Group/{group_id} has no active members on {}",
                &at_text[..10]
            )));
        }
        invited.extend(members.iter().filter_map(|m| crate::resources::local_id(m, "Patient")));
        let mut extensions =
            vec![json!({"url": APPOINTMENT_SUBJECT, "valueReference": {"reference": format!("Group/{group_id}")}})];
        if let Some(v) = &video {
            extensions.push(v.clone());
        }
        if count > 1 {
            extensions.push(json!({"url": scheduling::APPOINTMENT_RECURRENCE_ID, "valuePositiveInt": k + 1}));
            if k > 0 {
                extensions.push(json!({"url": scheduling::APPOINTMENT_ORIGINATING, "valueReference": {"reference": format!("Appointment/{}", ids[0])}}));
            }
        }
        let mut appointment = json!({
            "resourceType": "Appointment",
            "extension": extensions,
            "status": "booked",
            "start": at_text,
            "end": until_text,
            "participant": session_participants(&practitioners, &locations, &members),
        });
        if let Some(d) = &description {
            appointment["description"] = d.clone();
        }
        ops.push(Op::Create {
            label,
            rt: appointment_rt,
            id: id.clone(),
            resource: appointment,
            access: WriteAccess::full(),
            if_none_exist: None,
            full_url: None,
        });
    }
    // Every occurrence in one transaction: each is checked by the store's rules (double booking,
    // reserved time, roster and agreements on its date, capacity, video service) as it is written,
    // and the first refusal, naming its occurrence, leaves none written.
    let store = state.store.clone();
    let results = blocking(move || store.transaction(&ops)).await?;
    let created: Vec<Version> = results
        .into_iter()
        .map(|r| match r {
            OpResult::Created(v) => Ok(v),
            other => Err(Error::Internal(format!("a booking answered {other:?}"))),
        })
        .collect::<Result<_, _>>()?;
    invited.sort();
    invited.dedup();
    ctx.audit(|d| {
        d.patients = invited;
        d.entities = std::iter::once(format!("Group/{group_id}"))
            .chain(
                created
                    .iter()
                    .map(|v| format!("Appointment/{}/_history/{}", v.res_id, v.version_id)),
            )
            .collect();
        if let [only] = created.as_slice() {
            d.resource = only
                .body
                .as_deref()
                .and_then(|b| serde_json::from_str(b).ok())
                .map(|b| (appointment_rt, b));
        }
    });
    if let [only] = created.as_slice() {
        let mut builder = HttpResponse::build(StatusCode::CREATED);
        builder.insert_header((
            header::LOCATION,
            ctx.url(&format!("Appointment/{}/_history/{}", only.res_id, only.version_id)),
        ));
        return ctx.version(builder, only);
    }
    let entries = created
        .iter()
        .map(|v| {
            Ok(json!({
                "fullUrl": ctx.url(&format!("Appointment/{}", v.res_id)),
                "resource": super::search::parse_body(v)?,
            }))
        })
        .collect::<Result<Vec<_>, Error>>()?;
    Ok(ctx.body(HttpResponse::Created(), &super::calendar::collection(entries)))
}

/// Most occurrences of a weekly series booked at once (a year of weekly sessions).
const MAX_SERIES: i64 = 52;
/// Most weeks between two occurrences of a series.
const MAX_INTERVAL_WEEKS: i64 = 12;
const WEEK_MS: i64 = 7 * 24 * 3_600_000;

/// The participants of a group session: the facilitators (primary performers), the room, and the
/// members invited (needs-action).
fn session_participants(practitioners: &[String], locations: &[String], members: &[String]) -> Vec<Value> {
    let mut participants: Vec<Value> = practitioners
        .iter()
        .map(|r| json!({"type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "PPRF", "display": "primary performer"}]}],
                        "actor": {"reference": r}, "required": "required", "status": "accepted"}))
        .collect();
    participants.extend(
        locations
            .iter()
            .map(|r| json!({"actor": {"reference": r}, "required": "required", "status": "accepted"})),
    );
    participants.extend(
        members
            .iter()
            .map(|r| json!({"actor": {"reference": r}, "required": "optional", "status": "needs-action"})),
    );
    participants
}

/// An optional valueInteger parameter within [min, max] (400 otherwise).
fn integer_parameter(params: &Value, name: &str, min: i64, max: i64) -> Result<Option<i64>, Error> {
    let Some(p) = single_parameter(params, name)? else {
        return Ok(None);
    };
    match p.get("valueInteger").and_then(Value::as_i64) {
        Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
        _ => Err(Error::Invalid(format!(
            "parameter '{name}' must be a valueInteger from {min} to {max}"
        ))),
    }
}

/// The `virtualService` parameter of $book-session, as the R5 cross-version extension it becomes on
/// each Appointment: one sub-extension per part, with the part's value (the store checks the
/// extension's shape and maxParticipants, as for any Appointment written).
fn virtual_service_parameter(params: &Value) -> Result<Option<Value>, Error> {
    let Some(p) = single_parameter(params, "virtualService")? else {
        return Ok(None);
    };
    let parts = p.get("part").and_then(Value::as_array).filter(|a| !a.is_empty()).ok_or_else(|| {
        Error::Invalid("parameter 'virtualService' takes parts: channelType, address, additionalInfo, maxParticipants, sessionKey".into())
    })?;
    let mut extensions = Vec::with_capacity(parts.len());
    for part in parts {
        let name = part.get("name").and_then(Value::as_str).unwrap_or("");
        let Some((_, value_keys, _)) = scheduling::VIRTUAL_SERVICE_PARTS.iter().find(|(n, _, _)| *n == name) else {
            return Err(Error::Invalid(format!(
                "parameter 'virtualService' has no part '{name}'"
            )));
        };
        let (value_key, value) = value_keys
            .iter()
            .find_map(|k| part.get(*k).map(|v| (*k, v)))
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "virtualService part '{name}' takes a {}",
                    value_keys.join(" or a ")
                ))
            })?;
        let mut extension = serde_json::Map::new();
        extension.insert("url".into(), json!(name));
        extension.insert(value_key.to_string(), value.clone());
        extensions.push(Value::Object(extension));
    }
    Ok(Some(
        json!({"url": scheduling::APPOINTMENT_VIRTUAL_SERVICE, "extension": extensions}),
    ))
}

fn window_params(req: &HttpRequest) -> Result<(Option<String>, Option<String>), Error> {
    let mut start = None;
    let mut end = None;
    for (k, v) in query_pairs(req) {
        let check = |v: &str| {
            dates::parse_range(v)
                .map(|_| v.to_string())
                .ok_or_else(|| Error::Invalid(format!("'{k}' must be a date or dateTime, not '{v}'")))
        };
        match k.as_str() {
            "start" => start = Some(check(&v)?),
            "end" => end = Some(check(&v)?),
            _ => {}
        }
    }
    Ok((start, end))
}

/// Appointments of `criterion` whose start falls in [start, end), read whole from the indexes.
async fn sessions(
    state: &AppState,
    criterion: (&str, String),
    start: &Option<String>,
    end: &Option<String>,
) -> Result<Vec<Value>, Error> {
    let pairs = dated(vec![(criterion.0.to_string(), criterion.1)], "date", start, end);
    let rt = ResourceType::parse("Appointment").ok_or_else(|| Error::Internal("Appointment".into()))?;
    let planned = plan(&[rt], &Search::parse(&pairs)?, true, &see_everything)?;
    let store = state.store.clone();
    let found = blocking(move || store.search_all(&planned, REPORT_CAP)).await?;
    found.iter().map(super::search::parse_body).collect()
}

/// Statuses of sessions that took place or are to take place (cancelled and proposed ones do not count).
const COUNTED: [&str; 6] = ["pending", "booked", "arrived", "checked-in", "fulfilled", "noshow"];

fn counted(session: &Value) -> bool {
    session
        .get("status")
        .and_then(Value::as_str)
        .is_some_and(|s| COUNTED.contains(&s))
}

/// GET Group/{id}/$attendance?start=&end=: per member, sessions invited, attended and missed.
#[utoipa::path(
    get,
    path = "/Group/{id}/$attendance",
    operation_id = "groupAttendance",
    summary = "Attendance of a group's members",
    description = "Per member of the group: sessions invited to, attended and missed, in a window. Documented at OperationDefinition/Group-attendance.",
    params(("id" = String, Path, description = "The logical id of the resource"), ("start" = Option<String>, Query, description = "Only sessions that start at or after this date or dateTime"), ("end" = Option<String>, Query, description = "Only sessions that start before this date or dateTime")),
    responses(
        (status = 200, description = "The report", body = docs::Parameters, content_type = "application/fhir+json"),
        (status = 404, description = "No Group has this id", body = docs::OperationOutcome, content_type = "application/fhir+json"),
    ),
    extensions(("x-scopes" = json!(["Group.r", "Appointment.s"])), ("x-contexts" = json!(["system", "user"]))),
)]
pub(crate) async fn attendance(
    req: &HttpRequest,
    ctx: &Ctx,
    state: &AppState,
    group_id: &str,
) -> Result<HttpResponse, Error> {
    ctx.grant_all("Group", Permission::Read)?;
    ctx.grant_all("Appointment", Permission::Search)?;
    let (start, end) = window_params(req)?;
    let group = read_json(state, "Group", group_id).await?;
    let found = sessions(state, ("group", format!("Group/{group_id}")), &start, &end).await?;
    let canonical = &state.store.rules().canonical;
    // Every member on the roster, and anyone who was in a session.
    let mut tally: BTreeMap<String, [i64; 5]> = BTreeMap::new(); // invited, attended, no-show, late-cancel, unrecorded
    for m in group.get("member").and_then(Value::as_array).into_iter().flatten() {
        if let Some(r) = m
            .get("entity")
            .and_then(|e| e.get("reference"))
            .and_then(Value::as_str)
            .filter(|r| r.starts_with("Patient/"))
        {
            tally.entry(r.to_string()).or_default();
        }
    }
    let held: Vec<&Value> = found.iter().filter(|s| counted(s)).collect();
    for session in &held {
        for (patient, declined, code) in scheduling::patient_attendance(session, canonical) {
            if declined {
                continue;
            }
            let t = tally.entry(format!("Patient/{patient}")).or_default();
            t[0] += 1;
            match code {
                Some("attended") => t[1] += 1,
                Some("no-show") => t[2] += 1,
                Some("late-cancel") => t[3] += 1,
                _ => t[4] += 1,
            }
        }
    }
    let mut parameters = vec![json!({"name": "group", "valueReference": {"reference": format!("Group/{group_id}")}})];
    parameters.push(json!({"name": "sessions", "valueInteger": held.len()}));
    let reported: Vec<String> = tally
        .keys()
        .filter_map(|p| crate::resources::local_id(p, "Patient"))
        .collect();
    ctx.audit(|d| d.patients.extend(reported));
    for (patient, [invited, attended, no_show, late_cancel, unrecorded]) in tally {
        parameters.push(json!({"name": "member", "part": [
            {"name": "patient", "valueReference": {"reference": patient}},
            {"name": "invited", "valueInteger": invited},
            {"name": "attended", "valueInteger": attended},
            {"name": "missed", "valueInteger": no_show + late_cancel},
            {"name": "noShow", "valueInteger": no_show},
            {"name": "lateCancel", "valueInteger": late_cancel},
            {"name": "unrecorded", "valueInteger": unrecorded}
        ]}));
    }
    Ok(ctx.body(
        HttpResponse::Ok(),
        &json!({"resourceType": "Parameters", "parameter": parameters}),
    ))
}

/// The measure a `$outcomes` request names (`measure=phq-9|gad-7`), or every measure when it
/// names none and `all` is allowed.
fn measures_param(req: &HttpRequest, all: bool) -> Result<Vec<&'static measures::Measure>, Error> {
    let named: Vec<String> = query_pairs(req)
        .into_iter()
        .filter(|(k, _)| k == "measure")
        .flat_map(|(_, v)| v.split(',').map(str::to_string).collect::<Vec<_>>())
        .collect();
    if named.is_empty() {
        return if all {
            Ok(measures::MEASURES.to_vec())
        } else {
            Err(Error::Invalid("parameter 'measure' is required: phq-9 or gad-7".into()))
        };
    }
    named
        .iter()
        .map(|m| {
            measures::by_id(m).ok_or_else(|| Error::Invalid(format!("'measure' must be phq-9 or gad-7, not '{m}'")))
        })
        .collect()
}

/// The bounds of a report's window as ms: [start, end), open where absent.
fn window_ms(start: &Option<String>, end: &Option<String>) -> (i64, i64) {
    let bound = |v: &Option<String>, open: i64| v.as_deref().and_then(dates::parse_range).map_or(open, |r| r.low);
    (bound(start, i64::MIN), bound(end, i64::MAX))
}

/// Alternatives per search of a report: within a search's limit on the values of one parameter.
const REPORT_CHUNK: usize = 100;

/// `rt` resources matching `pairs` and one of `values` for `param`, read whole, as the caller may
/// see them — or as the server does, for `as_server` (the session Encounters of a group, whose
/// subject is all a report takes from them). The values are asked for in chunks.
async fn report_search(
    ctx: &Ctx,
    state: &AppState,
    rt: &'static str,
    (param, values): (&str, &[String]),
    pairs: Vec<(String, String)>,
    as_server: bool,
) -> Result<Vec<Value>, Error> {
    let rt = ResourceType::parse(rt).ok_or_else(|| Error::Internal(format!("{rt} is not hosted")))?;
    let visible = |rt: ResourceType| ctx.reach(rt.as_str(), Permission::Search);
    let mut out = Vec::new();
    for chunk in values.chunks(REPORT_CHUNK) {
        let mut criteria = pairs.clone();
        criteria.push((param.to_string(), chunk.join(",")));
        let search = Search::parse(&criteria)?;
        let planned = if as_server {
            plan(&[rt], &search, true, &see_everything)?
        } else {
            plan(&[rt], &search, true, &visible)?
        };
        let store = state.store.clone();
        let found = blocking(move || store.search_all(&planned, REPORT_CAP)).await?;
        for v in &found {
            out.push(super::search::parse_body(v)?);
        }
    }
    Ok(out)
}

/// Windowed criteria: `param` ge start and lt end.
fn dated(
    mut pairs: Vec<(String, String)>,
    param: &str,
    start: &Option<String>,
    end: &Option<String>,
) -> Vec<(String, String)> {
    if let Some(s) = start {
        pairs.push((param.into(), format!("ge{s}")));
    }
    if let Some(e) = end {
        pairs.push((param.into(), format!("lt{e}")));
    }
    pairs
}

/// Per patient, sessions attended in the window: (group sessions by Group id, individual
/// sessions). From the finished Encounters of the care record: a client's Encounter partOf a
/// session Encounter whose subject is a Group is a session of that group; one partOf nothing is
/// an individual session.
async fn sessions_attended(
    ctx: &Ctx,
    state: &AppState,
    patients: &[String],
    (start, end): (&Option<String>, &Option<String>),
) -> Result<BTreeMap<String, (BTreeMap<String, u32>, u32)>, Error> {
    let mut out: BTreeMap<String, (BTreeMap<String, u32>, u32)> = BTreeMap::new();
    if patients.is_empty() {
        return Ok(out);
    }
    let (low, high) = window_ms(start, end);
    let subjects: Vec<String> = patients.iter().map(|p| format!("Patient/{p}")).collect();
    let encounters = report_search(
        ctx,
        state,
        "Encounter",
        ("subject", &subjects),
        // Only the clients and the window drive the query: a status or code criterion would list
        // every finished Encounter (or every score) of the clinic; they are checked here instead.
        dated(Vec::new(), "date", start, end),
        false,
    )
    .await?;
    let started = |e: &Value| {
        e.get("status").and_then(Value::as_str) == Some("finished")
            && e.pointer("/period/start")
                .and_then(Value::as_str)
                .and_then(dates::parse_range)
                .is_some_and(|r| low <= r.low && r.low < high)
    };
    let sessions: BTreeSet<String> = encounters
        .iter()
        .filter_map(|e| e.pointer("/partOf/reference").and_then(Value::as_str))
        .filter_map(|r| crate::resources::local_id(r, "Encounter"))
        .collect();
    let mut group_of: BTreeMap<String, String> = BTreeMap::new();
    if !sessions.is_empty() {
        // The sessions the caller's visible Encounters are part of: a group's session Encounter is
        // in no patient's compartment, and only its Group is taken from it.
        let ids: Vec<String> = sessions.into_iter().collect();
        for s in report_search(ctx, state, "Encounter", ("_id", &ids), Vec::new(), true).await? {
            let group = s
                .pointer("/subject/reference")
                .and_then(Value::as_str)
                .and_then(|r| crate::resources::local_id(r, "Group"));
            if let (Some(id), Some(g)) = (s.get("id").and_then(Value::as_str), group) {
                group_of.insert(id.to_string(), g);
            }
        }
    }
    for e in encounters.iter().filter(|e| started(e)) {
        let Some(patient) = e
            .pointer("/subject/reference")
            .and_then(Value::as_str)
            .and_then(|r| crate::resources::local_id(r, "Patient"))
        else {
            continue;
        };
        let entry = out.entry(patient).or_default();
        match e.pointer("/partOf/reference").and_then(Value::as_str) {
            None => entry.1 += 1,
            Some(r) => {
                if let Some(g) = crate::resources::local_id(r, "Encounter").and_then(|s| group_of.get(&s)) {
                    *entry.0.entry(g.clone()).or_default() += 1;
                }
            }
        }
    }
    Ok(out)
}

/// Per patient, their total scores of `measure` in the window, oldest first.
async fn scores_of(
    ctx: &Ctx,
    state: &AppState,
    measure: &measures::Measure,
    patients: &[String],
    (start, end): (&Option<String>, &Option<String>),
) -> Result<BTreeMap<String, Vec<outcomes::Score>>, Error> {
    let mut out: BTreeMap<String, Vec<outcomes::Score>> = BTreeMap::new();
    if patients.is_empty() {
        return Ok(out);
    }
    let (low, high) = window_ms(start, end);
    let subjects: Vec<String> = patients.iter().map(|p| format!("Patient/{p}")).collect();
    // The clients and the window drive the query; the code is checked by score_of.
    let pairs = dated(Vec::new(), "date", start, end);
    let system = measures::observation_identifier(&state.store.rules().canonical);
    for o in report_search(ctx, state, "Observation", ("subject", &subjects), pairs, false).await? {
        if let Some(score) = outcomes::score_of(measure, &system, &o).filter(|s| low <= s.at && s.at < high) {
            out.entry(score.patient.clone()).or_default().push(score);
        }
    }
    for scores in out.values_mut() {
        outcomes::sort_scores(scores);
    }
    Ok(out)
}

/// The Patients on a Group's roster at some time in [low, high): members whose period overlaps it.
fn members_during(group: &Value, low: i64, high: i64) -> Vec<String> {
    let mut members: Vec<String> = group
        .get("member")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|m| {
            let bound = |k: &str| {
                m.pointer(&format!("/period/{k}"))
                    .and_then(Value::as_str)
                    .and_then(dates::parse_range)
            };
            bound("start").map_or(i64::MIN, |r| r.low) < high && bound("end").map_or(i64::MAX, |r| r.high) >= low
        })
        .filter_map(|m| m.pointer("/entity/reference").and_then(Value::as_str))
        .filter_map(|r| crate::resources::local_id(r, "Patient"))
        .collect();
    members.sort();
    members.dedup();
    members
}

/// Most members one Group $outcomes report covers.
const OUTCOME_MEMBERS_CAP: usize = 500;

/// GET Group/{id}/$outcomes?measure=&start=&end=: per member the first and latest score, the
/// change and the sessions attended; then the members who also had individual sessions and those
/// who had group sessions only, summarised.
#[utoipa::path(
    get,
    path = "/Group/{id}/$outcomes",
    operation_id = "groupOutcomes",
    summary = "Outcomes of a group's members",
    description = "For each member of the group in the period: the first and the latest PHQ-9 or GAD-7 total, the change, and the group and individual sessions attended; then two cohorts — members who also had individual sessions, and members who had group sessions only — with their count, how many were measured (two scores or more), the mean change, and the share improved by at least the measure's minimal clinically important difference (PHQ-9 5 points, GAD-7 4). The caller must reach every member's record. Documented at OperationDefinition/Group-outcomes.",
    params(("id" = String, Path, description = "The logical id of the resource"),
           ("measure" = String, Query, description = "phq-9 or gad-7"),
           ("start" = Option<String>, Query, description = "First day (or instant) of the period"),
           ("end" = Option<String>, Query, description = "End of the period (exclusive)")),
    responses(
        (status = 200, description = "The report", body = docs::Parameters, content_type = "application/fhir+json"),
        (status = 400, description = "No measure, or an unknown one; a malformed date", body = docs::OperationOutcome, content_type = "application/fhir+json"),
        (status = 403, description = "The token does not reach every member's record", body = docs::OperationOutcome, content_type = "application/fhir+json"),
        (status = 404, description = "No Group has this id", body = docs::OperationOutcome, content_type = "application/fhir+json"),
    ),
    extensions(("x-scopes" = json!(["Group.r", "Observation.s", "Encounter.s"])), ("x-contexts" = json!(["system", "user"]))),
)]
pub(crate) async fn group_outcomes(
    req: &HttpRequest,
    ctx: &Ctx,
    state: &AppState,
    group_id: &str,
) -> Result<HttpResponse, Error> {
    let measure = match measures_param(req, false)?.as_slice() {
        [one] => *one,
        _ => {
            return Err(Error::Invalid(
                "Group $outcomes reports on one measure: measure=phq-9 or measure=gad-7".into(),
            ))
        }
    };
    let (start, end) = window_params(req)?;
    let group_reach = ctx.reach("Group", Permission::Read)?;
    // A Group the caller may not see, or one deleted, answers as one that does not exist.
    let unknown = || Error::NotFound(format!("Group/{group_id} is not known"));
    let group = match read_json(state, "Group", group_id).await {
        Err(Error::Gone(_)) => return Err(unknown()),
        other => other?,
    };
    if !group_reach.sees(resource_type("Group")?, group_id, &group) {
        return Err(unknown());
    }
    let (low, high) = window_ms(&start, &end);
    let members = members_during(&group, low, high);
    // A report about a group speaks of every member: only a caller who reaches each one's record.
    for rt in ["Observation", "Encounter"] {
        let reach = ctx.reach(rt, Permission::Search)?;
        if reach.own_patient.is_some()
            || reach
                .patients
                .as_ref()
                .is_some_and(|p| members.iter().any(|m| !p.contains(m)))
        {
            return Err(Error::Forbidden(format!(
                "this report covers every member of Group/{group_id}; the token does not reach every member's {rt} records"
            )));
        }
    }
    let reported = members.clone();
    ctx.audit(|d| d.patients.extend(reported));
    if members.len() > OUTCOME_MEMBERS_CAP {
        return Err(Error::Unprocessable(format!(
            "the group had more than {OUTCOME_MEMBERS_CAP} members in the period, more than one report covers; narrow the period"
        )));
    }
    let window = (&start, &end);
    let mut scores = scores_of(ctx, state, measure, &members, window).await?;
    let mut sessions = sessions_attended(ctx, state, &members, window).await?;
    let found: Vec<outcomes::Outcome> = members
        .iter()
        .map(|m| {
            let (groups, individual) = sessions.remove(m).unwrap_or_default();
            outcomes::Outcome {
                patient: m.clone(),
                scores: scores.remove(m).unwrap_or_default(),
                group_sessions: groups.get(group_id).copied().unwrap_or(0),
                individual_sessions: individual,
            }
        })
        .collect();
    let combined: Vec<&outcomes::Outcome> = found
        .iter()
        .filter(|o| o.group_sessions > 0 && o.individual_sessions > 0)
        .collect();
    let group_only: Vec<&outcomes::Outcome> = found
        .iter()
        .filter(|o| o.group_sessions > 0 && o.individual_sessions == 0)
        .collect();
    let canonical = &state.store.rules().canonical;
    let mut parameters = vec![
        json!({"name": "group", "valueReference": {"reference": format!("Group/{group_id}")}}),
        json!({"name": "measure", "valueCanonical": measure.url(canonical)}),
        json!({"name": "mcid", "valueInteger": measure.mcid}),
    ];
    if let Some(s) = &start {
        parameters.push(json!({"name": "start", "valueString": s}));
    }
    if let Some(e) = &end {
        parameters.push(json!({"name": "end", "valueString": e}));
    }
    for o in &found {
        parameters.push(json!({"name": "member", "part": outcomes::member_parts(measure, o)}));
    }
    parameters.push(outcomes::cohort_parameter(
        "individual-and-group",
        &outcomes::cohort(measure, &combined),
    ));
    parameters.push(outcomes::cohort_parameter(
        "group-only",
        &outcomes::cohort(measure, &group_only),
    ));
    Ok(ctx.body(
        HttpResponse::Ok(),
        &json!({"resourceType": "Parameters", "parameter": parameters}),
    ))
}

/// GET Patient/{id}/$outcomes?measure=&start=&end=: one client's scores of each measure, the
/// change, and the sessions attended.
#[utoipa::path(
    get,
    path = "/Patient/{id}/$outcomes",
    operation_id = "patientOutcomes",
    summary = "A client's outcomes across measures",
    description = "For one client in the period: per measure (PHQ-9 and GAD-7, or the one named), every total score in order with its severity band, the first and the latest, the change and whether it is an improvement of at least the minimal clinically important difference; and the group and individual sessions attended. Documented at OperationDefinition/Patient-outcomes.",
    params(("id" = String, Path, description = "The logical id of the resource"),
           ("measure" = Option<String>, Query, description = "phq-9 or gad-7 (default: both)"),
           ("start" = Option<String>, Query, description = "First day (or instant) of the period"),
           ("end" = Option<String>, Query, description = "End of the period (exclusive)")),
    responses(
        (status = 200, description = "The report", body = docs::Parameters, content_type = "application/fhir+json"),
        (status = 400, description = "An unknown measure; a malformed date", body = docs::OperationOutcome, content_type = "application/fhir+json"),
        (status = 404, description = "No Patient has this id (or the caller may not see it)", body = docs::OperationOutcome, content_type = "application/fhir+json"),
    ),
    extensions(("x-scopes" = json!(["Patient.r", "Observation.s", "Encounter.s"])), ("x-contexts" = json!(["system", "user", "patient"]))),
)]
pub(crate) async fn patient_outcomes(
    req: &HttpRequest,
    ctx: &Ctx,
    state: &AppState,
    patient_id: &str,
) -> Result<HttpResponse, Error> {
    let chosen = measures_param(req, true)?;
    let (start, end) = window_params(req)?;
    let reach = ctx.reach("Patient", Permission::Read)?;
    let store = state.store.clone();
    let (rt, pid) = (resource_type("Patient")?, patient_id.to_string());
    // As a read: a patient the caller may not see answers as one that does not exist.
    blocking(move || store.read_visible(rt, &pid, &reach)).await?;
    for rt in ["Observation", "Encounter"] {
        let reach = ctx.reach(rt, Permission::Search)?;
        if reach
            .patients
            .as_ref()
            .is_some_and(|p| !p.iter().any(|p| p == patient_id))
        {
            return Err(Error::NotFound(format!("Patient/{patient_id} is not known")));
        }
    }
    let patients = vec![patient_id.to_string()];
    let window = (&start, &end);
    let (groups, individual) = sessions_attended(ctx, state, &patients, window)
        .await?
        .remove(patient_id)
        .unwrap_or_default();
    let canonical = &state.store.rules().canonical;
    let mut parameters =
        vec![json!({"name": "patient", "valueReference": {"reference": format!("Patient/{patient_id}")}})];
    if let Some(s) = &start {
        parameters.push(json!({"name": "start", "valueString": s}));
    }
    if let Some(e) = &end {
        parameters.push(json!({"name": "end", "valueString": e}));
    }
    parameters.push(json!({"name": "groupSessions", "valueInteger": groups.values().sum::<u32>()}));
    parameters.push(json!({"name": "individualSessions", "valueInteger": individual}));
    for measure in chosen {
        let scores = scores_of(ctx, state, measure, &patients, window)
            .await?
            .remove(patient_id)
            .unwrap_or_default();
        let outcome = outcomes::Outcome {
            patient: patient_id.to_string(),
            scores,
            group_sessions: groups.values().sum(),
            individual_sessions: individual,
        };
        let mut parts = vec![
            json!({"name": "measure", "valueCanonical": measure.url(canonical)}),
            json!({"name": "mcid", "valueInteger": measure.mcid}),
        ];
        parts.extend(outcomes::member_parts(measure, &outcome).into_iter().filter(|p| {
            !matches!(
                p["name"].as_str(),
                Some("patient" | "groupSessions" | "individualSessions")
            )
        }));
        parameters.push(json!({"name": "outcome", "part": parts}));
        for s in &outcome.scores {
            let mut score = vec![
                json!({"name": "measure", "valueCanonical": measure.url(canonical)}),
                json!({"name": "date", "valueDateTime": s.date}),
                json!({"name": "value", "valueInteger": s.value}),
            ];
            if let Some(band) = measure.band(s.value) {
                score.push(json!({"name": "band", "valueCode": band.code}));
            }
            score.push(json!({"name": "observation", "valueReference": {"reference": format!("Observation/{}", s.observation)}}));
            parameters.push(json!({"name": "score", "part": score}));
        }
    }
    Ok(ctx.body(
        HttpResponse::Ok(),
        &json!({"resourceType": "Parameters", "parameter": parameters}),
    ))
}

/// GET Practitioner/{id}/$caseload?start=&end=: booked hours split into individual and group
/// sessions, and the number of distinct patients.
#[utoipa::path(
    get,
    path = "/Practitioner/{id}/$caseload",
    operation_id = "practitionerCaseload",
    summary = "A therapist's caseload",
    description = "Booked hours in a window, split into individual and group sessions, and the number of distinct clients: the numbers that show who is overloaded. Documented at OperationDefinition/Practitioner-caseload.",
    params(("id" = String, Path, description = "The logical id of the resource"), ("start" = Option<String>, Query, description = "Only sessions that start at or after this date or dateTime"), ("end" = Option<String>, Query, description = "Only sessions that start before this date or dateTime")),
    responses(
        (status = 200, description = "The report", body = docs::Parameters, content_type = "application/fhir+json"),
        (status = 404, description = "No Practitioner has this id", body = docs::OperationOutcome, content_type = "application/fhir+json"),
    ),
    extensions(("x-scopes" = json!(["Practitioner.r", "Appointment.s"])), ("x-contexts" = json!(["system", "user"]))),
)]
pub(crate) async fn caseload(
    req: &HttpRequest,
    ctx: &Ctx,
    state: &AppState,
    practitioner_id: &str,
) -> Result<HttpResponse, Error> {
    ctx.grant_all("Practitioner", Permission::Read)?;
    ctx.grant_all("Appointment", Permission::Search)?;
    let (start, end) = window_params(req)?;
    let store = state.store.clone();
    let pid = practitioner_id.to_string();
    blocking(move || {
        store.read(
            ResourceType::parse("Practitioner").ok_or_else(|| Error::Internal("Practitioner".into()))?,
            &pid,
        )
    })
    .await?;
    let found = sessions(
        state,
        ("practitioner", format!("Practitioner/{practitioner_id}")),
        &start,
        &end,
    )
    .await?;
    let me = format!("Practitioner/{practitioner_id}");
    let (mut individual, mut group) = ((0i64, 0i64), (0i64, 0i64)); // (sessions, minutes)
    let mut patients: BTreeSet<String> = BTreeSet::new();
    for session in found
        .iter()
        .filter(|s| counted(s) && s.get("status").and_then(Value::as_str) != Some("noshow"))
    {
        if !scheduling::booked_actors(session).contains(&me) {
            continue; // declined
        }
        let Some((s, e)) = scheduling::window(session) else {
            continue;
        };
        let minutes = (e - s) / 60_000;
        let slot = if scheduling::session_group(session).is_some() {
            &mut group
        } else {
            &mut individual
        };
        slot.0 += 1;
        slot.1 += minutes;
        patients.extend(scheduling::patient_ids(session));
    }
    let hours = |minutes: i64| (minutes as f64 / 60.0 * 100.0).round() / 100.0;
    let mut parameters = vec![json!({"name": "practitioner", "valueReference": {"reference": me}})];
    parameters.extend([
        json!({"name": "individualSessions", "valueInteger": individual.0}),
        json!({"name": "individualHours", "valueDecimal": hours(individual.1)}),
        json!({"name": "groupSessions", "valueInteger": group.0}),
        json!({"name": "groupHours", "valueDecimal": hours(group.1)}),
        json!({"name": "totalHours", "valueDecimal": hours(individual.1 + group.1)}),
        json!({"name": "distinctPatients", "valueInteger": patients.len()}),
    ]);
    Ok(ctx.body(
        HttpResponse::Ok(),
        &json!({"resourceType": "Parameters", "parameter": parameters}),
    ))
}

/// GET Patient/{id}/$everything: the patient, their Appointments, CareTeams, Groups, Consents,
/// Encounters, DocumentReferences (less the psychotherapy notes the caller did not write),
/// Observations and QuestionnaireResponses, as a paged searchset Bundle.
#[utoipa::path(
    get,
    path = "/Patient/{id}/$everything",
    operation_id = "patientEverything",
    summary = "Everything about a patient",
    description = "The patient and every record in their compartment (Appointments, CareTeams, Groups, Consents, Encounters, DocumentReferences, Observations, QuestionnaireResponses), as a paged searchset Bundle. Psychotherapy notes appear only to their author; a patient's own token sees group sessions and Groups without the other members.",
    params(("id" = String, Path, description = "The logical id of the resource"), ("_count" = Option<u32>, Query, description = "Entries per page")),
    responses(
        (status = 200, description = "The patient's records (a searchset Bundle)", body = docs::Bundle, content_type = "application/fhir+json"),
        (status = 404, description = "No Patient has this id", body = docs::OperationOutcome, content_type = "application/fhir+json"),
        (status = 410, description = "The Patient was deleted", body = docs::OperationOutcome, content_type = "application/fhir+json"),
    ),
    extensions(("x-scopes" = json!(["Patient.r"]))),
)]
pub(crate) async fn everything(
    req: &HttpRequest,
    ctx: &Ctx,
    state: &AppState,
    patient_id: &str,
) -> Result<HttpResponse, Error> {
    // A patient/ token may ask for its own patient only, a practitioner's for an assigned client;
    // any other id is as unknown.
    let reach = ctx.reach("Patient", Permission::Read)?;
    if reach
        .patients
        .as_ref()
        .is_some_and(|ps| !ps.iter().any(|p| p == patient_id))
    {
        return Err(Error::NotFound(format!("Patient/{patient_id} is not known")));
    }
    let id = patient_id.to_string();
    ctx.audit(|d| d.patients = vec![id]);
    let mut count = i64::from(state.config.default_count);
    let mut cursor = None;
    for (k, v) in query_pairs(req) {
        match k.as_str() {
            "_count" => {
                count = v
                    .parse::<i64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| Error::Invalid(format!("_count '{v}' is not a positive integer")))?
                    .min(i64::from(state.config.max_count))
            }
            "_cursor" => cursor = Some(v),
            _ => {}
        }
    }
    // What refers to the patient, in the types the caller may search.
    let via: Vec<(&'static str, &'static str)> = [
        ("Appointment", "actor"),
        ("CareTeam", "subject"),
        ("CareTeam", "participant"),
        ("Group", "member"),
        ("Consent", "patient"),
        ("DocumentReference", "subject"),
        ("DocumentReference", "author"),
        ("Encounter", "patient"),
        ("Observation", "subject"),
        ("Observation", "performer"),
        ("QuestionnaireResponse", "subject"),
        ("QuestionnaireResponse", "author"),
        ("Schedule", "actor"),
    ]
    .into_iter()
    .filter(|(t, _)| ctx.grant(t, Permission::Search).is_ok())
    .collect();
    let store = state.store.clone();
    let pid = patient_id.to_string();
    let page = blocking(move || {
        let patient = store.read(
            ResourceType::parse("Patient").ok_or_else(|| Error::Internal("Patient".into()))?,
            &pid,
        )?;
        let mut ids = vec![(patient.res_type.clone(), patient.res_id.clone())];
        ids.extend(store.referring(("Patient", &pid), &via, &reach.notes)?);
        store.page_of(&ids, count, cursor.as_deref())
    })
    .await?;
    let path = format!("Patient/{patient_id}/$everything");
    let params = [("_count".to_string(), count.to_string())];
    let link = |c: Option<String>| super::page_link(ctx, &path, &params, c.as_deref());
    let cursor = query_pairs(req)
        .into_iter()
        .find(|(k, _)| k == "_cursor")
        .map(|(_, v)| v);
    let bundle = searchset(ctx, &page, cursor, &link, &[] as &[Version], None, true, |r| r)?;
    Ok(ctx.body(HttpResponse::Ok(), &bundle))
}

#[utoipa::path(
    get,
    path = "/StructureDefinition",
    operation_id = "listStructureDefinition",
    summary = "tandem's StructureDefinition resources",
    description = "The StructureDefinition resources that define tandem's own extensions, codes and operations (read-only, no token needed).",
    params(("url" = Option<String>, Query, description = "Only the one with this canonical URL")),
    responses(
        (status = 200, description = "A searchset Bundle", body = docs::Bundle, content_type = "application/fhir+json"),
    ),
)]
pub async fn structure_definitions(
    req: HttpRequest,
    ctx: Ctx,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    definitions_list(req, ctx, state).await
}

#[utoipa::path(
    get,
    path = "/CodeSystem",
    operation_id = "listCodeSystem",
    summary = "tandem's CodeSystem resources",
    description = "The CodeSystem resources that define tandem's own extensions, codes and operations (read-only, no token needed).",
    params(("url" = Option<String>, Query, description = "Only the one with this canonical URL")),
    responses(
        (status = 200, description = "A searchset Bundle", body = docs::Bundle, content_type = "application/fhir+json"),
    ),
)]
pub async fn code_systems(req: HttpRequest, ctx: Ctx, state: web::Data<AppState>) -> Result<HttpResponse, Error> {
    definitions_list(req, ctx, state).await
}

#[utoipa::path(
    get,
    path = "/OperationDefinition",
    operation_id = "listOperationDefinition",
    summary = "tandem's OperationDefinition resources",
    description = "The OperationDefinition resources that define tandem's own extensions, codes and operations (read-only, no token needed).",
    params(("url" = Option<String>, Query, description = "Only the one with this canonical URL")),
    responses(
        (status = 200, description = "A searchset Bundle", body = docs::Bundle, content_type = "application/fhir+json"),
    ),
)]
pub async fn operation_definitions(
    req: HttpRequest,
    ctx: Ctx,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    definitions_list(req, ctx, state).await
}

#[utoipa::path(
    get,
    path = "/SearchParameter",
    operation_id = "listSearchParameter",
    summary = "tandem's SearchParameter resources",
    description = "The SearchParameter resources that define tandem's own search parameters (`group` on Appointment), read-only, no token needed. The R4 parameters are HL7's, at http://hl7.org/fhir/SearchParameter/.",
    params(("url" = Option<String>, Query, description = "Only the one with this canonical URL")),
    responses(
        (status = 200, description = "A searchset Bundle", body = docs::Bundle, content_type = "application/fhir+json"),
    ),
)]
pub async fn search_parameters(req: HttpRequest, ctx: Ctx, state: web::Data<AppState>) -> Result<HttpResponse, Error> {
    definitions_list(req, ctx, state).await
}

#[utoipa::path(
    get,
    path = "/SearchParameter/{id}",
    operation_id = "readSearchParameter",
    summary = "Read one of tandem's SearchParameter resources",
    description = "One SearchParameter that tandem defines (read-only, no token needed).",
    params(("id" = String, Path, description = "The logical id of the resource")),
    responses(
        (status = 200, description = "The SearchParameter", body = docs::SearchParameter, content_type = "application/fhir+json"),
        (status = 404, description = "No such SearchParameter", body = docs::OperationOutcome, content_type = "application/fhir+json"),
    ),
)]
pub async fn search_parameter(
    req: HttpRequest,
    ctx: Ctx,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    definition_read(req, ctx, path, state).await
}

#[utoipa::path(
    get,
    path = "/StructureDefinition/{id}",
    operation_id = "readStructureDefinition",
    summary = "Read one of tandem's StructureDefinition resources",
    description = "One StructureDefinition that tandem defines (read-only, no token needed).",
    params(("id" = String, Path, description = "The logical id of the resource")),
    responses(
        (status = 200, description = "The StructureDefinition", body = docs::StructureDefinition, content_type = "application/fhir+json"),
        (status = 404, description = "No such StructureDefinition", body = docs::OperationOutcome, content_type = "application/fhir+json"),
    ),
)]
pub async fn structure_definition(
    req: HttpRequest,
    ctx: Ctx,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    definition_read(req, ctx, path, state).await
}

#[utoipa::path(
    get,
    path = "/CodeSystem/{id}",
    operation_id = "readCodeSystem",
    summary = "Read one of tandem's CodeSystem resources",
    description = "One CodeSystem that tandem defines (read-only, no token needed).",
    params(("id" = String, Path, description = "The logical id of the resource")),
    responses(
        (status = 200, description = "The CodeSystem", body = docs::CodeSystem, content_type = "application/fhir+json"),
        (status = 404, description = "No such CodeSystem", body = docs::OperationOutcome, content_type = "application/fhir+json"),
    ),
)]
pub async fn code_system(
    req: HttpRequest,
    ctx: Ctx,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    definition_read(req, ctx, path, state).await
}

#[utoipa::path(
    get,
    path = "/OperationDefinition/{id}",
    operation_id = "readOperationDefinition",
    summary = "Read one of tandem's OperationDefinition resources",
    description = "One OperationDefinition that tandem defines (read-only, no token needed).",
    params(("id" = String, Path, description = "The logical id of the resource")),
    responses(
        (status = 200, description = "The OperationDefinition", body = docs::OperationDefinition, content_type = "application/fhir+json"),
        (status = 404, description = "No such OperationDefinition", body = docs::OperationOutcome, content_type = "application/fhir+json"),
    ),
)]
pub async fn operation_definition(
    req: HttpRequest,
    ctx: Ctx,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    definition_read(req, ctx, path, state).await
}

/// GET /StructureDefinition, /CodeSystem and /OperationDefinition (optionally `?url=`): tandem's own
/// definitions.
async fn definitions_list(req: HttpRequest, ctx: Ctx, state: web::Data<AppState>) -> Result<HttpResponse, Error> {
    ctx.negotiated()?;
    let res_type = req.path().trim_start_matches('/').split('/').next().unwrap_or("");
    let all = definitions::of_type(&state.store.rules().canonical, res_type)
        .ok_or_else(|| Error::NotFound(req.path().to_string()))?;
    let wanted_url = query_pairs(&req).into_iter().find(|(k, _)| k == "url").map(|(_, v)| v);
    let entries: Vec<Value> = all
        .into_iter()
        .filter(|d| wanted_url.as_deref().is_none_or(|u| d["url"] == u))
        .map(|d| json!({"fullUrl": ctx.url(&format!("{res_type}/{}", d["id"].as_str().unwrap_or(""))), "resource": d, "search": {"mode": "match"}}))
        .collect();
    let bundle = json!({
        "resourceType": "Bundle", "id": uuid::Uuid::new_v4().to_string(),
        "meta": {"lastUpdated": dates::format_instant(dates::now_millis())},
        "type": "searchset", "total": entries.len(),
        "link": [{"relation": "self", "url": ctx.url(req.path().trim_start_matches('/'))}],
        "entry": entries,
    });
    Ok(ctx.body(HttpResponse::Ok(), &bundle))
}

/// GET /StructureDefinition/{id}, /CodeSystem/{id} and /OperationDefinition/{id}.
async fn definition_read(
    req: HttpRequest,
    ctx: Ctx,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    ctx.negotiated()?;
    let res_type = req.path().trim_start_matches('/').split('/').next().unwrap_or("");
    let found = definitions::of_type(&state.store.rules().canonical, res_type)
        .into_iter()
        .flatten()
        .find(|d| d["id"] == path.as_str())
        .ok_or_else(|| Error::NotFound(format!("{res_type}/{} is not known", path.as_str())))?;
    Ok(ctx.body(HttpResponse::Ok(), &found))
}
