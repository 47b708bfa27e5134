//! The Patient compartment (R4 compartmentdefinition-patient), for the hosted types: which search
//! parameters put a resource into a patient's compartment. A `patient/` token sees only the
//! compartment of its patient, a practitioner's `user/` token (TANDEM_USER_ACCESS=assigned) those of
//! its assigned clients; [`Reach`] is that rule, and the psychotherapy-note rule every caller obeys.

use serde_json::Value;

use super::{index, ResourceType};

/// The parameters through which a resource of `rt` belongs to a patient's compartment, or None
/// when the type is not in the Patient compartment (Practitioner, Organization, Location…).
pub fn patient_params(rt: ResourceType) -> Option<&'static [&'static str]> {
    match rt.as_str() {
        "Appointment" => Some(&["actor"]),
        "CareTeam" => Some(&["patient", "participant"]),
        "Consent" => Some(&["patient"]),
        "DocumentReference" => Some(&["subject", "author"]),
        "Encounter" => Some(&["patient"]),
        "Group" => Some(&["member"]),
        "Observation" => Some(&["subject", "performer"]),
        "QuestionnaireResponse" => Some(&["subject", "author"]),
        "Schedule" => Some(&["actor"]),
        // A Patient is in its own compartment, and in that of the patients it links to.
        "Patient" => Some(&["link"]),
        _ => None,
    }
}

/// The local patients whose compartment `resource` belongs to (the patient itself for a Patient).
/// Absolute references name patients of other servers and put nothing here in a compartment.
pub fn patients_of(rt: ResourceType, resource: &Value) -> Vec<String> {
    let Some(params) = patient_params(rt) else {
        return Vec::new();
    };
    let mut out: Vec<String> = index::references(rt, resource, params)
        .into_iter()
        .filter(|r| r.url.is_none() && r.target_type.as_deref() == Some("Patient"))
        .filter_map(|r| r.target_id)
        .collect();
    if rt.as_str() == "Patient" {
        if let Some(id) = resource.get("id").and_then(Value::as_str) {
            out.push(id.to_string());
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Whether `resource` is in the compartment of Patient/`patient`.
pub fn contains(patient: &str, rt: ResourceType, resource: &Value) -> bool {
    patients_of(rt, resource).iter().any(|p| p == patient)
}

/// The security label of a psychotherapy note (v3-ActCode PSYTHPN, "psychotherapy note"; HIPAA
/// 45 CFR 164.501 keeps these apart from the rest of the record): on a DocumentReference's
/// `meta.security`, only its author may see it.
pub const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
pub const PSYTHPN: &str = "PSYTHPN";

/// The label of a resource shown with parts left out for the reader (v3-ObservationValue REDACTED).
pub const OBSERVATION_VALUE: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue";
pub const REDACTED: &str = "REDACTED";

/// Whether `resource` (of `rt`) is a psychotherapy note: a DocumentReference labelled PSYTHPN.
pub fn is_psychotherapy_note(rt: ResourceType, resource: &Value) -> bool {
    rt.as_str() == "DocumentReference"
        && resource
            .pointer("/meta/security")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|c| {
                c.get("system").and_then(Value::as_str) == Some(ACT_CODE)
                    && c.get("code").and_then(Value::as_str) == Some(PSYTHPN)
            })
}

/// The local Practitioner ids among a DocumentReference's authors.
pub fn practitioner_authors(resource: &Value) -> Vec<String> {
    resource
        .get("author")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|a| a.get("reference")?.as_str())
        .filter_map(|r| super::local_id(r, "Practitioner"))
        .collect()
}

/// Who may see psychotherapy notes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notes {
    /// The server's own work (the checks of a write, reports it runs): every note.
    All,
    /// A caller: only the notes whose author is this Practitioner (None: no note at all).
    AuthoredBy(Option<String>),
}

/// Which records a reader may see, beyond what its scopes name: applied to every read, search,
/// include, history, `$everything` and write, in the SQL of searches (search::plan) and to the
/// row for reads by id (store::reads), so that both answer alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach {
    /// For types in the Patient compartment, only records in these patients' compartments (None:
    /// every record; empty: none).
    pub patients: Option<Vec<String>>,
    pub notes: Notes,
    /// A patient's own token: the patient whose view of group sessions and Groups leaves the
    /// other patients out (see [`redact`]).
    pub own_patient: Option<String>,
}

impl Reach {
    /// The server itself: everything, every psychotherapy note included.
    pub fn server() -> Reach {
        Reach {
            patients: None,
            notes: Notes::All,
            own_patient: None,
        }
    }

    /// A caller with no compartment limit (system tokens, `user/` under TANDEM_USER_ACCESS=all):
    /// every record but the psychotherapy notes of others than `author`.
    pub fn unlimited(author: Option<String>) -> Reach {
        Reach {
            patients: None,
            notes: Notes::AuthoredBy(author),
            own_patient: None,
        }
    }

    /// Whether the reader may see `resource`, stored as `rt/id`.
    pub fn sees(&self, rt: ResourceType, id: &str, resource: &Value) -> bool {
        if let Notes::AuthoredBy(author) = &self.notes {
            if is_psychotherapy_note(rt, resource)
                && !author
                    .as_ref()
                    .is_some_and(|a| practitioner_authors(resource).iter().any(|p| p == a))
            {
                return false;
            }
        }
        let Some(patients) = &self.patients else { return true };
        if patient_params(rt).is_none() {
            return true;
        }
        (rt.as_str() == "Patient" && patients.iter().any(|p| p == id))
            || patients_of(rt, resource).iter().any(|p| patients.contains(p))
    }

    /// Whether records of `rt` are limited to some patients' compartments for this reader.
    pub fn limits(&self, rt: ResourceType) -> bool {
        self.patients.is_some() && patient_params(rt).is_some()
    }
}

/// Whether a patient's own view of `resource` leaves something out: a group session Appointment or
/// a Group that holds an entry other than hers and those of practitioners and places, contained
/// resources (which could be anyone), or a video session's host key (the virtualService
/// sessionKey: with it a client could run the session).
pub fn needs_redaction(own_patient: &str, rt: ResourceType, resource: &Value) -> bool {
    hides_others(own_patient, rt, resource)
        || (rt.as_str() == "Appointment" && crate::scheduling::has_session_key(resource))
}

/// Whether a patient's own view of `resource` leaves out other people (entries of others, contained
/// resources, a Group's count): what her token may then not change. The host's key of a video
/// session is not such a part: her write keeps it (scheduling::keep_session_key).
pub fn hides_others(own_patient: &str, rt: ResourceType, resource: &Value) -> bool {
    let Some((list, field)) = redacted_list(rt) else {
        return false;
    };
    resource.get("contained").is_some()
        || resource
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|e| !kept(own_patient, rt, e.get(field)))
        || (rt.as_str() == "Group" && resource.get("quantity").is_some() && resource.get("member").is_some())
}

/// The list of people a type's patient view is cut from, and the field naming each.
fn redacted_list(rt: ResourceType) -> Option<(&'static str, &'static str)> {
    match rt.as_str() {
        "Appointment" => Some(("participant", "actor")),
        "Group" => Some(("member", "entity")),
        _ => None,
    }
}

/// Whether an entry stays in a patient's own view (an allow-list): her own entry; in a session, an
/// entry with no actor (a role still to fill) or one naming a practitioner, a place, a service or
/// a device. Anyone else — another patient, a relative, a contained or display-only actor, an
/// absolute reference she cannot tell — is left out.
fn kept(own: &str, rt: ResourceType, reference: Option<&Value>) -> bool {
    let Some(reference) = reference else {
        return rt.as_str() == "Appointment";
    };
    let Some(r) = reference.get("reference").and_then(Value::as_str) else {
        return false;
    };
    let (res_type, own_entry) = match super::parse_reference(r) {
        super::Target::Local { res_type, id, .. } => {
            let own_entry = res_type == "Patient" && id == own;
            (res_type, own_entry)
        }
        super::Target::External(url) => match [
            "Practitioner",
            "PractitionerRole",
            "Location",
            "HealthcareService",
            "Device",
        ]
        .into_iter()
        .find(|t| url.contains(&format!("/{t}/")))
        {
            Some(t) => (t.to_string(), false),
            None => return false,
        },
        super::Target::Contained(_) => return false,
    };
    own_entry
        || (rt.as_str() == "Appointment"
            && matches!(
                res_type.as_str(),
                "Practitioner" | "PractitionerRole" | "Location" | "HealthcareService" | "Device"
            ))
}

/// A patient's own view of a group session Appointment or a Group: only the entries [`kept`]
/// (a Group also loses `quantity`, which counts them; both lose `contained` and the narrative,
/// written from the whole; an Appointment loses its video host key), labelled REDACTED (v3-ObservationValue) so that a client knows it is
/// not the whole record. Other types, and resources with nothing to leave out, are returned as
/// they are.
pub fn redact(own_patient: &str, rt: ResourceType, mut resource: Value) -> Value {
    if !needs_redaction(own_patient, rt, &resource) {
        return resource;
    }
    let Some((list, field)) = redacted_list(rt) else {
        return resource;
    };
    if let Some(entries) = resource.get_mut(list).and_then(Value::as_array_mut) {
        entries.retain(|e| kept(own_patient, rt, e.get(field)));
    }
    if rt.as_str() == "Appointment" {
        crate::scheduling::strip_session_key(&mut resource);
    }
    if let Some(map) = resource.as_object_mut() {
        if rt.as_str() == "Group" {
            map.remove("quantity");
        }

        map.remove("contained");
        map.remove("text");
        let meta = map.entry("meta").or_insert_with(|| serde_json::json!({}));
        if let Some(meta) = meta.as_object_mut() {
            let security = meta.entry("security").or_insert_with(|| serde_json::json!([]));
            if let Some(labels) = security.as_array_mut() {
                labels.push(serde_json::json!({"system": OBSERVATION_VALUE, "code": REDACTED, "display": "redacted"}));
            }
        }
    }
    resource
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rt(name: &str) -> ResourceType {
        ResourceType::parse(name).unwrap()
    }

    #[test]
    fn appointments_belong_to_each_patient_actor() {
        let appt = json!({"resourceType": "Appointment", "status": "booked", "participant": [
            {"actor": {"reference": "Patient/a"}, "status": "accepted"},
            {"actor": {"reference": "Practitioner/p"}, "status": "accepted"},
            {"actor": {"reference": "https://ehr.example.org/fhir/Patient/b"}, "status": "accepted"}]});
        assert_eq!(patients_of(rt("Appointment"), &appt), vec!["a".to_string()]);
        assert!(contains("a", rt("Appointment"), &appt));
        assert!(!contains("b", rt("Appointment"), &appt));
    }

    #[test]
    fn a_patient_is_in_its_own_compartment_and_practitioners_in_none() {
        let p = json!({"resourceType": "Patient", "id": "a"});
        assert!(contains("a", rt("Patient"), &p));
        assert!(!contains("b", rt("Patient"), &p));
        assert_eq!(patient_params(rt("Practitioner")), None);
        let g = json!({"resourceType": "Group", "type": "person", "actual": true,
            "member": [{"entity": {"reference": "Patient/m1"}}]});
        assert!(contains("m1", rt("Group"), &g));
    }
}
