//! The embedded backend's group commit: one thread, one write transaction and one
//! fsync per batch of waiting requests (see the parent module for why).

use redb::{Database, Durability, WriteTransaction};
use tokio::sync::mpsc;

use super::{backend, MAX_BATCH};
use crate::store::{StoreError, StoreResult};

/// Runs after the batch's commit with its outcome, and answers one caller.
pub(super) type Completion = Box<dyn FnOnce(StoreResult<()>) + Send>;
/// One write: runs inside the batch's transaction. Returns the caller's completion
/// and whether the batch must be aborted (a backend error).
pub(super) type Job = Box<dyn FnOnce(&WriteTransaction) -> (Completion, bool) + Send>;

pub(super) struct Request {
    pub(super) job: Job,
    /// False for writes that need no fsync of their own (presence timestamps).
    pub(super) durable: bool,
}

/// The writer thread: one transaction and one commit per batch of waiting requests.
pub(super) fn writer_loop(db: &Database, mut queue: mpsc::Receiver<Request>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = queue.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        let size = batch.len();
        let durable = batch.iter().any(|r| r.durable);
        let mut done = Vec::with_capacity(size);
        let outcome = match db.begin_write() {
            Ok(mut txn) => {
                if !durable {
                    txn.set_durability(Durability::None);
                }
                let mut poisoned = false;
                for request in batch.drain(..) {
                    let (completion, poison) = (request.job)(&txn);
                    poisoned |= poison;
                    done.push(completion);
                }
                if poisoned {
                    let _ = txn.abort();
                    Err(StoreError::Backend(
                        "batch aborted after a storage error".into(),
                    ))
                } else {
                    txn.commit().map_err(backend)
                }
            }
            Err(e) => {
                // Nothing ran: dropping the jobs drops their oneshots, so each
                // caller sees a backend error and nothing was acked.
                batch.clear();
                Err(backend(e))
            }
        };
        if let Err(e) = &outcome {
            tracing::error!(batch = size, cause = %e, "embedded commit failed");
        }
        for completion in done {
            completion(match &outcome {
                Ok(()) => Ok(()),
                Err(e) => Err(StoreError::Backend(e.to_string())),
            });
        }
    }
    tracing::debug!("embedded writer stopped");
}
