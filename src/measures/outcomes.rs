//! `$outcomes`: what the scores of a measure did over a period, per client and for the two cohorts
//! of a group — members who also had individual sessions, and members who had group sessions only.
//! Pure arithmetic over scores and sessions already read (api::operations reads them).

use serde_json::{json, Value};

use super::Measure;
use crate::resources::{dates, local_id};

/// One total score of a client.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    pub patient: String,
    /// When it was taken (ms), and as written.
    pub at: i64,
    pub date: String,
    pub value: u32,
    pub observation: String,
}

/// A total-score Observation of `measure` that the server derived from a response it scored (our
/// identifier system `score_system`: a total an EHR or a client recorded itself is not verified,
/// and would count a response twice), that stands (final, amended or corrected), taken at a known
/// time, about a Patient of this server, with a whole score in the measure's range.
pub fn score_of(measure: &Measure, score_system: &str, observation: &Value) -> Option<Score> {
    let derived = observation
        .get("identifier")
        .and_then(Value::as_array)?
        .iter()
        .any(|i| i.get("system").and_then(Value::as_str) == Some(score_system));
    if !derived {
        return None;
    }
    let status = observation.get("status").and_then(Value::as_str)?;
    if !matches!(status, "final" | "amended" | "corrected") {
        return None;
    }
    let coded = observation
        .pointer("/code/coding")
        .and_then(Value::as_array)?
        .iter()
        .any(|c| {
            c.get("system").and_then(Value::as_str) == Some(super::LOINC)
                && c.get("code").and_then(Value::as_str) == Some(measure.total.0)
        });
    if !coded {
        return None;
    }
    let patient = local_id(observation.pointer("/subject/reference")?.as_str()?, "Patient")?;
    let date = observation
        .get("effectiveDateTime")
        .or_else(|| observation.get("effectiveInstant"))
        .or_else(|| observation.pointer("/effectivePeriod/start"))
        .and_then(Value::as_str)?;
    let at = dates::parse_range(date)?.low;
    let value = observation.pointer("/valueQuantity/value")?.as_f64()?;
    if value.fract() != 0.0 || value < 0.0 || value > f64::from(measure.max_total()) {
        return None;
    }
    Some(Score {
        patient,
        at,
        date: date.to_string(),
        value: value as u32,
        observation: observation.get("id")?.as_str()?.to_string(),
    })
}

/// A client's outcome over the period.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub patient: String,
    /// Their scores, oldest first.
    pub scores: Vec<Score>,
    pub group_sessions: u32,
    pub individual_sessions: u32,
}

impl Outcome {
    /// The latest score less the first (negative: better), with two scores or more.
    pub fn change(&self) -> Option<i64> {
        match (self.scores.first(), self.scores.last()) {
            (Some(a), Some(b)) if self.scores.len() >= 2 => Some(i64::from(b.value) - i64::from(a.value)),
            _ => None,
        }
    }

    /// Improved by at least the measure's minimal clinically important difference.
    pub fn improved(&self, measure: &Measure) -> Option<bool> {
        self.change().map(|c| c <= -i64::from(measure.mcid))
    }
}

/// Sorts scores by time (then by Observation id, for a stable order).
pub fn sort_scores(scores: &mut [Score]) {
    scores.sort_by(|a, b| (a.at, &a.observation).cmp(&(b.at, &b.observation)));
}

/// The parts that describe one client's outcome.
pub fn member_parts(measure: &Measure, o: &Outcome) -> Vec<Value> {
    let mut parts = vec![
        json!({"name": "patient", "valueReference": {"reference": format!("Patient/{}", o.patient)}}),
        json!({"name": "scores", "valueInteger": o.scores.len()}),
    ];
    if let (Some(first), Some(latest)) = (o.scores.first(), o.scores.last()) {
        parts.push(json!({"name": "firstScore", "valueInteger": first.value}));
        parts.push(json!({"name": "firstDate", "valueDateTime": first.date}));
        parts.push(json!({"name": "latestScore", "valueInteger": latest.value}));
        parts.push(json!({"name": "latestDate", "valueDateTime": latest.date}));
        if let Some(band) = measure.band(latest.value) {
            parts.push(json!({"name": "latestBand", "valueCode": band.code}));
        }
    }
    if let Some(change) = o.change() {
        parts.push(json!({"name": "change", "valueInteger": change}));
    }
    if let Some(improved) = o.improved(measure) {
        parts.push(json!({"name": "improved", "valueBoolean": improved}));
    }
    parts.push(json!({"name": "groupSessions", "valueInteger": o.group_sessions}));
    parts.push(json!({"name": "individualSessions", "valueInteger": o.individual_sessions}));
    parts
}

/// A cohort's summary: members, members measured (two scores or more), the mean change of the
/// measured (two decimals), how many improved by the MCID, and their share (three decimals).
#[derive(Debug, Clone, PartialEq)]
pub struct Cohort {
    pub members: usize,
    pub measured: usize,
    pub mean_change: Option<f64>,
    pub improved: usize,
    pub share_improved: Option<f64>,
}

pub fn cohort(measure: &Measure, outcomes: &[&Outcome]) -> Cohort {
    let changes: Vec<i64> = outcomes.iter().filter_map(|o| o.change()).collect();
    let improved = outcomes.iter().filter(|o| o.improved(measure) == Some(true)).count();
    let measured = changes.len();
    let round = |x: f64, places: i32| {
        let f = 10f64.powi(places);
        (x * f).round() / f
    };
    Cohort {
        members: outcomes.len(),
        measured,
        mean_change: (measured > 0).then(|| round(changes.iter().sum::<i64>() as f64 / measured as f64, 2)),
        improved,
        share_improved: (measured > 0).then(|| round(improved as f64 / measured as f64, 3)),
    }
}

pub fn cohort_parameter(name: &str, c: &Cohort) -> Value {
    let mut parts = vec![
        json!({"name": "name", "valueCode": name}),
        json!({"name": "members", "valueInteger": c.members}),
        json!({"name": "measured", "valueInteger": c.measured}),
    ];
    if let Some(m) = c.mean_change {
        parts.push(json!({"name": "meanChange", "valueDecimal": m}));
    }
    parts.push(json!({"name": "improved", "valueInteger": c.improved}));
    if let Some(s) = c.share_improved {
        parts.push(json!({"name": "shareImproved", "valueDecimal": s}));
    }
    json!({"name": "cohort", "part": parts})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measures::PHQ9;

    fn outcome(values: &[u32], individual: u32) -> Outcome {
        Outcome {
            patient: "p".into(),
            scores: values
                .iter()
                .enumerate()
                .map(|(i, v)| Score {
                    patient: "p".into(),
                    at: i as i64,
                    date: format!("2027-01-0{}", i + 1),
                    value: *v,
                    observation: format!("o{i}"),
                })
                .collect(),
            group_sessions: 3,
            individual_sessions: individual,
        }
    }

    #[test]
    fn change_and_improvement_need_two_scores() {
        assert_eq!(outcome(&[12], 0).change(), None);
        assert_eq!(outcome(&[15, 11, 10], 0).change(), Some(-5));
        assert_eq!(outcome(&[15, 11, 10], 0).improved(&PHQ9), Some(true));
        assert_eq!(outcome(&[15, 11], 0).improved(&PHQ9), Some(false));
        let (a, b, c) = (outcome(&[20, 10], 2), outcome(&[9, 8], 1), outcome(&[7], 1));
        let summary = cohort(&PHQ9, &[&a, &b, &c]);
        assert_eq!(
            summary,
            Cohort {
                members: 3,
                measured: 2,
                mean_change: Some(-5.5),
                improved: 1,
                share_improved: Some(0.5)
            }
        );
        assert_eq!(cohort(&PHQ9, &[&c]).mean_change, None);
    }

    #[test]
    fn only_standing_scores_in_range_count() {
        let system = "https://x.example/sid/questionnaire-score";
        let obs = |status: &str, value: f64| {
            json!({"resourceType": "Observation", "id": "o1", "status": status, "subject": {"reference": "Patient/p"},
                   "identifier": [{"system": system, "value": "QuestionnaireResponse/r/44261-6"}],
                   "code": {"coding": [{"system": "http://loinc.org", "code": "44261-6"}]},
                   "effectiveDateTime": "2027-01-05T10:00:00Z", "valueQuantity": {"value": value}})
        };
        assert_eq!(score_of(&PHQ9, system, &obs("final", 12.0)).map(|s| s.value), Some(12));
        assert!(score_of(&PHQ9, system, &obs("entered-in-error", 12.0)).is_none());
        assert!(score_of(&PHQ9, system, &obs("cancelled", 12.0)).is_none());
        assert!(score_of(&PHQ9, system, &obs("final", 28.0)).is_none());
        assert!(score_of(&PHQ9, system, &obs("final", 2.5)).is_none());
        let mut recorded = obs("final", 12.0);
        recorded.as_object_mut().unwrap().remove("identifier");
        assert!(
            score_of(&PHQ9, system, &recorded).is_none(),
            "not derived by the server"
        );
    }
}
