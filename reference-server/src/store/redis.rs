//! The Redis backend (`--storage redis://HOST:PORT[/DB][?prefix=NAME]`, or a Redis
//! Cluster: `redis-cluster://HOST:PORT?node=HOST:PORT&node=...[&prefix=NAME]`): the
//! shared store of a cluster of chat nodes, through the `fred` client.
//!
//! **One code path for one Redis and a Redis Cluster.** Every key carries a hash tag
//! ([`keys`]): a user's keys share a slot, a channel's keys share a slot (a group's
//! name and members are in its channel's). Every Lua script receives its keys in `KEYS`, all in one slot,
//! so Redis runs it atomically on whichever node owns that slot. An operation whose
//! keys live in several slots is a short sequence of single-slot steps in an order
//! that is safe to stop anywhere: [`accept`] (channel, then members, then finalize)
//! explains the hot one, which on a single Redis (not a cluster) runs as one script
//! instead, one round trip, writing the same keys; signing up writes the account before claiming the name, a
//! new group takes its number before writing its members, a friendship adds both
//! directions (idempotent, so a retry completes a half-done one). Pipelines group the
//! steps' commands, so a step costs one round trip per Redis node it touches.
//!
//! Ids and seqs are gap-free, so every read computes the exact fields it needs and
//! fetches them with one `HMGET`, never a scan. `docs/storage.md` has the key table.
//!
//! Durability is the server's: with `appendonly yes` and `appendfsync always` an
//! acked message was fsynced to the append-only file (Redis fsyncs once per event
//! loop turn, so concurrent accepts share it); `durability()` reports the setting
//! read with `CONFIG GET` at open.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use fred::prelude::*;
use serde::{Deserialize, Serialize};

mod accept;
mod connection;
mod dedupe;
mod keys;
pub(crate) mod scripts;

pub(crate) use connection::connect;
pub use connection::COMMAND_TIMEOUT;
use dedupe::DedupeWindow;
pub(crate) use keys::Keys;
use scripts::{Call, Scripts};

use super::{
    Accepted, Expired, NewMessage, Store, StoreError, StoreResult, StoredMessage, TokenOwner,
    UserInfo, UserRecord,
};
use crate::protocol::{DeviceId, Message, MessageId, Millis, Seq, UserId};

const POOL_SIZE: usize = 4;

/// The fields of a message that are not in its key (JSON in `P:{c:channel}:msgs`).
#[derive(Serialize, Deserialize)]
struct Payload {
    from: UserId,
    from_device: DeviceId,
    client_msg_id: String,
    text: String,
    ts: Millis,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("redis: {e}"))
}

/// The Redis-backed store: a small pool of multiplexed connections.
pub struct RedisStore {
    pool: Pool,
    /// A Redis Cluster: `accept` runs in single-slot steps (see [`accept`]).
    clustered: bool,
    keys: Keys,
    scripts: Arc<Scripts>,
    durability: String,
    /// What the accept scripts need to expire dedupe records ([`dedupe`]).
    dedupe: DedupeWindow,
}

impl RedisStore {
    /// Connects to `redis://HOST:PORT[/DB][?prefix=NAME]` (prefix default `cs`), or to
    /// a Redis Cluster with `redis-cluster://HOST:PORT[?node=HOST:PORT...]`.
    pub async fn open(url: &str) -> StoreResult<Self> {
        let (base, prefix) = super::take_query_param(url, "prefix");
        let prefix = prefix.unwrap_or_else(|| "cs".to_string());
        if prefix.contains(['{', '}']) {
            return Err(StoreError::Backend(
                "redis: ?prefix= must not contain braces (they are hash tags)".into(),
            ));
        }
        let pool = connection::connect(&base, POOL_SIZE)
            .await
            .map_err(StoreError::Backend)?;
        let durability = connection::durability(&pool).await;
        let scripts = Arc::new(Scripts::new());
        scripts.load(pool.next()).await?;
        tracing::info!(url = %base, prefix = %prefix, durability = %durability, "redis storage open");
        Ok(Self {
            clustered: pool.next().is_clustered(),
            pool,
            keys: Keys::new(&prefix),
            scripts,
            durability,
            dedupe: DedupeWindow::default(),
        })
    }

    fn client(&self) -> &Client {
        self.pool.next()
    }

    /// Runs one script.
    async fn run(
        &self,
        script: &fred::types::scripts::Script,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> StoreResult<Value> {
        self.scripts
            .run(self.client(), Call { script, keys, args })
            .await
    }

    /// 1 for each key of `keys` that exists, 0 otherwise (one pipeline).
    async fn exist(&self, keys: Vec<String>) -> StoreResult<Vec<bool>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let pipe = self.client().pipeline();
        for k in keys {
            let _: () = pipe.exists(k).await.map_err(backend)?;
        }
        let found: Vec<i64> = pipe.all().await.map_err(backend)?;
        Ok(found.into_iter().map(|n| n == 1).collect())
    }

    async fn users_exist(&self, ids: &[UserId]) -> StoreResult<bool> {
        let keys = ids.iter().map(|&id| self.keys.user(id)).collect();
        Ok(self.exist(keys).await?.into_iter().all(|e| e))
    }

    async fn next_counter(&self, name: &str) -> StoreResult<u64> {
        self.client()
            .hincrby(self.keys.counters(), name, 1)
            .await
            .map_err(backend)
    }

    /// Deletes every key under this store's prefix, on every node (tests and
    /// benches use a fresh prefix each).
    pub async fn clear(&self) -> StoreResult<()> {
        use futures_util::TryStreamExt;
        let client = self.client();
        let pattern = format!("{}:*", self.keys.prefix());
        let keys: Vec<Key> = if client.is_clustered() {
            client
                .scan_cluster_buffered(pattern, Some(1000), None)
                .try_collect()
                .await
        } else {
            client
                .scan_buffered(pattern, Some(1000), None)
                .try_collect()
                .await
        }
        .map_err(backend)?;
        // One key per DEL: in a cluster the keys live in many slots.
        for chunk in keys.chunks(1000) {
            let pipe = client.pipeline();
            for k in chunk {
                let _: () = pipe.del(k.clone()).await.map_err(backend)?;
            }
            let _: Vec<i64> = pipe.all().await.map_err(backend)?;
        }
        Ok(())
    }
}

pub(crate) fn int(v: &Value) -> StoreResult<u64> {
    v.as_i64()
        .and_then(|i| u64::try_from(i).ok())
        .or_else(|| v.as_string().and_then(|s| s.parse().ok()))
        .ok_or_else(|| StoreError::Backend(format!("redis: expected an integer, got {v:?}")))
}

pub(crate) fn text(v: &Value) -> StoreResult<String> {
    v.as_string()
        .ok_or_else(|| StoreError::Backend(format!("redis: expected a string, got {v:?}")))
}

fn message(channel: &str, id: MessageId, json: &Value) -> StoreResult<Message> {
    let p: Payload = serde_json::from_str(&text(json)?).map_err(backend)?;
    Ok(Message {
        channel: channel.to_string(),
        id,
        seq: None,
        from: p.from,
        from_device: p.from_device,
        client_msg_id: p.client_msg_id,
        text: p.text,
        ts: p.ts,
    })
}

fn arg(v: impl ToString) -> Value {
    Value::from(v.to_string())
}

#[async_trait]
impl Store for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn durability(&self) -> String {
        self.durability.clone()
    }

    async fn create_user(&self, username: &str, password_hash: &str) -> StoreResult<UserId> {
        // The account first, then the name: a crash in between leaves an unnamed
        // account nobody can log into, never a name without an account.
        let id = self.next_counter("user").await?;
        let client = self.client();
        let _: () = client
            .hset(
                self.keys.user(id),
                [("name", username), ("hash", password_hash)],
            )
            .await
            .map_err(backend)?;
        let claimed: Option<String> = client
            .set(
                self.keys.username(username),
                id,
                None,
                Some(SetOptions::NX),
                false,
            )
            .await
            .map_err(backend)?;
        if claimed.is_none() {
            let _: i64 = client.del(self.keys.user(id)).await.map_err(backend)?;
            return Err(StoreError::Conflict);
        }
        Ok(id)
    }

    async fn user_by_name(&self, username: &str) -> StoreResult<Option<UserRecord>> {
        let client = self.client();
        let id: Option<u64> = client
            .get(self.keys.username(username))
            .await
            .map_err(backend)?;
        let Some(id) = id else { return Ok(None) };
        let hash: Option<String> = client
            .hget(self.keys.user(id), "hash")
            .await
            .map_err(backend)?;
        Ok(hash.map(|password_hash| UserRecord {
            id,
            username: username.to_string(),
            password_hash,
        }))
    }

    async fn users(&self, ids: &[UserId]) -> StoreResult<Vec<UserInfo>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let pipe = self.client().pipeline();
        for &id in ids {
            let _: () = pipe
                .hmget(self.keys.user(id), vec!["name", "active"])
                .await
                .map_err(backend)?;
        }
        let rows: Vec<Vec<Option<String>>> = pipe.all().await.map_err(backend)?;
        Ok(ids
            .iter()
            .zip(rows)
            .filter_map(|(&id, row)| {
                let mut row = row.into_iter();
                let username = row.next().flatten()?;
                let last_active_at = row.next().flatten().and_then(|s| s.parse().ok());
                Some(UserInfo {
                    id,
                    username,
                    last_active_at,
                })
            })
            .collect())
    }

    async fn login_device(&self, user: UserId, name: Option<&str>) -> StoreResult<DeviceId> {
        let client = self.client();
        let devices = self.keys.user_part(user, "dev");
        let pipe = client.pipeline();
        let _: () = pipe.exists(self.keys.user(user)).await.map_err(backend)?;
        let _: () = pipe
            .hget(&devices, name.unwrap_or(""))
            .await
            .map_err(backend)?;
        let (exists, known): (i64, Option<u64>) = pipe.all().await.map_err(backend)?;
        if exists == 0 {
            return Err(StoreError::NotFound);
        }
        if let (Some(id), Some(_)) = (known, name) {
            return Ok(id);
        }
        let id = self.next_counter("device").await?;
        let Some(name) = name else { return Ok(id) };
        // Two logins racing with one name: the first claim wins, the other reads it.
        let claimed: bool = client.hsetnx(&devices, name, id).await.map_err(backend)?;
        if claimed {
            return Ok(id);
        }
        let winner: Option<u64> = client.hget(&devices, name).await.map_err(backend)?;
        winner.ok_or_else(|| StoreError::Backend("redis: device claim vanished".into()))
    }

    async fn put_token(&self, token: &str, owner: TokenOwner) -> StoreResult<()> {
        let value = format!("{}:{}", owner.user_id, owner.device_id);
        // Redis removes the key itself when the token expires.
        let expiry = match crate::auth::token_expiry(token) {
            Some(0) | None => None,
            Some(at) => Some(Expiration::PXAT(at as i64)),
        };
        self.client()
            .set::<(), _, _>(self.keys.token(token), value, expiry, None, false)
            .await
            .map_err(backend)
    }

    async fn token_owner(&self, token: &str) -> StoreResult<Option<TokenOwner>> {
        let value: Option<String> = self
            .client()
            .get(self.keys.token(token))
            .await
            .map_err(backend)?;
        let Some(value) = value else { return Ok(None) };
        let parsed = value
            .split_once(':')
            .and_then(|(u, d)| Some((u.parse().ok()?, d.parse().ok()?)));
        match parsed {
            Some((user_id, device_id)) => Ok(Some(TokenOwner { user_id, device_id })),
            None => Err(StoreError::Backend(format!(
                "redis: bad token record {value:?}"
            ))),
        }
    }

    async fn revoke_token(&self, token: &str) -> StoreResult<()> {
        let _: i64 = self
            .client()
            .del(self.keys.token(token))
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn add_friend(&self, a: UserId, b: UserId) -> StoreResult<()> {
        if !self.users_exist(&[a, b]).await? {
            return Err(StoreError::NotFound);
        }
        // Both directions in one pipeline; each SADD is idempotent, so a retry
        // completes a friendship a failure left one-sided.
        let pipe = self.client().pipeline();
        let _: () = pipe
            .sadd(self.keys.user_part(a, "fr"), b)
            .await
            .map_err(backend)?;
        let _: () = pipe
            .sadd(self.keys.user_part(b, "fr"), a)
            .await
            .map_err(backend)?;
        let _: Vec<i64> = pipe.all().await.map_err(backend)?;
        Ok(())
    }

    async fn friends(&self, user: UserId) -> StoreResult<Vec<UserId>> {
        let mut ids: Vec<UserId> = self
            .client()
            .smembers(self.keys.user_part(user, "fr"))
            .await
            .map_err(backend)?;
        ids.sort_unstable();
        Ok(ids)
    }

    async fn create_group(
        &self,
        name: &str,
        members: &[UserId],
        max_members: usize,
    ) -> StoreResult<u64> {
        let list = super::distinct_members(members, max_members)?;
        if !self.users_exist(&list).await? {
            return Err(StoreError::NotFound);
        }
        let group = self.next_counter("group").await?;
        let mut args = vec![arg(name)];
        args.extend(list.iter().map(arg));
        self.run(
            &self.scripts.create_group,
            self.keys.group_keys(group),
            args,
        )
        .await?;
        Ok(group)
    }

    async fn group_members(&self, group: u64) -> StoreResult<Option<Vec<UserId>>> {
        let reply = self
            .run(
                &self.scripts.members,
                self.keys.group_keys(group),
                vec![arg("")],
            )
            .await?
            .into_array();
        match reply.split_first() {
            Some((flag, members)) if int(flag)? == 1 => {
                Ok(Some(members.iter().map(int).collect::<StoreResult<_>>()?))
            }
            _ => Ok(None),
        }
    }

    async fn add_member(&self, group: u64, user: UserId, max_members: usize) -> StoreResult<()> {
        if !self.users_exist(&[user]).await? {
            return Err(StoreError::NotFound);
        }
        let reply = self
            .run(
                &self.scripts.add_member,
                self.keys.group_keys(group),
                vec![arg(user), arg(max_members)],
            )
            .await?;
        match reply.as_i64() {
            Some(1) => Ok(()),
            Some(0) => Err(StoreError::NotFound),
            Some(-1) => Err(StoreError::GroupFull),
            _ => Err(StoreError::Backend(format!(
                "redis: add_member answered {reply:?}"
            ))),
        }
    }

    async fn remove_member(&self, group: u64, user: UserId) -> StoreResult<()> {
        let reply = self
            .run(
                &self.scripts.members,
                self.keys.group_keys(group),
                vec![arg(user)],
            )
            .await?
            .into_array();
        match reply.first().map(int).transpose()? {
            Some(1) => Ok(()),
            _ => Err(StoreError::NotFound),
        }
    }

    async fn accept(&self, msg: NewMessage<'_>) -> StoreResult<Accepted> {
        let payload = serde_json::to_string(&Payload {
            from: msg.from,
            from_device: msg.from_device,
            client_msg_id: msg.client_msg_id.to_string(),
            text: msg.text.to_string(),
            ts: msg.ts,
        })
        .map_err(backend)?;
        if self.clustered {
            accept::stepwise(self, msg, payload).await
        } else {
            accept::single(self, msg, payload).await
        }
    }

    async fn history(
        &self,
        channel: &str,
        after: Option<MessageId>,
        before: Option<MessageId>,
        limit: usize,
    ) -> StoreResult<Vec<StoredMessage>> {
        let opt = |v: Option<u64>| v.map_or(String::new(), |v| v.to_string());
        let keys = vec![
            self.keys.channel(channel, "head"),
            self.keys.channel(channel, "msgs"),
        ];
        let args = vec![arg(opt(after)), arg(opt(before)), arg(limit)];
        let reply = self
            .run(&self.scripts.history, keys, args)
            .await?
            .into_array();
        let Some((first, rows)) = reply.split_first() else {
            return Ok(Vec::new());
        };
        let first = int(first)?;
        let mut out = Vec::with_capacity(rows.len());
        for (i, json) in rows.iter().enumerate() {
            out.push(Arc::new(message(channel, first + i as u64, json)?));
        }
        Ok(out)
    }

    async fn inbox_head(&self, user: UserId) -> StoreResult<Seq> {
        let head: Option<u64> = self
            .client()
            .get(self.keys.user_part(user, "ih"))
            .await
            .map_err(backend)?;
        Ok(head.unwrap_or(0))
    }

    async fn inbox_after(
        &self,
        user: UserId,
        since: Seq,
        limit: usize,
    ) -> StoreResult<Vec<Message>> {
        // The user's inbox names the messages; they live in their channels' slots,
        // read next with one HMGET per channel (one pipeline).
        let keys = vec![
            self.keys.user_part(user, "ih"),
            self.keys.user_part(user, "ib"),
        ];
        let refs = self
            .run(&self.scripts.inbox, keys, vec![arg(since), arg(limit)])
            .await?
            .into_array();
        let mut rows: Vec<(Seq, String, MessageId)> = Vec::with_capacity(refs.len() / 3);
        for r in refs.chunks_exact(3) {
            rows.push((int(&r[0])?, text(&r[1])?, int(&r[2])?));
        }
        let mut by_channel: HashMap<&str, Vec<MessageId>> = HashMap::new();
        for (_, channel, id) in &rows {
            by_channel.entry(channel).or_default().push(*id);
        }
        if by_channel.is_empty() {
            return Ok(Vec::new());
        }
        let channels: Vec<&str> = by_channel.keys().copied().collect();
        let pipe = self.client().pipeline();
        for ch in &channels {
            let ids: Vec<String> = by_channel[ch].iter().map(u64::to_string).collect();
            let _: () = pipe
                .hmget(self.keys.channel(ch, "msgs"), ids)
                .await
                .map_err(backend)?;
        }
        let replies: Vec<Value> = pipe.all().await.map_err(backend)?;
        let mut json: HashMap<(&str, MessageId), Value> = HashMap::new();
        for (ch, reply) in channels.iter().zip(replies) {
            // A one-field HMGET comes back as a plain value, not an array.
            let values = match reply {
                Value::Array(v) => v,
                other => vec![other],
            };
            for (id, v) in by_channel[ch].iter().zip(values) {
                json.insert((ch, *id), v);
            }
        }
        let mut out = Vec::with_capacity(rows.len());
        for (seq, channel, id) in &rows {
            let v = json
                .get(&(channel.as_str(), *id))
                .ok_or_else(|| StoreError::Backend(format!("redis: {channel} {id} missing")))?;
            out.push(Message {
                seq: Some(*seq),
                ..message(channel, *id, v)?
            });
        }
        Ok(out)
    }

    async fn set_last_active(&self, user: UserId, at: Millis) -> StoreResult<()> {
        let reply = self
            .run(
                &self.scripts.set_active,
                vec![self.keys.user(user)],
                vec![arg(at)],
            )
            .await?;
        match int(&reply)? {
            0 => Err(StoreError::NotFound),
            _ => Ok(()),
        }
    }

    async fn expire(&self, now: Millis, dedupe_before: Millis) -> StoreResult<Expired> {
        // Tokens carry a Redis expiry (PXAT) and go by themselves. Dedupe records
        // are removed by the accept scripts and by their keys' TTL, from the cutoff
        // given here ([`dedupe`]); `dedupe` counts what the scripts removed since
        // the previous call.
        Ok(Expired {
            tokens: 0,
            dedupe: self.dedupe.set(now, dedupe_before),
        })
    }

    async fn flush(&self) -> StoreResult<()> {
        // Every acked write is already as durable as the server's AOF policy makes it.
        Ok(())
    }
}
