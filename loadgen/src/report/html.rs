//! `report.html`: the report for a person, in one self-contained file (inline
//! CSS, inline SVG drawn by `svg`, no scripts, nothing fetched), so it can be
//! attached to a ticket or opened from CI artifacts offline.
//!
//! It shows the verdict and thresholds, the latency table, then charts: each
//! latency metric's percentiles over time (from the per-interval histograms),
//! connections and memory over time, and the latency distribution (percentile
//! spectrum) of every metric that recorded samples; then throughput, the audit,
//! generator health and the projection.

use std::fmt::Write as _;

use super::svg::{escape, line_chart, Chart, Series};
use super::Report;
use crate::outcome::{Outcome, LATENCY_METRICS};
use crate::projection::thousands;

const STYLE: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:980px;color:#222}\
h1 .pass{color:#1a7f37}h1 .fail{color:#cf222e}table{border-collapse:collapse;margin:.5em 0 1.2em}\
td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}\
tr.fail td{background:#ffebe9}.note{color:#666;font-size:12px}svg.chart{display:block;margin:.6em 0}\
svg .grid{stroke:#eee}svg .frame{fill:none;stroke:#999}svg .tick,svg .legend{font-size:11px;fill:#444}\
svg .axis{font-size:12px;fill:#222}svg .title{font-size:13px;font-weight:600}svg .empty{fill:#999}code{font-size:12px}";

/// Labelled quantiles of the distribution chart, plotted at log10(1/(1-q)).
/// The curve starts at 0% (x = 0), which goes unlabelled: it would overprint
/// "50%".
const SPECTRUM: &[(f64, &str)] = &[
    (0.5, "50%"),
    (0.9, "90%"),
    (0.99, "99%"),
    (0.999, "99.9%"),
    (0.9999, "99.99%"),
    (0.99999, "99.999%"),
];

fn spectrum_x(q: f64) -> f64 {
    (1.0 / (1.0 - q)).log10()
}

/// Renders the HTML report; `outcome` supplies the interval histograms.
pub fn render(r: &Report, outcome: &Outcome) -> String {
    let mut s = String::new();
    let (class, verdict) = if r.passed {
        ("pass", "PASSED")
    } else {
        ("fail", "FAILED")
    };
    let _ = write!(
        s,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{} report</title><style>{STYLE}</style></head><body>",
        escape(&r.scenario)
    );
    let _ = write!(
        s,
        "<h1>{} <span class=\"{class}\">{verdict}</span></h1>",
        escape(&r.scenario)
    );
    let _ = write!(
        s,
        "<p>{}</p><p class=\"note\"><code>{}</code><br>",
        escape(&r.description),
        escape(&r.run.command)
    );
    let _ =
        write!(
        s,
        "target {} ({}), storage <code>{}</code>, durability {}; seed {}; measured phases {} s</p>",
        escape(&r.target.url),
        if r.target.embedded { "embedded" } else { "remote" },
        escape(&r.target.storage),
        escape(r.target.durability.as_deref().unwrap_or("n/a")),
        r.run.seed,
        r.run.duration_s
    );

    s.push_str("<h2>Thresholds</h2>");
    if r.thresholds.is_empty() {
        s.push_str("<p>No thresholds: nothing was gated.</p>");
    } else {
        s.push_str("<table><tr><th>threshold</th><th>value</th><th>limit</th><th>result</th><th>note</th></tr>");
        for t in &r.thresholds {
            let _ = write!(
                s,
                "<tr class=\"{}\"><td><code>{}</code></td><td>{} {}</td><td>{} {}</td><td>{}</td><td class=\"note\">{}</td></tr>",
                if t.passed { "pass" } else { "fail" },
                escape(&t.expr),
                t.value,
                t.unit,
                t.limit,
                t.unit,
                if t.passed { "pass" } else { "FAIL" },
                escape(t.note.as_deref().unwrap_or(""))
            );
        }
        s.push_str("</table>");
    }

    s.push_str("<h2>Latency (ms)</h2><table><tr><th>metric</th><th>count</th><th>mean</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr>");
    for (name, _) in LATENCY_METRICS {
        if let Some(l) = r.metrics.latency.get(*name) {
            let _ = write!(
                s,
                "<tr><td>{name}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                l.count, l.mean_ms, l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
            );
        }
    }
    s.push_str("</table>");

    s.push_str("<h2>Latency over time</h2>");
    for (name, _) in LATENCY_METRICS {
        let Some(intervals) = outcome
            .intervals
            .get(*name)
            .filter(|l| l.iter().any(|iv| !iv.histogram.is_empty()))
        else {
            continue;
        };
        let series = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)]
            .iter()
            .map(|(label, q)| Series {
                name: label.to_string(),
                points: intervals
                    .iter()
                    .filter(|iv| !iv.histogram.is_empty())
                    .map(|iv| {
                        let t = (iv.start_ms as f64 + iv.duration_ms as f64 / 2.0) / 1000.0;
                        (t, iv.histogram.value_at_quantile(*q) as f64 / 1000.0)
                    })
                    .collect(),
            })
            .collect();
        s.push_str(&line_chart(&Chart {
            title: format!("{name} per interval"),
            x_label: "seconds since start".into(),
            y_label: "ms".into(),
            series,
            x_ticks: None,
        }));
    }

    let mem = &r.memory;
    let secs = |t: u64| t as f64 / 1000.0;
    s.push_str("<h2>Connections and memory</h2>");
    s.push_str(&line_chart(&Chart {
        title: "connected devices".into(),
        x_label: "seconds since start".into(),
        y_label: "connections".into(),
        series: vec![Series {
            name: "connections".into(),
            points: mem
                .iter()
                .map(|p| (secs(p.t_ms), p.connections as f64))
                .collect(),
        }],
        x_ticks: None,
    }));
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    s.push_str(&line_chart(&Chart {
        title: "resident memory".into(),
        x_label: "seconds since start".into(),
        y_label: "MiB".into(),
        series: vec![
            Series {
                name: "server".into(),
                points: mem
                    .iter()
                    .filter_map(|p| p.server_rss_bytes.map(|b| (secs(p.t_ms), mib(b))))
                    .collect(),
            },
            Series {
                name: "loadgen".into(),
                points: mem
                    .iter()
                    .map(|p| (secs(p.t_ms), mib(p.loadgen_rss_bytes)))
                    .collect(),
            },
        ],
        x_ticks: None,
    }));
    let per_conn = r
        .metrics
        .server_memory_per_connection
        .map(|b| format!("{b} bytes"))
        .unwrap_or_else(|| "not measured".into());
    let _ = write!(
        s,
        "<p>Peak connections {}; server memory per connection {per_conn} <span class=\"note\">({})</span></p>",
        thousands(r.metrics.peak_connections as f64),
        escape(&r.metrics.server_memory_note)
    );

    s.push_str(&super::nodes::html(r));
    s.push_str("<h2>Latency distribution</h2>");
    let series = LATENCY_METRICS
        .iter()
        .filter_map(|(name, _)| {
            outcome
                .histograms
                .get(*name)
                .filter(|h| !h.is_empty())
                .map(|h| (name, h))
        })
        .filter(|(name, _)| !name.ends_with("_uncorrected"))
        .map(|(name, h)| Series {
            name: name.to_string(),
            // Ten points per decade of the axis (0%, 20.6%, 36.9%, ... 99.999%)
            // so the curve shows its shape between the labelled percentiles.
            points: (0..=50)
                .map(|i| {
                    let x = f64::from(i) / 10.0;
                    let q = 1.0 - 10f64.powf(-x);
                    (x, h.value_at_quantile(q) as f64 / 1000.0)
                })
                .collect(),
        })
        .collect();
    s.push_str(&line_chart(&Chart {
        title: "latency by percentile".into(),
        x_label: "percentile".into(),
        y_label: "ms".into(),
        series,
        x_ticks: Some(
            SPECTRUM
                .iter()
                .map(|(q, l)| (spectrum_x(*q), l.to_string()))
                .collect(),
        ),
    }));

    let m = &r.metrics;
    let a = &r.audit;
    let _ = write!(
        s,
        "<h2>Throughput and audit</h2><table><tr><td>messages sent</td><td>{}</td></tr><tr><td>messages acked</td><td>{}</td></tr>\
         <tr><td>deliveries</td><td>{}</td></tr><tr><td>throughput (acked msg/s)</td><td>{}</td></tr><tr><td>deliveries/s</td><td>{}</td></tr>\
         <tr><td>errors</td><td>{}</td></tr><tr><td>lost / duplicated / reordered</td><td>{} / {} / {}</td></tr>\
         <tr><td>provisioning</td><td>{} users, {} devices in {:.2} s</td></tr></table>",
        m.messages_sent,
        m.messages_acked,
        m.deliveries,
        m.throughput,
        m.delivery_rate,
        escape(&r.errors.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ")),
        a.lost,
        a.duplicated,
        a.reordered,
        r.provisioning.users,
        r.provisioning.devices,
        r.provisioning.seconds
    );
    if !a.examples.is_empty() {
        s.push_str(
            "<table><tr><th>kind</th><th>channel</th><th>id</th><th>user</th><th>device</th></tr>",
        );
        for e in &a.examples {
            let _ = write!(
                s,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&e.kind),
                escape(&e.channel),
                e.id,
                e.user,
                e.device
            );
        }
        s.push_str("</table>");
    }

    let g = &r.generator;
    let _ = write!(
        s,
        "<h2>Generator health</h2><p>Schedule lag p99 {} ms (bound {} ms), max {} ms: <b>{}</b>. CPU {} s, peak RSS {} bytes.</p>",
        g.lag_p99_ms,
        g.bound_ms,
        g.lag_max_ms,
        if g.limited { "generator-limited, the results describe the generator" } else { "kept its schedule" },
        g.cpu_seconds,
        thousands(g.peak_rss_bytes as f64)
    );

    let pr = &r.projection;
    let _ = write!(
        s,
        "<h2>Projection</h2><p><b>{} servers needed{}, limited by {}</b> for {} DAU ({} concurrent connections, {} messages/s at peak).</p>",
        pr.servers_needed,
        if pr.upper_bound { " (an upper bound)" } else { "" },
        escape(&pr.limited_by),
        thousands(pr.target.dau as f64),
        thousands(pr.target.concurrent_connections as f64),
        thousands(pr.target.peak_messages_per_s)
    );
    s.push_str(
        "<table><tr><th>limit</th><th>per server</th><th>servers</th><th>arithmetic</th></tr>",
    );
    for l in &pr.limits {
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"note\">{}<br>{}</td></tr>",
            escape(&l.name),
            l.per_server
                .map(|v| format!("{} {}", thousands(v), l.unit))
                .unwrap_or_else(|| "not measured".into()),
            l.servers
                .map(|v| v.to_string())
                .unwrap_or_else(|| "n/a".into()),
            escape(&l.basis),
            escape(&l.arithmetic)
        );
    }
    s.push_str("</table><ul>");
    for n in &pr.notes {
        let _ = write!(s, "<li class=\"note\">{}</li>", escape(n));
    }
    s.push_str("</ul></body></html>\n");
    s
}
