//! Reads by id, gathered: the reads that arrive together are answered together.
//!
//! A read by id was one hand-off to a blocking thread (a thread woken per read) and, on PostgreSQL,
//! one round trip each. The statement itself is the least of it: PostgreSQL answered 18,500–20,400
//! one-row primary-key selects a second on this machine, and 8,000 sixteen-row `= ANY($1)` selects
//! (128,000 rows), with pgbench and prepared statements. So each read is queued here; a gathering
//! thread takes every read waiting (up to [`MOST_AT_ONCE`]), loads their current rows on one pooled
//! connection (PostgreSQL: one statement per resource type; SQLite: the one-id statement per read,
//! with no thread to wake for each) and answers each read on its own channel. Nothing waits for
//! company: a read alone is loaded at once, and reads gather only while the gathering threads are
//! busy. Several threads gather in turn ([`loops`]), so one batch is being loaded while the next
//! gathers. Measured in A/B pairs (benches/results/audit-trail.md): server CPU per read by id
//! −40 to −50% on PostgreSQL and −25 to −35% on SQLite.
//!
//! What each reader may see is decided per read, on the row loaded for it, by the same code as a
//! read of its own (reads::visible_current): a gathered read answers exactly what
//! [`super::Store::read_visible`] would, an unseen resource as one that does not exist.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};

use diesel::prelude::*;

use super::pool::DbPool;
use super::reads::{current_columns, read_visible_in, visible_current, Current};
use super::schema::resources;
use super::{AnyConnection, Version};
use crate::error::Error;
use crate::resources::compartment::Reach;
use crate::resources::ResourceType;

/// The most reads one statement answers.
const MOST_AT_ONCE: usize = 64;
/// Gathering threads: one per core (at least two, so that one batch is loaded while the next
/// gathers, at most eight), and never more than half the pool's connections.
fn loops(pool_size: u32) -> usize {
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    cores.clamp(2, 8).min((pool_size as usize / 2).max(1))
}

/// One read waiting for its answer.
struct Asked {
    rt: ResourceType,
    id: String,
    reach: Reach,
    answer: tokio::sync::oneshot::Sender<Result<Version, Error>>,
}

/// The queue of reads, and the threads that answer them (started at the first read, ended and
/// waited for when the gatherer is dropped with the last clone of its store).
pub(super) struct Gatherer {
    pool: DbPool,
    queue: OnceLock<Option<Queue>>,
}

struct Queue {
    tx: mpsc::Sender<Asked>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for Gatherer {
    /// Closes the queue and waits for the threads (each ends after the batch it is answering), so
    /// that no pooled connection outlives the store on a thread of its own: a process exiting
    /// while such a thread closes a TLS connection to PostgreSQL crashes in OpenSSL's exit handler.
    fn drop(&mut self) {
        if let Some(Some(Queue { tx, threads })) = self.queue.take() {
            drop(tx);
            for thread in threads {
                if thread.join().is_err() {
                    tracing::error!("a read-gathering thread panicked");
                }
            }
        }
    }
}

impl Gatherer {
    pub(super) fn new(pool: DbPool) -> Gatherer {
        Gatherer {
            pool,
            queue: OnceLock::new(),
        }
    }

    /// The queue, its threads started on first use; None if no thread could be started.
    fn queue(&self) -> Option<&mpsc::Sender<Asked>> {
        self.queue
            .get_or_init(|| {
                let (tx, rx) = mpsc::channel::<Asked>();
                let rx = Arc::new(parking_lot::Mutex::new(rx));
                let mut threads = Vec::new();
                for n in 0..loops(self.pool.max_size()) {
                    let (pool, rx) = (self.pool.clone(), rx.clone());
                    let spawned = std::thread::Builder::new()
                        .name(format!("tandem-reads-{n}"))
                        .spawn(move || gather_loop(&pool, &rx));
                    match spawned {
                        Ok(thread) => threads.push(thread),
                        Err(e) => tracing::warn!(cause = %e, "starting a read-gathering thread failed"),
                    }
                }
                (!threads.is_empty()).then_some(Queue { tx, threads })
            })
            .as_ref()
            .map(|queue| &queue.tx)
    }

    /// The current version of `rt/id` for a reader of `reach`, as [`super::Store::read_visible`]
    /// answers it; `id` and `reach` back when the gathering threads are gone (the caller reads on
    /// its own).
    pub(super) fn ask(
        &self,
        rt: ResourceType,
        id: String,
        reach: Reach,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<Version, Error>>, (String, Reach)> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let asked = Asked { rt, id, reach, answer };
        let Some(queue) = self.queue() else {
            return Err((asked.id, asked.reach));
        };
        match queue.send(asked) {
            Ok(()) => Ok(answered),
            Err(mpsc::SendError(asked)) => Err((asked.id, asked.reach)),
        }
    }
}

/// A gathering thread's life: until every sender (the store) is gone.
fn gather_loop(pool: &DbPool, queue: &parking_lot::Mutex<mpsc::Receiver<Asked>>) {
    loop {
        let batch = {
            let queue = queue.lock();
            let Ok(first) = queue.recv() else { return };
            let mut batch = vec![first];
            while batch.len() < MOST_AT_ONCE {
                match queue.try_recv() {
                    Ok(asked) => batch.push(asked),
                    Err(_) => break,
                }
            }
            batch
        };
        // Reads whose request is gone (cut off by its time limit, the client away) are not loaded.
        let batch: Vec<Asked> = batch.into_iter().filter(|a| !a.answer.is_closed()).collect();
        if batch.is_empty() {
            continue;
        }
        // No read can stop the thread: a panic answers the reads of its batch with an error (their
        // senders are dropped) and the thread goes on with the next.
        let answered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| answer(pool, batch)));
        if answered.is_err() {
            tracing::error!("answering a batch of reads failed; its reads were answered with an error");
        }
    }
}

/// Loads and answers one batch.
fn answer(pool: &DbPool, batch: Vec<Asked>) {
    let mut conn = match pool.get() {
        Ok(conn) => conn,
        Err(e) => {
            // Logged once (by the conversion), answered to each read alike.
            let message = Error::from(e).to_string();
            for asked in batch {
                let _ = asked.answer.send(Err(Error::Unavailable(message.clone())));
            }
            return;
        }
    };
    let mut by_type: HashMap<ResourceType, Vec<Asked>> = HashMap::new();
    for asked in batch {
        by_type.entry(asked.rt).or_default().push(asked);
    }
    for (rt, reads) in by_type {
        let ids: Vec<&str> = reads.iter().map(|a| a.id.as_str()).collect();
        match load_rows(&mut conn, rt, &ids) {
            Ok(rows) => {
                for asked in reads {
                    let found = match rows.get(&asked.id) {
                        Some(current) => visible_current(&mut conn, rt, &asked.id, current.clone(), &asked.reach),
                        None => Err(super::reads::not_found(rt, &asked.id)),
                    };
                    let _ = asked.answer.send(found);
                }
            }
            // The statement failed: each read is answered as a read of its own would have been.
            Err(_) => {
                for asked in reads {
                    let _ = asked
                        .answer
                        .send(read_visible_in(&mut conn, rt, &asked.id, &asked.reach));
                }
            }
        }
    }
}

/// The current rows of these `rt` ids, deleted ones included (a read answers them Gone), by id:
/// one statement whose text does not depend on the number of ids (`= ANY($2)`), prepared once
/// per connection.
fn load_rows(
    conn: &mut AnyConnection,
    rt: ResourceType,
    ids: &[&str],
) -> Result<HashMap<String, Current>, diesel::result::Error> {
    let query = resources::table
        .filter(resources::res_type.eq(rt.as_str()))
        .filter(resources::res_id.eq_any(ids))
        .select((resources::res_id, current_columns()));
    let rows: Vec<(String, Current)> = match conn {
        AnyConnection::Postgresql(pg) => query.load(pg)?,
        // SQLite: no round trip to save, and an `IN (?, ?, …)` list would be a new statement text
        // (parsed again) for every count; the one-id statement, prepared once, per id.
        AnyConnection::Sqlite(_) => {
            let mut rows = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(current) = super::reads::load_current(conn, rt, id)? {
                    rows.push((id.to_string(), current));
                }
            }
            rows
        }
    };
    Ok(rows.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::super::WriteAccess;
    use super::*;

    /// The names of this process's threads that gather reads.
    fn gathering_threads() -> usize {
        std::fs::read_dir("/proc/self/task")
            .map(|tasks| {
                tasks
                    .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                    .filter(|name| name.starts_with("tandem-reads"))
                    .count()
            })
            .unwrap_or(0)
    }

    /// More reads at once than one batch holds, the same ids several times, missing and deleted
    /// ones: each answered as a read of its own answers it. The gathering threads end with the store.
    #[test]
    fn reads_asked_together_answer_as_reads_of_their_own() {
        let (store, dir) = super::super::scratch_sqlite("gather", 4);
        let rt = ResourceType::parse("Patient").unwrap();
        let mut ids = Vec::new();
        for n in 0..5 {
            let body = serde_json::json!({"resourceType": "Patient", "name": [{"family": format!("F{n}")}]});
            ids.push(store.create(rt, body, &WriteAccess::full()).unwrap().res_id);
        }
        store
            .run(super::super::Op::Delete {
                label: "test".into(),
                rt,
                target: super::super::Target::Id(ids[4].clone()),
                if_match: None,
                access: WriteAccess::full(),
            })
            .unwrap();
        ids.push("nobody".into());
        let asked: Vec<String> = (0..3 * MOST_AT_ONCE).map(|n| ids[n % ids.len()].clone()).collect();
        let answers: Vec<_> = asked
            .iter()
            .map(|id| {
                store
                    .gatherer
                    .ask(rt, id.clone(), Reach::server())
                    .unwrap_or_else(|_| panic!("the gathering threads are running"))
            })
            .collect();
        // A thread takes its name as it starts.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while gathering_threads() < 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(gathering_threads() >= 2, "the threads started at the first read");
        for (id, answer) in asked.iter().zip(answers) {
            let gathered = answer.blocking_recv().unwrap();
            let own = store.read_visible(rt, id, &Reach::server());
            match (&gathered, &own) {
                (Ok(g), Ok(o)) => {
                    assert_eq!((&g.res_id, g.version_id, &g.body), (&o.res_id, o.version_id, &o.body));
                    assert_eq!(&g.res_id, id);
                }
                (Err(g), Err(o)) => assert_eq!(g.to_string(), o.to_string(), "{id}"),
                _ => panic!("{id}: gathered {gathered:?}, on its own {own:?}"),
            }
        }
        drop(store);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while gathering_threads() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(gathering_threads(), 0, "the gathering threads ended with the store");
        let _ = std::fs::remove_dir_all(dir);
    }
}
