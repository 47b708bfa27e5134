//! The framework's ceiling on this machine: an actix-web server that answers every request with one
//! fixed FHIR JSON body (an Appointment as tandem stores it), with the same worker count as tandem.
//! The load generator's `read` against it is the figure that tandem's reads are stated as a share of.
//!
//!     cargo bench --bench baseline -- [--listen 127.0.0.1:8099]
//!
//! Workers: TANDEM_WORKERS, as for tandem (one per core when unset).

use actix_web::{http::header, web, App, HttpResponse, HttpServer};

const BODY: &str = r#"{"resourceType":"Appointment","id":"bench-ai1","meta":{"versionId":"1","lastUpdated":"2026-11-24T10:00:00.000Z"},"status":"booked","serviceType":[{"text":"individual therapy"}],"start":"2027-01-04T10:00:00Z","end":"2027-01-04T10:50:00Z","participant":[{"actor":{"reference":"Practitioner/bench-pr1"},"status":"accepted"},{"actor":{"reference":"Patient/bench-pa1"},"status":"accepted"}]}"#;

async fn fixed() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "application/fhir+json; charset=utf-8"))
        .insert_header((header::ETAG, "W/\"1\""))
        .body(BODY)
}

fn main() -> std::io::Result<()> {
    let mut listen = "127.0.0.1:8099".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--listen" => listen = args.next().expect("--listen ADDRESS:PORT"),
            "--bench" => {} // passed by cargo bench
            other => panic!("unknown argument {other}"),
        }
    }
    let workers = std::env::var("TANDEM_WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    actix_web::rt::System::new().block_on(async move {
        HttpServer::new(|| App::new().default_service(web::to(fixed)))
            .workers(workers)
            .bind(&listen)?
            .run()
            .await
    })
}
