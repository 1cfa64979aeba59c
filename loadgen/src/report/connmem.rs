//! Memory per connection as a distribution, beside the RSS slopes: what each
//! server node accounts to one connection (its `chatscale_connection_memory_bytes`
//! histogram, every open connection observed every few seconds, and the
//! `chatscale_connection_memory_max_bytes` gauge), per node and merged, and what
//! each of loadgen's own devices accounts for. A slope says what the average
//! connection costs; the distribution shows the typical idle device (p50) and the
//! heavy tail (slow consumers with queued frames, big groups: p99 and max).
//!
//! Prometheus buckets hold counts, not samples, so a quantile is read as
//! Prometheus' `histogram_quantile` reads it: linear inside the bucket the rank
//! falls in, never above the largest connection seen. The server's buckets are
//! four per doubling, so a quantile is within a bucket's width (19%) of the true
//! value.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::svg::escape;
use crate::outcome::{BucketCounts, Outcome};
use crate::projection::thousands;

/// One distribution of bytes per connection.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Distribution {
    /// Observations behind it (server: connections x samples; loadgen: devices
    /// connected at the end).
    pub observations: u64,
    pub p50_bytes: u64,
    pub p99_bytes: u64,
    pub max_bytes: u64,
}

/// One node's distribution.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeDistribution {
    pub node: String,
    #[serde(flatten)]
    pub distribution: Distribution,
}

/// `connection_memory` in report.json.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnectionMemory {
    /// Every node's observations together; `null` when no node exposed the
    /// histogram or none observed a connection during the run.
    pub server: Option<Distribution>,
    /// Per node, in the order of `nodes`.
    pub server_nodes: Vec<NodeDistribution>,
    /// The server's RSS growth per connected device (the slope of
    /// `metrics.server_memory_per_connection`), bytes.
    pub server_rss_slope_bytes: Option<f64>,
    /// What each of loadgen's connected devices' own state accounts for.
    pub loadgen: Option<Distribution>,
    /// loadgen's RSS growth per connected device (`generator.memory_per_connection`).
    pub loadgen_rss_slope_bytes: Option<f64>,
}

/// The `q` quantile of cumulative bucket counts, linear inside its bucket and
/// capped by the largest value seen; `None` without observations.
pub fn bucket_quantile(b: &BucketCounts, q: f64) -> Option<u64> {
    if b.count == 0 {
        return None;
    }
    let rank = (q * b.count as f64).max(1.0);
    let cap = |v: f64| {
        let v = v.round().max(0.0) as u64;
        if b.max_bytes > 0 {
            v.min(b.max_bytes)
        } else {
            v
        }
    };
    let mut below = 0u64;
    let mut lower = 0.0;
    for (&upper, &cumulative) in b.bounds.iter().zip(&b.cumulative) {
        if cumulative as f64 >= rank {
            let inside = (cumulative - below).max(1) as f64;
            return Some(cap(lower + (upper - lower) * (rank - below as f64) / inside));
        }
        below = cumulative;
        lower = upper;
    }
    // Past the last finite bound: only the largest value seen says more.
    Some(if b.max_bytes > 0 {
        b.max_bytes
    } else {
        lower as u64
    })
}

fn of_buckets(b: &BucketCounts) -> Option<Distribution> {
    Some(Distribution {
        observations: b.count,
        p50_bytes: bucket_quantile(b, 0.5)?,
        p99_bytes: bucket_quantile(b, 0.99)?,
        max_bytes: b.max_bytes,
    })
}

fn of_histogram(h: &Histogram<u64>) -> Option<Distribution> {
    (!h.is_empty()).then(|| Distribution {
        observations: h.len(),
        p50_bytes: h.value_at_quantile(0.5),
        p99_bytes: h.value_at_quantile(0.99),
        max_bytes: h.max(),
    })
}

/// The report's `connection_memory` from the run's outcome and the two slopes.
pub fn build(
    outcome: &Outcome,
    server_slope: Option<f64>,
    loadgen_slope: Option<f64>,
) -> ConnectionMemory {
    let mut merged: Option<BucketCounts> = None;
    let mut server_nodes = Vec::new();
    for n in &outcome.nodes {
        let Some(b) = &n.connection_memory else {
            continue;
        };
        if let Some(d) = of_buckets(b) {
            server_nodes.push(NodeDistribution {
                node: n.node.clone(),
                distribution: d,
            });
        }
        match &mut merged {
            None => merged = Some(b.clone()),
            Some(m) => m.add(b),
        }
    }
    ConnectionMemory {
        server: merged.as_ref().and_then(of_buckets),
        server_nodes,
        server_rss_slope_bytes: server_slope,
        loadgen: of_histogram(&outcome.generator.device_memory),
        loadgen_rss_slope_bytes: loadgen_slope,
    }
}

fn cells(d: Option<&Distribution>) -> [String; 4] {
    match d {
        Some(d) => [
            thousands(d.observations as f64),
            thousands(d.p50_bytes as f64),
            thousands(d.p99_bytes as f64),
            thousands(d.max_bytes as f64),
        ],
        None => ["-".into(), "-".into(), "-".into(), "-".into()],
    }
}

fn slope(b: Option<f64>) -> String {
    b.map_or_else(|| "not measured".into(), thousands)
}

/// The rows of the table: (who, RSS slope, the distribution's cells).
fn rows(c: &ConnectionMemory) -> Vec<(String, String, [String; 4])> {
    let mut rows = vec![(
        "server, all nodes".to_string(),
        slope(c.server_rss_slope_bytes),
        cells(c.server.as_ref()),
    )];
    if c.server_nodes.len() > 1 {
        for n in &c.server_nodes {
            rows.push((
                format!("server node {}", n.node),
                "-".into(),
                cells(Some(&n.distribution)),
            ));
        }
    }
    rows.push((
        "loadgen, per device".into(),
        slope(c.loadgen_rss_slope_bytes),
        cells(c.loadgen.as_ref()),
    ));
    rows
}

const EXPLAIN: &str = "RSS slope: resident memory growth per connected device over the run. The distribution: what the server accounts to each connection (session task, WebSocket buffers, outbox and queued frames; every connection observed every sample) and what each of loadgen's devices' own state accounts for (at the end); kernel socket buffers are in neither.";

/// The `## Memory per connection` section of report.md.
pub fn markdown(c: &ConnectionMemory) -> String {
    let mut s = String::from("\n## Memory per connection\n\n");
    let _ = writeln!(s, "{EXPLAIN}\n");
    let _ = writeln!(
        s,
        "| | RSS slope (bytes) | observations | p50 (bytes) | p99 (bytes) | max (bytes) |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
    for (who, slope, [n, p50, p99, max]) in rows(c) {
        let _ = writeln!(s, "| {who} | {slope} | {n} | {p50} | {p99} | {max} |");
    }
    if c.server.is_none() {
        let _ = writeln!(
            s,
            "\nThe server side's distribution is not measured: no node exposed `chatscale_connection_memory_bytes` with an observation during the run."
        );
    }
    s
}

/// The same as a table in report.html.
pub fn html(c: &ConnectionMemory) -> String {
    let mut s = String::from(
        "<h2>Memory per connection</h2><table><tr><th></th><th>RSS slope (bytes)</th><th>observations</th><th>p50 (bytes)</th><th>p99 (bytes)</th><th>max (bytes)</th></tr>",
    );
    for (who, slope, [n, p50, p99, max]) in rows(c) {
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{slope}</td><td>{n}</td><td>{p50}</td><td>{p99}</td><td>{max}</td></tr>",
            escape(&who)
        );
    }
    let _ = write!(s, "</table><p>{}</p>", escape(EXPLAIN));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buckets(bounds: &[f64], per_bucket: &[u64], max: u64) -> BucketCounts {
        let mut cumulative = Vec::new();
        let mut sum = 0;
        for n in per_bucket {
            sum += n;
            cumulative.push(sum);
        }
        BucketCounts {
            bounds: bounds.to_vec(),
            cumulative,
            count: sum,
            max_bytes: max,
        }
    }

    #[test]
    fn a_quantile_is_linear_inside_its_bucket_and_capped_by_the_max() {
        // 100 observations, all in (1024, 2048].
        let b = buckets(&[1024.0, 2048.0, 4096.0], &[0, 100, 0], 1900);
        assert_eq!(bucket_quantile(&b, 0.5), Some(1536));
        // p99 would interpolate to 2038: the largest connection seen was 1900.
        assert_eq!(bucket_quantile(&b, 0.99), Some(1900));
        // 90 idle near 1 KiB, 10 heavy ones near 4 KiB.
        let b = buckets(&[1024.0, 2048.0, 4096.0], &[90, 0, 10], 4000);
        assert!(bucket_quantile(&b, 0.5).unwrap() <= 1024);
        assert!(bucket_quantile(&b, 0.99).unwrap() > 2048);
        assert_eq!(bucket_quantile(&BucketCounts::default(), 0.5), None);
    }

    #[test]
    fn past_the_last_bound_the_max_answers() {
        let b = BucketCounts {
            bounds: vec![1024.0],
            cumulative: vec![1],
            count: 10,
            max_bytes: 50_000,
        };
        assert_eq!(bucket_quantile(&b, 0.99), Some(50_000));
    }

    #[test]
    fn nodes_merge_by_adding_their_buckets() {
        let mut outcome = Outcome::new("t".to_string(), 10.0);
        for (name, per_bucket, max) in [("n1", [10, 0], 900), ("n2", [0, 30], 1800)] {
            outcome.nodes.push(crate::outcome::NodeSeries {
                node: name.into(),
                connection_memory: Some(buckets(&[1024.0, 2048.0], &per_bucket, max)),
                ..Default::default()
            });
        }
        let c = build(&outcome, Some(2500.0), None);
        let server = c.server.clone().unwrap();
        assert_eq!(server.observations, 40);
        assert_eq!(server.max_bytes, 1800);
        assert!(server.p50_bytes > 1024, "{server:?}");
        assert_eq!(c.server_nodes.len(), 2);
        assert_eq!(c.server_nodes[0].distribution.p99_bytes, 900);
        let md = markdown(&c);
        assert!(md.contains("| server node n2 |"), "{md}");
        assert!(md.contains("| server, all nodes | 2,500 | 40 |"), "{md}");
    }
}
