//! The PostgreSQL backend's group commit: one task owns one connection and commits
//! every accept that is waiting in one transaction (see the parent module).
//!
//! Several nodes share one database, so several writers commit batches at once.
//! Each batch first locks every user row and then every channel row it will touch,
//! each set sorted: one global lock order for all writers, so two batches wait for
//! each other but never deadlock. Inside the transaction each accept's own locks are
//! then already held.
//!
//! For a group channel the members come from the database, read in the batch's
//! transaction before its locks are taken (the caller's list may be stale), so
//! a member removed meanwhile gets nothing and a removed sender is refused. A
//! batch that fails is retried one accept per transaction, so one accept that
//! PostgreSQL refuses fails alone and the others commit.

use futures_util::future::join_all;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{NoTls, Row, Statement};

use super::{backend, MAX_BATCH};
use crate::store::{CommitStats, StoreError, StoreResult};

/// One accept, as the arguments of `chatscale_accept`, and where its row goes.
pub(super) struct AcceptRequest {
    pub(super) channel: String,
    pub(super) members: Vec<i64>,
    pub(super) from: i64,
    pub(super) device: i64,
    pub(super) cmid: String,
    pub(super) text: String,
    pub(super) ts: i64,
    pub(super) done: oneshot::Sender<StoreResult<Answer>>,
}

/// What `chatscale_accept` answered, and the members it was called with (for a
/// group: the members read in the batch's transaction, not the caller's list).
pub(super) struct Answer {
    pub(super) row: Row,
    pub(super) members: Vec<i64>,
    /// The sender was not a member: an "unknown member" status means `NotMember`.
    pub(super) not_member: bool,
}

/// A group's members, read in the batch's transaction (the caller's list may be
/// stale). No row: no such group.
const MEMBERS_SQL: &str = "SELECT coalesce((SELECT array_agg(m.user_id ORDER BY m.joined) \
     FROM group_members m WHERE m.group_id = g.id), '{}') FROM groups g WHERE g.id = $1";

/// A member id no user has: calling the accept with it in the member list makes
/// the function answer "unknown member" after its dedupe check, which is how a
/// non-member's resend of an accepted message still gets its ack.
const NOBODY: i64 = -1;

const ACCEPT_SQL: &str = "SELECT o_status AS status, o_channel AS channel, o_id AS id, \
     o_ts AS ts, o_sender_seq AS sender_seq, o_seqs AS seqs \
     FROM chatscale_accept($1, $2, $3, $4, $5, $6, $7)";

/// The writer task: one transaction and one commit per batch of waiting accepts.
pub(super) async fn writer_loop(
    mut client: tokio_postgres::Client,
    config: tokio_postgres::Config,
    mut queue: mpsc::Receiver<AcceptRequest>,
    stats: std::sync::Arc<CommitStats>,
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
            Some(stmt) => commit_batch(&mut client, stmt, &batch, &stats).await,
            None => Err(StoreError::Backend(
                "postgres: cannot prepare accept".into(),
            )),
        };
        match result {
            Ok(answers) => {
                for (request, answer) in batch.drain(..).zip(answers) {
                    let _ = request.done.send(answer);
                }
            }
            Err(e) if size > 1 && stmt.is_some() => {
                // One bad accept (a string PostgreSQL refuses, say) aborts the
                // whole transaction: run each again alone, so only it fails.
                tracing::warn!(batch = size, cause = %e, "postgres accept batch failed; retrying each alone");
                let stmt = stmt.as_ref().expect("checked above");
                for request in batch.drain(..) {
                    let alone =
                        commit_batch(&mut client, stmt, std::slice::from_ref(&request), &stats)
                            .await;
                    let _ = request.done.send(alone.and_then(|mut answers| {
                        answers.pop().unwrap_or_else(|| {
                            Err(StoreError::Backend("postgres: no answer".into()))
                        })
                    }));
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

/// The sorted, distinct users (senders and the members each accept is called
/// with) and channels of a batch.
fn lock_sets(batch: &[AcceptRequest], members: &[Vec<i64>]) -> (Vec<i64>, Vec<String>) {
    let mut users: Vec<i64> = batch
        .iter()
        .zip(members)
        .flat_map(|(r, m)| m.iter().copied().chain([r.from]))
        .collect();
    users.sort_unstable();
    users.dedup();
    let mut channels: Vec<String> = batch.iter().map(|r| r.channel.clone()).collect();
    channels.sort_unstable();
    channels.dedup();
    (users, channels)
}

/// For each accept: the members to call it with, and whether the sender was
/// refused as a non-member. A group's are read now; a dm's are the caller's.
async fn current_members(
    txn: &tokio_postgres::Transaction<'_>,
    batch: &[AcceptRequest],
) -> StoreResult<Vec<(Vec<i64>, bool)>> {
    let reads = batch.iter().map(|r| async move {
        let Some(g) = crate::store::group_of(&r.channel) else {
            return Ok((r.members.clone(), false));
        };
        let row = txn
            .query_opt(MEMBERS_SQL, &[&(g as i64)])
            .await
            .map_err(backend)?;
        // No such group, or a sender outside it: still through the function,
        // for its dedupe check (a resend gets its first ack wherever it goes).
        Ok(match row.map(|row| row.get::<_, Vec<i64>>(0)) {
            None => (vec![NOBODY], false),
            Some(m) if !m.contains(&r.from) => (vec![NOBODY], true),
            Some(m) => (m, false),
        })
    });
    join_all(reads).await.into_iter().collect()
}

async fn commit_batch(
    client: &mut tokio_postgres::Client,
    stmt: &Statement,
    batch: &[AcceptRequest],
    stats: &CommitStats,
) -> StoreResult<Vec<StoreResult<Answer>>> {
    let started = std::time::Instant::now();
    let txn = client.transaction().await.map_err(backend)?;
    // Membership first (plain reads, no locks), so the lock sets below cover
    // every user an accept will touch.
    let members = current_members(&txn, batch).await?;
    let lists: Vec<Vec<i64>> = members.iter().map(|(m, _)| m.clone()).collect();
    let (users, channels) = lock_sets(batch, &lists);
    txn.execute(LOCK_USERS, &[&users]).await.map_err(backend)?;
    txn.execute(CREATE_CHANNELS, &[&channels])
        .await
        .map_err(backend)?;
    txn.execute(LOCK_CHANNELS, &[&channels])
        .await
        .map_err(backend)?;
    // Issued together, the calls are pipelined on the connection and still run in
    // order, so a batch costs about two round trips plus one commit.
    let (txn_ref, stmt_ref) = (&txn, stmt);
    let calls = batch
        .iter()
        .zip(members)
        .map(|(r, (members, not_member))| async move {
            let row = txn_ref
                .query_one(
                    stmt_ref,
                    &[
                        &r.channel, &members, &r.from, &r.device, &r.cmid, &r.text, &r.ts,
                    ],
                )
                .await
                .map_err(backend)?;
            Ok::<_, StoreError>(Answer {
                row,
                members,
                not_member,
            })
        });
    let mut answers = Vec::with_capacity(batch.len());
    for result in join_all(calls).await {
        answers.push(Ok(result?));
    }
    let committing = std::time::Instant::now();
    txn.commit().await.map_err(backend)?;
    stats.batch(batch.len(), started.elapsed(), committing.elapsed());
    Ok(answers)
}
