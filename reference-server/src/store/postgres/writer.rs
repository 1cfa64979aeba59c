//! The PostgreSQL backend's group commit: one task owns one connection and commits
//! every accept that is waiting in one transaction (see the parent module).

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
                    let _ = request.done.send(Err(StoreError::Backend(e.to_string())));
                }
            }
        }
    }
}

async fn commit_batch(
    client: &mut tokio_postgres::Client,
    stmt: &Statement,
    batch: &[AcceptRequest],
) -> StoreResult<Vec<Row>> {
    let txn = client.transaction().await.map_err(backend)?;
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
