//! The server's nodes in the report: each node, its peak and final connection
//! count, and its connections over the run (`report.md` as a table with a
//! coarse timeline, `report.html` as a table and one small inline chart).
//! Self-contained, so the rest of the report's layout can change around it.

use std::fmt::Write as _;

use super::svg::escape;
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

const COLORS: &[&str] = &[
    "#0969da", "#cf222e", "#1a7f37", "#8250df", "#bc4c00", "#57606a",
];

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
    let (w, h, pad) = (640.0, 180.0, 36.0);
    let t_max = r
        .nodes
        .iter()
        .flat_map(|n| n.connections.iter().map(|&(t, _)| t))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let c_max = r
        .nodes
        .iter()
        .map(|n| n.peak_connections)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let _ = write!(
        s,
        "<svg class=\"chart\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\"><title>connections per node</title>\
<rect class=\"frame\" x=\"{pad}\" y=\"8\" width=\"{}\" height=\"{}\"/>\
<text class=\"tick\" x=\"2\" y=\"16\">{}</text><text class=\"tick\" x=\"2\" y=\"{}\">0</text>\
<text class=\"tick\" x=\"{}\" y=\"{}\">{:.0} s</text>",
        w - pad - 8.0,
        h - 30.0,
        thousands(c_max),
        h - 22.0,
        w - 60.0,
        h - 6.0,
        t_max / 1000.0
    );
    for (i, n) in r.nodes.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        // A node that did not answer breaks its line (a gap while it was down).
        let mut runs: Vec<Vec<String>> = vec![Vec::new()];
        for &(t, c) in &n.connections {
            match c {
                Some(c) => {
                    let x = pad + (w - pad - 8.0) * t as f64 / t_max;
                    let y = 8.0 + (h - 30.0) * (1.0 - c as f64 / c_max);
                    runs.last_mut()
                        .expect("one run")
                        .push(format!("{x:.1},{y:.1}"));
                }
                None => runs.push(Vec::new()),
            }
        }
        for run in runs.iter().filter(|r| !r.is_empty()) {
            let _ = write!(
                s,
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>",
                run.join(" ")
            );
        }
        let _ = write!(
            s,
            "<text class=\"legend\" x=\"{}\" y=\"{}\" fill=\"{color}\">{}</text>",
            pad + 8.0 + 70.0 * i as f64,
            h - 6.0,
            escape(&n.node)
        );
    }
    s.push_str("</svg>");
    s
}
