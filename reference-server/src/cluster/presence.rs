//! Presence across the cluster: a user is online while any device on any node is.
//!
//! Each node keeps presence for its own devices exactly as a lone node does
//! (`crate::presence`: heartbeats, the sweep, logout); heartbeats never touch Redis.
//! What crosses Redis is each node's *membership*: "this user is online here",
//! written when it changes on this node (see `directory`), batched with everything
//! else that changed since the last flush. The user's hash counts the nodes where it
//! is online; the first one in and the last one out are the cluster-wide
//! transitions, each reported once, to the node that made it, with an epoch.
//!
//! That node records `last_active_at` in storage and tells the user's friends: on
//! this node directly, on the others through one envelope per node. Every node
//! (this one included) applies a transition only if its epoch is newer than the
//! last one it applied for that user, so two nodes reporting close transitions
//! never leave friends with the older state.
//!
//! Timing: a user's devices go quiet on node A → A's sweep drops them after
//! `offline_after` → A leaves the user's online set → if no other node is in it,
//! offline now. A node that dies is reaped once `offline_after` has passed since it
//! was last seen, so its users go offline on the same schedule (unless their devices
//! reconnected elsewhere meanwhile, and then nothing flaps).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;
use fred::prelude::*;
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::link::{redis_err, ClusterError, Link};
use super::routing::{Envelope, Router};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::protocol::{Millis, ServerFrame, Status, UserId};
use crate::store::Store;

/// How long a node remembers the last epoch it applied for a user.
const REMEMBER: Duration = Duration::from_secs(120);
/// Transitions told to friends at once.
const EMIT_CONCURRENCY: usize = 32;

/// A cluster-wide presence change of one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub status: Status,
    pub at: Millis,
    pub epoch: u64,
}

pub struct ClusterPresence {
    link: Arc<Link>,
    router: Arc<Router>,
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    /// Transitions to tell friends about, coalesced per user (newest epoch wins).
    queue: Mutex<HashMap<UserId, Transition>>,
    wake: Notify,
    /// The newest epoch applied per user, and when.
    applied: Mutex<HashMap<UserId, (u64, Instant)>>,
}

impl ClusterPresence {
    pub fn new(
        link: Arc<Link>,
        router: Arc<Router>,
        store: Arc<dyn Store>,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
    ) -> Self {
        ClusterPresence {
            link,
            router,
            store,
            hub,
            metrics,
            queue: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            applied: Mutex::new(HashMap::new()),
        }
    }

    /// Transitions this node caused (from the directory): to be told to friends.
    pub fn enqueue(&self, transitions: Vec<(UserId, Transition)>) {
        if transitions.is_empty() {
            return;
        }
        let mut q = self.queue.lock();
        for (user, t) in transitions {
            match q.get(&user) {
                Some(old) if old.epoch >= t.epoch => {}
                _ => {
                    q.insert(user, t);
                }
            }
        }
        drop(q);
        self.wake.notify_one();
    }

    /// Tells friends about queued transitions, until shutdown.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut prune = tokio::time::interval(REMEMBER / 2);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = prune.tick() => {
                    let now = Instant::now();
                    self.applied.lock().retain(|_, (_, at)| now.duration_since(*at) < REMEMBER);
                    continue;
                }
            }
            // Several at a time: after a node dies, thousands of users change at
            // once, and each costs a few round trips (epochs keep the order right).
            let batch = std::mem::take(&mut *self.queue.lock());
            let this = &*self;
            futures_util::stream::iter(batch)
                .for_each_concurrent(EMIT_CONCURRENCY, |(user, t)| async move {
                    if let Err(e) = this.tell_friends(user, t).await {
                        tracing::warn!(user_id = user, cause = %e, "cluster presence: telling friends failed");
                    }
                })
                .await;
        }
    }

    async fn tell_friends(&self, user: UserId, t: Transition) -> Result<(), ClusterError> {
        Metrics::inc(&self.metrics.presence_changes);
        if let Err(e) = self.store.set_last_active(user, t.at).await {
            tracing::warn!(user_id = user, cause = %e, "recording last_active_at failed");
        }
        let friends = self
            .store
            .friends(user)
            .await
            .map_err(|e| ClusterError::Store(e.to_string()))?;
        self.apply(user, t, &friends);
        let (by_node, _) = self.router.others(&friends).await?;
        let out = by_node
            .into_iter()
            .map(|(instance, to)| {
                let envelope = Envelope::Presence {
                    user,
                    status: t.status,
                    at: t.at,
                    epoch: t.epoch,
                    to,
                };
                (instance, envelope)
            })
            .collect();
        self.router.publish(out).await
    }

    /// Delivers a transition to the friends connected here, unless a newer one of
    /// that user was applied already.
    pub fn apply(&self, user: UserId, t: Transition, friends: &[UserId]) {
        {
            let mut applied = self.applied.lock();
            if applied
                .get(&user)
                .is_some_and(|&(epoch, _)| epoch >= t.epoch)
            {
                return;
            }
            applied.insert(user, (t.epoch, Instant::now()));
        }
        let frame: Utf8Bytes = ServerFrame::Presence {
            user_id: user,
            status: t.status,
            last_active_at: Some(t.at),
        }
        .to_json()
        .into();
        for &friend in friends {
            self.hub.deliver(friend, None, &frame);
        }
    }

    /// Each user's cluster-wide status, and for an online one when it came online
    /// on its most recent node (heartbeats are not written to Redis).
    pub async fn statuses(
        &self,
        users: &[UserId],
    ) -> Result<Vec<(Status, Option<Millis>)>, ClusterError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let pipe = self.link.client().pipeline();
        for &u in users {
            let _: () = pipe
                .hgetall(self.link.user_key(u))
                .await
                .map_err(redis_err)?;
        }
        let rows: Vec<Value> = pipe.all().await.map_err(redis_err)?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let row: HashMap<String, String> = row.convert().unwrap_or_default();
                let since = row
                    .iter()
                    .filter(|(k, _)| k.starts_with("o:"))
                    .filter_map(|(_, v)| v.parse::<Millis>().ok())
                    .max();
                match since {
                    Some(at) => (Status::Online, Some(at)),
                    None => (Status::Offline, None),
                }
            })
            .collect())
    }
}

/// Where this node's local presence changes go in a cluster: to the directory.
pub struct ToDirectory(pub Arc<super::directory::Directory>);

#[async_trait]
impl crate::presence::Changes for ToDirectory {
    async fn changed(&self, batch: HashMap<UserId, (Status, Millis)>) {
        for (user, (status, at)) in batch {
            self.0.mark(user, (status == Status::Offline).then_some(at));
        }
    }
}
