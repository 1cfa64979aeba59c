//! The PostgreSQL backend's group commit: one task owns one connection and commits
//! every accept that is waiting in one transaction (see the parent module).
//!
//! Several nodes share one database, so several writers commit batches at once.
//! Each batch first locks every user row and then every channel row it will touch,
//! each set sorted: one global lock order for all writers, so two batches wait for
//! each other but never deadlock. Inside the transaction each accept's own locks are
//! then already held.

use futures_util::future::join_all;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{NoTls, Row, Statement};

use super::{backend, MAX_BATCH};
use crate::store::{StoreError, StoreResult};

/// One accept, as the arguments of `chatscale_accept`, and where its row goes.
pub(super) struct AcceptRequest {
    pub(super) channel: String,
    pub(super) members: Vec<i64>,
    pub(super) from: i64,
    pub(super) device: i64,
    pub(super) cmid: String,
    pub(super) text: String,
    pub(super) ts: i64,
    pub(super) done: oneshot::Sender<StoreResult<Row>>,
}

const ACCEPT_SQL: &str = "SELECT o_status AS status, o_channel AS channel, o_id AS id, \
     o_ts AS ts, o_sender_seq AS sender_seq, o_seqs AS seqs \
     FROM chatscale_accept($1, $2, $3, $4, $5, $6, $7)";

/// The writer task: one transaction and one commit per batch of waiting accepts.
pub(super) async fn writer_loop(
    mut client: tokio_postgres::Client,
    config: tokio_postgres::Config,
    mut queue: mpsc::Receiver<AcceptRequest>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // Prepared once per connection (again after a reconnect).
    let mut stmt: Option<Statement> = None;
    while let Some(first) = queue.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        if client.is_closed() {
            match config.connect(NoTls).await {
                Ok((c, conn)) => {
                    tokio::spawn(conn);
                    client = c;
                    stmt = None;
                }
                Err(e) => tracing::error!(cause = %e, "postgres writer cannot reconnect"),
            }
        }
        let size = batch.len();
        if stmt.is_none() {
            stmt = client.prepare(ACCEPT_SQL).await.ok();
        }
        let result = match &stmt {
            Some(stmt) => commit_batch(&mut client, stmt, &batch).await,
            None => Err(StoreError::Backend(
                "postgres: cannot prepare accept".into(),
            )),
        };
        match result {
            Ok(rows) => {
                for (request, row) in batch.drain(..).zip(rows) {
                    let _ = request.done.send(Ok(row));
                }
            }
            Err(e) => {
                tracing::error!(batch = size, cause = %e, "postgres accept batch failed");
                for request in batch.drain(..) {
                    let e = match &e {
                        StoreError::Backend(text) => text.clone(),
                        other => other.to_string(),
                    };
                    let _ = request.done.send(Err(StoreError::Backend(e)));
                }
            }
        }
    }
}

/// Locks every user row a batch touches, in id order: nodes commit batches
/// concurrently, and each accept locking only its own members in order is not
/// enough (batch A: {1,5} then {2,3}; batch B: {2,3} then {1,5} deadlock).
const LOCK_USERS: &str = "SELECT 1 FROM users WHERE id = ANY ($1) ORDER BY id FOR UPDATE";

/// Creates the batch's missing channel rows, in channel order (a row created here
/// starts at head 0; the accept's upsert takes it to 1; a concurrent creator of the
/// same row waits for this transaction)...
const CREATE_CHANNELS: &str = "INSERT INTO channels (channel_id, head) \
     SELECT x, 0 FROM unnest($1::TEXT[]) AS x ORDER BY x ON CONFLICT (channel_id) DO NOTHING";

/// ...then locks them all, in channel order: after the users, so one global order
/// (users by id, then channels by id) for every writer.
const LOCK_CHANNELS: &str =
    "SELECT 1 FROM channels WHERE channel_id = ANY ($1) ORDER BY channel_id FOR UPDATE";

/// The sorted, distinct users (senders and members) and channels of a batch.
fn lock_sets(batch: &[AcceptRequest]) -> (Vec<i64>, Vec<String>) {
    let mut users: Vec<i64> = batch
        .iter()
        .flat_map(|r| r.members.iter().copied().chain([r.from]))
        .collect();
    users.sort_unstable();
    users.dedup();
    let mut channels: Vec<String> = batch.iter().map(|r| r.channel.clone()).collect();
    channels.sort_unstable();
    channels.dedup();
    (users, channels)
}

async fn commit_batch(
    client: &mut tokio_postgres::Client,
    stmt: &Statement,
    batch: &[AcceptRequest],
) -> StoreResult<Vec<Row>> {
    let txn = client.transaction().await.map_err(backend)?;
    let (users, channels) = lock_sets(batch);
    txn.execute(LOCK_USERS, &[&users]).await.map_err(backend)?;
    txn.execute(CREATE_CHANNELS, &[&channels])
        .await
        .map_err(backend)?;
    txn.execute(LOCK_CHANNELS, &[&channels])
        .await
        .map_err(backend)?;
    // Issued together, the calls are pipelined on the connection and still run in
    // order, so a batch costs about one round trip plus one commit.
    let (txn_ref, stmt_ref) = (&txn, stmt);
    let calls = batch.iter().map(|r| async move {
        txn_ref
            .query_one(
                stmt_ref,
                &[
                    &r.channel, &r.members, &r.from, &r.device, &r.cmid, &r.text, &r.ts,
                ],
            )
            .await
    });
    let mut rows = Vec::with_capacity(batch.len());
    for result in join_all(calls).await {
        rows.push(result.map_err(backend)?);
    }
    txn.commit().await.map_err(backend)?;
    Ok(rows)
}
