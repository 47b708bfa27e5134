//! The group-therapy model (DESIGN.md): which appointments hold time and for whom, group sessions,
//! rosters on a date, capacity, attendance, and the canonical URLs of tandem's own extensions and
//! codes. Pure knowledge over resources in their JSON form; the store enforces it in transactions.

pub mod definitions;

use serde_json::{json, Value};

use crate::resources::{dates, local_id, parse_reference, Target};

/// HL7's R5 cross-version extension that carries the Group of a group session on an R4 Appointment.
pub const APPOINTMENT_SUBJECT: &str = "http://hl7.org/fhir/5.0/StructureDefinition/extension-Appointment.subject";

/// HL7's R5 cross-version extension that carries a video session's link on an R4 Appointment
/// (R5 Appointment.virtualService); its Encounters have class VR.
pub const APPOINTMENT_VIRTUAL_SERVICE: &str =
    "http://hl7.org/fhir/5.0/StructureDefinition/extension-Appointment.virtualService";

/// HL7's R5 cross-version extensions that tie the occurrences of a series together (R5
/// Appointment.recurrenceId, positiveInt: the occurrence's number; Appointment.originatingAppointment,
/// Reference(Appointment): the series' first occurrence, on every later one).
pub const APPOINTMENT_RECURRENCE_ID: &str =
    "http://hl7.org/fhir/5.0/StructureDefinition/extension-Appointment.recurrenceId";
pub const APPOINTMENT_ORIGINATING: &str =
    "http://hl7.org/fhir/5.0/StructureDefinition/extension-Appointment.originatingAppointment";

/// The parts of R5's VirtualServiceDetail that the virtualService extension carries, each with the
/// value types it takes (R5's types that R4 has: address[x] is a url, a string or a ContactPoint;
/// R5's ExtendedContactDetail is not in R4) and whether it may repeat.
pub const VIRTUAL_SERVICE_PARTS: [(&str, &[&str], bool); 5] = [
    ("channelType", &["valueCoding"], false),
    ("address", &["valueUrl", "valueString", "valueContactPoint"], false),
    ("additionalInfo", &["valueUrl"], true),
    ("maxParticipants", &["valuePositiveInt"], false),
    ("sessionKey", &["valueString"], false),
];

/// The sub-extension of a video session that holds the host's key: never shown to a `patient/` token.
pub const SESSION_KEY: &str = "sessionKey";

/// Appointment statuses that hold the time of their participants (the double-booking rule).
pub const ACTIVE_STATUSES: [&str; 4] = ["pending", "booked", "arrived", "checked-in"];

/// The canonical URLs of tandem's own extensions and code systems, under one configurable base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canonical {
    pub base: String,
}

impl Canonical {
    pub fn new(base: &str) -> Canonical {
        Canonical {
            base: base.trim_end_matches('/').to_string(),
        }
    }
    /// Group extension: the most members a group's sessions may hold (valuePositiveInt).
    pub fn group_capacity(&self) -> String {
        format!("{}/StructureDefinition/group-capacity", self.base)
    }
    /// Appointment.participant extension: what happened (valueCode from the attendance code system).
    pub fn participant_attendance(&self) -> String {
        format!("{}/StructureDefinition/participant-attendance", self.base)
    }
    pub fn attendance_codes(&self) -> String {
        format!("{}/CodeSystem/attendance", self.base)
    }
    /// The identifier system of the Encounters the server writes for a session that took place:
    /// value `Appointment/{id}` (a group's session) or `Appointment/{id}/Patient/{pid}` (a client's).
    pub fn encounter_identifier(&self) -> String {
        format!("{}/sid/appointment-encounter", self.base)
    }
    /// Consent.category system whose code `group-confidentiality` marks a group confidentiality
    /// agreement; its code `group-confidentiality-rules` is the agreement's Consent.policyRule.
    pub fn consent_category(&self) -> String {
        format!("{}/CodeSystem/consent-category", self.base)
    }
    /// Slot.serviceCategory / serviceType system whose code `group-therapy` reserves the Slot's time
    /// on its Schedule's practitioners and rooms for group sessions.
    pub fn slot_purpose(&self) -> String {
        format!("{}/CodeSystem/slot-purpose", self.base)
    }
    /// A URL of ours written under the default base, under this base (any other URL as it is).
    pub fn own(&self, url: &str) -> String {
        match url.strip_prefix(DEFAULT_CANONICAL_BASE) {
            Some(rest) => format!("{}{rest}", self.base),
            None => url.to_string(),
        }
    }
}

pub const GROUP_CONFIDENTIALITY: &str = "group-confidentiality";

/// The code of the slot-purpose CodeSystem that reserves a Slot's time for group sessions.
pub const GROUP_THERAPY: &str = "group-therapy";

/// Slot statuses that reserve time when the Slot is marked for group therapy: `busy-unavailable`
/// (held back from individual booking) and `free` (open for group sessions).
pub const RESERVING_STATUSES: [&str; 2] = ["busy-unavailable", "free"];

/// The time a Slot reserves for group sessions, [start, end) in ms: marked with our slot-purpose
/// code `group-therapy` (in serviceCategory or serviceType), with a reserving status and both ends.
pub fn reserved_window(slot: &Value, canonical: &Canonical) -> Option<(i64, i64)> {
    let status = slot.get("status").and_then(Value::as_str)?;
    if !RESERVING_STATUSES.contains(&status) {
        return None;
    }
    let system = canonical.slot_purpose();
    let marked = ["serviceCategory", "serviceType"].iter().any(|k| {
        slot.get(*k)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c.get("coding").and_then(Value::as_array))
            .flatten()
            .any(|c| {
                c.get("system").and_then(Value::as_str) == Some(system.as_str())
                    && c.get("code").and_then(Value::as_str) == Some(GROUP_THERAPY)
            })
    });
    if !marked {
        return None;
    }
    let at = |k: &str| {
        slot.get(k)
            .and_then(Value::as_str)
            .and_then(dates::parse_range)
            .map(|r| r.low)
    };
    let (start, end) = (at("start")?, at("end")?);
    (end > start).then_some((start, end))
}

/// The practitioners and rooms of a Schedule (`Practitioner/x`, `Location/x`, local references):
/// whose time its reserving Slots hold for groups.
pub fn schedule_actors(schedule: &Value) -> Vec<String> {
    let mut actors: Vec<String> = schedule
        .get("actor")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|a| a.get("reference").and_then(Value::as_str))
        .filter(|r| matches!(parse_reference(r), Target::Local { ref res_type, .. } if res_type == "Practitioner" || res_type == "Location"))
        .map(|r| r.split("/_history").next().unwrap_or(r).to_string())
        .collect();
    actors.sort();
    actors.dedup();
    actors
}

/// The policy rule of a group confidentiality agreement (R4 ppc-1: a Consent names a policy or a
/// policy rule), a code of the same code system as its category.
pub const GROUP_CONFIDENTIALITY_RULES: &str = "group-confidentiality-rules";

/// The rules the store enforces, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    pub canonical: Canonical,
    /// A patient needs an active group confidentiality agreement to be booked into a group session.
    pub require_group_consent: bool,
    /// The hosts (`host` or `host:port`) a Subscription may notify (TANDEM_SUBSCRIPTION_ALLOWED_HOSTS).
    pub subscription_hosts: Vec<String>,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            canonical: Canonical::new(DEFAULT_CANONICAL_BASE),
            require_group_consent: true,
            subscription_hosts: Vec::new(),
        }
    }
}

pub const DEFAULT_CANONICAL_BASE: &str = "https://tandem.example.org/fhir";

/// The time an appointment holds: [start, end) in ms, when it is active and has both.
pub fn held_window(appointment: &Value) -> Option<(i64, i64)> {
    let status = appointment.get("status").and_then(Value::as_str)?;
    if !ACTIVE_STATUSES.contains(&status) {
        return None;
    }
    window(appointment)
}

/// [start, end) of an appointment in ms, whatever its status.
pub fn window(appointment: &Value) -> Option<(i64, i64)> {
    let start = appointment
        .get("start")
        .and_then(Value::as_str)
        .and_then(dates::parse_range)?
        .low;
    let end = appointment
        .get("end")
        .and_then(Value::as_str)
        .and_then(dates::parse_range)?
        .low;
    (end > start).then_some((start, end))
}

fn participants(appointment: &Value) -> impl Iterator<Item = &Value> {
    appointment
        .get("participant")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

fn declined(participant: &Value) -> bool {
    participant.get("status").and_then(Value::as_str) == Some("declined")
}

/// The key of a participant's actor for bookings, if it is a Practitioner, Patient or Location:
/// `Type/id` for a local reference, the URL for an absolute one.
fn actor_key(participant: &Value) -> Option<(String, String)> {
    let reference = participant.get("actor")?.get("reference")?.as_str()?;
    match parse_reference(reference) {
        Target::Local { res_type, id, .. } => matches!(res_type.as_str(), "Practitioner" | "Patient" | "Location")
            .then(|| (res_type.clone(), format!("{res_type}/{id}"))),
        Target::External(url) => {
            let t = ["Practitioner", "Patient", "Location"]
                .into_iter()
                .find(|t| url.contains(&format!("/{t}/")))?;
            Some((t.to_string(), url))
        }
        Target::Contained(_) => None,
    }
}

/// The practitioners, patients and locations whose time an appointment holds (declined ones do not).
pub fn booked_actors(appointment: &Value) -> Vec<String> {
    let mut actors: Vec<String> = participants(appointment)
        .filter(|p| !declined(p))
        .filter_map(actor_key)
        .map(|(_, k)| k)
        .collect();
    actors.sort();
    actors.dedup();
    actors
}

/// The virtualService extensions of an appointment (a video session has one).
pub fn virtual_services(appointment: &Value) -> impl Iterator<Item = &Value> {
    appointment
        .get("extension")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|e| e.get("url").and_then(Value::as_str) == Some(APPOINTMENT_VIRTUAL_SERVICE))
}

/// Whether the appointment is a video session.
pub fn is_virtual(appointment: &Value) -> bool {
    virtual_services(appointment).next().is_some()
}

/// Checks the shape of each virtualService extension: only the parts of [`VIRTUAL_SERVICE_PARTS`],
/// each with one of its value types and at most once unless it repeats, and no value of its own (a
/// complex extension, ext-1); and that it stands only in the Appointment's own `extension`, where
/// the host's key is looked for (in a modifierExtension, a participant or a contained resource it
/// would be shown to every client). The error names the part and what is wrong.
pub fn check_virtual_service(appointment: &Value) -> Result<(), String> {
    for ext in virtual_services(appointment) {
        if let Some(own) = ext.as_object().and_then(|m| m.keys().find(|k| k.starts_with("value"))) {
            return Err(format!(
                "the virtualService extension is complex: it has parts, not a {own}"
            ));
        }
        let parts: Vec<&Value> = ext
            .get("extension")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .collect();
        for p in &parts {
            let url = p.get("url").and_then(Value::as_str).unwrap_or("");
            let Some((_, values, _)) = VIRTUAL_SERVICE_PARTS.iter().find(|(n, _, _)| *n == url) else {
                return Err(format!(
                    "the virtualService extension has no part '{url}' (it takes {})",
                    VIRTUAL_SERVICE_PARTS.map(|(n, _, _)| n).join(", ")
                ));
            };
            if !values.iter().any(|v| p.get(*v).is_some()) {
                return Err(format!(
                    "the virtualService part '{url}' takes a {}",
                    values.join(" or a ")
                ));
            }
        }
        for (name, _, repeats) in VIRTUAL_SERVICE_PARTS {
            let n = parts
                .iter()
                .filter(|p| p.get("url").and_then(Value::as_str) == Some(name))
                .count();
            if n > 1 && !repeats {
                return Err(format!(
                    "the virtualService part '{name}' appears {n} times; it may appear once"
                ));
            }
        }
    }
    let top: usize = virtual_services(appointment).count();
    if count_url(appointment, APPOINTMENT_VIRTUAL_SERVICE) > top {
        return Err(
            "the virtualService extension belongs in Appointment.extension only (not a modifierExtension, a participant or a contained resource)".into(),
        );
    }
    Ok(())
}

/// How many extensions anywhere in `value` have this url.
fn count_url(value: &Value, url: &str) -> usize {
    match value {
        Value::Object(map) => {
            let own = usize::from(map.get("url").and_then(Value::as_str) == Some(url));
            own + map.values().map(|v| count_url(v, url)).sum::<usize>()
        }
        Value::Array(items) => items.iter().map(|v| count_url(v, url)).sum(),
        _ => 0,
    }
}

/// The most participants the video service of an appointment takes (its maxParticipants), if set.
pub fn max_participants(appointment: &Value) -> Option<u64> {
    virtual_services(appointment)
        .filter_map(|e| e.get("extension").and_then(Value::as_array))
        .flatten()
        .filter(|p| p.get("url").and_then(Value::as_str) == Some("maxParticipants"))
        .filter_map(|p| p.get("valuePositiveInt").and_then(Value::as_u64))
        .min()
}

/// The people invited to join a session: participants who have not declined and whose actor is a
/// person (a Patient, Practitioner, PractitionerRole or RelatedPerson; a room, a service or a device
/// takes no place in a video call). A participant with no actor, or one named by display only,
/// counts.
pub fn invited_people(appointment: &Value) -> usize {
    participants(appointment)
        .filter(|p| !declined(p))
        .filter(|p| {
            // No actor (a place still to fill) or one named only by display: someone who will join.
            let Some(reference) = p.get("actor").and_then(|a| a.get("reference")).and_then(Value::as_str) else {
                return true;
            };
            !["Location", "HealthcareService", "Device"].iter().any(|t| {
                matches!(parse_reference(reference), Target::Local { ref res_type, .. } if res_type == t)
                    || reference.contains(&format!("/{t}/"))
            })
        })
        .count()
}

/// The host's key part of an appointment's video service, if it carries one.
fn session_key(appointment: &Value) -> Option<&Value> {
    virtual_services(appointment)
        .filter_map(|e| e.get("extension").and_then(Value::as_array))
        .flatten()
        .find(|p| p.get("url").and_then(Value::as_str) == Some(SESSION_KEY))
}

/// Whether an appointment carries the host's key of its video service.
pub fn has_session_key(appointment: &Value) -> bool {
    session_key(appointment).is_some()
}

/// Removes the host's key from every virtualService extension of an appointment (an extension left
/// with no part is removed, and an emptied `extension` list too: R4 allows no empty array, ext-1).
pub fn strip_session_key(appointment: &mut Value) {
    let Some(extensions) = appointment.get_mut("extension").and_then(Value::as_array_mut) else {
        return;
    };
    for e in extensions.iter_mut() {
        if e.get("url").and_then(Value::as_str) != Some(APPOINTMENT_VIRTUAL_SERVICE) {
            continue;
        }
        if let Some(parts) = e.get_mut("extension").and_then(Value::as_array_mut) {
            parts.retain(|p| p.get("url").and_then(Value::as_str) != Some(SESSION_KEY));
        }
    }
    extensions.retain(|e| {
        e.get("url").and_then(Value::as_str) != Some(APPOINTMENT_VIRTUAL_SERVICE)
            || e.get("extension")
                .and_then(Value::as_array)
                .is_some_and(|p| !p.is_empty())
    });
    if extensions.is_empty() {
        if let Some(map) = appointment.as_object_mut() {
            map.remove("extension");
        }
    }
}

/// What a client's own write of an appointment keeps of the stored one: the host's key is the
/// clinic's, so whatever key `incoming` carries is dropped and `stored`'s, if any, is put back —
/// into incoming's (first) virtualService extension, or as the service it was when the client saw
/// none (it held the key alone). A client who removes a service it saw removes its key with it.
pub fn keep_session_key(incoming: &mut Value, stored: &Value) {
    let key = session_key(stored).cloned();
    let mut seen = stored.clone();
    strip_session_key(&mut seen);
    strip_session_key(incoming);
    let Some(key) = key else { return };
    if let Some(service) = incoming
        .get_mut("extension")
        .and_then(Value::as_array_mut)
        .and_then(|list| {
            list.iter_mut()
                .find(|e| e.get("url").and_then(Value::as_str) == Some(APPOINTMENT_VIRTUAL_SERVICE))
        })
    {
        if let Some(parts) = service.get_mut("extension").and_then(Value::as_array_mut) {
            parts.push(key);
        }
        return;
    }
    if is_virtual(&seen) {
        return;
    }
    let service = json!({"url": APPOINTMENT_VIRTUAL_SERVICE, "extension": [key]});
    match incoming.get_mut("extension").and_then(Value::as_array_mut) {
        Some(list) => list.push(service),
        None => {
            if let Some(map) = incoming.as_object_mut() {
                map.insert("extension".into(), json!([service]));
            }
        }
    }
}

/// The place in a series an appointment claims: its recurrenceId and, from the second occurrence
/// on, the id of the first (originatingAppointment). None for an appointment of no series; an error
/// for a claim that cannot be: a recurrenceId that is not a positiveInt, an originatingAppointment
/// that is not a local Appointment reference, a later occurrence without its first, or a first
/// (recurrenceId 1) that names one.
pub fn series_claim(appointment: &Value) -> Result<Option<(u64, Option<String>)>, String> {
    let number = extension(appointment, APPOINTMENT_RECURRENCE_ID);
    let origin = extension(appointment, APPOINTMENT_ORIGINATING);
    if number.is_none() && origin.is_none() {
        return Ok(None);
    }
    let number = number
        .and_then(|e| e.get("valuePositiveInt"))
        .and_then(Value::as_u64)
        .ok_or("an occurrence of a series has a recurrenceId (valuePositiveInt)")?;
    let origin = match origin {
        None => None,
        Some(e) => Some(
            e.get("valueReference")
                .and_then(|r| r.get("reference"))
                .and_then(Value::as_str)
                .and_then(|r| local_id(r, "Appointment"))
                .ok_or("originatingAppointment is a valueReference to an Appointment on this server")?,
        ),
    };
    match (number, &origin) {
        (1, Some(_)) => Err("the first occurrence of a series (recurrenceId 1) names no originatingAppointment".into()),
        (n, None) if n > 1 => Err(format!(
            "occurrence {n} of a series names its first (originatingAppointment)"
        )),
        _ => Ok(Some((number, origin))),
    }
}

/// The extension of `resource` (a resource or an element) with this url.
fn extension<'a>(resource: &'a Value, url: &str) -> Option<&'a Value> {
    resource
        .get("extension")?
        .as_array()?
        .iter()
        .find(|e| e.get("url").and_then(Value::as_str) == Some(url))
}

/// Ids of the local Patient participants who have not declined.
pub fn patient_ids(appointment: &Value) -> Vec<String> {
    let mut ids: Vec<String> = participants(appointment)
        .filter(|p| !declined(p))
        .filter_map(|p| p.get("actor")?.get("reference")?.as_str())
        .filter_map(|r| local_id(r, "Patient"))
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// The Group of a group session (the id of a local reference in the R5 subject extension).
pub fn session_group(appointment: &Value) -> Option<String> {
    let reference = extension(appointment, APPOINTMENT_SUBJECT)?
        .get("valueReference")?
        .get("reference")?
        .as_str()?;
    local_id(reference, "Group")
}

/// Patient ids of the members active at `at_ms`: a period covering it (an open end is open) and not
/// inactive.
pub fn active_members(group: &Value, at_ms: i64) -> Vec<String> {
    let members = group.get("member").and_then(Value::as_array).into_iter().flatten();
    let mut ids: Vec<String> = members
        .filter(|m| m.get("inactive").and_then(Value::as_bool) != Some(true))
        .filter(|m| {
            let period = m.get("period");
            let start = period
                .and_then(|p| p.get("start"))
                .and_then(Value::as_str)
                .and_then(dates::parse_range)
                .map_or(i64::MIN, |r| r.low);
            let end = period
                .and_then(|p| p.get("end"))
                .and_then(Value::as_str)
                .and_then(dates::parse_range)
                .map_or(i64::MAX, |r| r.high);
            start <= at_ms && at_ms <= end
        })
        .filter_map(|m| m.get("entity")?.get("reference")?.as_str())
        .filter_map(|r| local_id(r, "Patient"))
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// The capacity extension of a group, if any.
pub fn capacity(group: &Value, canonical: &Canonical) -> Option<u64> {
    extension(group, &canonical.group_capacity())?
        .get("valuePositiveInt")?
        .as_u64()
}

/// Sets Group.quantity to the number of members active at `now_ms`, for a group that carries its
/// roster (`member`). A group that enumerates no members (a herd described by its characteristics,
/// as in HL7's own example) keeps the quantity its author stated.
pub fn keep_group_quantity(group: &mut Value, now_ms: i64) {
    if group.get("member").is_none() {
        return;
    }
    let count = active_members(group, now_ms).len();
    if let Some(map) = group.as_object_mut() {
        map.insert("quantity".into(), json!(count));
    }
}

/// A participant's attendance code (attended, no-show, late-cancel), from our extension.
pub fn attendance<'a>(participant: &'a Value, canonical: &Canonical) -> Option<&'a str> {
    extension(participant, &canonical.participant_attendance())?
        .get("valueCode")?
        .as_str()
}

/// Per local patient participant: (patient id, declined?, attendance code).
pub fn patient_attendance<'a>(appointment: &'a Value, canonical: &Canonical) -> Vec<(String, bool, Option<&'a str>)> {
    participants(appointment)
        .filter_map(|p| {
            let reference = p.get("actor")?.get("reference")?.as_str()?;
            local_id(reference, "Patient").map(|id| (id, declined(p), attendance(p, canonical)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(status: &str) -> Value {
        json!({"resourceType": "Appointment", "status": status, "start": "2026-12-01T10:00:00Z", "end": "2026-12-01T11:00:00Z",
        "extension": [{"url": APPOINTMENT_SUBJECT, "valueReference": {"reference": "Group/g1"}}],
        "participant": [
            {"actor": {"reference": "Practitioner/moss"}, "status": "accepted"},
            {"actor": {"reference": "Patient/ann"}, "status": "accepted"},
            {"actor": {"reference": "Patient/bob"}, "status": "declined"},
            {"actor": {"reference": "https://ehr.example.org/fhir/Patient/7"}, "status": "tentative"},
            {"actor": {"reference": "Location/room-1"}, "status": "accepted"},
            {"actor": {"reference": "Device/d1"}, "status": "accepted"}
        ]})
    }

    #[test]
    fn active_appointments_hold_time_for_people_and_places_who_did_not_decline() {
        let a = session("booked");
        assert!(held_window(&a).is_some());
        assert_eq!(
            booked_actors(&a),
            vec![
                "Location/room-1",
                "Patient/ann",
                "Practitioner/moss",
                "https://ehr.example.org/fhir/Patient/7"
            ]
        );
        for status in ["cancelled", "noshow", "fulfilled", "proposed", "entered-in-error"] {
            assert!(held_window(&session(status)).is_none(), "{status}");
        }
        assert_eq!(session_group(&a).as_deref(), Some("g1"));
        assert_eq!(patient_ids(&a), vec!["ann"]);
    }

    #[test]
    fn active_members_follow_periods_and_inactive() {
        let g = json!({"resourceType": "Group", "type": "person", "actual": true, "member": [
            {"entity": {"reference": "Patient/a"}, "period": {"start": "2026-01-01"}},
            {"entity": {"reference": "Patient/b"}, "period": {"start": "2026-01-01", "end": "2026-06-30"}},
            {"entity": {"reference": "Patient/c"}, "inactive": true},
            {"entity": {"reference": "Patient/d"}, "period": {"start": "2026-09-01"}}]});
        let at = |d: &str| dates::parse_range(d).unwrap().low;
        assert_eq!(active_members(&g, at("2026-03-01")), vec!["a", "b"]);
        assert_eq!(active_members(&g, at("2026-07-01")), vec!["a"]);
        assert_eq!(active_members(&g, at("2026-10-01")), vec!["a", "d"]);
        let mut g = g;
        keep_group_quantity(&mut g, at("2026-10-01"));
        assert_eq!(g["quantity"], 2);
        let mut herd = json!({"resourceType": "Group", "type": "animal", "actual": true, "quantity": 25});
        keep_group_quantity(&mut herd, at("2026-10-01"));
        assert_eq!(herd["quantity"], 25);
    }

    #[test]
    fn a_clients_write_keeps_the_clinics_host_key() {
        let part = |url: &str, v: &str| json!({"url": url, "valueString": v});
        let service = |parts: Vec<Value>| json!({"url": APPOINTMENT_VIRTUAL_SERVICE, "extension": parts});
        let stored = json!({"extension": [service(vec![json!({"url": "address", "valueUrl": "https://v.example/1"}), part("sessionKey", "k1")])]});
        // Her view has no key; written back, the key returns; a key she sends is not kept.
        let mut view = stored.clone();
        strip_session_key(&mut view);
        assert!(!has_session_key(&view));
        let mut mine = view.clone();
        keep_session_key(&mut mine, &stored);
        assert_eq!(mine, stored);
        let mut forged = stored.clone();
        forged["extension"][0]["extension"][1]["valueString"] = json!("mine");
        keep_session_key(&mut forged, &stored);
        assert_eq!(forged, stored);
        // A service of the key alone: she sees no extension at all, and it stays.
        let only_key = json!({"status": "booked", "extension": [service(vec![part("sessionKey", "k2")])]});
        let mut view = only_key.clone();
        strip_session_key(&mut view);
        assert!(view.get("extension").is_none(), "{view}");
        keep_session_key(&mut view, &only_key);
        assert_eq!(view, only_key);
        // Removing a service she saw removes its key.
        let mut removed = json!({"status": "cancelled"});
        keep_session_key(&mut removed, &stored);
        assert!(removed.get("extension").is_none());
    }

    #[test]
    fn a_video_service_has_its_parts_in_their_types_and_stands_at_the_top() {
        let with = |ext: Value| json!({"resourceType": "Appointment", "extension": [ext]});
        let ok = with(json!({"url": APPOINTMENT_VIRTUAL_SERVICE, "extension": [
            {"url": "address", "valueContactPoint": {"system": "phone", "value": "+1 555 0100"}},
            {"url": "additionalInfo", "valueUrl": "https://a.example"}, {"url": "additionalInfo", "valueUrl": "https://b.example"}]}));
        assert_eq!(check_virtual_service(&ok), Ok(()));
        assert!(check_virtual_service(&with(
            json!({"url": APPOINTMENT_VIRTUAL_SERVICE, "extension": [{"url": "sessionKey", "valueInteger": 1}]})
        ))
        .is_err());
        let hidden = json!({"resourceType": "Appointment", "modifierExtension": [{"url": APPOINTMENT_VIRTUAL_SERVICE, "extension": [{"url": "sessionKey", "valueString": "k"}]}]});
        assert!(check_virtual_service(&hidden).is_err());
        let in_participant = json!({"resourceType": "Appointment", "participant": [{"extension": [{"url": APPOINTMENT_VIRTUAL_SERVICE}], "status": "accepted"}]});
        assert!(check_virtual_service(&in_participant).is_err());
    }

    #[test]
    fn capacity_and_attendance_read_our_extensions() {
        let c = Canonical::new("https://tandem.example.org/fhir/");
        let g = json!({"extension": [{"url": "https://tandem.example.org/fhir/StructureDefinition/group-capacity", "valuePositiveInt": 8}]});
        assert_eq!(capacity(&g, &c), Some(8));
        let p = json!({"extension": [{"url": c.participant_attendance(), "valueCode": "no-show"}]});
        assert_eq!(attendance(&p, &c), Some("no-show"));
    }
}
