//! The embedded backend's writer thread: one redb write transaction kept open
//! across batches, the write-ahead log ([`super::wal`]) for durability between
//! its commits, and a checkpoint commit about once a [`CHECKPOINT_EVERY`].
//!
//! Per batch of waiting requests (up to [`MAX_BATCH`]), in queue order:
//! 1. each request runs in the open transaction (accepts over the accept tables
//!    the transaction keeps open; reads that must see acked messages run here
//!    too, see the parent module);
//! 2. if the batch holds a durable request other than an accept (an account, a
//!    group, a token, `flush`...), the transaction commits with `fsync` right
//!    away (a checkpoint) and only then is anyone in the batch answered;
//! 3. otherwise the batch's accepts are appended to the log and the log is
//!    `fdatasync`ed once, and then everyone in the batch is answered.
//!
//! Why: redb is copy-on-write, so a commit rewrites every B-tree leaf its
//! transaction touched, and an accept touches one inbox leaf per member, all over
//! the table. One commit per batch rewrote and fsynced thousands of leaves for a
//! few hundred accepts (70-140 ms a commit at 450 accepts); a transaction that
//! stays open for a second touches each leaf once however many accepts land in
//! it, and the log's `fdatasync` per batch is one short sequential write.
//!
//! A request that fails with a backend error poisons the transaction: it is
//! aborted, the log since the last checkpoint is replayed into a new one and
//! committed (nothing acked is lost), and then each request of the failed batch
//! runs again alone, in its own transaction and commit, so only the failing one
//! fails. If even the replay fails, the writer stops taking writes (every
//! request is answered with an error) and the log stays for the next start.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use redb::{Database, ReadableTable, WriteTransaction};

use super::tables::{accept_in, OpenTables, OwnedMessage, META, WAL_LSN};
use super::wal::{self, Wal};
use super::{backend, MAX_BATCH};
use crate::store::{CommitStats, StoreError, StoreResult};

/// Longest an accept stays in the log before a checkpoint commits it to redb.
pub(super) const CHECKPOINT_EVERY: Duration = Duration::from_millis(2000);
/// Log size that calls for a checkpoint sooner.
const CHECKPOINT_LOG_BYTES: u64 = 64 << 20;

/// One write, re-runnable: the retry-alone path runs it a second time.
pub(super) trait Write: Send {
    /// Runs inside a transaction, with the transaction's open accept tables;
    /// true if that transaction must be aborted (a backend error: the write may
    /// have half happened).
    fn run<'t>(&mut self, txn: &'t WriteTransaction, open: &mut OpenTables<'t>) -> bool;
    /// The accept this request's last run wrote, if any: what goes in the log.
    fn logged(&self) -> Option<&OwnedMessage>;
    /// Answers the caller with its last run's result, given the outcome of what
    /// made it durable (the log's sync or the commit).
    fn finish(self: Box<Self>, durable: StoreResult<()>);
}

/// What a request needs before its caller is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// Reads the transaction (acked messages not yet checkpointed included).
    Read,
    /// A presence timestamp: no fsync of its own; durable with the next checkpoint.
    Presence,
    /// An accept: durable once its log record is synced.
    Accept,
    /// Anything else that writes: durable once its transaction commits.
    Durable,
}

pub(super) struct Request {
    pub(super) job: Box<dyn Write>,
    pub(super) kind: Kind,
}

/// How a run of batches in one transaction ended.
enum End {
    /// Commit what the transaction holds (this many writes), then answer the batch.
    Checkpoint(Vec<Request>, usize),
    /// The queue closed: commit and stop.
    Stop,
    /// A request failed with a backend error: abort, replay, retry each alone.
    Poisoned(Vec<Request>),
    /// The log could not be written: abort, replay, fail the batch.
    LogFailed(Vec<Request>, std::io::Error),
}

/// The writer thread's loop: runs until every sender is gone, then commits.
pub(super) fn writer_loop(
    db: &Database,
    queue: Receiver<Request>,
    stats: &CommitStats,
    mut wal: Wal,
) {
    let mut broken: Option<String> = None;
    loop {
        if let Some(why) = &broken {
            // Answer everything with the failure until the queue closes.
            let Ok(r) = queue.recv() else { break };
            r.job.finish(Err(StoreError::Backend(why.clone())));
            continue;
        }
        let txn = match db.begin_write() {
            Ok(txn) => txn,
            Err(e) => {
                broken = Some(format!("embedded writer cannot begin a transaction: {e}"));
                tracing::error!(cause = %e, "embedded writer stopped taking writes");
                continue;
            }
        };
        match fill(&txn, &queue, &mut wal, stats) {
            End::Checkpoint(batch, writes) => {
                let committed = checkpoint(txn, &mut wal, stats, writes);
                if let Err(e) = &committed {
                    tracing::error!(batch = batch.len(), cause = %e, "embedded checkpoint failed");
                }
                for r in batch {
                    r.job.finish(clone_err(&committed));
                }
                if committed.is_err() {
                    if let Err(why) = rebuild(db, &mut wal) {
                        broken = Some(why);
                    }
                }
            }
            End::Stop => {
                if let Err(e) = checkpoint(txn, &mut wal, stats, 0) {
                    tracing::error!(cause = %e, "embedded writer's last checkpoint failed; the log keeps what it held");
                }
                break;
            }
            End::Poisoned(batch) => {
                let _ = txn.abort();
                if let Err(why) = rebuild(db, &mut wal) {
                    broken = Some(why.clone());
                    for r in batch {
                        r.job.finish(Err(StoreError::Backend(why.clone())));
                    }
                    continue;
                }
                if batch.len() > 1 {
                    tracing::warn!(batch = batch.len(), "a write failed; retrying each alone");
                }
                for r in batch {
                    run_alone(db, r, stats);
                }
            }
            End::LogFailed(batch, e) => {
                let _ = txn.abort();
                tracing::error!(batch = batch.len(), cause = %e, "embedded log write failed");
                let why = format!("embedded log write failed: {e}");
                for r in batch {
                    r.job.finish(Err(StoreError::Backend(why.clone())));
                }
                if let Err(why) = rebuild(db, &mut wal) {
                    broken = Some(why);
                }
            }
        }
    }
    tracing::debug!("embedded writer stopped");
}

/// Runs batches in `txn` until it should commit (or must be aborted).
fn fill(
    txn: &WriteTransaction,
    queue: &Receiver<Request>,
    wal: &mut Wal,
    stats: &CommitStats,
) -> End {
    let mut open = OpenTables::new();
    // When the transaction first held a write: the checkpoint is due a
    // CHECKPOINT_EVERY later.
    let mut dirty_since: Option<Instant> = None;
    let mut writes = 0usize;
    loop {
        let first = match dirty_since {
            Some(since) => {
                let left = CHECKPOINT_EVERY.saturating_sub(since.elapsed());
                match queue.recv_timeout(left) {
                    Ok(r) => r,
                    Err(RecvTimeoutError::Timeout) => {
                        return closed(&mut open, End::Checkpoint(Vec::new(), writes))
                    }
                    Err(RecvTimeoutError::Disconnected) => return closed(&mut open, End::Stop),
                }
            }
            None => match queue.recv() {
                Ok(r) => r,
                Err(_) => return closed(&mut open, End::Stop),
            },
        };
        let started = Instant::now();
        let mut batch = Vec::with_capacity(16);
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let mut poisoned = false;
        for r in batch.iter_mut() {
            poisoned |= r.job.run(txn, &mut open);
        }
        if poisoned {
            return End::Poisoned(batch);
        }
        let wrote = batch.iter().filter(|r| r.kind != Kind::Read).count();
        if batch.iter().any(|r| r.kind == Kind::Durable) {
            stats.busy(started.elapsed());
            return closed(&mut open, End::Checkpoint(batch, writes + wrote));
        }
        for r in &batch {
            if let Some(m) = r.job.logged() {
                wal.push(m);
            }
        }
        if wal.has_pending() {
            let syncing = Instant::now();
            if let Err(e) = wal.sync() {
                return End::LogFailed(batch, e);
            }
            stats.logged(syncing.elapsed());
        }
        writes += wrote;
        if dirty_since.is_none() && wrote > 0 {
            dirty_since = Some(started);
        }
        for r in batch {
            r.job.finish(Ok(()));
        }
        stats.busy(started.elapsed());
        let due = dirty_since.is_some_and(|since| since.elapsed() >= CHECKPOINT_EVERY)
            || wal.len() >= CHECKPOINT_LOG_BYTES;
        if due {
            return closed(&mut open, End::Checkpoint(Vec::new(), writes));
        }
    }
}

/// Closes the accept tables (writing the heads they cache) before `end`'s
/// commit; if that fails the transaction is poisoned instead.
fn closed(open: &mut OpenTables<'_>, end: End) -> End {
    match (open.close(), end) {
        (Ok(()), end) => end,
        (Err(e), end) => {
            tracing::error!(cause = %e, "embedded writer could not write its cached heads");
            match end {
                End::Checkpoint(batch, _) => End::Poisoned(batch),
                // Abort and replay: the stop comes round again after.
                _ => End::Poisoned(Vec::new()),
            }
        }
    }
}

/// Commits `txn` with `fsync`, recording the log position it holds; then the log
/// is emptied. `writes`: the requests answered with this commit.
fn checkpoint(
    txn: WriteTransaction,
    wal: &mut Wal,
    stats: &CommitStats,
    writes: usize,
) -> StoreResult<()> {
    let started = Instant::now();
    {
        let mut meta = txn.open_table(META).map_err(backend)?;
        meta.insert(WAL_LSN, wal.synced_lsn()).map_err(backend)?;
    }
    txn.commit().map_err(backend)?;
    stats.checkpointed(writes, started.elapsed());
    if let Err(e) = wal.reset() {
        // Harmless: the records it still holds are at or before the stored position.
        tracing::warn!(cause = %e, "could not empty the embedded log");
    }
    Ok(())
}

/// After an aborted transaction or a failed commit: replays the log into a new
/// transaction and commits it, so the acked accepts it holds are in redb again.
fn rebuild(db: &Database, wal: &mut Wal) -> Result<(), String> {
    match replay(db, wal.path()) {
        Ok(_) => {
            if let Err(e) = wal.reset() {
                tracing::warn!(cause = %e, "could not empty the embedded log");
            }
            Ok(())
        }
        Err(e) => {
            tracing::error!(cause = %e, "embedded writer could not replay its log; it stops taking writes");
            Err(format!(
                "embedded storage failed and stopped taking writes ({e}); restart the server"
            ))
        }
    }
}

/// Runs the log's records after the stored position, in order, in one
/// transaction, and commits it with the new position. Returns the position and
/// how many records ran.
pub(super) fn replay(db: &Database, path: &std::path::Path) -> StoreResult<(u64, usize)> {
    let records = wal::read(path)
        .map_err(|e| StoreError::Backend(format!("read {}: {e}", path.display())))?;
    let txn = db.begin_write().map_err(backend)?;
    let done = txn
        .open_table(META)
        .map_err(backend)?
        .get(WAL_LSN)
        .map_err(backend)?
        .map_or(0, |v| v.value());
    let mut last = done;
    let mut ran = 0;
    {
        let mut open = OpenTables::new();
        let tables = open.accept(&txn)?;
        for (lsn, msg) in records.iter().filter(|(lsn, _)| *lsn > done) {
            match accept_in(tables, msg) {
                Ok(a) if !a.duplicate => {}
                Ok(_) => tracing::warn!(lsn, "a replayed accept was already stored"),
                Err(e @ StoreError::Backend(_)) => return Err(e),
                Err(e) => tracing::warn!(lsn, cause = %e, "a replayed accept was refused"),
            }
            last = *lsn;
            ran += 1;
        }
        open.close()?;
    }
    txn.open_table(META)
        .map_err(backend)?
        .insert(WAL_LSN, last)
        .map_err(backend)?;
    txn.commit().map_err(backend)?;
    if ran > 0 {
        tracing::info!(records = ran, up_to = last, "replayed the embedded log");
    }
    Ok((last, ran))
}

/// The retry path: one request in its own transaction and commit.
fn run_alone(db: &Database, mut r: Request, stats: &CommitStats) {
    let started = Instant::now();
    let txn = match db.begin_write() {
        Ok(txn) => txn,
        Err(e) => return r.job.finish(Err(backend(e))),
    };
    let poisoned = {
        let mut open = OpenTables::new();
        let poisoned = r.job.run(&txn, &mut open);
        poisoned || open.close().is_err()
    };
    if poisoned {
        let _ = txn.abort();
        return r.job.finish(Err(StoreError::Backend(
            "a write in the batch failed; the batch was aborted".into(),
        )));
    }
    let committed = txn.commit().map_err(backend);
    stats.checkpointed(1, started.elapsed());
    r.job.finish(committed);
}

fn clone_err(r: &StoreResult<()>) -> StoreResult<()> {
    match r {
        Ok(()) => Ok(()),
        Err(e) => Err(StoreError::Backend(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::TableDefinition;

    const T: TableDefinition<'_, u64, u64> = TableDefinition::new("t");

    struct Put {
        key: u64,
        fail: bool,
        result: Option<bool>,
        done: std::sync::mpsc::Sender<(u64, StoreResult<()>)>,
    }

    impl Write for Put {
        fn run<'t>(&mut self, txn: &'t WriteTransaction, open: &mut OpenTables<'t>) -> bool {
            let _ = open.close();
            let mut t = txn.open_table(T).unwrap();
            t.insert(self.key, self.key).unwrap();
            self.result = Some(!self.fail);
            self.fail
        }
        fn logged(&self) -> Option<&OwnedMessage> {
            None
        }
        fn finish(self: Box<Self>, commit: StoreResult<()>) {
            let r = match (commit, self.result) {
                (Ok(()), Some(true)) => Ok(()),
                (Err(e), _) => Err(e),
                _ => Err(StoreError::Backend("failed".into())),
            };
            self.done.send((self.key, r)).unwrap();
        }
    }

    #[test]
    fn one_failing_write_fails_alone_and_the_rest_of_its_batch_commits() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("w.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META).unwrap();
        txn.commit().unwrap();
        let wal = Wal::create(&dir.path().join("log"), 0).unwrap();
        let (tx, rx) = std::sync::mpsc::sync_channel(64);
        let (done, answers) = std::sync::mpsc::channel();
        // All queued before the writer starts: one batch.
        for key in 1..=10 {
            let job = Box::new(Put {
                key,
                fail: key == 4,
                result: None,
                done: done.clone(),
            });
            tx.try_send(Request {
                job,
                kind: Kind::Durable,
            })
            .unwrap();
        }
        drop(tx);
        writer_loop(&db, rx, &CommitStats::default(), wal);
        let mut answers: Vec<(u64, bool)> =
            answers.try_iter().map(|(k, r)| (k, r.is_ok())).collect();
        answers.sort();
        let want: Vec<(u64, bool)> = (1..=10).map(|k| (k, k != 4)).collect();
        assert_eq!(answers, want);
        let read = db.begin_read().unwrap();
        let t = read.open_table(T).unwrap();
        for key in 1..=10 {
            assert_eq!(t.get(key).unwrap().is_some(), key != 4, "key {key}");
        }
    }
}
