//! The cluster: nodes of this server sharing one Redis for discovery, routing,
//! presence and revocation (`--cluster redis://HOST:PORT[/DB][?prefix=NAME]`).
//! Storage is shared too (Redis or PostgreSQL), so any node serves any user.
//!
//! One concept per file:
//! - [`link`]: the connection to Redis, key and channel names, the scripts;
//! - [`registry`]: discovery (live nodes, least loaded first; dead nodes reaped);
//! - [`directory`]: where each user is connected and online, written in batches;
//! - [`routing`]: envelopes between nodes over pub/sub, one channel per node;
//! - [`presence`]: cluster-wide presence transitions told to friends everywhere;
//! - [`revocation`]: a logout closes the device's connections on every node.
//!
//! [`Cluster`] is the narrow handle the rest of the server holds: the chat service
//! routes messages and logouts through it, the HTTP API asks it for servers and
//! statuses, the hub tells its directory about first and last connections, and the
//! local presence loop hands it this node's presence changes.
//! `docs/architecture.md` has the picture and the failure cases.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::clients::SubscriberClient;
use fred::prelude::*;
use tokio_util::sync::CancellationToken;

pub mod directory;
pub mod link;
pub mod presence;
pub mod registry;
pub mod revocation;
pub mod routing;

pub use link::ClusterError;

use crate::hub::Hub;
use crate::metrics::{label, Metrics};
use crate::protocol::{DeviceId, Millis, Seq, Status, UserId};
use crate::store::Store;
use directory::Directory;
use link::Link;
use presence::{ClusterPresence, ToDirectory, Transition};
use registry::{Registry, REFRESH};
use revocation::Revocation;
use routing::{Inbound, Router};

/// How often held message frames are checked against the seq grace (see `hub`).
const RELEASE_TICK: Duration = Duration::from_millis(50);

/// What a node is, as the cluster needs to know it.
pub struct Membership {
    /// `--cluster`: the Redis URL (with an optional `?prefix=`).
    pub url: String,
    pub node_id: String,
    /// The WebSocket URL discovery hands out for this node.
    pub ws_url: String,
    /// Most connections this node holds (discovery's load is connections / this).
    pub capacity: u64,
    pub offline_after: Duration,
}

/// The parts of this node the cluster works with.
pub struct Parts {
    pub hub: Arc<Hub>,
    pub presence: Arc<crate::presence::Presence>,
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
}

/// This node's membership of the cluster.
pub struct Cluster {
    instance: String,
    registry: Arc<Registry>,
    router: Arc<Router>,
    directory: Arc<Directory>,
    presence: Arc<ClusterPresence>,
    revocation: Arc<Revocation>,
}

/// Dispatches what arrives from other nodes.
struct Arrivals {
    hub: Arc<Hub>,
    presence: Arc<ClusterPresence>,
    revocation: Arc<Revocation>,
}

impl Inbound for Arrivals {
    fn message(&self, from: UserId, from_device: DeviceId, to: &[(UserId, Seq)], shared: &str) {
        routing::deliver_message(&self.hub, from, from_device, to, shared);
    }
    fn presence(&self, user: UserId, status: Status, at: Millis, epoch: u64, to: &[UserId]) {
        self.presence
            .apply(user, Transition { status, at, epoch }, to);
    }
    fn close(&self, user: UserId, device: DeviceId) {
        self.revocation.apply(user, device);
    }
}

impl Cluster {
    /// Connects, registers this node and starts the background tasks (refresh,
    /// directory writer, presence emitter, subscriber), all ending at `shutdown`
    /// (when the node leaves the registry at once).
    pub async fn join(
        me: Membership,
        parts: Parts,
        shutdown: CancellationToken,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let link = Arc::new(Link::connect(&me.url).await?);
        let instance = format!("{}.{:08x}", me.node_id, rand::random::<u32>());
        let registry = Arc::new(Registry::new(
            link.clone(),
            instance.clone(),
            me.node_id.clone(),
            me.ws_url.clone(),
            me.capacity,
            me.offline_after,
        ));
        let router = Arc::new(Router::new(
            link.clone(),
            instance.clone(),
            registry.clone(),
        ));
        let presence = Arc::new(ClusterPresence::new(
            link.clone(),
            router.clone(),
            parts.store.clone(),
            parts.hub.clone(),
            parts.metrics.clone(),
        ));
        let directory = Arc::new(Directory::new(
            link.clone(),
            instance.clone(),
            parts.hub.clone(),
            parts.presence.clone(),
            presence.clone(),
        ));
        let revocation = Arc::new(Revocation::new(
            router.clone(),
            parts.hub.clone(),
            parts.presence.clone(),
        ));
        parts.hub.set_watch(directory.clone());

        let subscriber = subscriber(&link.url).await?;
        registry.refresh(0).await?;
        let cluster = Arc::new(Cluster {
            instance: instance.clone(),
            registry: registry.clone(),
            router: router.clone(),
            directory: directory.clone(),
            presence: presence.clone(),
            revocation: revocation.clone(),
        });
        let arrivals = Arc::new(Arrivals {
            hub: parts.hub.clone(),
            presence: presence.clone(),
            revocation,
        });
        tokio::spawn(routing::run_subscriber(
            link.clone(),
            instance.clone(),
            router,
            arrivals,
            subscriber,
            shutdown.clone(),
        ));
        tokio::spawn(directory.clone().run(shutdown.clone()));
        tokio::spawn(presence.run(shutdown.clone()));
        tokio::spawn(refresh_loop(
            cluster.clone(),
            parts.metrics,
            shutdown.clone(),
        ));
        tokio::spawn(release_loop(parts.hub, shutdown));
        tracing::info!(%instance, url = %crate::store::redact(&me.url), "joined the cluster");
        Ok(cluster)
    }

    /// The WebSocket URLs of the live nodes, least loaded first.
    pub fn servers(&self) -> Vec<String> {
        self.registry.servers()
    }

    /// Waits until deliveries for `user` are routed to this node (a new connection).
    pub async fn attached(&self, user: UserId) -> Result<(), ClusterError> {
        self.directory.attached(user).await
    }

    /// Sends a message to its members' devices on other nodes; returns the
    /// members with a device on another live node. When Redis is unreachable the
    /// frames are not sent (the devices sync them later) and the set is empty.
    pub async fn route_message(
        &self,
        recipients: &[(UserId, Seq)],
        from: UserId,
        from_device: DeviceId,
        shared: &str,
    ) -> HashSet<UserId> {
        match self
            .router
            .route_message(recipients, from, from_device, shared)
            .await
        {
            Ok(reachable) => reachable,
            Err(e) => {
                self.router
                    .counters
                    .failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(cause = %e, "cluster: routing a message failed");
                HashSet::new()
            }
        }
    }

    /// Closes a logged-out device's connections on the other nodes.
    pub async fn revoke(&self, user: UserId, device: DeviceId) -> Result<(), ClusterError> {
        self.revocation.revoke(user, device).await
    }

    /// Cluster-wide statuses (see [`ClusterPresence::statuses`]).
    pub async fn statuses(
        &self,
        users: &[UserId],
    ) -> Result<Vec<(Status, Option<Millis>)>, ClusterError> {
        self.presence.statuses(users).await
    }

    /// Where the local presence loop sends this node's presence changes.
    pub fn changes(&self) -> Arc<dyn crate::presence::Changes> {
        Arc::new(ToDirectory(self.directory.clone()))
    }

    /// The cluster's series for `/metrics`, labelled with `node`.
    pub fn render_metrics(&self, node: &str, out: &mut String) {
        let node = label(node);
        let c = &self.router.counters;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let rows: [(&str, &str, &str, u64); 6] = [
            (
                "chatscale_cluster_nodes",
                "gauge",
                "Live nodes in this node's view of the registry.",
                self.registry.nodes().len() as u64,
            ),
            (
                "chatscale_cluster_published_total",
                "counter",
                "Envelopes published to other nodes (messages, presence, logouts).",
                get(&c.published),
            ),
            (
                "chatscale_cluster_received_total",
                "counter",
                "Envelopes received from other nodes.",
                get(&c.received),
            ),
            (
                "chatscale_cluster_lost_total",
                "counter",
                "Envelopes dropped because this node fell behind its pub/sub buffer.",
                get(&c.lost),
            ),
            (
                "chatscale_cluster_route_failures_total",
                "counter",
                "Messages whose routing to other nodes failed (Redis unreachable).",
                get(&c.failures),
            ),
            (
                "chatscale_cluster_malformed_total",
                "counter",
                "Envelopes that could not be decoded.",
                get(&c.malformed),
            ),
        ];
        for (name, kind, help, value) in rows {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{node=\"{node}\"}} {value}"
            );
        }
        let _ = writeln!(out, "# HELP chatscale_cluster_redis_round_trips_total Round trips to the cluster Redis, by purpose.\n# TYPE chatscale_cluster_redis_round_trips_total counter");
        for (op, n) in [
            ("route", get(&c.round_trips)),
            ("directory", get(&self.directory.round_trips)),
            ("registry", get(&self.registry.round_trips)),
        ] {
            let _ = writeln!(
                out,
                "chatscale_cluster_redis_round_trips_total{{node=\"{node}\",op=\"{op}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP chatscale_cluster_info This node's instance in the cluster.\n# TYPE chatscale_cluster_info gauge\nchatscale_cluster_info{{node=\"{node}\",instance=\"{}\"}} 1",
            label(&self.instance)
        );
    }
}

/// The subscriber connection: its own, with a large buffer so that a burst does
/// not drop envelopes before this node reads them.
async fn subscriber(url: &str) -> Result<SubscriberClient, ClusterError> {
    let config = Config::from_url(url).map_err(|e| ClusterError::Connect(e.to_string()))?;
    let client = Builder::from_config(config)
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(5);
        })
        .with_performance_config(|p| {
            p.broadcast_channel_capacity = routing::INBOUND_BUFFER;
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
        .build_subscriber_client()
        .map_err(|e| ClusterError::Connect(e.to_string()))?;
    client
        .init()
        .await
        .map_err(|e| ClusterError::Connect(crate::store::unreachable(url, &e)))?;
    Ok(client)
}

/// Refreshes the registry entry about once a second; reaps the dead nodes it is
/// handed; re-asserts this node's directory after its entry ran out. Leaves the
/// registry at shutdown.
async fn refresh_loop(cluster: Arc<Cluster>, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut failing = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let connections = metrics.connections.load(Ordering::Relaxed);
        match cluster.registry.refresh(connections).await {
            Ok(refreshed) => {
                if failing {
                    tracing::info!("cluster: the registry is reachable again");
                    failing = false;
                }
                if refreshed.rejoined {
                    tracing::warn!("cluster: this node's entry had run out; registered again");
                    cluster.directory.reassert();
                }
                for (instance, last_seen) in refreshed.claimed {
                    tokio::spawn(reap(cluster.clone(), instance, last_seen));
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(cause = %e, "cluster: refreshing the registry failed");
                    failing = true;
                }
            }
        }
    }
    if let Err(e) = cluster.registry.leave().await {
        tracing::warn!(cause = %e, "cluster: leaving the registry failed (the entry runs out by itself)");
    }
}

async fn reap(cluster: Arc<Cluster>, instance: String, last_seen: Millis) {
    match cluster.directory.reap(&instance, last_seen).await {
        Ok(users) => {
            if let Err(e) = cluster.registry.reaped(&instance).await {
                tracing::warn!(%instance, cause = %e, "cluster: finishing a reap failed");
            }
            tracing::info!(%instance, users, "cluster: reaped a dead node");
        }
        Err(e) => {
            tracing::warn!(%instance, cause = %e, "cluster: reaping failed; retried after the lease")
        }
    }
}

/// Releases message frames that waited too long for a missing seq.
async fn release_loop(hub: Arc<Hub>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(RELEASE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => hub.release_overdue(Instant::now()),
        }
    }
}
