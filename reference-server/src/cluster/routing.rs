//! Routing between nodes over Redis pub/sub: one channel per node instance.
//!
//! **Where users are.** Each user's cluster hash (see `directory`) holds an
//! `l:INSTANCE` field per node where the user has a connection. [`Router::locate`]
//! reads it for many users in one pipeline.
//!
//! **Sending.** A message's origin node delivers to its own connections directly
//! (no Redis), then [`Router::route_message`] reads the members' locations (one
//! pipeline) and publishes one envelope per other node holding a member's device
//! (one pipeline): the shared frame once, and each member's `seq`. Presence changes
//! and logouts travel the same way. So per message: two round trips to the
//! cluster Redis whatever the group size (plus one Redis Cluster node per slot
//! touched, in parallel).
//!
//! **Receiving.** [`run_subscriber`] reads this node's channel and hands each
//! envelope to the hub (message frames, released in seq order: see `hub`), to the
//! cluster presence (presence frames) or closes a device's connections (logout).
//! fred re-subscribes by itself after a reconnect. A frame lost meanwhile (Redis
//! restarting, the local buffer overflowing) is a seq gap the device syncs over.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use tokio_util::sync::CancellationToken;

use super::link::{redis_err, ClusterError, Link};
use super::registry::Registry;
use crate::protocol::{splice_seq, DeviceId, Millis, Seq, Status, UserId};

/// Pub/sub envelopes a node may hold unread before the oldest are dropped (and
/// counted): a bound on memory when the node falls behind.
pub const INBOUND_BUFFER: usize = 16 * 1024;

/// What travels between nodes.
#[derive(Debug, Clone, PartialEq)]
pub enum Envelope {
    /// A message frame (`shared`: serialized without its seq) for these members.
    Message {
        from: UserId,
        from_device: DeviceId,
        to: Vec<(UserId, Seq)>,
        shared: String,
    },
    /// `user` went online or offline (cluster-wide); tell these friends.
    Presence {
        user: UserId,
        status: Status,
        at: Millis,
        epoch: u64,
        to: Vec<UserId>,
    },
    /// A device logged out: close its connections.
    Close { user: UserId, device: DeviceId },
}

fn list<T: ToString>(items: impl Iterator<Item = T>) -> String {
    items.map(|i| i.to_string()).collect::<Vec<_>>().join(",")
}

impl Envelope {
    /// One line per field; the frame (which may hold anything) last.
    pub fn encode(&self) -> String {
        match self {
            Envelope::Message {
                from,
                from_device,
                to,
                shared,
            } => format!(
                "m\n{from}\n{from_device}\n{}\n{shared}",
                list(to.iter().map(|(u, s)| format!("{u}:{s}")))
            ),
            Envelope::Presence {
                user,
                status,
                at,
                epoch,
                to,
            } => {
                let status = if *status == Status::Online {
                    "on"
                } else {
                    "off"
                };
                format!("p\n{user}\n{status}\n{at}\n{epoch}\n{}", list(to.iter()))
            }
            Envelope::Close { user, device } => format!("c\n{user}\n{device}"),
        }
    }

    pub fn decode(text: &str) -> Option<Envelope> {
        let num = |s: &str| s.parse::<u64>().ok();
        let nums = |s: &str| -> Option<Vec<u64>> {
            s.split(',').filter(|x| !x.is_empty()).map(num).collect()
        };
        let (kind, rest) = text.split_once('\n')?;
        match kind {
            "m" => {
                let mut parts = rest.splitn(4, '\n');
                let from = num(parts.next()?)?;
                let from_device = num(parts.next()?)?;
                let to = parts
                    .next()?
                    .split(',')
                    .filter(|x| !x.is_empty())
                    .map(|pair| {
                        let (u, s) = pair.split_once(':')?;
                        Some((num(u)?, num(s)?))
                    })
                    .collect::<Option<Vec<_>>>()?;
                let shared = parts.next()?.to_string();
                Some(Envelope::Message {
                    from,
                    from_device,
                    to,
                    shared,
                })
            }
            "p" => {
                let f: Vec<&str> = rest.splitn(5, '\n').collect();
                let [user, status, at, epoch, to] = f[..] else {
                    return None;
                };
                let status = match status {
                    "on" => Status::Online,
                    "off" => Status::Offline,
                    _ => return None,
                };
                Some(Envelope::Presence {
                    user: num(user)?,
                    status,
                    at: num(at)?,
                    epoch: num(epoch)?,
                    to: nums(to)?,
                })
            }
            "c" => {
                let (user, device) = rest.split_once('\n')?;
                Some(Envelope::Close {
                    user: num(user)?,
                    device: num(device)?,
                })
            }
            _ => None,
        }
    }
}

/// Counters of the routing, for `/metrics`.
#[derive(Default)]
pub struct RouteCounters {
    /// Envelopes published to other nodes.
    pub published: AtomicU64,
    /// Envelopes received from other nodes.
    pub received: AtomicU64,
    /// Envelopes lost before this node read them (its buffer overflowed).
    pub lost: AtomicU64,
    /// Envelopes that could not be decoded.
    pub malformed: AtomicU64,
    /// Round trips to Redis for lookups and publishes.
    pub round_trips: AtomicU64,
    /// Routings that failed (Redis unreachable): members on other nodes miss the
    /// frame live and sync it later.
    pub failures: AtomicU64,
}

pub struct Router {
    link: Arc<Link>,
    instance: String,
    registry: Arc<Registry>,
    pub counters: RouteCounters,
}

/// Where an envelope goes: one node instance, and what to tell it.
pub type Outgoing = (String, Envelope);

impl Router {
    pub fn new(link: Arc<Link>, instance: String, registry: Arc<Registry>) -> Self {
        Router {
            link,
            instance,
            registry,
            counters: RouteCounters::default(),
        }
    }

    /// The node instances where each user has a connection (this node included).
    pub async fn locate(&self, users: &[UserId]) -> Result<Vec<Vec<String>>, ClusterError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let pipe = self.link.client().pipeline();
        for &u in users {
            let _: () = pipe.hkeys(self.link.user_key(u)).await.map_err(redis_err)?;
        }
        self.counters.round_trips.fetch_add(1, Ordering::Relaxed);
        let replies: Vec<Value> = pipe.all().await.map_err(redis_err)?;
        Ok(replies
            .into_iter()
            .map(|fields| {
                let fields = match fields {
                    Value::Array(v) => v,
                    Value::Null => Vec::new(),
                    one => vec![one],
                };
                fields
                    .iter()
                    .filter_map(|f| f.as_str()?.strip_prefix("l:").map(str::to_string))
                    .collect()
            })
            .collect())
    }

    /// Publishes envelopes, one per node instance, in one pipeline.
    pub async fn publish(&self, out: Vec<Outgoing>) -> Result<(), ClusterError> {
        if out.is_empty() {
            return Ok(());
        }
        let pipe = self.link.client().pipeline();
        for (instance, envelope) in &out {
            let _: () = pipe
                .publish(self.link.node_channel(instance), envelope.encode())
                .await
                .map_err(redis_err)?;
        }
        self.counters.round_trips.fetch_add(1, Ordering::Relaxed);
        let _: Vec<Value> = pipe.all().await.map_err(redis_err)?;
        self.counters
            .published
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Groups users by the other nodes they are connected to: instance -> users.
    /// Also returns the users connected to a live other node (for push decisions).
    pub async fn others(
        &self,
        users: &[UserId],
    ) -> Result<(HashMap<String, Vec<UserId>>, HashSet<UserId>), ClusterError> {
        let places = self.locate(users).await?;
        let mut by_node: HashMap<String, Vec<UserId>> = HashMap::new();
        let mut reachable = HashSet::new();
        for (&user, instances) in users.iter().zip(places) {
            for instance in instances {
                if instance == self.instance {
                    continue;
                }
                if self.registry.maybe_live(&instance) {
                    reachable.insert(user);
                }
                // Published even to a node this view holds dead: a wasted publish
                // until it is reaped is cheaper than a lookup of the dead.
                by_node.entry(instance).or_default().push(user);
            }
        }
        Ok((by_node, reachable))
    }

    /// Sends a message frame to the members' devices on other nodes; returns the
    /// members that have a device on another live node.
    pub async fn route_message(
        &self,
        recipients: &[(UserId, Seq)],
        from: UserId,
        from_device: DeviceId,
        shared: &str,
    ) -> Result<HashSet<UserId>, ClusterError> {
        let users: Vec<UserId> = recipients.iter().map(|&(u, _)| u).collect();
        let (by_node, reachable) = self.others(&users).await?;
        let seqs: HashMap<UserId, Seq> = recipients.iter().copied().collect();
        let out = by_node
            .into_iter()
            .map(|(instance, users)| {
                let to = users.into_iter().map(|u| (u, seqs[&u])).collect();
                let envelope = Envelope::Message {
                    from,
                    from_device,
                    to,
                    shared: shared.to_string(),
                };
                (instance, envelope)
            })
            .collect();
        self.publish(out).await?;
        Ok(reachable)
    }
}

/// What a node does with the envelopes it receives.
pub trait Inbound: Send + Sync {
    fn message(&self, from: UserId, from_device: DeviceId, to: &[(UserId, Seq)], shared: &str);
    fn presence(&self, user: UserId, status: Status, at: Millis, epoch: u64, to: &[UserId]);
    fn close(&self, user: UserId, device: DeviceId);
}

/// Splices each member's seq into the shared frame and hands it to the hub.
pub fn deliver_message(
    hub: &crate::hub::Hub,
    from: UserId,
    from_device: DeviceId,
    to: &[(UserId, Seq)],
    shared: &str,
) {
    for &(user, seq) in to {
        let frame: Utf8Bytes = splice_seq(shared, seq).into();
        let skip = (user == from).then_some(from_device);
        hub.deliver_seq(user, seq, skip, &frame);
    }
}

/// Subscribes to this node's channel and dispatches what arrives, until shutdown.
pub async fn run_subscriber(
    link: Arc<Link>,
    instance: String,
    router: Arc<Router>,
    inbound: Arc<dyn Inbound>,
    subscriber: SubscriberClient,
    shutdown: CancellationToken,
) {
    let channel = link.node_channel(&instance);
    let mut rx = subscriber.message_rx();
    let manager = subscriber.manage_subscriptions();
    if let Err(e) = subscriber.subscribe(channel.clone()).await {
        tracing::error!(%channel, cause = %e, "cluster: subscribing failed");
    }
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => break,
            msg = rx.recv() => msg,
        };
        let msg = match msg {
            Ok(m) => m,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                router.counters.lost.fetch_add(n, Ordering::Relaxed);
                tracing::warn!(lost = n, "cluster: inbound envelopes dropped (node behind)");
                continue;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
        };
        router.counters.received.fetch_add(1, Ordering::Relaxed);
        let Some(text) = msg.value.as_string() else {
            router.counters.malformed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        match Envelope::decode(&text) {
            Some(Envelope::Message {
                from,
                from_device,
                to,
                shared,
            }) => inbound.message(from, from_device, &to, &shared),
            Some(Envelope::Presence {
                user,
                status,
                at,
                epoch,
                to,
            }) => inbound.presence(user, status, at, epoch, &to),
            Some(Envelope::Close { user, device }) => inbound.close(user, device),
            None => {
                router.counters.malformed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    manager.abort();
    let _ = subscriber.quit().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip() {
        for e in [
            Envelope::Message {
                from: 1,
                from_device: 2,
                to: vec![(3, 40), (5, 6)],
                shared: "{\"a\":\"line\\nbreak\"}\nraw\nlines".into(),
            },
            Envelope::Presence {
                user: 7,
                status: Status::Offline,
                at: 123,
                epoch: 99,
                to: vec![1, 2],
            },
            Envelope::Presence {
                user: 7,
                status: Status::Online,
                at: 1,
                epoch: 2,
                to: vec![],
            },
            Envelope::Close { user: 3, device: 9 },
        ] {
            assert_eq!(Envelope::decode(&e.encode()), Some(e));
        }
        assert_eq!(Envelope::decode("x\n1"), None);
    }
}
