//! The Patient compartment (R4 compartmentdefinition-patient), for the hosted types: which search
//! parameters put a resource into a patient's compartment. A `patient/` token sees only the
//! compartment of its patient.

use serde_json::Value;

use super::{index, ResourceType};

/// The parameters through which a resource of `rt` belongs to a patient's compartment, or None
/// when the type is not in the Patient compartment (Practitioner, Organization, Location…).
pub fn patient_params(rt: ResourceType) -> Option<&'static [&'static str]> {
    match rt.as_str() {
        "Appointment" => Some(&["actor"]),
        "CareTeam" => Some(&["patient", "participant"]),
        "Consent" => Some(&["patient"]),
        "Group" => Some(&["member"]),
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
