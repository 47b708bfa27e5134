//! The calendar operations of tandem (DESIGN.md "Time reserved for groups"): `Appointment/$find`,
//! the free start times of one or more actors, and `Appointment/{id}/$cancel-series`, the rest of a
//! weekly series booked by `Group/{id}/$book-session`. Each documented in the README and by its
//! OperationDefinition.

use super::docs;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::{blocking, page_link, query_pairs, read_body, AppState, Ctx};
use crate::auth::Permission;
use crate::error::Error;
use crate::resources::{dates, local_id, parse_reference, Target};
use crate::scheduling;
use crate::search::plan::{plan, see_everything};
use crate::search::Search;
use crate::store::{Op, OpResult, Patcher, Target as WriteTarget, WriteAccess, NO_OP_PATCH};

/// The longest window `$find` looks through.
const MAX_WINDOW_DAYS: i64 = 90;
/// The longest session `$find` looks for (12 hours).
const MAX_DURATION_MINUTES: i64 = 12 * 60;
/// Most actors one `$find` names.
const MAX_ACTORS: usize = 10;
const DEFAULT_DURATION_MINUTES: i64 = 60;
const DEFAULT_GRANULARITY_MINUTES: i64 = 15;
const DEFAULT_PAGE: usize = 20;
const MAX_PAGE: usize = 100;
const MINUTE_MS: i64 = 60_000;

/// What a `$find` asks: the actors, the window, the session's length, the grid and the kind.
#[derive(Debug)]
struct FindQuery {
    /// `Type/id` (or an absolute URL), as bookings name them.
    actors: Vec<String>,
    start: i64,
    start_text: String,
    end: i64,
    duration: i64,
    granularity: i64,
    group: bool,
    count: usize,
    offset: usize,
}

/// An actor as `Type/id`: a bare id, a relative reference of that type, or an absolute one.
fn actor(res_type: &str, value: &str) -> Result<String, Error> {
    let bad = || {
        Error::Invalid(format!(
            "'{}' must be a {res_type} id or reference, not '{value}'",
            res_type.to_lowercase()
        ))
    };
    if crate::resources::is_valid_id(value) {
        return Ok(format!("{res_type}/{value}"));
    }
    match parse_reference(value) {
        Target::Local { res_type: t, id, .. } if t == res_type => Ok(format!("{t}/{id}")),
        Target::External(url) if url.contains(&format!("/{res_type}/")) => Ok(url),
        _ => Err(bad()),
    }
}

fn minutes(name: &str, value: &str, min: i64, max: i64) -> Result<i64, Error> {
    value
        .parse::<i64>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| {
            Error::Invalid(format!(
                "'{name}' must be a whole number of minutes from {min} to {max}, not '{value}'"
            ))
        })
}

fn instant(name: &str, value: &str) -> Result<i64, Error> {
    dates::parse_range(value)
        .filter(|_| value.contains('T'))
        .map(|r| r.low)
        .ok_or_else(|| {
            Error::Invalid(format!(
                "'{name}' must be a dateTime with a time and zone, not '{value}'"
            ))
        })
}

impl FindQuery {
    fn parse(pairs: &[(String, String)]) -> Result<FindQuery, Error> {
        let mut actors = Vec::new();
        let (mut start, mut end) = (None, None);
        let mut duration = DEFAULT_DURATION_MINUTES;
        let mut granularity = DEFAULT_GRANULARITY_MINUTES;
        let mut group = false;
        let mut count = DEFAULT_PAGE;
        let mut offset = 0;
        for (k, v) in pairs {
            match k.as_str() {
                "practitioner" | "location" | "patient" => {
                    let t = match k.as_str() {
                        "practitioner" => "Practitioner",
                        "location" => "Location",
                        _ => "Patient",
                    };
                    for value in v.split(',').filter(|s| !s.is_empty()) {
                        actors.push(actor(t, value)?);
                    }
                }
                "start" => start = Some((instant("start", v)?, v.clone())),
                "end" => end = Some(instant("end", v)?),
                "duration" => duration = minutes("duration", v, 1, MAX_DURATION_MINUTES)?,
                "granularity" => granularity = minutes("granularity", v, 1, 24 * 60)?,
                "kind" => {
                    group = match v.as_str() {
                        "individual" => false,
                        "group" => true,
                        _ => return Err(Error::Invalid(format!("'kind' must be individual or group, not '{v}'"))),
                    }
                }
                "_count" => {
                    count = v
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=MAX_PAGE).contains(n))
                        .ok_or_else(|| Error::Invalid(format!("'_count' must be from 1 to {MAX_PAGE}")))?
                }
                "_cursor" => {
                    offset = v
                        .parse::<usize>()
                        .map_err(|_| Error::Invalid("'_cursor' is not one this server gave".into()))?
                }
                "_format" | "_pretty" => {}
                other => {
                    return Err(Error::Invalid(format!(
                        "$find takes practitioner, location, patient, start, end, duration, granularity, kind and _count, not '{}'",
                        other.chars().take(64).collect::<String>()
                    )))
                }
            }
        }
        actors.sort();
        actors.dedup();
        if actors.is_empty() {
            return Err(Error::Invalid(
                "name at least one practitioner, location or patient".into(),
            ));
        }
        if actors.len() > MAX_ACTORS {
            return Err(Error::Invalid(format!(
                "at most {MAX_ACTORS} practitioners, locations and patients"
            )));
        }
        let (start, start_text) = start.ok_or_else(|| Error::Invalid("'start' is required".into()))?;
        let end = end.ok_or_else(|| Error::Invalid("'end' is required".into()))?;
        if end <= start {
            return Err(Error::Invalid("'end' must be after 'start'".into()));
        }
        if end - start > MAX_WINDOW_DAYS * 24 * 60 * MINUTE_MS {
            return Err(Error::Invalid(format!(
                "the window may be at most {MAX_WINDOW_DAYS} days long"
            )));
        }
        Ok(FindQuery {
            actors,
            start,
            start_text,
            end,
            duration: duration * MINUTE_MS,
            granularity: granularity * MINUTE_MS,
            group,
            count,
            offset,
        })
    }
}

/// The start times on the grid `start + k·granularity` whose session [t, t + duration) lies in the
/// window and overlaps none of `busy` (half-open intervals, in any order).
fn free_starts(start: i64, end: i64, duration: i64, granularity: i64, busy: &[(i64, i64)]) -> Vec<i64> {
    let mut merged: Vec<(i64, i64)> = Vec::with_capacity(busy.len());
    let mut sorted = busy.to_vec();
    sorted.sort_unstable();
    for (s, e) in sorted {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    let mut free = Vec::new();
    let mut next = 0; // the first merged interval that ends after the candidate's start
    let mut t = start;
    while t + duration <= end {
        while next < merged.len() && merged[next].1 <= t {
            next += 1;
        }
        if merged.get(next).is_none_or(|(s, _)| *s >= t + duration) {
            free.push(t);
        }
        t += granularity;
    }
    free
}

/// GET Appointment/$find: free start times for a session of all the named actors.
#[utoipa::path(
    get,
    path = "/Appointment/$find",
    operation_id = "findAppointmentTimes",
    summary = "Find free times for a session",
    description = "The start times, on a grid (15 minutes by default) from `start`, at which a session of `duration` minutes lies inside [start, end) and every named practitioner, room and patient is free: no active booking overlaps it, and for an individual session (kind=individual, the default) no time a Slot reserves for group sessions. A group session (kind=group) may use reserved and unreserved free time alike. Answered as a searchset Bundle of proposed Appointments, paged by _count. Documented at OperationDefinition/Appointment-find.",
    params(
        ("practitioner" = Option<String>, Query, description = "A Practitioner id or reference; may repeat or be comma-separated"),
        ("location" = Option<String>, Query, description = "A Location id or reference; may repeat"),
        ("patient" = Option<String>, Query, description = "A Patient id or reference; may repeat. A patient/ or assigned-clients token may name only patients it reaches"),
        ("start" = String, Query, description = "Start of the window: a dateTime with time and zone"),
        ("end" = String, Query, description = "End of the window (exclusive); at most 90 days after start"),
        ("duration" = Option<i64>, Query, description = "The session's length in minutes (1 to 720; default 60)"),
        ("granularity" = Option<i64>, Query, description = "Minutes between candidate start times (default 15)"),
        ("kind" = Option<String>, Query, description = "individual (default) or group"),
        ("_count" = Option<i64>, Query, description = "Times per page (default 20, at most 100)"),
    ),
    responses(
        (status = 200, description = "The free times, as proposed Appointments", body = docs::Bundle, content_type = "application/fhir+json"),
        (status = 400, description = "A bad window (end before start, over 90 days), duration over 12 hours, or an unknown parameter", body = docs::OperationOutcome, content_type = "application/fhir+json"),
        (status = 403, description = "A patient this token does not reach", body = docs::OperationOutcome, content_type = "application/fhir+json"),
    ),
    extensions(("x-scopes" = json!(["Appointment.s"])), ("x-contexts" = json!(["system", "user", "patient"]))),
)]
pub async fn find(req: HttpRequest, ctx: Ctx, state: web::Data<AppState>) -> Result<HttpResponse, Error> {
    ctx.negotiated()?;
    let pairs = query_pairs(&req);
    find_times(&ctx, &state, pairs).await
}

/// POST Appointment/$find: the same, its parameters in a Parameters resource (operations.html:
/// every operation may be invoked by POST).
#[utoipa::path(
    post,
    path = "/Appointment/$find",
    operation_id = "findAppointmentTimesPost",
    summary = "Find free times for a session (parameters in the body)",
    description = "As GET Appointment/$find, with the parameters in a Parameters resource: practitioner, location and patient as valueString (an id or reference) or valueReference; start and end as valueDateTime; duration and granularity as valueInteger; kind as valueCode. _count and paging stay in the URL. Documented at OperationDefinition/Appointment-find.",
    request_body(content = docs::Parameters, content_type = "application/fhir+json", description = "The $find parameters"),
    responses(
        (status = 200, description = "The free times, as proposed Appointments", body = docs::Bundle, content_type = "application/fhir+json"),
        (status = 400, description = "A bad window, duration or parameter", body = docs::OperationOutcome, content_type = "application/fhir+json"),
        (status = 403, description = "A patient this token does not reach", body = docs::OperationOutcome, content_type = "application/fhir+json"),
    ),
    extensions(("x-scopes" = json!(["Appointment.s"])), ("x-contexts" = json!(["system", "user", "patient"]))),
)]
pub async fn find_post(
    req: HttpRequest,
    ctx: Ctx,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    ctx.negotiated()?;
    let params = super::operations::read_parameters(&req, payload, &state, "$find").await?;
    let mut pairs: Vec<(String, String)> = query_pairs(&req)
        .into_iter()
        .filter(|(k, _)| k.starts_with('_'))
        .collect();
    for p in params.get("parameter").and_then(Value::as_array).into_iter().flatten() {
        let name = p.get("name").and_then(Value::as_str).unwrap_or_default();
        let value = ["valueString", "valueCode", "valueDateTime", "valueInstant", "valueUri"]
            .iter()
            .find_map(|k| p.get(*k).and_then(Value::as_str).map(str::to_string))
            .or_else(|| p.get("valueInteger").and_then(Value::as_i64).map(|n| n.to_string()))
            .or_else(|| {
                p.pointer("/valueReference/reference")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .ok_or_else(|| Error::Invalid(format!("parameter '{name}' has no value this operation reads")))?;
        pairs.push((name.to_string(), value));
    }
    find_times(&ctx, &state, pairs).await
}

async fn find_times(ctx: &Ctx, state: &AppState, pairs: Vec<(String, String)>) -> Result<HttpResponse, Error> {
    let reach = ctx.reach("Appointment", Permission::Search)?;
    let q = FindQuery::parse(&pairs)?;
    // A caller limited to some patients' records learns nothing of another patient's calendar.
    if let Some(allowed) = &reach.patients {
        for a in &q.actors {
            let reached = local_id(a, "Patient").is_some_and(|id| allowed.contains(&id));
            if a.contains("Patient/") && !reached {
                return Err(Error::Forbidden(format!("this token does not reach {a}")));
            }
        }
    }
    let store = state.store.clone();
    let (actors, start, end) = (q.actors.clone(), q.start, q.end);
    let busy = blocking(move || store.busy(&actors, start, end)).await?;
    let blocking_times: Vec<(i64, i64)> = busy
        .iter()
        .filter(|b| !(q.group && b.reserved))
        .map(|b| (b.start_ms, b.end_ms))
        .collect();
    let free = free_starts(q.start, q.end, q.duration, q.granularity, &blocking_times);
    let offset_minutes = dates::offset_minutes(&q.start_text).unwrap_or(0);
    let at = |ms: i64| {
        dates::format_at_offset(ms, offset_minutes)
            .ok_or_else(|| Error::Invalid("the window reaches past the year 9999".into()))
    };
    let page: Vec<Value> = free
        .iter()
        .skip(q.offset)
        .take(q.count)
        .map(|t| {
            Ok(json!({
                "resource": {
                    "resourceType": "Appointment",
                    "status": "proposed",
                    "start": at(*t)?,
                    "end": at(t + q.duration)?,
                    "minutesDuration": q.duration / MINUTE_MS,
                    "participant": q.actors.iter().map(|a| json!({"actor": {"reference": a}, "required": "required", "status": "needs-action"})).collect::<Vec<_>>(),
                },
                "search": {"mode": "match"},
            }))
        })
        .collect::<Result<_, Error>>()?;
    let kept: Vec<(String, String)> = pairs.into_iter().filter(|(k, _)| k != "_cursor").collect();
    let link = |relation: &str, cursor: Option<usize>| {
        let cursor = cursor.filter(|c| *c > 0).map(|c| c.to_string());
        json!({"relation": relation, "url": page_link(ctx, "Appointment/$find", &kept, cursor.as_deref())})
    };
    let mut links = vec![link("self", Some(q.offset))];
    if q.offset > 0 {
        links.push(link("previous", Some(q.offset.min(free.len()).saturating_sub(q.count))));
    }
    let next = q.offset.saturating_add(q.count);
    if next < free.len() {
        links.push(link("next", Some(next)));
    }
    ctx.audit(|d| {
        d.entities = q.actors.clone();
        d.patients = q.actors.iter().filter_map(|a| local_id(a, "Patient")).collect();
    });
    Ok(ctx.body(
        HttpResponse::Ok(),
        &json!({"resourceType": "Bundle", "id": uuid::Uuid::new_v4().to_string(),
                "meta": {"lastUpdated": dates::format_instant(dates::now_millis())},
                "type": "searchset", "total": free.len(), "link": links, "entry": page}),
    ))
}

/// Statuses of an occurrence that `$cancel-series` cancels: not yet under way, not yet ended.
const CANCELLABLE: [&str; 4] = ["proposed", "pending", "booked", "waitlist"];

/// Most occurrences one series holds for `$cancel-series` (a series is booked with at most 52).
const SERIES_CAP: i64 = 1_000;

/// POST Appointment/{id}/$cancel-series: this occurrence and every later one of its series that has
/// not started, cancelled in one transaction.
#[utoipa::path(
    post,
    path = "/Appointment/{id}/$cancel-series",
    operation_id = "cancelSeries",
    summary = "Cancel the rest of a weekly series",
    description = "Cancels this occurrence of a weekly series (booked by Group $book-session with count) and every later occurrence of the same series that has not started: status cancelled, cancelationReason from `reason`, their time freed. Occurrences under way, ended or already cancelled are left as they are. All in one transaction. Answers with a Bundle (collection) of the Appointments it changed. Documented at OperationDefinition/Appointment-cancel-series.",
    params(("id" = String, Path, description = "The logical id of the resource")),
    request_body(content = docs::Parameters, content_type = "application/fhir+json", description = "Optional: reason (valueString). A request with no body cancels without a reason"),
    responses(
        (status = 200, description = "What was cancelled", body = docs::Bundle, content_type = "application/fhir+json"),
        (status = 404, description = "No Appointment has this id", body = docs::OperationOutcome, content_type = "application/fhir+json"),
        (status = 422, description = "The Appointment is not an occurrence of a series", body = docs::OperationOutcome, content_type = "application/fhir+json"),
    ),
    extensions(("x-scopes" = json!(["Appointment.r", "Appointment.u"])), ("x-contexts" = json!(["system", "user"]))),
)]
pub(crate) async fn cancel_series(
    req: &HttpRequest,
    ctx: &Ctx,
    state: &AppState,
    id: &str,
    payload: web::Payload,
) -> Result<HttpResponse, Error> {
    ctx.grant_all("Appointment", Permission::Read)?;
    ctx.grant_all("Appointment", Permission::Update)?;
    let body = read_body(req, payload, state.config.max_body_bytes).await?;
    let reason = if body.is_empty() {
        None
    } else {
        let params = super::operations::parse_parameters(req, &body, "$cancel-series")?;
        let reason = super::operations::parameter(&params, "reason").next().map(|p| {
            p.get("valueString")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| Error::Invalid("parameter 'reason' must be a valueString".into()))
        });
        reason.transpose()?
    };
    let rt = super::resource_type("Appointment")?;
    let store = state.store.clone();
    let owned = id.to_string();
    let current = blocking(move || store.read(rt, &owned)).await?;
    let appointment = super::search::parse_body(&current)?;
    // The store keeps every claim well formed (store::scheduling::check_series).
    let Ok(Some((number, first_id))) = scheduling::series_claim(&appointment) else {
        return Err(Error::Unprocessable(format!(
            "Appointment/{id} is not an occurrence of a series (it has no recurrenceId)"
        )));
    };
    let root = first_id.unwrap_or_else(|| id.to_string());
    // The series: its first occurrence and every Appointment that names it as such (the store lets
    // only the clinic set that, for a first occurrence of the same Group), still to come and not
    // cancelled: what is past does not count against the cap.
    let now = dates::now_millis();
    let search = Search::parse(&[
        ("originating-appointment".to_string(), format!("Appointment/{root}")),
        ("status".to_string(), CANCELLABLE.join(",")),
        ("date".to_string(), format!("gt{}", dates::format_instant(now))),
    ])?;
    let planned = plan(&[rt], &search, true, &see_everything)?;
    let store = state.store.clone();
    let root_id = (root != id).then(|| root.clone());
    let (first, later) = blocking(move || {
        // The first occurrence is this one, already read, or read here.
        let first = match root_id {
            Some(r) => store.read(rt, &r).ok(),
            None => Some(current),
        };
        store.search_all(&planned, SERIES_CAP).map(|later| (first, later))
    })
    .await?;
    let group = first
        .as_ref()
        .map(super::search::parse_body)
        .transpose()?
        .and_then(|f| scheduling::session_group(&f));
    let mut targets: Vec<(u64, i64, String)> = Vec::new();
    let mut patients: Vec<String> = Vec::new();
    for v in first.iter().chain(later.iter()) {
        let a = super::search::parse_body(v)?;
        let Ok(Some((n, _))) = scheduling::series_claim(&a) else {
            continue;
        };
        if n >= number
            && cancellable(&a, now)
            && scheduling::session_group(&a) == group
            && !targets.iter().any(|(_, _, t)| *t == v.res_id)
        {
            patients.extend(scheduling::patient_ids(&a));
            let start = scheduling::window(&a).map_or(i64::MAX, |w| w.0);
            targets.push((n, start, v.res_id.clone()));
        }
    }
    targets.sort();
    let ops: Vec<Op> = targets
        .iter()
        .map(|(n, _, target)| {
            let reason = reason.clone();
            Op::Patch {
                label: format!("occurrence {n} (Appointment/{target})"),
                rt,
                target: WriteTarget::Id(target.clone()),
                // Decided again on the locked current version: an occurrence that started or
                // changed status since it was read is left as it is.
                patcher: Patcher(std::sync::Arc::new(move |current: &Value| {
                    let mut next = current.clone();
                    if cancellable(current, dates::now_millis()) {
                        next["status"] = json!("cancelled");
                        if let Some(r) = &reason {
                            next["cancelationReason"] = json!({"text": r});
                        }
                    }
                    Ok(next)
                })),
                if_match: None,
                access: WriteAccess::full(),
            }
        })
        .collect();
    let store = state.store.clone();
    let results = if ops.is_empty() {
        Vec::new()
    } else {
        blocking(move || store.transaction(&ops)).await?
    };
    let mut entries = Vec::new();
    let mut changed = Vec::new();
    for r in results {
        if let OpResult::Updated(outcome) = r {
            if outcome.version.method == NO_OP_PATCH {
                continue;
            }
            changed.push(format!(
                "Appointment/{}/_history/{}",
                outcome.version.res_id, outcome.version.version_id
            ));
            entries.push(json!({
                "fullUrl": ctx.url(&format!("Appointment/{}", outcome.version.res_id)),
                "resource": super::search::parse_body(&outcome.version)?,
            }));
        }
    }
    patients.sort();
    patients.dedup();
    ctx.audit(|d| {
        d.entities = std::iter::once(format!("Appointment/{id}")).chain(changed).collect();
        d.patients = patients;
    });
    Ok(ctx.body(HttpResponse::Ok(), &collection(entries)))
}

/// A collection Bundle of `entries` (what $book-session's series and $cancel-series answer); no
/// `total`, which R4 allows only in a searchset or a history (bdl-1).
pub(super) fn collection(entries: Vec<Value>) -> Value {
    json!({"resourceType": "Bundle", "id": uuid::Uuid::new_v4().to_string(),
           "meta": {"lastUpdated": dates::format_instant(dates::now_millis())},
           "type": "collection", "entry": entries})
}

/// Whether `$cancel-series` cancels this occurrence at `now`: one still to come (a start after now)
/// in a status that is not under way, ended or cancelled.
fn cancellable(appointment: &Value, now: i64) -> bool {
    let status = appointment.get("status").and_then(Value::as_str).unwrap_or("");
    CANCELLABLE.contains(&status) && scheduling::window(appointment).is_some_and(|(start, _)| start > now)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 60 * MINUTE_MS;

    #[test]
    fn free_starts_skip_every_busy_interval_and_stay_in_the_window() {
        // 09:00-13:00, hour sessions on a half-hour grid; busy 10:00-10:30 and 11:30-12:00.
        let free = free_starts(
            9 * H,
            13 * H,
            H,
            H / 2,
            &[(11 * H + H / 2, 12 * H), (10 * H, 10 * H + H / 2)],
        );
        assert_eq!(free, vec![9 * H, 10 * H + H / 2, 12 * H]);
        // Back to back with a booking is free; overlapping intervals merge.
        let free = free_starts(0, 4 * H, H, H, &[(H, 2 * H), (H + H / 2, 3 * H - 1)]);
        assert_eq!(free, vec![0, 3 * H]);
        // Nothing fits a session longer than the window.
        assert!(free_starts(0, H, 2 * H, H, &[]).is_empty());
    }

    #[test]
    fn find_refuses_bad_windows() {
        let q = |s: &str| {
            let pairs: Vec<(String, String)> = crate::search::pairs(s.as_bytes());
            FindQuery::parse(&pairs)
        };
        assert!(q("practitioner=moss&start=2026-12-08T09:00:00Z&end=2026-12-08T17:00:00Z").is_ok());
        for bad in [
            "practitioner=moss&start=2026-12-08T09:00:00Z&end=2026-12-08T08:00:00Z",
            "practitioner=moss&start=2026-12-08T09:00:00Z&end=2027-03-09T09:00:01Z",
            "practitioner=moss&start=2026-12-08T09:00:00Z&end=2026-12-09T09:00:00Z&duration=721",
            "start=2026-12-08T09:00:00Z&end=2026-12-08T17:00:00Z",
            "practitioner=moss&start=2026-12-08&end=2026-12-09T09:00:00Z",
            "practitioner=Patient/ann&start=2026-12-08T09:00:00Z&end=2026-12-08T17:00:00Z",
            "practitioner=moss&start=2026-12-08T09:00:00Z&end=2026-12-08T17:00:00Z&kind=couple",
            "practitioner=moss&start=2026-12-08T09:00:00Z&end=2026-12-08T17:00:00Z&practicioner=x",
        ] {
            assert!(matches!(q(bad), Err(Error::Invalid(_))), "{bad}");
        }
    }
}
