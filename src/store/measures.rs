//! Measures inside the write's transaction (DESIGN.md, "Measures"; the knowledge is in
//! crate::measures): the Questionnaires this server publishes stay its own, a response to one of
//! them is checked and scored, and the Observations of its score are kept in step with it.

use diesel::prelude::*;
use serde_json::{json, Map, Value};

use super::care::without_meta;
use super::hooks::{Change, Written};
use super::reads::{current_bodies, hosted, load_current_for_write, referring_ids};
use super::schema::idx_uri;
use super::write::{create_in, update_in, Tx, Via};
use super::{Abort, Store, WriteAccess};
use crate::error::{BrokenInvariant, Error};
use crate::measures::{self, Measure};
use crate::resources::compartment::Reach;
use crate::resources::{local_id, new_id, parse_reference, Target};

fn invariant(expression: &str, diagnostics: String) -> Abort {
    Error::Invariant(vec![BrokenInvariant {
        diagnostics,
        expression: expression.into(),
    }])
    .into()
}

impl Store {
    /// Stores the Questionnaires of the measures this server publishes (PHQ-9, GAD-7) under the
    /// configured canonical base, writing a version only where the stored one differs. Replicas
    /// that start together race harmlessly: the loser of the first insert retries and finds it.
    pub fn publish_measures(&self) -> Result<usize, Error> {
        let rt = hosted("Questionnaire")?;
        let canonical = self.rules.canonical.clone();
        let mut written = 0;
        for measure in measures::MEASURES {
            let wanted = measure.questionnaire(&canonical);
            written += self.write(|c, now| {
                let mut tx = Tx {
                    c,
                    rules: &self.rules,
                    now,
                };
                let current = load_current_for_write(tx.c, rt, measure.id)?
                    .filter(|cur| !cur.deleted)
                    .and_then(|cur| cur.body)
                    .and_then(|b| serde_json::from_str::<Value>(&b).ok());
                if current.as_ref().map(without_meta) == Some(without_meta(&wanted)) {
                    return Ok(0);
                }
                let via = Via {
                    method: "PUT",
                    check_refs: false,
                };
                update_in(&mut tx, rt, measure.id, &wanted, None, via, &WriteAccess::full())?;
                Ok(1)
            })?;
        }
        Ok(written)
    }
}

/// Before a Questionnaire is stored: the ones this server publishes, and every canonical URL under
/// its base, are the server's (403 for anyone else).
pub(super) fn before_questionnaire(tx: &mut Tx, change: &Change, questionnaire: &mut Value) -> Result<(), Abort> {
    if change.access.reach == Reach::server() {
        return Ok(());
    }
    if measures::by_id(change.id).is_some() {
        return Err(Error::Forbidden(format!(
            "Questionnaire/{} is published by this server and is read-only",
            change.id
        ))
        .into());
    }
    let ours = format!("{}/Questionnaire/", tx.rules.canonical.base);
    if questionnaire
        .get("url")
        .and_then(Value::as_str)
        .is_some_and(|u| u.starts_with(&ours))
    {
        return Err(Error::Forbidden(format!(
            "canonical URLs under {ours} are this server's own; a Questionnaire of yours needs a URL of yours"
        ))
        .into());
    }
    Ok(())
}

/// When a Questionnaire is deleted: not one the server publishes (403).
pub(super) fn questionnaire_deleted(_tx: &mut Tx, change: &Change) -> Result<(), Abort> {
    if change.access.reach != Reach::server() && measures::by_id(change.id).is_some() {
        return Err(Error::Forbidden(format!(
            "Questionnaire/{} is published by this server and is read-only",
            change.id
        ))
        .into());
    }
    Ok(())
}

/// The measure a response answers (None: a Questionnaire not ours; its response is stored as it is).
fn measure_of(tx: &Tx, response: &Value) -> Result<Option<&'static Measure>, Abort> {
    let Some(q) = response.get("questionnaire").and_then(Value::as_str) else {
        return Ok(None);
    };
    measures::measure_of(&tx.rules.canonical, q).map_err(|m| invariant("QuestionnaireResponse.questionnaire", m))
}

fn status(resource: &Value) -> &str {
    resource.get("status").and_then(Value::as_str).unwrap_or("")
}

/// Before a QuestionnaireResponse is stored. Its `questionnaire`, when new or changed, must not
/// name a Questionnaire stored here that is retired, or a version of one that is not stored
/// (422). A response to a measure of ours (not entered-in-error) has a Patient as its subject,
/// and answers that [`measures::score`] accepts — all of them when it is completed or amended
/// (422, naming the item's linkId).
pub(super) fn before_questionnaire_response(tx: &mut Tx, change: &Change, response: &mut Value) -> Result<(), Abort> {
    if status(response) == "entered-in-error" {
        return Ok(());
    }
    let measure = measure_of(tx, response)?;
    let changed = change.previous.and_then(|p| p.get("questionnaire")) != response.get("questionnaire");
    if changed && measure.is_none() {
        if let Some(q) = response.get("questionnaire").and_then(Value::as_str) {
            check_stored_questionnaire(tx, q)?;
        }
    }
    let Some(measure) = measure else { return Ok(()) };
    let subject = response.pointer("/subject/reference").and_then(Value::as_str);
    let is_patient = subject.is_some_and(|r| match parse_reference(r) {
        Target::Local { res_type, .. } => res_type == "Patient",
        Target::External(url) => url.trim_end_matches('/').rsplit('/').nth(1) == Some("Patient"),
        Target::Contained(_) => false,
    });
    if !is_patient {
        return Err(invariant(
            "QuestionnaireResponse.subject",
            format!(
                "a response to {} is about a client: its subject must be a Patient reference, not {}",
                measure.title,
                subject.map_or("nothing".to_string(), |s| format!("'{s}'"))
            ),
        ));
    }
    let complete = matches!(status(response), "completed" | "amended");
    if complete && response.get("authored").and_then(Value::as_str).is_none() {
        return Err(invariant(
            "QuestionnaireResponse.authored",
            format!(
                "a completed {} says when it was answered: authored is required (its score is dated by it)",
                measure.title
            ),
        ));
    }
    measures::score(measure, response, complete).map_err(|problems| Abort::from(Error::Invariant(problems)))?;
    Ok(())
}

/// A canonical naming a Questionnaire stored here: refused when every stored one of that URL (and
/// version, when named) is retired, or when a version is named that none of them has.
fn check_stored_questionnaire(tx: &mut Tx, canonical: &str) -> Result<(), Abort> {
    let (url, version) = match canonical.split_once('|') {
        Some((u, v)) => (u, Some(v)),
        None => (canonical, None),
    };
    let ids: Vec<String> = idx_uri::table
        .filter(idx_uri::res_type.eq("Questionnaire"))
        .filter(idx_uri::param.eq("url"))
        .filter(idx_uri::uri.eq(url))
        .select(idx_uri::res_id)
        .limit(100)
        .load(tx.c)?;
    let stored: Vec<Value> = current_bodies(tx.c, "Questionnaire", &ids)?
        .into_iter()
        .map(|(_, q)| q)
        .filter(|q| q.get("url").and_then(Value::as_str) == Some(url))
        .collect();
    if stored.is_empty() {
        return Ok(());
    }
    let of_version: Vec<&Value> = stored
        .iter()
        .filter(|q| version.is_none_or(|v| q.get("version").and_then(Value::as_str) == Some(v)))
        .collect();
    if of_version.is_empty() {
        return Err(invariant(
            "QuestionnaireResponse.questionnaire",
            format!(
                "the Questionnaire '{url}' stored here has no version '{}'",
                version.unwrap_or_default()
            ),
        ));
    }
    if of_version.iter().all(|q| status(q) == "retired") {
        return Err(invariant(
            "QuestionnaireResponse.questionnaire",
            format!("the Questionnaire '{canonical}' is retired: it takes no new responses"),
        ));
    }
    Ok(())
}

/// After a QuestionnaireResponse is stored: the Observations of its score, in the same
/// transaction (see [`settle_observations`]).
pub(super) fn after_questionnaire_response(tx: &mut Tx, written: &Written) -> Result<(), Abort> {
    let response = written.resource;
    let measure = match status(response) {
        "entered-in-error" => None,
        _ => measure_of(tx, response)?,
    };
    settle_observations(tx, written.id, Some(response), measure)
}

/// When a QuestionnaireResponse is deleted: the Observations of its score turn entered-in-error.
pub(super) fn questionnaire_response_deleted(tx: &mut Tx, change: &Change) -> Result<(), Abort> {
    settle_observations(tx, change.id, None, None)
}

/// Brings the Observations the server derived from QuestionnaireResponse/`id` in step with it.
/// A completed or amended response to a measure: its total (and PHQ-9's self-harm item) — created
/// `final`, and on a later change to what they say, a new version `amended` (same id); a re-save
/// that changes nothing writes nothing. A response in progress or stopped: they turn `cancelled`
/// (the score no longer stands). Entered-in-error, deleted, or no longer a measure of ours: they
/// turn `entered-in-error`. Each is found again by our identifier, among the Observations derived
/// from the response (two index lookups).
fn settle_observations(
    tx: &mut Tx,
    id: &str,
    response: Option<&Value>,
    measure: Option<&'static Measure>,
) -> Result<(), Abort> {
    let canonical = tx.rules.canonical.clone();
    let system = measures::observation_identifier(&canonical);
    let ids = referring_ids(tx.c, "Observation", "derived-from", "QuestionnaireResponse", id)?;
    let rows = current_bodies(tx.c, "Observation", &ids)?;
    let prefix = format!("QuestionnaireResponse/{id}/");
    // (key: the LOINC code, Observation id, body) of ours, and ours about another subject.
    let mut existing: Vec<(String, String, Value)> = Vec::new();
    let mut stale: Vec<(String, Value)> = Vec::new();
    for (obs_id, body) in rows {
        let key = body
            .get("identifier")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|i| i.get("system").and_then(Value::as_str) == Some(system.as_str()))
            .and_then(|i| i.get("value")?.as_str()?.strip_prefix(&prefix).map(str::to_string));
        // One entered in error is never revived (a response deleted, its id used again, makes new
        // Observations); nor is one about another subject (a response moved to another patient).
        let same_subject = response.is_none_or(|r| body.get("subject") == r.get("subject"));
        match key {
            Some(key) if status(&body) != "entered-in-error" && same_subject => existing.push((key, obs_id, body)),
            Some(_) if status(&body) != "entered-in-error" => stale.push((obs_id, body)),
            _ => {}
        }
    }
    let rt = hosted("Observation")?;
    let access = WriteAccess::full();
    let via = Via {
        method: "PUT",
        check_refs: false,
    };
    for (obs_id, mut body) in stale {
        body["status"] = json!("entered-in-error");
        update_in(tx, rt, &obs_id, &body, None, via, &access)?;
    }
    let retire_as = match (response, measure) {
        (Some(r), Some(measure)) if matches!(status(r), "completed" | "amended") => {
            let scored = measures::score(measure, r, true).map_err(|p| Abort::from(Error::Invariant(p)))?;
            let flagged_before = measure.flagged.is_some_and(|f| existing.iter().any(|(k, _, _)| k == f));
            for (key, wanted) in measures::observations(&canonical, measure, id, r, &scored, flagged_before) {
                let Value::Object(owned) = wanted else { continue };
                match existing.iter().position(|(k, _, _)| *k == key) {
                    Some(i) => {
                        let (_, obs_id, body) = existing.remove(i);
                        let mut updated = body.clone();
                        if let Some(map) = updated.as_object_mut() {
                            // What the server derives is replaced whole (a value of another type,
                            // an encounter no longer named, are dropped); the rest stays.
                            for k in [
                                "encounter",
                                "effectiveDateTime",
                                "performer",
                                "valueQuantity",
                                "valueCodeableConcept",
                                "interpretation",
                            ] {
                                map.remove(k);
                            }
                            map.extend(owned.clone());
                        }
                        let standing = matches!(status(&body), "final" | "amended");
                        if !standing || without_meta(&updated) != without_meta(&body) {
                            updated["status"] = json!("amended");
                            update_in(tx, rt, &obs_id, &updated, None, via, &access)?;
                        }
                    }
                    None => {
                        let mut body = Map::new();
                        body.insert("resourceType".into(), json!("Observation"));
                        body.insert("status".into(), json!("final"));
                        body.extend(owned);
                        create_in(tx, rt, &Value::Object(body), &new_id(), false, &access)?;
                    }
                }
            }
            "entered-in-error"
        }
        (Some(r), Some(_)) if matches!(status(r), "in-progress" | "stopped") => "cancelled",
        _ => "entered-in-error",
    };
    for (_, obs_id, mut body) in existing {
        if status(&body) == retire_as {
            continue;
        }
        body["status"] = json!(retire_as);
        update_in(tx, rt, &obs_id, &body, None, via, &access)?;
    }
    Ok(())
}

/// Before an Observation is stored by anyone but the server: the Observations the server derives
/// from a response it scores are its own (403): none may carry our identifier (or lose it), nor
/// record a total or the self-harm item of a measure of ours derived from a response to it.
pub(super) fn before_observation(tx: &mut Tx, change: &Change, observation: &mut Value) -> Result<(), Abort> {
    if change.access.reach == Reach::server() {
        return Ok(());
    }
    let system = measures::observation_identifier(&tx.rules.canonical);
    let carries = |o: Option<&Value>| {
        o.and_then(|o| o.get("identifier"))
            .and_then(Value::as_array)
            .is_some_and(|ids| {
                ids.iter()
                    .any(|i| i.get("system").and_then(Value::as_str) == Some(system.as_str()))
            })
    };
    let owned = || {
        Error::Forbidden(
            "this Observation is the score of a response the server scores: the server owns it (write or amend the QuestionnaireResponse instead)".into(),
        )
    };
    if carries(Some(observation)) || carries(change.previous) {
        return Err(owned().into());
    }
    let scored_code = measure_code(observation);
    if scored_code && change.access.reach.own_patient.is_some() {
        return Err(Error::Forbidden(
            "a client's own token may not record a PHQ-9 or GAD-7 score: send the QuestionnaireResponse, and the server scores it".into(),
        )
        .into());
    }
    if !scored_code {
        return Ok(());
    }
    let responses: Vec<String> = observation
        .get("derivedFrom")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|d| d.get("reference").and_then(Value::as_str))
        .filter_map(|r| local_id(r, "QuestionnaireResponse"))
        .collect();
    if responses.is_empty() {
        return Ok(());
    }
    let rt = hosted("QuestionnaireResponse")?;
    for (qid, response) in current_bodies(tx.c, "QuestionnaireResponse", &responses)? {
        // A response the writer may not see is left to the reference check, which answers for it
        // as for one that does not exist: the refusal is no probe.
        if !change.access.reach.sees(rt, &qid, &response) {
            continue;
        }
        if matches!(measure_of(tx, &response), Ok(Some(_))) {
            return Err(owned().into());
        }
    }
    Ok(())
}

/// Whether an Observation is coded (LOINC) as a measure's total or its flagged item.
fn measure_code(observation: &Value) -> bool {
    observation
        .pointer("/code/coding")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|c| c.get("system").and_then(Value::as_str) == Some(measures::LOINC))
        .filter_map(|c| c.get("code").and_then(Value::as_str))
        .any(|code| {
            measures::MEASURES
                .iter()
                .any(|m| m.total.0 == code || m.flagged == Some(code))
        })
}

/// When an Observation is deleted: one the server derived only by the server, or by a writer who
/// reaches every record (a clinic's system token erasing a record); otherwise 403.
pub(super) fn observation_deleted(tx: &mut Tx, change: &Change) -> Result<(), Abort> {
    let reach = &change.access.reach;
    if reach.patients.is_none() && reach.own_patient.is_none() {
        return Ok(());
    }
    let mut previous = change.previous.cloned().unwrap_or(Value::Null);
    let previous_change = Change {
        rt: change.rt,
        id: change.id,
        previous: None,
        access: change.access,
    };
    before_observation(tx, &previous_change, &mut previous)
}
