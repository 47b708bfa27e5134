//! Prometheus metrics (prometheus-client, the Prometheus project's own Rust client), one registry per
//! application, served at `/metrics` in the OpenMetrics text format:
//! - `tandem_http_requests_total{interaction, resource_type, status}`
//! - `tandem_http_request_duration_seconds{interaction, resource_type}` (histogram)
//! - `tandem_bookings_refused_total{reason}`: double-booking, not-a-member, over-capacity,
//!   no-agreement, unknown-group, reserved-time, too-many-participants
//! - `tandem_db_pool_connections{state}` (idle, in_use) and `tandem_db_pool_max_connections`
//! - `tandem_audit_queue_events`: audit events accepted and not yet written
//!
//! Labels take their values from closed sets (hosted types, interactions, status codes), never from
//! the URL, so a client cannot grow the number of series.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub interaction: &'static str,
    pub resource_type: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DurationLabels {
    pub interaction: &'static str,
    pub resource_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub state: &'static str,
}

type HistogramMaker = fn() -> Histogram;

fn latency_histogram() -> Histogram {
    // 0.5 ms to about 16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<DurationLabels, Histogram, HistogramMaker>,
    bookings_refused: Family<ReasonLabels, Counter>,
    pool_connections: Family<PoolLabels, Gauge>,
    pool_max: Gauge,
    audit_queue: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tandem");
        let requests = Family::<RequestLabels, Counter>::default();
        let durations = Family::<DurationLabels, Histogram, HistogramMaker>::new_with_constructor(latency_histogram);
        let bookings_refused = Family::<ReasonLabels, Counter>::default();
        let pool_connections = Family::<PoolLabels, Gauge>::default();
        let pool_max = Gauge::default();
        let audit_queue = Gauge::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by FHIR interaction, resource type and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request, by FHIR interaction and resource type",
            durations.clone(),
        );
        registry.register(
            "bookings_refused",
            "Sessions refused by the scheduling rules, by reason",
            bookings_refused.clone(),
        );
        registry.register(
            "db_pool_connections",
            "Database connections of this process, idle or in use",
            pool_connections.clone(),
        );
        registry.register(
            "db_pool_max_connections",
            "The most database connections this process opens",
            pool_max.clone(),
        );
        registry.register(
            "audit_queue_events",
            "Audit events accepted and not yet written (readiness fails past half the queue)",
            audit_queue.clone(),
        );
        Metrics {
            registry,
            requests,
            durations,
            bookings_refused,
            pool_connections,
            pool_max,
            audit_queue,
        }
    }

    /// Counts one answered request.
    pub fn observe_request(&self, interaction: &'static str, resource_type: &'static str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                interaction,
                resource_type,
                status,
            })
            .inc();
        self.durations
            .get_or_create(&DurationLabels {
                interaction,
                resource_type,
            })
            .observe(seconds);
    }

    pub fn booking_refused(&self, reason: &'static str) {
        self.bookings_refused.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// The audit events waiting to be written, read when the metrics are served.
    pub fn audit_queue(&self, events: usize) {
        self.audit_queue.set(i64::try_from(events).unwrap_or(i64::MAX));
    }

    /// The exposition, with the pool gauges read now: (connections open, idle, maximum).
    pub fn render(&self, pool: (u32, u32, u32)) -> Result<String, std::fmt::Error> {
        let (open, idle, max) = pool;
        self.pool_connections
            .get_or_create(&PoolLabels { state: "idle" })
            .set(i64::from(idle));
        self.pool_connections
            .get_or_create(&PoolLabels { state: "in_use" })
            .set(i64::from(open.saturating_sub(idle)));
        self.pool_max.set(i64::from(max));
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_metric() {
        let m = Metrics::new();
        m.observe_request("read", "Patient", 200, 0.002);
        m.booking_refused("double-booking");
        m.audit_queue(7);
        let text = m.render((4, 1, 10)).unwrap();
        for line in [
            "tandem_http_requests_total{interaction=\"read\",resource_type=\"Patient\",status=\"200\"} 1",
            "tandem_http_request_duration_seconds_count{interaction=\"read\",resource_type=\"Patient\"} 1",
            "tandem_bookings_refused_total{reason=\"double-booking\"} 1",
            "tandem_db_pool_connections{state=\"in_use\"} 3",
            "tandem_db_pool_max_connections 10",
            "tandem_audit_queue_events 7",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
