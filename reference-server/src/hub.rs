//! The hub: which devices are connected to this node, and fan-out to them.
//!
//! Users are spread over shards, each a `parking_lot::RwLock` around a map from
//! user to that user's open connections, so fan-out to many users takes many
//! short locks rather than one long one. Delivering never blocks: it pushes
//! into each connection's bounded [`Outbox`], which closes a slow connection
//! instead of growing.
//!
//! **Ordered delivery (cluster mode).** Alone, a node delivers each channel's
//! messages in id order because sends to one channel hold one lock through their
//! fan-out (see `chat`). In a cluster, a user's messages reach this node from
//! several origins (its own sends and pub/sub from other nodes), which race. So a
//! hub built [`Hub::ordered`] releases each user's message frames in inbox `seq`
//! order: a frame whose seq is ahead of the next expected one waits (at most
//! [`SEQ_GRACE`]) for the missing ones. Every inbox holds a channel's messages in
//! id order, so seq order gives id order within every channel on every device. A
//! seq that never comes (pub/sub dropped it, its sender crashed) is skipped after
//! the grace: the device sees the gap and syncs, as the protocol says. A frame
//! older than the next expected seq is dropped, never delivered out of order.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use parking_lot::RwLock;

use crate::metrics::Metrics;
use crate::outbox::{CloseReason, Outbox, Pushed};
use crate::protocol::{DeviceId, Seq, UserId};

const SHARDS: usize = 64;
/// How long an ordered frame waits for a missing earlier seq before it is released.
pub const SEQ_GRACE: Duration = Duration::from_millis(300);
/// Frames one user may have waiting; past it they are released at once.
const MAX_HELD: usize = 256;

/// One open WebSocket connection of a device.
#[derive(Clone)]
struct Conn {
    id: u64,
    device: DeviceId,
    outbox: Arc<Outbox>,
}

/// A user's connections on this node, and (ordered hubs) where its seq stands.
struct User {
    conns: Vec<Conn>,
    order: Option<Box<Order>>,
}

/// Ordered delivery state of one user.
#[derive(Default)]
struct Order {
    /// The next seq to release; 0 until the first connection's `hello` says where
    /// the inbox stood ([`Hub::start_after`]).
    next: Seq,
    /// Frames ahead of `next`: seq -> (device to skip, frame).
    held: BTreeMap<Seq, (Option<DeviceId>, Utf8Bytes)>,
    /// When the oldest frame still held started waiting.
    since: Option<Instant>,
}

/// One shard: users to their open connections.
type Shard = RwLock<HashMap<UserId, User>>;

/// Told when a user's first connection on this node opens and its last one closes
/// (the cluster keeps its location directory this way).
pub trait Watch: Send + Sync {
    fn changed(&self, user: UserId);
}

pub struct Hub {
    shards: Box<[Shard]>,
    next_conn: AtomicU64,
    metrics: Arc<Metrics>,
    ordered: bool,
    /// Users with frames held, so the overdue sweep skips an idle hub.
    holding: AtomicUsize,
    watch: OnceLock<Arc<dyn Watch>>,
}

/// What a delivery reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reached {
    /// Connections the frame was queued on (now; a held frame is queued later).
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
            ordered: false,
            holding: AtomicUsize::new(0),
            watch: OnceLock::new(),
        }
    }

    /// A hub that releases each user's message frames in seq order (cluster mode).
    pub fn ordered(metrics: Arc<Metrics>) -> Self {
        Hub {
            ordered: true,
            ..Hub::new(metrics)
        }
    }

    /// Sets who is told about first and last connections (once).
    pub fn set_watch(&self, watch: Arc<dyn Watch>) {
        let _ = self.watch.set(watch);
    }

    fn shard(&self, user: UserId) -> &Shard {
        &self.shards[(user as usize) % SHARDS]
    }

    /// Registers a connection; returns its id for [`Hub::unregister`].
    pub fn register(&self, user: UserId, device: DeviceId, outbox: Arc<Outbox>) -> u64 {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let first = {
            let mut shard = self.shard(user).write();
            let entry = shard.entry(user).or_insert_with(|| User {
                conns: Vec::new(),
                order: self.ordered.then(Box::default),
            });
            entry.conns.push(Conn { id, device, outbox });
            entry.conns.len() == 1
        };
        if first {
            if let Some(w) = self.watch.get() {
                w.changed(user);
            }
        }
        id
    }

    /// Removes a connection; returns how many connections the user still has.
    pub fn unregister(&self, user: UserId, conn: u64) -> usize {
        let left = {
            let mut shard = self.shard(user).write();
            let Some(entry) = shard.get_mut(&user) else {
                return 0;
            };
            entry.conns.retain(|c| c.id != conn);
            let left = entry.conns.len();
            if left == 0 {
                if let Some(order) = shard.remove(&user).and_then(|u| u.order) {
                    if !order.held.is_empty() {
                        self.holding.fetch_sub(1, Ordering::Relaxed);
                    }
                }
            }
            left
        };
        if left == 0 {
            if let Some(w) = self.watch.get() {
                w.changed(user);
            }
        }
        left
    }

    /// Queues a frame on every connection of `user` except those of device `skip`.
    pub fn deliver(&self, user: UserId, skip: Option<DeviceId>, frame: &Utf8Bytes) -> Reached {
        let shard = self.shard(user).read();
        let Some(entry) = shard.get(&user) else {
            return Reached::default();
        };
        self.push(&entry.conns, skip, frame)
    }

    fn push(&self, conns: &[Conn], skip: Option<DeviceId>, frame: &Utf8Bytes) -> Reached {
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

    /// Delivers the message frame carrying `user`'s inbox `seq`: at once on a hub
    /// that is not ordered, in seq order on one that is (see the module doc).
    pub fn deliver_seq(
        &self,
        user: UserId,
        seq: Seq,
        skip: Option<DeviceId>,
        frame: &Utf8Bytes,
    ) -> Reached {
        self.deliver_seq_with(user, seq, skip, || frame.clone())
    }

    /// [`Hub::deliver_seq`] with the frame made by `make` only if a connection
    /// of `user` (other than device `skip`'s) is here to take it: fan-out then
    /// builds no frame for an offline member, nor for a sender with no other
    /// device (every send's own entry).
    pub fn deliver_seq_with(
        &self,
        user: UserId,
        seq: Seq,
        skip: Option<DeviceId>,
        make: impl FnOnce() -> Utf8Bytes,
    ) -> Reached {
        if !self.ordered {
            let shard = self.shard(user).read();
            let Some(entry) = shard.get(&user) else {
                return Reached::default();
            };
            if entry.conns.iter().all(|c| Some(c.device) == skip) {
                return Reached {
                    queued: 0,
                    connections: entry.conns.len(),
                };
            }
            return self.push(&entry.conns, skip, &make());
        }
        let mut shard = self.shard(user).write();
        let Some(entry) = shard.get_mut(&user) else {
            return Reached::default();
        };
        let frame = &make();
        let order = entry.order.get_or_insert_with(Box::default);
        if order.next != 0 && seq < order.next {
            // Older than what was released: the device has it or syncs for it.
            Metrics::inc(&self.metrics.seq_dropped);
            return Reached {
                queued: 0,
                connections: entry.conns.len(),
            };
        }
        if order.next == seq {
            let reached = self.push(&entry.conns, skip, frame);
            order.next += 1;
            self.release_ready(&entry.conns, order);
            return reached;
        }
        if order.held.is_empty() {
            self.holding.fetch_add(1, Ordering::Relaxed);
            order.since = Some(Instant::now());
        }
        Metrics::inc(&self.metrics.seq_held);
        order.held.insert(seq, (skip, frame.clone()));
        if order.held.len() > MAX_HELD {
            self.skip_ahead(&entry.conns, order);
        }
        Reached {
            queued: 0,
            connections: entry.conns.len(),
        }
    }

    /// Releases held frames from `next` on, while they follow each other.
    fn release_ready(&self, conns: &[Conn], order: &mut Order) {
        let had = !order.held.is_empty();
        while let Some((skip, frame)) = order.held.remove(&order.next) {
            self.push(conns, skip, &frame);
            order.next += 1;
        }
        // Anything held now is behind a newer gap: it waits from now on.
        order.since = (!order.held.is_empty()).then(Instant::now);
        if had && order.held.is_empty() {
            self.holding.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Gives up on the missing seqs before the oldest held frame: the device sees
    /// the gap and syncs.
    fn skip_ahead(&self, conns: &[Conn], order: &mut Order) {
        if let Some((&first, _)) = order.held.first_key_value() {
            Metrics::inc(&self.metrics.seq_skipped);
            order.next = first;
            self.release_ready(conns, order);
        }
    }

    /// The inbox head a user's new connection announced in `hello`: ordered
    /// delivery starts after it (if it had not started already).
    pub fn start_after(&self, user: UserId, head: Seq) {
        if !self.ordered {
            return;
        }
        let mut shard = self.shard(user).write();
        let Some(entry) = shard.get_mut(&user) else {
            return;
        };
        let order = entry.order.get_or_insert_with(Box::default);
        if order.next != 0 {
            return;
        }
        order.next = head + 1;
        let had = !order.held.is_empty();
        order.held = order.held.split_off(&order.next);
        if had && order.held.is_empty() {
            self.holding.fetch_sub(1, Ordering::Relaxed);
        }
        self.release_ready(&entry.conns, order);
    }

    /// Releases the frames that waited longer than [`SEQ_GRACE`] for a missing seq.
    pub fn release_overdue(&self, now: Instant) {
        if self.holding.load(Ordering::Relaxed) == 0 {
            return;
        }
        for shard in self.shards.iter() {
            let mut shard = shard.write();
            for entry in shard.values_mut() {
                let User { conns, order } = entry;
                let Some(order) = order else { continue };
                if order
                    .since
                    .is_some_and(|t| now.duration_since(t) >= SEQ_GRACE)
                {
                    self.skip_ahead(conns, order);
                }
            }
        }
    }

    /// True if the user has at least one open connection on this node.
    pub fn is_connected(&self, user: UserId) -> bool {
        self.shard(user).read().contains_key(&user)
    }

    /// Every user with a connection on this node.
    pub fn users(&self) -> Vec<UserId> {
        self.shards
            .iter()
            .flat_map(|s| s.read().keys().copied().collect::<Vec<_>>())
            .collect()
    }

    /// Closes every connection of one device (logout).
    pub fn close_device(&self, user: UserId, device: DeviceId, reason: CloseReason) {
        if let Some(entry) = self.shard(user).read().get(&user) {
            for c in entry.conns.iter().filter(|c| c.device == device) {
                c.outbox.close(reason);
            }
        }
    }

    /// Marks every connection to close (server shutdown): each session sees its
    /// outbox's mark and closes with the reason's code.
    pub fn close_all(&self, reason: CloseReason) {
        for shard in self.shards.iter() {
            for c in shard.read().values().flat_map(|u| &u.conns) {
                c.outbox.close(reason);
            }
        }
    }

    /// Calls `f` with the outbox of every open connection (the memory sampler).
    pub fn each_outbox(&self, mut f: impl FnMut(&Outbox)) {
        for shard in self.shards.iter() {
            for c in shard.read().values().flat_map(|u| &u.conns) {
                f(&c.outbox);
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
                    .map(|u| {
                        let mut devices: Vec<DeviceId> = u.conns.iter().map(|c| c.device).collect();
                        devices.sort_unstable();
                        devices.dedup();
                        devices.len()
                    })
                    .sum::<usize>()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(outbox: &Outbox) -> Vec<String> {
        let mut out = Vec::new();
        assert_eq!(outbox.take(&mut out, 100), None);
        out.iter().map(|f| f.to_string()).collect()
    }

    #[test]
    fn an_ordered_hub_releases_in_seq_order_and_skips_a_gap_after_the_grace() {
        let hub = Hub::ordered(Arc::new(Metrics::default()));
        let outbox = Arc::new(Outbox::new(100, 1 << 20));
        hub.register(1, 10, outbox.clone());
        // Before hello: held; hello at head 4 drops what it covers.
        hub.deliver_seq(1, 4, None, &"s4".into());
        hub.deliver_seq(1, 6, None, &"s6".into());
        hub.start_after(1, 4);
        assert!(frames(&outbox).is_empty(), "6 waits for 5");
        hub.deliver_seq(1, 5, None, &"s5".into());
        assert_eq!(frames(&outbox), ["s5", "s6"]);
        hub.deliver_seq(1, 5, None, &"again".into());
        hub.deliver_seq(1, 9, None, &"s9".into());
        hub.release_overdue(Instant::now());
        assert!(frames(&outbox).is_empty(), "within the grace");
        hub.release_overdue(Instant::now() + SEQ_GRACE);
        assert_eq!(frames(&outbox), ["s9"], "7 and 8 skipped");
        hub.deliver_seq(1, 8, None, &"late".into());
        assert!(frames(&outbox).is_empty(), "never out of order");
    }
}
