//! Standard outcome measures (DESIGN.md, "Measures"): PHQ-9 and GAD-7 as the Questionnaires this
//! server publishes, the check and the score of a response to one of them, and the Observations a
//! score becomes. Pure knowledge over resources in their JSON form; store::measures runs it inside
//! the write's transaction.
//!
//! Where the codes come from (each checked against LOINC's published form of the panel, as NLM's
//! LHC-Forms renders it from LOINC, and against US Core's PHQ-9 examples):
//! - PHQ-9: LOINC panel 44249-1 "PHQ-9 quick depression assessment panel [Reported.PHQ]", its nine
//!   items 44250-9 … 44260-8 (texts as LOINC's form displays them), the total 44261-6 and the
//!   difficulty item 69722-7; answer list LL358-3 (LA6568-5 Not at all 0, LA6569-3 Several days 1,
//!   LA6570-1 More than half the days 2, LA6571-9 Nearly every day 3; loinc.org/LL358-3) and LL359-1
//!   for the unscored difficulty item (LA6572-7, LA6573-5, LA6575-0, LA6574-3; cdn.loinc.org/LL359-1).
//!   Sources: HL7/US-Core input/examples/Questionnaire-phq-9-example.json (made with LHC-Forms from
//!   LOINC 44249-1) and Observation-PHQ9-panel-example-44249-1.json; loinc.org/69729-2 (the PHQ-SADS
//!   hierarchy, with the item texts). HL7's R4 example `Questionnaire/phq-9-questionnaire` differs:
//!   it leaves item 9 out and codes its difficulty item 44256-6 (LOINC's older generic "Perceived
//!   difficulty") with the frequency answers; LOINC's panel is followed here.
//! - GAD-7: LOINC panel 69737-5 "Generalized anxiety disorder 7 item (GAD-7)", its seven items
//!   69725-0 … 69736-7 and the total 70274-6 (LHC-Forms' export of 69737-5; loinc.org/69729-2;
//!   medizininformatik-initiative/kerndatensatzmodul-proms gad-7; HL7 personal-health-record IG
//!   Questionnaire-ScoredAssessment-GAD7). LOINC's form has no difficulty item, so none is published.
//!   LOINC answers item 2 (68509-9) with LA18938-3 "More days than not" for 2; LA6570-1 "More than
//!   half the days", which other guides use there, is accepted for it with the same score.
//! - Scores: the answers' LOINC-published scores, carried in R4 by the `ordinalValue` extension
//!   (http://hl7.org/fhir/StructureDefinition/ordinalValue, valueDecimal) on the `answerOption`,
//!   beside its `valueCoding`, as US Core and LHC-Forms place it.
//! - Severity bands: PHQ-9 0–4 minimal, 5–9 mild, 10–14 moderate, 15–19 moderately severe, 20–27
//!   severe (Kroenke K, Spitzer RL, Williams JBW. The PHQ-9: validity of a brief depression severity
//!   measure. J Gen Intern Med 2001;16(9):606-613); GAD-7 0–4 minimal, 5–9 mild, 10–14 moderate,
//!   15–21 severe (Spitzer RL, Kroenke K, Williams JBW, Löwe B. A brief measure for assessing
//!   generalized anxiety disorder: the GAD-7. Arch Intern Med 2006;166(10):1092-1097).
//! - Minimal clinically important difference: PHQ-9 5 points (Löwe B, Unützer J, Callahan CM,
//!   Perkins AJ, Kroenke K. Monitoring depression treatment outcomes with the Patient Health
//!   Questionnaire-9. Med Care 2004;42(12):1194-1201); GAD-7 4 points (Toussaint A, Hüsing P,
//!   Gumz A, et al. Sensitivity to change and minimal clinically important difference of the 7-item
//!   Generalized Anxiety Disorder Questionnaire (GAD-7). J Affect Disord 2020;265:395-401).

pub mod outcomes;

use serde_json::{json, Value};

use crate::error::BrokenInvariant;
use crate::scheduling::Canonical;

pub const LOINC: &str = "http://loinc.org";
/// R4's extension for the score of an answer option (extension-ordinalvalue.html).
pub const ORDINAL_VALUE: &str = "http://hl7.org/fhir/StructureDefinition/ordinalValue";
const OBSERVATION_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
/// HL7 v3 ObservationInterpretation: `A` (abnormal) flags a self-harm answer above 0, `N` one at 0.
pub const V3_INTERPRETATION: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation";
const UCUM: &str = "http://unitsofmeasure.org";

/// The version of the Questionnaires this server publishes (Questionnaire.version); a response
/// may name it (`…/Questionnaire/phq-9|1`) or no version.
pub const VERSION: &str = "1";

/// One question: its linkId (its LOINC code), its text, and its answer options.
#[derive(Debug)]
pub struct Item {
    pub link_id: &'static str,
    pub text: &'static str,
    pub options: &'static [Answer],
}

/// One answer option: its LOINC answer code, display and score.
#[derive(Debug, Clone, Copy)]
pub struct Answer {
    pub code: &'static str,
    pub display: &'static str,
    pub score: u32,
}

/// A severity band: the highest total in it, its code in our measure-severity CodeSystem, display.
#[derive(Debug)]
pub struct Band {
    pub max: u32,
    pub code: &'static str,
    pub display: &'static str,
}

#[derive(Debug)]
pub struct Measure {
    /// Questionnaire.id and the last part of its canonical URL.
    pub id: &'static str,
    pub name: &'static str,
    pub title: &'static str,
    /// The LOINC panel: Questionnaire.code.
    pub panel: (&'static str, &'static str),
    /// The LOINC total score: its Questionnaire item, and the code of its Observation.
    pub total: (&'static str, &'static str),
    /// The scored items, in order.
    pub items: &'static [Item],
    /// The unscored last question (how difficult these problems made life), when the form has it.
    pub difficulty: Option<Item>,
    pub bands: &'static [Band],
    /// The minimal clinically important difference, in points (see the module's sources).
    pub mcid: u32,
    /// The scored item whose answer above 0 gets its own Observation, flagged abnormal.
    pub flagged: Option<&'static str>,
}

/// LOINC answer list LL358-3: how often over the last two weeks.
pub const FREQUENCY: [Answer; 4] = [
    Answer {
        code: "LA6568-5",
        display: "Not at all",
        score: 0,
    },
    Answer {
        code: "LA6569-3",
        display: "Several days",
        score: 1,
    },
    Answer {
        code: "LA6570-1",
        display: "More than half the days",
        score: 2,
    },
    Answer {
        code: "LA6571-9",
        display: "Nearly every day",
        score: 3,
    },
];

/// LOINC answer list LL359-1: how difficult (not scored).
pub const DIFFICULTY: [Answer; 4] = [
    Answer {
        code: "LA6572-7",
        display: "Not difficult at all",
        score: 0,
    },
    Answer {
        code: "LA6573-5",
        display: "Somewhat difficult",
        score: 1,
    },
    Answer {
        code: "LA6575-0",
        display: "Very difficult",
        score: 2,
    },
    Answer {
        code: "LA6574-3",
        display: "Extremely difficult",
        score: 3,
    },
];

/// The options of GAD-7 item 2 (68509-9) in LOINC's form: LA18938-3 "More days than not" for 2.
pub const GAD7_WORRY: [Answer; 4] = [
    FREQUENCY[0],
    FREQUENCY[1],
    Answer {
        code: "LA18938-3",
        display: "More days than not",
        score: 2,
    },
    FREQUENCY[3],
];

pub const PHQ9: Measure = Measure {
    id: "phq-9",
    name: "PHQ9",
    title: "Patient Health Questionnaire (PHQ-9)",
    panel: ("44249-1", "PHQ-9 quick depression assessment panel"),
    total: ("44261-6", "Patient Health Questionnaire 9 item (PHQ-9) total score [Reported]"),
    items: &[
        Item {
            link_id: "44250-9",
            text: "Little interest or pleasure in doing things",
            options: &FREQUENCY,
        },
        Item {
            link_id: "44255-8",
            text: "Feeling down, depressed, or hopeless",
            options: &FREQUENCY,
        },
        Item {
            link_id: "44259-0",
            text: "Trouble falling or staying asleep, or sleeping too much",
            options: &FREQUENCY,
        },
        Item {
            link_id: "44254-1",
            text: "Feeling tired or having little energy",
            options: &FREQUENCY,
        },
        Item {
            link_id: "44251-7",
            text: "Poor appetite or overeating",
            options: &FREQUENCY,
        },
        Item {
            link_id: "44258-2",
            text: "Feeling bad about yourself-or that you are a failure or have let yourself or your family down",
            options: &FREQUENCY,
        },
        Item {
            link_id: "44252-5",
            text: "Trouble concentrating on things, such as reading the newspaper or watching television",
            options: &FREQUENCY,
        },
        Item {
            link_id: "44253-3",
            text: "Moving or speaking so slowly that other people could have noticed. Or the opposite-being so fidgety or restless that you have been moving around a lot more than usual",
            options: &FREQUENCY,
        },
        Item {
            link_id: "44260-8",
            text: "Thoughts that you would be better off dead, or of hurting yourself in some way",
            options: &FREQUENCY,
        },
    ],
    difficulty: Some(Item {
        link_id: "69722-7",
        text: "How difficult have these problems made it for you to do your work, take care of things at home, or get along with other people?",
        options: &DIFFICULTY,
    }),
    bands: &[
        Band {
            max: 4,
            code: "minimal",
            display: "Minimal depression",
        },
        Band {
            max: 9,
            code: "mild",
            display: "Mild depression",
        },
        Band {
            max: 14,
            code: "moderate",
            display: "Moderate depression",
        },
        Band {
            max: 19,
            code: "moderately-severe",
            display: "Moderately severe depression",
        },
        Band {
            max: 27,
            code: "severe",
            display: "Severe depression",
        },
    ],
    mcid: 5,
    flagged: Some("44260-8"),
};

pub const GAD7: Measure = Measure {
    id: "gad-7",
    name: "GAD7",
    title: "Generalized Anxiety Disorder 7-item scale (GAD-7)",
    panel: ("69737-5", "Generalized anxiety disorder 7 item (GAD-7)"),
    total: (
        "70274-6",
        "Generalized anxiety disorder 7 item (GAD-7) total score [Reported.PHQ]",
    ),
    items: &[
        Item {
            link_id: "69725-0",
            text: "Feeling nervous, anxious or on edge",
            options: &FREQUENCY,
        },
        Item {
            link_id: "68509-9",
            // The instrument's wording; LOINC's display asks "Over the past 2 weeks have you not been
            // able to stop or control worrying".
            text: "Not being able to stop or control worrying",
            options: &GAD7_WORRY,
        },
        Item {
            link_id: "69733-4",
            text: "Worrying too much about different things",
            options: &FREQUENCY,
        },
        Item {
            link_id: "69734-2",
            text: "Trouble relaxing",
            options: &FREQUENCY,
        },
        Item {
            link_id: "69735-9",
            text: "Being so restless that it is hard to sit still",
            options: &FREQUENCY,
        },
        Item {
            link_id: "69689-8",
            text: "Becoming easily annoyed or irritable",
            options: &FREQUENCY,
        },
        Item {
            link_id: "69736-7",
            text: "Feeling afraid as if something awful might happen",
            options: &FREQUENCY,
        },
    ],
    difficulty: None,
    bands: &[
        Band {
            max: 4,
            code: "minimal",
            display: "Minimal anxiety",
        },
        Band {
            max: 9,
            code: "mild",
            display: "Mild anxiety",
        },
        Band {
            max: 14,
            code: "moderate",
            display: "Moderate anxiety",
        },
        Band {
            max: 21,
            code: "severe",
            display: "Severe anxiety",
        },
    ],
    mcid: 4,
    flagged: None,
};

pub const MEASURES: [&Measure; 2] = [&PHQ9, &GAD7];

/// The measure of this id (`phq-9`, `gad-7`).
pub fn by_id(id: &str) -> Option<&'static Measure> {
    MEASURES.iter().copied().find(|m| m.id == id)
}

/// The measure whose total-score LOINC code this is.
pub fn by_total_code(code: &str) -> Option<&'static Measure> {
    MEASURES.iter().copied().find(|m| m.total.0 == code)
}

impl Measure {
    /// The canonical URL of its Questionnaire.
    pub fn url(&self, canonical: &Canonical) -> String {
        format!("{}/Questionnaire/{}", canonical.base, self.id)
    }

    /// The severity band of a total.
    pub fn band(&self, total: u32) -> Option<&'static Band> {
        self.bands.iter().find(|b| total <= b.max)
    }

    /// The highest total possible.
    pub fn max_total(&self) -> u32 {
        self.items.len() as u32 * 3
    }

    /// The Questionnaire this server publishes.
    pub fn questionnaire(&self, canonical: &Canonical) -> Value {
        let options = |answers: &[Answer], scored: bool| -> Vec<Value> {
            answers
                .iter()
                .map(|a| {
                    let mut option = json!({"valueCoding": {"system": LOINC, "code": a.code, "display": a.display}});
                    if scored {
                        option["extension"] = json!([{"url": ORDINAL_VALUE, "valueDecimal": a.score}]);
                    }
                    option
                })
                .collect()
        };
        let mut items: Vec<Value> = self
            .items
            .iter()
            .map(|i| {
                json!({
                    "linkId": i.link_id,
                    "code": [{"system": LOINC, "code": i.link_id}],
                    "text": i.text,
                    "type": "choice",
                    "required": true,
                    "answerOption": options(i.options, true),
                })
            })
            .collect();
        items.push(json!({
            "linkId": self.total.0,
            "code": [{"system": LOINC, "code": self.total.0, "display": self.total.1}],
            "text": "Total score",
            "type": "integer",
            "required": false,
            "readOnly": true,
        }));
        if let Some(d) = &self.difficulty {
            items.push(json!({
                "linkId": d.link_id,
                "code": [{"system": LOINC, "code": d.link_id}],
                "text": d.text,
                "type": "choice",
                "required": false,
                "answerOption": options(d.options, false),
            }));
        }
        json!({
            "resourceType": "Questionnaire",
            "id": self.id,
            "url": self.url(canonical),
            "version": VERSION,
            "name": self.name,
            "title": self.title,
            "status": "active",
            "subjectType": ["Patient"],
            "publisher": "tandem",
            "description": format!(
                "{}, as LOINC publishes it (panel {}): each answer carries its score (ordinalValue). A completed response is scored by the server in the same transaction: a total-score Observation (LOINC {}) with its severity band.",
                self.title, self.panel.0, self.total.0
            ),
            "code": [{"system": LOINC, "code": self.panel.0, "display": self.panel.1}],
            "item": items,
        })
    }
}

/// The measure a response answers, from its `questionnaire` canonical (with or without
/// `|version`): Ok(None) for one that is not ours, Err for one under our base that we do not
/// publish, or a version of ours that does not exist.
pub fn measure_of(canonical: &Canonical, questionnaire: &str) -> Result<Option<&'static Measure>, String> {
    let (url, version) = match questionnaire.split_once('|') {
        Some((u, v)) => (u, Some(v)),
        None => (questionnaire, None),
    };
    let ours = format!("{}/Questionnaire/", canonical.base);
    let id = url.strip_prefix(&ours).or_else(|| url.strip_prefix("Questionnaire/"));
    let Some(id) = id else { return Ok(None) };
    // `Questionnaire/phq-9/_history/1` and the like: one of ours, named in a way we do not resolve.
    if let Some((first, _)) = id.split_once('/') {
        if by_id(first).is_some() || url.starts_with(&ours) {
            return Err(format!(
                "'{questionnaire}' is not a canonical URL of a Questionnaire this server publishes: name it as {ours}{first}"
            ));
        }
        return Ok(None);
    }
    let Some(measure) = by_id(id) else {
        if url.starts_with(&ours) {
            return Err(format!("this server publishes no Questionnaire '{url}'"));
        }
        // A relative reference to a Questionnaire of a client's (`Questionnaire/3141`).
        return Ok(None);
    };
    match version {
        Some(v) if v != VERSION => Err(format!(
            "Questionnaire '{url}' has no version '{v}' (this server publishes version {VERSION})"
        )),
        _ => Ok(Some(measure)),
    }
}

/// A scored response: the answer score per scored item (None where unanswered), and the
/// answers' codings.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub scores: Vec<Option<u32>>,
    pub flagged_answer: Option<(u32, Value)>,
}

impl Scored {
    /// The total, when every scored item is answered.
    pub fn total(&self) -> Option<u32> {
        self.scores.iter().copied().sum()
    }
}

fn broken(link_id: &str, diagnostics: String) -> BrokenInvariant {
    BrokenInvariant {
        diagnostics,
        expression: format!("QuestionnaireResponse.item.where(linkId = '{link_id}')"),
    }
}

/// Checks the answers of a response to `measure` and scores them. Every item must be one of the
/// Questionnaire's, at most once, each with one answer from its options (a score item's total, if
/// the response carries it, must be the sum); `complete` (status completed or amended) also needs
/// every scored item answered. Each problem names its item's linkId.
pub fn score(measure: &Measure, response: &Value, complete: bool) -> Result<Scored, Vec<BrokenInvariant>> {
    let mut problems = Vec::new();
    let mut scores: Vec<Option<u32>> = vec![None; measure.items.len()];
    let mut seen: Vec<String> = Vec::new();
    let mut flagged_answer = None;
    let mut stated_total: Option<(Option<i64>, usize)> = None;
    let items = response
        .get("item")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for item in items {
        let link_id = item.get("linkId").and_then(Value::as_str).unwrap_or("");
        if seen.iter().any(|s| s == link_id) {
            problems.push(broken(
                link_id,
                format!(
                    "item '{link_id}' is answered more than once; each item of {} appears once",
                    measure.title
                ),
            ));
            continue;
        }
        seen.push(link_id.to_string());
        if item.get("item").is_some() {
            problems.push(broken(
                link_id,
                format!("item '{link_id}' may not hold nested items: {} has none", measure.title),
            ));
        }
        let answers = item
            .get("answer")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        if link_id == measure.total.0 {
            let value = answers
                .first()
                .and_then(|a| a.get("valueInteger"))
                .and_then(Value::as_i64);
            stated_total = Some((value, answers.len()));
            continue;
        }
        let (position, options): (Option<usize>, Vec<&Answer>) =
            if let Some(i) = measure.items.iter().position(|i| i.link_id == link_id) {
                // A scored item takes its own options, and the common frequency answers.
                let own = measure.items[i].options.iter();
                (
                    Some(i),
                    own.chain(
                        FREQUENCY
                            .iter()
                            .filter(|f| !measure.items[i].options.iter().any(|o| o.code == f.code)),
                    )
                    .collect(),
                )
            } else if let Some(d) = measure.difficulty.as_ref().filter(|d| d.link_id == link_id) {
                (None, d.options.iter().collect())
            } else {
                problems.push(broken(
                    link_id,
                    format!(
                        "item '{link_id}' is not an item of {} (Questionnaire/{})",
                        measure.title, measure.id
                    ),
                ));
                continue;
            };
        if answers.is_empty() {
            continue;
        }
        if answers.iter().any(|a| a.get("item").is_some()) {
            problems.push(broken(
                link_id,
                format!(
                    "item '{link_id}' has items nested in its answer: {} has none",
                    measure.title
                ),
            ));
            continue;
        }
        if answers.len() > 1 {
            problems.push(broken(
                link_id,
                format!("item '{link_id}' has {} answers; it takes one", answers.len()),
            ));
            continue;
        }
        let coding = answers[0].get("valueCoding");
        let code = coding.and_then(|c| c.get("code")).and_then(Value::as_str);
        let system_ok = coding
            .and_then(|c| c.get("system"))
            .and_then(Value::as_str)
            .is_none_or(|s| s == LOINC);
        let Some(option) = options.iter().find(|o| Some(o.code) == code).filter(|_| system_ok) else {
            let allowed: Vec<String> = options.iter().map(|o| format!("{} ({})", o.code, o.display)).collect();
            problems.push(broken(
                link_id,
                format!(
                    "item '{link_id}' is answered with {}: the answer must be a valueCoding of {LOINC}, one of {}",
                    coding.map_or("no valueCoding".to_string(), |c| {
                        format!("'{}'", c.get("code").and_then(Value::as_str).unwrap_or("?"))
                    }),
                    allowed.join(", ")
                ),
            ));
            continue;
        };
        if let Some(i) = position {
            scores[i] = Some(option.score);
            if measure.flagged == Some(link_id) {
                flagged_answer = Some((
                    option.score,
                    json!({"system": LOINC, "code": option.code, "display": option.display}),
                ));
            }
        }
    }
    if complete {
        for (item, score) in measure.items.iter().zip(&scores) {
            // An item already refused (a bad answer) is named once.
            if score.is_none() && !problems.iter().any(|p| p.expression.contains(item.link_id)) {
                problems.push(broken(
                    item.link_id,
                    format!(
                        "item '{}' ({}) is not answered: a completed {} answers every scored item",
                        item.link_id, item.text, measure.title
                    ),
                ));
            }
        }
    }
    let scored = Scored { scores, flagged_answer };
    if let Some((value, count)) = stated_total {
        let total = measure.total.0;
        match (value, scored.total()) {
            _ if count > 1 => problems.push(broken(
                total,
                format!("item '{total}' (the total) has {count} answers; it takes one"),
            )),
            (None, _) if count == 1 => problems.push(broken(
                total,
                format!("item '{total}' (the total) is answered with a valueInteger"),
            )),
            (Some(v), Some(sum)) if v != i64::from(sum) => problems.push(broken(
                total,
                format!("item '{total}' says the total is {v}, but the answers add up to {sum}"),
            )),
            _ => {}
        }
    }
    if problems.is_empty() {
        Ok(scored)
    } else {
        Err(problems)
    }
}

/// The identifier system of the Observations the server derives from a response; the value is
/// `QuestionnaireResponse/{id}/{LOINC code}`.
pub fn observation_identifier(canonical: &Canonical) -> String {
    format!("{}/sid/questionnaire-score", canonical.base)
}

/// Our CodeSystem of severity bands (Observation.interpretation of a total score).
pub fn severity_system(canonical: &Canonical) -> String {
    format!("{}/CodeSystem/measure-severity", canonical.base)
}

/// The elements of a derived Observation that the server owns, from the response they come from.
fn derived(
    canonical: &Canonical,
    response_id: &str,
    response: &Value,
    code: (&str, &str),
) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("resourceType".into(), json!("Observation"));
    m.insert(
        "identifier".into(),
        json!([{"system": observation_identifier(canonical), "value": format!("QuestionnaireResponse/{response_id}/{}", code.0)}]),
    );
    m.insert(
        "category".into(),
        json!([{"coding": [{"system": OBSERVATION_CATEGORY, "code": "survey", "display": "Survey"}]}]),
    );
    m.insert(
        "code".into(),
        json!({"coding": [{"system": LOINC, "code": code.0, "display": code.1}]}),
    );
    for (from, to) in [("subject", "subject"), ("encounter", "encounter")] {
        if let Some(v) = response.get(from) {
            m.insert(to.into(), v.clone());
        }
    }
    if let Some(authored) = response.get("authored") {
        m.insert("effectiveDateTime".into(), authored.clone());
    }
    // The source answered; as performer it would also put the score in the source's compartment,
    // so another Patient (one who answered for someone else) is not copied there.
    if let Some(source) = response.get("source") {
        let reference = source.get("reference").and_then(Value::as_str).unwrap_or("");
        let a_patient = crate::resources::local_id(reference, "Patient").is_some() || reference.contains("/Patient/");
        if !a_patient || response.get("subject") == Some(source) {
            m.insert("performer".into(), json!([source]));
        }
    }
    m.insert(
        "derivedFrom".into(),
        json!([{"reference": format!("QuestionnaireResponse/{response_id}")}]),
    );
    m
}

/// The Observations a scored, complete response derives (without status): its total, and for
/// PHQ-9 the self-harm item when answered above 0 — or at 0 once it had been above (`keep_flag`,
/// so that the flag is lowered on the same Observation).
pub fn observations(
    canonical: &Canonical,
    measure: &Measure,
    response_id: &str,
    response: &Value,
    scored: &Scored,
    keep_flag: bool,
) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let Some(total) = scored.total() else { return out };
    let mut m = derived(canonical, response_id, response, measure.total);
    m.insert(
        "valueQuantity".into(),
        json!({"value": total, "unit": "{score}", "system": UCUM, "code": "{score}"}),
    );
    if let Some(band) = measure.band(total) {
        m.insert(
            "interpretation".into(),
            json!([{"coding": [{"system": severity_system(canonical), "code": band.code, "display": band.display}], "text": band.display}]),
        );
    }
    out.push((measure.total.0.to_string(), Value::Object(m)));
    if let (Some(link_id), Some((score, answer))) = (measure.flagged, &scored.flagged_answer) {
        if *score > 0 || keep_flag {
            let text = measure
                .items
                .iter()
                .find(|i| i.link_id == link_id)
                .map_or("", |i| i.text);
            let mut m = derived(canonical, response_id, response, (link_id, text));
            m.insert("valueCodeableConcept".into(), json!({"coding": [answer]}));
            let (code, display) = if *score > 0 { ("A", "Abnormal") } else { ("N", "Normal") };
            m.insert(
                "interpretation".into(),
                json!([{"coding": [{"system": V3_INTERPRETATION, "code": code, "display": display}]}]),
            );
            out.push((link_id.to_string(), Value::Object(m)));
        }
    }
    out
}

/// The CodeSystem of severity bands, served with our other CodeSystems.
pub fn severity_concepts() -> Vec<(&'static str, &'static str, &'static str)> {
    vec![
        (
            "minimal",
            "Minimal",
            "PHQ-9 total 0-4, GAD-7 total 0-4 (minimal depression or anxiety).",
        ),
        ("mild", "Mild", "PHQ-9 total 5-9, GAD-7 total 5-9."),
        ("moderate", "Moderate", "PHQ-9 total 10-14, GAD-7 total 10-14."),
        (
            "moderately-severe",
            "Moderately severe",
            "PHQ-9 total 15-19 (PHQ-9 only).",
        ),
        ("severe", "Severe", "PHQ-9 total 20-27, GAD-7 total 15-21."),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(measure: &Measure, scores: &[u32]) -> Value {
        let items: Vec<Value> = measure
            .items
            .iter()
            .zip(scores)
            .map(|(i, s)| json!({"linkId": i.link_id, "answer": [{"valueCoding": {"system": LOINC, "code": FREQUENCY[*s as usize].code}}]}))
            .collect();
        json!({"resourceType": "QuestionnaireResponse", "status": "completed", "item": items})
    }

    #[test]
    fn bands_cover_every_total_once() {
        for m in MEASURES {
            for total in 0..=m.max_total() {
                assert!(m.band(total).is_some(), "{} {total}", m.id);
            }
            assert_eq!(m.bands.last().map(|b| b.max), Some(m.max_total()));
            assert!(m.band(m.max_total() + 1).is_none());
        }
        assert_eq!(PHQ9.band(14).map(|b| b.code), Some("moderate"));
        assert_eq!(PHQ9.band(15).map(|b| b.code), Some("moderately-severe"));
        assert_eq!(GAD7.band(15).map(|b| b.code), Some("severe"));
    }

    #[test]
    fn a_complete_response_scores_and_an_incomplete_one_names_the_item() {
        let r = response(&PHQ9, &[1, 2, 3, 0, 1, 2, 3, 0, 2]);
        let s = score(&PHQ9, &r, true).unwrap();
        assert_eq!(s.total(), Some(14));
        assert_eq!(s.flagged_answer.as_ref().map(|(n, _)| *n), Some(2));
        let r = response(&PHQ9, &[1, 2, 3]);
        let e = score(&PHQ9, &r, true).unwrap_err();
        assert_eq!(e.len(), 6);
        assert!(e[0].expression.contains("44254-1") && e[0].diagnostics.contains("44254-1"));
        assert!(score(&PHQ9, &r, false).is_ok(), "in progress");
    }

    #[test]
    fn bad_answers_are_named() {
        let mut r = response(&GAD7, &[0; 7]);
        r["item"][2]["answer"][0]["valueCoding"]["code"] = json!("LA6572-7");
        let dup = r["item"][0].clone();
        r["item"].as_array_mut().unwrap().push(dup);
        let e = score(&GAD7, &r, true).unwrap_err();
        assert!(e.iter().any(|b| b.expression.contains("69733-4")), "{e:?}");
        assert!(
            e.iter()
                .any(|b| b.diagnostics.contains("more than once") && b.expression.contains("69725-0")),
            "{e:?}"
        );
        let mut r = response(&GAD7, &[1; 7]);
        r["item"]
            .as_array_mut()
            .unwrap()
            .push(json!({"linkId": "70274-6", "answer": [{"valueInteger": 8}]}));
        assert!(score(&GAD7, &r, true).unwrap_err()[0]
            .diagnostics
            .contains("add up to 7"));
    }

    #[test]
    fn canonicals_resolve_to_our_measures_only() {
        let c = Canonical::new("https://fhir.clinic.example/fhir");
        assert_eq!(
            measure_of(&c, "https://fhir.clinic.example/fhir/Questionnaire/phq-9")
                .unwrap()
                .map(|m| m.id),
            Some("phq-9")
        );
        assert_eq!(
            measure_of(&c, "https://fhir.clinic.example/fhir/Questionnaire/gad-7|1")
                .unwrap()
                .map(|m| m.id),
            Some("gad-7")
        );
        assert!(measure_of(&c, "https://fhir.clinic.example/fhir/Questionnaire/gad-7|2").is_err());
        assert!(measure_of(&c, "https://fhir.clinic.example/fhir/Questionnaire/bdi-ii").is_err());
        assert_eq!(
            measure_of(&c, "http://hl7.org/fhir/Questionnaire/phq-9")
                .unwrap()
                .map(|m| m.id),
            None
        );
        assert_eq!(measure_of(&c, "Questionnaire/3141").unwrap().map(|m| m.id), None);
        assert!(measure_of(&c, "Questionnaire/phq-9/_history/1").is_err());
        assert!(measure_of(&c, "https://fhir.clinic.example/fhir/Questionnaire/phq-9/_history/1").is_err());
    }

    #[test]
    fn published_questionnaires_are_valid_r4() {
        let c = Canonical::new("https://fhir.clinic.example/fhir");
        for m in MEASURES {
            let q = m.questionnaire(&c);
            let body = serde_json::to_vec(&q).unwrap();
            crate::fhir::parse_resource(&body, crate::fhir::Format::Json).unwrap_or_else(|e| panic!("{}: {e}", m.id));
            assert_eq!(
                q["item"].as_array().unwrap().len(),
                m.items.len() + 1 + usize::from(m.difficulty.is_some())
            );
        }
    }
}
