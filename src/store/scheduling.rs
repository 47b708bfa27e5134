//! The scheduling rules, enforced inside the write transaction of the resource they concern
//! (see crate::scheduling for the model). Double-booking is guarded by the database: the overlap
//! check runs after SQLite's write lock is taken, and PostgreSQL's exclusion constraint refuses
//! what a concurrent transaction slipped in (the write is then retried and the check names it).

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use serde_json::Value;

use super::hooks::Change;
use super::reads::{load_current, may_see};
use super::schema::{bookings, resources};
use super::search::{load, IdOnly};
use super::write::Tx;
use super::{Abort, AnyConnection, WriteAccess};
use crate::error::{BookingRefusal, Error};
use crate::resources::{dates, index, ResourceType};
use crate::scheduling::{self, Rules, GROUP_CONFIDENTIALITY};
use crate::search::plan::Sql;

/// Booking rows per INSERT: 4,000 bound values at most (4 columns).
const BOOKINGS_CHUNK: usize = 1000;

fn day(ms: i64) -> String {
    dates::format_instant(ms)[..10].to_string()
}

/// Before a Group is stored: Group.quantity counts the members active at the write's time.
pub(super) fn before_group(tx: &mut Tx, _change: &Change, group: &mut Value) -> Result<(), Abort> {
    scheduling::keep_group_quantity(group, tx.now);
    Ok(())
}

/// Before an Appointment is stored: it books its participants' time (no double booking), and a
/// group session holds only active members of its group, within capacity, each with an agreement.
/// The one place the roster rule is checked, whichever path the session comes by.
pub(super) fn before_appointment(tx: &mut Tx, change: &Change, appointment: &mut Value) -> Result<(), Abort> {
    if let (Some(_), Some(previous)) = (&change.access.reach.own_patient, change.previous) {
        scheduling::keep_session_key(appointment, previous);
    }
    check_video_session(appointment, change.previous)?;
    check_series(tx.c, change, appointment)?;
    book(tx.c, change.id, appointment, change.previous.is_some(), change.access)?;
    check_group_session(tx.c, tx.rules, appointment, change.previous)
}

/// After an Appointment is deleted: the time it held is free.
pub(super) fn free_bookings(tx: &mut Tx, id: &str) -> Result<(), Abort> {
    diesel::delete(bookings::table.filter(bookings::appointment_id.eq(id))).execute(tx.c)?;
    Ok(())
}

/// A video session's virtualService is well formed (checked when it changes, so an Appointment
/// stored in another shape before can still be cancelled), and while the session holds time its
/// service takes everyone invited (a maxParticipants below the people invited is 422): a stored
/// session never promises what its video service cannot hold.
fn check_video_session(appointment: &Value, previous: Option<&Value>) -> Result<(), Abort> {
    if previous.is_none_or(|p| !scheduling::virtual_services(p).eq(scheduling::virtual_services(appointment))) {
        scheduling::check_virtual_service(appointment).map_err(Error::Unprocessable)?;
    }
    if scheduling::held_window(appointment).is_none() {
        return Ok(());
    }
    if let Some(max) = scheduling::max_participants(appointment) {
        let invited = scheduling::invited_people(appointment);
        if invited as u64 > max {
            return Err(Error::booking(
                BookingRefusal::TooManyParticipants,
                format!(
                    "the session's video service takes at most {max} participants (virtualService maxParticipants); {invited} are invited"
                ),
            )
            .into());
        }
    }
    Ok(())
}

/// The place an Appointment claims in a series (R5 recurrenceId, originatingAppointment) is one the
/// clinic gave it: when the claim changes, the writer reaches every record (a client's token may not
/// join or leave a series), and a later occurrence names a first occurrence of the same Group that
/// exists here (recurrenceId 1, itself of no other series). `$cancel-series` relies on it.
fn check_series(c: &mut AnyConnection, change: &Change, appointment: &Value) -> Result<(), Abort> {
    let claim = scheduling::series_claim(appointment).map_err(Error::Unprocessable)?;
    let before = change.previous.and_then(|p| scheduling::series_claim(p).ok().flatten());
    if claim == before {
        return Ok(());
    }
    if change.access.reach.patients.is_some() {
        return Err(Error::Forbidden(
            "the occurrences of a series are the clinic's to set: this token may not change recurrenceId or originatingAppointment".into(),
        )
        .into());
    }
    let Some((_, Some(first))) = claim else {
        return Ok(());
    };
    let invalid = |why: &str| -> Abort {
        Error::Unprocessable(format!("originatingAppointment Appointment/{first} {why}")).into()
    };
    if first == change.id {
        return Err(invalid("is this Appointment itself"));
    }
    let (_, root) = super::reads::current_bodies(c, "Appointment", std::slice::from_ref(&first))?
        .pop()
        .ok_or_else(|| invalid("does not exist on this server"))?;
    if scheduling::series_claim(&root).ok().flatten() != Some((1, None)) {
        return Err(invalid("is not the first occurrence of a series (recurrenceId 1)"));
    }
    if scheduling::session_group(&root) != scheduling::session_group(appointment) {
        return Err(invalid("is a session of another group"));
    }
    Ok(())
}

/// Replaces the appointment's bookings; refuses (409) a clash with another active appointment.
/// `replacing`: an earlier version exists, whose bookings go first (a new or deleted appointment has
/// none). The refusal names the clashing Appointment and its time only to a writer who may read it:
/// anyone else learns that the time is taken, not whose session holds it (narrowing the window
/// would otherwise map another client's therapy schedule).
fn book(
    c: &mut AnyConnection,
    id: &str,
    appointment: &Value,
    replacing: bool,
    access: &WriteAccess,
) -> Result<(), Abort> {
    if replacing {
        diesel::delete(bookings::table.filter(bookings::appointment_id.eq(id))).execute(c)?;
    }
    let Some((start, end)) = scheduling::held_window(appointment) else {
        return Ok(());
    };
    let actors = scheduling::booked_actors(appointment);
    let kind = if scheduling::session_group(appointment).is_some() {
        "group"
    } else {
        "individual"
    };
    // The bookings index holds bounded keys, as the search indexes do: an absolute reference may be
    // longer than a btree (or GiST) entry can be.
    let keys: Vec<String> = actors.iter().map(|a| index::index_key(a).into_owned()).collect();
    // Each actor's latest booking, and for an individual session the reserved time it would fall
    // in: one statement.
    let (reserved, latest): (Vec<LatestBooking>, Vec<LatestBooking>) =
        latest_bookings(c, &keys, end, (kind == "individual").then_some(start))?
            .into_iter()
            .partition(|b| b.kind == "reserved");
    // An individual session stays out of the time Slots reserve for groups.
    if kind == "individual" {
        if let Some(r) = reserved.into_iter().next() {
            let actor = actor_of(&actors, &keys, &r.actor);
            return Err(Error::booking(
                BookingRefusal::ReservedTime,
                format!(
                    "{actor}'s time from {} to {} is reserved for group sessions by {}: an individual session may not be booked in it",
                    dates::format_instant(r.start_ms),
                    dates::format_instant(r.end_ms),
                    r.appointment_id
                ),
            )
            .into());
        }
    }
    // In the order of the actors, so that the refusal names the same clash every time.
    for (actor, key) in actors.iter().zip(&keys) {
        let clash = latest.iter().find(|b| &b.actor == key && b.end_ms > start);
        if let Some(b) = clash {
            let message = if may_see_appointment(c, access, &b.appointment_id)? {
                format!(
                    "{actor} is already booked from {} to {} by Appointment/{}",
                    dates::format_instant(b.start_ms),
                    dates::format_instant(b.end_ms),
                    b.appointment_id
                )
            } else {
                format!("{actor} is not free at that time")
            };
            return Err(Error::booking(BookingRefusal::DoubleBooking, message).into());
        }
    }
    // All of them in one statement, once every actor is known to be free.
    if let AnyConnection::Postgresql(pg) = c {
        use super::fixed::Bind::{One, OneInt, Text};
        return Ok(super::fixed::insert(
            pg,
            keys.len(),
            "INSERT INTO bookings (appointment_id, actor, start_ms, end_ms, kind) \
             SELECT ?, actor, ?, ?, ? FROM unnest(?) AS a(actor)",
            vec![
                One(id),
                OneInt(start),
                OneInt(end),
                One(kind),
                Text(keys.iter().map(String::as_str).collect()),
            ],
        )?);
    }
    insert_rows!(
        c,
        bookings::table,
        keys.iter()
            .map(|actor| {
                (
                    bookings::appointment_id.eq(id),
                    bookings::actor.eq(actor),
                    bookings::start_ms.eq(start),
                    bookings::end_ms.eq(end),
                    bookings::kind.eq(kind),
                )
            })
            .collect(),
        BOOKINGS_CHUNK
    );
    Ok(())
}

/// The actor (as the resource names it) whose bounded booking key is `key`.
fn actor_of<'a>(actors: &'a [String], keys: &[String], key: &'a str) -> &'a str {
    actors
        .iter()
        .zip(keys)
        .find(|(_, k)| k.as_str() == key)
        .map_or(key, |(a, _)| a.as_str())
}

/// The owner of a Slot's reserved rows in the bookings table (`Slot/{id}`: never an Appointment id).
fn slot_owner(id: &str) -> String {
    format!("Slot/{id}")
}

/// Before a Slot is stored: the time it reserves for group sessions on its Schedule's practitioners
/// and rooms (see scheduling::reserved_window), replacing what it reserved before. Reserving time
/// that already holds an individual session is refused (409): the session stands, and the time is
/// not free to reserve. Changing or deleting the Slot frees what it held and never touches sessions.
pub(super) fn before_slot(tx: &mut Tx, change: &Change, slot: &mut Value) -> Result<(), Abort> {
    let actors = match slot
        .pointer("/schedule/reference")
        .and_then(Value::as_str)
        .and_then(|r| crate::resources::local_id(r, "Schedule"))
    {
        Some(schedule) => schedule_actors_of(tx.c, &schedule)?,
        None => Vec::new(),
    };
    reserve(tx.c, change.id, slot, &actors, &tx.rules.canonical, change.access)
}

/// When a Slot is deleted: the time it reserved is free.
pub(super) fn slot_deleted(tx: &mut Tx, change: &Change) -> Result<(), Abort> {
    // Taking the Schedule's turn: a concurrent refresh of it does not write this Slot's rows back.
    if let Some(schedule) = change
        .previous
        .and_then(|p| p.pointer("/schedule/reference"))
        .and_then(Value::as_str)
        .and_then(|r| crate::resources::local_id(r, "Schedule"))
    {
        schedule_actors_of(tx.c, &schedule)?;
    }
    diesel::delete(bookings::table.filter(bookings::appointment_id.eq(slot_owner(change.id)))).execute(tx.c)?;
    Ok(())
}

/// After a Schedule is stored, or deleted (`schedule` None): its Slots reserve the time of its
/// practitioners and rooms as they now are.
pub(super) fn refresh_schedule(tx: &mut Tx, id: &str, schedule: Option<&Value>) -> Result<(), Abort> {
    let actors = schedule.map(scheduling::schedule_actors).unwrap_or_default();
    let slots = super::reads::referring_ids(tx.c, "Slot", "schedule", "Schedule", id)?;
    let rows = super::reads::current_bodies(tx.c, "Slot", &slots)?;
    let canonical = tx.rules.canonical.clone();
    for (slot_id, slot) in rows {
        reserve(tx.c, &slot_id, &slot, &actors, &canonical, &WriteAccess::full())?;
    }
    Ok(())
}

pub(super) fn after_schedule(tx: &mut Tx, written: &super::hooks::Written) -> Result<(), Abort> {
    refresh_schedule(tx, written.id, Some(written.resource))
}

pub(super) fn schedule_deleted(tx: &mut Tx, change: &Change) -> Result<(), Abort> {
    refresh_schedule(tx, change.id, None)
}

/// The actors of Schedule/`schedule`, its row locked for the rest of the transaction (PostgreSQL):
/// a Slot's write and its Schedule's then take turns, so a Slot never reserves the time of actors
/// the Schedule no longer has, and a Schedule's refresh sees every Slot written before it.
fn schedule_actors_of(c: &mut AnyConnection, schedule: &str) -> Result<Vec<String>, Abort> {
    Ok(
        super::reads::load_current_for_write(c, super::reads::hosted("Schedule")?, schedule)?
            .filter(|cur| !cur.deleted)
            .and_then(|cur| cur.body)
            .and_then(|b| serde_json::from_str::<Value>(&b).ok())
            .map(|s| scheduling::schedule_actors(&s))
            .unwrap_or_default(),
    )
}

/// Replaces Slot/`id`'s reserved rows with those `slot` reserves on `actors`.
fn reserve(
    c: &mut AnyConnection,
    id: &str,
    slot: &Value,
    actors: &[String],
    canonical: &scheduling::Canonical,
    access: &WriteAccess,
) -> Result<(), Abort> {
    let owner = slot_owner(id);
    diesel::delete(bookings::table.filter(bookings::appointment_id.eq(&owner))).execute(c)?;
    let Some((start, end)) = scheduling::reserved_window(slot, canonical) else {
        return Ok(());
    };
    if actors.is_empty() {
        return Ok(());
    }
    let keys: Vec<String> = actors.iter().map(|a| index::index_key(a).into_owned()).collect();
    if let Some(b) = individual_overlaps(c, &keys, start, end)?.into_iter().next() {
        let actor = actor_of(actors, &keys, &b.actor);
        let message = if may_see_appointment(c, access, &b.appointment_id)? {
            format!(
                "{actor} has an individual session from {} to {} (Appointment/{}): that time cannot be reserved for groups",
                dates::format_instant(b.start_ms),
                dates::format_instant(b.end_ms),
                b.appointment_id
            )
        } else {
            format!("{actor} has an individual session in that time: it cannot be reserved for groups")
        };
        return Err(Error::booking(BookingRefusal::ReservedTime, message).into());
    }
    insert_rows!(
        c,
        bookings::table,
        keys.iter()
            .map(|actor| {
                (
                    bookings::appointment_id.eq(&owner),
                    bookings::actor.eq(actor),
                    bookings::start_ms.eq(start),
                    bookings::end_ms.eq(end),
                    bookings::kind.eq("reserved"),
                )
            })
            .collect(),
        BOOKINGS_CHUNK
    );
    Ok(())
}

/// Whether the writer may read the Appointment `id` (read on Appointment and, for a `patient/`
/// writer, the Appointment in that patient's compartment).
fn may_see_appointment(c: &mut AnyConnection, access: &WriteAccess, id: &str) -> Result<bool, Abort> {
    let Some(rt) = ResourceType::parse("Appointment").filter(|_| access.may_read) else {
        return Ok(false);
    };
    let Some(current) = load_current(c, rt, id)? else {
        return Ok(false);
    };
    Ok(may_see(c, rt, id, &current, &access.reach)?)
}

#[derive(QueryableByName)]
struct LatestBooking {
    #[diesel(sql_type = Text)]
    actor: String,
    #[diesel(sql_type = Text)]
    kind: String,
    #[diesel(sql_type = Text)]
    appointment_id: String,
    #[diesel(sql_type = BigInt)]
    start_ms: i64,
    #[diesel(sql_type = BigInt)]
    end_ms: i64,
}

/// Actors (or patients) per statement of [`individual_overlaps`] and [`with_agreement`]: a group session
/// names its whole roster.
const IDS_PER_LOOKUP: usize = 100;

/// For each actor, the booking that starts last before `end`. An actor's bookings never overlap (the
/// check below and, on PostgreSQL, the exclusion constraint keep them so), so that booking also ends
/// last: it is the only one that can clash with a window ending at `end`. One index probe per actor,
/// however long the calendar (filtering on `end_ms > start` instead would walk every earlier booking):
/// on PostgreSQL all the actors in one statement (one round trip, not one per participant), on
/// SQLite a kept statement per actor.
fn latest_bookings(
    c: &mut AnyConnection,
    actors: &[String],
    end: i64,
    reserved_from: Option<i64>,
) -> Result<Vec<LatestBooking>, Abort> {
    if let AnyConnection::Postgresql(pg) = c {
        return Ok(latest_bookings_pg(pg, actors, end, reserved_from)?);
    }
    // SQLite: two statements of a fixed text per actor, which diesel prepares once on the writer's
    // connection and keeps; one statement whose text grew with the actors was parsed and compiled
    // again at every write (no round trip to save here, as there is on PostgreSQL).
    let columns = (
        bookings::actor,
        bookings::kind,
        bookings::appointment_id,
        bookings::start_ms,
        bookings::end_ms,
    );
    let row = |(actor, kind, appointment_id, start_ms, end_ms)| LatestBooking {
        actor,
        kind,
        appointment_id,
        start_ms,
        end_ms,
    };
    let mut found = Vec::new();
    for actor in actors {
        let latest: Option<(String, String, String, i64, i64)> = bookings::table
            .filter(bookings::actor.eq(actor))
            .filter(diesel::dsl::sql::<diesel::sql_types::Bool>("kind <> 'reserved'"))
            .filter(bookings::start_ms.lt(end))
            .order(bookings::start_ms.desc())
            .select(columns)
            .first(c)
            .optional()?;
        found.extend(latest.map(row));
        // The reserved time that overlaps [start, end): the reservation that ends first after
        // `start` and starts before `end`. The kind is written out, not bound, so that SQLite
        // uses the partial index on reserved rows (by end).
        if let Some(start) = reserved_from {
            let reserved: Option<(String, String, String, i64, i64)> = bookings::table
                .filter(bookings::actor.eq(actor))
                .filter(diesel::dsl::sql::<diesel::sql_types::Bool>("kind = 'reserved'"))
                .filter(bookings::end_ms.gt(start))
                .filter(bookings::start_ms.lt(end))
                .order(bookings::end_ms.asc())
                .select(columns)
                .first(c)
                .optional()?;
            found.extend(reserved.map(row));
        }
    }
    Ok(found)
}

/// [`latest_bookings`] on PostgreSQL: the same probes, one per actor, in one statement of a fixed
/// text whatever the number of actors (see store::fixed).
fn latest_bookings_pg(
    pg: &mut diesel::PgConnection,
    actors: &[String],
    end: i64,
    reserved_from: Option<i64>,
) -> diesel::QueryResult<Vec<LatestBooking>> {
    use super::fixed::{Bind, Fixed};
    let keys = || Bind::Text(actors.iter().map(String::as_str).collect());
    /// Each actor's latest session that starts before `end`.
    macro_rules! latest {
        () => {
            "SELECT b.* FROM unnest(?) AS a(actor) CROSS JOIN LATERAL \
             (SELECT actor, kind, appointment_id, start_ms, end_ms FROM bookings WHERE bookings.actor = a.actor \
              AND kind <> 'reserved' AND start_ms < ? ORDER BY start_ms DESC LIMIT 1) AS b"
        };
    }
    match reserved_from {
        None => Fixed::new(latest!(), vec![keys(), Bind::OneInt(end)]).load(pg),
        // And each actor's reserved time that overlaps [start, end).
        Some(start) => Fixed::new(
            concat!(
                latest!(),
                " UNION ALL SELECT r.* FROM unnest(?) AS a(actor) CROSS JOIN LATERAL \
                 (SELECT actor, kind, appointment_id, start_ms, end_ms FROM bookings WHERE bookings.actor = a.actor \
                  AND kind = 'reserved' AND end_ms > ? AND start_ms < ? ORDER BY end_ms LIMIT 1) AS r"
            ),
            vec![
                keys(),
                Bind::OneInt(end),
                keys(),
                Bind::OneInt(start),
                Bind::OneInt(end),
            ],
        )
        .load(pg),
    }
}

/// The individual sessions of these actors that overlap [start, end). An actor's sessions never
/// overlap one another, so per actor the individual one that starts last before `end` is the only
/// candidate (one index probe, as in [`latest_bookings`]).
fn individual_overlaps(
    c: &mut AnyConnection,
    actors: &[String],
    start: i64,
    end: i64,
) -> Result<Vec<LatestBooking>, Abort> {
    let mut found = Vec::new();
    for chunk in actors.chunks(IDS_PER_LOOKUP) {
        let mut sql = Sql::new("");
        for (i, actor) in chunk.iter().enumerate() {
            if i > 0 {
                sql.push(" UNION ALL ");
            }
            sql.push(
                "SELECT * FROM (SELECT actor, kind, appointment_id, start_ms, end_ms FROM bookings WHERE actor = ",
            )
            .text_bind(actor)
            .push(" AND kind = 'individual' AND start_ms < ")
            .int_bind(end)
            .push(" ORDER BY start_ms DESC")
            .limit(1)
            .push(&format!(") AS i{i}"));
        }
        found.extend(load::<LatestBooking>(c, &sql)?.into_iter().filter(|b| b.end_ms > start));
    }
    Ok(found)
}

/// A group session may only hold active members of its group, no more than its capacity, each with a
/// group confidentiality agreement covering the session (when the policy is on).
fn check_group_session(
    c: &mut AnyConnection,
    rules: &Rules,
    appointment: &Value,
    previous: Option<&Value>,
) -> Result<(), Abort> {
    let Some(group_id) = scheduling::session_group(appointment) else {
        return Ok(());
    };
    let Some((start, _)) = scheduling::held_window(appointment) else {
        return Ok(());
    };
    let group: Option<Option<String>> = resources::table
        .filter(resources::res_type.eq("Group"))
        .filter(resources::res_id.eq(&group_id))
        .filter(resources::deleted.eq(false))
        .select(resources::body)
        .get_result(c)
        .optional()?;
    let group: Value = group
        .flatten()
        .and_then(|b| serde_json::from_str(&b).ok())
        .ok_or_else(|| {
            Error::booking(
                BookingRefusal::UnknownGroup,
                format!("the session's Group/{group_id} does not exist on this server"),
            )
        })?;

    let patients = scheduling::patient_ids(appointment);
    let members = scheduling::active_members(&group, start);
    let outsiders: Vec<String> = patients
        .iter()
        .filter(|p| !members.contains(p))
        .map(|p| format!("Patient/{p}"))
        .collect();
    if !outsiders.is_empty() {
        return Err(Error::booking(
            BookingRefusal::NotAMember,
            format!(
                "{} {} not an active member of Group/{group_id} on {}",
                outsiders.join(", "),
                if outsiders.len() == 1 { "is" } else { "are" },
                day(start)
            ),
        )
        .into());
    }
    if let Some(cap) = scheduling::capacity(&group, &rules.canonical) {
        if patients.len() as u64 > cap {
            return Err(Error::booking(
                BookingRefusal::OverCapacity,
                format!(
                    "Group/{group_id} holds at most {cap} patients in a session; this one has {}",
                    patients.len()
                ),
            )
            .into());
        }
    }
    if !rules.require_group_consent {
        return Ok(());
    }
    // Agreements are checked when a patient is booked: newly added, or the session moved or changed
    // group. A later revocation does not undo bookings already made.
    let unchanged = previous.filter(|p| {
        scheduling::held_window(p).map(|w| w.0) == Some(start)
            && scheduling::session_group(p).as_deref() == Some(group_id.as_str())
    });
    let already: Vec<String> = unchanged.map(scheduling::patient_ids).unwrap_or_default();
    let joining: Vec<&String> = patients.iter().filter(|p| !already.contains(p)).collect();
    let agreed = with_agreement(c, rules, &joining, &group_id, start)?;
    let lacking: Vec<String> = joining
        .iter()
        .filter(|p| !agreed.contains(**p))
        .map(|p| format!("Patient/{p}"))
        .collect();
    if !lacking.is_empty() {
        return Err(Error::booking(
            BookingRefusal::NoAgreement,
            format!(
                "{} {} no active group confidentiality agreement (Consent with category {}|{GROUP_CONFIDENTIALITY}) for Group/{group_id} covering {}",
                lacking.join(", "),
                if lacking.len() == 1 { "has" } else { "have" },
                rules.canonical.consent_category(),
                day(start)
            ),
        )
        .into());
    }
    Ok(())
}

/// Those of `patients` who hold an active Consent of the group-confidentiality category for `group`
/// whose provision period covers `at` (or has none). Answered from the index tables in one
/// statement: each patient's own Consents (a few) are the candidates, and each is checked through
/// the owner indexes, so the cost does not grow with the clinic's other agreements (each criterion
/// listing all its matches, as a search would, read every active Consent for every member of every
/// session booked).
fn with_agreement(
    c: &mut AnyConnection,
    rules: &Rules,
    patients: &[&String],
    group: &str,
    at: i64,
) -> Result<Vec<String>, Abort> {
    let mut agreed = Vec::new();
    for chunk in patients.chunks(IDS_PER_LOOKUP) {
        let mut sql = Sql::new(
            "SELECT DISTINCT p.target_id AS id FROM idx_reference p \
             JOIN resources r ON r.res_type = p.res_type AND r.res_id = p.res_id AND r.deleted = false \
             WHERE p.res_type = 'Consent' AND p.param = 'patient' AND p.target_type = 'Patient' AND p.target_id IN (",
        );
        sql.text_binds(chunk.iter().map(|p| p.as_str()))
            .push(")")
            .push(" AND EXISTS (SELECT 1 FROM idx_reference a WHERE a.res_type = 'Consent' AND a.res_id = p.res_id AND a.param = 'actor' AND a.target_type = 'Group' AND a.target_id = ")
            .text_bind(group)
            .push(") AND EXISTS (SELECT 1 FROM idx_token t WHERE t.res_type = 'Consent' AND t.res_id = p.res_id AND t.param = 'category' AND t.system = ")
            .text_bind(rules.canonical.consent_category())
            .push(" AND t.code = ")
            .text_bind(GROUP_CONFIDENTIALITY)
            .push(") AND EXISTS (SELECT 1 FROM idx_token s WHERE s.res_type = 'Consent' AND s.res_id = p.res_id AND s.param = 'status' AND s.code = 'active')")
            .push(" AND (EXISTS (SELECT 1 FROM idx_date d WHERE d.res_type = 'Consent' AND d.res_id = p.res_id AND d.param = 'period' AND d.low <= ")
            .int_bind(at)
            .push(" AND d.high >= ")
            .int_bind(at)
            .push(") OR NOT EXISTS (SELECT 1 FROM idx_date d WHERE d.res_type = 'Consent' AND d.res_id = p.res_id AND d.param = 'period'))");
        let rows: Vec<IdOnly> = load(c, &sql)?;
        agreed.extend(rows.into_iter().map(|r| r.id));
    }
    Ok(agreed)
}

/// Time an actor is not free in, for `Appointment/$find`: held by a session (individual or group),
/// or reserved for group sessions by a Slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Busy {
    /// The index of the actor in the list asked about.
    pub actor: usize,
    pub reserved: bool,
    pub start_ms: i64,
    pub end_ms: i64,
}

/// Most bookings one actor's calendar may hold in one `$find` window (the window is at most 90
/// days: a booking every 15 minutes round the clock is 8,640).
const BUSY_CAP: i64 = 10_000;

impl super::Store {
    /// The time each of `actors` (`Type/id` or an absolute URL, as bookings name them) is not free in
    /// within [start, end). Per actor, three index probes: the sessions that start in the window, the
    /// one that starts last before it (an actor's sessions never overlap, so it is the only earlier
    /// one that can reach into the window) and the reserved time that overlaps it. No JSON is read.
    pub fn busy(&self, actors: &[String], start: i64, end: i64) -> Result<Vec<Busy>, Error> {
        let mut pooled = self.pool.get()?;
        let c: &mut AnyConnection = &mut pooled;
        let keys: Vec<String> = actors.iter().map(|a| index::index_key(a).into_owned()).collect();
        let mut out = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let mut sql = Sql::new(
                "SELECT * FROM (SELECT actor, kind, appointment_id, start_ms, end_ms FROM bookings WHERE actor = ",
            );
            sql.text_bind(key.as_str())
                .push(" AND kind <> 'reserved' AND start_ms >= ")
                .int_bind(start)
                .push(" AND start_ms < ")
                .int_bind(end)
                .push(" ORDER BY start_ms")
                .limit(BUSY_CAP + 1)
                .push(") AS w UNION ALL SELECT * FROM (SELECT actor, kind, appointment_id, start_ms, end_ms FROM bookings WHERE actor = ")
                .text_bind(key.as_str())
                .push(" AND kind <> 'reserved' AND start_ms < ")
                .int_bind(start)
                .push(" ORDER BY start_ms DESC")
                .limit(1)
                .push(") AS l UNION ALL SELECT * FROM (SELECT actor, kind, appointment_id, start_ms, end_ms FROM bookings WHERE actor = ")
                .text_bind(key.as_str())
                .push(" AND kind = 'reserved' AND end_ms > ")
                .int_bind(start)
                .push(" AND start_ms < ")
                .int_bind(end)
                .push(" ORDER BY end_ms")
                .limit(BUSY_CAP + 1)
                .push(") AS r");
            let rows: Vec<LatestBooking> = load(c, &sql)?;
            // The window's sessions (the one before it aside) and its reserved time, each capped.
            let held = rows
                .iter()
                .filter(|b| b.kind != "reserved" && b.start_ms >= start)
                .count() as i64;
            let reserved = rows.iter().filter(|b| b.kind == "reserved").count() as i64;
            if held > BUSY_CAP || reserved > BUSY_CAP {
                return Err(Error::TooCostly(format!(
                    "{} has more than {BUSY_CAP} bookings in the window: ask for a shorter one",
                    actors[i]
                )));
            }
            out.extend(
                rows.into_iter()
                    .filter(|b| b.end_ms > start && b.start_ms < end)
                    .map(|b| Busy {
                        actor: i,
                        reserved: b.kind == "reserved",
                        start_ms: b.start_ms,
                        end_ms: b.end_ms,
                    }),
            );
        }
        Ok(out)
    }
}
