//! The embedded backend's group commit: one thread, one write transaction and one
//! fsync per batch of waiting requests (see the parent module for why).
//!
//! A request that fails with a backend error poisons its batch: the transaction
//! is aborted, and then every request of the batch runs again alone, in its own
//! transaction, so one bad write fails only its own caller and the others commit.

use redb::{Database, Durability, WriteTransaction};
use tokio::sync::mpsc;

use super::tables::OpenTables;
use super::{backend, MAX_BATCH};
use crate::store::{CommitStats, StoreError, StoreResult};

/// One write, re-runnable: the retry-alone path runs it a second time.
pub(super) trait Write: Send {
    /// Runs inside a transaction, with the batch's open accept tables; true if
    /// that transaction must be aborted (a backend error: the write may have
    /// half happened).
    fn run<'t>(&mut self, txn: &'t WriteTransaction, open: &mut OpenTables<'t>) -> bool;
    /// Answers the caller with its last run's result, given its commit's outcome.
    fn finish(self: Box<Self>, commit: StoreResult<()>);
}

pub(super) struct Request {
    pub(super) job: Box<dyn Write>,
    /// False for writes that need no fsync of their own (presence timestamps).
    pub(super) durable: bool,
}

/// The writer thread: one transaction and one commit per batch of waiting requests.
pub(super) fn writer_loop(db: &Database, mut queue: mpsc::Receiver<Request>, stats: &CommitStats) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = queue.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        let durable = batch.iter().any(|r| r.durable);
        match run_together(db, &mut batch, durable, stats) {
            Ok(commit) => {
                if let Err(e) = &commit {
                    tracing::error!(batch = batch.len(), cause = %e, "embedded commit failed");
                }
                for request in batch.drain(..) {
                    request.job.finish(clone_err(&commit));
                }
            }
            Err(poisoned) if batch.len() > 1 => {
                tracing::warn!(batch = batch.len(), cause = %poisoned, "a write failed; retrying each alone");
                for mut request in batch.drain(..) {
                    let durable = request.durable;
                    let alone =
                        run_together(db, std::slice::from_mut(&mut request), durable, stats);
                    let commit = alone
                        .and_then(|c| c)
                        .map_err(|e| StoreError::Backend(e.to_string()));
                    request.job.finish(commit);
                }
            }
            Err(poisoned) => {
                for request in batch.drain(..) {
                    request
                        .job
                        .finish(Err(StoreError::Backend(poisoned.to_string())));
                }
            }
        }
    }
    tracing::debug!("embedded writer stopped");
}

/// Runs requests in one transaction. `Err` when one of them poisoned it (aborted,
/// nothing written); otherwise the outcome of the commit.
fn run_together(
    db: &Database,
    batch: &mut [Request],
    durable: bool,
    stats: &CommitStats,
) -> Result<StoreResult<()>, StoreError> {
    let started = std::time::Instant::now();
    let mut txn = match db.begin_write() {
        Ok(txn) => txn,
        Err(e) => return Ok(Err(backend(e))),
    };
    if !durable {
        txn.set_durability(Durability::None);
    }
    let mut poisoned = false;
    {
        let mut open = OpenTables::new();
        for request in batch.iter_mut() {
            poisoned |= request.job.run(&txn, &mut open);
        }
    }
    if poisoned {
        let _ = txn.abort();
        return Err(StoreError::Backend(
            "a write in the batch failed; the batch was aborted".into(),
        ));
    }
    let committing = std::time::Instant::now();
    let commit = txn.commit().map_err(backend);
    stats.batch(batch.len(), started.elapsed(), committing.elapsed());
    Ok(commit)
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
        fn run<'t>(&mut self, txn: &'t WriteTransaction, _: &mut OpenTables<'t>) -> bool {
            let mut t = txn.open_table(T).unwrap();
            t.insert(self.key, self.key).unwrap();
            self.result = Some(!self.fail);
            self.fail
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
        let (tx, rx) = mpsc::channel(64);
        let (done, answers) = std::sync::mpsc::channel();
        // All queued before the writer starts: one batch.
        for key in 1..=10 {
            let job = Box::new(Put {
                key,
                fail: key == 4,
                result: None,
                done: done.clone(),
            });
            tx.try_send(Request { job, durable: true }).unwrap();
        }
        drop(tx);
        writer_loop(&db, rx, &CommitStats::default());
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
