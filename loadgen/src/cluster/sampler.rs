//! Each node's connection count over the run, from its own `/metrics`
//! (`chatscale_connections{node="..."}`), once a second.
//!
//! The report names every node with its timeline, and the run's
//! `peak_connections` is the server side's peak: the most connections the
//! nodes held together at one sample, whatever number of generator processes
//! (or machines) made them. A node that does not answer (killed, stopped)
//! counts as holding none at that sample and shows as a gap.
//!
//! Which nodes: the embedded cluster's (read from its [`Live`] view each
//! tick, so a node started again on another port is followed), or those a
//! running cluster's discovery lists (asked again every 5 s), or the one
//! target.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::NodeInfo;
pub use crate::outcome::NodeSeries;

/// The embedded cluster's nodes and processes as they are now.
#[derive(Debug, Default)]
pub struct Live {
    pub nodes: Vec<NodeInfo>,
    /// Per node: its process while it runs.
    pub pids: Vec<Option<u32>>,
}

/// Where the nodes to sample come from.
#[derive(Clone)]
pub enum Nodes {
    /// The embedded cluster's view.
    Embedded(Arc<Mutex<Live>>),
    /// A running target: its discovery answer (asked with `token`), or the
    /// target alone when it lists nothing.
    Discovery { base: String, token: String },
}

/// What sampling found, after the run.
#[derive(Debug, Default)]
pub struct Sampled {
    pub nodes: Vec<NodeSeries>,
    /// The most connections all nodes held at one sample.
    pub peak: Option<u64>,
}

/// `chatscale_connections{node="n1"} 12` -> ("n1", 12): the first series.
pub fn connections_of(metrics: &str) -> Option<(Option<String>, u64)> {
    let line = metrics.lines().find(|l| {
        l.starts_with("chatscale_connections{") || l.starts_with("chatscale_connections ")
    })?;
    let (series, value) = line.rsplit_once(' ')?;
    let value = value.trim().parse::<f64>().ok()? as u64;
    let node = series
        .split_once("node=\"")
        .and_then(|(_, r)| r.split('"').next())
        .map(str::to_string);
    Some((node, value))
}

async fn node_list(client: &reqwest::Client, nodes: &Nodes) -> Vec<String> {
    match nodes {
        Nodes::Embedded(live) => crate::engine::sim::lock(live)
            .nodes
            .iter()
            .map(|n| n.http.clone())
            .collect(),
        Nodes::Discovery { base, token } => {
            let listed = async {
                let r = client
                    .get(format!("{base}/v1/discovery"))
                    .bearer_auth(token)
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                    .ok()?;
                let body: reference_server::protocol::DiscoveryResponse = r.json().await.ok()?;
                Some(body.servers)
            };
            let mut urls: Vec<String> = listed
                .await
                .unwrap_or_default()
                .iter()
                .map(|ws| crate::engine::nodes::http_of(ws))
                .collect();
            if urls.is_empty() {
                urls.push(base.clone());
            }
            urls
        }
    }
}

/// Samples every node each second from `started` until `done`; `now` gets
/// the latest total (for the memory samples of a workers' parent).
pub async fn run(
    client: reqwest::Client,
    nodes: Nodes,
    started: Instant,
    now: Arc<AtomicU64>,
    done: CancellationToken,
) -> Sampled {
    let mut series: BTreeMap<String, NodeSeries> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut peak: Option<u64> = None;
    let mut urls = Vec::new();
    let mut listed_at: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = done.cancelled() => break,
            _ = tick.tick() => {}
        }
        let stale = listed_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(5));
        if matches!(nodes, Nodes::Embedded(_)) || stale {
            let fresh = node_list(&client, &nodes).await;
            for u in fresh {
                if !urls.contains(&u) {
                    urls.push(u);
                }
            }
            listed_at = Some(Instant::now());
        }
        let t_ms = started.elapsed().as_millis() as u64;
        let reads = futures_util::future::join_all(urls.iter().map(|u| {
            let client = client.clone();
            async move {
                let text =
                    crate::engine::progress::metrics_text(&client, u, Duration::from_millis(900))
                        .await?;
                connections_of(&text)
            }
        }))
        .await;
        let mut total = None;
        for (url, read) in urls.iter().zip(reads) {
            let entry = series.entry(url.clone()).or_insert_with(|| {
                order.push(url.clone());
                NodeSeries {
                    node: url.clone(),
                    url: url.clone(),
                    ..NodeSeries::default()
                }
            });
            let value = read.map(|(name, n)| {
                if let Some(name) = name {
                    entry.node = name;
                }
                n
            });
            if let Some(n) = value {
                entry.peak_connections = entry.peak_connections.max(n);
                total = Some(total.unwrap_or(0) + n);
            }
            entry.connections.push((t_ms, value));
        }
        if let Some(t) = total {
            peak = Some(peak.unwrap_or(0).max(t));
            now.store(t, Relaxed);
        }
    }
    Sampled {
        nodes: order
            .into_iter()
            .filter_map(|u| series.remove(&u))
            .collect(),
        peak,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_count_and_node_name_come_from_metrics() {
        let text = "# HELP chatscale_connections Open WebSocket connections.\n# TYPE chatscale_connections gauge\nchatscale_connections{node=\"n2\"} 17\nchatscale_connections_total{node=\"n2\"} 40\n";
        assert_eq!(connections_of(text), Some((Some("n2".into()), 17)));
        assert_eq!(connections_of("chatscale_connections 3\n"), Some((None, 3)));
        assert_eq!(connections_of("nothing here\n"), None);
    }
}
