//! Who is calling and what they may do: bearer tokens ([`token`]) and SMART App Launch v2 scopes.
//!
//! A scope is `context/resource.permissions`: context `patient`, `user` or `system`; resource a type
//! name or `*`; permissions a subset of `cruds` in that order (v2), or v1's `read` (= `rs`), `write`
//! (= `cud`) and `*` (= `cruds`). Granular v2 scopes (`…?param=value`) are not supported and grant
//! nothing, so a token never reaches more than its scopes say. `patient/` scopes reach only the
//! compartment of the token's `patient` claim; `user/` scopes, under TANDEM_USER_ACCESS=assigned
//! (the default), only the compartments of the clients assigned to the token's `fhirUser`
//! Practitioner (through CareTeams: [`Principal::assigned`]), and every record of the types outside
//! the Patient compartment. Psychotherapy notes are seen by their author only, whatever the scope
//! ([`compartment::Reach`]). The audit trail (AuditEvent) is reached only by a
//! `system/` scope that names AuditEvent: wildcards do not cover it.

pub mod token;

use std::fmt;

use crate::error::Error;
use std::sync::Arc;

use crate::resources::compartment::{Notes, Reach};
use crate::resources::{compartment, local_id, ResourceType};

/// The type of the audit trail: outside every wildcard.
pub const AUDIT_EVENT: &str = "AuditEvent";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    Patient,
    User,
    System,
}

/// SMART v2 permissions: c r u d s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Create,
    Read,
    Update,
    Delete,
    Search,
}

impl Permission {
    const ALL: [Permission; 5] = [
        Permission::Create,
        Permission::Read,
        Permission::Update,
        Permission::Delete,
        Permission::Search,
    ];

    fn bit(self) -> u8 {
        match self {
            Permission::Create => 1,
            Permission::Read => 2,
            Permission::Update => 4,
            Permission::Delete => 8,
            Permission::Search => 16,
        }
    }

    pub fn letter(self) -> char {
        match self {
            Permission::Create => 'c',
            Permission::Read => 'r',
            Permission::Update => 'u',
            Permission::Delete => 'd',
            Permission::Search => 's',
        }
    }

    fn is_write(self) -> bool {
        matches!(self, Permission::Create | Permission::Update | Permission::Delete)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub context: Context,
    /// The resource type, or None for `*`.
    pub resource: Option<String>,
    permissions: u8,
}

impl Scope {
    pub fn allows(&self, p: Permission) -> bool {
        self.permissions & p.bit() != 0
    }

    fn covers(&self, res_type: &str) -> bool {
        match &self.resource {
            Some(r) => r == res_type,
            // The audit trail is never part of a wildcard.
            None => res_type != AUDIT_EVENT,
        }
    }
}

/// Parses one SMART scope; None for scopes that grant no resource access here (openid, launch,
/// fhirUser, offline_access, granular scopes, anything malformed).
pub fn parse_scope(text: &str) -> Option<Scope> {
    let (context, rest) = text.split_once('/')?;
    let context = match context {
        "patient" => Context::Patient,
        "user" => Context::User,
        "system" => Context::System,
        _ => return None,
    };
    if rest.contains('?') {
        return None;
    }
    let (resource, perms) = rest.split_once('.')?;
    let resource = match resource {
        "*" => None,
        r if r.starts_with(|c: char| c.is_ascii_uppercase()) && r.chars().all(|c| c.is_ascii_alphanumeric()) => {
            Some(r.to_string())
        }
        _ => return None,
    };
    let permissions = match perms {
        "read" => Permission::Read.bit() | Permission::Search.bit(),
        "write" => Permission::Create.bit() | Permission::Update.bit() | Permission::Delete.bit(),
        "*" => Permission::ALL.iter().map(|p| p.bit()).sum(),
        letters => {
            // v2: a non-empty subset of "cruds", each letter at most once, in that order.
            let mut bits = 0u8;
            let mut next = 0;
            for ch in letters.chars() {
                let at = Permission::ALL[next..].iter().position(|p| p.letter() == ch)?;
                bits |= Permission::ALL[next + at].bit();
                next += at + 1;
            }
            if bits == 0 {
                return None;
            }
            bits
        }
    };
    Some(Scope {
        context,
        resource,
        permissions,
    })
}

/// The caller, from a verified token.
#[derive(Debug, Clone)]
pub struct Principal {
    pub issuer: String,
    pub subject: Option<String>,
    /// `fhirUser`: the FHIR resource of the user (`Practitioner/7`, or an absolute URL).
    pub fhir_user: Option<String>,
    /// `client_id` (or `azp`): the application.
    pub client_id: Option<String>,
    /// The patient in context (`patient` claim), for `patient/` scopes.
    pub patient: Option<String>,
    pub scopes: Vec<Scope>,
    /// Under TANDEM_USER_ACCESS=assigned, the patients whose records `user/` scopes reach: the
    /// clients assigned to the `fhirUser` Practitioner at the time of the request (set by the
    /// authentication middleware from the store). None: `user/` scopes reach every record.
    pub assigned: Option<Arc<Vec<String>>>,
}

/// How far a grant reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// Every resource of the type.
    All,
    /// Only the compartment of this patient (types outside the Patient compartment: read only).
    Patient(String),
    /// Only the compartments of these patients, a practitioner's assigned clients (types outside
    /// the Patient compartment: every record).
    Assigned(Arc<Vec<String>>),
}

impl Grant {
    /// The patient of a `patient/` grant.
    pub fn patient(&self) -> Option<&str> {
        match self {
            Grant::Patient(p) => Some(p),
            _ => None,
        }
    }

    /// Whether the grant reaches every record of the type.
    pub fn is_all(&self) -> bool {
        matches!(self, Grant::All)
    }

    /// How far the grant reaches: all (2), assigned clients (1), one compartment (0).
    pub fn rank(&self) -> u8 {
        match self {
            Grant::All => 2,
            Grant::Assigned(_) => 1,
            Grant::Patient(_) => 0,
        }
    }
}

impl Principal {
    /// What this principal may do with `p` on `res_type`, or 403 saying which scope is missing.
    pub fn grant(&self, res_type: &str, p: Permission) -> Result<Grant, Error> {
        let mut best: Option<Grant> = None;
        let mut patient_scope_without_patient = false;
        let in_compartment = ResourceType::parse(res_type).is_some_and(|rt| compartment::patient_params(rt).is_some());
        let offer = |g: Grant, best: &mut Option<Grant>| {
            if best.as_ref().is_none_or(|b| g.rank() > b.rank()) {
                *best = Some(g);
            }
        };
        for scope in self.scopes.iter().filter(|s| s.allows(p) && s.covers(res_type)) {
            match scope.context {
                Context::System => return Ok(Grant::All),
                Context::User if res_type != AUDIT_EVENT => match &self.assigned {
                    Some(patients) if in_compartment => offer(Grant::Assigned(patients.clone()), &mut best),
                    _ => return Ok(Grant::All),
                },
                Context::User => {}
                // The audit trail and Subscriptions (endpoints, their headers) are no patient's business.
                Context::Patient if res_type == AUDIT_EVENT || res_type == "Subscription" => {}
                Context::Patient => match &self.patient {
                    Some(patient) => {
                        // Types outside the Patient compartment hold no one's record: a patient
                        // token may read them (a therapist's name) but never write them.
                        if in_compartment || !p.is_write() {
                            offer(Grant::Patient(patient.clone()), &mut best);
                        }
                    }
                    None => patient_scope_without_patient = true,
                },
            }
        }
        best.ok_or_else(|| {
            let hint = if patient_scope_without_patient {
                " (patient/ scopes need the token's 'patient' claim)"
            } else {
                ""
            };
            Error::Forbidden(format!(
                "the token's scopes do not grant '{}' on {res_type}{hint}",
                p.letter()
            ))
        })
    }

    /// The id of the token's `fhirUser` when it is a Practitioner of this server (`Practitioner/x`).
    pub fn practitioner(&self) -> Option<String> {
        self.fhir_user.as_deref().and_then(|u| local_id(u, "Practitioner"))
    }

    /// What a caller holding `grant` may see (compartment::Reach): the grant's patients, and the
    /// psychotherapy notes its own Practitioner wrote (through a `user/` scope).
    pub fn reach(&self, grant: &Grant) -> Reach {
        // A psychotherapy note's author acts through a user/ token (a practitioner's app); a
        // backend service's system/ token never reaches one, whatever fhirUser it carries.
        let author = match self.scopes.iter().any(|s| s.context == Context::User) {
            true => self.practitioner(),
            false => None,
        };
        let notes = Notes::AuthoredBy(author);
        match grant {
            Grant::All => Reach {
                patients: None,
                notes,
                own_patient: None,
            },
            Grant::Patient(p) => Reach {
                patients: Some(vec![p.clone()]),
                notes,
                own_patient: Some(p.clone()),
            },
            Grant::Assigned(list) => Reach {
                patients: Some(list.as_ref().clone()),
                notes,
                own_patient: None,
            },
        }
    }

    /// Who this is, for the audit trail: the FHIR user, else issuer and subject.
    pub fn who(&self) -> String {
        match (&self.fhir_user, &self.subject) {
            (Some(u), _) => u.clone(),
            (None, Some(s)) => format!("{}|{s}", self.issuer),
            (None, None) => format!("{}|", self.issuer),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let context = match self.context {
            Context::Patient => "patient",
            Context::User => "user",
            Context::System => "system",
        };
        let letters: String = Permission::ALL
            .iter()
            .filter(|p| self.allows(**p))
            .map(|p| p.letter())
            .collect();
        write!(f, "{context}/{}.{letters}", self.resource.as_deref().unwrap_or("*"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(scopes: &str, patient: Option<&str>) -> Principal {
        Principal {
            issuer: "iss".into(),
            subject: Some("sub".into()),
            fhir_user: None,
            client_id: None,
            patient: patient.map(str::to_string),
            scopes: scopes.split(' ').filter_map(parse_scope).collect(),
            assigned: None,
        }
    }

    #[test]
    fn v2_and_v1_scopes_parse_to_the_same_permissions() {
        assert_eq!(parse_scope("system/*.rs"), parse_scope("system/*.read"));
        assert_eq!(parse_scope("user/Patient.cud"), parse_scope("user/Patient.write"));
        assert_eq!(parse_scope("patient/*.cruds"), parse_scope("patient/*.*"));
        assert_eq!(
            parse_scope("system/Appointment.cruds").unwrap().to_string(),
            "system/Appointment.cruds"
        );
        for bad in [
            "system/*.sr",
            "system/*.rr",
            "system/*.x",
            "system/*.",
            "admin/*.rs",
            "openid",
            "launch/patient",
            "system/patient.rs",
            "patient/Observation.rs?category=laboratory",
        ] {
            assert_eq!(parse_scope(bad), None, "{bad}");
        }
    }

    #[test]
    fn grants_follow_context_type_and_permission() {
        let p = principal("system/Patient.rs user/Appointment.c", None);
        assert_eq!(p.grant("Patient", Permission::Read).unwrap(), Grant::All);
        assert!(p.grant("Patient", Permission::Update).is_err());
        assert_eq!(p.grant("Appointment", Permission::Create).unwrap(), Grant::All);
        assert!(p.grant("Appointment", Permission::Read).is_err());
    }

    #[test]
    fn patient_scopes_reach_the_compartment_and_read_only_elsewhere() {
        let p = principal("patient/*.cruds", Some("p1"));
        assert_eq!(
            p.grant("Appointment", Permission::Update).unwrap(),
            Grant::Patient("p1".into())
        );
        assert_eq!(
            p.grant("Practitioner", Permission::Read).unwrap(),
            Grant::Patient("p1".into())
        );
        assert!(p.grant("Practitioner", Permission::Update).is_err());
        assert!(p.grant("Subscription", Permission::Read).is_err());
        let without = principal("patient/*.cruds", None);
        let e = without.grant("Appointment", Permission::Read).unwrap_err();
        assert!(e.to_string().contains("patient"), "{e}");
    }

    #[test]
    fn the_audit_trail_needs_a_system_scope_that_names_it() {
        assert!(principal("system/*.cruds", None)
            .grant(AUDIT_EVENT, Permission::Read)
            .is_err());
        assert!(principal("user/AuditEvent.rs", None)
            .grant(AUDIT_EVENT, Permission::Read)
            .is_err());
        assert!(principal("patient/AuditEvent.rs", Some("p"))
            .grant(AUDIT_EVENT, Permission::Search)
            .is_err());
        let officer = principal("system/AuditEvent.rs", None);
        assert_eq!(officer.grant(AUDIT_EVENT, Permission::Search).unwrap(), Grant::All);
        assert!(officer.grant(AUDIT_EVENT, Permission::Update).is_err());
    }
}
