//! The location directory and cluster presence membership: for every user, which
//! node instances hold a connection of it (`l:INSTANCE`) and where it is online
//! (`o:INSTANCE`), in one small hash per user (`user_state.lua`).
//!
//! Nodes never write per heartbeat. This node marks a user *dirty* when its first
//! connection opens or its last closes here (the hub tells it) or its local
//! presence changes (the presence loop tells it); one writer task then flushes
//! every dirty user in one pipeline, reading the truth from the hub and local
//! presence at flush time, so a burst of changes costs one round trip and the
//! directory converges to what this node holds. A new connection waits for the
//! flush that covers it before its `hello` reads the inbox head: every message
//! stored after that head is routed here.
//!
//! The script reports when a user came online on its first instance or went
//! offline on its last: each cluster-wide transition exactly once, to the node
//! that caused it, which tells the friends ([`super::presence`]). A dead node's
//! entries are removed by the node that reaps it ([`Directory::reap`]), through
//! the set of users each instance keeps (`node_users.lua`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use parking_lot::Mutex;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::link::{redis_err, ClusterError, Link, Lua};
use super::presence::{ClusterPresence, Transition};
use crate::auth::now_ms;
use crate::hub::{Hub, Watch};
use crate::presence::Presence;
use crate::protocol::{Millis, Status, UserId};

/// Users per pipeline when flushing or reaping many at once.
const CHUNK: usize = 2_000;
/// How long a new connection waits for the directory before giving up.
const ATTACH_WAIT: Duration = Duration::from_secs(5);
/// Pause after a failed flush (Redis unreachable) before trying again.
const RETRY: Duration = Duration::from_millis(250);

#[derive(Default)]
struct Dirty {
    /// User -> when it went offline here, if that is the change.
    users: HashMap<UserId, Option<Millis>>,
    ticket: u64,
}

pub struct Directory {
    link: Arc<Link>,
    instance: String,
    hub: Arc<Hub>,
    presence: Arc<Presence>,
    emitter: Arc<ClusterPresence>,
    dirty: Mutex<Dirty>,
    wake: Notify,
    flushed: watch::Sender<u64>,
    pub(crate) round_trips: AtomicU64,
}

impl Watch for Directory {
    fn changed(&self, user: UserId) {
        self.mark(user, None);
    }
}

impl Directory {
    pub fn new(
        link: Arc<Link>,
        instance: String,
        hub: Arc<Hub>,
        presence: Arc<Presence>,
        emitter: Arc<ClusterPresence>,
    ) -> Self {
        Directory {
            link,
            instance,
            hub,
            presence,
            emitter,
            dirty: Mutex::new(Dirty::default()),
            wake: Notify::new(),
            flushed: watch::Sender::new(0),
            round_trips: AtomicU64::new(0),
        }
    }

    /// Marks a user for the next flush; returns the ticket that flush completes.
    pub fn mark(&self, user: UserId, offline_at: Option<Millis>) -> u64 {
        let ticket = {
            let mut d = self.dirty.lock();
            let hint = d.users.entry(user).or_insert(None);
            if offline_at.is_some() {
                *hint = offline_at;
            }
            d.ticket += 1;
            d.ticket
        };
        self.wake.notify_one();
        ticket
    }

    /// Waits until this node's entry for `user` is in Redis (a new connection).
    pub async fn attached(&self, user: UserId) -> Result<(), ClusterError> {
        let ticket = self.mark(user, None);
        let mut flushed = self.flushed.subscribe();
        let done = tokio::time::timeout(ATTACH_WAIT, async {
            flushed.wait_for(|&f| f >= ticket).await.is_ok()
        })
        .await;
        match done {
            Ok(true) => Ok(()),
            _ => Err(ClusterError::Redis(
                "the location directory is not reachable".into(),
            )),
        }
    }

    /// Marks every user this node holds (after this node's registry entry ran out
    /// and may have been reaped).
    pub fn reassert(&self) {
        for user in self.hub.users().into_iter().chain(self.presence.users()) {
            self.mark(user, None);
        }
    }

    /// Writes every dirty user's state; the cluster-wide transitions go to the
    /// presence emitter.
    async fn flush(&self) -> Result<(), ClusterError> {
        let (batch, ticket) = {
            let mut d = self.dirty.lock();
            (std::mem::take(&mut d.users), d.ticket)
        };
        let users: Vec<(UserId, Option<Millis>)> = batch.into_iter().collect();
        for (i, chunk) in users.chunks(CHUNK).enumerate() {
            if let Err(e) = self.flush_chunk(chunk).await {
                // Everything not written yet is dirty again.
                for &(user, hint) in &users[i * CHUNK..] {
                    self.mark(user, hint);
                }
                return Err(e);
            }
        }
        self.flushed.send_replace(ticket);
        Ok(())
    }

    async fn flush_chunk(&self, chunk: &[(UserId, Option<Millis>)]) -> Result<(), ClusterError> {
        let mut calls = Vec::with_capacity(chunk.len() + 1);
        let (mut adds, mut removes) = (Vec::new(), Vec::new());
        for &(user, _) in chunk {
            let connected = self.hub.is_connected(user);
            let online = self.presence.status(user).0 == Status::Online;
            calls.push(self.state_call(user, connected, online));
            if connected || online {
                adds.push(Value::from(user.to_string()));
            } else {
                removes.push(Value::from(user.to_string()));
            }
        }
        let mut args = adds;
        args.push("-".into());
        args.extend(removes);
        calls.push((
            Lua::NodeUsers,
            vec![self.link.node_users_key(&self.instance)],
            args,
        ));
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let replies = self.link.run_many(calls).await?;
        let users = chunk.iter().map(|&(u, hint)| (u, hint));
        self.report(users, &replies, now_ms())
    }

    fn state_call(
        &self,
        user: UserId,
        connected: bool,
        online: bool,
    ) -> (Lua, Vec<String>, Vec<Value>) {
        let flag = |b: bool| Value::from(if b { "1" } else { "0" });
        (
            Lua::UserState,
            vec![self.link.user_key(user)],
            vec![self.instance.clone().into(), flag(connected), flag(online)],
        )
    }

    /// Hands the transitions the script reported to the presence emitter.
    fn report(
        &self,
        users: impl Iterator<Item = (UserId, Option<Millis>)>,
        replies: &[Value],
        now: Millis,
    ) -> Result<(), ClusterError> {
        let mut transitions = Vec::new();
        for ((user, hint), reply) in users.zip(replies) {
            let reply = reply.clone().into_array();
            let (Some(change), Some(epoch)) = (
                reply.first().and_then(Value::as_i64),
                reply.get(1).and_then(Value::as_i64),
            ) else {
                return Err(ClusterError::Redis(format!(
                    "user_state answered {reply:?}"
                )));
            };
            let (status, at) = match change {
                1 => (Status::Online, now),
                2 => (Status::Offline, hint.unwrap_or(now)),
                _ => continue,
            };
            transitions.push((
                user,
                Transition {
                    status,
                    at,
                    epoch: epoch as u64,
                },
            ));
        }
        self.emitter.enqueue(transitions);
        Ok(())
    }

    /// Flushes whenever something is dirty, until shutdown.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
            }
            if let Err(e) = self.flush().await {
                tracing::warn!(cause = %e, "cluster: writing the directory failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(RETRY) => self.wake.notify_one(),
                }
            }
        }
    }

    /// Removes a dead instance from every user it held; users left online nowhere
    /// go offline (as of `last_seen`, ms), which their friends are told.
    pub async fn reap(&self, instance: &str, last_seen: Millis) -> Result<usize, ClusterError> {
        let key = self.link.node_users_key(instance);
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let users: Vec<UserId> = self.link.client().smembers(&key).await.map_err(redis_err)?;
        let dead = |user: UserId| {
            let flag = Value::from("0");
            (
                Lua::UserState,
                vec![self.link.user_key(user)],
                vec![instance.to_string().into(), flag.clone(), flag],
            )
        };
        for chunk in users.chunks(CHUNK) {
            let calls = chunk.iter().map(|&u| dead(u)).collect();
            self.round_trips.fetch_add(1, Ordering::Relaxed);
            let replies = self.link.run_many(calls).await?;
            self.report(
                chunk.iter().map(|&u| (u, Some(last_seen))),
                &replies,
                last_seen,
            )?;
        }
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let _: i64 = self.link.client().del(&key).await.map_err(redis_err)?;
        Ok(users.len())
    }
}
