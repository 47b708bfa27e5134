//! Settings: every one can come from the environment (`TANDEM_*`) or from a command-line flag.
//! Validated once at start.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable on a terminal, JSON otherwise.
    Auto,
    Human,
    Json,
}

/// What `user/` scopes reach (TANDEM_USER_ACCESS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UserAccess {
    /// A practitioner's token sees the clinical records (the Patient compartment) of the clients
    /// assigned to its `fhirUser`: an active participant of the client's CareTeam, or of the
    /// CareTeam of a Group the client is an active member of, at the time of the request.
    Assigned,
    /// `user/` scopes reach every record of the types they name.
    All,
}

/// Which interactions the audit trail records (TANDEM_AUDIT_READS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuditReads {
    /// Every interaction: reads, searches and history as well as writes (the default).
    All,
    /// Writes and operations that change data only (create, update, patch, delete, transaction,
    /// batch, POST operations): for a deployment whose gateway or audit repository records reads.
    None,
}

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address and port to listen on.
    #[arg(long, env = "TANDEM_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,

    /// `postgres://…` for PostgreSQL; `sqlite://PATH` (or a bare path) for the embedded SQLite.
    #[arg(long, env = "TANDEM_DATABASE_URL", default_value = "sqlite://data/tandem.db")]
    pub database_url: String,

    /// Where the audit trail is kept: `sqlite://PATH` or `postgres://…`. Default: for a SQLite main
    /// database `X.db`, the file `X-audit.db` beside it (its own log and writer); for PostgreSQL, the
    /// main database (the trail's transactions then skip the wait for a synchronous commit).
    #[arg(long, env = "TANDEM_AUDIT_DATABASE_URL")]
    pub audit_database_url: Option<String>,

    /// Maximum number of database connections in this process's pool.
    #[arg(long, env = "TANDEM_DB_POOL_SIZE", default_value_t = 10)]
    pub db_pool_size: u32,

    /// Log filter (tracing-subscriber EnvFilter syntax), such as `info` or `tandem=debug,info`.
    #[arg(long, env = "TANDEM_LOG", default_value = "info")]
    pub log: String,

    /// Log format.
    #[arg(long, env = "TANDEM_LOG_FORMAT", value_enum, default_value = "auto")]
    pub log_format: LogFormat,

    /// Largest request body accepted, in bytes (after decompression); larger bodies get 413.
    #[arg(long, env = "TANDEM_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Public base URL of the FHIR endpoint (for Location headers, fullUrl and links), such as
    /// `https://fhir.clinic.example/fhir`. Default: taken from each request's Host.
    #[arg(long, env = "TANDEM_BASE_URL")]
    pub base_url: Option<String>,

    /// Default number of entries in a history page (`_count` when absent).
    #[arg(long, env = "TANDEM_DEFAULT_COUNT", default_value_t = 50)]
    pub default_count: u32,

    /// Largest `_count` a client may ask for; larger values are lowered to it.
    #[arg(long, env = "TANDEM_MAX_COUNT", default_value_t = 500)]
    pub max_count: u32,

    /// Canonical base URL of tandem's own extensions, code systems and search parameters.
    #[arg(long, env = "TANDEM_CANONICAL_BASE", default_value = crate::scheduling::DEFAULT_CANONICAL_BASE)]
    pub canonical_base: String,

    /// Require an active group confidentiality agreement (Consent) to book a patient into a group
    /// session.
    #[arg(long, env = "TANDEM_REQUIRE_GROUP_CONSENT", default_value_t = true, action = clap::ArgAction::Set)]
    pub require_group_consent: bool,

    /// Which interactions the audit trail records: `all`, or `none` of the reads (reads, vreads,
    /// searches, history, GET operations), for a deployment whose audit repository records them
    /// elsewhere (a gateway); writes are always recorded.
    #[arg(long, env = "TANDEM_AUDIT_READS", value_enum, default_value = "all")]
    pub audit_reads: AuditReads,

    /// What `user/` scopes reach: `assigned` (a practitioner's assigned clients) or `all`.
    #[arg(long, env = "TANDEM_USER_ACCESS", value_enum, default_value = "assigned")]
    pub user_access: UserAccess,

    /// HTTP worker threads (default: one per core).
    #[arg(long, env = "TANDEM_WORKERS")]
    pub workers: Option<usize>,

    /// Directory for local state: the development signing key (when no key is configured and the
    /// server listens on loopback only).
    #[arg(long, env = "TANDEM_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    /// A JWKS file with the RS256/ES256 public keys that verify bearer tokens (selected by `kid`).
    #[arg(long, env = "TANDEM_AUTH_JWKS_FILE")]
    pub auth_jwks_file: Option<PathBuf>,

    /// A PEM public key (RSA for RS256, P-256 for ES256) that verifies bearer tokens.
    #[arg(long, env = "TANDEM_AUTH_PUBLIC_KEY_FILE")]
    pub auth_public_key_file: Option<PathBuf>,

    /// The issuer (`iss`) tokens must carry. Required with configured keys.
    #[arg(long, env = "TANDEM_AUTH_ISSUER")]
    pub auth_issuer: Option<String>,

    /// The audience (`aud`) tokens must carry, usually this server's base URL. Required with
    /// configured keys.
    #[arg(long, env = "TANDEM_AUTH_AUDIENCE")]
    pub auth_audience: Option<String>,

    /// Accept HS256 tokens signed with the shared secret in TANDEM_AUTH_HS256_SECRET_FILE.
    #[arg(long, env = "TANDEM_AUTH_ALLOW_HS256", default_value_t = false, action = clap::ArgAction::Set)]
    pub auth_allow_hs256: bool,

    /// A file holding the HS256 shared secret (at least 32 bytes); used only with
    /// TANDEM_AUTH_ALLOW_HS256=true.
    #[arg(long, env = "TANDEM_AUTH_HS256_SECRET_FILE")]
    pub auth_hs256_secret_file: Option<PathBuf>,

    /// The authorization server's token endpoint, advertised in /.well-known/smart-configuration.
    #[arg(long, env = "TANDEM_AUTH_TOKEN_ENDPOINT")]
    pub auth_token_endpoint: Option<String>,

    /// The authorization server's authorize endpoint, advertised in /.well-known/smart-configuration.
    #[arg(long, env = "TANDEM_AUTH_AUTHORIZATION_ENDPOINT")]
    pub auth_authorization_endpoint: Option<String>,

    /// Browser origins (`https://app.clinic.example`, comma-separated) allowed to call the API
    /// (CORS). None by default: browser apps on other origins cannot call it.
    #[arg(long, env = "TANDEM_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,

    /// Seconds a client may take to send a request body, and a read-only request may run, before the
    /// server gives up (408 / 503).
    #[arg(long, env = "TANDEM_REQUEST_TIMEOUT_SECONDS", default_value_t = 30)]
    pub request_timeout_seconds: u64,

    /// Most entries in a transaction or batch Bundle; more is 413.
    #[arg(long, env = "TANDEM_MAX_BUNDLE_ENTRIES", default_value_t = 1000)]
    pub max_bundle_entries: usize,

    /// Apply pending migrations when `serve` starts. Off where a separate step migrates (the Helm
    /// chart's migration Job), so that replicas never race to migrate.
    #[arg(long, env = "TANDEM_MIGRATE_ON_START", default_value_t = true, action = clap::ArgAction::Set)]
    pub migrate_on_start: bool,

    /// Hosts a Subscription may send notifications to, comma-separated: `host` (any port) or
    /// `host:port`. Empty: no Subscription can be activated. Guards against server-side request forgery.
    #[arg(
        long,
        env = "TANDEM_SUBSCRIPTION_ALLOWED_HOSTS",
        default_value = "",
        value_delimiter = ','
    )]
    pub subscription_allowed_hosts: Vec<String>,

    /// Run background work in this process: Bulk Data export jobs and Subscription notifications.
    /// Any number of processes may; the database hands each job to one of them.
    #[arg(long, env = "TANDEM_BACKGROUND_WORKERS", default_value_t = true, action = clap::ArgAction::Set)]
    pub background_workers: bool,

    /// Seconds in-flight requests get to finish after SIGTERM before the process exits.
    #[arg(long, env = "TANDEM_SHUTDOWN_GRACE_SECONDS", default_value_t = 30)]
    pub shutdown_grace_seconds: u64,

    /// Most search criteria (and _include/_revinclude) in one search; more is 400 (too-costly).
    #[arg(long, env = "TANDEM_MAX_SEARCH_PARAMS", default_value_t = 32)]
    pub max_search_params: usize,

    /// Most elements in one request body (JSON: each object and primitive value; XML: each element
    /// and attribute), checked before the body is parsed; more is 413. The largest official R4
    /// example holds about 6,000; a Bundle of 1,000 entries of 100 elements each passes.
    #[arg(long, env = "TANDEM_MAX_RESOURCE_ELEMENTS", default_value_t = 100_000)]
    pub max_resource_elements: usize,

    /// Deepest nesting in one request body (JSON objects and arrays, XML elements), at most 128;
    /// deeper is 400 (too-costly). The deepest official R4 example (a QuestionnaireResponse) has 21.
    #[arg(long, env = "TANDEM_MAX_RESOURCE_DEPTH", default_value_t = 64)]
    pub max_resource_depth: usize,

    /// Most operations in one JSON Patch; more is 400 (too-costly).
    #[arg(long, env = "TANDEM_MAX_PATCH_OPERATIONS", default_value_t = 100)]
    pub max_patch_operations: usize,

    /// The proxies (addresses or CIDR ranges, comma-separated) whose `Forwarded` and
    /// `X-Forwarded-*` headers are believed: from them, the host and scheme a client used shape
    /// `Location` and page links, and the client address is audited. From anyone else those headers
    /// are ignored. Unused when TANDEM_BASE_URL is set (links then always use it).
    #[arg(long, env = "TANDEM_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<String>,
}

impl Config {
    /// The CORS allow-list, without the empty entries an unset variable or a stray comma leaves.
    pub fn cors_allowed(&self) -> Vec<String> {
        self.cors_origins
            .iter()
            .filter(|o| !o.trim().is_empty())
            .map(|o| o.trim().to_string())
            .collect()
    }

    /// TANDEM_TRUSTED_PROXIES as networks (an address alone is a network of one).
    pub fn trusted_proxy_nets(&self) -> Result<Vec<ipnet::IpNet>, String> {
        self.trusted_proxies
            .iter()
            .map(|p| p.trim())
            .filter(|p| !p.is_empty())
            .map(|p| {
                p.parse::<ipnet::IpNet>()
                    .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| format!("TANDEM_TRUSTED_PROXIES: '{p}' is not an IP address or CIDR range"))
            })
            .collect()
    }

    /// What one request body may hold.
    pub fn body_limits(&self) -> crate::fhir::Limits {
        crate::fhir::Limits {
            max_elements: self.max_resource_elements,
            max_depth: self.max_resource_depth,
        }
    }

    /// The audit trail's database: TANDEM_AUDIT_DATABASE_URL, else beside the main one (see the
    /// setting). A SQLite URL's query (`?mode=rwc`) stays on the audit file's URL; an in-memory
    /// main database has an in-memory trail.
    pub fn audit_url(&self) -> String {
        if let Some(url) = self.audit_database_url.as_deref().filter(|u| !u.is_empty()) {
            return url.to_string();
        }
        let main = self.database_url.as_str();
        if main.starts_with("postgres://") || main.starts_with("postgresql://") {
            return main.to_string();
        }
        let (scheme, path) = match main.strip_prefix("sqlite://") {
            Some(p) => ("sqlite://", p),
            None => match main.strip_prefix("sqlite:") {
                Some(p) => ("sqlite:", p),
                None => ("", main),
            },
        };
        let (file, query) = match path.split_once('?') {
            Some((f, q)) => (f, format!("?{q}")),
            None => (path, String::new()),
        };
        if file == ":memory:" || file.is_empty() {
            return main.to_string();
        }
        match file.strip_suffix(".db") {
            Some(stem) => format!("{scheme}{stem}-audit.db{query}"),
            None => format!("{scheme}{file}-audit{query}"),
        }
    }

    /// Checks the settings that a typo could make meaningless; the message names the variable.
    pub fn validate(&self) -> Result<(), String> {
        self.listen
            .parse::<SocketAddr>()
            .map_err(|e| format!("TANDEM_LISTEN '{}' is not an address:port ({e})", self.listen))?;
        if let Some(base) = &self.base_url {
            if !(base.starts_with("http://") || base.starts_with("https://")) || base.ends_with('/') {
                return Err(format!(
                    "TANDEM_BASE_URL '{base}' must be an absolute http(s) URL without a trailing slash"
                ));
            }
        }
        if !(self.canonical_base.starts_with("http://") || self.canonical_base.starts_with("https://")) {
            return Err(format!(
                "TANDEM_CANONICAL_BASE '{}' must be an absolute http(s) URL",
                self.canonical_base
            ));
        }
        if self.max_body_bytes == 0 {
            return Err("TANDEM_MAX_BODY_BYTES must be greater than 0".into());
        }
        if self.db_pool_size == 0 {
            return Err("TANDEM_DB_POOL_SIZE must be greater than 0".into());
        }
        for (name, value) in [
            ("TANDEM_AUTH_TOKEN_ENDPOINT", &self.auth_token_endpoint),
            ("TANDEM_AUTH_AUTHORIZATION_ENDPOINT", &self.auth_authorization_endpoint),
        ] {
            if let Some(url) = value {
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    return Err(format!("{name} '{url}' must be an absolute http(s) URL"));
                }
            }
        }
        for origin in self.cors_origins.iter().filter(|o| !o.is_empty()) {
            if !is_origin(origin) {
                return Err(format!(
                    "TANDEM_CORS_ORIGINS: '{origin}' is not an origin (scheme://host[:port], no path; '*' is not allowed)"
                ));
            }
        }
        self.trusted_proxy_nets()?;
        if self.request_timeout_seconds == 0 {
            return Err("TANDEM_REQUEST_TIMEOUT_SECONDS must be greater than 0".into());
        }
        if self.max_bundle_entries == 0 || self.max_search_params == 0 {
            return Err("TANDEM_MAX_BUNDLE_ENTRIES and TANDEM_MAX_SEARCH_PARAMS must be greater than 0".into());
        }
        if self.max_resource_elements == 0 || self.max_patch_operations == 0 {
            return Err("TANDEM_MAX_RESOURCE_ELEMENTS and TANDEM_MAX_PATCH_OPERATIONS must be greater than 0".into());
        }
        if !(1..=crate::fhir::prescan::MAX_DEPTH).contains(&self.max_resource_depth) {
            return Err(format!(
                "TANDEM_MAX_RESOURCE_DEPTH must be between 1 and {}",
                crate::fhir::prescan::MAX_DEPTH
            ));
        }
        if self.default_count == 0 || self.default_count > self.max_count {
            return Err("TANDEM_DEFAULT_COUNT must be between 1 and TANDEM_MAX_COUNT".into());
        }
        Ok(())
    }
}

/// An origin as browsers send it (RFC 6454): `http(s)://host[:port]`, nothing after.
fn is_origin(origin: &str) -> bool {
    let Some(rest) = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
    else {
        return false;
    };
    let (host, port) = rest.rsplit_once(':').map_or((rest, None), |(h, p)| (h, Some(p)));
    !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']'))
        && port.is_none_or(|p| !p.is_empty() && p.parse::<u16>().is_ok())
}

#[cfg(test)]
mod origin_tests {
    use super::is_origin;

    #[test]
    fn cors_origins_are_scheme_host_and_port_only() {
        for ok in [
            "https://app.clinic.example",
            "http://localhost:3000",
            "http://127.0.0.1:8081",
        ] {
            assert!(is_origin(ok), "{ok}");
        }
        for bad in [
            "*",
            "app.clinic.example",
            "https://app.clinic.example/",
            "https://a.example/x",
            "https://a:",
            "ftp://a",
            "https://a:99999",
        ] {
            assert!(!is_origin(bad), "{bad}");
        }
    }
}

#[cfg(test)]
mod audit_url_tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    fn audit_url_of(main: &str, audit: Option<&str>) -> String {
        let mut config = Cli::parse_from(["tandem"]).config;
        config.database_url = main.into();
        config.audit_database_url = audit.map(str::to_string);
        config.audit_url()
    }

    #[test]
    fn the_trail_lives_beside_the_main_database_unless_named() {
        assert_eq!(
            audit_url_of("sqlite://data/tandem.db", None),
            "sqlite://data/tandem-audit.db"
        );
        assert_eq!(audit_url_of("data/clinic", None), "data/clinic-audit");
        assert_eq!(audit_url_of("sqlite:t.db?mode=rwc", None), "sqlite:t-audit.db?mode=rwc");
        assert_eq!(audit_url_of(":memory:", None), ":memory:");
        let pg = "postgres://u@db:5432/tandem?sslmode=require";
        assert_eq!(audit_url_of(pg, None), pg);
        assert_eq!(
            audit_url_of(pg, Some("postgres://u@audit:5432/trail")),
            "postgres://u@audit:5432/trail"
        );
        assert_eq!(audit_url_of("sqlite://a.db", Some("")), "sqlite://a-audit.db");
    }
}
