//! What a platform engineer relies on: probes, metrics, migrations run by a separate step, graceful
//! shutdown, and several replicas on one database.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::both_backends;
use crate::helpers::*;

both_backends! {
    async fn readiness_waits_for_migrations_run_by_a_separate_step(app: TestApp) {
        let backend = app.backend;
        drop(app);
        let db = TestDb::new(backend);
        let app = TestApp::spawn_configured_on(backend, db, |c| c.migrate_on_start = false).await;
        assert_eq!(app.anonymous.get(app.url("healthz")).send().await.unwrap().status(), 200);
        let res = app.anonymous.get(app.url("readyz")).send().await.unwrap();
        assert_eq!(res.status(), 503);
        assert_eq!(json(res).await["status"], "migrations pending");
        // `tandem migrate`, as the chart's Job runs it.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
            .arg("migrate")
            .env("TANDEM_DATABASE_URL", &app.db.url)
            .env("TANDEM_LOG", "warn")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(app.anonymous.get(app.url("readyz")).send().await.unwrap().status(), 200);
        assert_eq!(app.put_json("Patient/a", &json!({"resourceType": "Patient", "id": "a"})).await.status(), 201);
    }

    async fn metrics_count_requests_refused_bookings_and_pool_use(app: TestApp) {
        app.put_json("Practitioner/p", &json!({"resourceType": "Practitioner", "id": "p"})).await;
        let session = |start: &str| json!({"resourceType": "Appointment", "status": "booked",
            "start": format!("2026-12-01T{start}:00Z"), "end": format!("2026-12-01T{start}:50Z"),
            "participant": [{"actor": {"reference": "Practitioner/p"}, "status": "accepted"}]});
        assert_eq!(app.post_json("Appointment", &session("10:00")).await.status(), 201);
        assert_eq!(app.post_json("Appointment", &session("10:00")).await.status(), 409);
        app.get("Practitioner/p").await;
        app.get("Practitioner/nope").await;
        let res = app.anonymous.get(app.url("metrics")).send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert!(res.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
        let text = res.text().await.unwrap();
        for line in [
            "tandem_http_requests_total{interaction=\"update\",resource_type=\"Practitioner\",status=\"201\"} 1",
            "tandem_http_requests_total{interaction=\"create\",resource_type=\"Appointment\",status=\"409\"} 1",
            "tandem_http_requests_total{interaction=\"read\",resource_type=\"Practitioner\",status=\"200\"} 1",
            "tandem_http_requests_total{interaction=\"read\",resource_type=\"Practitioner\",status=\"404\"} 1",
            "tandem_bookings_refused_total{reason=\"double-booking\"} 1",
            "tandem_db_pool_max_connections 4",
        ] {
            assert!(text.contains(line), "{line} is missing:\n{text}");
        }
        assert!(text.contains("tandem_http_request_duration_seconds_bucket{le="), "{text}");
        assert!(text.contains("tandem_db_pool_connections{state=\"idle\"}"), "{text}");
        // Label values never come from the URL: an unknown type is not a series of its own.
        app.get("Nonsense/1").await;
        let text = app.anonymous.get(app.url("metrics")).send().await.unwrap().text().await.unwrap();
        assert!(!text.contains("Nonsense"));
    }
}

/// A TCP proxy to PostgreSQL that can be taken down (refusing and cutting every connection) and
/// brought back, to play a database outage.
struct Proxy {
    address: String,
    up: Arc<AtomicBool>,
    generation: Arc<AtomicUsize>,
    /// Connections being relayed now.
    open: Arc<AtomicUsize>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let up = Arc::new(AtomicBool::new(true));
        let generation = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (up2, gen2, open2) = (up.clone(), generation.clone(), open.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !up2.load(Ordering::SeqCst) {
                    let _ = inbound.shutdown().await;
                    continue;
                }
                let target = target.clone();
                let born = gen2.load(Ordering::SeqCst);
                let gen3 = gen2.clone();
                let open3 = open2.clone();
                open3.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&target).await {
                        let copy = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
                        tokio::pin!(copy);
                        // Cut the connection when the proxy goes down (the generation moves on).
                        loop {
                            tokio::select! {
                                _ = &mut copy => break,
                                _ = tokio::time::sleep(Duration::from_millis(20)) => {
                                    if gen3.load(Ordering::SeqCst) != born { break; }
                                }
                            }
                        }
                    }
                    // Both sockets close here, before the count says so.
                    drop(inbound);
                    open3.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Proxy {
            address,
            up,
            generation,
            open,
        }
    }

    /// A proxy in front of the test database's server, and the database's URL through it (the same
    /// URL with the proxy's host and port).
    async fn before(db: &TestDb) -> (Proxy, String) {
        let (prefix, rest) = db.url.split_once('@').expect("a postgres URL with a user");
        let (host, path) = rest.split_once('/').expect("a database path");
        let proxy = Proxy::start(host.to_string()).await;
        let url = format!("{prefix}@{}/{path}", proxy.address);
        (proxy, url)
    }

    /// Cuts every open connection and waits until all are closed; new connections go through again.
    async fn cut(&self) {
        self.down();
        for _ in 0..500 {
            if self.open.load(Ordering::SeqCst) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(self.open.load(Ordering::SeqCst), 0, "the proxy closed every connection");
        self.up();
    }

    fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// /readyz fails while the database is unreachable and recovers when it returns; /healthz stays up.
/// (PostgreSQL: an embedded SQLite file cannot become unreachable.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_database_and_liveness_does_not() {
    let db = TestDb::new(Backend::Postgres);
    let (proxy, via_proxy) = Proxy::before(&db).await;
    let app = TestApp::spawn_configured_on(Backend::Postgres, db, |c| c.database_url = via_proxy).await;
    let probe = |p: &str| {
        let (c, u) = (app.anonymous.clone(), app.url(p));
        async move { c.get(u).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(probe("readyz").await, 200);
    proxy.down();
    tokio::time::sleep(Duration::from_millis(200)).await; // the proxy cuts open connections
    let started = Instant::now();
    assert_eq!(probe("readyz").await, 503);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered within the probe's patience"
    );
    assert_eq!(probe("healthz").await, 200);
    proxy.up();
    let mut ready = false;
    for _ in 0..100 {
        if probe("readyz").await == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "ready again once the database is back");
    assert_eq!(app.get("Patient").await.status(), 200);
}

/// Reads of one patient: `n` at once, or `n` one after the other; the statuses answered.
async fn read_statuses(app: &TestApp, id: &str, n: usize, at_once: bool) -> Vec<u16> {
    let read = || {
        let (c, u) = (app.client.clone(), app.url(&format!("Patient/{id}")));
        async move { c.get(u).send().await.unwrap().status().as_u16() }
    };
    if at_once {
        return futures_util::future::join_all((0..n).map(|_| read())).await;
    }
    let mut statuses = Vec::new();
    for _ in 0..n {
        statuses.push(read().await);
    }
    statuses
}

/// Starts a server on the PostgreSQL test database `db`, reached at `url`, with one patient read by
/// every pooled connection; returns the server and the patient's id.
async fn pooled_app(name: &str, db: TestDb, url: String) -> (TestApp, String) {
    let app = TestApp::spawn_configured_on(Backend::Postgres, db, |c| c.database_url = url).await;
    let created = app.create(&patient(name)).await;
    let id = created["id"].as_str().expect("an id").to_string();
    let warm = read_statuses(&app, &id, 8, true).await;
    assert!(warm.iter().all(|s| *s == 200), "{warm:?}");
    (app, id)
}

/// After connections were lost right after they answered: reads one after the other fail once at
/// most (on the first lost connection used, which makes the pool check every other one).
async fn assert_one_failure_at_most(app: &TestApp, id: &str) {
    let statuses = read_statuses(app, id, 12, false).await;
    let failed = statuses.iter().filter(|s| **s != 200).count();
    assert!(
        failed <= 1,
        "one failure at most, on the first lost connection used: {statuses:?}"
    );
}

/// PostgreSQL connections in the pool that the network cut are found and replaced: a connection is
/// checked on its way out of the pool when it has been idle, or when its last query failed, so
/// requests fail at most once per cut connection, and not at all once they have been idle a while.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_that_were_cut_are_replaced() {
    let db = TestDb::new(Backend::Postgres);
    let (proxy, via_proxy) = Proxy::before(&db).await;
    let (app, id) = pooled_app("Cut", db, via_proxy).await;
    // The network cuts every pooled connection while they are idle.
    proxy.cut().await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let after_idle = read_statuses(&app, &id, 8, true).await;
    assert!(
        after_idle.iter().all(|s| *s == 200),
        "idle cut connections are checked and replaced: {after_idle:?}"
    );
    // Cut again right after they answered: a connection used within the last moment goes out
    // unchecked, so one request may fail on it.
    let warm = read_statuses(&app, &id, 8, true).await;
    assert!(warm.iter().all(|s| *s == 200), "{warm:?}");
    proxy.cut().await;
    assert_one_failure_at_most(&app, &id).await;
}

/// The same when the server ends the connections (a restart, a failover, `pg_terminate_backend`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_ended_by_the_server_are_replaced() {
    let name = format!("tandem_{}", uuid::Uuid::new_v4().simple());
    let db = TestDb::new(Backend::Postgres);
    let url = format!("{}&application_name={name}", db.url);
    let (app, id) = pooled_app("Ended", db, url).await;
    let ended = app.count(&format!(
        "SELECT COUNT(pg_terminate_backend(pid)) AS n FROM pg_stat_activity WHERE application_name = '{name}'"
    ));
    assert!(ended >= 1, "the server's connections were found");
    assert_one_failure_at_most(&app, &id).await;
}

/// Two `tandem serve` processes on one PostgreSQL database share a mixed workload; one gets SIGTERM
/// in the middle of it. Clients that retry refused connections on the other see no 5xx, the request
/// in flight at the signal (a 300-entry transaction) completes, the process exits cleanly, and every
/// acknowledged write is readable from the survivor.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_stopped_mid_load_loses_no_acknowledged_write() {
    let app = TestApp::spawn(Backend::Postgres).await;
    let mut a = ServerProcess::start(&app.db, &[("TANDEM_SHUTDOWN_GRACE_SECONDS", "20")]).await;
    let b = ServerProcess::start(&app.db, &[]).await;
    let servers = [a.address.clone(), b.address.clone()];
    let acknowledged: Arc<Mutex<Vec<(String, i64)>>> = Arc::default();
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Instant::now() + Duration::from_secs(4);

    // The long request in flight when the signal comes.
    let big: Vec<Value> = (0..300)
        .map(|i| json!({"resource": {"resourceType": "Patient", "id": format!("tx-{i}")}, "request": {"method": "PUT", "url": format!("Patient/tx-{i}")}}))
        .collect();
    let tx_client = app.client.clone();
    let tx_url = format!("{}/", a.address);
    let in_flight = tokio::spawn(async move {
        tx_client
            .post(tx_url)
            .header("Content-Type", FHIR_JSON)
            .body(json!({"resourceType": "Bundle", "type": "transaction", "entry": big}).to_string())
            .send()
            .await
    });

    let workers: Vec<_> = (0..8)
        .map(|w| {
            let (client, servers) = (app.client.clone(), servers.clone());
            let (acknowledged, failures) = (acknowledged.clone(), failures.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while Instant::now() < stop {
                    n += 1;
                    let id = format!("w{w}-{n}");
                    let body =
                        json!({"resourceType": "Patient", "id": id, "name": [{"family": format!("F{n}")}]}).to_string();
                    // Writes (idempotent PUTs), reads and searches, spread over both servers; a
                    // request that cannot reach its server is sent to the other.
                    let mut target = (w + n) % 2;
                    let mut attempts = 0;
                    loop {
                        attempts += 1;
                        let base = &servers[target];
                        let res = match n % 3 {
                            0 => client.get(format!("{base}/Patient?name=F1&_count=5")).send().await,
                            _ => {
                                client
                                    .put(format!("{base}/Patient/{id}"))
                                    .header("Content-Type", FHIR_JSON)
                                    .body(body.clone())
                                    .send()
                                    .await
                            }
                        };
                        match res {
                            Ok(r) => {
                                let status = r.status().as_u16();
                                if status >= 500 {
                                    failures.lock().unwrap().push(format!("{status} from {base}"));
                                } else if status == 201 || status == 200 && n % 3 != 0 {
                                    let v: Value = r.json().await.unwrap();
                                    let version: i64 = v["meta"]["versionId"].as_str().unwrap().parse().unwrap();
                                    acknowledged.lock().unwrap().push((id.clone(), version));
                                }
                                break;
                            }
                            Err(e) if attempts < 5 && (e.is_connect() || e.is_request()) => target = 1 - target,
                            Err(e) => {
                                failures.lock().unwrap().push(format!("{base}: {e}"));
                                break;
                            }
                        }
                    }
                }
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(1200)).await;
    let pid = a.child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    for w in workers {
        w.await.unwrap();
    }
    let tx = in_flight
        .await
        .unwrap()
        .expect("the transaction in flight at SIGTERM got its answer");
    assert_eq!(tx.status(), 200, "the transaction in flight completed");
    let exit = a.child.wait().unwrap();
    assert!(exit.success(), "the stopped replica exited cleanly: {exit}");

    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failures: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() > 50,
        "the workload ran ({} writes)",
        acknowledged.len()
    );
    for (id, version) in acknowledged
        .iter()
        .chain([("tx-0".to_string(), 1), ("tx-299".to_string(), 1)].iter())
    {
        let res = app
            .client
            .get(format!("{}/Patient/{id}", b.address))
            .send()
            .await
            .unwrap();
        assert_eq!(
            res.status(),
            200,
            "Patient/{id} written before the stop is readable on the other replica"
        );
        let v: Value = res.json().await.unwrap();
        let stored: i64 = v["meta"]["versionId"].as_str().unwrap().parse().unwrap();
        assert!(
            stored >= *version,
            "Patient/{id}: version {stored} < acknowledged {version}"
        );
    }
}
