//! Presence by heartbeats.
//!
//! A user is online while at least one of its devices connected or sent a
//! heartbeat within `offline_after`. A dropped connection changes nothing at
//! once (a train entering a tunnel should not flap its user's status); the sweep,
//! which runs a few times per `offline_after`, turns users offline when their last
//! device's time runs out. Logging out the last fresh device is immediate.
//!
//! Only online users have an entry, so memory follows the online population.
//! Status changes are coalesced per user into a pending map (bounded by the number
//! of users, not by traffic) that one notifier task drains into [`Changes`]: alone,
//! [`ToFriends`] records `last_active_at` in storage and pushes a `presence` frame
//! to the user's connected friends; in a cluster, the changes go to the cluster's
//! directory, which tells friends only of cluster-wide transitions
//! (`cluster::presence`). Coalescing means a flap faster than the notifier
//! collapses into its final state, which is what friends should see.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::auth::now_ms;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::protocol::{DeviceId, Millis, ServerFrame, Status, UserId};
use crate::store::Store;

pub struct Presence {
    state: Mutex<State>,
    changed: Notify,
    offline_after_ms: Millis,
}

#[derive(Default)]
struct State {
    /// Online users: each fresh device with its last heartbeat time.
    online: HashMap<UserId, Vec<(DeviceId, Millis)>>,
    /// Changes not yet pushed: user -> (status, last_active_at).
    pending: HashMap<UserId, (Status, Millis)>,
}

impl Presence {
    pub fn new(offline_after: Duration) -> Self {
        Presence {
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            offline_after_ms: offline_after.as_millis() as Millis,
        }
    }

    /// A device connected or sent a heartbeat.
    pub fn touch(&self, user: UserId, device: DeviceId, now: Millis) {
        let mut st = self.state.lock();
        let devices = st.online.entry(user).or_default();
        let was_offline = devices.is_empty();
        match devices.iter_mut().find(|(d, _)| *d == device) {
            Some(entry) => entry.1 = entry.1.max(now),
            None => devices.push((device, now)),
        }
        if was_offline {
            st.pending.insert(user, (Status::Online, now));
            drop(st);
            self.changed.notify_one();
        }
    }

    /// A device logged out: it stops counting at once.
    pub fn logout(&self, user: UserId, device: DeviceId, now: Millis) {
        let mut st = self.state.lock();
        let Some(devices) = st.online.get_mut(&user) else {
            return;
        };
        devices.retain(|(d, _)| *d != device);
        if devices.is_empty() {
            st.online.remove(&user);
            st.pending.insert(user, (Status::Offline, now));
            drop(st);
            self.changed.notify_one();
        }
    }

    /// Drops devices whose last heartbeat is older than `offline_after`; users left
    /// with none go offline, with their last heartbeat as `last_active_at`.
    pub fn sweep(&self, now: Millis) {
        let horizon = now.saturating_sub(self.offline_after_ms);
        let mut st = self.state.lock();
        let mut gone = Vec::new();
        for (user, devices) in st.online.iter_mut() {
            let last = devices.iter().map(|&(_, t)| t).max().unwrap_or(0);
            devices.retain(|&(_, t)| t > horizon);
            if devices.is_empty() {
                gone.push((*user, last));
            }
        }
        for &(user, last) in &gone {
            st.online.remove(&user);
            st.pending.insert(user, (Status::Offline, last));
        }
        drop(st);
        if !gone.is_empty() {
            self.changed.notify_one();
        }
    }

    /// The status of a user, and its last heartbeat when online.
    pub fn status(&self, user: UserId) -> (Status, Option<Millis>) {
        match self.state.lock().online.get(&user) {
            Some(devices) => (Status::Online, devices.iter().map(|&(_, t)| t).max()),
            None => (Status::Offline, None),
        }
    }

    pub fn online_users(&self) -> usize {
        self.state.lock().online.len()
    }

    /// Every user online on this node.
    pub fn users(&self) -> Vec<UserId> {
        self.state.lock().online.keys().copied().collect()
    }

    fn take_pending(&self) -> HashMap<UserId, (Status, Millis)> {
        std::mem::take(&mut self.state.lock().pending)
    }
}

/// Where this node's presence changes go: `user -> (status, last_active_at)`.
#[async_trait]
pub trait Changes: Send + Sync {
    async fn changed(&self, batch: HashMap<UserId, (Status, Millis)>);
}

/// A node alone: record `last_active_at` and push a `presence` frame to the
/// user's friends connected here.
pub struct ToFriends {
    pub store: Arc<dyn Store>,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
}

#[async_trait]
impl Changes for ToFriends {
    async fn changed(&self, batch: HashMap<UserId, (Status, Millis)>) {
        for (user, (status, at)) in batch {
            Metrics::inc(&self.metrics.presence_changes);
            if let Err(e) = self.store.set_last_active(user, at).await {
                tracing::warn!(user_id = user, cause = %e, "recording last_active_at failed");
            }
            let friends = match self.store.friends(user).await {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(user_id = user, cause = %e, "presence: reading friends failed");
                    continue;
                }
            };
            let frame: Utf8Bytes = ServerFrame::Presence {
                user_id: user,
                status,
                last_active_at: Some(at),
            }
            .to_json()
            .into();
            for friend in friends {
                self.hub.deliver(friend, None, &frame);
            }
        }
    }
}

/// Runs the sweep timer and the notifier until `shutdown`.
pub async fn run(presence: Arc<Presence>, changes: Arc<dyn Changes>, shutdown: CancellationToken) {
    // A few sweeps per timeout bounds how late "offline" is (by a quarter of the
    // timeout at most), at the cost of one pass over online users per tick.
    let tick = Duration::from_millis((presence.offline_after_ms / 4).clamp(10, 1000));
    let mut timer = tokio::time::interval(tick);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = timer.tick() => presence.sweep(now_ms()),
            _ = presence.changed.notified() => {}
        }
        let pending = presence.take_pending();
        if !pending.is_empty() {
            changes.changed(pending).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drop_waits_for_the_timeout_and_logout_is_immediate() {
        let p = Presence::new(Duration::from_millis(100));
        p.touch(1, 10, 1_000);
        assert_eq!(p.status(1).0, Status::Online);
        p.sweep(1_050);
        assert_eq!(
            p.status(1).0,
            Status::Online,
            "not offline before the timeout"
        );
        p.sweep(1_101);
        assert_eq!(p.status(1).0, Status::Offline);

        p.touch(2, 20, 1_000);
        p.touch(2, 21, 1_000);
        p.logout(2, 20, 1_010);
        assert_eq!(
            p.status(2).0,
            Status::Online,
            "another device is still fresh"
        );
        p.logout(2, 21, 1_020);
        assert_eq!(p.status(2).0, Status::Offline);
        let pending = p.take_pending();
        assert_eq!(pending[&2], (Status::Offline, 1_020));
        assert_eq!(pending[&1], (Status::Offline, 1_000));
    }
}
