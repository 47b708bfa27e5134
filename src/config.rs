//! Settings: every one can come from the environment (`TANDEM_*`) or from a command-line flag.
//! Validated once at start.

use std::net::SocketAddr;

use clap::{Args, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable on a terminal, JSON otherwise.
    Auto,
    Human,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address and port to listen on.
    #[arg(long, env = "TANDEM_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,

    /// `postgres://…` for PostgreSQL; `sqlite://PATH` (or a bare path) for the embedded SQLite.
    #[arg(long, env = "TANDEM_DATABASE_URL", default_value = "sqlite://data/tandem.db")]
    pub database_url: String,

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

    /// HTTP worker threads (default: one per core).
    #[arg(long, env = "TANDEM_WORKERS")]
    pub workers: Option<usize>,
}

impl Config {
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
        if self.default_count == 0 || self.default_count > self.max_count {
            return Err("TANDEM_DEFAULT_COUNT must be between 1 and TANDEM_MAX_COUNT".into());
        }
        Ok(())
    }
}
