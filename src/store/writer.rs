//! SQLite: this process's one writer, and its group commits.
//!
//! Every write of a SQLite store runs on one connection of its own, in turn (see [`Writer`]). A
//! commit costs the turn more than a small write does: the log frames of every page the transaction
//! changed are written out, and the page cache is reset. So the writes that queue for the turn share
//! a transaction: the first opens it, each runs in a savepoint of its own (a write that fails is
//! rolled back to its savepoint alone, and answered at once), and the transaction is committed by
//! the write that finds no other waiting, or that makes the group [`MOST_IN_GROUP`] writes long.
//! A write that leaves the transaction open waits for its commit before it is answered: nothing is
//! answered as written before it is on disk and visible to the readers. A write alone commits at
//! once, as before; writes gather only while others wait for the turn.
//!
//! What each write sees is what the writes before it in the group wrote (one connection, one
//! transaction), as when they committed one by one; their stamps grow in the order they run. When
//! the commit fails, every write of the group is answered with that failure and none of them is
//! stored; when a write panics, its connection and the group's transaction are dropped together, and
//! the other writes of the group are answered 503.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use diesel::connection::{Connection, SimpleConnection, TransactionManager};

use super::{begin_write, pool, retrying, Abort, AnyConnection};
use crate::error::Error;

/// The most writes one transaction holds: it bounds how long the first of them waits for its
/// commit.
const MOST_IN_GROUP: usize = 32;
/// How long a write that left its group open waits before it looks whether the group was left
/// without a committer (its successor gave up waiting for the turn), and commits it itself.
const LOOK_EVERY: Duration = Duration::from_millis(5);
/// The writer's page cache, in KiB: the index pages every write touches (SQLite's default is 2 MiB).
const WRITER_CACHE_KIB: u32 = 16 * 1024;
/// The writer's own automatic checkpoint, in pages of the log: only a safety net, for a log keeper
/// that lags far behind (SQLite's default is 1,000 pages, about 4 MiB).
const WRITER_AUTOCHECKPOINT_PAGES: u32 = 16_384;

/// SQLite: the turn of this process's writers, and the connection they write through.
///
/// One connection for every write keeps its page cache: SQLite empties a connection's cache when
/// another connection wrote since its last transaction, so writes spread over the pool read the
/// same index pages again from the file every time (`pread` and its copies were a tenth of a
/// create's profile). Measured in A/B pairs at 32 connections: 1,403–1,515 µs of server CPU per
/// create against 1,707–1,972 through the pool. It is opened at the first write, apart from the
/// pool (so writes no longer take a connection from the readers), with a larger page cache.
pub(super) struct Writer {
    path: String,
    /// The longest a write waits for its turn: as long as a request waits for a pooled connection
    /// (pool::open_pool decides it).
    wait: Duration,
    /// parking_lot's mutex, for its timed lock (the standard library's has none). A panic while
    /// holding it drops the connection, which rolls its transaction back, and does not poison it.
    turn: parking_lot::Mutex<Turn>,
    /// Writes waiting for the turn: while there are some, the one holding it leaves the
    /// transaction open for them.
    queued: AtomicUsize,
    /// Writes that ran in a transaction another write opened.
    joined: AtomicU64,
}

#[derive(Default)]
pub(super) struct Turn {
    pub(super) conn: Option<AnyConnection>,
    /// The group whose transaction is open on `conn`.
    open: Option<Open>,
    /// The last stamp given, so that stamps grow in the order writes run.
    last_now: i64,
}

struct Open {
    group: Arc<Group>,
    members: usize,
}

/// How a group's transaction ended: Ok when committed; the cause when not.
#[derive(Default)]
struct Group {
    end: parking_lot::Mutex<Option<Result<(), String>>>,
    ended: parking_lot::Condvar,
}

impl Group {
    fn finish(&self, outcome: Result<(), String>) {
        *self.end.lock() = Some(outcome);
        self.ended.notify_all();
    }

    /// The end, when it came within `wait`.
    fn wait_end(&self, wait: Duration) -> Option<Result<(), String>> {
        let mut end = self.end.lock();
        if end.is_none() {
            self.ended.wait_for(&mut end, wait);
        }
        end.clone()
    }
}

impl Writer {
    pub(super) fn new(path: &str, wait: Duration) -> Writer {
        Writer {
            path: path.to_string(),
            wait,
            turn: parking_lot::Mutex::new(Turn::default()),
            queued: AtomicUsize::new(0),
            joined: AtomicU64::new(0),
        }
    }

    /// Waits for this process's turn to write, as long as a request may wait: then the answer is a
    /// 503 to retry, as when it waited for a connection of the pool.
    pub(super) fn turn(&self) -> Result<parking_lot::MutexGuard<'_, Turn>, Error> {
        self.queued.fetch_add(1, Ordering::SeqCst);
        let turn = self.turn.try_lock_for(self.wait);
        self.queued.fetch_sub(1, Ordering::SeqCst);
        turn.ok_or_else(|| Error::Unavailable("the database is busy with other writes; try again".into()))
    }

    fn connect(path: &str) -> Result<AnyConnection, Error> {
        let mut conn =
            pool::connect_sqlite(path).map_err(|e| Error::Internal(format!("opening the sqlite database: {e}")))?;
        // Copying the log into the database is left to the log keeper's passive checkpoints, on
        // another thread, which do not stop the writer: SQLite's automatic checkpoint runs inside
        // the commit that crosses its threshold, on the writer's turn, with its fsyncs.
        // Each write runs in a savepoint, which keeps the original of every page it changes (its
        // sub-journal) to roll back to. SQLite spills that journal to a temporary file past 64 KiB,
        // and a create changes 80-120 KiB of pages: every create opened, wrote and deleted a file
        // in /var/tmp, whose block allocation led the writer's profile. Kept in memory
        // (temp_store), it costs a write's changed pages while the write runs. (SQLite's other
        // knob, a larger SQLITE_CONFIG_STMTJRNL_SPILL, made every savepoint that outgrew it fail
        // with SQLITE_FULL in SQLite 3.50.2: the benchmark's 500-entry Bundles found it, and
        // a_write_that_changes_many_pages_in_its_savepoint_is_stored writes such a savepoint.)
        conn.batch_execute(&format!(
            "PRAGMA cache_size = -{WRITER_CACHE_KIB}; PRAGMA wal_autocheckpoint = {WRITER_AUTOCHECKPOINT_PAGES}; \
             PRAGMA temp_store = MEMORY;"
        ))?;
        Ok(AnyConnection::Sqlite(conn))
    }

    /// Runs `work` in the group's transaction (opened if none is), in a savepoint of its own, and
    /// answers once the transaction is committed (see the module's documentation).
    pub(super) fn write<T>(
        &self,
        mut work: impl FnMut(&mut AnyConnection, i64) -> Result<T, Abort>,
    ) -> Result<T, Error> {
        let mut turn = self.turn()?;
        // Taken out for the write and put back after it: a panic mid-write drops the connection,
        // which rolls its transaction back, and the next writer opens another.
        let mut conn = match turn.conn.take() {
            Some(c) => c,
            None => Writer::connect(&self.path)?,
        };
        if turn.open.is_none() {
            if let Err(e) = begin(&mut conn) {
                // The connection is kept only when it is out of any transaction.
                if rollback(&mut conn) {
                    turn.conn = Some(conn);
                }
                return Err(e);
            }
            turn.open = Some(Open {
                group: Arc::new(Group::default()),
                members: 0,
            });
        } else {
            self.joined.fetch_add(1, Ordering::Relaxed);
        }
        let now = crate::resources::dates::now_millis().max(turn.last_now);
        turn.last_now = now;
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| in_savepoint(&mut conn, now, &mut work)));
        let result = match ran {
            Ok(result) => result,
            Err(panic) => {
                // The group's other writes are told it was not stored, then the connection goes,
                // and the group's transaction with it.
                abandon(&mut turn);
                drop(conn);
                std::panic::resume_unwind(panic);
            }
        };
        let Some(open) = turn.open.as_mut() else {
            return Err(Error::Internal("the writer's transaction is gone".into()));
        };
        open.members += 1;
        let group = open.group.clone();
        // The transaction is still the group's, one level deep, unless the write's savepoint could
        // not be released or rolled back, or the database ended the transaction (a full disk, an
        // I/O error: answered as Internal or Unavailable, while a write's own rules answer 4xx).
        // Then nothing of the group is committed.
        let sound = depth(&mut conn) == Some(1) && !matches!(result, Err(Error::Internal(_) | Error::Unavailable(_)));
        if !sound {
            abandon(&mut turn);
            drop(conn);
            return result.and(Err(Error::Unavailable(format!("{NOT_STORED}; try again"))));
        }
        // A write refused on its own rules was rolled back to its savepoint: the group ends with
        // it, and the commit stores the others.
        let end_now = result.is_err() || open.members >= MOST_IN_GROUP || self.queued.load(Ordering::SeqCst) == 0;
        if end_now {
            let committed = commit(&mut turn, conn, &group);
            drop(turn);
            return committed.and(result);
        }
        turn.conn = Some(conn);
        drop(turn);
        self.wait_for_commit(&group)?;
        result
    }

    /// Waits for the commit of a group this write left open. Normally a write that came after
    /// ends it; when none does (the next write gave up waiting for the turn), this one does.
    fn wait_for_commit(&self, group: &Arc<Group>) -> Result<(), Error> {
        let ended = |end: Result<(), String>| {
            end.map_err(|cause| Error::Unavailable(format!("the write was not stored ({cause}); try again")))
        };
        loop {
            if let Some(end) = group.wait_end(LOOK_EVERY) {
                return ended(end);
            }
            let Some(mut turn) = self.turn.try_lock() else { continue };
            let still_open = turn.open.as_ref().is_some_and(|o| Arc::ptr_eq(&o.group, group));
            // A group is told its end before the turn is let go: one that is no longer open has
            // ended (or was abandoned by a panic while closing its connection: not stored).
            if !still_open {
                return ended(group.wait_end(Duration::ZERO).unwrap_or(Err(NOT_STORED.into())));
            }
            let Some(conn) = turn.conn.take() else {
                abandon(&mut turn);
                return ended(Err(NOT_STORED.into()));
            };
            return commit(&mut turn, conn, group);
        }
    }
}

/// What the writes of a group that was not committed are told.
const NOT_STORED: &str = "the transaction it shared with other writes was not committed";

/// Gives up the open group, if any: its writes are told they were not stored. The caller drops
/// the connection (or has none), and the group's transaction ends with it.
fn abandon(turn: &mut Turn) {
    if let Some(open) = turn.open.take() {
        open.group.finish(Err(NOT_STORED.into()));
    }
}

/// Opens the group's transaction and takes the database's write lock (see begin_write).
fn begin(conn: &mut AnyConnection) -> Result<(), Error> {
    <AnyConnection as Connection>::TransactionManager::begin_transaction(conn)?;
    begin_write(conn)?;
    Ok(())
}

/// The depth of the transactions open on `conn` (None: none, or diesel lost track of them).
fn depth(conn: &mut AnyConnection) -> Option<u32> {
    use diesel::connection::TransactionManagerStatus;
    match <AnyConnection as Connection>::TransactionManager::transaction_manager_status_mut(conn) {
        TransactionManagerStatus::Valid(status) => status.transaction_depth().map(|d| d.get()),
        TransactionManagerStatus::InError => None,
    }
}

/// Commits the open group on `conn`, tells the group how it ended (while the turn is still held),
/// and puts the connection back unless it is left in a transaction it could not end. A failed
/// commit is a 503 for every write of the group, this one included.
fn commit(turn: &mut Turn, mut conn: AnyConnection, group: &Group) -> Result<(), Error> {
    turn.open = None;
    // Only the group's own transaction, one level deep, is committed (at a deeper level diesel's
    // commit would only release a savepoint).
    let committed = match depth(&mut conn) {
        Some(1) => {
            <AnyConnection as Connection>::TransactionManager::commit_transaction(&mut conn).map_err(|e| e.to_string())
        }
        other => Err(format!("the writer's transaction was {other:?} levels deep")),
    };
    match committed {
        Ok(()) if depth(&mut conn).is_none() => {
            group.finish(Ok(()));
            turn.conn = Some(conn);
            Ok(())
        }
        other => {
            let cause = other
                .err()
                .unwrap_or_else(|| "still in a transaction after its commit".into());
            tracing::error!(%cause, "committing a group of SQLite writes failed");
            group.finish(Err(NOT_STORED.into()));
            if rollback(&mut conn) {
                turn.conn = Some(conn);
            }
            Err(Error::Unavailable(format!("{NOT_STORED}; try again")))
        }
    }
}

/// Ends whatever transactions are open on `conn`; false when the connection is in no state to be
/// used again (it is then dropped, and closing it rolls back what is left).
fn rollback(conn: &mut AnyConnection) -> bool {
    for _ in 0..=MOST_IN_GROUP {
        match depth(conn) {
            None => {
                use diesel::connection::TransactionManagerStatus;
                return matches!(
                    <AnyConnection as Connection>::TransactionManager::transaction_manager_status_mut(conn),
                    TransactionManagerStatus::Valid(_)
                );
            }
            Some(_) => {
                if <AnyConnection as Connection>::TransactionManager::rollback_transaction(conn).is_err() {
                    return false;
                }
            }
        }
    }
    false
}

/// One write in a savepoint of the open transaction, again when it lost a race (another process
/// wrote the same id first).
fn in_savepoint<T>(
    conn: &mut AnyConnection,
    now: i64,
    work: &mut impl FnMut(&mut AnyConnection, i64) -> Result<T, Abort>,
) -> Result<T, Error> {
    retrying(|| conn.transaction::<T, Abort, _>(|c| work(c, now)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{scratch_sqlite, Store};
    use diesel::prelude::*;

    fn count(store: &Store) -> i64 {
        let mut c = store.pool.get().unwrap();
        diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
            "(SELECT count(*) FROM write_lock)",
        ))
        .get_result(&mut *c)
        .unwrap()
    }

    /// SQLite writes go through one connection of their own: a write that fails half-way leaves
    /// nothing of itself, and the next write on that connection commits.
    #[test]
    fn a_failed_write_leaves_nothing_and_the_writer_goes_on() {
        let (store, dir) = scratch_sqlite("writer", 2);
        let before = count(&store);
        let insert = |c: &mut AnyConnection| {
            diesel::sql_query("INSERT INTO write_lock (n) VALUES (7)")
                .execute(c)
                .map(|_| ())
        };
        let failed = store.write(|c, _| {
            insert(c)?;
            Err::<(), _>(Abort::Error(Error::Invalid("refused after its first statement".into())))
        });
        assert!(matches!(failed, Err(Error::Invalid(_))));
        assert_eq!(count(&store), before, "the failed write's row was rolled back");
        for _ in 0..3 {
            store.write(|c, _| Ok(insert(c)?)).unwrap();
        }
        assert_eq!(count(&store), before + 3);
        assert!(
            store.sqlite_writer.as_ref().unwrap().turn().unwrap().conn.is_some(),
            "the writer keeps its connection"
        );
        drop(store);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A write whose savepoint changes far more pages than SQLite keeps in memory by default (a
    /// large transaction Bundle) is stored whole, and the writer goes on.
    #[test]
    fn a_write_that_changes_many_pages_in_its_savepoint_is_stored() {
        let (store, dir) = scratch_sqlite("big-savepoint", 2);
        diesel::sql_query("CREATE TABLE wide (n INTEGER PRIMARY KEY, body TEXT NOT NULL)")
            .execute(&mut *store.pool.get().unwrap())
            .unwrap();
        let body = "x".repeat(4000);
        let rows = 6000i64; // 24 MB of pages changed by one write
        store
            .write(|c, _| {
                for n in 0..rows {
                    diesel::sql_query("INSERT INTO wide (n, body) VALUES (?, ?)")
                        .bind::<diesel::sql_types::BigInt, _>(n)
                        .bind::<diesel::sql_types::Text, _>(&body)
                        .execute(c)?;
                }
                // Changed again in the same savepoint: its journal holds the originals.
                diesel::sql_query("UPDATE wide SET body = upper(body)").execute(c)?;
                Ok(())
            })
            .unwrap();
        let stored = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
            "(SELECT count(*) FROM wide WHERE body LIKE 'X%')",
        ))
        .get_result::<i64>(&mut *store.pool.get().unwrap())
        .unwrap();
        assert_eq!(stored, rows);
        store
            .write(|c, _| Ok(diesel::sql_query("DELETE FROM wide WHERE n < 10").execute(c)?))
            .unwrap();
        drop(store);
        let _ = std::fs::remove_dir_all(dir);
    }

    fn stored(store: &Store, n: i64) -> bool {
        let mut c = store.pool.get().unwrap();
        diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(&format!(
            "(SELECT count(*) FROM gathered WHERE n = {n})"
        )))
        .get_result::<i64>(&mut *c)
        .unwrap()
            == 1
    }

    /// Writes that arrive together share transactions: each write answered Ok is stored and already
    /// visible to the readers' connections when it is answered; each write that failed (on its own
    /// rule, after its first statement) left nothing, whatever the writes of its group did; a write
    /// that panics mid-write takes its group's transaction with it, and the writes of that group
    /// are answered as not stored.
    #[test]
    fn writes_gathered_in_one_transaction_are_answered_only_once_committed() {
        let (store, dir) = scratch_sqlite("groups", 4);
        diesel::sql_query("CREATE TABLE gathered (n INTEGER PRIMARY KEY)")
            .execute(&mut *store.pool.get().unwrap())
            .unwrap();
        let store = std::sync::Arc::new(store);
        let answered: Vec<(i64, Result<(), String>)> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..8i64)
                .map(|t| {
                    let store = store.clone();
                    s.spawn(move || {
                        let mut answers = Vec::new();
                        for k in 0..60i64 {
                            let n = 1000 + t * 100 + k;
                            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                store.write(|c, _| {
                                    diesel::sql_query(format!("INSERT INTO gathered (n) VALUES ({n})")).execute(c)?;
                                    match n % 7 {
                                        0 => Err(Abort::Error(Error::Invalid("refused after its insert".into()))),
                                        _ if n == 1333 => panic!("a write that panics mid-write"),
                                        _ => Ok(()),
                                    }
                                })
                            }));
                            let outcome = match outcome {
                                Ok(Ok(())) => {
                                    // Answered: committed, and seen by another connection.
                                    assert!(stored(&store, n), "write {n} was answered before it was stored");
                                    Ok(())
                                }
                                Ok(Err(e)) => Err(e.to_string()),
                                Err(_) => Err("panicked".to_string()),
                            };
                            answers.push((n, outcome));
                        }
                        answers
                    })
                })
                .collect();
            threads.into_iter().flat_map(|t| t.join().unwrap()).collect()
        });
        let mut refused_by_group = 0;
        for (n, outcome) in &answered {
            assert_eq!(stored(&store, *n), outcome.is_ok(), "write {n}: {outcome:?}");
            if *n % 7 == 0 {
                assert!(outcome.as_ref().is_err_and(|e| e.contains("refused after its insert")));
            } else if *n != 1333 && outcome.is_err() {
                refused_by_group += 1;
            }
        }
        assert_eq!(answered.len(), 480);
        // Only the panicking write's group is refused with it (at most a group's length).
        assert!(refused_by_group < MOST_IN_GROUP, "{refused_by_group} writes refused");
        let writer = store.sqlite_writer.as_ref().unwrap();
        assert!(writer.turn().unwrap().open.is_none(), "no transaction is left open");
        let joined = writer.joined.load(Ordering::Relaxed);
        assert!(
            joined > 0,
            "no write ran in another's transaction: the groups were not tried"
        );
        drop(store);
        let _ = std::fs::remove_dir_all(dir);
    }
}
