//! Each node's connection count over the run, from its own `/metrics`
//! (`chatscale_connections{node="..."}`), once a second, and what its
//! per-connection memory histogram (`chatscale_connection_memory_bytes`)
//! counted during the run.
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
use crate::outcome::BucketCounts;
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

/// A node's `chatscale_connection_memory_bytes` buckets and its
/// `chatscale_connection_memory_max_bytes` gauge as one scrape shows them
/// (counts since the node started); `None` when it exposes no histogram.
pub fn connection_memory_of(metrics: &str) -> Option<BucketCounts> {
    let mut b = BucketCounts::default();
    let mut seen = false;
    for line in metrics.lines() {
        if let Some(rest) = line.strip_prefix("chatscale_connection_memory_bytes_bucket{") {
            let Some((labels, value)) = rest.rsplit_once(' ') else {
                continue;
            };
            let Some(le) = labels
                .split_once("le=\"")
                .and_then(|(_, r)| r.split('"').next())
            else {
                continue;
            };
            let Ok(n) = value.trim().parse::<f64>() else {
                continue;
            };
            seen = true;
            match le.parse::<f64>() {
                Ok(bound) if bound.is_finite() => {
                    b.bounds.push(bound);
                    b.cumulative.push(n as u64);
                }
                _ => b.count = n as u64,
            }
        } else if line.starts_with("chatscale_connection_memory_max_bytes") {
            if let Some((_, v)) = line.rsplit_once(' ') {
                b.max_bytes = v.trim().parse::<f64>().map_or(0, |v| v as u64);
            }
        }
    }
    seen.then_some(b)
}

/// One node's histogram over the run: the counts between its first scrape and
/// its last, added across a restart (its counts fall back to zero), and the
/// largest connection seen at any sample taken during the run.
#[derive(Debug, Default)]
struct MemoryCounts {
    base: Option<BucketCounts>,
    last: Option<BucketCounts>,
    closed: Option<BucketCounts>,
    max: u64,
}

impl MemoryCounts {
    fn observe(&mut self, now: BucketCounts) {
        match &self.last {
            // What the node counted before the run started is not the run's;
            // nor is the maximum its last sample before then saw.
            None => self.base = Some(now.clone()),
            Some(last) if now.count < last.count => {
                let segment = last.since(self.base.as_ref().unwrap_or(last));
                match &mut self.closed {
                    None => self.closed = Some(segment),
                    Some(c) => c.add(&segment),
                }
                self.base = Some(BucketCounts {
                    bounds: now.bounds.clone(),
                    cumulative: vec![0; now.bounds.len()],
                    ..BucketCounts::default()
                });
                if now.count > 0 {
                    self.max = self.max.max(now.max_bytes);
                }
            }
            // A sample was taken since the last scrape: its maximum is the run's.
            Some(last) if now.count > last.count => self.max = self.max.max(now.max_bytes),
            Some(_) => {}
        }
        self.last = Some(now);
    }

    fn finish(self) -> Option<BucketCounts> {
        let last = self.last?;
        let mut counted = last.since(self.base.as_ref().unwrap_or(&last));
        if let Some(c) = &self.closed {
            counted.add(c);
        }
        counted.max_bytes = self.max;
        Some(counted)
    }
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
    let mut counts: BTreeMap<String, MemoryCounts> = BTreeMap::new();
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
                Some((connections_of(&text), connection_memory_of(&text)))
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
            let (count, memory) = read.unwrap_or_default();
            if let Some(m) = memory {
                counts.entry(url.clone()).or_default().observe(m);
            }
            let value = count.map(|(name, n)| {
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
    for (url, c) in counts {
        if let Some(n) = series.get_mut(&url) {
            n.connection_memory = c.finish();
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

    fn scrape(counts: [u64; 3], max: u64) -> String {
        format!(
            "# TYPE chatscale_connection_memory_bytes histogram\n\
             chatscale_connection_memory_bytes_sum{{node=\"n1\"}} 1\n\
             chatscale_connection_memory_bytes_count{{node=\"n1\"}} {}\n\
             chatscale_connection_memory_bytes_bucket{{le=\"1024.0\",node=\"n1\"}} {}\n\
             chatscale_connection_memory_bytes_bucket{{le=\"2048.0\",node=\"n1\"}} {}\n\
             chatscale_connection_memory_bytes_bucket{{le=\"+Inf\",node=\"n1\"}} {}\n\
             chatscale_connection_memory_max_bytes{{node=\"n1\"}} {max}\n",
            counts[2], counts[0], counts[1], counts[2]
        )
    }

    #[test]
    fn the_memory_histogram_is_read_from_metrics() {
        let b = connection_memory_of(&scrape([3, 5, 6], 4000)).unwrap();
        assert_eq!(b.bounds, vec![1024.0, 2048.0]);
        assert_eq!(b.cumulative, vec![3, 5]);
        assert_eq!(b.count, 6);
        assert_eq!(b.max_bytes, 4000);
        assert_eq!(connection_memory_of("chatscale_connections 3\n"), None);
    }

    #[test]
    fn only_what_the_run_counted_is_kept_across_a_restart() {
        let mut c = MemoryCounts::default();
        // Before the run: 100 observations and a 9,000-byte connection.
        c.observe(connection_memory_of(&scrape([100, 100, 100], 9000)).unwrap());
        c.observe(connection_memory_of(&scrape([100, 110, 110], 1500)).unwrap());
        // The node restarted: its counts start again from zero.
        c.observe(connection_memory_of(&scrape([4, 4, 4], 900)).unwrap());
        // A scrape with no sample since: its gauge is not counted again.
        c.observe(connection_memory_of(&scrape([4, 4, 4], 900)).unwrap());
        let b = c.finish().unwrap();
        assert_eq!(b.cumulative, vec![4, 14]);
        assert_eq!(b.count, 14);
        assert_eq!(b.max_bytes, 1500);
    }
}
