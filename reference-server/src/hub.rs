//! The hub: which devices are connected to this node, and fan-out to them.
//!
//! Users are spread over shards, each a `parking_lot::RwLock` around a map from
//! user to that user's open connections, so fan-out to many users takes many
//! short read locks rather than one long one. Delivering never blocks: it pushes
//! into each connection's bounded [`Outbox`], which closes a slow connection
//! instead of growing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use parking_lot::RwLock;

use crate::metrics::Metrics;
use crate::outbox::{CloseReason, Outbox, Pushed};
use crate::protocol::{DeviceId, UserId};

const SHARDS: usize = 64;

/// One open WebSocket connection of a device.
#[derive(Clone)]
struct Conn {
    id: u64,
    device: DeviceId,
    outbox: Arc<Outbox>,
}

/// One shard: users to their open connections.
type Shard = RwLock<HashMap<UserId, Vec<Conn>>>;

pub struct Hub {
    shards: Box<[Shard]>,
    next_conn: AtomicU64,
    metrics: Arc<Metrics>,
}

/// What a delivery reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reached {
    /// Connections the frame was queued on.
    pub queued: usize,
    /// Connections of the user, queued or not (closing ones included).
    pub connections: usize,
}

impl Hub {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Hub {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            next_conn: AtomicU64::new(1),
            metrics,
        }
    }

    fn shard(&self, user: UserId) -> &Shard {
        &self.shards[(user as usize) % SHARDS]
    }

    /// Registers a connection; returns its id for [`Hub::unregister`].
    pub fn register(&self, user: UserId, device: DeviceId, outbox: Arc<Outbox>) -> u64 {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        self.shard(user)
            .write()
            .entry(user)
            .or_default()
            .push(Conn { id, device, outbox });
        id
    }

    /// Removes a connection; returns how many connections the user still has.
    pub fn unregister(&self, user: UserId, conn: u64) -> usize {
        let mut shard = self.shard(user).write();
        let Some(conns) = shard.get_mut(&user) else {
            return 0;
        };
        conns.retain(|c| c.id != conn);
        let left = conns.len();
        if left == 0 {
            shard.remove(&user);
        }
        left
    }

    /// Queues a frame on every connection of `user` except those of device `skip`.
    pub fn deliver(&self, user: UserId, skip: Option<DeviceId>, frame: &Utf8Bytes) -> Reached {
        let shard = self.shard(user).read();
        let Some(conns) = shard.get(&user) else {
            return Reached::default();
        };
        let mut reached = Reached {
            queued: 0,
            connections: conns.len(),
        };
        for c in conns.iter().filter(|c| Some(c.device) != skip) {
            match c.outbox.push(frame.clone()) {
                Pushed::Queued => reached.queued += 1,
                Pushed::Overflowed => Metrics::inc(&self.metrics.slow_consumer_disconnects),
                Pushed::Closed => {}
            }
        }
        Metrics::inc_by(&self.metrics.deliveries, reached.queued as u64);
        reached
    }

    /// True if the user has at least one open connection on this node.
    pub fn is_connected(&self, user: UserId) -> bool {
        self.shard(user).read().contains_key(&user)
    }

    /// Closes every connection of one device (logout).
    pub fn close_device(&self, user: UserId, device: DeviceId, reason: CloseReason) {
        if let Some(conns) = self.shard(user).read().get(&user) {
            for c in conns.iter().filter(|c| c.device == device) {
                c.outbox.close(reason);
            }
        }
    }

    /// Distinct connected devices, for `/metrics`.
    pub fn devices_online(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.read()
                    .values()
                    .map(|conns| {
                        let mut devices: Vec<DeviceId> = conns.iter().map(|c| c.device).collect();
                        devices.sort_unstable();
                        devices.dedup();
                        devices.len()
                    })
                    .sum::<usize>()
            })
            .sum()
    }
}
