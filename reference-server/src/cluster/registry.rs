//! Discovery: the registry of live nodes in Redis, and this node's view of it.
//!
//! Every node refreshes its entry about once a second ([`REFRESH`]) with its
//! advertise URL, open connections and capacity (`--max-connections`); an entry
//! lives [`TTL`] past its last refresh. A node killed with `kill -9` stops
//! refreshing and drops out of every view when its entry runs out (at most `TTL`
//! later: each view remembers when each entry expires); a node stopped with SIGTERM
//! removes its entry at once ([`Registry::leave`]). One script does a refresh
//! (`register.lua`): it also moves dead entries to a reap list and hands out
//! claims on due reaps, so exactly one node cleans up after each dead one.
//!
//! `login`'s `servers` and `GET /v1/discovery` read the view, never Redis: least
//! loaded (connections / capacity) first. A node whose entry ran out while it
//! was cut off from Redis registers again by itself on its next refresh and is
//! told it rejoined (its users' directory entries may have been reaped).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fred::prelude::*;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use super::link::{ClusterError, Link, Lua};

/// How often a node refreshes its entry.
pub const REFRESH: Duration = Duration::from_secs(1);
/// How long an entry lives after its last refresh.
pub const TTL: Duration = Duration::from_secs(3);
/// How long a claim on reaping a dead node lasts before another node may take it.
const REAP_LEASE: Duration = Duration::from_secs(60);
/// Dead nodes one refresh claims.
const MAX_CLAIMS: u32 = 4;

/// A node as the registry describes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Info {
    node: String,
    url: String,
    connections: u64,
    capacity: u64,
}

/// A live node in this node's view.
#[derive(Debug, Clone)]
pub struct Node {
    pub instance: String,
    pub node_id: String,
    pub url: String,
    pub connections: u64,
    pub capacity: u64,
    expires: Instant,
}

impl Node {
    fn load(&self) -> f64 {
        self.connections as f64 / self.capacity.max(1) as f64
    }
}

/// This node's view of the registry, as of its last refresh.
#[derive(Default)]
struct View {
    /// Live nodes, least loaded first.
    nodes: Vec<Node>,
    /// Nodes known dead and not reaped yet.
    dead: std::collections::HashSet<String>,
}

/// What a refresh brought back besides the view.
pub struct Refreshed {
    /// This node was not live before the refresh (first time, or after its entry ran out).
    pub rejoined: bool,
    /// Dead nodes this node now reaps: (instance, last seen, ms).
    pub claimed: Vec<(String, u64)>,
}

pub struct Registry {
    link: std::sync::Arc<Link>,
    instance: String,
    node_id: String,
    url: String,
    capacity: u64,
    offline_after_ms: u64,
    view: RwLock<View>,
    /// Round trips to Redis, for `/metrics`.
    pub(crate) round_trips: AtomicU64,
}

impl Registry {
    pub fn new(
        link: std::sync::Arc<Link>,
        instance: String,
        node_id: String,
        url: String,
        capacity: u64,
        offline_after: Duration,
    ) -> Self {
        Registry {
            link,
            instance,
            node_id,
            url,
            capacity,
            offline_after_ms: offline_after.as_millis() as u64,
            view: RwLock::new(View::default()),
            round_trips: AtomicU64::new(0),
        }
    }

    /// Refreshes this node's entry (with its current connection count) and the view.
    pub async fn refresh(&self, connections: u64) -> Result<Refreshed, ClusterError> {
        let info = Info {
            node: self.node_id.clone(),
            url: self.url.clone(),
            connections,
            capacity: self.capacity,
        };
        let args: Vec<Value> = vec![
            self.instance.clone().into(),
            serde_json::to_string(&info).unwrap_or_default().into(),
            (TTL.as_millis() as i64).into(),
            (self.offline_after_ms as i64).into(),
            (REAP_LEASE.as_millis() as i64).into(),
            (MAX_CLAIMS as i64).into(),
        ];
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let reply = self
            .link
            .run(Lua::Register, self.link.registry_keys(), args)
            .await?
            .into_array();
        let bad = || ClusterError::Redis(format!("register answered {reply:?}"));
        let num = |v: &Value| v.as_i64().map(|n| n.max(0) as u64);
        let (Some(now), Some(rejoined), Some(n)) = (
            reply.first().and_then(num),
            reply.get(1).and_then(num),
            reply.get(2).and_then(num),
        ) else {
            return Err(bad());
        };
        let n = n as usize;
        if reply.len() < 3 + 3 * n {
            return Err(bad());
        }
        let local_now = Instant::now();
        let mut nodes = Vec::with_capacity(n);
        for row in reply[3..3 + 3 * n].chunks_exact(3) {
            let (Some(instance), Some(expiry), Some(json)) =
                (row[0].as_string(), num(&row[1]), row[2].as_string())
            else {
                return Err(bad());
            };
            let Ok(info) = serde_json::from_str::<Info>(&json) else {
                continue;
            };
            nodes.push(Node {
                instance,
                node_id: info.node,
                url: info.url,
                connections: info.connections,
                capacity: info.capacity,
                expires: local_now + Duration::from_millis(expiry.saturating_sub(now)),
            });
        }
        nodes.sort_by(|a, b| {
            a.load()
                .total_cmp(&b.load())
                .then(a.node_id.cmp(&b.node_id))
        });
        let rest = &reply[3 + 3 * n..];
        let m = rest.first().and_then(num).ok_or_else(bad)? as usize;
        if rest.len() < 1 + m {
            return Err(bad());
        }
        let dead = rest[1..=m].iter().filter_map(Value::as_string).collect();
        *self.view.write() = View { nodes, dead };
        let claimed = rest[1 + m..]
            .chunks_exact(2)
            .filter_map(|c| Some((c[0].as_string()?, num(&c[1])?)))
            .collect();
        Ok(Refreshed {
            rejoined: rejoined == 1,
            claimed,
        })
    }

    /// The live nodes, least loaded first (entries past their expiry left out).
    pub fn nodes(&self) -> Vec<Node> {
        let now = Instant::now();
        self.view
            .read()
            .nodes
            .iter()
            .filter(|n| n.expires > now)
            .cloned()
            .collect()
    }

    /// The WebSocket URLs discovery hands out, least loaded first. This node is
    /// always among them (its own view may lag while Redis is unreachable).
    pub fn servers(&self) -> Vec<String> {
        let mut urls: Vec<String> = self.nodes().into_iter().map(|n| n.url).collect();
        if !urls.contains(&self.url) {
            urls.push(self.url.clone());
        }
        urls
    }

    /// False only for a node known dead: its entry ran out (in this view, or it
    /// is on the reap list). A node this view does not know yet joined after the
    /// last refresh: it counts as live, so that its users are not taken for
    /// connected nowhere during its first second.
    pub fn maybe_live(&self, instance: &str) -> bool {
        let now = Instant::now();
        let view = self.view.read();
        match view.nodes.iter().find(|n| n.instance == instance) {
            Some(n) => n.expires > now,
            None => !view.dead.contains(instance),
        }
    }

    /// Leaves the registry at once (SIGTERM); the users are reaped later.
    pub async fn leave(&self) -> Result<(), ClusterError> {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let args = vec![
            self.instance.clone().into(),
            (self.offline_after_ms as i64).into(),
        ];
        self.link
            .run(Lua::Deregister, self.link.registry_keys(), args)
            .await?;
        Ok(())
    }

    /// A dead node's users are cleaned up: it leaves the reap list.
    pub async fn reaped(&self, instance: &str) -> Result<(), ClusterError> {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let keys = self.link.registry_keys();
        self.link
            .run(
                Lua::Reaped,
                vec![keys[2].clone(), keys[3].clone()],
                vec![instance.to_string().into()],
            )
            .await?;
        Ok(())
    }
}
