//! Bulk Data export (FHIR Bulk Data Access 2.0): the runner that turns a queued job into NDJSON
//! files, in a background thread of any replica (see crate::worker), never in a request worker.
//!
//! A job is taken from the database (store::claim_export), its transactionTime is the watermark at
//! which it starts (every change before it is in the output; later ones may be too), each type is
//! read in id order in pages and cut into files of at most [`FILE_RESOURCES`] resources. The runner
//! beats a heartbeat after each page: a job whose runner stops beating (a crash, a kill) is taken up
//! by another runner after [`STALE_MS`] and starts over; a cancelled job stops at the next beat.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::Error;
use crate::resources::dates;
use crate::store::{ExportJob, Store};

/// Resources per output file.
pub const FILE_RESOURCES: usize = 10_000;
/// Resources read per page.
const PAGE: i64 = 500;
/// A running job whose heartbeat is older than this is taken over.
pub const STALE_MS: i64 = 60_000;
/// How long a finished job's files are kept.
pub const RETENTION_MS: i64 = 24 * 3600 * 1000;

/// Runs the next job there is, if any; true when one was run. When `stop` is raised (the process is
/// shutting down), the job goes back to the queue for another runner.
pub fn run_next(store: &Store, owner: &str, stop: &AtomicBool) -> Result<bool, Error> {
    let now = dates::now_millis();
    if let Err(e) = store.purge_exports(now) {
        tracing::warn!(cause = %e, "removing expired exports");
    }
    let Some(job) = store.claim_export(owner, now - STALE_MS)? else {
        return Ok(false);
    };
    tracing::info!(job = %job.id, level = %job.level, "export started");
    let outcome = run(store, owner, &job, stop);
    let expires = dates::now_millis() + RETENTION_MS;
    match outcome {
        Ok(true) => {
            store.finish_export(&job.id, owner, None, expires)?;
            tracing::info!(job = %job.id, "export completed");
        }
        Ok(false) if stop.load(Ordering::SeqCst) => {
            store.release_export(&job.id, owner)?;
            tracing::info!(job = %job.id, "export put back in the queue: this process is stopping");
        }
        Ok(false) => tracing::info!(job = %job.id, "export stopped: cancelled or taken over"),
        Err(e) => {
            tracing::error!(job = %job.id, cause = %e, "export failed");
            store.finish_export(&job.id, owner, Some("the export failed; ask for it again"), expires)?;
        }
    }
    Ok(true)
}

/// Writes the job's files; false when the job stopped being this runner's.
fn run(store: &Store, owner: &str, job: &ExportJob, stop: &AtomicBool) -> Result<bool, Error> {
    store.set_export_time(&job.id, store.watermark()?)?;
    let mut seq = 0i64;
    for rt in job.type_list() {
        let mut after = String::new();
        let mut buffer = String::new();
        let mut in_file = 0usize;
        let mut total = 0usize;
        loop {
            let page = store.export_page(job, rt, &after, PAGE)?;
            let Some((last, _)) = page.last() else { break };
            after = last.clone();
            for (_, body) in &page {
                buffer.push_str(body);
                buffer.push('\n');
                in_file += 1;
                total += 1;
                if in_file == FILE_RESOURCES {
                    seq += 1;
                    if !store.add_export_file(&job.id, owner, seq, rt, in_file as i64, &buffer)? {
                        return Ok(false);
                    }
                    buffer.clear();
                    in_file = 0;
                }
            }
            if stop.load(Ordering::SeqCst)
                || !store.export_heartbeat(&job.id, owner, &format!("{rt}: {total} resources"))?
            {
                return Ok(false);
            }
        }
        if in_file > 0 {
            seq += 1;
            if !store.add_export_file(&job.id, owner, seq, rt, in_file as i64, &buffer)? {
                return Ok(false);
            }
        }
    }
    Ok(true)
}
