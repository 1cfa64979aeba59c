//! The PostgreSQL backend (`--storage postgres://USER@HOST:PORT/DB[?schema=NAME]`):
//! the relational alternative the design argues against, built well enough that
//! the measurement is fair.
//!
//! **Atomic accept.** The whole accept runs in the server, in one PL/pgSQL function
//! (`chatscale_accept`, installed by the migrations), so it costs one round trip:
//! a resend is answered from the dedupe table before any lock (dedupe rows are
//! final, and a call that writes nothing costs its batch no WAL flush); otherwise
//! it locks the rows of the members (and the sender) in id order with
//! `SELECT ... FOR UPDATE` (one global lock order, so two accepts cannot deadlock),
//! checks the dedupe table again, bumps the channel's head with an upsert (which
//! locks the channel row: ids stay gap-free and in commit order), and appends the
//! message to every member's inbox with that member's next seq (`users.inbox_head`).
//! Nothing in it raises on a domain outcome (a duplicate, an unknown member): it
//! returns a status instead, so that one message cannot abort a batch.
//!
//! **Group commit.** Accepts go to one writer task that owns its own connection: it
//! takes every accept waiting (up to [`MAX_BATCH`]), pipelines their function calls
//! inside one transaction, and commits once, so one WAL flush (with
//! `synchronous_commit=on`) covers the batch; then each caller's oneshot completes.
//! Several nodes on one database commit batches concurrently, so a batch first
//! locks all its user rows, then all its channel rows, each sorted (see `writer`).
//! A backend error rolls the batch back; each of its accepts then runs again in a
//! transaction of its own, so only the one that fails is answered with an error.
//! Everything else runs on a small `deadpool-postgres` pool with prepared
//! (cached) statements.
//!
//! **Migrations** are a list of versioned SQL scripts applied at open under an
//! advisory lock and recorded in `schema_migrations`, so several servers starting at
//! once apply each exactly once. `?schema=NAME` puts every table in schema `NAME`
//! (created if missing), which is how tests get a fresh namespace per test.

use std::sync::Arc;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::{mpsc, oneshot};

mod schema;
mod writer;
use schema::{migrate, split_schema};
use tokio_postgres::{NoTls, Row};
use writer::{writer_loop, AcceptRequest};

use super::{
    Accepted, CommitStats, Expired, NewMessage, PendingAccept, Store, StoreError, StoreResult,
    StoredMessage, TokenOwner, UserInfo, UserRecord,
};
use crate::protocol::{DeviceId, Message, MessageId, Millis, Seq, UserId};

/// Most accepts committed in one transaction.
pub const MAX_BATCH: usize = 256;
const QUEUE: usize = 4096;
const POOL_SIZE: usize = 8;

/// Maps an error into the trait's backend error, with its causes: the driver's
/// own `Display` says only "db error" and keeps the server's message in the source.
fn backend(e: impl std::error::Error) -> StoreError {
    let mut text = format!("postgres: {e}");
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    StoreError::Backend(text)
}

/// Ids are below 2^53 by protocol; clamp the open ends of ranges into BIGINT.
fn big(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn id(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// What the writer's answer to one accept means.
fn accepted(answer: &writer::Answer) -> StoreResult<Accepted> {
    let (row, members) = (&answer.row, &answer.members);
    let status: i32 = row.get("status");
    match status {
        2 if answer.not_member => Err(StoreError::NotMember),
        2 => Err(StoreError::NotFound),
        0 | 1 => {
            let seqs: Option<Vec<i64>> = row.get("seqs");
            let recipients = match (status, seqs) {
                (0, Some(seqs)) => members
                    .iter()
                    .map(|&m| id(m))
                    .zip(seqs.into_iter().map(id))
                    .collect(),
                _ => Vec::new(),
            };
            Ok(Accepted {
                channel: row.get("channel"),
                id: id(row.get("id")),
                ts: id(row.get("ts")),
                sender_seq: id(row.get("sender_seq")),
                recipients,
                duplicate: status == 1,
            })
        }
        other => Err(StoreError::Backend(format!(
            "postgres: accept status {other}"
        ))),
    }
}

/// The PostgreSQL-backed store.
pub struct PostgresStore {
    pool: Pool,
    schema: Option<String>,
    writer: mpsc::Sender<AcceptRequest>,
    durability: String,
    stats: Arc<CommitStats>,
}

impl PostgresStore {
    /// Connects, applies the migrations and starts the writer task.
    pub async fn open(url: &str) -> StoreResult<Self> {
        let (base, schema) = split_schema(url)?;
        let mut config: tokio_postgres::Config = base.parse().map_err(backend)?;
        config.connect_timeout(std::time::Duration::from_secs(5));
        config.application_name("chatscale");
        if let Some(schema) = &schema {
            let (client, conn) = config
                .connect(NoTls)
                .await
                .map_err(|e| StoreError::Backend(super::unreachable(&base, &e)))?;
            let task = tokio::spawn(conn);
            let created = client
                .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                .await;
            match created {
                Ok(()) => {}
                // Nodes starting together race to create it; the loser's error
                // means it exists now.
                Err(e)
                    if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
                        || e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_SCHEMA) => {
                }
                Err(e) => return Err(backend(e)),
            }
            drop(client);
            let _ = task.await;
            config.options(format!("-c search_path={schema}"));
        }
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        // A caller waits at most this long for a free connection, then fails.
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(std::time::Duration::from_secs(10)))
            .create_timeout(Some(std::time::Duration::from_secs(5)))
            .build()
            .map_err(backend)?;
        let mut client = pool
            .get()
            .await
            .map_err(|e| StoreError::Backend(super::unreachable(&base, &e)))?;
        migrate(&mut client).await?;
        let mut settings = Vec::new();
        for name in ["synchronous_commit", "fsync"] {
            let row = client
                .query_one(&format!("SHOW {name}"), &[])
                .await
                .map_err(backend)?;
            settings.push(row.get::<_, String>(0));
        }
        drop(client);
        let meaning = match (settings[0].as_str(), settings[1].as_str()) {
            (_, "off") => "process crash only while the OS survives (fsync is off)",
            ("off", _) => "process crash; a power loss may lose the last few hundred ms",
            _ => "process crash and power loss (WAL flushed before commit returns)",
        };
        let durability = format!(
            "postgres synchronous_commit={} fsync={}: {meaning}; one commit per batch",
            settings[0], settings[1]
        );
        let (writer, queue) = mpsc::channel(QUEUE);
        let (wclient, conn) = config.connect(NoTls).await.map_err(backend)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::error!(cause = %e, "postgres writer connection ended");
            }
        });
        let stats = Arc::new(CommitStats::default());
        tokio::spawn(writer_loop(wclient, config, queue, stats.clone()));
        tracing::info!(schema = ?schema, durability = %durability, "postgres storage open");
        Ok(Self {
            pool,
            schema,
            writer,
            durability,
            stats,
        })
    }

    /// Drops the `?schema=` this store was opened with, and everything in it (tests
    /// and benches use a fresh schema each). Without one, it does nothing.
    pub async fn drop_schema(&self) -> StoreResult<()> {
        if let Some(schema) = &self.schema {
            let client = self.client().await?;
            client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                .await
                .map_err(backend)?;
        }
        Ok(())
    }

    async fn client(&self) -> StoreResult<deadpool_postgres::Object> {
        self.pool.get().await.map_err(backend)
    }

    /// Runs one prepared statement on a pooled connection and returns its rows.
    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> StoreResult<Vec<Row>> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql).await.map_err(backend)?;
        client.query(&stmt, params).await.map_err(backend)
    }
}

fn message_of(row: &Row, seq: Option<Seq>) -> Message {
    Message {
        channel: row.get("channel_id"),
        id: id(row.get("message_id")),
        seq,
        from: id(row.get("from_user")),
        from_device: id(row.get("from_device")),
        client_msg_id: row.get("client_msg_id"),
        text: row.get("body"),
        ts: id(row.get("ts")),
    }
}

const MESSAGE_COLS: &str =
    "channel_id, message_id, from_user, from_device, client_msg_id, body, ts";

#[async_trait]
impl Store for PostgresStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn durability(&self) -> String {
        self.durability.clone()
    }

    async fn create_user(&self, username: &str, password_hash: &str) -> StoreResult<UserId> {
        let rows = self
            .query(
                "INSERT INTO users (username, password_hash) VALUES ($1, $2) \
                 ON CONFLICT (username) DO NOTHING RETURNING id",
                &[&username, &password_hash],
            )
            .await?;
        rows.first()
            .map(|r| id(r.get(0)))
            .ok_or(StoreError::Conflict)
    }

    async fn user_by_name(&self, username: &str) -> StoreResult<Option<UserRecord>> {
        let rows = self
            .query(
                "SELECT id, password_hash FROM users WHERE username = $1",
                &[&username],
            )
            .await?;
        Ok(rows.first().map(|r| UserRecord {
            id: id(r.get(0)),
            username: username.to_string(),
            password_hash: r.get(1),
        }))
    }

    async fn users(&self, ids: &[UserId]) -> StoreResult<Vec<UserInfo>> {
        let wanted: Vec<i64> = ids.iter().map(|&i| big(i)).collect();
        let rows = self
            .query(
                "SELECT u.id, u.username, u.last_active_at \
                 FROM unnest($1::BIGINT[]) WITH ORDINALITY AS w (id, ord) \
                 JOIN users u ON u.id = w.id ORDER BY w.ord",
                &[&wanted],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| UserInfo {
                id: id(r.get(0)),
                username: r.get(1),
                last_active_at: r.get::<_, Option<i64>>(2).map(id),
            })
            .collect())
    }

    async fn login_device(&self, user: UserId, name: Option<&str>) -> StoreResult<DeviceId> {
        let user = big(user);
        if let Some(name) = name {
            let rows = self
                .query(
                    "SELECT id FROM devices WHERE user_id = $1 AND name = $2",
                    &[&user, &name],
                )
                .await?;
            if let Some(r) = rows.first() {
                return Ok(id(r.get(0)));
            }
        }
        // A concurrent login with the same name loses the race to the unique key and
        // reads the winner's row.
        let rows = self
            .query(
                "WITH u AS (SELECT id FROM users WHERE id = $1), \
                 ins AS (INSERT INTO devices (user_id, name) SELECT id, $2 FROM u \
                         ON CONFLICT (user_id, name) DO NOTHING RETURNING id) \
                 SELECT id, 0 AS k FROM ins \
                 UNION ALL SELECT d.id, 1 FROM devices d WHERE d.user_id = $1 AND d.name = $2 \
                 UNION ALL SELECT -1, 2 FROM u ORDER BY k LIMIT 1",
                &[&user, &name],
            )
            .await?;
        match rows.first().map(|r| r.get::<_, i64>(0)) {
            Some(d) if d > 0 => Ok(id(d)),
            Some(_) => Err(StoreError::Backend(
                "postgres: device insert lost a race".into(),
            )),
            None => Err(StoreError::NotFound),
        }
    }

    async fn put_token(&self, token: &str, owner: TokenOwner) -> StoreResult<()> {
        self.query(
            "INSERT INTO tokens VALUES ($1, $2, $3) ON CONFLICT (token) \
             DO UPDATE SET user_id = EXCLUDED.user_id, device_id = EXCLUDED.device_id",
            &[&token, &big(owner.user_id), &big(owner.device_id)],
        )
        .await?;
        Ok(())
    }

    async fn token_owner(&self, token: &str) -> StoreResult<Option<TokenOwner>> {
        let rows = self
            .query(
                "SELECT user_id, device_id FROM tokens WHERE token = $1",
                &[&token],
            )
            .await?;
        Ok(rows.first().map(|r| TokenOwner {
            user_id: id(r.get(0)),
            device_id: id(r.get(1)),
        }))
    }

    async fn revoke_token(&self, token: &str) -> StoreResult<()> {
        self.query("DELETE FROM tokens WHERE token = $1", &[&token])
            .await?;
        Ok(())
    }

    async fn add_friend(&self, a: UserId, b: UserId) -> StoreResult<()> {
        let rows = self
            .query(
                "WITH ok AS (SELECT (SELECT count(*) FROM users WHERE id IN ($1, $2)) \
                             = CASE WHEN $1 = $2 THEN 1 ELSE 2 END AS ok), \
                 ins AS (INSERT INTO friends SELECT x, y FROM (VALUES ($1, $2), ($2, $1)) v (x, y), ok \
                         WHERE ok.ok ON CONFLICT DO NOTHING) \
                 SELECT ok FROM ok",
                &[&big(a), &big(b)],
            )
            .await?;
        match rows.first().map(|r| r.get::<_, bool>(0)) {
            Some(true) => Ok(()),
            _ => Err(StoreError::NotFound),
        }
    }

    async fn friends(&self, user: UserId) -> StoreResult<Vec<UserId>> {
        let rows = self
            .query(
                "SELECT friend_id FROM friends WHERE user_id = $1 ORDER BY friend_id",
                &[&big(user)],
            )
            .await?;
        Ok(rows.iter().map(|r| id(r.get(0))).collect())
    }

    async fn create_group(
        &self,
        name: &str,
        members: &[UserId],
        max_members: usize,
    ) -> StoreResult<u64> {
        let list: Vec<i64> = super::distinct_members(members, max_members)?
            .into_iter()
            .map(big)
            .collect();
        let mut client = self.client().await?;
        let txn = client.transaction().await.map_err(backend)?;
        let known: i64 = txn
            .query_one("SELECT count(*) FROM users WHERE id = ANY ($1)", &[&list])
            .await
            .map_err(backend)?
            .get(0);
        if known as usize != list.len() {
            return Err(StoreError::NotFound);
        }
        let group: i64 = txn
            .query_one(
                "INSERT INTO groups (name) VALUES ($1) RETURNING id",
                &[&name],
            )
            .await
            .map_err(backend)?
            .get(0);
        txn.execute(
            "INSERT INTO group_members (group_id, user_id) \
             SELECT $1, m FROM unnest($2::BIGINT[]) WITH ORDINALITY AS w (m, ord) ORDER BY ord",
            &[&group, &list],
        )
        .await
        .map_err(backend)?;
        txn.commit().await.map_err(backend)?;
        Ok(id(group))
    }

    async fn group_members(&self, group: u64) -> StoreResult<Option<Vec<UserId>>> {
        let rows = self
            .query(
                "SELECT m.user_id FROM groups g LEFT JOIN group_members m ON m.group_id = g.id \
                 WHERE g.id = $1 ORDER BY m.joined",
                &[&big(group)],
            )
            .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        Ok(Some(
            rows.iter()
                .filter_map(|r| r.get::<_, Option<i64>>(0))
                .map(id)
                .collect(),
        ))
    }

    async fn add_member(&self, group: u64, user: UserId, max_members: usize) -> StoreResult<()> {
        let (group, user) = (big(group), big(user));
        let mut client = self.client().await?;
        let txn = client.transaction().await.map_err(backend)?;
        // The group row's lock serializes membership changes, so the count holds.
        let found = txn
            .query_opt("SELECT id FROM groups WHERE id = $1 FOR UPDATE", &[&group])
            .await
            .map_err(backend)?;
        let user_known = txn
            .query_opt("SELECT id FROM users WHERE id = $1", &[&user])
            .await
            .map_err(backend)?;
        if found.is_none() || user_known.is_none() {
            return Err(StoreError::NotFound);
        }
        let row = txn
            .query_one(
                "SELECT count(*), bool_or(user_id = $2) FROM group_members WHERE group_id = $1",
                &[&group, &user],
            )
            .await
            .map_err(backend)?;
        let (count, present): (i64, Option<bool>) = (row.get(0), row.get(1));
        if present == Some(true) {
            return Ok(());
        }
        if count as usize >= max_members {
            return Err(StoreError::GroupFull);
        }
        txn.execute(
            "INSERT INTO group_members (group_id, user_id) VALUES ($1, $2)",
            &[&group, &user],
        )
        .await
        .map_err(backend)?;
        txn.commit().await.map_err(backend)
    }

    async fn remove_member(&self, group: u64, user: UserId) -> StoreResult<()> {
        let rows = self
            .query(
                "WITH g AS (SELECT id FROM groups WHERE id = $1 FOR UPDATE), \
                 del AS (DELETE FROM group_members m USING g WHERE m.group_id = g.id AND m.user_id = $2) \
                 SELECT id FROM g",
                &[&big(group), &big(user)],
            )
            .await?;
        if rows.is_empty() {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn accept(&self, msg: NewMessage<'_>) -> StoreResult<Accepted> {
        self.submit_accept(msg).await?.await
    }

    async fn submit_accept(&self, msg: NewMessage<'_>) -> StoreResult<PendingAccept> {
        // The one writer runs accepts in queue order (pipelined in one
        // transaction per batch, each taking its channel's next id under the
        // channel row's lock), so the order of submission is the order of ids
        // and a busy channel's messages share a commit.
        let mut members: Vec<i64> = Vec::with_capacity(msg.members.len());
        for &m in msg.members {
            if !members.contains(&big(m)) {
                members.push(big(m));
            }
        }
        let (done, answer) = oneshot::channel();
        let request = AcceptRequest {
            channel: msg.channel.to_string(),
            members,
            from: big(msg.from),
            device: big(msg.from_device),
            cmid: msg.client_msg_id.to_string(),
            text: msg.text.to_string(),
            ts: big(msg.ts),
            done,
        };
        // Never wait for room: a full queue means storage is backed up.
        self.writer.try_send(request).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => StoreError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => {
                StoreError::Backend("postgres writer task has stopped".into())
            }
        })?;
        Ok(Box::pin(async move {
            let answer = answer
                .await
                .map_err(|_| StoreError::Backend("postgres writer dropped a request".into()))??;
            accepted(&answer)
        }))
    }

    async fn history(
        &self,
        channel: &str,
        after: Option<MessageId>,
        before: Option<MessageId>,
        limit: usize,
    ) -> StoreResult<Vec<StoredMessage>> {
        let before = big(before.unwrap_or(u64::MAX));
        let limit = big(limit as u64);
        let rows = match after {
            Some(after) => {
                let sql = format!(
                    "SELECT {MESSAGE_COLS} FROM messages WHERE channel_id = $1 \
                     AND message_id > $2 AND message_id < $3 ORDER BY message_id LIMIT $4"
                );
                self.query(&sql, &[&channel, &big(after), &before, &limit])
                    .await?
            }
            None => {
                let sql = format!(
                    "SELECT {MESSAGE_COLS} FROM messages WHERE channel_id = $1 \
                     AND message_id < $2 ORDER BY message_id DESC LIMIT $3"
                );
                let mut rows = self.query(&sql, &[&channel, &before, &limit]).await?;
                rows.reverse();
                rows
            }
        };
        Ok(rows.iter().map(|r| Arc::new(message_of(r, None))).collect())
    }

    async fn inbox_head(&self, user: UserId) -> StoreResult<Seq> {
        let rows = self
            .query("SELECT inbox_head FROM users WHERE id = $1", &[&big(user)])
            .await?;
        Ok(rows.first().map_or(0, |r| id(r.get(0))))
    }

    async fn inbox_after(
        &self,
        user: UserId,
        since: Seq,
        limit: usize,
    ) -> StoreResult<Vec<Message>> {
        let sql = "SELECT i.seq, m.channel_id, m.message_id, m.from_user, m.from_device, \
                   m.client_msg_id, m.body, m.ts FROM inbox i JOIN messages m \
                   ON m.channel_id = i.channel_id AND m.message_id = i.message_id \
                   WHERE i.user_id = $1 AND i.seq > $2 ORDER BY i.seq LIMIT $3";
        let rows = self
            .query(sql, &[&big(user), &big(since), &big(limit as u64)])
            .await?;
        Ok(rows
            .iter()
            .map(|r| message_of(r, Some(id(r.get("seq")))))
            .collect())
    }

    async fn set_last_active(&self, user: UserId, at: Millis) -> StoreResult<()> {
        let rows = self
            .query(
                "UPDATE users SET last_active_at = GREATEST(coalesce(last_active_at, $2), $2) \
                 WHERE id = $1 RETURNING id",
                &[&big(user), &big(at)],
            )
            .await?;
        if rows.is_empty() {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn expire(&self, now: Millis, dedupe_before: Millis) -> StoreResult<Expired> {
        // Tokens end in `.EXPIRY` (ms, 0 = none); a malformed one is expired.
        let tokens = self
            .query(
                "WITH gone AS (DELETE FROM tokens WHERE NOT (token ~ '\\.[0-9]{1,18}$') \
                 OR (split_part(token, '.', 2)::BIGINT BETWEEN 1 AND $1) RETURNING 1) \
                 SELECT count(*) FROM gone",
                &[&big(now)],
            )
            .await?;
        let dedupe = self
            .query(
                "WITH gone AS (DELETE FROM dedupe WHERE ts < $1 RETURNING 1) SELECT count(*) FROM gone",
                &[&big(dedupe_before)],
            )
            .await?;
        let count = |rows: &[Row]| rows.first().map_or(0, |r| id(r.get::<_, i64>(0)));
        Ok(Expired {
            tokens: count(&tokens),
            dedupe: count(&dedupe),
        })
    }

    async fn flush(&self) -> StoreResult<()> {
        // Every acked accept was committed already; other writes commit on their own.
        Ok(())
    }

    fn counters(&self) -> Vec<super::StoreCounter> {
        self.stats.counters()
    }
}
