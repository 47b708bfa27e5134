//! tandem's own conformance resources, served read-only: the StructureDefinitions of its two
//! extensions and its two CodeSystems, all under the configured canonical base.

use serde_json::{json, Value};

use super::{Canonical, GROUP_CONFIDENTIALITY, GROUP_CONFIDENTIALITY_RULES};

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn extension(
    canonical: &Canonical,
    id: &str,
    name: &str,
    title: &str,
    context: &str,
    description: &str,
    value_type: &str,
) -> Value {
    let url = format!("{}/StructureDefinition/{id}", canonical.base);
    json!({
        "resourceType": "StructureDefinition",
        "id": id,
        "url": url,
        "version": VERSION,
        "name": name,
        "title": title,
        "status": "active",
        "publisher": "tandem",
        "description": description,
        "fhirVersion": "4.0.1",
        "kind": "complex-type",
        "abstract": false,
        "context": [{"type": "element", "expression": context}],
        "type": "Extension",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Extension",
        "derivation": "constraint",
        "differential": {"element": [
            {"id": "Extension", "path": "Extension", "short": title, "definition": description, "min": 0, "max": "1"},
            {"id": "Extension.extension", "path": "Extension.extension", "max": "0"},
            {"id": "Extension.url", "path": "Extension.url", "fixedUri": url},
            {"id": "Extension.value[x]", "path": "Extension.value[x]", "min": 1, "type": [{"code": value_type}]}
        ]}
    })
}

fn code_system(
    canonical: &Canonical,
    id: &str,
    name: &str,
    title: &str,
    description: &str,
    concepts: &[(&str, &str, &str)],
) -> Value {
    json!({
        "resourceType": "CodeSystem",
        "id": id,
        "url": format!("{}/CodeSystem/{id}", canonical.base),
        "version": VERSION,
        "name": name,
        "title": title,
        "status": "active",
        "publisher": "tandem",
        "description": description,
        "caseSensitive": true,
        "content": "complete",
        "count": concepts.len(),
        "concept": concepts.iter().map(|(code, display, definition)| json!({"code": code, "display": display, "definition": definition})).collect::<Vec<_>>()
    })
}

pub fn structure_definitions(canonical: &Canonical) -> Vec<Value> {
    vec![
        extension(
            canonical,
            "group-capacity",
            "GroupCapacity",
            "Group capacity",
            "Group",
            "The largest number of patients a support group's sessions may hold. The server refuses a group session (Appointment carrying the Group) with more patient participants who have not declined.",
            "positiveInt",
        ),
        extension(
            canonical,
            "participant-attendance",
            "ParticipantAttendance",
            "Session attendance",
            "Appointment.participant",
            &format!(
                "What happened for this participant of a session, recorded afterwards: a code from {} (attended, no-show, late-cancel). Appointment.participant.status keeps the answer to the invitation.",
                canonical.attendance_codes()
            ),
            "code",
        ),
    ]
}

pub fn code_systems(canonical: &Canonical) -> Vec<Value> {
    vec![
        code_system(
            canonical,
            "measure-severity",
            "MeasureSeverity",
            "Severity bands of outcome measures",
            "The severity band of a PHQ-9 or GAD-7 total score, as the Observation.interpretation of the total the server derives from a completed response. PHQ-9 bands: Kroenke, Spitzer, Williams, J Gen Intern Med 2001;16(9):606-613; GAD-7 bands: Spitzer, Kroenke, Williams, Löwe, Arch Intern Med 2006;166(10):1092-1097.",
            &crate::measures::severity_concepts(),
        ),
        code_system(
            canonical,
            "slot-purpose",
            "SlotPurpose",
            "What a Slot's time is for",
            "Slot.serviceCategory or Slot.serviceType codes of tandem. A Slot with status busy-unavailable or free whose serviceCategory or serviceType carries group-therapy, on a Schedule whose actor is a Practitioner or a Location, reserves that time for group sessions: an individual session (an Appointment without a Group) of that practitioner or room that overlaps it is refused (409 naming the Slot); group sessions inside it are booked as usual.",
            &[(
                super::GROUP_THERAPY,
                "Group therapy",
                "The Slot's time is reserved for group sessions of its Schedule's practitioners and rooms.",
            )],
        ),
        code_system(
            canonical,
            "attendance",
            "Attendance",
            "Session attendance",
            "What happened for a participant of an individual or group session.",
            &[
                ("attended", "Attended", "The participant attended the session."),
                ("no-show", "No-show", "The participant did not attend and did not cancel in time."),
                ("late-cancel", "Late cancellation", "The participant cancelled after the clinic's cancellation deadline."),
            ],
        ),
        code_system(
            canonical,
            "consent-category",
            "ConsentCategory",
            "tandem consent categories",
            "Consent categories and policy rules of group care.",
            &[
                (
                    GROUP_CONFIDENTIALITY,
                    "Group confidentiality agreement",
                    "The patient agrees to keep confidential what other members share in a support group. Consent.provision.actor names the Group and provision.period the time it covers; a patient needs an active one to be booked into that group's sessions.",
                ),
                (
                    GROUP_CONFIDENTIALITY_RULES,
                    "Group confidentiality rules",
                    "The rules a member of a support group agrees to: what other members share in the group stays in the group, and is not recorded, repeated or used outside it. The Consent.policyRule of a group confidentiality agreement (R4 ppc-1: a Consent names a policy or a policy rule); a clinic may instead name its own agreement text in Consent.policy.uri.",
                ),
            ],
        ),
    ]
}

/// One operation parameter: (name, use, min, max, type, documentation).
type OperationParameter<'a> = (&'a str, &'a str, u32, &'a str, &'a str, &'a str);

/// The parts of the parameters of an operation that have them (each one's name, and its parts).
type Parts<'a> = &'a [(&'a str, &'a [OperationParameter<'a>])];

fn parameter_json((n, u, min, max, t, doc): &OperationParameter<'_>, parts: &[OperationParameter<'_>]) -> Value {
    let mut p = json!({"name": n, "use": u, "min": min, "max": max, "documentation": doc});
    if parts.is_empty() {
        // opd-1: a parameter has a type or parts, never neither.
        p["type"] = json!(t);
    } else {
        p["part"] = json!(parts.iter().map(|part| parameter_json(part, &[])).collect::<Vec<_>>());
    }
    p
}

#[allow(clippy::too_many_arguments)] // one argument per element of the definition it writes
fn operation(
    canonical: &Canonical,
    resource: &str,
    code: &str,
    name: &str,
    affects_state: bool,
    description: &str,
    parameters: &[OperationParameter<'_>],
    parts: Parts<'_>,
) -> Value {
    let id = format!("{resource}-{code}");
    json!({
        "resourceType": "OperationDefinition",
        "id": id,
        "url": format!("{}/OperationDefinition/{id}", canonical.base),
        "version": VERSION,
        "name": name,
        "status": "active",
        "kind": "operation",
        "publisher": "tandem",
        "description": description,
        "affectsState": affects_state,
        "code": code,
        "resource": [resource],
        "system": false,
        "type": false,
        "instance": true,
        "parameter": parameters.iter().map(|p| {
            let own = parts.iter().find(|(name, _)| *name == p.0).map_or(&[][..], |(_, parts)| parts);
            parameter_json(p, own)
        }).collect::<Vec<_>>()
    })
}

/// An operation invoked on its type (`[base]/Appointment/$find`), not on an instance.
fn type_level(mut definition: Value) -> Value {
    definition["type"] = json!(true);
    definition["instance"] = json!(false);
    definition
}

pub fn operation_definitions(canonical: &Canonical) -> Vec<Value> {
    vec![
        operation(canonical, "Group", "book-session", "BookGroupSession", true,
            "Books one session of a support group: an Appointment carrying the Group (R5 Appointment.subject extension), its facilitators and location, and every member active on the session's date (or the chosen subset) invited with status needs-action. All scheduling rules apply in the one transaction that creates it: no double-booking (409), members only, capacity, and group confidentiality agreements (422).",
            &[("start", "in", 1, "1", "dateTime", "Start of the session, with time zone"),
              ("end", "in", 1, "1", "dateTime", "End of the session"),
              ("practitioner", "in", 1, "*", "Reference", "Facilitator(s): Practitioner references"),
              ("location", "in", 0, "1", "Reference", "The room: a Location reference"),
              ("member", "in", 0, "*", "Reference", "Only these members (Patient references; each must be an active member); all active members when absent"),
              ("description", "in", 0, "1", "string", "Shown as Appointment.description"),
              ("count", "in", 0, "1", "integer", "A weekly series of this many sessions (1 to 52; default 1). Every occurrence is checked (double booking, reserved time, roster and agreements on its own date, capacity) and all are booked in one transaction, or none is: the refusal names the occurrence and the clash. The occurrences carry R5's cross-version extensions Appointment.recurrenceId (1..count) and, from the second on, Appointment.originatingAppointment (the first); each keeps the first's wall-clock time (see timezone)"),
              ("interval", "in", 0, "1", "integer", "Weeks between two occurrences of the series (1 to 12; default 1)"),
              ("timezone", "in", 0, "1", "code", "An IANA time zone (America/New_York; R5 Appointment.recurrenceTemplate.timezone): each occurrence keeps the first's wall-clock time there, across daylight-saving changes (a time a change skips moves past the gap; a repeated time is the earlier). Without it, each occurrence keeps the start's UTC offset"),
              ("virtualService", "in", 0, "1", "", "A video session: R5's cross-version extension Appointment.virtualService on each occurrence (its Encounters have class VR). The host's sessionKey is never shown to a patient/ token; a maxParticipants below the people invited is refused (422)"),
              ("return", "out", 1, "1", "Resource", "The session as created (an Appointment), or for count over 1 a Bundle of type collection holding the occurrences, first occurrence first")],
            &[("virtualService", &[
              ("channelType", "in", 0, "1", "Coding", "The kind of video service (R5 virtual-service-type: zoom, ms-teams, whatsapp; or another system)"),
              ("address", "in", 0, "1", "url", "Where the participants join"),
              ("additionalInfo", "in", 0, "*", "url", "Further links about the session"),
              ("maxParticipants", "in", 0, "1", "positiveInt", "The most participants the service takes"),
              ("sessionKey", "in", 0, "1", "string", "The host's key or passcode; not shown to patient/ tokens")])]),
        type_level(operation(canonical, "Appointment", "find", "FindAppointmentTimes", false,
            "The free start times for a session of every named practitioner, room (Location) and patient: on a grid of `granularity` minutes from `start` (15 by default), each start whose session of `duration` minutes lies inside [start, end) and overlaps no active booking of any of them (statuses pending, booked, arrived, checked-in). For kind=individual (the default) time that a Slot reserves for group sessions (slot-purpose group-therapy) is not free either; kind=group may use reserved and unreserved free time alike (reserved time is for groups). An actor with no bookings is free. Answered as a searchset Bundle of proposed Appointments (the actors as participants, needs-action), total counting every free start, paged by _count. A window over 90 days, an end not after the start, a duration over 12 hours or an unknown parameter is 400; a patient/ or assigned-clients token may name only patients it reaches (403).",
            &[("practitioner", "in", 0, "*", "string", "A Practitioner id or reference (Practitioner/x, or an absolute URL)"),
              ("location", "in", 0, "*", "string", "A Location id or reference"),
              ("patient", "in", 0, "*", "string", "A Patient id or reference"),
              ("start", "in", 1, "1", "dateTime", "Start of the window, with time and zone; the grid starts here and the times answered keep its UTC offset"),
              ("end", "in", 1, "1", "dateTime", "End of the window (exclusive); at most 90 days after start"),
              ("duration", "in", 0, "1", "integer", "The session's length in minutes (1 to 720; default 60)"),
              ("granularity", "in", 0, "1", "integer", "Minutes between candidate start times (1 to 1440; default 15)"),
              ("kind", "in", 0, "1", "code", "individual (default) or group"),
              ("return", "out", 1, "1", "Bundle", "A searchset of proposed Appointments, one per free start")], &[])),
        operation(canonical, "Appointment", "cancel-series", "CancelSeries", true,
            "Cancels this occurrence of a weekly series (booked by Group $book-session with count; the series is the first occurrence and the Appointments whose R5 originatingAppointment extension names it) and every later occurrence (a greater recurrenceId) that has not started: status cancelled, cancelationReason.text from `reason`; their time is freed. Occurrences under way, ended or already cancelled are left as they are, so it may be called again. One transaction. An Appointment that is no occurrence of a series is 422.",
            &[("reason", "in", 0, "1", "string", "Why: becomes each cancelled Appointment's cancelationReason.text"),
              ("return", "out", 1, "1", "Bundle", "A collection of the Appointments it changed, in series order")], &[]),
        operation(canonical, "Group", "attendance", "GroupAttendance", false,
            "Per member of a group: sessions invited, attended and missed (no-show plus late cancellation) among the group's sessions that start in [start, end), from the participant-attendance extension.",
            &[("start", "in", 0, "1", "date", "First day (or instant) of the period"),
              ("end", "in", 0, "1", "date", "End of the period (exclusive)"),
              ("group", "out", 1, "1", "Reference", "The group"),
              ("sessions", "out", 1, "1", "integer", "Sessions held or booked in the period"),
              ("member", "out", 0, "*", "", "One per member on the roster or in a session")],
            &[("member", &[
              ("patient", "out", 1, "1", "Reference", "The member: a Patient reference"),
              ("invited", "out", 1, "1", "integer", "Sessions the member was a participant of and did not decline"),
              ("attended", "out", 1, "1", "integer", "Sessions recorded as attended"),
              ("missed", "out", 1, "1", "integer", "noShow + lateCancel"),
              ("noShow", "out", 1, "1", "integer", "Sessions recorded as no-show"),
              ("lateCancel", "out", 1, "1", "integer", "Sessions recorded as late cancellation"),
              ("unrecorded", "out", 1, "1", "integer", "Sessions with no attendance recorded for the member")])]),
        operation(canonical, "Practitioner", "caseload", "PractitionerCaseload", false,
            "A practitioner's booked hours in [start, end), split into individual and group sessions, and the number of distinct patients seen: the workload view that keeps a therapist's individual and group work in balance.",
            &[("start", "in", 0, "1", "date", "First day (or instant) of the period"),
              ("end", "in", 0, "1", "date", "End of the period (exclusive)"),
              ("practitioner", "out", 1, "1", "Reference", "The practitioner"),
              ("individualSessions", "out", 1, "1", "integer", "Individual sessions"),
              ("individualHours", "out", 1, "1", "decimal", "Hours of individual sessions"),
              ("groupSessions", "out", 1, "1", "integer", "Group sessions"),
              ("groupHours", "out", 1, "1", "decimal", "Hours of group sessions"),
              ("totalHours", "out", 1, "1", "decimal", "All booked hours"),
              ("distinctPatients", "out", 1, "1", "integer", "Distinct patients across these sessions")], &[]),
        operation(canonical, "Group", "outcomes", "GroupOutcomes", false,
            "What a measure's scores did for a group's members in [start, end): per member on the roster in the period, the first and latest total score (PHQ-9 LOINC 44261-6 or GAD-7 70274-6 Observations that stand: final, amended, corrected), the change (latest less first, with two scores or more; negative is better), whether that is an improvement of at least the measure's minimal clinically important difference (PHQ-9 5 points, Löwe et al., Med Care 2004;42(12):1194-1201; GAD-7 4 points, Toussaint et al., J Affect Disord 2020;265:395-401), and the sessions attended (finished Encounters that started in the period: partOf a session Encounter of this Group, or partOf nothing for an individual session). Then two cohorts: members who had both group and individual sessions in the period (individual-and-group), and members who had group sessions only (group-only); members with no group session in the period are in neither. Each cohort: members, measured (two scores or more), meanChange of the measured, improved, shareImproved (improved / measured). The caller must reach every member's Observations and Encounters (403 otherwise).",
            &[("measure", "in", 1, "1", "code", "phq-9 or gad-7"),
              ("start", "in", 0, "1", "date", "First day (or instant) of the period"),
              ("end", "in", 0, "1", "date", "End of the period (exclusive)"),
              ("group", "out", 1, "1", "Reference", "The group"),
              ("start", "out", 0, "1", "string", "The period's start, as asked"),
              ("end", "out", 0, "1", "string", "The period's end, as asked"),
              ("measure", "out", 1, "1", "canonical", "The measure's Questionnaire"),
              ("mcid", "out", 1, "1", "integer", "The measure's minimal clinically important difference, in points"),
              ("member", "out", 0, "*", "", "One per member on the roster in the period"),
              ("cohort", "out", 2, "2", "", "individual-and-group, then group-only")],
            &[("member", &[
                ("patient", "out", 1, "1", "Reference", "The member: a Patient reference"),
                ("scores", "out", 1, "1", "integer", "Total scores in the period"),
                ("firstScore", "out", 0, "1", "integer", "The first score in the period"),
                ("firstDate", "out", 0, "1", "dateTime", "When it was taken"),
                ("latestScore", "out", 0, "1", "integer", "The latest score in the period"),
                ("latestDate", "out", 0, "1", "dateTime", "When it was taken"),
                ("latestBand", "out", 0, "1", "code", "Its severity band (CodeSystem measure-severity)"),
                ("change", "out", 0, "1", "integer", "latestScore - firstScore, with two scores or more"),
                ("improved", "out", 0, "1", "boolean", "change <= -mcid"),
                ("groupSessions", "out", 1, "1", "integer", "Sessions of this group attended"),
                ("individualSessions", "out", 1, "1", "integer", "Individual sessions attended")]),
              ("cohort", &[
                ("name", "out", 1, "1", "code", "individual-and-group or group-only"),
                ("members", "out", 1, "1", "integer", "Members in the cohort"),
                ("measured", "out", 1, "1", "integer", "Members with two scores or more"),
                ("meanChange", "out", 0, "1", "decimal", "Mean change of the measured (two decimals)"),
                ("improved", "out", 1, "1", "integer", "Measured members who improved by at least the MCID"),
                ("shareImproved", "out", 0, "1", "decimal", "improved / measured (three decimals)")])]),
        operation(canonical, "Patient", "outcomes", "PatientOutcomes", false,
            "One client's measures in [start, end): for each measure (both, or the one named), every total score that stands in time order with its severity band, the first and latest, the change and whether it is an improvement of at least the minimal clinically important difference; and the group and individual sessions attended (finished Encounters, as Group $outcomes counts them). A caller who may not see the patient gets 404.",
            &[("measure", "in", 0, "1", "code", "phq-9 or gad-7 (default: both)"),
              ("start", "in", 0, "1", "date", "First day (or instant) of the period"),
              ("end", "in", 0, "1", "date", "End of the period (exclusive)"),
              ("patient", "out", 1, "1", "Reference", "The client"),
              ("start", "out", 0, "1", "string", "The period's start, as asked"),
              ("end", "out", 0, "1", "string", "The period's end, as asked"),
              ("groupSessions", "out", 1, "1", "integer", "Group sessions attended (any group)"),
              ("individualSessions", "out", 1, "1", "integer", "Individual sessions attended"),
              ("outcome", "out", 1, "*", "", "One per measure"),
              ("score", "out", 0, "*", "", "Each total score in the period, per measure in time order")],
            &[("outcome", &[
                ("measure", "out", 1, "1", "canonical", "The measure's Questionnaire"),
                ("mcid", "out", 1, "1", "integer", "Its minimal clinically important difference"),
                ("scores", "out", 1, "1", "integer", "Total scores in the period"),
                ("firstScore", "out", 0, "1", "integer", "The first score"),
                ("firstDate", "out", 0, "1", "dateTime", "When it was taken"),
                ("latestScore", "out", 0, "1", "integer", "The latest score"),
                ("latestDate", "out", 0, "1", "dateTime", "When it was taken"),
                ("latestBand", "out", 0, "1", "code", "Its severity band"),
                ("change", "out", 0, "1", "integer", "latestScore - firstScore, with two scores or more"),
                ("improved", "out", 0, "1", "boolean", "change <= -mcid")]),
              ("score", &[
                ("measure", "out", 1, "1", "canonical", "The measure's Questionnaire"),
                ("date", "out", 1, "1", "dateTime", "When it was taken"),
                ("value", "out", 1, "1", "integer", "The total score"),
                ("band", "out", 1, "1", "code", "Its severity band (CodeSystem measure-severity)"),
                ("observation", "out", 1, "1", "Reference", "The Observation it is")])]),
    ]
}

/// tandem's own search parameters (`group` on Appointment), under the configured canonical base.
pub fn search_parameters(canonical: &Canonical) -> Vec<Value> {
    crate::resources::params::own_definitions()
        .into_iter()
        .map(|mut d| {
            let url = canonical.own(d["url"].as_str().unwrap_or_default());
            d["url"] = json!(url);
            d["version"] = json!(VERSION);
            d["publisher"] = json!("tandem");
            d
        })
        .collect()
}

/// The definitions of one type (StructureDefinition, CodeSystem, OperationDefinition or
/// SearchParameter), or None for another type.
pub fn of_type(canonical: &Canonical, res_type: &str) -> Option<Vec<Value>> {
    match res_type {
        "StructureDefinition" => Some(structure_definitions(canonical)),
        "CodeSystem" => Some(code_systems(canonical)),
        "OperationDefinition" => Some(operation_definitions(canonical)),
        "SearchParameter" => Some(search_parameters(canonical)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_are_valid_r4_and_use_the_canonical_base() {
        let c = Canonical::new("https://fhir.clinic.example/fhir");
        for r in structure_definitions(&c)
            .into_iter()
            .chain(code_systems(&c))
            .chain(operation_definitions(&c))
            .chain(search_parameters(&c))
        {
            assert!(r["url"]
                .as_str()
                .unwrap()
                .starts_with("https://fhir.clinic.example/fhir/"));
            let body = serde_json::to_vec(&r).unwrap();
            crate::fhir::parse_resource(&body, crate::fhir::Format::Json)
                .unwrap_or_else(|e| panic!("{}: {e}", r["id"]));
        }
        assert_eq!(c.group_capacity(), structure_definitions(&c)[0]["url"]);
        assert_eq!(c.participant_attendance(), structure_definitions(&c)[1]["url"]);
    }
}
