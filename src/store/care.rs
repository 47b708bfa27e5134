//! The record of the care itself (DESIGN.md, "Recording the care, not only the calendar"): the
//! Encounters the server writes when a session took place, the rules of session notes
//! (DocumentReference), and which clients a practitioner is assigned to.

use base64::Engine as _;
use serde_json::{json, Map, Value};

use super::hooks::{Change, Written};

use super::reads::{current_bodies, hosted, referring_ids};
use super::write::{create_in, update_in, Tx, Via};
use super::{Abort, AnyConnection, Store, WriteAccess};
use crate::error::Error;
use crate::resources::compartment::{self, Notes};
use crate::resources::{dates, local_id, new_id, parse_reference, Target};
use crate::scheduling::{self, APPOINTMENT_VIRTUAL_SERVICE};

/// HL7 v3 ActCode: the class of an Encounter (R4 Encounter.class, extensible to v3 ActEncounterCode).
const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";

/// The attachment types a session note may carry inline.
const NOTE_CONTENT_TYPES: [&str; 3] = ["text/plain", "text/markdown", "application/pdf"];

impl Store {
    /// The clients assigned to Practitioner/`practitioner` at `now` (ms): the subject Patients of
    /// the CareTeams in which the practitioner is an active participant, and the active members of
    /// the Groups that are the subject of such a CareTeam. A CareTeam counts while its status is
    /// `active` and its period (if any) covers `now`; a participant, while its own period (if any)
    /// covers `now`. The candidates come from the reference index (the practitioner's own teams,
    /// a caseload's worth), and only they are read.
    pub fn assigned_patients(&self, practitioner: &str, now: i64) -> Result<Vec<String>, Error> {
        let mut pooled = self.pool.get()?;
        let conn: &mut AnyConnection = &mut pooled;
        let team_ids = referring_ids(conn, "CareTeam", "participant", "Practitioner", practitioner)?;
        let mut patients = Vec::new();
        let mut groups = Vec::new();
        for (_, team) in current_bodies(conn, "CareTeam", &team_ids)? {
            if team.get("status").and_then(Value::as_str) != Some("active") || !covers(team.get("period"), now) {
                continue;
            }
            let active = team
                .get("participant")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|p| covers(p.get("period"), now))
                .filter_map(|p| p.get("member")?.get("reference")?.as_str())
                .any(|r| local_id(r, "Practitioner").as_deref() == Some(practitioner));
            if !active {
                continue;
            }
            let Some(subject) = team.pointer("/subject/reference").and_then(Value::as_str) else {
                continue;
            };
            if let Some(p) = local_id(subject, "Patient") {
                patients.push(p);
            } else if let Some(g) = local_id(subject, "Group") {
                groups.push(g);
            }
        }
        groups.sort();
        groups.dedup();
        for (_, group) in current_bodies(conn, "Group", &groups)? {
            patients.extend(scheduling::active_members(&group, now));
        }
        patients.sort();
        patients.dedup();
        Ok(patients)
    }
}

/// Whether a Period (absent: always) covers `at` (ms); an open end is open.
fn covers(period: Option<&Value>, at: i64) -> bool {
    let bound = |key: &str| {
        period
            .and_then(|p| p.get(key))
            .and_then(Value::as_str)
            .and_then(dates::parse_range)
    };
    bound("start").map_or(i64::MIN, |r| r.low) <= at && at <= bound("end").map_or(i64::MAX, |r| r.high)
}

/// Before a DocumentReference is stored: a psychotherapy note (meta.security v3-ActCode PSYTHPN)
/// has exactly one author, a Practitioner of this server (422), and that is the writer's own
/// `fhirUser` (403): only its author ever sees it, so no one else may write one in their name —
/// a system token included. Every inline attachment is one a session note may carry (422).
pub(super) fn before_document_reference(_tx: &mut Tx, change: &Change, doc: &mut Value) -> Result<(), Abort> {
    let rt = change.rt;
    if compartment::is_psychotherapy_note(rt, doc) {
        let authors = doc.get("author").and_then(Value::as_array).map_or(0, Vec::len);
        let practitioners = compartment::practitioner_authors(doc);
        if authors != 1 || practitioners.len() != 1 {
            return Err(Error::Unprocessable(
                "a psychotherapy note (meta.security v3-ActCode|PSYTHPN) needs exactly one author, a Practitioner of this server (Practitioner/id)".into(),
            )
            .into());
        }
        if let Notes::AuthoredBy(writer) = &change.access.reach.notes {
            if writer.as_deref() != Some(practitioners[0].as_str()) {
                return Err(Error::Forbidden(
                    "a psychotherapy note may be written only by its author: the token's fhirUser must be the note's author".into(),
                )
                .into());
            }
            // A record someone else wrote (or co-wrote) does not become one's own hidden note:
            // labelling would take it from everyone else's view.
            if let Some(previous) = change.previous {
                let sole = previous.get("author").and_then(Value::as_array).map_or(0, Vec::len) == 1
                    && compartment::practitioner_authors(previous) == practitioners;
                if !sole {
                    return Err(Error::Forbidden(
                        "only a DocumentReference whose one author is the writer may become (or stay) the writer's psychotherapy note".into(),
                    )
                    .into());
                }
            }
        }
    }
    let contents = doc
        .get("content")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, content) in contents.iter().enumerate() {
        let Some(attachment) = content.get("attachment") else {
            continue;
        };
        check_attachment(attachment)
            .map_err(|m| Error::Unprocessable(format!("DocumentReference.content[{i}].attachment: {m}")))?;
    }
    Ok(())
}

/// What a CareTeam assigns (Store::assigned_patients reads it): its subject, status, period, and
/// its Practitioner participants with their periods.
fn assignment(team: Option<&Value>) -> Value {
    let Some(team) = team else { return Value::Null };
    let mut practitioners: Vec<Value> = team
        .get("participant")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|p| {
            p.pointer("/member/reference")
                .and_then(Value::as_str)
                .is_some_and(|r| local_id(r, "Practitioner").is_some())
        })
        .map(|p| json!([p.pointer("/member/reference"), p.get("period")]))
        .collect();
    if practitioners.is_empty() {
        return Value::Null;
    }
    practitioners.sort_by_key(|p| p.to_string());
    json!([
        team.get("subject"),
        team.get("status"),
        team.get("period"),
        practitioners
    ])
}

/// Before a CareTeam is stored: under TANDEM_USER_ACCESS=assigned a CareTeam decides which clients'
/// records a practitioner reaches, so a writer limited to some patients' records (a patient's
/// token, a practitioner's assigned clients) may not change what it assigns — its subject, status,
/// period, or Practitioner participants and their periods (403); everything else it may.
pub(super) fn before_care_team(_tx: &mut Tx, change: &Change, team: &mut Value) -> Result<(), Abort> {
    if change.access.reach.patients.is_some() && assignment(Some(team)) != assignment(change.previous) {
        return Err(Error::Forbidden(
            "a CareTeam's subject, status, period and practitioners assign clients to practitioners: only a token that reaches every record (system/, or user/ with TANDEM_USER_ACCESS=all) may change them".into(),
        )
        .into());
    }
    Ok(())
}

/// Before an Encounter is stored: the identifier of ours (scheduling::Canonical::encounter_identifier)
/// is the server's own — a client may keep it on an Encounter the server wrote, never add, change
/// or remove it (403): the server would take such an Encounter for its own.
pub(super) fn before_encounter(tx: &mut Tx, change: &Change, encounter: &mut Value) -> Result<(), Abort> {
    if change.access.reach == crate::resources::compartment::Reach::server() {
        return Ok(());
    }
    let system = tx.rules.canonical.encounter_identifier();
    let ours = |e: Option<&Value>| -> Vec<Value> {
        e.and_then(|e| e.get("identifier"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|i| i.get("system").and_then(Value::as_str) == Some(system.as_str()))
            .map(|i| i.get("value").cloned().unwrap_or(Value::Null))
            .collect()
    };
    let theirs = ours(Some(encounter));
    if theirs != ours(change.previous)
        || (!theirs.is_empty() && encounter.get("appointment") != change.previous.and_then(|p| p.get("appointment")))
    {
        return Err(Error::Forbidden(format!(
            "the identifier system {system} and the appointment of an Encounter written by the server are the server's: a client may not add, change or remove them"
        ))
        .into());
    }
    Ok(())
}

/// An inline attachment (one with `data`): a content type of [`NOTE_CONTENT_TYPES`], base64 that
/// decodes, matches `size` when given, and is what its type says (UTF-8 text; a PDF's `%PDF-`
/// header). A document held elsewhere (`url` only, as an EHR's CDA document) is not ours to check.
fn check_attachment(attachment: &Value) -> Result<(), String> {
    if attachment.get("data").is_none() {
        return Ok(());
    }
    let content_type = attachment.get("contentType").and_then(Value::as_str).unwrap_or("");
    let (mime, params) = content_type.split_once(';').unwrap_or((content_type, ""));
    let mime = mime.trim().to_ascii_lowercase();
    if !NOTE_CONTENT_TYPES.contains(&mime.as_str()) {
        return Err(format!(
            "contentType '{content_type}' is not one a session note may carry ({})",
            NOTE_CONTENT_TYPES.join(", ")
        ));
    }
    let charset = params
        .split(';')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("charset"))
        .map(|(_, v)| v.trim().trim_matches('"').to_ascii_lowercase());
    if charset.as_deref().is_some_and(|c| c != "utf-8") {
        return Err("a text note's charset must be utf-8".into());
    }
    let Some(data) = attachment.get("data").and_then(Value::as_str) else {
        return Err("data must be base64 text".into());
    };
    let compact: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|_| "data is not base64".to_string())?;
    if let Some(size) = attachment.get("size").and_then(Value::as_u64) {
        if size != bytes.len() as u64 {
            return Err(format!("size is {size} but data holds {} bytes", bytes.len()));
        }
    }
    if mime == "application/pdf" {
        if !bytes.starts_with(b"%PDF-") {
            return Err("data is not a PDF (no %PDF- header)".into());
        }
    } else if std::str::from_utf8(&bytes).is_err() {
        return Err("data is not UTF-8 text".into());
    }
    Ok(())
}

/// The identifier an Encounter of ours carries: system [`scheduling::Canonical::encounter_identifier`],
/// value `Appointment/{id}` for a group's session Encounter and `Appointment/{id}/Patient/{pid}`
/// for a client's.
fn identifier_value(appointment: &str, patient: Option<&str>) -> String {
    match patient {
        Some(p) => format!("Appointment/{appointment}/Patient/{p}"),
        None => format!("Appointment/{appointment}"),
    }
}

/// After an Appointment is stored: its Encounters, in the same transaction. Fulfilled: an
/// individual session has one Encounter per client, a group session one for the session (subject
/// the Group) and one per member recorded as `attended`, partOf it; each is found again by our
/// identifier, so a re-save changes (a new version) only what differs and never duplicates. Ours
/// that are no longer wanted (a member corrected to no-show, a status other than fulfilled) turn
/// `entered-in-error`; none is deleted.
pub(super) fn after_appointment(tx: &mut Tx, written: &Written) -> Result<(), Abort> {
    let appointment = written.resource;
    let wanted = if appointment.get("status").and_then(Value::as_str) == Some("fulfilled") {
        wanted_encounters(tx, written.id, appointment)
    } else {
        Vec::new()
    };
    settle_encounters(tx, written.id, wanted)
}

/// Before an Appointment is stored: whether a session took place, and who attended, is the clinic's
/// record — a patient's own token may not move a session into or out of `fulfilled`, nor change
/// what its attendance says (403): either would write or retire Encounters.
pub(super) fn before_appointment(tx: &mut Tx, change: &Change, appointment: &mut Value) -> Result<(), Abort> {
    if change.access.reach.own_patient.is_none() {
        return Ok(());
    }
    let fulfilled = |a: Option<&Value>| a.and_then(|a| a.get("status")).and_then(Value::as_str) == Some("fulfilled");
    let canonical = &tx.rules.canonical;
    let attendance = |a: Option<&Value>| {
        a.map(|a| {
            scheduling::patient_attendance(a, canonical)
                .into_iter()
                .map(|(p, _, code)| (p, code.map(str::to_string)))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
    };
    let previous = change.previous;
    if fulfilled(Some(appointment)) != fulfilled(previous)
        || (fulfilled(previous) && attendance(Some(appointment)) != attendance(previous))
    {
        return Err(Error::Forbidden(
            "whether a session took place, and who attended, is recorded by the clinic: a patient's token may not change it".into(),
        )
        .into());
    }
    Ok(())
}

/// When an Appointment is deleted: its Encounters turn `entered-in-error`.
pub(super) fn retire_encounters(tx: &mut Tx, appointment_id: &str) -> Result<(), Abort> {
    settle_encounters(tx, appointment_id, Vec::new())
}

/// One Encounter the server wants for an Appointment: its identifier value, and the elements it owns.
struct Wanted {
    key: String,
    /// For a client's Encounter of a group session: it is partOf the session Encounter.
    part_of_session: bool,
    owned: Map<String, Value>,
}

fn wanted_encounters(tx: &Tx, id: &str, appointment: &Value) -> Vec<Wanted> {
    let canonical = &tx.rules.canonical;
    let participants: Vec<&Value> = appointment
        .get("participant")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|p| p.get("status").and_then(Value::as_str) != Some("declined"))
        .collect();
    let of_type = |p: &&Value, types: &[&str]| {
        p.get("actor")
            .and_then(|a| a.get("reference"))
            .and_then(Value::as_str)
            .is_some_and(|r| match parse_reference(r) {
                Target::Local { res_type, .. } => types.contains(&res_type.as_str()),
                Target::External(url) => types.iter().any(|t| url.contains(&format!("/{t}/"))),
                Target::Contained(_) => false,
            })
    };
    let practitioners: Vec<Value> = participants
        .iter()
        .filter(|p| of_type(p, &["Practitioner", "PractitionerRole"]))
        .filter_map(|p| p.get("actor").cloned())
        .map(|actor| json!({"individual": actor}))
        .collect();
    let locations: Vec<Value> = participants
        .iter()
        .filter(|p| of_type(p, &["Location"]))
        .filter_map(|p| p.get("actor").cloned())
        .map(|actor| json!({"location": actor}))
        .collect();
    let video = appointment
        .get("extension")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|e| e.get("url").and_then(Value::as_str) == Some(APPOINTMENT_VIRTUAL_SERVICE));
    let class = if video {
        json!({"system": ACT_CODE, "code": "VR", "display": "virtual"})
    } else {
        json!({"system": ACT_CODE, "code": "AMB", "display": "ambulatory"})
    };
    let owned = |key: &str, subject: Value| {
        let mut m = Map::new();
        m.insert(
            "identifier".into(),
            json!([{"system": canonical.encounter_identifier(), "value": key}]),
        );
        m.insert("status".into(), json!("finished"));
        m.insert("class".into(), class.clone());
        if let Some(service) = appointment
            .get("serviceType")
            .and_then(Value::as_array)
            .and_then(|s| s.first())
        {
            m.insert("serviceType".into(), service.clone());
        }
        m.insert("subject".into(), subject);
        if !practitioners.is_empty() {
            m.insert("participant".into(), Value::Array(practitioners.clone()));
        }
        m.insert(
            "appointment".into(),
            json!([{"reference": format!("Appointment/{id}")}]),
        );
        let mut period = Map::new();
        for k in ["start", "end"] {
            if let Some(v) = appointment.get(k) {
                period.insert(k.into(), v.clone());
            }
        }
        if !period.is_empty() {
            m.insert("period".into(), Value::Object(period));
        }
        if !locations.is_empty() {
            m.insert("location".into(), Value::Array(locations.clone()));
        }
        m
    };
    match scheduling::session_group(appointment) {
        Some(group) => {
            let mut wanted = vec![Wanted {
                key: identifier_value(id, None),
                part_of_session: false,
                owned: owned(
                    &identifier_value(id, None),
                    json!({"reference": format!("Group/{group}")}),
                ),
            }];
            for (patient, declined, code) in scheduling::patient_attendance(appointment, canonical) {
                if declined
                    || code != Some("attended")
                    || wanted.iter().any(|w| w.key.ends_with(&format!("/Patient/{patient}")))
                {
                    continue;
                }
                let key = identifier_value(id, Some(&patient));
                wanted.push(Wanted {
                    owned: owned(&key, json!({"reference": format!("Patient/{patient}")})),
                    key,
                    part_of_session: true,
                });
            }
            wanted
        }
        // A client recorded as not there (no-show, late-cancel) had no session; unrecorded is
        // taken as there, the session being fulfilled.
        None => scheduling::patient_attendance(appointment, canonical)
            .into_iter()
            .filter(|(_, declined, code)| !declined && code.is_none_or(|c| c == "attended"))
            .map(|(patient, _, _)| patient)
            .collect::<std::collections::BTreeSet<String>>()
            .into_iter()
            .map(|patient| {
                let key = identifier_value(id, Some(&patient));
                Wanted {
                    owned: owned(&key, json!({"reference": format!("Patient/{patient}")})),
                    key,
                    part_of_session: false,
                }
            })
            .collect(),
    }
}

/// Brings the Encounters of ours for Appointment/`id` to `wanted`: creates what is missing,
/// updates what differs in the elements we own (what a client added to them stays), and turns
/// the rest `entered-in-error`.
fn settle_encounters(tx: &mut Tx, id: &str, wanted: Vec<Wanted>) -> Result<(), Abort> {
    let system = tx.rules.canonical.encounter_identifier();
    // Two lookups by index (the reference index by target, then the rows by key), so that no
    // statistics can turn them into a scan: most Appointment writes find nothing here.
    let ids = referring_ids(tx.c, "Encounter", "appointment", "Appointment", id)?;
    let rows = current_bodies(tx.c, "Encounter", &ids)?;
    // (identifier value, id, body) of ours; an EHR's own Encounters of the Appointment are not.
    let mut existing: Vec<(String, String, Value)> = Vec::new();
    for (res_id, body) in rows {
        let key = body
            .get("identifier")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|i| i.get("system").and_then(Value::as_str) == Some(system.as_str()))
            .and_then(|i| i.get("value")?.as_str().map(str::to_string));
        // Two of one key (an earlier race, a client's copy): the first is kept, the other retired.
        if let Some(key) = key {
            existing.push((key, res_id, body));
        }
    }
    let access = WriteAccess::full();
    let via = Via {
        method: "PUT",
        check_refs: false,
    };
    let mut session_id: Option<String> = None;
    for w in wanted {
        let mut owned = w.owned;
        if w.part_of_session {
            if let Some(session) = &session_id {
                owned.insert("partOf".into(), json!({"reference": format!("Encounter/{session}")}));
            }
        }
        let found = existing.iter().position(|(k, _, _)| *k == w.key);
        let enc_id = match found {
            Some(i) => {
                let (_, enc_id, body) = existing.remove(i);
                let mut updated = body.clone();
                if let Some(map) = updated.as_object_mut() {
                    if !w.part_of_session {
                        map.remove("partOf");
                    }
                    for (k, v) in owned {
                        map.insert(k, v);
                    }
                }
                if without_meta(&updated) != without_meta(&body) {
                    update_in(tx, hosted("Encounter")?, &enc_id, &updated, None, via, &access)?;
                }
                enc_id
            }
            None => {
                let mut body = Map::new();
                body.insert("resourceType".into(), json!("Encounter"));
                body.extend(owned);
                let enc_id = new_id();
                create_in(tx, hosted("Encounter")?, &Value::Object(body), &enc_id, false, &access)?;
                enc_id
            }
        };
        if !w.part_of_session {
            session_id.get_or_insert(enc_id);
        }
    }
    for (_, enc_id, mut body) in existing {
        if body.get("status").and_then(Value::as_str) == Some("entered-in-error") {
            continue;
        }
        body["status"] = json!("entered-in-error");
        update_in(tx, hosted("Encounter")?, &enc_id, &body, None, via, &access)?;
    }
    Ok(())
}

/// A resource without its meta, to tell whether a write would change anything.
pub(super) fn without_meta(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("meta");
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn a_note_attachment_is_inline_text_or_pdf() {
        let ok = json!({"contentType": "text/plain; charset=utf-8", "data": b64(b"Slept better."), "size": 13});
        assert_eq!(check_attachment(&ok), Ok(()));
        assert_eq!(
            check_attachment(&json!({"contentType": "application/pdf", "data": b64(b"%PDF-1.7 ...")})),
            Ok(())
        );
        assert!(check_attachment(&json!({"contentType": "text/html", "data": b64(b"<p>")})).is_err());
        assert_eq!(
            check_attachment(&json!({"contentType": "application/hl7-v3+xml", "url": "https://x/y"})),
            Ok(())
        );
        assert!(check_attachment(&json!({"data": b64(b"no type")})).is_err());
        assert!(check_attachment(&json!({"contentType": "text/plain", "data": "%%%"})).is_err());
        assert!(check_attachment(&json!({"contentType": "text/plain", "data": b64(b"abc"), "size": 4})).is_err());
        assert!(check_attachment(&json!({"contentType": "application/pdf", "data": b64(b"not a pdf")})).is_err());
        assert!(check_attachment(&json!({"contentType": "text/markdown", "data": b64(&[0xff, 0xfe])})).is_err());
        assert!(check_attachment(&json!({"contentType": "text/plain; charset=latin1", "data": b64(b"x")})).is_err());
    }

    #[test]
    fn periods_cover_with_open_ends() {
        let at = dates::parse_range("2027-03-01T10:00:00Z").unwrap().low;
        assert!(covers(None, at));
        assert!(covers(Some(&json!({"start": "2027-01-01"})), at));
        assert!(covers(Some(&json!({"end": "2027-03-01"})), at));
        assert!(!covers(Some(&json!({"end": "2027-02-28"})), at));
        assert!(!covers(Some(&json!({"start": "2027-03-02"})), at));
    }
}
