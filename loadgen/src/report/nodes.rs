//! The server's nodes in the report: each node, its peak and final connection
//! count, and its connections over the run (`report.md` as a table with a
//! coarse timeline, `report.html` as a table and one chart).
//! Self-contained, so the rest of the report's layout can change around it.

use std::fmt::Write as _;

use super::svg::{escape, line_chart, Chart, Series};
use super::Report;
use crate::outcome::NodeSeries;
use crate::projection::thousands;

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
