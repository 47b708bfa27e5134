//! The per-type rules of a write, in one table: what runs inside the write's transaction before a
//! version is stored (checks, and changes to the resource), after it is stored, and when a resource
//! is deleted. Adding a rule for a type is one entry here and a function beside the others; the
//! executor (store::executor) and the version writer (store::write) call nothing else.

use serde_json::Value;

use super::write::Tx;
use super::{care, measures, scheduling, subscriptions, Abort, WriteAccess};
use crate::resources::ResourceType;

/// One write of one resource, as the rules see it.
pub(super) struct Change<'a> {
    pub(super) rt: ResourceType,
    pub(super) id: &'a str,
    /// The version this write replaces (None: the resource is new, or was deleted).
    pub(super) previous: Option<&'a Value>,
    pub(super) access: &'a WriteAccess,
}

/// A version just stored.
pub(super) struct Written<'a> {
    pub(super) rt: ResourceType,
    pub(super) id: &'a str,
    pub(super) version_id: i64,
    pub(super) resource: &'a Value,
}

type BeforeWrite = fn(&mut Tx, &Change, &mut Value) -> Result<(), Abort>;
type AfterWrite = fn(&mut Tx, &Written) -> Result<(), Abort>;
/// The change's `previous` is the version being deleted.
type OnDelete = fn(&mut Tx, &Change) -> Result<(), Abort>;

struct Hooks {
    /// Checks the resource (refusing the write) and keeps what the server derives in it.
    before_write: Option<BeforeWrite>,
    /// Keeps what the store derives from a stored version (its own index rows).
    after_write: Option<AfterWrite>,
    /// Refuses a deletion, or undoes what the type's writes derived, when it is deleted.
    on_delete: Option<OnDelete>,
}

/// The rules per type. Types not listed have none beyond what every write does (the search
/// indexes, references, and the Subscription outbox).
const HOOKS: [(&str, Hooks); 11] = [
    (
        "Appointment",
        Hooks {
            // Who may record that a session took place; the double-booking rule, then the
            // group-session rules (roster, capacity, agreements).
            before_write: Some(appointment_before),
            // The Encounters of a session that took place (fulfilled), kept in step with it.
            after_write: Some(care::after_appointment),
            // Frees the time it held; its Encounters turn entered-in-error.
            on_delete: Some(appointment_deleted),
        },
    ),
    (
        "CareTeam",
        Hooks {
            // What assigns clients to practitioners is written by a writer who reaches everyone.
            before_write: Some(care::before_care_team),
            after_write: None,
            on_delete: None,
        },
    ),
    (
        "Encounter",
        Hooks {
            // The server's identifier (and appointment) of the Encounters it writes are its own.
            before_write: Some(care::before_encounter),
            after_write: None,
            on_delete: None,
        },
    ),
    (
        "DocumentReference",
        Hooks {
            // Psychotherapy notes: one Practitioner author, the writer; inline note attachments.
            before_write: Some(care::before_document_reference),
            after_write: None,
            on_delete: None,
        },
    ),
    (
        "Group",
        Hooks {
            // Group.quantity is the number of members active now.
            before_write: Some(scheduling::before_group),
            after_write: None,
            on_delete: None,
        },
    ),
    (
        "Observation",
        Hooks {
            // The Observations of a score are the server's own.
            before_write: Some(measures::before_observation),
            after_write: None,
            on_delete: Some(measures::observation_deleted),
        },
    ),
    (
        "Questionnaire",
        Hooks {
            // The measures this server publishes (PHQ-9, GAD-7) are read-only.
            before_write: Some(measures::before_questionnaire),
            after_write: None,
            on_delete: Some(measures::questionnaire_deleted),
        },
    ),
    (
        "QuestionnaireResponse",
        Hooks {
            // A response to a measure of ours: its answers checked (and the Questionnaire it names).
            before_write: Some(measures::before_questionnaire_response),
            // Its score: the total (and PHQ-9's self-harm item) as Observations, kept in step.
            after_write: Some(measures::after_questionnaire_response),
            // Its score's Observations turn entered-in-error.
            on_delete: Some(measures::questionnaire_response_deleted),
        },
    ),
    (
        "Schedule",
        Hooks {
            before_write: None,
            // Its Slots reserve the time of its practitioners and rooms as they now are.
            after_write: Some(scheduling::after_schedule),
            on_delete: Some(scheduling::schedule_deleted),
        },
    ),
    (
        "Slot",
        Hooks {
            // The time it reserves for group sessions (no individual session in it).
            before_write: Some(scheduling::before_slot),
            after_write: None,
            // Frees that time.
            on_delete: Some(scheduling::slot_deleted),
        },
    ),
    (
        "Subscription",
        Hooks {
            // Only channels and endpoints this server may use; status set by the server.
            before_write: Some(subscriptions::before_subscription),
            // The index of active Subscriptions that every write is matched against.
            after_write: Some(subscriptions::index_subscription),
            // A deleted Subscription notifies no more.
            on_delete: Some(subscription_deleted),
        },
    ),
];

fn appointment_before(tx: &mut Tx, change: &Change, appointment: &mut Value) -> Result<(), Abort> {
    care::before_appointment(tx, change, appointment)?;
    scheduling::before_appointment(tx, change, appointment)
}

fn appointment_deleted(tx: &mut Tx, change: &Change) -> Result<(), Abort> {
    scheduling::free_bookings(tx, change.id)?;
    care::retire_encounters(tx, change.id)
}

fn subscription_deleted(tx: &mut Tx, change: &Change) -> Result<(), Abort> {
    subscriptions::forget_subscription(tx, change.id)
}

fn hooks_of(rt: ResourceType) -> Option<&'static Hooks> {
    HOOKS.iter().find(|(t, _)| *t == rt.as_str()).map(|(_, h)| h)
}

pub(super) fn before_write(tx: &mut Tx, change: &Change, resource: &mut Value) -> Result<(), Abort> {
    match hooks_of(change.rt).and_then(|h| h.before_write) {
        Some(rule) => rule(tx, change, resource),
        None => Ok(()),
    }
}

/// The type's own after-write rule, then what every write does: match it against the active
/// Subscriptions (the outbox, in the same transaction).
pub(super) fn after_write(tx: &mut Tx, written: &Written) -> Result<(), Abort> {
    if let Some(rule) = hooks_of(written.rt).and_then(|h| h.after_write) {
        rule(tx, written)?;
    }
    subscriptions::queue_notifications(tx, written)
}

pub(super) fn on_delete(tx: &mut Tx, change: &Change) -> Result<(), Abort> {
    match hooks_of(change.rt).and_then(|h| h.on_delete) {
        Some(rule) => rule(tx, change),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hooked_type_is_hosted_and_listed_once() {
        for (i, (t, _)) in HOOKS.iter().enumerate() {
            assert!(ResourceType::parse(t).is_some(), "{t} is not hosted");
            assert!(HOOKS[..i].iter().all(|(u, _)| u != t), "{t} is listed twice");
        }
    }
}
