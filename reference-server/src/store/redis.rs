//! The Redis backend (`--storage redis://HOST:PORT[/DB][?prefix=NAME]`): the shared
//! store of a cluster of chat nodes, through the `fred` client.
//!
//! **Why Lua.** [`Store::accept`] must dedupe, take the channel's next id, store the
//! message and append it to every member's inbox with that member's next seq, all
//! or nothing, while other nodes accept into the same channel. Redis runs a Lua
//! script atomically (no other command runs between its steps), so one script does
//! the whole accept in one round trip, and per-channel ids and per-user seqs stay
//! gap-free without any lock. The other compound writes (create a user, a device,
//! a group member under the limit, a friendship, the max of a presence time) are
//! small scripts for the same reason. Scripts are sent by SHA (`EVALSHA`) and
//! loaded again if the server forgot them.
//!
//! **Key layout** (`P` is the `?prefix=` value, `cs` by default; `docs/storage.md` has the
//! table). Ids are gap-free, so every read computes the exact fields it needs
//! and fetches them with one `HMGET`, never a scan:
//! - `P:chead` hash channel -> highest id; `P:ch:{channel}` hash id -> message JSON;
//! - `P:ih:{user}` highest inbox seq; `P:ib:{user}` hash seq -> `channel\nid`;
//! - `P:dd:{user}` hash client_msg_id -> `channel\nid\nseq\nts` (dedupe);
//! - `P:u:{id}` hash name/hash/active; `P:names` hash username -> id;
//!   `P:dev:{user}` hash device name -> id; `P:tok:{token}` `user:device`;
//!   `P:fr:{user}` set; `P:gname` hash n -> name; `P:g:{n}` list of members;
//!   `P:next` hash of counters (user, device, group).
//!
//! The scripts build key names from the prefix, so they need one Redis (or keys in
//! one slot); Redis Cluster would need hash tags per channel and per user.
//!
//! Durability is the server's: with `appendonly yes` and `appendfsync always` an
//! acked message was fsynced to the append-only file (Redis fsyncs once per event
//! loop turn, so concurrent accepts share it); `durability()` reports the setting
//! read with `CONFIG GET` at open.

use std::sync::Arc;

use async_trait::async_trait;
use fred::prelude::*;
use fred::types::scripts::Script;
use serde::{Deserialize, Serialize};

use super::{
    Accepted, NewMessage, Store, StoreError, StoreResult, StoredMessage, TokenOwner, UserInfo,
    UserRecord,
};
use crate::protocol::{DeviceId, Message, MessageId, Millis, Seq, UserId};

const POOL_SIZE: usize = 4;

/// ARGV: prefix, channel, from, client_msg_id, ts, payload, members...
/// Returns `{1, "channel\nid\nseq\nts"}` for a duplicate, `{2}` for an unknown
/// member, or `{0, id, seq of each member...}`.
const ACCEPT: &str = include_str!("redis/accept.lua");

/// ARGV: prefix, channel, after|'', before|'', limit. Returns `{first_id, json...}`.
const HISTORY: &str = include_str!("redis/history.lua");

/// ARGV: prefix, user, since, limit. Returns `{seq, channel, id, json, ...}`.
const INBOX: &str = include_str!("redis/inbox.lua");

/// ARGV: prefix, username, hash. Returns the new id, or 0 if the name is taken.
const CREATE_USER: &str = include_str!("redis/create_user.lua");

/// ARGV: prefix, user, name|''. Returns the device id, or 0 for an unknown user.
const LOGIN_DEVICE: &str = include_str!("redis/login_device.lua");

/// ARGV: prefix, a, b. Returns 0 for an unknown user, 1 when done.
const ADD_FRIEND: &str = include_str!("redis/add_friend.lua");

/// ARGV: prefix, name, members... Returns the group number, or 0 for an unknown user.
const CREATE_GROUP: &str = include_str!("redis/create_group.lua");

/// ARGV: prefix, group, user, max. Returns 1 added/already there, 0 unknown group
/// or user, -1 full.
const ADD_MEMBER: &str = include_str!("redis/add_member.lua");

/// ARGV: prefix, group, user|''. With a user: removes it. Returns `{0}` for an
/// unknown group, else `{1, members...}`.
const MEMBERS: &str = include_str!("redis/members.lua");

/// ARGV: prefix, user, at. Keeps the max. Returns 0 for an unknown user.
const SET_ACTIVE: &str = include_str!("redis/set_active.lua");

/// The fields of a message that are not in its key (JSON in `P:ch:{channel}`).
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

struct Scripts {
    accept: Script,
    history: Script,
    inbox: Script,
    create_user: Script,
    login_device: Script,
    add_friend: Script,
    create_group: Script,
    add_member: Script,
    members: Script,
    set_active: Script,
}

/// The Redis-backed store: a small pool of multiplexed connections.
pub struct RedisStore {
    pool: Pool,
    prefix: String,
    scripts: Arc<Scripts>,
    durability: String,
}

impl RedisStore {
    /// Connects to `redis://HOST:PORT[/DB][?prefix=NAME]` (prefix default `cs`).
    pub async fn open(url: &str) -> StoreResult<Self> {
        let (base, prefix) = super::take_query_param(url, "prefix");
        let prefix = format!("{}:", prefix.as_deref().unwrap_or("cs"));
        let config = Config::from_url(&base).map_err(backend)?;
        let pool = Builder::from_config(config)
            .with_connection_config(|c| {
                c.connection_timeout = std::time::Duration::from_secs(5);
            })
            // A command never waits forever: the caller gets a backend error.
            .with_performance_config(|p| {
                p.default_command_timeout = std::time::Duration::from_secs(10);
            })
            // A dropped connection is re-opened (the first one still fails fast,
            // so a wrong URL is reported at start-up).
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
            .build_pool(POOL_SIZE)
            .map_err(backend)?;
        pool.init().await.map_err(backend)?;
        let setting = |name: &'static str| {
            let pool = &pool;
            async move {
                let pair: Vec<String> = pool.config_get(name).await.map_err(backend)?;
                Ok::<_, StoreError>(pair.get(1).cloned().unwrap_or_else(|| "?".into()))
            }
        };
        let durability = match (setting("appendonly").await, setting("appendfsync").await) {
            (Ok(aof), Ok(fsync)) => {
                let meaning = match (aof.as_str(), fsync.as_str()) {
                    ("yes", "always") => {
                        "process crash and power loss (AOF fsynced before the reply)"
                    }
                    ("yes", "everysec") => "process crash; power loss may lose the last second",
                    ("yes", _) => "process crash; power loss leaves it to the OS",
                    _ => "only what the server's RDB snapshots caught",
                };
                format!("redis appendonly={aof} appendfsync={fsync}: {meaning}")
            }
            (Err(e), _) | (_, Err(e)) => format!("redis: unknown (CONFIG GET failed: {e})"),
        };
        let scripts = Arc::new(Scripts {
            accept: Script::from_lua(ACCEPT),
            history: Script::from_lua(HISTORY),
            inbox: Script::from_lua(INBOX),
            create_user: Script::from_lua(CREATE_USER),
            login_device: Script::from_lua(LOGIN_DEVICE),
            add_friend: Script::from_lua(ADD_FRIEND),
            create_group: Script::from_lua(CREATE_GROUP),
            add_member: Script::from_lua(ADD_MEMBER),
            members: Script::from_lua(MEMBERS),
            set_active: Script::from_lua(SET_ACTIVE),
        });
        tracing::info!(url = %base, prefix = %prefix, durability = %durability, "redis storage open");
        Ok(Self {
            pool,
            prefix,
            scripts,
            durability,
        })
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    /// Runs a script with the prefix as its first argument.
    async fn run(&self, script: &Script, args: Vec<Value>) -> StoreResult<Value> {
        let mut argv = Vec::with_capacity(args.len() + 1);
        argv.push(Value::from(self.prefix.as_str()));
        argv.extend(args);
        script
            .evalsha_with_reload::<Value, _, _>(self.pool.next(), Vec::<Key>::new(), argv)
            .await
            .map_err(backend)
    }

    /// Deletes every key under this store's prefix (tests and benches use a fresh one).
    pub async fn clear(&self) -> StoreResult<()> {
        let client = self.pool.next();
        let mut cursor = "0".to_string();
        loop {
            let (next, keys): (String, Vec<String>) = client
                .custom(
                    fred::cmd!("SCAN"),
                    vec![
                        cursor.clone(),
                        "MATCH".into(),
                        format!("{}*", self.prefix),
                        "COUNT".into(),
                        "1000".into(),
                    ],
                )
                .await
                .map_err(backend)?;
            if !keys.is_empty() {
                let _: i64 = client.del(keys).await.map_err(backend)?;
            }
            if next == "0" {
                return Ok(());
            }
            cursor = next;
        }
    }
}

fn int(v: &Value) -> StoreResult<u64> {
    v.as_i64()
        .and_then(|i| u64::try_from(i).ok())
        .ok_or_else(|| StoreError::Backend(format!("redis: expected an integer, got {v:?}")))
}

fn text(v: &Value) -> StoreResult<String> {
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
        let s = &self.scripts.create_user;
        match int(&self.run(s, vec![arg(username), arg(password_hash)]).await?)? {
            0 => Err(StoreError::Conflict),
            id => Ok(id),
        }
    }

    async fn user_by_name(&self, username: &str) -> StoreResult<Option<UserRecord>> {
        let client = self.pool.next();
        let id: Option<u64> = client
            .hget(self.key("names"), username)
            .await
            .map_err(backend)?;
        let Some(id) = id else { return Ok(None) };
        let hash: Option<String> = client
            .hget(self.key(&format!("u:{id}")), "hash")
            .await
            .map_err(backend)?;
        Ok(hash.map(|password_hash| UserRecord {
            id,
            username: username.to_string(),
            password_hash,
        }))
    }

    async fn users(&self, ids: &[UserId]) -> StoreResult<Vec<UserInfo>> {
        let pipe = self.pool.next().pipeline();
        for id in ids {
            let _: () = pipe
                .hmget(self.key(&format!("u:{id}")), vec!["name", "active"])
                .await
                .map_err(backend)?;
        }
        let rows: Vec<Vec<Option<String>>> = if ids.is_empty() {
            Vec::new()
        } else {
            pipe.all().await.map_err(backend)?
        };
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
        let s = &self.scripts.login_device;
        match int(&self
            .run(s, vec![arg(user), arg(name.unwrap_or(""))])
            .await?)?
        {
            0 => Err(StoreError::NotFound),
            id => Ok(id),
        }
    }

    async fn put_token(&self, token: &str, owner: TokenOwner) -> StoreResult<()> {
        let value = format!("{}:{}", owner.user_id, owner.device_id);
        self.pool
            .next()
            .set::<(), _, _>(self.key(&format!("tok:{token}")), value, None, None, false)
            .await
            .map_err(backend)
    }

    async fn token_owner(&self, token: &str) -> StoreResult<Option<TokenOwner>> {
        let value: Option<String> = self
            .pool
            .next()
            .get(self.key(&format!("tok:{token}")))
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
            .pool
            .next()
            .del(self.key(&format!("tok:{token}")))
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn add_friend(&self, a: UserId, b: UserId) -> StoreResult<()> {
        match int(&self
            .run(&self.scripts.add_friend, vec![arg(a), arg(b)])
            .await?)?
        {
            0 => Err(StoreError::NotFound),
            _ => Ok(()),
        }
    }

    async fn friends(&self, user: UserId) -> StoreResult<Vec<UserId>> {
        let mut ids: Vec<UserId> = self
            .pool
            .next()
            .smembers(self.key(&format!("fr:{user}")))
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
        let mut args = vec![arg(name)];
        args.extend(list.iter().map(arg));
        match int(&self.run(&self.scripts.create_group, args).await?)? {
            0 => Err(StoreError::NotFound),
            n => Ok(n),
        }
    }

    async fn group_members(&self, group: u64) -> StoreResult<Option<Vec<UserId>>> {
        let reply = self
            .run(&self.scripts.members, vec![arg(group), arg("")])
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
        let reply = self
            .run(
                &self.scripts.add_member,
                vec![arg(group), arg(user), arg(max_members)],
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
            .run(&self.scripts.members, vec![arg(group), arg(user)])
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
        let mut args = vec![
            arg(msg.channel),
            arg(msg.from),
            arg(msg.client_msg_id),
            arg(msg.ts),
            Value::from(payload),
        ];
        args.extend(msg.members.iter().map(arg));
        let reply = self.run(&self.scripts.accept, args).await?.into_array();
        let bad = || StoreError::Backend(format!("redis: accept answered {reply:?}"));
        match reply.first().map(int).transpose()? {
            Some(0) => {
                let id = int(reply.get(1).ok_or_else(bad)?)?;
                let seqs = reply[2..]
                    .iter()
                    .map(int)
                    .collect::<StoreResult<Vec<_>>>()?;
                let recipients: Vec<(UserId, Seq)> =
                    msg.members.iter().copied().zip(seqs).collect();
                let sender_seq = recipients
                    .iter()
                    .find(|(m, _)| *m == msg.from)
                    .map_or(0, |&(_, s)| s);
                Ok(Accepted {
                    channel: msg.channel.to_string(),
                    id,
                    ts: msg.ts,
                    sender_seq,
                    recipients,
                    duplicate: false,
                })
            }
            Some(1) => {
                let seen = text(reply.get(1).ok_or_else(bad)?)?;
                let parts: Vec<&str> = seen.split('\n').collect();
                let [channel, id, seq, ts] = parts[..] else {
                    return Err(bad());
                };
                let num = |s: &str| s.parse::<u64>().map_err(|_| bad());
                Ok(Accepted {
                    channel: channel.to_string(),
                    id: num(id)?,
                    ts: num(ts)?,
                    sender_seq: num(seq)?,
                    recipients: Vec::new(),
                    duplicate: true,
                })
            }
            Some(2) => Err(StoreError::NotFound),
            _ => Err(bad()),
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
        let args = vec![arg(channel), arg(opt(after)), arg(opt(before)), arg(limit)];
        let reply = self.run(&self.scripts.history, args).await?.into_array();
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
            .pool
            .next()
            .get(self.key(&format!("ih:{user}")))
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
        let reply = self
            .run(&self.scripts.inbox, vec![arg(user), arg(since), arg(limit)])
            .await?
            .into_array();
        let mut out = Vec::with_capacity(reply.len() / 4);
        for row in reply.chunks_exact(4) {
            let (seq, channel, id) = (int(&row[0])?, text(&row[1])?, int(&row[2])?);
            out.push(Message {
                seq: Some(seq),
                ..message(&channel, id, &row[3])?
            });
        }
        Ok(out)
    }

    async fn set_last_active(&self, user: UserId, at: Millis) -> StoreResult<()> {
        match int(&self
            .run(&self.scripts.set_active, vec![arg(user), arg(at)])
            .await?)?
        {
            0 => Err(StoreError::NotFound),
            _ => Ok(()),
        }
    }

    async fn flush(&self) -> StoreResult<()> {
        // Every acked write is already as durable as the server's AOF policy makes it.
        Ok(())
    }
}
