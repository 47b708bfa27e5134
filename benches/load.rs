//! A FHIR REST load generator: it speaks only HTTP to the base URL given on its command line, so the
//! same data and the same requests can measure any FHIR R4 server.
//!
//!     cargo bench --bench load -- --base http://127.0.0.1:8080 --token "$TOKEN" --seed [--scale 0.1]
//!
//! `--seed` loads a therapy clinic (when it is not there yet) with transaction Bundles of PUTs:
//! practitioners, a room per practitioner, patients, support groups with their rosters, a signed
//! confidentiality agreement per member, a care team per patient and per group, and appointments, a
//! fifth of them group sessions. Ids and times follow from the sizes, so no two appointments ever
//! double-book a therapist, a client or a room, and the scenarios know which ids exist.
//!
//! Each scenario then runs for `--seconds` with `--concurrency` clients, and prints one markdown row
//! (or, with `--json`, one JSON object per line): requests, throughput, p50/p99 latency, errors (any
//! answer that is not 2xx, or no answer). `--only read,search` runs some scenarios only.
//!
//! Two scenarios read as someone other than the system: `member-read` with `--member-token` (a
//! `patient/` token of Patient/bench-pa0, a member of group 0) reads that group's sessions, which
//! the server shows without the other members; `therapist-encounters` with `--therapist-token` (a
//! `user/` token whose fhirUser is Practitioner/bench-pr0) searches the Encounters of the clients
//! assigned to that therapist through their CareTeams. Without its token such a scenario is not run,
//! and says so.
//!
//! Writes during the scenarios (create, transaction, $book-session, series) book hours after the latest
//! appointment on the server, found with `Appointment?_sort=-date&_count=1`, so a run never clashes
//! with data already there and runs can be repeated on one database.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

const FHIR_JSON: &str = "application/fhir+json";
const CAPACITY_URL: &str = "https://tandem.example.org/fhir/StructureDefinition/group-capacity";
const CONSENT_CATEGORY: &str = "https://tandem.example.org/fhir/CodeSystem/consent-category";
const APPOINTMENT_SUBJECT: &str = "http://hl7.org/fhir/5.0/StructureDefinition/extension-Appointment.subject";
/// Monday 2027-01-04T00:00:00Z, the first week of the seeded calendar.
const WEEK0: i64 = 1_799_020_800;
const HOUR: i64 = 3_600;
const DAY: i64 = 86_400;
const WEEK: i64 = 7 * DAY;
/// Individual sessions a therapist holds in a week (five a day, Monday to Friday).
const PER_WEEK: u64 = 25;
/// Every scenario, in the order they run.
const SCENARIOS: [Scenario; 15] = [
    Scenario::Create,
    Scenario::Read,
    Scenario::MemberRead,
    Scenario::TherapistEncounters,
    Scenario::Update,
    Scenario::SearchDateActor,
    Scenario::SearchSorted,
    Scenario::SearchInclude,
    Scenario::Everything,
    Scenario::Transaction,
    Scenario::BookSession,
    Scenario::Series,
    Scenario::Find,
    Scenario::SubmitPhq9,
    Scenario::Outcomes,
];
/// The group whose quarter `$outcomes` reports on: twelve members (the first clients, who also have
/// the seeded individual sessions' Encounters), weekly sessions over the first 13 weeks, and three
/// PHQ-9s each (weeks 0, 6 and 12).
const OUTCOMES_MEMBERS: u64 = 12;
const OUTCOMES_WEEKS: u64 = 13;
const PHQ9_ITEMS: [&str; 9] = [
    "44250-9", "44255-8", "44259-0", "44254-1", "44251-7", "44258-2", "44252-5", "44253-3", "44260-8",
];
const LL358_3: [&str; 4] = ["LA6568-5", "LA6569-3", "LA6570-1", "LA6571-9"];

/// The clinic's size and the load's shape.
struct Args {
    base: String,
    token: Option<String>,
    member_token: Option<String>,
    therapist_token: Option<String>,
    only: Vec<String>,
    seed: bool,
    json: bool,
    concurrency: usize,
    seconds: u64,
    practitioners: u64,
    patients: u64,
    groups: u64,
    members: u64,
    appointments: u64,
    batch: u64,
    lanes: usize,
}

impl Args {
    fn parse() -> Args {
        let mut a = Args {
            base: String::new(),
            token: std::env::var("TANDEM_BENCH_TOKEN").ok(),
            member_token: std::env::var("TANDEM_BENCH_MEMBER_TOKEN").ok(),
            therapist_token: std::env::var("TANDEM_BENCH_THERAPIST_TOKEN").ok(),
            only: Vec::new(),
            seed: false,
            json: false,
            concurrency: 32,
            seconds: 10,
            practitioners: 200,
            patients: 10_000,
            groups: 500,
            members: 8,
            appointments: 1_000_000,
            batch: 500,
            lanes: 2,
        };
        let mut scale = 1.0f64;
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let mut value = || it.next().unwrap_or_else(|| fail(&format!("{flag} needs a value")));
            let number = |v: String| -> u64 { v.parse().unwrap_or_else(|_| fail(&format!("{flag} takes a number"))) };
            match flag.as_str() {
                "--base" => a.base = value().trim_end_matches('/').to_string(),
                "--token" => a.token = Some(value()),
                "--member-token" => a.member_token = Some(value()),
                "--therapist-token" => a.therapist_token = Some(value()),
                "--only" => a.only = value().split(',').map(str::to_string).collect(),
                "--seed" => a.seed = true,
                "--json" => a.json = true,
                "--concurrency" => a.concurrency = number(value()) as usize,
                "--seconds" => a.seconds = number(value()),
                "--scale" => {
                    scale = value()
                        .parse()
                        .unwrap_or_else(|_| fail("--scale takes a number such as 0.1"))
                }
                "--batch" => a.batch = number(value()),
                "--seed-lanes" => a.lanes = number(value()).max(1) as usize,
                "--bench" => {} // passed by cargo bench
                other => fail(&format!("unknown argument {other}")),
            }
        }
        if a.base.is_empty() {
            fail("--base URL is required");
        }
        if !(scale > 0.0 && scale <= 1.0) {
            fail("--scale must be in (0, 1]");
        }
        // Therapists and group sizes stay; clients, groups and appointments shrink with the scale,
        // keeping the patients a multiple of the therapists (see `individual`).
        let scaled = |n: u64, step: u64| ((n as f64 * scale / step as f64).round() as u64).max(1) * step;
        a.patients = scaled(a.patients, a.practitioners);
        a.groups = scaled(a.groups, 1).min(5 * a.practitioners);
        a.appointments = scaled(a.appointments, 5);
        if a.groups * a.members > a.patients {
            fail("more group seats than patients");
        }
        a
    }

    fn group_sessions(&self) -> u64 {
        self.appointments / 5
    }

    fn individual_sessions(&self) -> u64 {
        self.appointments - self.group_sessions()
    }

    /// Encounters seeded: one for each of the first individual sessions, four per client.
    fn encounters(&self) -> u64 {
        self.individual_sessions().min(4 * self.patients)
    }

    /// Weeks that hold the seeded individual sessions.
    fn weeks(&self) -> u64 {
        self.individual_sessions()
            .div_ceil(self.practitioners * PER_WEEK)
            .max(1)
    }
}

fn fail(message: &str) -> ! {
    eprintln!("load: {message}");
    std::process::exit(2)
}

fn instant(secs: i64) -> String {
    OffsetDateTime::from_unix_timestamp(secs)
        .expect("a time within the calendar")
        .format(&Rfc3339)
        .expect("RFC 3339")
}

fn participant(reference: String, status: &str) -> Value {
    json!({"actor": {"reference": reference}, "status": status})
}

/// Individual session k: therapist k % P with client k % N, in the therapist's weekly slot k / P
/// (Monday to Friday, five hours a day). A client's sessions all have one therapist (N is a multiple
/// of P) in distinct slots, so nobody is booked twice; group sessions are in the evenings.
fn individual(k: u64, a: &Args) -> Value {
    let slot = k / a.practitioners;
    let week = (slot / PER_WEEK) as i64;
    let day = (slot % PER_WEEK / 5) as i64;
    let hour = [9, 10, 11, 13, 14][(slot % 5) as usize];
    let start = WEEK0 + week * WEEK + day * DAY + hour * HOUR;
    json!({"resourceType": "Appointment", "id": format!("bench-ai{k}"), "status": "booked",
    "serviceType": [{"text": "individual therapy"}],
    "start": instant(start), "end": instant(start + 50 * 60),
    "participant": [
        participant(format!("Practitioner/bench-pr{}", k % a.practitioners), "accepted"),
        participant(format!("Patient/bench-pa{}", k % a.patients), "accepted"),
    ]})
}

/// Group session j: group j % G meets weekly (week j / G) at 18:00 on the weekday its facilitator
/// (therapist g % P) keeps for it, in that therapist's room, with every member of its roster.
fn group_session(j: u64, a: &Args) -> Value {
    let g = j % a.groups;
    let week = (j / a.groups) as i64;
    let start = WEEK0 + week * WEEK + (g / a.practitioners) as i64 * DAY + 18 * HOUR;
    let p = g % a.practitioners;
    let mut participants = vec![
        participant(format!("Practitioner/bench-pr{p}"), "accepted"),
        participant(format!("Location/bench-room{p}"), "accepted"),
    ];
    participants
        .extend((0..a.members).map(|m| participant(format!("Patient/bench-pa{}", g * a.members + m), "accepted")));
    json!({"resourceType": "Appointment", "id": format!("bench-ag{j}"), "status": "booked",
        "extension": [{"url": APPOINTMENT_SUBJECT, "valueReference": {"reference": format!("Group/bench-gr{g}")}}],
        "serviceType": [{"text": "group therapy"}],
        "start": instant(start), "end": instant(start + 90 * 60), "participant": participants})
}

/// A resource of the clinic by its number.
type Make<'a> = Box<dyn Fn(u64) -> Value + Sync + 'a>;

/// The seeded clinic, in the order its references need: per type, how many and the i-th one.
fn resources(a: &Args) -> Vec<(&'static str, u64, Make<'_>)> {
    vec![
        (
            "Practitioner",
            a.practitioners,
            Box::new(|i| {
                json!({"resourceType": "Practitioner", "id": format!("bench-pr{i}"), "active": true,
                "name": [{"family": format!("Therapist{i}"), "given": ["Sam"]}]})
            }),
        ),
        (
            "Location",
            a.practitioners,
            Box::new(
                |i| json!({"resourceType": "Location", "id": format!("bench-room{i}"), "status": "active", "name": format!("Room {i}")}),
            ),
        ),
        (
            "Patient",
            a.patients,
            Box::new(|i| {
                json!({"resourceType": "Patient", "id": format!("bench-pa{i}"), "active": true,
                "name": [{"family": format!("Client{i}"), "given": ["Alex"]}], "gender": "unknown",
                "birthDate": format!("19{:02}-0{}-1{}", 50 + i % 50, 1 + i % 9, i % 10)})
            }),
        ),
        (
            "Group",
            a.groups,
            Box::new(|g| {
                let member: Vec<Value> = (0..a.members)
                .map(|m| json!({"entity": {"reference": format!("Patient/bench-pa{}", g * a.members + m)}, "period": {"start": "2026-01-01"}}))
                .collect();
                json!({"resourceType": "Group", "id": format!("bench-gr{g}"), "type": "person", "actual": true,
                "extension": [{"url": CAPACITY_URL, "valuePositiveInt": a.members + 2}],
                "name": format!("Support group {g}"),
                "managingEntity": {"reference": format!("Practitioner/bench-pr{}", g % a.practitioners)},
                "member": member})
            }),
        ),
        (
            "Consent",
            a.groups * a.members,
            Box::new(|i| {
                json!({"resourceType": "Consent", "id": format!("bench-co{i}"), "status": "active",
                "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
                "category": [{"coding": [{"system": CONSENT_CATEGORY, "code": "group-confidentiality"}]}],
                "patient": {"reference": format!("Patient/bench-pa{i}")},
                "policyRule": {"coding": [{"system": CONSENT_CATEGORY, "code": "group-confidentiality-rules"}]},
                "provision": {"period": {"start": "2026-01-01"},
                    "actor": [{"role": {"text": "member"}, "reference": {"reference": format!("Group/bench-gr{}", i / a.members)}}]}})
            }),
        ),
        (
            "CareTeam",
            a.patients + a.groups,
            Box::new(|i| {
                let (id, subject, p) = if i < a.patients {
                    (
                        format!("bench-ct{i}"),
                        format!("Patient/bench-pa{i}"),
                        i % a.practitioners,
                    )
                } else {
                    let g = i - a.patients;
                    (
                        format!("bench-ctg{g}"),
                        format!("Group/bench-gr{g}"),
                        g % a.practitioners,
                    )
                };
                json!({"resourceType": "CareTeam", "id": id, "status": "active", "subject": {"reference": subject},
                "participant": [{"role": [{"text": "therapist"}], "member": {"reference": format!("Practitioner/bench-pr{p}")},
                    "period": {"start": "2026-01-01"}}]})
            }),
        ),
        ("Appointment", a.appointments, Box::new(|i| appointment(i, a))),
        ("Encounter", a.encounters(), Box::new(|k| encounter(k, a))),
        (
            "Group (outcomes)",
            1,
            Box::new(|_| {
                let member: Vec<Value> = (0..OUTCOMES_MEMBERS)
                    .map(|m| json!({"entity": {"reference": format!("Patient/bench-pa{m}")}, "period": {"start": "2026-01-01"}}))
                    .collect();
                json!({"resourceType": "Group", "id": "bench-outcomes", "type": "person", "actual": true,
                       "name": "Outcomes group", "member": member})
            }),
        ),
        // Per week: the session's Encounter, then one per member (all attend), partOf it.
        (
            "Encounter (outcomes group)",
            OUTCOMES_WEEKS * (OUTCOMES_MEMBERS + 1),
            Box::new(outcomes_encounter),
        ),
        (
            "QuestionnaireResponse (PHQ-9, scored)",
            OUTCOMES_MEMBERS * 3,
            Box::new(|i| {
                let (m, k) = (i / 3, i % 3);
                // Weeks 0, 6 and 12; totals falling by member-dependent steps.
                let total = 20u64.saturating_sub(k * (m % 5 + 1));
                phq9(
                    &format!("bench-qr{i}"),
                    m,
                    WEEK0 + (k * 6) as i64 * WEEK + 8 * HOUR,
                    total,
                )
            }),
        ),
    ]
}

/// Encounter i of the outcomes group's quarter: week i / (M + 1); the session's own first, then
/// member (i % (M + 1)) - 1's, partOf it.
fn outcomes_encounter(i: u64) -> Value {
    let (week, k) = (i / (OUTCOMES_MEMBERS + 1), i % (OUTCOMES_MEMBERS + 1));
    let start = WEEK0 + week as i64 * WEEK + 5 * DAY + 10 * HOUR;
    let mut e = json!({"resourceType": "Encounter", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "period": {"start": instant(start), "end": instant(start + 90 * 60)}});
    if k == 0 {
        e["id"] = json!(format!("bench-oe{week}"));
        e["subject"] = json!({"reference": "Group/bench-outcomes"});
    } else {
        e["id"] = json!(format!("bench-oe{week}-{}", k - 1));
        e["subject"] = json!({"reference": format!("Patient/bench-pa{}", k - 1)});
        e["partOf"] = json!({"reference": format!("Encounter/bench-oe{week}")});
    }
    e
}

/// A completed PHQ-9 of Patient/bench-pa`patient` whose answers add up to `total`.
fn phq9(id: &str, patient: u64, at: i64, total: u64) -> Value {
    let items: Vec<Value> = PHQ9_ITEMS
        .iter()
        .enumerate()
        .map(|(i, link)| {
            let score = total.saturating_sub(3 * i as u64).min(3) as usize;
            json!({"linkId": link, "answer": [{"valueCoding": {"system": "http://loinc.org", "code": LL358_3[score]}}]})
        })
        .collect();
    let mut r = json!({"resourceType": "QuestionnaireResponse", "status": "completed",
        "questionnaire": "https://tandem.example.org/fhir/Questionnaire/phq-9",
        "subject": {"reference": format!("Patient/bench-pa{patient}")},
        "source": {"reference": format!("Patient/bench-pa{patient}")},
        "authored": instant(at), "item": items});
    if !id.is_empty() {
        r["id"] = json!(id);
    }
    r
}

/// The Encounter of individual session k, as an EHR would record it (the seeded sessions are all
/// booked, so the server writes none of its own).
fn encounter(k: u64, a: &Args) -> Value {
    let session = individual(k, a);
    json!({"resourceType": "Encounter", "id": format!("bench-en{k}"), "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": format!("Patient/bench-pa{}", k % a.patients)},
        "participant": [{"individual": {"reference": format!("Practitioner/bench-pr{}", k % a.practitioners)}}],
        "appointment": [{"reference": format!("Appointment/bench-ai{k}")}],
        "period": {"start": session["start"], "end": session["end"]}})
}

/// Appointment i of the seeded calendar: four individual sessions, then one group session.
fn appointment(i: u64, a: &Args) -> Value {
    if i % 5 == 4 {
        group_session(i / 5, a)
    } else {
        individual(i / 5 * 4 + i % 5, a)
    }
}

fn transaction(entries: Vec<Value>) -> String {
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}).to_string()
}

fn put_entry(resource: Value) -> Value {
    let url = format!(
        "{}/{}",
        resource["resourceType"].as_str().unwrap_or(""),
        resource["id"].as_str().unwrap_or("")
    );
    json!({"resource": resource, "request": {"method": "PUT", "url": url}})
}

struct Client {
    http: reqwest::Client,
    args: Args,
}

impl Client {
    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.args.base)
    }

    async fn post_bundle(&self, body: String) -> Result<(), String> {
        let r = self
            .http
            .post(&self.args.base)
            .header("Content-Type", FHIR_JSON)
            .body(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("{status}: {}", text.chars().take(400).collect::<String>()))
        }
    }

    /// The start of the latest appointment on the server (seconds), or the first seeded week.
    async fn latest_start(&self) -> i64 {
        let r = self
            .http
            .get(self.url("Appointment?_sort=-date&_count=1&_elements=start"))
            .send()
            .await
            .unwrap_or_else(|e| fail(&format!("latest appointment: {e}")));
        if !r.status().is_success() {
            // Booking from the first seeded week would clash with every seeded appointment.
            fail(&format!("latest appointment: the server answered {}", r.status()));
        }
        let bundle: Value = r
            .json()
            .await
            .unwrap_or_else(|e| fail(&format!("latest appointment: {e}")));
        bundle["entry"][0]["resource"]["start"]
            .as_str()
            .and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok())
            .map_or(WEEK0, |t| t.unix_timestamp())
    }

    /// Whether the last appointment the seed writes is there.
    async fn seeded(&self) -> bool {
        let last = appointment(self.args.appointments - 1, &self.args);
        let url = self.url(&format!("Appointment/{}", last["id"].as_str().unwrap_or("")));
        matches!(self.http.get(url).send().await, Ok(r) if r.status().is_success())
    }

    /// Loads the clinic in transaction Bundles of `--batch` PUTs, a few at a time.
    async fn seed(self: &Arc<Self>) {
        if self.seeded().await {
            eprintln!("load: the clinic is already there; not seeding");
            return;
        }
        let started = Instant::now();
        let mut counts = Vec::new();
        for (kind, n, make) in resources(&self.args) {
            let t = Instant::now();
            let next = Arc::new(AtomicU64::new(0));
            let batch = self.args.batch;
            // Bundles in flight at once (`--seed-lanes`): SQLite has one writer, and PostgreSQL's
            // gain flattens past a few concurrent transactions.
            let lanes = self.args.lanes;
            let make = &make;
            let results = futures_util::future::join_all((0..lanes).map(|_| {
                let next = next.clone();
                async move {
                    loop {
                        let from = next.fetch_add(batch, Ordering::Relaxed);
                        if from >= n {
                            return Ok::<(), String>(());
                        }
                        let entries = (from..(from + batch).min(n)).map(|i| put_entry(make(i))).collect();
                        self.post_bundle(transaction(entries))
                            .await
                            .map_err(|e| format!("seeding {kind} from {from}: {e}"))?;
                    }
                }
            }))
            .await;
            for r in results {
                if let Err(e) = r {
                    fail(&e);
                }
            }
            let secs = t.elapsed().as_secs_f64();
            eprintln!("load: seeded {n} {kind} in {secs:.1} s ({:.0}/s)", n as f64 / secs);
            counts.push(json!({"type": kind, "count": n, "seconds": secs}));
        }
        let total = started.elapsed().as_secs_f64();
        if self.args.json {
            println!("{}", json!({"seed": counts, "seconds": total}));
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Scenario {
    Create,
    Read,
    MemberRead,
    TherapistEncounters,
    Update,
    SearchDateActor,
    SearchSorted,
    SearchInclude,
    Everything,
    Transaction,
    BookSession,
    Series,
    Find,
    SubmitPhq9,
    Outcomes,
}

impl Scenario {
    fn short(self) -> &'static str {
        match self {
            Scenario::Create => "create",
            Scenario::Read => "read",
            Scenario::MemberRead => "member-read",
            Scenario::TherapistEncounters => "therapist-encounters",
            Scenario::Update => "update",
            Scenario::SearchDateActor => "search",
            Scenario::SearchSorted => "search-sorted",
            Scenario::SearchInclude => "include",
            Scenario::Everything => "everything",
            Scenario::Transaction => "transaction",
            Scenario::BookSession => "book-session",
            Scenario::Series => "series",
            Scenario::Find => "find",
            Scenario::SubmitPhq9 => "phq9",
            Scenario::Outcomes => "outcomes",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Scenario::Create => "create Appointment",
            Scenario::Read => "read Appointment by id",
            Scenario::MemberRead => "read a group session as a member (patient/ token, redacted)",
            Scenario::TherapistEncounters => "search Encounters of a client as an assigned therapist (user/ token)",
            Scenario::Update => "update Appointment",
            Scenario::SearchDateActor => "search Appointment by week + therapist (_count=20)",
            Scenario::SearchSorted => "the same search, _sort=date",
            Scenario::SearchInclude => "search Appointment by quarter + client, _include=Appointment:actor",
            Scenario::Everything => "Patient $everything",
            Scenario::Transaction => "transaction of 100 Appointments",
            Scenario::BookSession => "Group $book-session",
            Scenario::Series => "Group $book-session, a 12-week series (one transaction)",
            Scenario::Find => "Appointment/$find, a busy therapist's week (60 min on a 15-min grid)",
            Scenario::SubmitPhq9 => "submit a completed PHQ-9 (scored: its Observations in the same transaction)",
            Scenario::Outcomes => "Group $outcomes, PHQ-9, a group of 12 over a quarter",
        }
    }

    /// Writes that book new hours start after the latest appointment.
    fn books(self) -> bool {
        matches!(
            self,
            Scenario::Create | Scenario::Transaction | Scenario::BookSession | Scenario::Series
        )
    }
}

/// A new individual session n, `after` the hours already booked: therapist n % P, client n % N, hour
/// n / P (the clients of one hour are distinct, as N ≥ P).
fn new_appointment(n: u64, after: i64, a: &Args) -> Value {
    let start = after + DAY + (n / a.practitioners) as i64 * HOUR;
    json!({"resourceType": "Appointment", "status": "booked",
    "start": instant(start), "end": instant(start + 50 * 60),
    "participant": [
        participant(format!("Practitioner/bench-pr{}", n % a.practitioners), "accepted"),
        participant(format!("Patient/bench-pa{}", n % a.patients), "accepted"),
    ]})
}

/// One request of the scenario; `i` is spread over the seeded ids, `n` numbers new bookings.
async fn request(c: &Client, scenario: Scenario, i: u64, next: &AtomicU64, after: i64) -> bool {
    let a = &c.args;
    let http = &c.http;
    let individual_id = || {
        let k = i % a.individual_sessions();
        (k, format!("bench-ai{k}"))
    };
    let res = match scenario {
        Scenario::Create => {
            let n = next.fetch_add(1, Ordering::Relaxed);
            http.post(c.url("Appointment"))
                .header("Content-Type", FHIR_JSON)
                .body(new_appointment(n, after, a).to_string())
                .send()
                .await
        }
        Scenario::Read => {
            http.get(c.url(&format!("Appointment/{}", individual_id().1)))
                .send()
                .await
        }
        Scenario::MemberRead => {
            // Group 0's weekly sessions: j = w * G.
            let weeks = (a.group_sessions() / a.groups).max(1);
            let j = (i % weeks) * a.groups;
            http.get(c.url(&format!("Appointment/bench-ag{j}")))
                .bearer_auth(a.member_token.as_deref().unwrap_or(""))
                .send()
                .await
        }
        Scenario::TherapistEncounters => {
            // The clients of therapist 0 are those whose number is a multiple of P.
            let pa = (i % (a.patients / a.practitioners).max(1)) * a.practitioners;
            http.get(c.url(&format!("Encounter?subject=Patient/bench-pa{pa}&_count=20")))
                .bearer_auth(a.therapist_token.as_deref().unwrap_or(""))
                .send()
                .await
        }
        Scenario::Update => {
            let (k, id) = individual_id();
            let mut body = individual(k, a);
            body["comment"] = json!(format!("revised {i}"));
            http.put(c.url(&format!("Appointment/{id}")))
                .header("Content-Type", FHIR_JSON)
                .body(body.to_string())
                .send()
                .await
        }
        Scenario::SearchDateActor | Scenario::SearchSorted => {
            // One therapist's week: about 25 individual and a few group sessions, so two pages. In
            // the default order the first page is read by keyset; sorted, it stores a snapshot.
            let p = i % a.practitioners;
            let from = WEEK0 + ((i / a.practitioners) % a.weeks()) as i64 * WEEK;
            let sort = if scenario == Scenario::SearchSorted {
                "&_sort=date"
            } else {
                ""
            };
            http.get(c.url(&format!(
                "Appointment?date=ge{}&date=lt{}&actor=Practitioner/bench-pr{p}&_count=20{sort}",
                instant(from),
                instant(from + WEEK)
            )))
            .send()
            .await
        }
        Scenario::SearchInclude => {
            // One client's quarter, with the therapists (and rooms) of those sessions included.
            let pa = i % a.patients;
            let from = WEEK0 + ((i / a.patients) % a.weeks().saturating_sub(13).max(1)) as i64 * WEEK;
            http.get(c.url(&format!(
                "Appointment?date=ge{}&date=lt{}&actor=Patient/bench-pa{pa}&_include=Appointment:actor&_count=20",
                instant(from),
                instant(from + 13 * WEEK)
            )))
            .send()
            .await
        }
        Scenario::Everything => {
            http.get(c.url(&format!("Patient/bench-pa{}/$everything", i % a.patients)))
                .send()
                .await
        }
        Scenario::Transaction => {
            let from = next.fetch_add(100, Ordering::Relaxed);
            let entries = (from..from + 100)
                .map(|n| json!({"resource": new_appointment(n, after, a), "request": {"method": "POST", "url": "Appointment"}}))
                .collect();
            http.post(&a.base)
                .header("Content-Type", FHIR_JSON)
                .body(transaction(entries))
                .send()
                .await
        }
        Scenario::BookSession | Scenario::Series => {
            let n = next.fetch_add(1, Ordering::Relaxed);
            let g = n % a.groups;
            let p = g % a.practitioners;
            let (start, count) = if scenario == Scenario::BookSession {
                // Each 90-minute session in two hours of its own: the group's facilitator, room and
                // members are free then, however few groups there are.
                (after + DAY + n as i64 * 2 * HOUR, 1)
            } else {
                // Series n in a two-hour place of the week (84 of them) of its own block of 12
                // weeks: no two series, nor any earlier booking, share an hour.
                (
                    after + DAY + (n % 84) as i64 * 2 * HOUR + (n / 84) as i64 * 12 * WEEK,
                    12,
                )
            };
            let mut parameter = vec![
                json!({"name": "start", "valueDateTime": instant(start)}),
                json!({"name": "end", "valueDateTime": instant(start + 90 * 60)}),
                json!({"name": "practitioner", "valueReference": {"reference": format!("Practitioner/bench-pr{p}")}}),
                json!({"name": "location", "valueReference": {"reference": format!("Location/bench-room{p}")}}),
            ];
            if count > 1 {
                parameter.push(json!({"name": "count", "valueInteger": count}));
            }
            http.post(c.url(&format!("Group/bench-gr{g}/$book-session")))
                .header("Content-Type", FHIR_JSON)
                .body(json!({"resourceType": "Parameters", "parameter": parameter}).to_string())
                .send()
                .await
        }
        Scenario::Find => {
            // One therapist's seeded week (about 25 individual sessions and a few group ones).
            let p = i % a.practitioners;
            let from = WEEK0 + ((i / a.practitioners) % a.weeks()) as i64 * WEEK;
            http.get(c.url(&format!(
                "Appointment/$find?practitioner=bench-pr{p}&start={}&end={}&duration=60",
                instant(from),
                instant(from + WEEK)
            )))
            .send()
            .await
        }
        Scenario::SubmitPhq9 => {
            let n = next.fetch_add(1, Ordering::Relaxed);
            // Dated after the outcomes group's quarter, so that its report reads the same scores.
            let body = phq9(
                "",
                n % a.patients,
                WEEK0 + 26 * WEEK + (n % 100_000) as i64 * 60,
                n % 28,
            );
            http.post(c.url("QuestionnaireResponse"))
                .header("Content-Type", FHIR_JSON)
                .body(body.to_string())
                .send()
                .await
        }
        Scenario::Outcomes => {
            http.get(c.url(&format!(
                "Group/bench-outcomes/$outcomes?measure=phq-9&start={}&end={}",
                &instant(WEEK0)[..10],
                &instant(WEEK0 + OUTCOMES_WEEKS as i64 * WEEK)[..10]
            )))
            .send()
            .await
        }
    };
    match res {
        Ok(r) => {
            let ok = r.status().is_success();
            let _ = r.bytes().await;
            ok
        }
        Err(_) => false,
    }
}

async fn run(c: &Arc<Client>, scenario: Scenario) {
    let after = if scenario.books() { c.latest_start().await } else { 0 };
    let deadline = Instant::now() + Duration::from_secs(c.args.seconds);
    let counter = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..c.args.concurrency)
        .map(|_| {
            let (c, counter, next) = (c.clone(), counter.clone(), next.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                while Instant::now() < deadline {
                    // A multiplicative hash spreads consecutive requests over the ids.
                    let i = counter.fetch_add(1, Ordering::Relaxed).wrapping_mul(2_654_435_761) % 1_000_000_007;
                    let t = Instant::now();
                    if !request(&c, scenario, i, &next, after).await {
                        errors += 1;
                    }
                    latencies.push(t.elapsed());
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for w in workers {
        let (l, e) = w.await.expect("a load worker");
        all.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let per_second = all.len() as f64 / elapsed;
    if c.args.json {
        println!(
            "{}",
            json!({"scenario": scenario.short(), "name": scenario.name(), "requests": all.len(),
                "per_second": per_second, "p50_ms": pct(0.50), "p99_ms": pct(0.99), "errors": errors})
        );
    } else {
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {} |",
            scenario.name(),
            all.len(),
            per_second,
            pct(0.50),
            pct(0.99),
            errors
        );
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args = Args::parse();
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = &args.token {
        let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .unwrap_or_else(|_| fail("the token is not a header value"));
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    headers.insert(
        reqwest::header::ACCEPT,
        reqwest::header::HeaderValue::from_static(FHIR_JSON),
    );
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .default_headers(headers)
        .timeout(Duration::from_secs(120))
        .build()
        .expect("an HTTP client");
    let c = Arc::new(Client { http, args });
    if c.args.seed {
        c.seed().await;
    }
    if !c.args.json {
        println!("| scenario | requests | req/s | p50 ms | p99 ms | errors |");
        println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    }
    for scenario in SCENARIOS {
        if c.args.only.is_empty() || c.args.only.iter().any(|o| o == scenario.short()) {
            let token = match scenario {
                Scenario::MemberRead => Some(("--member-token", &c.args.member_token)),
                Scenario::TherapistEncounters => Some(("--therapist-token", &c.args.therapist_token)),
                _ => None,
            };
            if let Some((flag, None)) = token {
                eprintln!("load: not running {}: it needs {flag}", scenario.short());
                continue;
            }
            run(&c, scenario).await;
        }
    }
}
