use std::path::PathBuf;

use clap::Parser;
use diesel::{Connection, PgConnection, RunQueryDsl};
use serde_json::Value;
use tandem::{Application, Config};

pub const DEFAULT_TEST_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
pub const FHIR_JSON: &str = "application/fhir+json";
pub const FHIR_XML: &str = "application/fhir+xml";

/// Runs each test body once per backend: `mod name { fn sqlite(); fn postgres(); }`.
#[macro_export]
macro_rules! both_backends {
    ($(async fn $name:ident($app:ident: TestApp) $body:block)*) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;
                async fn run($app: $crate::helpers::TestApp) $body
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    run($crate::helpers::TestApp::spawn($crate::helpers::Backend::Sqlite).await).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    run($crate::helpers::TestApp::spawn($crate::helpers::Backend::Postgres).await).await
                }
            }
        )*
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    config: Config,
}

/// A database of its own for one test: a SQLite file in a temporary directory, or a fresh
/// PostgreSQL schema (dropped when the test ends).
pub struct TestDb {
    pub url: String,
    /// The server's data directory (its local signing key lives there).
    pub dir: tempfile::TempDir,
    pg_schema: Option<(String, String)>,
}

impl TestDb {
    pub fn new(backend: Backend) -> TestDb {
        let dir = tempfile::tempdir().expect("temporary directory");
        match backend {
            Backend::Sqlite => {
                let path: PathBuf = dir.path().join("tandem.db");
                TestDb {
                    url: format!("sqlite://{}", path.display()),
                    dir,
                    pg_schema: None,
                }
            }
            Backend::Postgres => {
                let base =
                    std::env::var("TANDEM_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_TEST_DATABASE_URL.to_string());
                let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
                let mut conn = PgConnection::establish(&base).unwrap_or_else(|e| {
                    panic!("PostgreSQL is required for the postgres tests and is not reachable at {base}: {e}. Set TANDEM_TEST_DATABASE_URL.")
                });
                diesel::sql_query(format!("CREATE SCHEMA {schema}"))
                    .execute(&mut conn)
                    .expect("create test schema");
                let sep = if base.contains('?') { '&' } else { '?' };
                let url = format!("{base}{sep}options=-csearch_path%3D{schema}");
                TestDb {
                    url,
                    dir,
                    pg_schema: Some((base, schema)),
                }
            }
        }
    }
}

impl TestDb {
    /// The audit trail's database as the server derives it (Config::audit_url): for SQLite the
    /// `-audit.db` file beside the main one, for PostgreSQL the same schema.
    pub fn audit_url(&self) -> String {
        match self.url.strip_suffix(".db") {
            Some(stem) if self.pg_schema.is_none() => format!("{stem}-audit.db"),
            _ => self.url.clone(),
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((base, schema)) = &self.pg_schema {
            if let Ok(mut conn) = PgConnection::establish(base) {
                let _ = diesel::sql_query(format!("DROP SCHEMA {schema} CASCADE")).execute(&mut conn);
            }
        }
    }
}

pub fn test_config(db: &TestDb) -> Config {
    let mut config = Cli::parse_from(["tandem"]).config;
    config.listen = "127.0.0.1:0".into();
    config.database_url = db.url.clone();
    config.data_dir = db.dir.path().to_path_buf();
    config.db_pool_size = 4;
    config.workers = Some(2);
    config.base_url = None;
    // A test's server is stopped when its TestApp is dropped (StopOnDrop): in-flight requests get
    // this long, not 30 s.
    config.shutdown_grace_seconds = 1;
    config
}

/// Stops a test's server when the TestApp holding it is dropped, and waits until its thread has
/// ended, so that its workers, background threads and database connections end with the test.
/// (Left to a dropped runtime, actix's workers kept their pools open for the rest of the run, and
/// the suite reached PostgreSQL's 100 connections. Left to stop on its own, the last tests' servers
/// were still closing TLS connections to PostgreSQL while the test process exited, and OpenSSL's
/// exit handler freed what they were using: a SIGSEGV after every test had passed.)
pub struct StopOnDrop {
    handle: actix_web::dev::ServerHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        // The command is sent when stop is called; the server's own thread carries it out, and
        // its end is what is waited for.
        drop(self.handle.stop(false));
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() && !std::thread::panicking() {
                panic!("the test server's thread panicked");
            }
        }
    }
}

pub struct TestApp {
    // First, so that it is dropped first: the server stops before its database is dropped.
    _stop_on_drop: StopOnDrop,
    pub address: String,
    /// A client that sends a `system/*.cruds` token with every request.
    pub client: reqwest::Client,
    /// A client that sends no token.
    pub anonymous: reqwest::Client,
    pub backend: Backend,
    pub handle: actix_web::dev::ServerHandle,
    pub db: TestDb,
    pub config: Config,
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> TestApp {
        let db = TestDb::new(backend);
        TestApp::spawn_on(backend, db).await
    }

    /// Starts a server with some settings changed.
    pub async fn spawn_configured(backend: Backend, configure: impl FnOnce(&mut Config)) -> TestApp {
        let db = TestDb::new(backend);
        let mut config = test_config(&db);
        configure(&mut config);
        TestApp::start(backend, db, config).await
    }

    /// Starts a server on a given test database with some settings changed.
    pub async fn spawn_configured_on(backend: Backend, db: TestDb, configure: impl FnOnce(&mut Config)) -> TestApp {
        let mut config = test_config(&db);
        configure(&mut config);
        TestApp::start(backend, db, config).await
    }

    /// Starts a server on an existing test database (used to restart on the same data).
    pub async fn spawn_on(backend: Backend, db: TestDb) -> TestApp {
        let config = test_config(&db);
        TestApp::start(backend, db, config).await
    }

    async fn start(backend: Backend, db: TestDb, config: Config) -> TestApp {
        // The server runs on a thread of its own, so that it outlives no test: dropping the TestApp
        // stops it there, and the thread ends with it.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let built = config.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the test server");
            runtime.block_on(async move {
                let app = Application::build(built).expect("application starts");
                let _ = tx.send((app.port(), app.handle()));
                let _ = app.run_until_stopped().await;
            });
        });
        let (port, handle) = rx.await.expect("application starts");
        let address = format!("http://127.0.0.1:{port}");
        let mut test_app = TestApp {
            address,
            client: reqwest::Client::new(),
            anonymous: reqwest::Client::new(),
            backend,
            _stop_on_drop: StopOnDrop {
                handle: handle.clone(),
                thread: Some(thread),
            },
            handle,
            db,
            config,
        };
        // With the local key, the default client carries a full token; servers configured with other
        // keys get tokens from their test's own issuer.
        if let Ok(token) = tandem::auth::token::mint(&test_app.config, "system/*.cruds", None, "test-user", None, 600) {
            test_app.client = bearer_client(&token);
        }
        test_app
    }

    /// A token signed by this server's local key.
    pub fn token(&self, scope: &str, patient: Option<&str>) -> String {
        tandem::auth::token::mint(&self.config, scope, patient.map(str::to_string), "test-user", None, 600)
            .expect("mint a token")
    }

    /// A client that sends a token with these scopes (and patient) with every request.
    pub fn client_with(&self, scope: &str, patient: Option<&str>) -> reqwest::Client {
        bearer_client(&self.token(scope, patient))
    }

    /// Stops the server and hands back its database.
    pub async fn stop(self) -> TestDb {
        self.handle.stop(true).await;
        self.db
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.address, path.trim_start_matches('/'))
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.expect("request")
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .header("Content-Type", FHIR_JSON)
            .body(body.to_string())
            .send()
            .await
            .expect("request")
    }

    /// A POST with no body (an operation whose parameters are all optional).
    pub async fn post(&self, path: &str) -> reqwest::Response {
        self.client.post(self.url(path)).send().await.expect("request")
    }

    pub async fn put_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .put(self.url(path))
            .header("Content-Type", FHIR_JSON)
            .body(body.to_string())
            .send()
            .await
            .expect("request")
    }

    /// A POST of raw bytes with this Content-Type (malformed bodies, other formats).
    pub async fn post_raw(&self, path: &str, content_type: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .header("Content-Type", content_type)
            .body(body)
            .send()
            .await
            .expect("request")
    }

    /// Creates a resource and returns it as stored (with id and meta).
    pub async fn create(&self, body: &Value) -> Value {
        let rt = body["resourceType"].as_str().expect("resourceType");
        let res = self.post_json(rt, body).await;
        assert_eq!(res.status(), 201, "creating a {rt}");
        res.json().await.expect("created resource")
    }

    /// Runs `SELECT COUNT(*) AS n …` directly on the test database (to look at the index tables).
    pub fn count(&self, sql: &str) -> i64 {
        TestApp::count_on(self.backend, &self.db.url, sql)
    }

    /// Runs `SELECT COUNT(*) AS n …` directly on the database at `url` (the audit trail's, say).
    pub fn count_on(backend: Backend, url: &str, sql: &str) -> i64 {
        #[derive(diesel::QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        match backend {
            Backend::Sqlite => {
                let path = url.trim_start_matches("sqlite://");
                let mut conn = diesel::SqliteConnection::establish(path).expect("open the test SQLite file");
                diesel::sql_query(sql)
                    .get_result::<Count>(&mut conn)
                    .expect("count query")
                    .n
            }
            Backend::Postgres => {
                let mut conn = PgConnection::establish(url).expect("connect to the test schema");
                diesel::sql_query(sql)
                    .get_result::<Count>(&mut conn)
                    .expect("count query")
                    .n
            }
        }
    }

    /// Runs SQL statements directly on the test database (bulk data for plan tests).
    pub fn execute(&self, sql: &str) {
        use diesel::connection::SimpleConnection;
        match self.backend {
            Backend::Sqlite => {
                let path = self.db.url.trim_start_matches("sqlite://");
                let mut conn = diesel::SqliteConnection::establish(path).expect("open the test SQLite file");
                conn.batch_execute("PRAGMA busy_timeout = 15000;")
                    .expect("busy timeout");
                conn.batch_execute(sql).expect("statements run");
            }
            Backend::Postgres => {
                let mut conn = PgConnection::establish(&self.db.url).expect("connect to the test schema");
                conn.batch_execute(sql).expect("statements run");
            }
        }
    }

    /// The number of versions stored on the server (system history), to prove nothing was written.
    pub async fn version_count(&self) -> usize {
        let bundle: Value = self
            .get("_history?_count=500")
            .await
            .json()
            .await
            .expect("history bundle");
        bundle["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| !published(e["fullUrl"].as_str().unwrap_or("")))
            .count()
    }
}

/// Whether `url` is one of the resources the server writes when it starts (the Questionnaires of
/// the measures it publishes), which every count of "what the clients wrote" leaves out.
pub fn published(url: &str) -> bool {
    url.ends_with("/Questionnaire/phq-9") || url.ends_with("/Questionnaire/gad-7")
}

/// A client that sends `Authorization: Bearer <token>` with every request.
pub fn bearer_client(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).expect("token header");
    headers.insert(reqwest::header::AUTHORIZATION, value);
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("HTTP client")
}

/// The entries of a Bundle (none when it has no `entry`: FHIR JSON has no empty arrays).
pub fn entries(bundle: &Value) -> Vec<Value> {
    assert_eq!(bundle["resourceType"], "Bundle", "{bundle}");
    bundle["entry"].as_array().cloned().unwrap_or_default()
}

pub async fn json(res: reqwest::Response) -> Value {
    res.json().await.expect("a JSON body")
}

/// Asserts an OperationOutcome error with the given status and issue code.
pub async fn assert_outcome(res: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(res.status().as_u16(), status, "status");
    let ct = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(ct.starts_with(FHIR_JSON), "content type {ct}");
    let body: Value = res.json().await.expect("OperationOutcome body");
    assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
    assert_eq!(body["issue"][0]["severity"], "error", "{body}");
    assert_eq!(body["issue"][0]["code"], code, "{body}");
    assert!(
        body["issue"][0]["diagnostics"].as_str().is_some_and(|d| !d.is_empty()),
        "{body}"
    );
    body
}

pub fn fixture(path: &str) -> String {
    let full = format!("{}/tests/fixtures/r4/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

pub fn patient(family: &str) -> Value {
    serde_json::json!({"resourceType": "Patient", "name": [{"family": family, "given": ["Ann"]}], "gender": "female", "birthDate": "1980-05-17"})
}

/// A `tandem serve` process on a test database (and its data directory, so that the test app's
/// tokens are valid there), killed when dropped. Its stdout (the JSON log) goes to a file.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub address: String,
    pub log: std::path::PathBuf,
}

impl ServerProcess {
    pub async fn start(db: &TestDb, env: &[(&str, &str)]) -> ServerProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = db.dir.path().join(format!("server-{port}.log"));
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"));
        command
            .arg("serve")
            .env("TANDEM_LISTEN", format!("127.0.0.1:{port}"))
            .env("TANDEM_DATABASE_URL", &db.url)
            .env("TANDEM_DATA_DIR", db.dir.path())
            .env("TANDEM_LOG", "warn")
            .env("TANDEM_WORKERS", "2")
            .env("TANDEM_DB_POOL_SIZE", "4")
            .stdout(std::fs::File::create(&log).expect("log file"))
            .stderr(std::process::Stdio::null());
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command.spawn().expect("start tandem serve");
        let server = ServerProcess {
            child,
            address: format!("http://127.0.0.1:{port}"),
            log,
        };
        let client = reqwest::Client::new();
        for _ in 0..400 {
            if client
                .get(format!("{}/healthz", server.address))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                return server;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("tandem serve did not start at {}", server.address);
    }

    /// Sends SIGTERM and waits for the process to exit; returns whether it exited cleanly.
    pub fn terminate(&mut self) -> bool {
        let pid = self.child.id().to_string();
        let sent = std::process::Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {pid}");
        self.child.wait().is_ok_and(|s| s.success())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
