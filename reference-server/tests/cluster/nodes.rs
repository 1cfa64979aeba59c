//! Real `reference-server` processes forming a cluster over one Redis: each test
//! gets its own key prefix (storage and cluster) and so its own pub/sub channels,
//! so tests run in parallel against the shared Redis without hearing each other.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::support::Api;

/// One node process; killed when dropped.
pub struct Node {
    child: Option<Child>,
    pub api: Api,
}

impl std::ops::Deref for Node {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

/// Where the nodes of one test keep their data and meet.
#[derive(Clone)]
pub struct Namespace {
    pub storage: String,
    pub cluster: String,
}

impl Namespace {
    /// A fresh namespace on the Redis of `CHATSCALE_REDIS_URL` (storage and cluster
    /// both there), or `None` (the test is skipped) when it is not set.
    pub fn redis(tag: &str) -> Option<Namespace> {
        let redis = crate::conformance::service_url("CHATSCALE_REDIS_URL")?;
        let prefix = unique(tag);
        Some(Namespace {
            storage: format!("{redis}?prefix={prefix}"),
            cluster: format!("{redis}?prefix={prefix}"),
        })
    }

    /// Storage and cluster on the Redis Cluster of `CHATSCALE_REDIS_CLUSTER_URL`.
    pub fn redis_cluster(tag: &str) -> Option<Namespace> {
        let redis = crate::conformance::service_url("CHATSCALE_REDIS_CLUSTER_URL")?;
        let sep = if redis.contains('?') { '&' } else { '?' };
        let url = format!("{redis}{sep}prefix={}", unique(tag));
        Some(Namespace {
            storage: url.clone(),
            cluster: url,
        })
    }

    /// Storage in a fresh PostgreSQL schema, the cluster on Redis.
    pub fn postgres(tag: &str) -> Option<Namespace> {
        let redis = crate::conformance::service_url("CHATSCALE_REDIS_URL")?;
        let pg = crate::conformance::service_url("CHATSCALE_POSTGRES_URL")?;
        let prefix = unique(tag);
        let sep = if pg.contains('?') { '&' } else { '?' };
        Some(Namespace {
            storage: format!("{pg}{sep}schema={}", prefix.to_lowercase()),
            cluster: format!("{redis}?prefix={prefix}"),
        })
    }
}

impl Namespace {
    /// Removes everything the test's nodes stored (after they are gone).
    pub async fn remove(self, nodes: Vec<Node>) {
        drop(nodes);
        // Killed processes may have a write in flight.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let redis = reference_server::store::redis::RedisStore::open(&self.cluster)
            .await
            .expect("redis for cleaning up");
        redis.clear().await.expect("clear the test's keys");
        if self.storage.starts_with("postgres") {
            let pg = reference_server::store::postgres::PostgresStore::open(&self.storage)
                .await
                .expect("postgres for cleaning up");
            pg.drop_schema().await.expect("drop the test's schema");
        }
    }
}

fn unique(tag: &str) -> String {
    format!("cl{}_{tag}_{:x}", std::process::id(), rand::random::<u32>())
}

/// The server binary with test settings: port 0, cheap password hashing.
pub fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_reference-server"));
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--password-hash-memory-kib",
        "8",
        "--password-hash-iterations",
        "1",
    ])
    .args(args)
    .env("RUST_LOG", "warn")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .kill_on_drop(true);
    if std::env::var_os("CHATSCALE_NODE_LOGS").is_none() {
        cmd.stderr(Stdio::null());
    }
    cmd
}

impl Node {
    /// Starts node `id` in `ns` and waits for its `listening on` line.
    pub async fn start(ns: &Namespace, id: &str, extra: &[&str]) -> Node {
        let mut args = vec![
            "--storage",
            &ns.storage,
            "--cluster",
            &ns.cluster,
            "--node-id",
            id,
        ];
        args.extend_from_slice(extra);
        let mut child = command(&args).spawn().expect("start reference-server");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("node {id} did not start in time"))
            .expect("read stdout")
            .unwrap_or_else(|| panic!("node {id} exited before listening"));
        let url = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Node {
            child: Some(child),
            api: Api::new(url),
        }
    }

    /// Starts several nodes at once: `n1`, `n2`, ...
    pub async fn start_many(ns: &Namespace, n: usize, extra: &[&str]) -> Vec<Node> {
        let starts = (1..=n).map(|i| {
            let ns = ns.clone();
            let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
            async move {
                let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
                Node::start(&ns, &format!("n{i}"), &extra).await
            }
        });
        futures_util::future::join_all(starts).await
    }

    /// `ws://HOST:PORT/v1/ws` of this node, as discovery lists it.
    pub fn ws_url(&self) -> String {
        format!("{}/v1/ws", self.url.replacen("http://", "ws://", 1))
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().and_then(|c| c.id()).expect("running") as i32
    }

    /// `kill -9`: no goodbye, no deregistration.
    pub async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill -9");
        }
    }

    /// SIGTERM, then waits for the exit; returns the exit code.
    pub async fn terminate(&mut self) -> Option<i32> {
        Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .await
            .expect("kill -TERM");
        let mut child = self.child.take()?;
        let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
            .await
            .expect("exits after SIGTERM")
            .expect("wait");
        status.code()
    }

    /// A device of `user` (logged in through this node) pointed at this node.
    pub async fn device(&self, user: &str, device: Option<&str>) -> crate::support::Device {
        let mut d = self.login(user, device).await;
        d.ws_url = self.ws_url();
        d
    }
}
