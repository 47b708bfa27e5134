//! Background threads of a process: the Bulk Data export runner and the Subscription notifier.
//! They hold nothing another replica needs: every job and every pending notification is a row in
//! the database, handed to one process at a time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::store::Store;

/// How often an idle worker looks for work.
const IDLE_POLL: Duration = Duration::from_millis(250);

pub struct Workers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts the workers (none when `enabled` is false).
    pub fn start(store: &Store, enabled: bool, notifier: crate::notifier::Notifier) -> Workers {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        if enabled {
            let owner = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
            let export_store = store.clone();
            threads.extend(spawn("tandem-export", stop.clone(), move |stop| {
                crate::export::run_next(&export_store, &owner, stop)
            }));
            let notify_store = store.clone();
            threads.extend(spawn("tandem-notify", stop.clone(), move |_| {
                notifier.deliver_due(&notify_store)
            }));
        }
        Workers { stop, threads }
    }

    /// Asks the workers to stop and waits for them: an export in progress is put back in the queue at
    /// its next page (another runner starts it over), a notification in flight is finished.
    pub fn stop(mut self) {
        self.wake_to_stop();
        for t in std::mem::take(&mut self.threads) {
            if t.join().is_err() {
                tracing::error!("a background worker panicked");
            }
        }
    }
}

impl Drop for Workers {
    /// An application dropped without stopping (a test's runtime ending) still ends its workers, so
    /// that they let go of the database.
    fn drop(&mut self) {
        self.wake_to_stop();
    }
}

impl Workers {
    /// Tells the workers to stop, and wakes those resting between looks for work.
    fn wake_to_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in &self.threads {
            t.thread().unpark();
        }
    }
}

/// Rests for `how_long`, or until told to stop (woken by [`Workers::stop`]).
fn rest(stop: &AtomicBool, how_long: Duration) {
    let until = Instant::now() + how_long;
    while !stop.load(Ordering::SeqCst) {
        let Some(left) = until.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else {
            return;
        };
        std::thread::park_timeout(left);
    }
}

/// A thread that runs `step` while it finds work, and otherwise waits a little.
fn spawn(
    name: &str,
    stop: Arc<AtomicBool>,
    mut step: impl FnMut(&AtomicBool) -> Result<bool, crate::error::Error> + Send + 'static,
) -> Option<JoinHandle<()>> {
    let thread_name = name.to_string();
    std::thread::Builder::new()
        .name(thread_name.clone())
        .spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match step(&stop) {
                    Ok(true) => continue,
                    Ok(false) => rest(&stop, IDLE_POLL),
                    Err(e) => {
                        tracing::warn!(worker = %thread_name, cause = %e, "background work failed; retrying");
                        rest(&stop, IDLE_POLL * 4);
                    }
                }
            }
        })
        .map_err(|e| tracing::error!(cause = %e, "starting a background worker"))
        .ok()
}
