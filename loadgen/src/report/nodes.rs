//! The server's nodes in the report: each node, its peak and final connection
//! count, and its connections over the run (`report.md` as a table with a
//! coarse timeline, `report.html` as a table and one chart).
//! Self-contained, so the rest of the report's layout can change around it.

use std::fmt::Write as _;

use super::svg::{escape, line_chart, Chart, Series};
use super::Report;
use crate::outcome::{NodeSeries, PhaseOutcome};
use crate::projection::{thousands, NodeHeld};

/// Nodes that held at least one connection during the run (at least 1: an
/// unsampled server is one).
pub fn serving(nodes: &[NodeSeries]) -> u64 {
    (nodes.iter().filter(|n| n.peak_connections > 0).count() as u64).max(1)
}

/// The most connections one node held at a sample inside a phase whose
/// delivery p99 met `slo_ms`: what a node was measured to carry within the
/// objective.
pub fn held_within(nodes: &[NodeSeries], phases: &[PhaseOutcome], slo_ms: f64) -> Option<NodeHeld> {
    let mut best: Option<NodeHeld> = None;
    for p in phases {
        let Some(p99) = p.delivery_p99_ms.filter(|d| *d <= slo_ms) else {
            continue;
        };
        let window = p.start_ms..p.start_ms + (p.duration_s * 1000.0).round() as u64;
        for n in nodes {
            let most = n
                .connections
                .iter()
                .filter(|(t, _)| window.contains(t))
                .filter_map(|(_, c)| *c)
                .max()
                .unwrap_or(0);
            if best.as_ref().is_none_or(|b| most > b.connections) && most > 0 {
                best = Some(NodeHeld {
                    node: n.node.clone(),
                    connections: most,
                    phase: p.name.clone(),
                    delivery_p99_ms: p99,
                });
            }
        }
    }
    best
}

/// The count at the last sample (`down` when the node did not answer).
fn last(n: &NodeSeries) -> String {
    match n.connections.last() {
        Some(&(_, Some(c))) => thousands(c as f64),
        Some(&(_, None)) => "down".into(),
        None => "-".into(),
    }
}

/// A node's counts at about `points` evenly spaced samples (`-`: down).
fn timeline(n: &NodeSeries, points: usize) -> String {
    let step = n.connections.len().div_ceil(points.max(1)).max(1);
    n.connections
        .iter()
        .step_by(step)
        .map(|&(t, c)| {
            format!(
                "{:.0}s {}",
                t as f64 / 1000.0,
                c.map_or("down".into(), |c| c.to_string())
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `## Nodes` section of report.md (empty when no node was sampled).
pub fn markdown(r: &Report) -> String {
    if r.nodes.is_empty() {
        return String::new();
    }
    let mut s = String::from("\n## Nodes\n\n");
    let _ = writeln!(
        s,
        "Connections each server node held (its `chatscale_connections`, sampled every second); `peak_connections` above is their sum's peak.\n"
    );
    let _ = writeln!(s, "| node | address | peak | at the end | over the run |");
    let _ = writeln!(s, "|---|---|---:|---:|---|");
    for n in &r.nodes {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            n.node,
            n.url,
            thousands(n.peak_connections as f64),
            last(n),
            timeline(n, 12)
        );
    }
    s
}

/// The nodes' section of report.html: a table and one chart of every node's
/// connections over time (empty when no node was sampled).
pub fn html(r: &Report) -> String {
    if r.nodes.is_empty() {
        return String::new();
    }
    let mut s = String::from(
        "<h2>Nodes</h2><table><tr><th>node</th><th>address</th><th>peak</th><th>at the end</th></tr>",
    );
    for n in &r.nodes {
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&n.node),
            escape(&n.url),
            thousands(n.peak_connections as f64),
            last(n)
        );
    }
    s.push_str("</table>");
    // Through the report's own line chart: the page's width, a legend, and a
    // break in a node's line while it did not answer (down).
    let series = r
        .nodes
        .iter()
        .map(|n| Series {
            name: n.node.clone(),
            points: n
                .connections
                .iter()
                .map(|&(t, c)| (t as f64 / 1000.0, c.map_or(f64::NAN, |c| c as f64)))
                .collect(),
        })
        .collect::<Vec<_>>();
    if series
        .iter()
        .all(|sr| sr.points.iter().all(|p| !p.1.is_finite()))
    {
        s.push_str(
            "<p class=\"na\">n/a: no node answered a sample, so there is no line to draw</p>",
        );
        return s;
    }
    s.push_str(&line_chart(&Chart {
        title: "connections per node".into(),
        x_label: "seconds since start".into(),
        y_label: "connections".into(),
        series,
        x_ticks: None,
        y_log: false,
        size: (1200.0, 300.0),
    }));
    s
}
