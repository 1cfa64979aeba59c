//! The embedded backend (`--storage embedded:DIR`): durable on one machine, nothing
//! to install. The engine is [redb], a copy-on-write B-tree in one file whose
//! `Immediate` commits are fsynced before `commit` returns.
//!
//! **Why group commit.** An fsync costs from tens of microseconds (a good NVMe) to
//! several milliseconds (a cloud disk), and a chat server acks a message only when
//! it is durable. One fsync per message would cap the server at one message per
//! fsync. So every write goes to one writer thread through a bounded channel; the
//! thread takes whatever requests are waiting (up to [`MAX_BATCH`]), runs them all
//! in its write transaction, makes them durable with one fsync, and then completes
//! each caller's oneshot. While one batch is being fsynced, the next one queues
//! up, so under load the batch size grows by itself and the fsync cost is shared.
//! One writer also makes every write trivially serial, which is what the atomic
//! [`Store::accept`] needs (redb allows one write transaction at a time anyway).
//!
//! **Why a write-ahead log.** An accept is made durable by appending it to a log
//! (`DIR/chatscale.wal`, see [`wal`]) and `fdatasync`ing it once per batch; the
//! redb transaction stays open across batches and commits about once a second (a
//! checkpoint), because a redb commit rewrites every B-tree leaf its transaction
//! touched and an accept touches one inbox leaf per member: one commit per batch
//! cost 70-140 ms for 450 accepts. Any other durable write (an account, a group,
//! a token) commits its batch at once, as before. After a crash the log's records
//! since the last checkpoint are replayed on open (see [`writer`]).
//!
//! A request whose closure fails with a domain outcome (`NotFound`, `GroupFull`...)
//! has written nothing (each closure checks before it writes), so it does not
//! disturb the others in its batch; a backend error aborts the batch, and each
//! of its requests then runs again alone, so only the failing one fails. When
//! the queue is full a write is answered `Overloaded` at once.
//!
//! Presence timestamps are not worth an fsync: [`Store::set_last_active`] is
//! answered once it has run in the open transaction and becomes durable with the
//! next checkpoint. Reads of what accepts and presence write (history, inbox,
//! `users`) run in the writer's transaction too, queued behind the writes before
//! them, and are answered with their batch, after its sync: a reader sees every
//! acked message and never one that is not yet durable. Other reads (accounts,
//! tokens, friends, groups: written only by writes that commit at once) run on
//! the blocking pool in a read transaction.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, ReadTransaction, ReadableTable, WriteTransaction};
use tokio::sync::oneshot;

mod cache;
mod tables;
mod wal;
mod writer;
use tables::*;
use writer::{writer_loop, Kind, Request, Write};

use super::{
    Accepted, CommitStats, Expired, NewMessage, PendingAccept, Store, StoreError, StoreResult,
    StoredMessage, TokenOwner, UserInfo, UserRecord,
};
use crate::protocol::{DeviceId, Message, MessageId, Millis, Seq, UserId};

/// Most requests committed in one transaction.
pub const MAX_BATCH: usize = 512;
/// Requests waiting for the writer before callers wait to enqueue (back-pressure).
const QUEUE: usize = 4096;

/// Maps any redb error into the trait's backend error.
fn backend(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Backend(format!("redb: {}", e.into()))
}

/// The redb-backed store. Cheap to share; dropping the last handle stops the writer
/// thread after it has committed what was queued.
pub struct EmbeddedStore {
    db: Arc<Database>,
    writer: std::sync::mpsc::SyncSender<Request>,
    stats: Arc<CommitStats>,
    /// Members and accounts a send checks, kept in memory (see [`cache`]).
    cache: Arc<cache::Cache>,
}

impl EmbeddedStore {
    /// Opens (or creates) the database `DIR/chatscale.redb`.
    pub fn open(dir: &Path) -> StoreResult<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Backend(format!("create {}: {e}", dir.display())))?;
        let path = dir.join("chatscale.redb");
        let db = Database::create(&path).map_err(backend)?;
        // Create every table once, so that read transactions can open them.
        let txn = db.begin_write().map_err(backend)?;
        {
            txn.open_table(META).map_err(backend)?;
            txn.open_table(USERS).map_err(backend)?;
            txn.open_table(USER_NAMES).map_err(backend)?;
            txn.open_table(LAST_ACTIVE).map_err(backend)?;
            txn.open_table(DEVICES).map_err(backend)?;
            txn.open_table(TOKENS).map_err(backend)?;
            txn.open_table(FRIENDS).map_err(backend)?;
            txn.open_table(GROUPS).map_err(backend)?;
            txn.open_table(MESSAGES).map_err(backend)?;
            txn.open_table(CHANNEL_HEADS).map_err(backend)?;
            txn.open_table(INBOX).map_err(backend)?;
            txn.open_table(INBOX_RUNS).map_err(backend)?;
            txn.open_table(INBOX_HEADS).map_err(backend)?;
            txn.open_table(DEDUPE).map_err(backend)?;
            txn.open_table(DEDUPE_BY_TS).map_err(backend)?;
        }
        txn.commit().map_err(backend)?;
        // Accepts acked after the last checkpoint, if the last run did not end
        // with one: run them again, then start an empty log.
        let log_path = dir.join("chatscale.wal");
        let (last_lsn, replayed) = writer::replay(&db, &log_path)?;
        let wal = wal::Wal::create(&log_path, last_lsn)
            .map_err(|e| StoreError::Backend(format!("open {}: {e}", log_path.display())))?;
        let db = Arc::new(db);
        let (writer, queue) = std::sync::mpsc::sync_channel(QUEUE);
        let writer_db = db.clone();
        let stats = Arc::new(CommitStats::default());
        let writer_stats = stats.clone();
        std::thread::Builder::new()
            .name("chatscale-redb-writer".into())
            .spawn(move || writer_loop(&writer_db, queue, &writer_stats, wal))
            .map_err(|e| StoreError::Backend(format!("spawn writer thread: {e}")))?;
        tracing::info!(path = %path.display(), replayed, "embedded storage open");
        Ok(Self {
            db,
            writer,
            stats,
            cache: Default::default(),
        })
    }

    /// Queues a durable write for the next batch and waits until its batch has
    /// committed. `f` may run twice: again alone if another write poisoned its
    /// batch.
    async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnMut(&WriteTransaction) -> StoreResult<T> + Send + 'static,
    {
        self.enqueue(Kind::Durable, f, None).await?.await
    }

    /// Queues `f` over the writer's open accept tables (a read, or a presence
    /// write) and waits for its batch.
    async fn on_tables<T, F>(&self, kind: Kind, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnMut(&mut AcceptTables<'_>) -> StoreResult<T> + Send + 'static,
    {
        self.enqueue(kind, OnTables(f), None).await?.await
    }

    /// A write that changes group `group`'s members: its cached members are
    /// dropped once the write has committed (or failed), before the caller is
    /// answered, from the writer thread (so even if the caller is gone).
    async fn write_group<T, F>(&self, group: u64, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnMut(&WriteTransaction) -> StoreResult<T> + Send + 'static,
    {
        let cache = self.cache.clone();
        let after: AfterCommit = Box::new(move || cache.changed(group));
        self.enqueue(Kind::Durable, f, Some(after)).await?.await
    }

    /// Queues a write for the next batch; the returned future resolves once its
    /// batch has committed. Requests run in the order they were queued. `f` may
    /// run twice: again alone if another write poisoned its batch.
    async fn enqueue<T, J>(
        &self,
        kind: Kind,
        f: J,
        after: Option<AfterCommit>,
    ) -> StoreResult<impl Future<Output = StoreResult<T>> + Send + 'static>
    where
        T: Send + 'static,
        J: Job<T>,
    {
        let (tx, rx) = oneshot::channel();
        let job = Box::new(Pending {
            f,
            result: None,
            tx,
            after,
        });
        // Never wait for room: a full queue means storage is backed up.
        self.writer
            .try_send(Request { job, kind })
            .map_err(|e| match e {
                std::sync::mpsc::TrySendError::Full(_) => StoreError::Overloaded,
                std::sync::mpsc::TrySendError::Disconnected(_) => {
                    StoreError::Backend("embedded writer thread has stopped".into())
                }
            })?;
        Ok(async move {
            rx.await
                .map_err(|_| StoreError::Backend("embedded writer dropped a request".into()))?
        })
    }

    /// Runs a read on the blocking pool in a fresh read transaction. (Batching
    /// the reads of many callers on two reader threads, one transaction per
    /// batch, was tried: under storage-ceiling's load the reads, one per send,
    /// queued behind each other and behind disk reads: in one A/B of
    /// storage-ceiling on a busy machine, 1,694 acked sends a second against
    /// 2,433 with this.)
    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&ReadTransaction) -> StoreResult<T> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db.begin_read().map_err(backend)?))
            .await
            .map_err(|e| StoreError::Backend(format!("read task failed: {e}")))?
    }
}

/// Runs in the writer thread once a write's batch has committed (or failed).
type AfterCommit = Box<dyn FnOnce() + Send>;

/// What a queued write runs: an accept or a closure over the transaction's open
/// accept tables, or any closure over the transaction (which closes those
/// tables first).
trait Job<T>: Send + 'static {
    fn run<'t>(&mut self, txn: &'t WriteTransaction, open: &mut OpenTables<'t>) -> StoreResult<T>;
    /// The accept that `result` says was written, for the log.
    fn logged<'a>(&'a self, _result: &StoreResult<T>) -> Option<&'a OwnedMessage> {
        None
    }
}

/// A closure over the transaction's open accept tables.
struct OnTables<F>(F);

impl<T, F> Job<T> for OnTables<F>
where
    F: FnMut(&mut AcceptTables<'_>) -> StoreResult<T> + Send + 'static,
{
    fn run<'t>(&mut self, txn: &'t WriteTransaction, open: &mut OpenTables<'t>) -> StoreResult<T> {
        (self.0)(open.accept(txn)?)
    }
}

impl<T, F> Job<T> for F
where
    F: FnMut(&WriteTransaction) -> StoreResult<T> + Send + 'static,
{
    fn run<'t>(&mut self, txn: &'t WriteTransaction, open: &mut OpenTables<'t>) -> StoreResult<T> {
        open.close()?;
        self(txn)
    }
}

/// An accept, run over the tables the batch keeps open.
struct AcceptJob(OwnedMessage);

impl Job<Accepted> for AcceptJob {
    fn run<'t>(
        &mut self,
        txn: &'t WriteTransaction,
        open: &mut OpenTables<'t>,
    ) -> StoreResult<Accepted> {
        accept_in(open.accept(txn)?, &self.0)
    }

    fn logged<'a>(&'a self, result: &StoreResult<Accepted>) -> Option<&'a OwnedMessage> {
        match result {
            Ok(a) if !a.duplicate => Some(&self.0),
            _ => None,
        }
    }
}

/// A queued write: the closure, its last result, and where the answer goes.
struct Pending<T, F> {
    f: F,
    result: Option<StoreResult<T>>,
    tx: oneshot::Sender<StoreResult<T>>,
    after: Option<AfterCommit>,
}

impl<T, J> Write for Pending<T, J>
where
    T: Send + 'static,
    J: Job<T>,
{
    fn run<'t>(&mut self, txn: &'t WriteTransaction, open: &mut OpenTables<'t>) -> bool {
        let result = self.f.run(txn, open);
        let poison = matches!(result, Err(StoreError::Backend(_)));
        self.result = Some(result);
        poison
    }

    fn logged(&self) -> Option<&OwnedMessage> {
        self.f.logged(self.result.as_ref()?)
    }

    fn finish(self: Box<Self>, commit: StoreResult<()>) {
        let answer = match (commit, self.result) {
            (Ok(()), Some(result)) => result,
            (Err(e), _) => Err(e),
            (Ok(()), None) => Err(StoreError::Backend("a write never ran".into())),
        };
        if let Some(after) = self.after {
            after();
        }
        let _ = self.tx.send(answer);
    }
}

/// Reads message `(channel, id)` from a read transaction's table.
fn message_from(channel: &str, id: MessageId, v: MessageRow<'_>) -> Message {
    let (from, from_device, ts, client_msg_id, text) = v;
    Message {
        channel: channel.to_string(),
        id,
        seq: None,
        from,
        from_device,
        client_msg_id: client_msg_id.to_string(),
        text: text.to_string(),
        ts,
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn durability(&self) -> String {
        "write-ahead log fsynced per group-commit batch, redb checkpoint (fsync) every second: \
         survives process crash and power loss; acks only after the log holds the message"
            .into()
    }

    async fn create_user(&self, username: &str, password_hash: &str) -> StoreResult<UserId> {
        let (username, hash) = (username.to_string(), password_hash.to_string());
        self.write(move |txn| {
            let mut names = txn.open_table(USER_NAMES).map_err(backend)?;
            if names.get(username.as_str()).map_err(backend)?.is_some() {
                return Err(StoreError::Conflict);
            }
            let id = next_counter(txn, "next_user")?;
            names.insert(username.as_str(), id).map_err(backend)?;
            let mut users = txn.open_table(USERS).map_err(backend)?;
            users
                .insert(id, (username.as_str(), hash.as_str()))
                .map_err(backend)?;
            Ok(id)
        })
        .await
    }

    async fn user_by_name(&self, username: &str) -> StoreResult<Option<UserRecord>> {
        let username = username.to_string();
        self.read(move |txn| {
            let names = txn.open_table(USER_NAMES).map_err(backend)?;
            let Some(id) = names
                .get(username.as_str())
                .map_err(backend)?
                .map(|v| v.value())
            else {
                return Ok(None);
            };
            let users = txn.open_table(USERS).map_err(backend)?;
            Ok(users.get(id).map_err(backend)?.map(|v| {
                let (name, hash) = v.value();
                UserRecord {
                    id,
                    username: name.to_string(),
                    password_hash: hash.to_string(),
                }
            }))
        })
        .await
    }

    async fn users(&self, ids: &[UserId]) -> StoreResult<Vec<UserInfo>> {
        let ids = ids.to_vec();
        // In the writer's transaction: it holds the latest presence times.
        self.on_tables(Kind::Read, move |t| {
            let mut out = Vec::with_capacity(ids.len());
            for &id in &ids {
                if let Some(v) = t.users.get(id).map_err(backend)? {
                    let last_active_at = t.last_active.get(id).map_err(backend)?.map(|v| v.value());
                    out.push(UserInfo {
                        id,
                        username: v.value().0.to_string(),
                        last_active_at,
                    });
                }
            }
            Ok(out)
        })
        .await
    }

    async fn login_device(&self, user: UserId, name: Option<&str>) -> StoreResult<DeviceId> {
        let name = name.map(str::to_string);
        self.write(move |txn| {
            if !user_exists(txn, user)? {
                return Err(StoreError::NotFound);
            }
            let mut devices = txn.open_table(DEVICES).map_err(backend)?;
            if let Some(name) = &name {
                if let Some(id) = devices.get((user, name.as_str())).map_err(backend)? {
                    return Ok(id.value());
                }
            }
            let id = next_counter(txn, "next_device")?;
            if let Some(name) = &name {
                devices.insert((user, name.as_str()), id).map_err(backend)?;
            }
            Ok(id)
        })
        .await
    }

    async fn put_token(&self, token: &str, owner: TokenOwner) -> StoreResult<()> {
        let token = token.to_string();
        self.write(move |txn| {
            let mut tokens = txn.open_table(TOKENS).map_err(backend)?;
            tokens
                .insert(token.as_str(), (owner.user_id, owner.device_id))
                .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn token_owner(&self, token: &str) -> StoreResult<Option<TokenOwner>> {
        let token = token.to_string();
        self.read(move |txn| {
            let tokens = txn.open_table(TOKENS).map_err(backend)?;
            Ok(tokens.get(token.as_str()).map_err(backend)?.map(|v| {
                let (user_id, device_id) = v.value();
                TokenOwner { user_id, device_id }
            }))
        })
        .await
    }

    async fn revoke_token(&self, token: &str) -> StoreResult<()> {
        let token = token.to_string();
        self.write(move |txn| {
            txn.open_table(TOKENS)
                .map_err(backend)?
                .remove(token.as_str())
                .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn add_friend(&self, a: UserId, b: UserId) -> StoreResult<()> {
        self.write(move |txn| {
            if !user_exists(txn, a)? || !user_exists(txn, b)? {
                return Err(StoreError::NotFound);
            }
            let mut friends = txn.open_table(FRIENDS).map_err(backend)?;
            friends.insert((a, b), ()).map_err(backend)?;
            friends.insert((b, a), ()).map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn friends(&self, user: UserId) -> StoreResult<Vec<UserId>> {
        self.read(move |txn| {
            let friends = txn.open_table(FRIENDS).map_err(backend)?;
            let mut out = Vec::new();
            for entry in friends
                .range((user, 0)..=(user, u64::MAX))
                .map_err(backend)?
            {
                out.push(entry.map_err(backend)?.0.value().1);
            }
            Ok(out)
        })
        .await
    }

    async fn create_group(
        &self,
        name: &str,
        members: &[UserId],
        max_members: usize,
    ) -> StoreResult<u64> {
        let list = super::distinct_members(members, max_members)?;
        let name = name.to_string();
        self.write(move |txn| {
            for &m in &list {
                if !user_exists(txn, m)? {
                    return Err(StoreError::NotFound);
                }
            }
            let id = next_counter(txn, "next_group")?;
            txn.open_table(GROUPS)
                .map_err(backend)?
                .insert(id, (name.as_str(), list.clone()))
                .map_err(backend)?;
            Ok(id)
        })
        .await
    }

    async fn group_members(&self, group: u64) -> StoreResult<Option<Vec<UserId>>> {
        if let Some(members) = self.cache.group(group) {
            return Ok(Some(members.to_vec()));
        }
        // Taken before the read transaction begins (see `cache`).
        let epoch = self.cache.epoch();
        let members = self
            .read(move |txn| {
                let groups = txn.open_table(GROUPS).map_err(backend)?;
                Ok(groups.get(group).map_err(backend)?.map(|v| v.value().1))
            })
            .await?;
        if let Some(members) = &members {
            self.cache.put_group(group, members, epoch);
        }
        Ok(members)
    }

    async fn user_exists(&self, user: UserId) -> StoreResult<bool> {
        if self.cache.user_known(user) {
            return Ok(true);
        }
        let exists = self
            .read(move |txn| {
                let users = txn.open_table(USERS).map_err(backend)?;
                Ok(users.get(user).map_err(backend)?.is_some())
            })
            .await?;
        if exists {
            self.cache.put_user(user);
        }
        Ok(exists)
    }

    async fn add_member(&self, group: u64, user: UserId, max_members: usize) -> StoreResult<()> {
        self.write_group(group, move |txn| {
            if !user_exists(txn, user)? {
                return Err(StoreError::NotFound);
            }
            let mut groups = txn.open_table(GROUPS).map_err(backend)?;
            let (name, mut members) = load_group(&groups, group)?;
            if members.contains(&user) {
                return Ok(());
            }
            if members.len() >= max_members {
                return Err(StoreError::GroupFull);
            }
            members.push(user);
            groups
                .insert(group, (name.as_str(), members))
                .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn remove_member(&self, group: u64, user: UserId) -> StoreResult<()> {
        self.write_group(group, move |txn| {
            let mut groups = txn.open_table(GROUPS).map_err(backend)?;
            let (name, mut members) = load_group(&groups, group)?;
            if members.contains(&user) {
                members.retain(|&m| m != user);
                groups
                    .insert(group, (name.as_str(), members))
                    .map_err(backend)?;
            }
            Ok(())
        })
        .await
    }

    async fn accept(&self, msg: NewMessage<'_>) -> StoreResult<Accepted> {
        self.submit_accept(msg).await?.await
    }

    async fn submit_accept(&self, msg: NewMessage<'_>) -> StoreResult<PendingAccept> {
        // The writer takes requests in queue order and gives each message the
        // channel's next id inside its batch, so the order of submission is the
        // order of ids, and one channel's messages share a commit. The writer
        // also answers a resend (while its dedupe record lasts) without writing
        // anything.
        let owned = OwnedMessage {
            channel: msg.channel.to_string(),
            members: msg.members.to_vec(),
            from: msg.from,
            from_device: msg.from_device,
            client_msg_id: msg.client_msg_id.to_string(),
            text: msg.text.to_string(),
            ts: msg.ts,
        };
        let committed = self.enqueue(Kind::Accept, AcceptJob(owned), None).await?;
        Ok(Box::pin(committed))
    }

    async fn history(
        &self,
        channel: &str,
        after: Option<MessageId>,
        before: Option<MessageId>,
        limit: usize,
    ) -> StoreResult<Vec<StoredMessage>> {
        let channel = channel.to_string();
        self.on_tables(Kind::Read, move |t| {
            let messages = &t.messages;
            let lo = after.map_or(1, |a| a.saturating_add(1));
            let hi = before.unwrap_or(u64::MAX);
            let mut out = Vec::with_capacity(limit.min(512));
            if lo >= hi || limit == 0 {
                return Ok(out);
            }
            let range = messages
                .range((channel.as_str(), lo)..(channel.as_str(), hi))
                .map_err(backend)?;
            // With `after`, the first page past it; otherwise the last page before `before`.
            let take = |entry: Result<_, redb::StorageError>| -> StoreResult<StoredMessage> {
                let (k, v): (redb::AccessGuard<'_, (&str, u64)>, redb::AccessGuard<'_, _>) =
                    entry.map_err(backend)?;
                Ok(Arc::new(message_from(&channel, k.value().1, v.value())))
            };
            if after.is_some() {
                for entry in range.take(limit) {
                    out.push(take(entry)?);
                }
            } else {
                for entry in range.rev().take(limit) {
                    out.push(take(entry)?);
                }
                out.reverse();
            }
            Ok(out)
        })
        .await
    }

    async fn inbox_head(&self, user: UserId) -> StoreResult<Seq> {
        self.on_tables(Kind::Read, move |t| t.inbox_head(user))
            .await
    }

    async fn inbox_after(
        &self,
        user: UserId,
        since: Seq,
        limit: usize,
    ) -> StoreResult<Vec<Message>> {
        self.on_tables(Kind::Read, move |t| {
            let mut out = Vec::with_capacity(limit.min(512));
            for (seq, channel, id) in t.inbox_entries(user, since, limit)? {
                let Some(stored) = t.messages.get((channel.as_str(), id)).map_err(backend)? else {
                    return Err(StoreError::Backend(format!(
                        "inbox points at missing {channel}/{id}"
                    )));
                };
                out.push(Message {
                    seq: Some(seq),
                    ..message_from(&channel, id, stored.value())
                });
            }
            Ok(out)
        })
        .await
    }

    async fn set_last_active(&self, user: UserId, at: Millis) -> StoreResult<()> {
        self.on_tables(Kind::Presence, move |t| {
            if t.users.get(user).map_err(backend)?.is_none() {
                return Err(StoreError::NotFound);
            }
            let prev = t
                .last_active
                .get(user)
                .map_err(backend)?
                .map_or(0, |v| v.value());
            if at > prev || prev == 0 {
                t.last_active.insert(user, at.max(prev)).map_err(backend)?;
            }
            Ok(())
        })
        .await
    }

    async fn expire(&self, now: Millis, dedupe_before: Millis) -> StoreResult<Expired> {
        self.write(move |txn| expire_in(txn, now, dedupe_before))
            .await
    }

    async fn flush(&self) -> StoreResult<()> {
        // An empty durable request: its batch commits with fsync after everything
        // queued before it, including presence writes committed without one.
        self.write(|_| Ok(())).await
    }

    fn counters(&self) -> Vec<super::StoreCounter> {
        let mut counters = self.stats.counters();
        counters.extend(self.stats.log_counters());
        counters
    }
}

/// A group's name and members from an open GROUPS table; `NotFound` if absent.
fn load_group(
    groups: &redb::Table<'_, u64, (&str, Vec<u64>)>,
    group: u64,
) -> StoreResult<(String, Vec<UserId>)> {
    match groups.get(group).map_err(backend)? {
        Some(v) => {
            let (name, members) = v.value();
            Ok((name.to_string(), members))
        }
        None => Err(StoreError::NotFound),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens the store in `dir`, waiting for a previous handle's writer thread
    /// to let go of the database file.
    async fn reopen(dir: &Path) -> EmbeddedStore {
        for _ in 0..200 {
            match EmbeddedStore::open(dir) {
                Ok(store) => return store,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(25)).await,
            }
        }
        EmbeddedStore::open(dir).expect("reopen")
    }

    fn message<'a>(
        channel: &'a str,
        members: &'a [UserId],
        from: UserId,
        cmid: &'a str,
    ) -> NewMessage<'a> {
        NewMessage {
            channel,
            members,
            from,
            from_device: 1,
            client_msg_id: cmid,
            text: "hi",
            ts: 1_000,
        }
    }

    /// A crash after the log's sync and before the checkpoint: the records are
    /// run again on open, with the ids and seqs their senders were acked with,
    /// and records the checkpoint already holds are skipped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn accepts_in_the_log_are_replayed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let (alice, bob, group);
        {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            alice = store.create_user("alice", "h").await.unwrap();
            bob = store.create_user("bob", "h").await.unwrap();
            group = store.create_group("g", &[alice, bob], 10).await.unwrap();
            let g = format!("g:{group}");
            let a = store.accept(message(&g, &[], alice, "c1")).await.unwrap();
            assert_eq!((a.id, a.sender_seq), (1, 1));
            store.flush().await.unwrap();
        }
        let g = format!("g:{group}");
        let dm = format!("dm:{alice}:{bob}");
        // What a crashed run left: a log whose first record the checkpoint holds.
        let stored_lsn = {
            let store = reopen(dir.path()).await;
            let lsn = store
                .db
                .begin_read()
                .unwrap()
                .open_table(META)
                .unwrap()
                .get(WAL_LSN)
                .unwrap()
                .map_or(0, |v| v.value());
            drop(store);
            lsn
        };
        // Wait until the writer has let go, then write the log by hand.
        drop(reopen(dir.path()).await);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let owned = |channel: &str, members: Vec<UserId>, from, cmid: &str| OwnedMessage {
            channel: channel.to_string(),
            members,
            from,
            from_device: 1,
            client_msg_id: cmid.to_string(),
            text: format!("text {cmid}"),
            ts: 2_000,
        };
        {
            let mut log =
                wal::Wal::create(&dir.path().join("chatscale.wal"), stored_lsn - 1).unwrap();
            // Already in the checkpoint (its number is the stored one): skipped.
            log.push(&owned(&g, vec![], alice, "stale"));
            log.push(&owned(&g, vec![], bob, "c2"));
            log.push(&owned(&dm, vec![alice, bob], alice, "c3"));
            log.sync().unwrap();
        }
        let store = reopen(dir.path()).await;
        let history = store.history(&g, None, None, 10).await.unwrap();
        let got: Vec<(u64, &str)> = history
            .iter()
            .map(|m| (m.id, m.client_msg_id.as_str()))
            .collect();
        assert_eq!(got, [(1, "c1"), (2, "c2")]);
        let inbox = store.inbox_after(alice, 0, 10).await.unwrap();
        let got: Vec<(Option<u64>, &str)> = inbox
            .iter()
            .map(|m| (m.seq, m.client_msg_id.as_str()))
            .collect();
        assert_eq!(got, [(Some(1), "c1"), (Some(2), "c2"), (Some(3), "c3")]);
        // The dedupe record came back too: a resend is answered as before.
        let again = store
            .accept(message(&dm, &[alice, bob], alice, "c3"))
            .await
            .unwrap();
        assert!(again.duplicate);
        assert_eq!(
            (again.channel.as_str(), again.id, again.sender_seq),
            (dm.as_str(), 1, 3)
        );
        // And the log was emptied: what it held is checkpointed.
        assert!(wal::read(&dir.path().join("chatscale.wal"))
            .unwrap()
            .is_empty());
    }

    /// A database written before inbox runs: its per-entry rows are read
    /// first, then the runs and the transaction's pending entries, in seq order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn old_inbox_rows_and_new_runs_read_as_one_inbox() {
        let dir = tempfile::tempdir().unwrap();
        let (alice, bob, group);
        {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            alice = store.create_user("alice", "h").await.unwrap();
            bob = store.create_user("bob", "h").await.unwrap();
            group = store.create_group("g", &[alice, bob], 10).await.unwrap();
        }
        let g = format!("g:{group}");
        // Two messages as the old layout stored them.
        drop(reopen(dir.path()).await);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        {
            let path = dir.path().join("chatscale.redb");
            let mut db = Database::create(&path);
            for _ in 0..200 {
                if db.is_ok() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(25));
                db = Database::create(&path);
            }
            let db = db.unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut messages = txn.open_table(MESSAGES).unwrap();
                let mut inbox = txn.open_table(INBOX).unwrap();
                let mut heads = txn.open_table(INBOX_HEADS).unwrap();
                for id in 1..=2u64 {
                    let cmid = format!("old{id}");
                    messages
                        .insert((g.as_str(), id), (bob, 1, 500, cmid.as_str(), "old"))
                        .unwrap();
                    for user in [alice, bob] {
                        inbox.insert((user, id), (g.as_str(), id)).unwrap();
                        heads.insert(user, id).unwrap();
                    }
                }
                txn.open_table(CHANNEL_HEADS)
                    .unwrap()
                    .insert(g.as_str(), 2)
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        let store = reopen(dir.path()).await;
        let a = store.accept(message(&g, &[], bob, "new3")).await.unwrap();
        assert_eq!((a.id, a.sender_seq), (3, 3));
        let seqs = |inbox: Vec<Message>| -> Vec<(u64, String)> {
            inbox
                .into_iter()
                .map(|m| (m.seq.unwrap(), m.client_msg_id))
                .collect()
        };
        let all = vec![
            (1, "old1".to_string()),
            (2, "old2".into()),
            (3, "new3".into()),
        ];
        // Before the checkpoint (the entry is pending) and after it (a run).
        for _ in 0..2 {
            assert_eq!(seqs(store.inbox_after(alice, 0, 10).await.unwrap()), all);
            assert_eq!(
                seqs(store.inbox_after(alice, 1, 1).await.unwrap()),
                all[1..2]
            );
            assert_eq!(
                seqs(store.inbox_after(alice, 2, 10).await.unwrap()),
                all[2..]
            );
            assert_eq!(store.inbox_head(alice).await.unwrap(), 3);
            store.flush().await.unwrap();
        }
        let b = store.accept(message(&g, &[], bob, "new4")).await.unwrap();
        assert_eq!((b.id, b.sender_seq), (4, 4));
        let inbox = seqs(store.inbox_after(alice, 2, 10).await.unwrap());
        assert_eq!(inbox, [(3, "new3".to_string()), (4, "new4".into())]);
    }
}
