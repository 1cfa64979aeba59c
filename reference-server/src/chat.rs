//! The chat service: shared state ([`App`]) and the operations that both the
//! HTTP API and WebSocket sessions call (authenticate, send, sync, membership).
//!
//! Sending keeps every channel's messages in id order on every device without
//! holding anything across a commit. Under a per-channel lock (one of a fixed
//! set of striped async mutexes) a send submits its accept to the store, which
//! fixes its id (ids follow submission order, [`Store::submit_accept`]), and
//! takes the stripe's next ticket; then it lets go of the lock, waits for its
//! commit, and fans out when every earlier ticket of the stripe has (see
//! [`crate::order`]). So two sends to one channel are fanned out in the order of
//! their ids, while a durable backend commits a busy channel's messages
//! together in one batch instead of one fsync each. Different channels rarely
//! share a stripe, so they proceed in parallel.
//!
//! In a cluster (`crate::cluster`) the turn also covers publishing the frames
//! for members on other nodes, so one node's sends into a channel leave it in
//! id order. Sends into one channel from *different* nodes are ordered where
//! they arrive instead: the hub releases each user's frames in inbox `seq`
//! order, and every inbox holds a channel's messages in id order (see `hub`).

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::Utf8Bytes;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{now_ms, token_expired, HashCost, PasswordHashing};
use crate::cluster::Cluster;
use crate::config::Config;
use crate::error::ApiError;
use crate::hub::Hub;
use crate::limits::Limiter;
use crate::metrics::Metrics;
use crate::order::Stripe;
use crate::outbox::CloseReason;
use crate::presence::Presence;
use crate::protocol::{
    check_text, has_nul, message_frame, reseq, ChannelId, ErrorCode, Message, MessageRef, Millis,
    Recipient, Seq, Status, UserId, MAX_CLIENT_MSG_ID_CHARS,
};
use crate::push::{preview, Notification, PushGateway};
use crate::reply::{self, Order, Page, REPLY_BUDGET_BYTES};
use crate::store::{Accepted, NewMessage, Store, StoreError, TokenOwner};

const CHANNEL_STRIPES: usize = 4096;

/// The rate limits beside the per-connection send allowance (see [`crate::limits`]).
pub struct Limits {
    /// Logins and signups by source address.
    pub auth_by_addr: Limiter<std::net::IpAddr>,
    /// Logins and signups by username.
    pub auth_by_name: Limiter<String>,
    /// Sends by user, across all its devices.
    pub sends_by_user: Limiter<UserId>,
}

/// Everything a request or a session needs, shared behind an `Arc`.
pub struct App {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub hub: Arc<Hub>,
    pub presence: Arc<Presence>,
    pub push: PushGateway,
    pub metrics: Arc<Metrics>,
    pub hashing: PasswordHashing,
    pub limits: Limits,
    /// Cancelled when the server shuts down; sessions close with 1001.
    pub shutdown: CancellationToken,
    /// Tracks WebSocket sessions so shutdown can wait for them to close.
    pub sessions: TaskTracker,
    /// This node's WebSocket URL (what discovery hands out when alone).
    pub own_servers: Vec<String>,
    /// The cluster this node belongs to (`--cluster`), if any.
    pub cluster: Option<Arc<Cluster>>,
    /// Connections this node accepts before answering upgrades `503 overloaded`.
    pub max_connections: usize,
    channel_order: Box<[Arc<Stripe>]>,
    hasher: RandomState,
    /// Sends waiting for storage; none waits when all are taken (`overloaded`).
    pending_accepts: tokio::sync::Semaphore,
    /// Accepts that failed here and may have committed all the same.
    uncertain: crate::uncertain::Uncertain,
}

impl App {
    pub fn new(
        config: Config,
        store: Arc<dyn Store>,
        servers: Vec<String>,
        shutdown: CancellationToken,
    ) -> Self {
        let metrics = Arc::new(Metrics::default());
        let max_connections = match config.max_connections {
            0 => (crate::server::raise_fd_limit() as usize)
                .saturating_sub(256)
                .max(1),
            n => n,
        };
        // In a cluster a user's frames come from several nodes: deliver in seq order.
        let hub = match config.cluster {
            Some(_) => Hub::ordered(metrics.clone()),
            None => Hub::new(metrics.clone()),
        };
        let config_pending = config.max_pending_accepts;
        App {
            hub: Arc::new(hub),
            presence: Arc::new(Presence::new(config.offline_after)),
            push: PushGateway::start(
                config.push_webhook.clone(),
                metrics.clone(),
                shutdown.clone(),
            ),
            hashing: PasswordHashing::new(
                HashCost {
                    memory_kib: config.password_hash_memory_kib,
                    iterations: config.password_hash_iterations,
                },
                config.password_hash_concurrency,
                metrics.clone(),
            ),
            limits: Limits {
                auth_by_addr: Limiter::new(config.auth_per_addr),
                auth_by_name: Limiter::new(config.auth_per_user),
                sends_by_user: Limiter::new(config.user_send),
            },
            metrics,
            config,
            store,
            shutdown,
            sessions: TaskTracker::new(),
            max_connections,
            own_servers: servers,
            cluster: None,
            channel_order: (0..CHANNEL_STRIPES)
                .map(|_| Arc::new(Stripe::default()))
                .collect(),
            hasher: RandomState::new(),
            pending_accepts: tokio::sync::Semaphore::new(config_pending),
            uncertain: Default::default(),
        }
    }

    /// The device a bearer token belongs to, or `unauthorized`.
    pub async fn authenticate(&self, token: &str) -> Result<TokenOwner, ApiError> {
        if token.is_empty() || token.len() > 128 || token_expired(token, now_ms()) {
            return Err(ApiError::unauthorized());
        }
        self.store
            .token_owner(token)
            .await?
            .ok_or_else(ApiError::unauthorized)
    }

    /// Logs a device out: its token stops working, its connections close (on
    /// every node of a cluster), and if it was the user's last fresh device the
    /// user goes offline at once.
    pub async fn logout(&self, token: &str, owner: TokenOwner) -> Result<(), ApiError> {
        self.store.revoke_token(token).await?;
        self.hub
            .close_device(owner.user_id, owner.device_id, CloseReason::LoggedOut);
        self.presence
            .logout(owner.user_id, owner.device_id, now_ms());
        if let Some(cluster) = &self.cluster {
            cluster.revoke(owner.user_id, owner.device_id).await?;
        }
        Ok(())
    }

    /// The WebSocket URLs that `login` and discovery hand out, best first.
    pub fn servers(&self) -> Vec<String> {
        match &self.cluster {
            Some(cluster) => cluster.servers(),
            None => self.own_servers.clone(),
        }
    }

    /// Where a new connection of `owner` starts: the inbox head its `hello`
    /// announces. In a cluster it first waits until this node receives the
    /// user's deliveries, so every message stored after that head reaches it.
    pub async fn attach(&self, owner: TokenOwner) -> Result<Seq, ApiError> {
        if let Some(cluster) = &self.cluster {
            cluster.attached(owner.user_id).await?;
        }
        let head = self.store.inbox_head(owner.user_id).await?;
        self.hub.start_after(owner.user_id, head);
        Ok(head)
    }

    /// Each user's presence: online (with its last heartbeat here, or when it
    /// came online elsewhere in the cluster) or offline (`None`: the stored
    /// `last_active_at` applies).
    pub async fn statuses(&self, users: &[UserId]) -> Vec<(Status, Option<Millis>)> {
        let local: Vec<(Status, Option<Millis>)> =
            users.iter().map(|&u| self.presence.status(u)).collect();
        let Some(cluster) = &self.cluster else {
            return local;
        };
        let remote = match cluster.statuses(users).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(cause = %e, "cluster presence unreachable: answering with this node's");
                return local;
            }
        };
        local
            .into_iter()
            .zip(remote)
            .map(|(here, there)| {
                if here.0 == Status::Online {
                    here
                } else {
                    there
                }
            })
            .collect()
    }

    /// The members of a channel, if `user` is one of them: `forbidden` if not,
    /// `not_found` for a channel that does not exist.
    pub async fn members(&self, channel: &str, user: UserId) -> Result<Vec<UserId>, ApiError> {
        let members = match ChannelId::parse(channel) {
            Some(ChannelId::Group(n)) => self
                .store
                .group_members(n)
                .await?
                .ok_or_else(|| ApiError::not_found(format!("no channel {channel}")))?,
            Some(ChannelId::Direct(a, b)) => {
                if user != a && user != b {
                    return Err(ApiError::forbidden(format!("not a member of {channel}")));
                }
                let other = if user == a { b } else { a };
                if !self.store.user_exists(other).await? {
                    return Err(ApiError::not_found(format!("no user {other}")));
                }
                vec![a, b]
            }
            None => return Err(ApiError::not_found(format!("no channel {channel:?}"))),
        };
        if !members.contains(&user) {
            return Err(ApiError::forbidden(format!("not a member of {channel}")));
        }
        Ok(members)
    }

    /// Validates, stores and fans out one message; returns what the ack says.
    pub async fn send(
        &self,
        from: TokenOwner,
        to: &Recipient,
        client_msg_id: &str,
        text: &str,
    ) -> Result<Accepted, ApiError> {
        let id_chars = client_msg_id.chars().count();
        if !(1..=MAX_CLIENT_MSG_ID_CHARS).contains(&id_chars) || has_nul(client_msg_id) {
            return Err(ApiError::bad_request(
                "client_msg_id must be 1-64 characters, none of them U+0000",
            ));
        }
        check_text(text).map_err(|(code, msg)| ApiError::new(code, msg))?;
        if !self.limits.sends_by_user.allow(&from.user_id) {
            return Err(ApiError::new(
                ErrorCode::RateLimited,
                "sending faster than this user's allowance across its devices; slow down",
            ));
        }
        let channel = match (to.user, to.channel.as_deref()) {
            (Some(user), None) if user == from.user_id => {
                return Err(ApiError::bad_request("to.user is the sender"));
            }
            (Some(user), None) => ChannelId::direct(from.user_id, user).to_string(),
            (None, Some(channel)) => channel.to_string(),
            _ => {
                return Err(ApiError::bad_request(
                    "to needs exactly one of user and channel",
                ))
            }
        };
        let started = Instant::now();
        let members = self.members(&channel, from.user_id).await?;
        // One clock read per step (on some virtual machines each is a system call).
        let read = Instant::now();
        Metrics::inc_by(&self.metrics.send_members_micros, micros(read - started));

        // Storage backed up: answer at once rather than queue without limit.
        let Ok(_pending) = self.pending_accepts.try_acquire() else {
            Metrics::inc(&self.metrics.storage_overloaded);
            return Err(StoreError::Overloaded.into());
        };
        let stripe = self.hasher.hash_one(&channel) as usize % self.channel_order.len();
        let started = read;
        let (committed, turn) = self.channel_order[stripe]
            .submit(|| {
                self.store.submit_accept(NewMessage {
                    channel: &channel,
                    members: &members,
                    from: from.user_id,
                    from_device: from.device_id,
                    client_msg_id,
                    text,
                    ts: now_ms(),
                })
            })
            .await
            .inspect_err(|e| self.accept_failed(e, from.user_id, client_msg_id))?;
        let submitted = Instant::now();
        let accepted = committed.await;
        let committed_at = Instant::now();
        // Fan out in id order: after every earlier send of this stripe, failed
        // or not; dropping `turn` lets the next one go.
        let _turn = turn.wait().await;
        let turned = Instant::now();
        let m = &self.metrics;
        Metrics::inc_by(&m.send_submit_micros, micros(submitted - started));
        Metrics::inc_by(&m.send_commit_micros, micros(committed_at - submitted));
        Metrics::inc_by(&m.send_turn_micros, micros(turned - committed_at));
        let accepted =
            accepted.inspect_err(|e| self.accept_failed(e, from.user_id, client_msg_id))?;
        Metrics::inc_by(
            &self.metrics.storage_accept_micros_sum,
            micros(turned - started),
        );
        Metrics::inc(&self.metrics.storage_accept_count);
        if accepted.duplicate {
            Metrics::inc(&self.metrics.messages_deduplicated);
            if self.uncertain.take(from.user_id, client_msg_id) {
                self.fan_out_stored(&accepted, &members).await?;
            }
            return Ok(accepted);
        }
        Metrics::inc(&self.metrics.messages_accepted);
        self.fan_out(&accepted, from, client_msg_id, text).await;
        Ok(accepted)
    }

    /// Counts a failed accept; notes one that may have committed all the same
    /// (see `uncertain`), so that its resend still fans out.
    fn accept_failed(&self, e: &StoreError, user: UserId, client_msg_id: &str) {
        match e {
            StoreError::Overloaded => Metrics::inc(&self.metrics.storage_overloaded),
            StoreError::Backend(_) => self.uncertain.note(user, client_msg_id),
            _ => {}
        }
    }

    /// Fans out a message that was stored by an accept whose caller saw an error
    /// (see [`crate::uncertain`]): the stored message, to the members holding it.
    async fn fan_out_stored(
        &self,
        accepted: &Accepted,
        members: &[UserId],
    ) -> Result<(), ApiError> {
        let page = self
            .store
            .history(
                &accepted.channel,
                Some(accepted.id - 1),
                Some(accepted.id + 1),
                1,
            )
            .await?;
        let Some(m) = page.first() else {
            return Ok(());
        };
        let recipients =
            crate::uncertain::recipients(&*self.store, &accepted.channel, accepted.id, members)
                .await?;
        let original = TokenOwner {
            user_id: m.from,
            device_id: m.from_device,
        };
        let again = Accepted {
            recipients,
            ..accepted.clone()
        };
        self.fan_out(&again, original, &m.client_msg_id, &m.text)
            .await;
        Ok(())
    }

    /// Queues the message on every connected device of every member (not the
    /// sending device), here and (in a cluster) on the other nodes, and hands a
    /// push notification for each member with no connected device anywhere.
    async fn fan_out(
        &self,
        accepted: &Accepted,
        from: TokenOwner,
        client_msg_id: &str,
        text: &str,
    ) {
        // Each member has its own `seq`, everything else is shared: the first
        // frame a connected member needs is serialized (escaping a long text
        // once per message), and every other member's is that frame with its
        // own seq spliced in. A member with no connection to take it here (the
        // sender's own entry, when it has no other device) costs no frame.
        let message = MessageRef {
            kind: "message",
            channel: &accepted.channel,
            id: accepted.id,
            seq: None,
            from: from.user_id,
            from_device: from.device_id,
            client_msg_id,
            text,
            ts: accepted.ts,
        };
        let mut first: Option<Utf8Bytes> = None;
        let mut offline_here = Vec::new();
        for &(member, seq) in &accepted.recipients {
            let skip = (member == from.user_id).then_some(from.device_id);
            let reached = self.hub.deliver_seq_with(member, seq, skip, || {
                let frame: Utf8Bytes = match &first {
                    Some(f) => reseq(f, seq).into(),
                    None => message_frame(&message, seq).into(),
                };
                first.get_or_insert_with(|| frame.clone());
                frame
            });
            if reached.connections == 0 && member != from.user_id {
                offline_here.push(member);
            }
        }
        let elsewhere = match &self.cluster {
            Some(cluster) => {
                let shared =
                    serde_json::to_string(&message).expect("message frames always serialize");
                cluster
                    .route_message(&accepted.recipients, from.user_id, from.device_id, &shared)
                    .await
            }
            None => Default::default(),
        };
        for member in offline_here {
            if !elsewhere.contains(&member) {
                self.push.notify(Notification {
                    user_id: member,
                    channel: accepted.channel.clone(),
                    id: accepted.id,
                    from: from.user_id,
                    preview: preview(text),
                });
            }
        }
    }

    /// Inbox entries after `since`: at most `limit`, cut at the reply budget
    /// (at least one entry), and whether more remain (see [`crate::reply`]).
    pub async fn sync(
        &self,
        user: UserId,
        since: u64,
        limit: Option<u32>,
    ) -> Result<Page, ApiError> {
        use crate::protocol::{SYNC_DEFAULT_LIMIT, SYNC_MAX_LIMIT};
        let limit = limit.map_or(SYNC_DEFAULT_LIMIT, |l| {
            (l as usize).clamp(1, SYNC_MAX_LIMIT)
        });
        let store = &self.store;
        let page = reply::fill(
            limit,
            REPLY_BUDGET_BYTES,
            Order::Up,
            |cursor, n| async move {
                let entries = store.inbox_after(user, cursor.unwrap_or(since), n).await?;
                Ok(entries
                    .iter()
                    .map(|m| reply::encode(m, m.seq.unwrap_or(0)))
                    .collect())
            },
        )
        .await?;
        Ok(page)
    }

    /// A page of a channel's history (see `docs/protocol.md`): with `after`, the
    /// first messages above it (below `before`, if given); otherwise the last ones
    /// below `before` (or the newest). At most `limit`, cut at the reply budget.
    pub async fn history(
        &self,
        channel: &str,
        after: Option<u64>,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Page, ApiError> {
        let store = &self.store;
        let encode = |page: Vec<crate::store::StoredMessage>| {
            page.iter()
                .map(|m| {
                    let m = Message {
                        seq: None,
                        ..(**m).clone()
                    };
                    reply::encode(&m, m.id)
                })
                .collect::<Vec<_>>()
        };
        let page = match after {
            Some(after) => {
                reply::fill(
                    limit,
                    REPLY_BUDGET_BYTES,
                    Order::Up,
                    |cursor, n| async move {
                        let page = store
                            .history(channel, Some(cursor.unwrap_or(after)), before, n)
                            .await?;
                        Ok(encode(page))
                    },
                )
                .await?
            }
            None => {
                reply::fill(
                    limit,
                    REPLY_BUDGET_BYTES,
                    Order::Down,
                    |cursor, n| async move {
                        let page = store.history(channel, None, cursor.or(before), n).await?;
                        Ok(encode(page))
                    },
                )
                .await?
            }
        };
        Ok(page)
    }

    /// Counts an error answer in `/metrics` and hands it back.
    pub fn count(&self, e: ApiError) -> ApiError {
        self.metrics.error(e.code);
        if e.code == ErrorCode::Internal {
            tracing::warn!(cause = %e, "internal error");
        }
        e
    }
}

pub use crate::protocol::splice_seq;

fn micros(d: std::time::Duration) -> u64 {
    d.as_micros() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ServerFrame;

    #[test]
    fn a_spliced_frame_is_the_message_frame_with_that_seq() {
        let shared = serde_json::to_string(&MessageRef {
            kind: "message",
            channel: "g:1",
            id: 7,
            seq: None,
            from: 1,
            from_device: 2,
            client_msg_id: "c\"1",
            text: "hé \"quoted\"",
            ts: 99,
        })
        .unwrap();
        let frame: ServerFrame = serde_json::from_str(&splice_seq(&shared, 42)).unwrap();
        match frame {
            ServerFrame::Message(m) => {
                assert_eq!(
                    (m.id, m.seq, m.text.as_str(), m.client_msg_id.as_str()),
                    (7, Some(42), "hé \"quoted\"", "c\"1")
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
