//! The embedded cluster: with no target, `run` starts the reference server
//! itself, as one node or as `[target] servers` nodes over a shared store, and
//! applies the phases' node faults to them.
//!
//! Every node is this executable re-run as the hidden `loadgen serve`
//! ([`crate::embedded`]) on its own loopback port, chosen once outside the
//! kernel's ephemeral range so a node started again after a fault gets the same
//! port (its old address stays valid in every device's memory). Nodes of a
//! cluster get `--cluster REDIS --node-id nK --advertise ws://ADDR`; the store
//! they share is `[target] storage`: a running Redis or PostgreSQL, or the word
//! `redis`, which starts a private `redis-server` in the run directory
//! ([`redis`]). Their meeting point (`--cluster`) is `[target] cluster`, or the
//! storage's Redis, or the private one; on a Redis loadgen did not start, the
//! nodes get a namespace of their own (`?prefix=`), so two runs on one Redis
//! never see each other's nodes.
//!
//! [`faults`] applies `kill_node`, `stop_node`, `start_node` at the phases'
//! start times; [`sampler`] reads every node's connection count each second
//! (the report's per-node timeline, and the server-side peak).

pub mod faults;
pub mod redis;
pub mod sampler;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;

use rand::Rng;

use crate::embedded::{EmbeddedConfig, EmbeddedServer};
use crate::error::LoadgenError;
use crate::scenario::{NodeFault, Scenario};
use redis::PrivateRedis;
use sampler::Live;

/// The word that asks for a private `redis-server`.
pub const PRIVATE_REDIS: &str = "redis";

/// Why storage cannot be shared by several nodes, if it cannot.
pub fn check_shared_storage(storage: &str) -> Result<(), String> {
    let s = storage.trim();
    if s == PRIVATE_REDIS
        || reference_server::store::is_redis_url(s)
        || s.starts_with("postgres://")
        || s.starts_with("postgresql://")
    {
        return Ok(());
    }
    Err(format!(
        "storage {s:?} lives inside one server process, so each node would keep its own accounts, messages and inboxes; a cluster needs storage every node shares: \"redis\" (a private redis-server loadgen starts), redis://HOST:PORT or postgres://..."
    ))
}

/// Why `url` cannot be a cluster's meeting point, if it cannot.
pub fn check_cluster_redis(url: &str) -> Result<(), String> {
    if url == PRIVATE_REDIS || reference_server::store::is_redis_url(url) {
        Ok(())
    } else {
        Err(format!(
            "{url:?}: the nodes meet in Redis: \"redis\" (a private redis-server) or redis://HOST:PORT"
        ))
    }
}

/// A free loopback port below the kernel's ephemeral range, so no outgoing
/// connection of this machine takes it while its node is down (a fault).
pub fn free_port() -> std::io::Result<u16> {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let mut rng = rand::rng();
    if low > 11_000 {
        for _ in 0..200 {
            let port = rng.random_range(10_000..low);
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Where the nodes' store and meeting point come from.
#[derive(Debug, Clone, PartialEq)]
enum Backend {
    Url(String),
    Private,
}

impl Backend {
    fn of(s: &str) -> Backend {
        if s == PRIVATE_REDIS {
            Backend::Private
        } else {
            Backend::Url(s.to_string())
        }
    }
}

/// The embedded server(s) a scenario asks for, checked before anything starts.
#[derive(Debug, Clone)]
pub struct Plan {
    pub servers: u32,
    storage: Backend,
    /// The cluster's Redis (nodes > 1 only).
    cluster: Option<Backend>,
    pub heartbeat_interval: Duration,
    pub offline_after: Duration,
}

impl Plan {
    /// The scenario's `[target]`, with `--storage` (when given) in place of its storage.
    pub fn of(scenario: &Scenario, storage_flag: Option<&str>) -> Result<Plan, LoadgenError> {
        let t = &scenario.target;
        let storage = storage_flag.unwrap_or(&t.storage).trim().to_string();
        if t.servers > 1 {
            check_shared_storage(&storage).map_err(|r| {
                let field = if storage_flag.is_some() {
                    "--storage"
                } else {
                    "target.servers"
                };
                LoadgenError::invalid(field, format!("{} nodes: {r}", t.servers))
            })?;
        }
        let cluster = (t.servers > 1).then(|| match &t.cluster {
            Some(c) => Backend::of(c),
            None if reference_server::store::is_redis_url(&storage) => {
                Backend::Url(storage.clone())
            }
            // "redis", or PostgreSQL storage: the nodes meet in a private Redis.
            None => Backend::Private,
        });
        Ok(Plan {
            servers: t.servers,
            storage: Backend::of(&storage),
            cluster,
            heartbeat_interval: scenario.behavior.heartbeat_interval,
            offline_after: scenario.behavior.offline_after,
        })
    }

    fn needs_private_redis(&self) -> bool {
        self.storage == Backend::Private || self.cluster == Some(Backend::Private)
    }
}

/// `url` with its own `prefix=` (a namespace) unless it names one.
fn namespaced(url: &str, prefix: &str) -> String {
    if url.contains("prefix=") {
        return url.to_string();
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}prefix={prefix}")
}

/// One node: its id, fixed address, and process while it runs.
struct Node {
    id: String,
    listen: SocketAddr,
    server: Option<EmbeddedServer>,
}

/// A node as the rest of the run sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeInfo {
    /// `n1`, `n2`, ... (its `--node-id` and `node` label).
    pub id: String,
    /// `http://HOST:PORT`.
    pub http: String,
    /// `ws://HOST:PORT/v1/ws`, as login and discovery hand it out.
    pub ws: String,
}

/// The embedded server, one node or several.
pub struct EmbeddedCluster {
    redis: Option<PrivateRedis>,
    nodes: Vec<Node>,
    /// How every node is started (the node's own fields filled in per start).
    config: EmbeddedConfig,
    /// What the report says the storage is.
    pub storage_label: String,
    /// The storage's durability, as the first node described it.
    pub durability: Option<String>,
    /// The nodes and their processes now, for readers that must not wait on
    /// a fault in progress (sampling, memory).
    pub live: Arc<std::sync::Mutex<Live>>,
}

impl EmbeddedCluster {
    /// Starts the private Redis (if the plan needs it) and every node.
    pub async fn start(plan: &Plan, run_dir: &Path) -> Result<EmbeddedCluster, LoadgenError> {
        let redis = if plan.needs_private_redis() {
            Some(PrivateRedis::start(&redis_dir(run_dir)).await?)
        } else {
            None
        };
        let private = redis.as_ref().map(|r| r.url.clone()).unwrap_or_default();
        let resolve = |b: &Backend| match b {
            Backend::Private => private.clone(),
            Backend::Url(u) => u.clone(),
        };
        let storage = resolve(&plan.storage);
        let nonce = format!(
            "lg{:x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis()
        );
        let cluster_url = plan.cluster.as_ref().map(|c| match c {
            Backend::Private => private.clone(),
            // A shared Redis: this run's nodes in a namespace of their own.
            Backend::Url(u) => namespaced(u, &nonce),
        });
        let storage_label = match (&plan.storage, plan.servers) {
            (Backend::Private, n) => format!("redis (private redis-server, {n} node(s))"),
            (Backend::Url(u), 1) => u.clone(),
            (Backend::Url(u), n) => format!("{u} ({n} nodes)"),
        };
        let config = EmbeddedConfig {
            storage,
            heartbeat_interval: plan.heartbeat_interval,
            offline_after: plan.offline_after,
            listen: None,
            cluster: cluster_url.map(|url| (url, String::new())),
        };
        let mut cluster = EmbeddedCluster {
            redis,
            nodes: (1..=plan.servers)
                .map(|k| Node {
                    id: format!("n{k}"),
                    listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                    server: None,
                })
                .collect(),
            config,
            storage_label,
            durability: None,
            live: Arc::default(),
        };
        let started = futures_util::future::join_all(
            (0..cluster.nodes.len()).map(|k| cluster.launch(k, None)),
        )
        .await;
        for (k, r) in started.into_iter().enumerate() {
            match r {
                Ok((listen, server)) => {
                    cluster.durability = cluster.durability.take().or(server.durability.clone());
                    cluster.nodes[k].listen = listen;
                    cluster.nodes[k].server = Some(server);
                }
                Err(e) => {
                    cluster.stop().await;
                    return Err(e);
                }
            }
        }
        cluster.publish();
        if plan.servers > 1 {
            eprintln!(
                "embedded cluster: {} nodes ({}) over {}",
                plan.servers,
                cluster
                    .nodes
                    .iter()
                    .map(|n| format!("{} {}", n.id, n.listen))
                    .collect::<Vec<_>>()
                    .join(", "),
                cluster.storage_label
            );
        }
        Ok(cluster)
    }

    /// Starts node `k` on `port` (a fresh free one when `None`, or when that
    /// one is taken); three tries.
    async fn launch(
        &self,
        k: usize,
        port: Option<u16>,
    ) -> Result<(SocketAddr, EmbeddedServer), LoadgenError> {
        let mut port = port;
        let mut last = None;
        for _ in 0..3 {
            let p = match port.take() {
                Some(p) => p,
                None => free_port()
                    .map_err(|e| LoadgenError::unrunnable(format!("no free port: {e}")))?,
            };
            let listen = SocketAddr::from(([127, 0, 0, 1], p));
            let mut cfg = self.config.clone();
            cfg.listen = Some(listen);
            if let Some((_, id)) = &mut cfg.cluster {
                *id = self.nodes[k].id.clone();
            }
            match EmbeddedServer::start(&cfg).await {
                Ok(server) => return Ok((listen, server)),
                Err(e) => {
                    // Another port helps only when the port was the problem
                    // (taken between choosing and binding) or the node gave no
                    // reason; a storage it cannot open is said once, at once.
                    let why = e.to_string();
                    if !why.contains("cannot listen on") && !why.contains("exited before listening")
                    {
                        return Err(e);
                    }
                    tracing::warn!(node = %self.nodes[k].id, %listen, cause = %e, "node did not start; trying another port");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| LoadgenError::unrunnable("the embedded server did not start")))
    }

    /// The nodes, in order (node K is `nodes()[K - 1]`).
    pub fn nodes(&self) -> Vec<NodeInfo> {
        self.nodes
            .iter()
            .map(|n| NodeInfo {
                id: n.id.clone(),
                http: format!("http://{}", n.listen),
                ws: format!("ws://{}/v1/ws", n.listen),
            })
            .collect()
    }

    /// `http://HOST:PORT` of the first node: provisioning and history go there.
    pub fn base(&self) -> String {
        format!("http://{}", self.nodes[0].listen)
    }

    /// Updates the [`Live`] view from the nodes.
    fn publish(&self) {
        let mut live = crate::engine::sim::lock(&self.live);
        live.nodes = self.nodes();
        live.pids = self
            .nodes
            .iter()
            .map(|n| n.server.as_ref().map(|s| s.pid))
            .collect();
    }

    /// Applies one fault; a node that will not start again is an error (the
    /// run goes on without it, and the caller counts it).
    pub async fn apply(&mut self, fault: NodeFault) -> Result<(), LoadgenError> {
        let k = fault.node();
        let id = self.nodes[k].id.clone();
        match fault {
            NodeFault::Kill(_) => {
                if let Some(s) = self.nodes[k].server.take() {
                    s.kill().await;
                }
                eprintln!("fault: node {id} killed (SIGKILL)");
            }
            NodeFault::Stop(_) => {
                if let Some(s) = self.nodes[k].server.take() {
                    s.stop().await;
                }
                eprintln!("fault: node {id} stopped (SIGTERM)");
            }
            NodeFault::Start(_) => {
                let old = self.nodes[k].listen;
                let (listen, server) = self.launch(k, Some(old.port())).await?;
                if listen != old {
                    tracing::warn!(node = %id, %old, new = %listen, "the node's port was taken: started on another");
                }
                self.nodes[k].listen = listen;
                self.nodes[k].server = Some(server);
                eprintln!("fault: node {id} started again on {listen}");
            }
        }
        self.publish();
        Ok(())
    }

    /// Stops every node (SIGTERM: sessions closed, storage flushed), then Redis.
    pub async fn stop(&mut self) {
        let servers: Vec<EmbeddedServer> = self
            .nodes
            .iter_mut()
            .filter_map(|n| n.server.take())
            .collect();
        futures_util::future::join_all(servers.into_iter().map(EmbeddedServer::stop)).await;
        if let Some(redis) = self.redis.take() {
            redis.stop().await;
        }
        self.publish();
    }
}

/// Where a private Redis keeps its (memory-only) working directory.
pub fn redis_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("redis")
}
