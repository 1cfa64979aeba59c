//! Storage: the domain-level operations the chat service needs, behind one trait,
//! and the backends that implement it.
//!
//! The trait speaks the service's language (accounts, devices, friends, groups,
//! "accept a message", history ranges, inbox reads after a cursor, presence
//! timestamps), not a raw key-value API, so that each backend can implement the
//! hot operation, [`Store::accept`], atomically in its own best way (a mutex, a
//! transaction, a Lua script). Every backend passes the same conformance suite
//! (`tests/conformance.rs` in this crate) and runs in the same benchmarks.
//!
//! A backend is chosen at start-up from the `--storage` URL by [`open`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;

use crate::protocol::{DeviceId, Message, MessageId, Millis, Seq, UserId};

pub mod embedded;
pub mod memory;
pub mod postgres;
pub mod redis;

/// Failures of storage operations. The domain outcomes (`Conflict`, `GroupFull`,
/// `NotFound`) are answers the caller maps to protocol errors; `Backend` is a
/// failure of the storage system itself.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("already exists")]
    Conflict,
    #[error("the group would pass its member limit")]
    GroupFull,
    #[error("not found")]
    NotFound,
    /// The sender is not (any more) a member of the group it sends to.
    #[error("not a member of the channel")]
    NotMember,
    /// The backend's queue of waiting writes is full: the caller is answered at
    /// once (`overloaded`) rather than made to wait without limit.
    #[error("storage is backed up: its write queue is full")]
    Overloaded,
    #[error("storage backend failed: {0}")]
    Backend(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// An account as stored, with its password hash (never the password).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub id: UserId,
    pub username: String,
    pub password_hash: String,
}

/// The public part of an account, with its last activity time (if it ever was active).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub id: UserId,
    pub username: String,
    pub last_active_at: Option<Millis>,
}

/// The device a bearer token belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenOwner {
    pub user_id: UserId,
    pub device_id: DeviceId,
}

/// A message to accept. `members` is every member of the channel as the caller
/// saw it (the sender included). For a group channel (`g:N`) the store does not
/// trust that list: inside the atomic accept it reads the group's members as they
/// are now, answers `NotMember` if the sender is not among them (after the dedupe
/// check, so a resend of an accepted message still gets its ack), and appends the
/// message to those members' inboxes. So a member removed concurrently cannot
/// slip one more message in or out. A `dm:A:B` channel's members are fixed.
#[derive(Debug, Clone, Copy)]
pub struct NewMessage<'a> {
    pub channel: &'a str,
    pub members: &'a [UserId],
    pub from: UserId,
    pub from_device: DeviceId,
    pub client_msg_id: &'a str,
    pub text: &'a str,
    pub ts: Millis,
}

/// The outcome of [`Store::accept`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The channel the message was stored in (for a duplicate: the first one's).
    pub channel: String,
    pub id: MessageId,
    pub ts: Millis,
    /// The sender's own inbox sequence for the message.
    pub sender_seq: Seq,
    /// `(member, that member's inbox seq)` for every member, the sender included.
    /// Empty for a duplicate: the first send already delivered it.
    pub recipients: Vec<(UserId, Seq)>,
    /// True when `(from, client_msg_id)` was seen before: nothing new was stored.
    pub duplicate: bool,
}

/// A stored message. Shared (`Arc`) so that inboxes and fan-out need no copies.
pub type StoredMessage = Arc<Message>;

/// An accept whose place in its channel is fixed but which may not be durable
/// yet (see [`Store::submit_accept`]): resolves to what [`Store::accept`] returns.
pub type PendingAccept = Pin<Box<dyn Future<Output = StoreResult<Accepted>> + Send>>;

/// The chat service's storage.
///
/// Every method is atomic on its own. Implementations must be cheap to share
/// (`Arc<dyn Store>`) and safe to call from many tasks at once.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A short name for logs, metrics and reports: `memory`, `embedded`, ...
    fn kind(&self) -> &'static str;

    /// What an acknowledged message survives, in words, for docs and reports
    /// (for example "process crash and power loss (fsync per commit batch)").
    fn durability(&self) -> String;

    // -- accounts and devices ------------------------------------------------

    /// Creates an account. `Conflict` if the name is taken.
    async fn create_user(&self, username: &str, password_hash: &str) -> StoreResult<UserId>;
    async fn user_by_name(&self, username: &str) -> StoreResult<Option<UserRecord>>;
    /// The accounts among `ids` that exist, in the order asked; unknown ids are left out.
    async fn users(&self, ids: &[UserId]) -> StoreResult<Vec<UserInfo>>;
    /// Whether account `user` exists (a send to a dm checks its other member).
    /// Accounts are never removed, so a backend may remember a yes.
    async fn user_exists(&self, user: UserId) -> StoreResult<bool> {
        Ok(!self.users(&[user]).await?.is_empty())
    }
    /// The device a login lands on: the user's device called `name` if it has one,
    /// otherwise a new device (named `name`, if given).
    async fn login_device(&self, user: UserId, name: Option<&str>) -> StoreResult<DeviceId>;
    async fn put_token(&self, token: &str, owner: TokenOwner) -> StoreResult<()>;
    async fn token_owner(&self, token: &str) -> StoreResult<Option<TokenOwner>>;
    /// Makes a token stop working. Revoking an unknown token is not an error.
    async fn revoke_token(&self, token: &str) -> StoreResult<()>;

    // -- friends and groups --------------------------------------------------

    /// Makes `a` and `b` friends of each other (idempotent).
    async fn add_friend(&self, a: UserId, b: UserId) -> StoreResult<()>;
    async fn friends(&self, user: UserId) -> StoreResult<Vec<UserId>>;
    /// Creates a group with these members (deduplicated, order kept) and returns
    /// its number N (channel `g:N`). `GroupFull` past `max_members`.
    async fn create_group(
        &self,
        name: &str,
        members: &[UserId],
        max_members: usize,
    ) -> StoreResult<u64>;
    /// The members of group N, or `None` if there is no such group.
    async fn group_members(&self, group: u64) -> StoreResult<Option<Vec<UserId>>>;
    /// Adds a member (idempotent). `NotFound` for an unknown group, `GroupFull`
    /// when it would pass `max_members`.
    async fn add_member(&self, group: u64, user: UserId, max_members: usize) -> StoreResult<()>;
    /// Removes a member (idempotent). `NotFound` for an unknown group.
    async fn remove_member(&self, group: u64, user: UserId) -> StoreResult<()>;

    // -- messages ------------------------------------------------------------

    /// Accepts a message, atomically: dedupes by `(from, client_msg_id)`, takes the
    /// channel's next id, stores the message, and appends it to every member's
    /// inbox with that member's next seq. Returns once the message is as durable
    /// as this backend makes anything.
    async fn accept(&self, msg: NewMessage<'_>) -> StoreResult<Accepted>;
    /// Starts an [`Store::accept`] and returns once the message's place in its
    /// channel is fixed: its id comes after those of every accept submitted to
    /// this store before this call returned. The returned future resolves once
    /// the message is as durable as `accept` makes it. A caller that submits one
    /// channel's messages one at a time (the chat service does, under the
    /// channel's lock) so keeps them in order without waiting for each commit,
    /// and a busy channel's messages can share one. The default runs the whole
    /// accept before returning.
    async fn submit_accept(&self, msg: NewMessage<'_>) -> StoreResult<PendingAccept> {
        let accepted = self.accept(msg).await;
        Ok(Box::pin(std::future::ready(accepted)))
    }
    /// A page of a channel's history, ascending by id: with `after`, the first
    /// `limit` messages with `after < id` (and `id < before`, if given); without
    /// it, the last `limit` messages with `id < before` (or the newest ones).
    async fn history(
        &self,
        channel: &str,
        after: Option<MessageId>,
        before: Option<MessageId>,
        limit: usize,
    ) -> StoreResult<Vec<StoredMessage>>;
    /// The highest inbox seq of a user (0 for an empty inbox).
    async fn inbox_head(&self, user: UserId) -> StoreResult<Seq>;
    /// Up to `limit` inbox entries with `seq > since`, ascending; each message
    /// carries that user's `seq`.
    async fn inbox_after(
        &self,
        user: UserId,
        since: Seq,
        limit: usize,
    ) -> StoreResult<Vec<Message>>;

    // -- presence ------------------------------------------------------------

    async fn set_last_active(&self, user: UserId, at: Millis) -> StoreResult<()>;

    // -- growth ----------------------------------------------------------------

    /// Removes what has run out: tokens whose expiry (in the token) is at or
    /// before `now`, and dedupe records of messages sent before `dedupe_before`
    /// (a resend after that is a new message). Called periodically.
    async fn expire(&self, now: Millis, dedupe_before: Millis) -> StoreResult<Expired>;

    /// Makes everything accepted so far durable (called at shutdown).
    async fn flush(&self) -> StoreResult<()>;

    /// Counters the backend keeps about its own work (commits, writes per
    /// commit, time in commits), for `/metrics`. None by default.
    fn counters(&self) -> Vec<StoreCounter> {
        Vec::new()
    }
}

/// One counter of [`Store::counters`]: a Prometheus name (without `_total`),
/// its help text and its value.
#[derive(Debug, Clone, Copy)]
pub struct StoreCounter {
    pub name: &'static str,
    pub help: &'static str,
    pub value: u64,
}

/// What a group-commit writer (embedded, PostgreSQL) counts: commits, the
/// writes they held, and the time spent committing (the fsync and, for
/// PostgreSQL, the round trips), so `/metrics` shows batch sizes under load.
#[derive(Debug, Default)]
pub(crate) struct CommitStats {
    pub(crate) commits: std::sync::atomic::AtomicU64,
    pub(crate) writes: std::sync::atomic::AtomicU64,
    pub(crate) commit_micros: std::sync::atomic::AtomicU64,
    pub(crate) busy_micros: std::sync::atomic::AtomicU64,
    /// Write-ahead log syncs (embedded): one per batch of accepts.
    pub(crate) log_syncs: std::sync::atomic::AtomicU64,
    pub(crate) log_sync_micros: std::sync::atomic::AtomicU64,
}

impl CommitStats {
    /// Counts one batch of `writes` writes: `busy` from its start to the end of
    /// its commit, `commit` the commit alone.
    pub(crate) fn batch(
        &self,
        writes: usize,
        busy: std::time::Duration,
        commit: std::time::Duration,
    ) {
        use std::sync::atomic::Ordering::Relaxed;
        self.commits.fetch_add(1, Relaxed);
        self.writes.fetch_add(writes as u64, Relaxed);
        self.commit_micros
            .fetch_add(commit.as_micros() as u64, Relaxed);
        self.busy_micros.fetch_add(busy.as_micros() as u64, Relaxed);
    }

    /// Counts one commit holding `writes` writes that took `took` (all of it
    /// busy time).
    pub(crate) fn checkpointed(&self, writes: usize, took: std::time::Duration) {
        self.batch(writes, took, took);
    }

    /// Counts time the writer spent running requests, outside commits and syncs.
    pub(crate) fn busy(&self, took: std::time::Duration) {
        self.busy_micros.fetch_add(
            took.as_micros() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Counts one sync of the write-ahead log (busy time too).
    pub(crate) fn logged(&self, took: std::time::Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        self.log_syncs.fetch_add(1, Relaxed);
        self.log_sync_micros
            .fetch_add(took.as_micros() as u64, Relaxed);
    }

    /// The write-ahead log's counters, for a backend that keeps one.
    pub(crate) fn log_counters(&self) -> Vec<StoreCounter> {
        use std::sync::atomic::Ordering::Relaxed;
        vec![
            StoreCounter {
                name: "chatscale_storage_log_syncs",
                help: "Write-ahead log appends synced to disk (one per batch of accepts between checkpoints)",
                value: self.log_syncs.load(Relaxed),
            },
            StoreCounter {
                name: "chatscale_storage_log_sync_microseconds",
                help: "Time the storage writer spent appending to and syncing its write-ahead log, in microseconds",
                value: self.log_sync_micros.load(Relaxed),
            },
        ]
    }

    pub(crate) fn counters(&self) -> Vec<StoreCounter> {
        use std::sync::atomic::Ordering::Relaxed;
        vec![
            StoreCounter {
                name: "chatscale_storage_commits",
                help: "Group commits (one transaction, one fsync) the storage writer made",
                value: self.commits.load(Relaxed),
            },
            StoreCounter {
                name: "chatscale_storage_committed_writes",
                help: "Writes (accepts and other requests) those commits held: divided by the commits, the batch size",
                value: self.writes.load(Relaxed),
            },
            StoreCounter {
                name: "chatscale_storage_commit_microseconds",
                help: "Time the storage writer spent committing (fsync included), in microseconds",
                value: self.commit_micros.load(Relaxed),
            },
            StoreCounter {
                name: "chatscale_storage_writer_busy_microseconds",
                help: "Time the storage writer spent running batches, commits included, in microseconds",
                value: self.busy_micros.load(Relaxed),
            },
        ]
    }
}

/// What one [`Store::expire`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expired {
    pub tokens: u64,
    pub dedupe: u64,
}

/// The group number of a `g:N` channel, for the membership check in `accept`.
pub(crate) fn group_of(channel: &str) -> Option<u64> {
    match crate::protocol::ChannelId::parse(channel) {
        Some(crate::protocol::ChannelId::Group(n)) => Some(n),
        _ => None,
    }
}

/// A group's member list as every backend stores it: duplicates removed (first
/// occurrence kept, order kept), `GroupFull` past `max_members`.
pub(crate) fn distinct_members(members: &[UserId], max_members: usize) -> StoreResult<Vec<UserId>> {
    let mut list: Vec<UserId> = Vec::with_capacity(members.len());
    for &m in members {
        if !list.contains(&m) {
            list.push(m);
        }
    }
    if list.len() > max_members {
        return Err(StoreError::GroupFull);
    }
    Ok(list)
}

/// Errors of [`open`]: the `--storage` URL is not one we can use.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(
        "unknown storage {0:?}: use memory, embedded:DIR, redis://HOST:PORT, redis-cluster://HOST:PORT or postgres://..."
    )]
    Unknown(String),
    #[error("cannot open storage {url:?}: {reason}")]
    Failed { url: String, reason: String },
}

/// Opens the backend that a `--storage` URL names.
pub async fn open(url: &str) -> Result<Arc<dyn Store>, OpenError> {
    match url {
        "memory" | "memory:" => Ok(Arc::new(memory::MemoryStore::new())),
        _ if is_redis_url(url) => {
            let store = redis::RedisStore::open(url)
                .await
                .map_err(|e| failed(url, e))?;
            Ok(Arc::new(store))
        }
        _ if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            let store = postgres::PostgresStore::open(url)
                .await
                .map_err(|e| failed(url, e))?;
            Ok(Arc::new(store))
        }
        _ if url.starts_with("embedded:") => {
            let dir = &url["embedded:".len()..];
            if dir.is_empty() {
                return Err(failed(
                    url,
                    "embedded: needs a directory, as in embedded:./chatscale-data",
                ));
            }
            let store = embedded::EmbeddedStore::open(std::path::Path::new(dir))
                .map_err(|e| failed(url, e))?;
            Ok(Arc::new(store))
        }
        other => Err(OpenError::Unknown(other.to_string())),
    }
}

fn failed(url: &str, reason: impl std::fmt::Display) -> OpenError {
    let reason = reason.to_string();
    // The backend's own words, without the generic "storage backend failed: ".
    let prefix = StoreError::Backend(String::new()).to_string();
    OpenError::Failed {
        url: redact(url),
        reason: reason.strip_prefix(&prefix).unwrap_or(&reason).to_string(),
    }
}

/// True for the URLs of the Redis backend: one Redis or a Redis Cluster.
pub fn is_redis_url(url: &str) -> bool {
    [
        "redis://",
        "rediss://",
        "redis-cluster://",
        "rediss-cluster://",
    ]
    .iter()
    .any(|scheme| url.starts_with(scheme))
}

/// True for a `--storage` value [`open`] knows (it may still fail to open).
pub fn is_known_url(url: &str) -> bool {
    matches!(url, "memory" | "memory:")
        || url.starts_with("embedded:")
        || is_redis_url(url)
        || url.starts_with("postgres://")
        || url.starts_with("postgresql://")
}

/// A URL with its password (if any) replaced by `***`, for messages and logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// A plain sentence for a failure to reach a service at `url` ("connection refused
/// to redis://127.0.0.1:1"), from an error and its causes, rather than the
/// driver's debug form.
pub fn unreachable(url: &str, err: &(dyn std::error::Error + 'static)) -> String {
    let mut all = format!("{err} {err:?}");
    let mut source = err.source();
    while let Some(cause) = source {
        all.push_str(&format!(" {cause} {cause:?}"));
        source = cause.source();
    }
    let url = redact(url);
    let lower = all.to_lowercase();
    if lower.contains("connection refused") || lower.contains("connectionrefused") {
        format!("connection refused to {url}")
    } else if lower.contains("timed out") || lower.contains("timeout") {
        format!("timed out connecting to {url}")
    } else if lower.contains("lookup")
        || lower.contains("resolve")
        || lower.contains("name or service")
    {
        format!("cannot resolve the host of {url}")
    } else {
        format!("cannot connect to {url}: {err}")
    }
}

/// Splits our own `name=value` query parameter off a backend URL (the drivers
/// reject parameters they do not know): returns the URL without it, and its value.
pub(crate) fn take_query_param(url: &str, name: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_string(), None);
    };
    let mut value = None;
    let rest: Vec<&str> = query
        .split('&')
        .filter(|kv| match kv.split_once('=') {
            Some((k, v)) if k == name => {
                value = Some(v.to_string());
                false
            }
            _ => true,
        })
        .collect();
    if rest.is_empty() {
        (base.to_string(), value)
    } else {
        (format!("{base}?{}", rest.join("&")), value)
    }
}
