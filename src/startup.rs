//! Builds the application from a Config: opens and migrates the database, wires the routes and the
//! request middleware, and binds the listener (port 0 picks a free port, for tests).

use std::net::TcpListener;
use std::time::Instant;

use actix_web::dev::{Server, Service};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{web, App, HttpMessage, HttpServer};
use tracing::Instrument;

use crate::api::{self, AppState, RequestId};
use crate::config::Config;
use crate::error::Error;
use crate::resources;
use crate::store::Store;

pub struct Application {
    port: u16,
    server: Server,
}

impl Application {
    pub fn build(config: Config) -> Result<Application, Error> {
        config.validate().map_err(Error::Invalid)?;
        resources::params::load();
        let rules = crate::scheduling::Rules {
            canonical: crate::scheduling::Canonical::new(&config.canonical_base),
            require_group_consent: config.require_group_consent,
        };
        let store = Store::open(&config.database_url, config.db_pool_size)?.with_rules(rules);
        let applied = store.migrate()?;
        tracing::info!(backend = store.backend(), applied, "database ready");
        let listener = TcpListener::bind(&config.listen)
            .map_err(|e| Error::Internal(format!("binding {}: {e}", config.listen)))?;
        let port = listener
            .local_addr()
            .map_err(|e| Error::Internal(e.to_string()))?
            .port();
        let workers = config.workers;
        let state = web::Data::new(AppState { store, config });
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .wrap_fn(|req, srv| {
                    let request_id = api::request_id_from(req.headers().get("x-request-id"));
                    req.extensions_mut().insert(RequestId(request_id.clone()));
                    let method = req.method().to_string();
                    let span = tracing::info_span!("request", request_id = %request_id, method = %method);
                    let started = Instant::now();
                    let fut = srv.call(req);
                    async move {
                        let mut res = fut.await?;
                        // The route pattern (/{type}/{id}), never the path: ids and query values stay out of logs.
                        let route = res.request().match_pattern().unwrap_or_else(|| "unmatched".into());
                        tracing::info!(
                            status = res.status().as_u16(),
                            route = %route,
                            latency_ms = started.elapsed().as_secs_f64() * 1000.0,
                            "request completed"
                        );
                        if let Ok(v) = HeaderValue::from_str(&request_id) {
                            res.headers_mut().insert(HeaderName::from_static("x-request-id"), v);
                        }
                        Ok(res)
                    }
                    .instrument(span)
                })
                .configure(api::configure)
                .default_service(web::to(api::not_found))
        })
        .listen(listener)
        .map_err(|e| Error::Internal(format!("listening: {e}")))?;
        if let Some(n) = workers {
            server = server.workers(n);
        }
        Ok(Application {
            port,
            server: server.run(),
        })
    }

    /// Stops the server from elsewhere (tests, signal handling).
    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}
