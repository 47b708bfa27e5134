//! The notifier: sends the Subscription notifications the store's outbox holds (see
//! crate::subscriptions for the model). It sits above the store and uses it; the store uses only
//! the pure rules of crate::subscriptions, so no import runs back up.

use std::time::Duration;

use crate::error::Error;
use crate::resources::{dates, ResourceType};
use crate::store::{Delivery, Store};
use crate::subscriptions::{allowed, MAX_ATTEMPTS};

/// Notifications claimed at a time by one notifier.
const BATCH: i64 = 20;
/// How long a notifier may take with a claimed notification before another may take it over.
const LEASE_MS: i64 = 60_000;
/// How long one HTTP notification may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends the notifications that are due, from a background thread. Its HTTP client is made on that
/// thread, at first use (a blocking client must not be made or dropped on an async runtime).
pub struct Notifier {
    client: std::cell::OnceCell<Option<reqwest::blocking::Client>>,
    hosts: Vec<String>,
}

impl Notifier {
    pub fn new(hosts: Vec<String>) -> Notifier {
        Notifier {
            client: std::cell::OnceCell::new(),
            hosts,
        }
    }

    fn client(&self) -> Option<&reqwest::blocking::Client> {
        self.client
            .get_or_init(|| {
                reqwest::blocking::Client::builder()
                    .timeout(SEND_TIMEOUT)
                    .redirect(reqwest::redirect::Policy::none())
                    .user_agent(concat!("tandem/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|e| tracing::error!(cause = %e, "the notification HTTP client could not be built"))
                    .ok()
            })
            .as_ref()
    }

    /// Sends a batch of due notifications; true when there were any.
    pub fn deliver_due(&self, store: &Store) -> Result<bool, Error> {
        let now = dates::now_millis();
        let due = store.claim_deliveries(now, LEASE_MS, BATCH)?;
        if due.is_empty() {
            return Ok(false);
        }
        for d in due {
            match self.send(store, &d) {
                Ok(()) => store.delivered(d.id)?,
                Err(why) => {
                    let give_up = d.attempts >= MAX_ATTEMPTS;
                    // 1 s, 2 s, 4 s … at most 5 minutes.
                    let backoff = 1000i64 << d.attempts.clamp(0, 9);
                    tracing::warn!(subscription = %d.sub_id, attempts = d.attempts, give_up, "a notification failed");
                    store.delivery_failed(&d, &why, dates::now_millis() + backoff.min(300_000), give_up)?;
                }
            }
        }
        Ok(true)
    }

    fn send(&self, store: &Store, d: &Delivery) -> Result<(), String> {
        let client = self.client().ok_or("no HTTP client")?;
        // The allowed hosts are checked again at send time: the configuration may have changed.
        if !allowed(&d.endpoint, &self.hosts) {
            return Err(format!("{} is not on an allowed host", d.endpoint));
        }
        let mut request = match &d.payload {
            None => client.post(&d.endpoint),
            Some(_) => {
                let rt = ResourceType::parse(&d.res_type).ok_or("unknown type")?;
                let version = store
                    .vread(rt, &d.res_id, d.version_id)
                    .map_err(|e| format!("reading the changed resource: {e}"))?;
                let url = format!("{}/{}/{}", d.endpoint.trim_end_matches('/'), d.res_type, d.res_id);
                client
                    .put(url)
                    .header("Content-Type", "application/fhir+json")
                    .body(version.body.unwrap_or_default())
            }
        };
        for h in &d.headers {
            if let Some((name, value)) = h.split_once(':') {
                request = request.header(name.trim(), value.trim());
            }
        }
        let response = request.send().map_err(|e| format!("sending: {e}"))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("the endpoint answered {}", response.status()))
        }
    }
}
