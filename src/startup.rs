//! Builds the application from a Config: checks the token keys, opens and migrates the database,
//! starts the audit writer, wires the routes and the request middleware, and binds the listener
//! (port 0 picks a free port, for tests).

use std::net::TcpListener;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};

use crate::api::{self, middleware, AppState};
use crate::audit::{AuditSink, AuditWriter};
use crate::auth::token::Verifier;
use crate::config::Config;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::notifier::Notifier;
use crate::resources;
use crate::store::Store;
use crate::worker::Workers;

/// The rules the store enforces, from the configuration.
pub fn rules(config: &Config) -> crate::scheduling::Rules {
    crate::scheduling::Rules {
        canonical: crate::scheduling::Canonical::new(&config.canonical_base),
        require_group_consent: config.require_group_consent,
        subscription_hosts: config
            .subscription_allowed_hosts
            .iter()
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect(),
    }
}

/// Stores the Questionnaires of the measures the server publishes (PHQ-9, GAD-7), where they differ.
pub fn publish(store: &Store) -> Result<(), Error> {
    let written = store.publish_measures()?;
    tracing::info!(written, "measures' Questionnaires published");
    Ok(())
}

/// The audit trail's store (TANDEM_AUDIT_DATABASE_URL): the main store itself when it names the same
/// database, else a small pool of its own (one writer, the rare AuditEvent searches).
pub fn open_audit_store(config: &Config, store: &Store) -> Result<Store, Error> {
    let url = config.audit_url();
    if url == config.database_url {
        return Ok(store.as_audit());
    }
    Store::open_audit(&url, 4, config.request_timeout_seconds * 1000)
}

/// Migrates the audit trail's store and, on SQLite, takes over a trail an earlier version kept in
/// the main file (once: see Store::adopt_audit_trail).
pub fn migrate_audit_store(config: &Config, audit: &Store) -> Result<(), Error> {
    let applied = audit.migrate()?;
    tracing::info!(backend = audit.backend(), applied, "audit store migrated");
    if config.audit_url() != config.database_url {
        if let crate::store::pool::DatabaseUrl::Sqlite(main) =
            crate::store::pool::DatabaseUrl::parse(&config.database_url)
        {
            let copied = audit.adopt_audit_trail(&main)?;
            if copied > 0 {
                tracing::info!(copied, "audit events of the main database copied into the audit store");
            }
        }
    }
    Ok(())
}

pub struct Application {
    port: u16,
    server: Server,
    audit_writer: AuditWriter,
    workers: Workers,
}

impl Application {
    pub fn build(config: Config) -> Result<Application, Error> {
        config.validate().map_err(Error::Invalid)?;
        // Before anything else: a server that could not check tokens must not start.
        let (verifier, _local_key) = Verifier::from_config(&config).map_err(Error::Invalid)?;
        tracing::info!(keys = %verifier.source, issuer = verifier.issuer(), audience = verifier.audience(), "bearer tokens verified");
        resources::params::load();
        let rules = rules(&config);
        let store = Store::open_with_timeout(
            &config.database_url,
            config.db_pool_size,
            config.request_timeout_seconds * 1000,
        )?
        .with_rules(rules);
        if config.migrate_on_start {
            let applied = store.migrate()?;
            tracing::info!(backend = store.backend(), applied, "database migrated");
            publish(&store)?;
        } else if store.ready(Duration::from_secs(2)).unwrap_or(false) {
            publish(&store)?;
        } else {
            // Another step migrates (the chart's migration Job); /readyz answers 503 until it has.
            tracing::info!(
                backend = store.backend(),
                "not migrating at start (TANDEM_MIGRATE_ON_START=false)"
            );
        }
        let audit_store = open_audit_store(&config, &store)?;
        if config.migrate_on_start {
            migrate_audit_store(&config, &audit_store)?;
        }
        let listener = TcpListener::bind(&config.listen)
            .map_err(|e| Error::Internal(format!("binding {}: {e}", config.listen)))?;
        let port = listener
            .local_addr()
            .map_err(|e| Error::Internal(e.to_string()))?
            .port();
        let worker_threads = config.workers;
        let grace = config.shutdown_grace_seconds;
        let request_timeout = Duration::from_secs(config.request_timeout_seconds);
        let (audit, audit_writer) = AuditSink::start(audit_store.clone());
        let workers = Workers::start(
            &store,
            config.background_workers,
            Notifier::new(store.rules().subscription_hosts.clone()),
        );
        let trusted_proxies = config.trusted_proxy_nets().map_err(Error::Invalid)?;
        let state = web::Data::new(AppState {
            trusted_proxies,
            store,
            audit_store,
            config,
            verifier,
            audit,
            metrics: Metrics::new(),
        });
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(web::PathConfig::default().error_handler(api::extractor_error))
                .app_data(web::QueryConfig::default().error_handler(api::extractor_error))
                // The API browser first: /{type} and /{type}/{id} would take its paths.
                .route("/docs", web::get().to(api::docs::browser))
                .route("/docs/{file:.*}", web::get().to(api::docs::browser))
                .configure(api::configure)
                .default_service(web::to(api::not_found))
                // Outermost last: frame (request id, logs, headers) → CORS (answers a preflight with
                // no token, and no audit record: it is no FHIR interaction) → audit → authenticate →
                // errors (a handler's Err rendered as an OperationOutcome) → routes.
                .wrap(from_fn(middleware::errors))
                .wrap(from_fn(middleware::authenticate))
                .wrap(from_fn(middleware::audit))
                .wrap(middleware::cors(&state.config.cors_allowed()))
                .wrap(from_fn(middleware::frame))
        })
        // A client that does not send its request head in time is cut off (slowloris).
        .client_request_timeout(request_timeout.min(Duration::from_secs(10)))
        .client_disconnect_timeout(Duration::from_secs(5))
        // SIGTERM (and SIGINT): stop accepting, let in-flight requests finish for this long, then exit.
        .shutdown_timeout(grace)
        .listen(listener)
        .map_err(|e| Error::Internal(format!("listening: {e}")))?;
        if let Some(n) = worker_threads {
            server = server.workers(n);
        }
        Ok(Application {
            port,
            server: server.run(),
            audit_writer,
            workers,
        })
    }

    /// Stops the server from elsewhere (tests, signal handling).
    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until stopped (SIGTERM, SIGINT or the handle), then stops the background workers and
    /// writes the queued audit events.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = self.server.await;
        let (writer, workers) = (self.audit_writer, self.workers);
        let finished = actix_web::rt::task::spawn_blocking(move || {
            workers.stop();
            writer.finish();
        })
        .await;
        if let Err(e) = finished {
            tracing::error!(cause = %e, "stopping the background work");
        }
        result
    }
}
