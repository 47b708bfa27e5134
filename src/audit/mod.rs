//! The audit trail: every FHIR interaction, refused ones included, becomes an R4 AuditEvent in the
//! service's own database, searchable at `/AuditEvent` (by a token with `system/AuditEvent.rs` only).
//!
//! Requests hand their [`AuditRecord`] to a [`AuditSink`]: a bounded queue drained by one writer
//! thread that inserts events in batches, one transaction per batch, so that auditing a read costs
//! the request no database write. When the queue is full, requests wait for room (nothing is
//! dropped). On shutdown the queue is drained before the process exits; a crash can lose at most
//! the events still queued (written within milliseconds under normal load).
//!
//! No request can stop the trail: every value from a request is checked or cleaned before it is
//! stored ([`AuditRecord::to_row`]), and a batch the store refuses is split until the one event it
//! refuses is found and written in a reduced form ([`write_batch`]). Readiness reports a writer that
//! falls behind ([`Backlog::not_ready`]).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::auth::Principal;
use crate::error::Error;
use crate::resources::{compartment, dates, is_valid_id, ResourceType};
use crate::store::{AuditRow, Store};

/// Events queued at most before requests wait for the writer.
const QUEUE_CAPACITY: usize = 20_000;
/// Events written in one transaction at most.
const BATCH: usize = 500;
/// How long the writer lets a batch gather once the queue is empty: an event is written this much
/// later, in return for one wake-up of the writer and one transaction per batch rather than per event.
const GATHER: Duration = Duration::from_millis(5);
/// How often an idle writer looks whether the server is stopping.
const IDLE_CHECK: Duration = Duration::from_millis(100);
/// Attempts at a whole batch before it is split (a deadlock or a dropped connection passes).
const BATCH_ATTEMPTS: u32 = 3;
/// The first pause while the database is unavailable; it doubles up to [`MAX_PAUSE`].
const RETRY_PAUSE: Duration = Duration::from_millis(50);
const MAX_PAUSE: Duration = Duration::from_secs(5);
/// How long a writer that has not written its batch may go on before readiness reports it.
const STALLED: Duration = Duration::from_secs(5);
/// How often the indexer moves the references of the events written since into audit_refs (see
/// Store::index_audit_refs). The references wait that long in audit_refs_pending, which searches
/// scan: at 30,000 events a second, some 15,000 rows.
const INDEX_EVERY: Duration = Duration::from_millis(500);
/// Events whose references one indexing transaction moves at most.
const INDEX_BATCH: usize = 20_000;
/// Indexer rounds (of [`INDEX_EVERY`]) after which events left behind are tried again: 1 minute.
const INDEX_RETRY_ROUNDS: u32 = 120;
/// How long shutdown waits for queued events to be written to a database that does not take them.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

/// What one request did, as the audit middleware and the handler saw it.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    pub recorded: i64,
    /// The restful interaction (http://hl7.org/fhir/restful-interaction): read, vread, update,
    /// patch, delete, history-instance, history-type, history-system, create, search-type,
    /// search-system, transaction, batch, operation.
    pub interaction: String,
    /// The operation's name (`$everything`) when interaction is `operation`.
    pub operation: Option<String>,
    pub status: u16,
    pub principal: Option<Principal>,
    pub address: Option<String>,
    /// The resources acted on: `Type/id` or `Type/id/_history/n`.
    pub entities: Vec<String>,
    /// For a search: the type searched (or None for a system search) and the query string.
    pub query: Option<(Option<String>, String)>,
    /// The resource read or written, for finding the patients it belongs to.
    pub resource: Option<(ResourceType, String)>,
    /// Patients the request concerned, known without the resource (`$everything`, the token's).
    pub patients: Vec<String>,
    pub request_id: String,
    pub method: String,
}

/// AuditEvent.action for a restful interaction (C R U D E).
pub fn action(interaction: &str) -> &'static str {
    match interaction {
        "create" => "C",
        "read" | "vread" | "history-instance" | "history-type" | "history-system" => "R",
        "update" | "patch" => "U",
        "delete" => "D",
        _ => "E", // search, transaction, batch, operations
    }
}

/// AuditEvent.outcome for an HTTP status.
fn outcome(status: u16) -> &'static str {
    match status {
        0..=399 => "0",
        400..=499 => "4",
        _ => "8",
    }
}

fn reason(status: u16) -> String {
    let text = actix_web::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    format!("{status} {text}")
}

const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
const ENTITY_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";

/// The longest free string (token claims, client id, address, request id, operation, method) the
/// trail keeps; longer ones are cut. Far below PostgreSQL's B-tree entry limit (about 2.7 KB), so no
/// value can make an insert into an indexed column fail.
const TEXT_MAX: usize = 256;
/// The longest query text the trail keeps (its full length is recorded when it is cut).
const QUERY_MAX: usize = 4096;

/// A free string as the trail keeps it: control characters (which a FHIR string should not hold but
/// for tab, CR and LF, R4 datatypes.html#string, and of which PostgreSQL text refuses NUL) written
/// as `\u{..}` escapes, all of them, and at most `max` bytes, cut at a character boundary and marked
/// with `…`.
pub fn clean(text: &str, max: usize) -> String {
    if text.len() <= max && !text.chars().any(char::is_control) {
        return text.to_string();
    }
    let mut out = String::with_capacity(max.min(text.len()) + 8);
    for c in text.chars() {
        if out.len() > max {
            break;
        }
        if c.is_control() {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    if out.len() > max {
        let mut cut = max.saturating_sub('…'.len_utf8());
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

/// The status URL of a bulk-export job names the job as the entity acted on.
const EXPORT_JOB: &str = "$export-status/";

/// An entity reference as the trail keeps it: `Type/id` or `Type/id/_history/n` of a hosted type (or
/// AuditEvent) with valid ids (R4 datatypes.html#id: `[A-Za-z0-9\-\.]{1,64}`), or an export job.
/// Anything else is refused with a description made of known words only, never of the URL's bytes.
fn entity(reference: &str) -> Result<String, String> {
    if let Some(job) = reference.strip_prefix(EXPORT_JOB) {
        return match is_valid_id(job) {
            true => Ok(reference.to_string()),
            false => Err("an export job with an invalid id".into()),
        };
    }
    let mut parts = reference.split('/');
    let type_name = parts.next().unwrap_or_default();
    let known = ResourceType::parse(type_name)
        .map(|t| t.as_str())
        .or_else(|| (type_name == "AuditEvent").then_some("AuditEvent"));
    let Some(known) = known else {
        return Err("a resource of a type this server does not host".into());
    };
    let valid = match parts.collect::<Vec<_>>().as_slice() {
        [id] => is_valid_id(id),
        [id, "_history", version] => is_valid_id(id) && is_valid_id(version),
        _ => false,
    };
    match valid {
        true => Ok(reference.to_string()),
        false => Err(format!("{known} with an invalid id or version")),
    }
}

impl AuditRecord {
    /// The event as it is stored: its facts (see [`Stored`]) and its searchable values. Every value
    /// from the request (URL, query, headers, token claims) is checked or cleaned here, the one way
    /// into the trail's tables, so that no request can make the trail's insert fail.
    pub fn to_row(&self) -> AuditRow {
        // Time-ordered ids: each insert lands at the end of the id index instead of on a random page.
        let id = uuid::Uuid::now_v7().to_string();
        let mut unnamed = Vec::new();
        let mut entities = Vec::new();
        for e in &self.entities {
            match entity(e) {
                Ok(reference) => entities.push(reference),
                Err(description) => unnamed.push(description),
            }
        }
        let mut patients = self.patients.clone();
        // A Patient acted on is a patient the event concerns, whatever came of the request (a
        // refused update, a read of her history): `AuditEvent?patient=` finds it.
        patients.extend(entities.iter().filter_map(|e| {
            let id = e.strip_prefix("Patient/")?;
            Some(id.split('/').next().unwrap_or(id).to_string())
        }));
        if let Some((rt, body)) = &self.resource {
            if let Ok(value) = serde_json::from_str::<Value>(body) {
                patients.extend(compartment::patients_of(*rt, &value));
            }
        }
        if let Some(p) = self.principal.as_ref().and_then(|p| p.patient.clone()) {
            patients.push(p);
        }
        patients.sort();
        patients.dedup();
        let invalid_patients = patients.iter().filter(|p| !is_valid_id(p)).count();
        patients.retain(|p| is_valid_id(p));
        if invalid_patients > 0 {
            unnamed.push("Patient with an invalid id".into());
        }
        unnamed.sort();
        unnamed.dedup();

        let who = self.principal.as_ref().map(|p| Who {
            issuer: clean(&p.issuer, TEXT_MAX),
            subject: p.subject.as_deref().map(|s| clean(s, TEXT_MAX)),
            fhir_user: p.fhir_user.as_deref().map(|u| clean(u, TEXT_MAX)),
            client_id: p.client_id.as_deref().map(|c| clean(c, TEXT_MAX)),
        });
        let mut refs: Vec<(&'static str, String)> = Vec::new();
        // The caller's fhirUser is searchable as it came, or not at all (a cleaned one would not match).
        if let Some(u) = self.principal.as_ref().and_then(|p| p.fhir_user.as_deref()) {
            if clean(u, TEXT_MAX) == u {
                refs.push(("agent", u.to_string()));
            }
        }
        refs.extend(entities.iter().map(|e| ("entity", strip_version(e))));
        refs.extend(patients.iter().map(|p| ("patient", format!("Patient/{p}"))));
        refs.sort();
        refs.dedup();
        let query = self.query.as_ref().map(|(t, q)| {
            let kept = clean(q, QUERY_MAX);
            let length = (kept != *q).then_some(q.len());
            ((t.as_deref().map(|t| clean(t, TEXT_MAX)), kept), length)
        });
        let action = action(&self.interaction);
        let outcome = outcome(self.status);
        let address = self.address.as_deref().map(|a| clean(a, TEXT_MAX));
        let stored = Stored {
            id: id.clone(),
            recorded: self.recorded,
            interaction: clean(&self.interaction, TEXT_MAX),
            operation: self.operation.as_deref().map(|o| clean(o, TEXT_MAX)),
            status: self.status,
            who,
            address: address.clone(),
            entities,
            unnamed,
            patients,
            query_length: query.as_ref().and_then(|(_, n)| *n),
            query: query.map(|(q, _)| q),
            request_id: clean(&self.request_id, TEXT_MAX),
            method: clean(&self.method, TEXT_MAX),
            reduced: false,
        };
        AuditRow {
            id,
            recorded: self.recorded,
            action: action.to_string(),
            subtype: stored.interaction.clone(),
            outcome: outcome.to_string(),
            altid: stored.who.as_ref().and_then(|w| w.subject.clone()),
            client_id: stored.who.as_ref().and_then(|w| w.client_id.clone()),
            address,
            body: serde_json::to_string(&stored).unwrap_or_default(),
            refs,
        }
    }
}

/// The event of `row` in a safe reduced form, for when the store refused the full one: its id, time,
/// action, outcome, interaction, request id and method, marked as reduced, and nothing searchable
/// but those columns. Made only of values this server generated or chose from closed sets.
pub fn reduced(row: &AuditRow) -> AuditRow {
    /// The facts of the full body that the reduced event keeps.
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Facts {
        status: u16,
        request_id: String,
        method: String,
    }
    let facts: Facts = serde_json::from_str(&row.body).unwrap_or_default();
    let status = match facts.status {
        0 => match row.outcome.as_str() {
            "0" => 200,
            "4" => 400,
            _ => 500,
        },
        s => s,
    };
    let interaction = match row.subtype.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') {
        true => clean(&row.subtype, 32),
        false => "operation".to_string(),
    };
    let stored = Stored {
        id: row.id.clone(),
        recorded: row.recorded,
        interaction: interaction.clone(),
        operation: None,
        status,
        who: None,
        address: None,
        entities: Vec::new(),
        unnamed: Vec::new(),
        patients: Vec::new(),
        query: None,
        query_length: None,
        request_id: match facts.request_id.len() <= 64
            && facts
                .request_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            true => facts.request_id,
            false => String::new(),
        },
        method: match facts.method.bytes().all(|b| b.is_ascii_uppercase()) && facts.method.len() <= 16 {
            true => facts.method,
            false => String::new(),
        },
        reduced: true,
    };
    AuditRow {
        id: row.id.clone(),
        recorded: row.recorded,
        action: action(&interaction).to_string(),
        subtype: interaction,
        outcome: outcome(status).to_string(),
        altid: None,
        client_id: None,
        address: None,
        body: serde_json::to_string(&stored).unwrap_or_default(),
        refs: Vec::new(),
    }
}

/// What the trail keeps of an event: the facts, about a fifth of the AuditEvent they make. The
/// AuditEvent is built from them each time it is served ([`render`]); the trail is written on every
/// request and read rarely, so the bytes saved on each write are worth the work on each read
/// (measured: reads by id went from 9,600 to 11,400 req/s on SQLite with the audit row's size alone).
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    id: String,
    recorded: i64,
    interaction: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    operation: Option<String>,
    status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    who: Option<Who>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    address: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    entities: Vec<String>,
    /// What the request named that is no valid reference, described in known words (see [`entity`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    unnamed: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    patients: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    query: Option<(Option<String>, String)>,
    /// The query's length in bytes, when the trail kept only its start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    query_length: Option<usize>,
    request_id: String,
    method: String,
    /// The store refused the full event: only its id, time, interaction, outcome and request are kept.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    reduced: bool,
}

/// The token's identity, as the event names its agents.
#[derive(Debug, Serialize, Deserialize)]
struct Who {
    issuer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fhir_user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_id: Option<String>,
}

/// The AuditEvent resource of a stored event. Events stored whole (before the trail kept only their
/// facts) are served as they are.
pub fn render(stored: &str) -> Result<Value, String> {
    let value: Value = serde_json::from_str(stored).map_err(|e| format!("stored audit event: {e}"))?;
    if value.get("resourceType").is_some() {
        return Ok(value);
    }
    let e: Stored = serde_json::from_value(value).map_err(|e| format!("stored audit event: {e}"))?;
    let recorded = dates::format_instant(e.recorded);
    let mut agents = Vec::new();
    if let Some(p) = &e.who {
        let who = match &p.fhir_user {
            Some(u) => json!({"reference": u}),
            None => json!({"identifier": {"system": p.issuer, "value": p.subject.clone().unwrap_or_default()}}),
        };
        let mut agent = json!({
            "type": {"coding": [{"system": DCM, "code": "110153", "display": "Source Role ID"}]},
            "who": who,
            "requestor": true,
            "policy": [p.issuer.clone()],
        });
        if let Some(sub) = &p.subject {
            agent["altId"] = json!(sub);
        }
        if let Some(address) = &e.address {
            agent["network"] = json!({"address": address, "type": "2"});
        }
        agents.push(agent);
        if let Some(client) = &p.client_id {
            agents.push(json!({
                "type": {"coding": [{"system": DCM, "code": "110150", "display": "Application"}]},
                "who": {"identifier": {"system": "urn:ietf:params:oauth:client-id", "value": client}},
                "requestor": false,
            }));
        }
    } else if e.reduced {
        agents
            .push(json!({"who": {"display": "not recorded (the event was kept in reduced form)"}, "requestor": true}));
    } else {
        // No valid token: the attempt is still recorded, with where it came from.
        let mut agent = json!({"who": {"display": "unauthenticated caller"}, "requestor": true});
        if let Some(address) = &e.address {
            agent["network"] = json!({"address": address, "type": "2"});
        }
        agents.push(agent);
    }

    let mut entities: Vec<Value> = e
        .entities
        .iter()
        .map(|e| json!({"what": {"reference": e}, "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"}}))
        .collect();
    for description in &e.unnamed {
        entities.push(json!({
            "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
            "description": format!("the request named no valid resource: {description}"),
        }));
    }
    for p in &e.patients {
        entities.push(json!({
            "what": {"reference": format!("Patient/{p}")},
            "type": {"system": ENTITY_TYPE, "code": "1", "display": "Person"},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient"},
        }));
    }
    if let Some((res_type, query)) = &e.query {
        let mut q = json!({
            "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "24", "display": "Query"},
            "query": base64::engine::general_purpose::STANDARD.encode(query.as_bytes()),
        });
        if let Some(t) = res_type {
            q["description"] = json!(t);
        }
        if let Some(length) = e.query_length {
            q["detail"] = json!([{"type": "query-length", "valueString": format!("{length} bytes, of which the first {} are kept", query.len())}]);
        }
        entities.push(q);
    }
    if e.reduced {
        entities.push(json!({
            "type": {"system": ENTITY_TYPE, "code": "4", "display": "Other"},
            "description": "reduced record: the store refused this event's full record, so only its id, time, interaction, outcome and request are kept",
        }));
    }
    entities.push(json!({
        "type": {"system": ENTITY_TYPE, "code": "4", "display": "Other"},
        "description": "HTTP request",
        "detail": [
            {"type": "method", "valueString": e.method},
            {"type": "request-id", "valueString": e.request_id},
        ],
    }));

    let mut subtype = vec![
        json!({"system": "http://hl7.org/fhir/restful-interaction", "code": e.interaction, "display": e.interaction}),
    ];
    if let Some(op) = &e.operation {
        subtype.push(json!({"system": "urn:tandem:operation", "code": op}));
    }
    Ok(json!({
        "resourceType": "AuditEvent",
        "id": e.id,
        "meta": {"versionId": "1", "lastUpdated": recorded},
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation"},
        "subtype": subtype,
        "action": action(&e.interaction),
        "recorded": recorded,
        "outcome": outcome(e.status),
        "outcomeDesc": reason(e.status),
        "agent": agents,
        "source": {
            "site": "tandem",
            "observer": {"display": "tandem FHIR server"},
            "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server"}],
        },
        "entity": entities,
    }))
}

/// `Type/id/_history/n` → `Type/id`.
fn strip_version(reference: &str) -> String {
    match reference.split_once("/_history/") {
        Some((base, _)) => base.to_string(),
        None => reference.to_string(),
    }
}

/// The writer's progress, shared with the queue's senders: what readiness and the metrics report.
#[derive(Debug, Default)]
struct Progress {
    /// Events accepted and not yet written (queued, or in the batch being written).
    waiting: AtomicUsize,
    /// When the writer began the batch it has not finished writing (ms since the epoch; 0: none).
    writing_since: AtomicI64,
    /// At shutdown: the time (ms since the epoch) after which events not yet written are given up.
    stop_by: AtomicI64,
}

impl Progress {
    fn stopping(&self) -> bool {
        self.stop_by.load(Ordering::Relaxed) != 0
    }

    fn past_deadline(&self) -> bool {
        let stop_by = self.stop_by.load(Ordering::Relaxed);
        stop_by != 0 && dates::now_millis() >= stop_by
    }

    fn written(&self, n: usize) {
        let _ = self
            .waiting
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| Some(w.saturating_sub(n)));
    }
}

/// The trail's backlog as readiness sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backlog {
    /// Events accepted and not yet written.
    pub waiting: usize,
    /// How many events the queue holds before requests wait for room.
    pub capacity: usize,
    /// How long the writer has been on a batch it has not written (failing, or blocked).
    pub stalled_for: Option<Duration>,
}

impl Backlog {
    /// Why this instance should take no traffic for now, if it should not: its audit queue is over
    /// half full (requests would soon wait for room), or the writer has not written for a while
    /// although events wait (the database refuses or blocks it).
    pub fn not_ready(&self) -> Option<String> {
        if self.waiting > self.capacity / 2 {
            return Some(format!(
                "audit backlog: {} of {} events queued",
                self.waiting, self.capacity
            ));
        }
        match self.stalled_for {
            Some(d) if d >= STALLED && self.waiting > 0 => Some(format!(
                "audit writer stalled: no event written for {} s while {} wait",
                d.as_secs(),
                self.waiting
            )),
            _ => None,
        }
    }
}

/// The queue into the audit writer. Cheap to clone; every clone feeds the same writer.
#[derive(Clone)]
pub struct AuditSink {
    tx: mpsc::SyncSender<Box<AuditRecord>>,
    progress: Arc<Progress>,
}

/// The writer thread, joined at shutdown once the queue is drained (or the wait for it is over).
pub struct AuditWriter {
    progress: Arc<Progress>,
    thread: Option<JoinHandle<()>>,
    indexer: Option<JoinHandle<()>>,
}

/// Where the writer puts events: the [`Store`], or a test double.
pub trait AuditStore {
    /// Appends a batch of events in one transaction: all of them or none.
    fn insert_audit(&self, rows: &[AuditRow]) -> Result<(), Error>;
}

impl AuditStore for Store {
    fn insert_audit(&self, rows: &[AuditRow]) -> Result<(), Error> {
        Store::insert_audit(self, rows)
    }
}

/// Where the indexer moves references: the [`Store`], or a test double.
pub trait AuditIndex {
    /// See [`Store::index_audit_refs`].
    fn index_audit_refs(&self, max_events: usize, after: i64) -> Result<usize, Error>;
    /// See [`Store::oldest_pending_audit_ref`].
    fn oldest_pending_audit_ref(&self, after: i64) -> Result<Option<i64>, Error>;
}

impl AuditIndex for Store {
    fn index_audit_refs(&self, max_events: usize, after: i64) -> Result<usize, Error> {
        Store::index_audit_refs(self, max_events, after)
    }

    fn oldest_pending_audit_ref(&self, after: i64) -> Result<Option<i64>, Error> {
        Store::oldest_pending_audit_ref(self, after)
    }
}

impl AuditSink {
    /// Starts the writer on `store` and returns the queue into it.
    pub fn start(store: Store) -> (AuditSink, AuditWriter) {
        let (tx, rx) = mpsc::sync_channel::<Box<AuditRecord>>(QUEUE_CAPACITY);
        let progress = Arc::new(Progress::default());
        let shared = progress.clone();
        let thread = std::thread::Builder::new()
            .name("tandem-audit".into())
            .spawn({
                let store = store.clone();
                move || write_loop(&store, &rx, &shared)
            })
            .ok();
        if thread.is_none() {
            tracing::error!("the audit writer thread could not start");
        }
        let shared = progress.clone();
        let indexer = std::thread::Builder::new()
            .name("tandem-audit-index".into())
            .spawn(move || index_loop(&store, &shared))
            .ok();
        if indexer.is_none() {
            tracing::error!("the audit indexer thread could not start");
        }
        (
            AuditSink {
                tx,
                progress: progress.clone(),
            },
            AuditWriter {
                progress,
                thread,
                indexer,
            },
        )
    }

    /// Queues one event. Waits (off the async workers) while the queue is full.
    pub async fn record(&self, record: AuditRecord) {
        self.progress.waiting.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(Box::new(record)) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(message)) => {
                let tx = self.tx.clone();
                let sent = actix_web::rt::task::spawn_blocking(move || tx.send(message)).await;
                if !matches!(sent, Ok(Ok(()))) {
                    self.progress.written(1);
                    tracing::error!("the audit writer has stopped; an audit event was not recorded");
                }
            }
            Err(mpsc::TrySendError::Disconnected(_)) => {
                self.progress.written(1);
                tracing::error!("the audit writer has stopped; an audit event was not recorded");
            }
        }
    }

    /// The backlog now.
    pub fn backlog(&self) -> Backlog {
        let since = self.progress.writing_since.load(Ordering::Relaxed);
        Backlog {
            waiting: self.progress.waiting.load(Ordering::Relaxed),
            capacity: QUEUE_CAPACITY,
            stalled_for: (since != 0)
                .then(|| Duration::from_millis(u64::try_from(dates::now_millis() - since).unwrap_or(0))),
        }
    }
}

impl AuditWriter {
    /// Writes every queued event, then stops the writer. A database that is down is waited for at
    /// most [`SHUTDOWN_WAIT`], so a process whose database is gone still exits.
    pub fn finish(mut self) {
        let wait = i64::try_from(SHUTDOWN_WAIT.as_millis()).unwrap_or(i64::MAX);
        self.progress
            .stop_by
            .store(dates::now_millis().saturating_add(wait), Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the audit writer panicked");
            }
        }
        // The indexer stops at its next look, woken for it (references still waiting are moved by
        // the next start's indexer, and found by searches meanwhile).
        if let Some(indexer) = self.indexer.take() {
            indexer.thread().unpark();
            if indexer.join().is_err() {
                tracing::error!("the audit indexer panicked");
            }
        }
    }
}

/// The indexer: every [`INDEX_EVERY`], moves the references waiting in audit_refs_pending into
/// audit_refs, [`INDEX_BATCH`] events per transaction, until fewer than that wait.
fn index_loop<S: AuditIndex>(store: &S, progress: &Progress) {
    // The seq of an event whose references the store refused: left waiting behind (see
    // index_once). Forgotten every INDEX_RETRY_ROUNDS rounds, so that what was left behind (by a
    // passing fault, or rows another replica's indexer had locked) is tried again.
    let mut after = 0;
    let mut rounds = 0u32;
    loop {
        rounds = rounds.wrapping_add(1);
        if rounds.is_multiple_of(INDEX_RETRY_ROUNDS) {
            after = 0;
        }
        let rested = std::time::Instant::now();
        while let Some(left) = INDEX_EVERY.checked_sub(rested.elapsed()).filter(|d| !d.is_zero()) {
            if progress.stopping() {
                return;
            }
            // Woken early by finish().
            std::thread::park_timeout(left);
        }
        while !progress.stopping() {
            match index_once(store, &mut after) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!(cause = %e, "indexing audit references failed; retrying");
                    break;
                }
            }
        }
    }
}

/// One indexing transaction; true when a full batch was moved (more may wait). A batch the store
/// refuses is halved until the one event it refuses is found. That event's references stay in
/// audit_refs_pending, where searches still find them, and the indexer goes on past it — but only
/// once the event after it moves: when that fails too, the database refuses everything (full, read
/// only, a table missing), nothing is skipped, and the indexer tries again at its next round.
fn index_once<S: AuditIndex>(store: &S, after: &mut i64) -> Result<bool, Error> {
    let mut max = INDEX_BATCH;
    loop {
        match store.index_audit_refs(max, *after) {
            Ok(moved) => return Ok(moved == max),
            Err(e @ Error::Unavailable(_)) => return Err(e),
            Err(_) if max > 1 => max /= 2,
            Err(e) => {
                let Some(seq) = store.oldest_pending_audit_ref(*after)? else {
                    return Ok(false);
                };
                if store.index_audit_refs(1, seq).is_err() {
                    return Err(e);
                }
                tracing::error!(cause = %e, seq, "the store refused an audit event's references; they stay in audit_refs_pending");
                *after = seq;
                return Ok(false);
            }
        }
    }
}

fn write_loop<S: AuditStore>(store: &S, rx: &mpsc::Receiver<Box<AuditRecord>>, progress: &Progress) {
    loop {
        let first = match rx.recv_timeout(IDLE_CHECK) {
            Ok(record) => record,
            Err(mpsc::RecvTimeoutError::Timeout) if progress.stopping() => return,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let mut batch = Vec::with_capacity(BATCH);
        batch.push(first.to_row());
        let mut gathered = false;
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(record) => batch.push(record.to_row()),
                Err(_) if gathered || progress.stopping() => break,
                Err(_) => {
                    // The queue is empty: let the batch gather for a moment. While this thread
                    // sleeps, queueing an event costs a request no wake-up of it (an idle receiver
                    // is woken by every send), and one transaction then writes many events.
                    gathered = true;
                    std::thread::sleep(GATHER);
                }
            }
        }
        write_batch(store, batch, progress);
    }
}

/// Part of a batch still to write; `reduced` once its one event is in its reduced form.
struct Chunk {
    rows: Vec<AuditRow>,
    reduced: bool,
}

/// Writes a batch so that no event can stop the trail. The batch is tried a few times (a transient
/// failure); if the store still refuses it, it is split in halves, recursively, so that the events
/// it accepts are written and the one it refuses is isolated, then written in its reduced form
/// ([`reduced`]). Only when even that fails (or the database is unavailable) is the database itself
/// taken to be down: the writer then waits for it with a growing pause, keeping every event, and at
/// shutdown gives up after [`SHUTDOWN_WAIT`].
fn write_batch<S: AuditStore>(store: &S, batch: Vec<AuditRow>, progress: &Progress) {
    progress.writing_since.store(dates::now_millis(), Ordering::Relaxed);
    let mut pending = vec![Chunk {
        rows: batch,
        reduced: false,
    }];
    let mut whole = true;
    let mut pause = RETRY_PAUSE;
    while let Some(chunk) = pending.pop() {
        if progress.past_deadline() {
            let lost = chunk.rows.len() + pending.iter().map(|c| c.rows.len()).sum::<usize>();
            tracing::error!(
                events = lost,
                "audit events lost at shutdown: the database is unavailable"
            );
            progress.written(lost);
            break;
        }
        // The whole batch gets its retries; halves are tried once, a single event twice.
        let attempts = match (whole, chunk.rows.len()) {
            (true, _) => BATCH_ATTEMPTS,
            (false, 1) => 2,
            _ => 1,
        };
        whole = false;
        let Err(e) = insert_with_retries(store, &chunk.rows, attempts) else {
            progress.written(chunk.rows.len());
            pause = RETRY_PAUSE;
            continue;
        };
        let unavailable = matches!(e, Error::Unavailable(_));
        if !unavailable && chunk.rows.len() > 1 {
            let mut first = chunk.rows;
            let second = first.split_off(first.len() / 2);
            pending.push(Chunk {
                rows: second,
                reduced: false,
            });
            pending.push(Chunk {
                rows: first,
                reduced: false,
            });
            continue;
        }
        if !unavailable && !chunk.reduced {
            if let Some(row) = chunk.rows.first() {
                tracing::error!(cause = %e, event = %row.id, "the store refused an audit event; writing it in reduced form");
                pending.push(Chunk {
                    rows: vec![reduced(row)],
                    reduced: true,
                });
            }
            continue;
        }
        // The database itself is unavailable: wait for it, keeping every event.
        let waiting = chunk.rows.len() + pending.iter().map(|c| c.rows.len()).sum::<usize>();
        tracing::error!(cause = %e, events = waiting, "writing audit events failed; retrying");
        pending.push(chunk);
        std::thread::sleep(pause);
        pause = (pause * 2).min(MAX_PAUSE);
    }
    progress.writing_since.store(0, Ordering::Relaxed);
}

/// Inserts `rows`, trying `attempts` times with a short pause between; an unavailable database is
/// reported at once (the caller waits for it).
fn insert_with_retries<S: AuditStore>(store: &S, rows: &[AuditRow], attempts: u32) -> Result<(), Error> {
    let mut pause = Duration::from_millis(20);
    let mut attempt = 1;
    loop {
        match store.insert_audit(rows) {
            Ok(()) => return Ok(()),
            Err(e @ Error::Unavailable(_)) => return Err(e),
            Err(e) if attempt >= attempts => return Err(e),
            Err(_) => {
                attempt += 1;
                std::thread::sleep(pause);
                pause *= 2;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_stored_whole_before_the_compact_form_are_served_as_they_are() {
        let whole = r#"{"resourceType":"AuditEvent","id":"e1","action":"R","outcome":"0"}"#;
        assert_eq!(render(whole).unwrap(), serde_json::from_str::<Value>(whole).unwrap());
        assert!(render("{\"id\": 1}").is_err(), "a body in neither form is refused");
    }

    #[test]
    fn the_stored_form_is_a_fraction_of_the_event() {
        let record = AuditRecord {
            recorded: 0,
            interaction: "read".into(),
            operation: None,
            status: 200,
            principal: None,
            address: Some("127.0.0.1".into()),
            entities: vec!["Appointment/a1".into()],
            query: None,
            resource: None,
            patients: vec!["p1".into()],
            request_id: "r1".into(),
            method: "GET".into(),
        };
        let row = record.to_row();
        let event = render(&row.body).unwrap();
        assert_eq!(event["id"], row.id.as_str());
        assert_eq!(event["entity"][1]["what"]["reference"], "Patient/p1");
        assert!(
            row.body.len() * 3 < event.to_string().len(),
            "{} vs {}",
            row.body.len(),
            event.to_string().len()
        );
    }

    #[test]
    fn actions_follow_the_interaction() {
        assert_eq!(action("create"), "C");
        assert_eq!(action("vread"), "R");
        assert_eq!(action("patch"), "U");
        assert_eq!(action("delete"), "D");
        assert_eq!(action("search-type"), "E");
        assert_eq!(action("operation"), "E");
    }

    #[test]
    fn a_refused_read_records_who_what_and_where() {
        let record = AuditRecord {
            recorded: 0,
            interaction: "read".into(),
            operation: None,
            status: 403,
            principal: Some(Principal {
                assigned: None,
                issuer: "https://idp".into(),
                subject: Some("u1".into()),
                fhir_user: Some("Practitioner/7".into()),
                client_id: Some("app".into()),
                patient: None,
                scopes: vec![],
            }),
            address: Some("10.0.0.1".into()),
            entities: vec!["Appointment/a1".into()],
            query: None,
            resource: Some((
                ResourceType::parse("Appointment").unwrap(),
                r#"{"resourceType":"Appointment","participant":[{"actor":{"reference":"Patient/p1"}}]}"#.into(),
            )),
            patients: vec![],
            request_id: "r1".into(),
            method: "GET".into(),
        };
        let row = record.to_row();
        let body = render(&row.body).unwrap();
        assert_eq!(body["outcome"], "4");
        assert_eq!(body["action"], "R");
        assert_eq!(body["agent"][0]["who"]["reference"], "Practitioner/7");
        assert_eq!(body["agent"][0]["altId"], "u1");
        assert_eq!(body["agent"][0]["network"]["address"], "10.0.0.1");
        assert_eq!(body["agent"][1]["who"]["identifier"]["value"], "app");
        assert!(row.refs.contains(&("patient", "Patient/p1".into())));
        assert!(row.refs.contains(&("entity", "Appointment/a1".into())));
        assert!(row.refs.contains(&("agent", "Practitioner/7".into())));
    }

    fn record(subject: &str, entities: &[&str]) -> AuditRecord {
        AuditRecord {
            recorded: 1_700_000_000_000,
            interaction: "read".into(),
            operation: None,
            status: 200,
            principal: Some(Principal {
                assigned: None,
                issuer: "https://idp".into(),
                subject: Some(subject.into()),
                fhir_user: None,
                client_id: None,
                patient: None,
                scopes: vec![],
            }),
            address: Some("10.0.0.1".into()),
            entities: entities.iter().map(|e| e.to_string()).collect(),
            query: None,
            resource: None,
            patients: vec![],
            request_id: "r1".into(),
            method: "GET".into(),
        }
    }

    #[test]
    fn free_strings_lose_control_characters_and_excess_length() {
        assert_eq!(clean("sam", TEXT_MAX), "sam");
        assert_eq!(clean("a\u{0}b\u{1b}c", TEXT_MAX), "a\\u{0}b\\u{1b}c");
        let long = "é".repeat(5_000);
        let kept = clean(&long, TEXT_MAX);
        assert!(kept.len() <= TEXT_MAX && kept.ends_with('…'), "{}", kept.len());
        assert!(clean(&"\u{0}".repeat(1_000), 64).len() <= 64);
    }

    #[test]
    fn only_valid_references_are_kept_as_references() {
        assert_eq!(entity("Patient/p-1.a"), Ok("Patient/p-1.a".into()));
        assert_eq!(
            entity("Appointment/a1/_history/2"),
            Ok("Appointment/a1/_history/2".into())
        );
        assert_eq!(entity("AuditEvent/e1"), Ok("AuditEvent/e1".into()));
        assert_eq!(entity("$export-status/j1"), Ok("$export-status/j1".into()));
        for bad in [
            "Patient/\u{0}x".to_string(),
            format!("Patient/{}", "a".repeat(5_000)),
            "Patient/a/_history/\u{0}".into(),
            "Patient/a b".into(),
            "Patient/".into(),
            "Patient".into(),
        ] {
            assert_eq!(
                entity(&bad),
                Err("Patient with an invalid id or version".into()),
                "{bad:?}"
            );
        }
        assert_eq!(
            entity("Secret\u{0}Type/1"),
            Err("a resource of a type this server does not host".into())
        );
    }

    #[test]
    fn a_hostile_request_is_recorded_with_nothing_raw_in_any_column() {
        let mut r = record(
            "evil\u{0}sub",
            &[&format!("Patient/\u{0}{}", "x".repeat(5_000)), "Patient/ok"],
        );
        if let Some(p) = r.principal.as_mut() {
            p.fhir_user = Some(format!("Practitioner/{}\u{0}", "y".repeat(3_000)));
            p.client_id = Some("app\u{7}".into());
        }
        r.interaction = "search-type".into();
        r.query = Some((Some("Patient".into()), format!("name=\u{0}{}", "z".repeat(100_000))));
        r.patients = vec!["\u{0}".into(), "p1".into()];
        r.request_id = "r\u{0}".into();
        let row = r.to_row();
        let columns = [
            Some(row.id.as_str()),
            Some(row.action.as_str()),
            Some(row.subtype.as_str()),
            Some(row.outcome.as_str()),
            row.altid.as_deref(),
            row.client_id.as_deref(),
            row.address.as_deref(),
        ];
        for c in columns
            .into_iter()
            .flatten()
            .chain(row.refs.iter().map(|(_, r)| r.as_str()))
        {
            assert!(!c.chars().any(char::is_control) && c.len() <= TEXT_MAX, "{c:?}");
        }
        assert!(
            !row.body.contains('\u{0}') && row.body.len() < 16_000,
            "{}",
            row.body.len()
        );
        assert_eq!(row.altid.as_deref(), Some("evil\\u{0}sub"));
        let mut refs = row.refs.clone();
        refs.sort();
        assert_eq!(
            refs,
            vec![
                ("entity", "Patient/ok".to_string()),
                // The Patient acted on is a patient the event concerns.
                ("patient", "Patient/ok".to_string()),
                ("patient", "Patient/p1".to_string())
            ],
            "the invalid entity, patient and fhirUser are not indexed"
        );
        let event = render(&row.body).unwrap();
        let descriptions: Vec<&str> = event["entity"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["description"].as_str())
            .collect();
        assert!(descriptions.contains(&"the request named no valid resource: Patient with an invalid id or version"));
        assert!(descriptions.contains(&"the request named no valid resource: Patient with an invalid id"));
        let query = event["entity"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e.get("query").is_some())
            .unwrap();
        assert_eq!(query["detail"][0]["type"], "query-length");
    }

    /// A store that refuses every batch holding an event of the subject `refused`, as PostgreSQL
    /// refuses a row it cannot store, and that may be unavailable for its first few calls.
    #[derive(Default)]
    struct Picky {
        unavailable_for: AtomicUsize,
        written: std::sync::Mutex<Vec<AuditRow>>,
        calls: AtomicUsize,
    }

    impl AuditStore for Picky {
        fn insert_audit(&self, rows: &[AuditRow]) -> Result<(), Error> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            let down = self
                .unavailable_for
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok();
            if down {
                return Err(Error::Unavailable("down".into()));
            }
            if rows.iter().any(|r| r.altid.as_deref() == Some("refused")) {
                return Err(Error::Internal("database error Unknown (constraint None)".into()));
            }
            self.written.lock().unwrap().extend(rows.iter().cloned());
            Ok(())
        }
    }

    #[test]
    fn a_refused_event_is_isolated_and_written_reduced_and_the_others_in_full() {
        let store = Picky::default();
        let progress = Progress::default();
        let rows: Vec<AuditRow> = (0..9)
            .map(|i| record(if i == 5 { "refused" } else { "ok" }, &["Patient/p1"]).to_row())
            .collect();
        let refused_id = rows[5].id.clone();
        progress.waiting.store(rows.len(), Ordering::Relaxed);
        write_batch(&store, rows, &progress);
        let written = store.written.lock().unwrap();
        assert_eq!(written.len(), 9, "every event is written");
        let mut ids: Vec<&str> = written.iter().map(|r| r.id.as_str()).collect();
        ids.dedup();
        assert_eq!(ids.len(), 9, "none twice");
        for row in written.iter() {
            let event = render(&row.body).unwrap();
            let is_reduced = event["entity"].as_array().unwrap().iter().any(|e| {
                e["description"]
                    .as_str()
                    .is_some_and(|d| d.starts_with("reduced record"))
            });
            assert_eq!(is_reduced, row.id == refused_id, "{event}");
            if row.id == refused_id {
                assert_eq!(
                    (event["id"].as_str(), event["action"].as_str()),
                    (Some(refused_id.as_str()), Some("R"))
                );
                assert_eq!(event["outcome"], "0");
                assert_eq!(event["subtype"][0]["code"], "read");
                let request = event["entity"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|e| e["description"] == "HTTP request")
                    .unwrap();
                assert_eq!(request["detail"][1]["valueString"], "r1", "its request id");
                assert!(row.refs.is_empty() && row.altid.is_none());
            } else {
                assert_eq!(event["agent"][0]["altId"], "ok");
            }
        }
        assert_eq!(progress.waiting.load(Ordering::Relaxed), 0);
        assert_eq!(progress.writing_since.load(Ordering::Relaxed), 0);
        assert!(
            store.calls.load(Ordering::Relaxed) < 20,
            "isolation takes a few inserts"
        );
    }

    /// References waiting by seq; `poison` are refused; `down` refuses everything.
    struct Pending {
        waiting: std::sync::Mutex<Vec<i64>>,
        poison: Vec<i64>,
        down: bool,
    }

    impl AuditIndex for Pending {
        fn index_audit_refs(&self, max_events: usize, after: i64) -> Result<usize, Error> {
            let mut waiting = self.waiting.lock().unwrap();
            let batch: Vec<i64> = waiting
                .iter()
                .copied()
                .filter(|s| *s > after)
                .take(max_events)
                .collect();
            if self.down || batch.iter().any(|s| self.poison.contains(s)) {
                return Err(Error::Internal("refused".into()));
            }
            waiting.retain(|s| !batch.contains(s));
            Ok(batch.len())
        }

        fn oldest_pending_audit_ref(&self, after: i64) -> Result<Option<i64>, Error> {
            Ok(self.waiting.lock().unwrap().iter().copied().find(|s| *s > after))
        }
    }

    #[test]
    fn one_refused_event_is_left_waiting_and_the_others_are_indexed() {
        let store = Pending {
            waiting: std::sync::Mutex::new((1..=50_000).collect()),
            poison: vec![30_000],
            down: false,
        };
        let mut after = 0;
        for _ in 0..10 {
            let _ = index_once(&store, &mut after);
        }
        assert_eq!(*store.waiting.lock().unwrap(), vec![30_000], "every other event moved");
        assert_eq!(after, 30_000);
    }

    #[test]
    fn a_database_that_refuses_everything_skips_nothing() {
        let store = Pending {
            waiting: std::sync::Mutex::new((1..=100).collect()),
            poison: vec![],
            down: true,
        };
        let mut after = 0;
        assert!(index_once(&store, &mut after).is_err());
        assert_eq!(after, 0, "no event is left behind for a fault of the database");
        assert_eq!(store.waiting.lock().unwrap().len(), 100);
    }

    #[test]
    fn an_unavailable_database_is_waited_for_without_reducing_anything() {
        let store = Picky {
            unavailable_for: AtomicUsize::new(3),
            ..Picky::default()
        };
        let progress = Progress::default();
        let rows: Vec<AuditRow> = (0..4).map(|_| record("ok", &[]).to_row()).collect();
        write_batch(&store, rows, &progress);
        let written = store.written.lock().unwrap();
        assert_eq!(written.len(), 4);
        assert!(written.iter().all(|r| !r.body.contains("\"reduced\"")));
    }

    #[test]
    fn at_shutdown_a_database_that_stays_down_is_given_up_on() {
        let store = Picky {
            unavailable_for: AtomicUsize::new(usize::MAX),
            ..Picky::default()
        };
        let progress = Progress::default();
        progress.waiting.store(2, Ordering::Relaxed);
        progress.stop_by.store(dates::now_millis() + 300, Ordering::Relaxed);
        let started = std::time::Instant::now();
        write_batch(&store, (0..2).map(|_| record("ok", &[]).to_row()).collect(), &progress);
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(store.written.lock().unwrap().is_empty());
        assert_eq!(
            progress.waiting.load(Ordering::Relaxed),
            0,
            "the lost events are no longer waiting"
        );
    }

    #[test]
    fn readiness_fails_on_a_full_queue_or_a_stalled_writer_with_events_waiting() {
        let backlog = |waiting, stalled: Option<u64>| Backlog {
            waiting,
            capacity: 100,
            stalled_for: stalled.map(Duration::from_secs),
        };
        assert_eq!(backlog(10, None).not_ready(), None);
        assert_eq!(backlog(10, Some(1)).not_ready(), None, "a batch being written");
        assert!(backlog(51, None).not_ready().unwrap().contains("51 of 100"));
        assert!(backlog(3, Some(6)).not_ready().unwrap().contains("stalled"));
        assert_eq!(backlog(0, Some(6)).not_ready(), None);
    }
}
