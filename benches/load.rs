//! A FHIR REST load generator: it speaks only HTTP to the base URL given on its command line, so the
//! same requests can measure any FHIR R4 server with the same data.
//!
//!     cargo bench --bench load -- --base http://127.0.0.1:8080 --token "$TOKEN" [--concurrency 32] [--seconds 10]
//!
//! It seeds practitioners and patients (with ids of its own, by PUT), then runs each scenario for the
//! given time with that many concurrent clients, and prints one markdown row per scenario:
//! throughput, p50 and p99 latency, and errors. Appointments are given distinct times per therapist
//! and client, so creates never clash; the date search looks at the hours this run booked (so run
//! `create` in the same run as `search`). `--only create,search` runs some scenarios only.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

struct Args {
    base: String,
    /// A bearer token sent with every request (`--token`, or the TANDEM_BENCH_TOKEN variable).
    token: Option<String>,
    /// Scenarios to run (all when empty), by their short names.
    only: Vec<String>,
    /// The first appointment number of this run (see `main`).
    run_offset: u64,
    concurrency: usize,
    seconds: u64,
    practitioners: u64,
    patients: u64,
}

fn args() -> Args {
    let mut a = Args {
        base: String::new(),
        token: std::env::var("TANDEM_BENCH_TOKEN").ok(),
        only: Vec::new(),
        run_offset: 0,
        concurrency: 32,
        seconds: 10,
        practitioners: 200,
        patients: 2_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--base" => a.base = value().trim_end_matches('/').to_string(),
            "--token" => a.token = Some(value()),
            "--concurrency" => a.concurrency = value().parse().expect("--concurrency N"),
            "--seconds" => a.seconds = value().parse().expect("--seconds N"),
            "--practitioners" => a.practitioners = value().parse().expect("--practitioners N"),
            "--patients" => a.patients = value().parse().expect("--patients N"),
            "--only" => a.only = value().split(',').map(str::to_string).collect(),
            "--bench" => {} // passed by cargo bench
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(!a.base.is_empty(), "--base URL is required");
    a
}

const T0: i64 = 1_798_761_600_000; // 2027-01-01T00:00:00Z

fn instant(ms: i64) -> String {
    let secs = ms / 1000;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The i-th appointment: therapist i % P, client i % N, an hour slot that no other appointment of
/// either holds (slot i / P, and i / P differs between two appointments of one client as N is a
/// multiple of P).
fn appointment(i: u64, a: &Args) -> serde_json::Value {
    let start = T0 + (i / a.practitioners) as i64 * 3_600_000;
    json!({"resourceType": "Appointment", "status": "booked",
    "start": instant(start), "end": instant(start + 50 * 60_000),
    "participant": [
        {"actor": {"reference": format!("Practitioner/bench-pr{}", i % a.practitioners)}, "status": "accepted"},
        {"actor": {"reference": format!("Patient/bench-pa{}", i % a.patients)}, "status": "accepted"}
    ]})
}

#[derive(Clone, Copy)]
enum Scenario {
    Create,
    Read,
    Update,
    SearchDateActor,
    SearchInclude,
    Everything,
}

impl Scenario {
    fn short(&self) -> &'static str {
        match self {
            Scenario::Create => "create",
            Scenario::Read => "read",
            Scenario::Update => "update",
            Scenario::SearchDateActor => "search",
            Scenario::SearchInclude => "include",
            Scenario::Everything => "everything",
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Scenario::Create => "create Appointment",
            Scenario::Read => "read Patient by id",
            Scenario::Update => "update Patient",
            Scenario::SearchDateActor => "search Appointment by date range + actor (_count=20)",
            Scenario::SearchInclude => "search Appointment by actor with _include",
            Scenario::Everything => "Patient $everything",
        }
    }
}

async fn request(client: &reqwest::Client, a: &Args, scenario: Scenario, i: u64, created: &AtomicU64) -> bool {
    let h = "application/fhir+json";
    let res = match scenario {
        Scenario::Create => {
            let n = created.fetch_add(1, Ordering::Relaxed);
            client
                .post(format!("{}/Appointment", a.base))
                .header("Content-Type", h)
                .body(appointment(n, a).to_string())
                .send()
                .await
        }
        Scenario::Read => {
            client
                .get(format!("{}/Patient/bench-pa{}", a.base, i % a.patients))
                .send()
                .await
        }
        Scenario::Update => {
            let id = format!("bench-pa{}", i % a.patients);
            let body = json!({"resourceType": "Patient", "id": id, "name": [{"family": format!("Bench{}", i % a.patients), "given": [format!("v{i}")]}]});
            client
                .put(format!("{}/Patient/{id}", a.base))
                .header("Content-Type", h)
                .body(body.to_string())
                .send()
                .await
        }
        Scenario::SearchDateActor => {
            // A 30-day window starting within the first days of this run's appointments.
            let p = i % a.practitioners;
            let first_hour = (a.run_offset / a.practitioners) as i64;
            let from_ms = T0 + (first_hour + (i / a.practitioners % 3) as i64 * 24) * 3_600_000;
            let from = instant(from_ms);
            let to = instant(from_ms + 30 * 86_400_000);
            client
                .get(format!(
                    "{}/Appointment?date=ge{from}&date=lt{to}&actor=Practitioner/bench-pr{p}&_count=20",
                    a.base
                ))
                .send()
                .await
        }
        Scenario::SearchInclude => {
            client
                .get(format!(
                    "{}/Appointment?actor=Patient/bench-pa{}&_include=Appointment:actor&_count=20",
                    a.base,
                    i % a.patients
                ))
                .send()
                .await
        }
        Scenario::Everything => {
            client
                .get(format!("{}/Patient/bench-pa{}/$everything", a.base, i % a.patients))
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

async fn run(client: &reqwest::Client, a: &Arc<Args>, scenario: Scenario, created: &Arc<AtomicU64>) {
    let deadline = Instant::now() + Duration::from_secs(a.seconds);
    let counter = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..a.concurrency {
        let (client, a, counter, created) = (client.clone(), a.clone(), counter.clone(), created.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let i = counter.fetch_add(1, Ordering::Relaxed).wrapping_mul(2_654_435_761) % 1_000_003;
                let started = Instant::now();
                if !request(&client, &a, scenario, i, &created).await {
                    errors += 1;
                }
                latencies.push(started.elapsed());
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for w in workers {
        let (l, e) = w.await.expect("worker");
        all.extend(l);
        errors += e;
    }
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "| {} | {} | {:.0} | {:.2} | {:.2} | {} |",
        scenario.name(),
        all.len(),
        all.len() as f64 / a.seconds as f64,
        pct(0.50),
        pct(0.99),
        errors
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let mut a = args();
    // Each run books new hours (a different offset per run, at most decades ahead), so runs against
    // one database do not clash.
    a.run_offset = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() % 10_000)
        * 10_000;
    let a = Arc::new(a);
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = &a.token {
        let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).expect("a token");
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(a.concurrency)
        .default_headers(headers)
        .build()
        .expect("client");
    // Seed (idempotent PUTs, so a second run reuses the data).
    let h = "application/fhir+json";
    let seed_started = Instant::now();
    let put = |path: String, body: serde_json::Value| {
        let client = client.clone();
        let url = format!("{}/{path}", a.base);
        async move {
            let r = client
                .put(url)
                .header("Content-Type", h)
                .body(body.to_string())
                .send()
                .await
                .expect("seed request");
            assert!(r.status().is_success(), "seeding failed: {}", r.status());
        }
    };
    for chunk in (0..a.practitioners).collect::<Vec<_>>().chunks(32) {
        futures_util::future::join_all(chunk.iter().map(|i| put(format!("Practitioner/bench-pr{i}"), json!({"resourceType": "Practitioner", "id": format!("bench-pr{i}"), "name": [{"family": format!("Therapist{i}")}]})))).await;
    }
    for chunk in (0..a.patients).collect::<Vec<_>>().chunks(32) {
        futures_util::future::join_all(chunk.iter().map(|i| put(format!("Patient/bench-pa{i}"), json!({"resourceType": "Patient", "id": format!("bench-pa{i}"), "name": [{"family": format!("Bench{i}")}]})))).await;
    }
    eprintln!(
        "seeded {} practitioners and {} patients in {:.1}s",
        a.practitioners,
        a.patients,
        seed_started.elapsed().as_secs_f64()
    );

    println!("| scenario | requests | req/s | p50 ms | p99 ms | errors |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let created = Arc::new(AtomicU64::new(a.run_offset));
    for scenario in [
        Scenario::Create,
        Scenario::Read,
        Scenario::Update,
        Scenario::SearchDateActor,
        Scenario::SearchInclude,
        Scenario::Everything,
    ] {
        if a.only.is_empty() || a.only.iter().any(|o| o == scenario.short()) {
            run(&client, &a, scenario, &created).await;
        }
    }
}
