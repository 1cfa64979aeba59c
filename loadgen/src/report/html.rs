//! `report.html`: the report for a person, in one self-contained file (inline
//! CSS, inline SVG drawn by `svg`, no scripts, nothing fetched), so it can be
//! attached to a ticket or opened from CI artifacts offline.
//!
//! It holds everything report.md holds (verdict, thresholds, latencies, phases,
//! every counter, the audit, provisioning, memory, generator health, the
//! server's own figures, the projection) plus charts: each latency metric's
//! percentiles over time (from the per-interval histograms, with gaps where an
//! interval had no samples), connections and memory over time, and the
//! latency distribution on log-log axes (HdrHistogram's percentile spectrum).
//! A metric with no samples reads `n/a`, and one whose samples all fell in one
//! interval says so instead of drawing a chart of one point.

use std::fmt::Write as _;

use super::svg::{escape, has_points, line_chart, Chart, Series};
use super::{fields, Report, Verdict};
use crate::outcome::{Interval, Outcome, LATENCY_METRICS};
use crate::projection::thousands;

const STYLE: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:1400px;padding:0 1.5em;color:#222}\
h1 .passed{color:#1a7f37}h1 .failed,h1 .incomplete,h1 .generator_limited{color:#cf222e}\
table{border-collapse:collapse;margin:.5em 0 1.2em}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}\
td:first-child,th:first-child,td.text{text-align:left}tr.fail td{background:#ffebe9}.note{color:#666;font-size:12px}\
.na{color:#999}.warn{background:#fff8c5;border:1px solid #d4a72c;padding:.6em 1em;border-radius:4px}\
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:.5em 1.5em}\
svg.chart{display:block;width:100%;height:auto;margin:.4em 0}\
svg .grid{stroke:#eee}svg .frame{fill:none;stroke:#999}svg .tick,svg .legend{font-size:11px;fill:#444}\
svg .axis{font-size:12px;fill:#222}svg .title{font-size:13px;font-weight:600}svg .empty{fill:#999}code{font-size:12px}";

/// Size of the small (per-metric) charts and of the wide ones.
const SMALL: (f64, f64) = (600.0, 250.0);
const WIDE: (f64, f64) = (1200.0, 400.0);

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

/// A cell that reads `n/a` (greyed) when there is nothing to show.
fn na() -> &'static str {
    "<span class=\"na\">n/a</span>"
}

/// A two-column table of `(name, value)` rows; field names read with spaces.
fn table(s: &mut String, rows: &[(String, String)]) {
    let rows: Vec<(String, String)> = rows
        .iter()
        .map(|(k, v)| (k.replace('_', " "), v.clone()))
        .collect();
    table_raw(s, &rows);
}

/// A two-column table, names as given (error codes keep their underscores).
fn table_raw(s: &mut String, rows: &[(String, String)]) {
    s.push_str("<table>");
    for (k, v) in rows {
        let v = if v == "n/a" {
            na().to_string()
        } else {
            escape(v)
        };
        let _ = write!(s, "<tr><td>{}</td><td>{v}</td></tr>", escape(k));
    }
    s.push_str("</table>");
}

/// Renders the HTML report; `outcome` supplies the interval histograms.
pub fn render(r: &Report, outcome: &Outcome) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>{} report</title><style>{STYLE}</style></head><body>",
        escape(&r.scenario)
    );
    let _ = write!(
        s,
        "<h1>{} <span class=\"{}\">{}</span></h1><p><b>{}</b></p>",
        escape(&r.scenario),
        r.verdict.as_str(),
        r.verdict.headline(),
        escape(&r.verdict_reason)
    );
    let _ = write!(
        s,
        "<p>{}</p><p class=\"note\"><code>{}</code><br>target {} ({}), storage <code>{}</code>, durability {}; scenario <code>{}</code>, seed {}; measured phases {} s{}</p>",
        escape(&r.description),
        escape(&r.run.command),
        escape(&r.target.url),
        if r.target.embedded { "embedded" } else { "remote" },
        escape(&r.target.storage),
        escape(r.target.durability.as_deref().unwrap_or("n/a")),
        escape(&r.run.scenario_path),
        r.run.seed,
        r.run.duration_s,
        r.run
            .baseline
            .as_ref()
            .map(|b| format!("; baseline <code>{}</code>", escape(b)))
            .unwrap_or_default()
    );

    thresholds(&mut s, r);
    latency_table(&mut s, r);
    over_time(&mut s, r, outcome);
    distribution(&mut s, outcome);
    phases(&mut s, r);
    memory(&mut s, r);
    s.push_str(&super::connmem::html(&r.connection_memory));
    s.push_str(&super::nodes::html(r));
    counts(&mut s, r);

    let g = &r.generator;
    s.push_str("<h2>Generator health</h2>");
    let _ = write!(
        s,
        "<p><b>{}</b></p>",
        if g.limited {
            "Generator-limited: the results describe the generator"
        } else {
            "The generator kept its schedule."
        }
    );
    // `lag` can exceed `bound` in a run that kept its schedule: say which one
    // is judged, so the table does not read as a contradiction.
    s.push_str("<p class=\"note\">Judged by <code>send_delay</code> p99 (each send's lateness against its schedule) against <code>bound</code> (<code>max_lag</code>); <code>lag</code> is the heartbeat timers' lateness, shown for context (judged only in a run without sends).</p>");
    table(&mut s, &fields::rows(g));

    s.push_str("<h2>Server (from its /metrics)</h2>");
    table(&mut s, &fields::rows(&r.server));

    projection(&mut s, r);
    s.push_str("</body></html>\n");
    s
}

fn thresholds(s: &mut String, r: &Report) {
    s.push_str("<h2>Thresholds</h2>");
    if r.thresholds.is_empty() {
        s.push_str("<p>No thresholds: nothing was gated.</p>");
        return;
    }
    s.push_str("<table><tr><th>threshold</th><th>value</th><th>limit</th><th>result</th><th>note</th></tr>");
    for t in &r.thresholds {
        let _ = write!(
            s,
            "<tr class=\"{}\"><td><code>{}</code></td><td>{} {}</td><td>{} {}</td><td>{}</td><td class=\"note text\">{}</td></tr>",
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

fn latency_table(s: &mut String, r: &Report) {
    s.push_str("<h2>Latency (ms)</h2><table><tr><th>metric</th><th>count</th><th>mean</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr>");
    for (name, _) in LATENCY_METRICS {
        let Some(l) = r.metrics.latency.get(*name) else {
            continue;
        };
        if l.count == 0 {
            let _ = write!(
                s,
                "<tr><td>{name}</td><td>0</td><td colspan=\"6\" class=\"na\">n/a: no samples</td></tr>"
            );
            continue;
        }
        let _ = write!(
            s,
            "<tr><td>{name}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            l.count, l.mean_ms, l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
        );
    }
    s.push_str("</table>");
}

/// One point per interval at its middle, with a NaN break wherever the next
/// interval does not follow on (an interval with no samples is not stored).
fn interval_points(intervals: &[Interval], q: f64) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    let mut prev_end = None;
    for iv in intervals.iter().filter(|iv| !iv.histogram.is_empty()) {
        let t = (iv.start_ms as f64 + iv.duration_ms as f64 / 2.0) / 1000.0;
        if prev_end.is_some_and(|end| iv.start_ms > end) {
            out.push((t, f64::NAN));
        }
        out.push((t, iv.histogram.value_at_quantile(q) as f64 / 1000.0));
        prev_end = Some(iv.start_ms + iv.duration_ms);
    }
    out
}

fn over_time(s: &mut String, r: &Report, outcome: &Outcome) {
    s.push_str("<h2>Latency over time</h2><p class=\"note\">p50, p90, p99 and max of each interval; a gap is an interval with no samples.</p><div class=\"grid\">");
    let mut notes = Vec::new();
    let mut none = Vec::new();
    for (name, _) in LATENCY_METRICS {
        let count = r.metrics.latency.get(*name).map_or(0, |l| l.count);
        let filled: Vec<&Interval> = outcome
            .intervals
            .get(*name)
            .into_iter()
            .flatten()
            .filter(|iv| !iv.histogram.is_empty())
            .collect();
        match filled.len() {
            0 if count == 0 => none.push(*name),
            0 => notes.push(format!(
                "{name}: {count} samples with no per-interval record (see the latency table)"
            )),
            1 => {
                let iv = filled[0];
                let h = &iv.histogram;
                notes.push(format!(
                    "{name}: all {} samples fell in one interval ({:.1} s to {:.1} s): p50 {} ms, p99 {} ms, max {} ms; no trend to draw",
                    h.len(),
                    iv.start_ms as f64 / 1000.0,
                    (iv.start_ms + iv.duration_ms) as f64 / 1000.0,
                    h.value_at_quantile(0.5) as f64 / 1000.0,
                    h.value_at_quantile(0.99) as f64 / 1000.0,
                    h.max() as f64 / 1000.0
                ));
            }
            _ => {
                let list = &outcome.intervals[*name];
                let series = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)]
                    .iter()
                    .map(|(label, q)| Series {
                        name: label.to_string(),
                        points: interval_points(list, *q),
                    })
                    .collect();
                s.push_str(&line_chart(&Chart {
                    title: format!("{name} per interval"),
                    x_label: "seconds since start".into(),
                    y_label: "ms".into(),
                    series,
                    x_ticks: None,
                    y_log: false,
                    size: SMALL,
                }));
            }
        }
    }
    s.push_str("</div>");
    if !notes.is_empty() || !none.is_empty() {
        s.push_str("<ul>");
        for n in notes {
            let _ = write!(s, "<li>{}</li>", escape(&n));
        }
        if !none.is_empty() {
            let _ = write!(
                s,
                "<li><span class=\"na\">n/a</span>, no samples: {}</li>",
                none.join(", ")
            );
        }
        s.push_str("</ul>");
    }
}

fn distribution(s: &mut String, outcome: &Outcome) {
    s.push_str("<h2>Latency distribution</h2><p class=\"note\">Each metric's latency at every percentile, both axes logarithmic (HdrHistogram's percentile spectrum): 2 ms and 700 ms read on one chart. The <code>_uncorrected</code> variants are left out.</p>");
    let series: Vec<Series> = LATENCY_METRICS
        .iter()
        .filter(|(name, _)| !name.ends_with("_uncorrected"))
        .filter_map(|(name, _)| {
            outcome
                .histograms
                .get(*name)
                .filter(|h| !h.is_empty())
                .map(|h| (name, h))
        })
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
    let chart = Chart {
        title: "latency by percentile".into(),
        x_label: "percentile".into(),
        y_label: "ms (log)".into(),
        series,
        x_ticks: Some(
            SPECTRUM
                .iter()
                .map(|(q, l)| (spectrum_x(*q), l.to_string()))
                .collect(),
        ),
        y_log: true,
        size: WIDE,
    };
    if has_points(&chart) {
        s.push_str(&line_chart(&chart));
    } else {
        let _ = write!(s, "<p>{}: no latency samples.</p>", na());
    }
}

fn phases(s: &mut String, r: &Report) {
    if r.phases.is_empty() {
        return;
    }
    s.push_str("<h2>Phases</h2><table><tr>");
    for c in fields::PHASE_COLUMNS {
        let _ = write!(s, "<th>{c}</th>");
    }
    s.push_str("</tr>");
    for ph in &r.phases {
        s.push_str("<tr>");
        for cell in fields::phase_cells(ph) {
            if cell == "n/a" {
                let _ = write!(s, "<td>{}</td>", na());
            } else {
                let _ = write!(s, "<td>{}</td>", escape(&cell));
            }
        }
        s.push_str("</tr>");
    }
    s.push_str("</table>");
}

fn memory(s: &mut String, r: &Report) {
    let mem = &r.memory;
    let secs = |t: u64| t as f64 / 1000.0;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    s.push_str("<h2>Connections and memory</h2><div class=\"grid\">");
    let charts = [
        Chart {
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
            y_log: false,
            size: SMALL,
        },
        Chart {
            title: "resident memory".into(),
            x_label: "seconds since start".into(),
            y_label: "MiB".into(),
            series: vec![
                Series {
                    name: "server".into(),
                    points: mem
                        .iter()
                        .map(|p| (secs(p.t_ms), p.server_rss_bytes.map_or(f64::NAN, mib)))
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
            y_log: false,
            size: SMALL,
        },
    ];
    let mut empty = Vec::new();
    for c in &charts {
        if has_points(c) {
            s.push_str(&line_chart(c));
        } else {
            empty.push(c.title.clone());
        }
    }
    s.push_str("</div>");
    if !empty.is_empty() {
        let _ = write!(
            s,
            "<p>{}, no samples: {}</p>",
            na(),
            escape(&empty.join(", "))
        );
    }
    let m = &r.metrics;
    let bytes =
        |b: Option<f64>| b.map_or_else(|| "n/a".to_string(), |b| format!("{} bytes", thousands(b)));
    table(
        s,
        &[
            (
                "peak connections".into(),
                thousands(m.peak_connections as f64),
            ),
            (
                "server memory per connection".into(),
                bytes(m.server_memory_per_connection),
            ),
            ("server memory fit".into(), m.server_memory_note.clone()),
            (
                "generator memory per connection".into(),
                bytes(r.generator.memory_per_connection),
            ),
            (
                "generator peak RSS".into(),
                format!("{} bytes", thousands(r.generator.peak_rss_bytes as f64)),
            ),
        ],
    );
}

fn counts(s: &mut String, r: &Report) {
    let m = &r.metrics;
    s.push_str("<h2>Throughput and counters</h2>");
    let mut rows = vec![
        (
            "throughput (acked msg/s)".to_string(),
            m.throughput.to_string(),
        ),
        ("deliveries/s".to_string(), m.delivery_rate.to_string()),
    ];
    rows.extend(
        r.counters
            .rows()
            .into_iter()
            .map(|(_, label, v)| (label.to_string(), thousands(v as f64))),
    );
    table_raw(s, &rows);
    s.push_str("<h3>Errors by code</h3>");
    if r.errors.is_empty() {
        s.push_str("<p>None.</p>");
    } else {
        let rows: Vec<(String, String)> = r
            .errors
            .iter()
            .map(|(k, v)| (k.clone(), thousands(*v as f64)))
            .collect();
        table_raw(s, &rows);
    }

    let a = &r.audit;
    s.push_str("<h2>Audit</h2>");
    if a.incomplete {
        let _ = write!(
            s,
            "<p class=\"warn\">Incomplete: {}. The run cannot pass.</p>",
            escape(a.incomplete_reason.as_deref().unwrap_or("no reason given"))
        );
    }
    let rows: Vec<(String, String)> = a
        .counts
        .rows()
        .into_iter()
        .map(|(_, label, v)| (label.to_string(), thousands(v as f64)))
        .collect();
    table_raw(s, &rows);
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
    let p = &r.provisioning;
    let _ = write!(
        s,
        "<h2>Provisioning</h2><p>{} users, {} devices, {} friendships, {} groups created in {:.2} s (before the measured phases).</p>",
        p.users, p.devices, p.friendships, p.groups, p.seconds
    );
}

fn projection(s: &mut String, r: &Report) {
    let pr = &r.projection;
    let t = &pr.target;
    s.push_str("<h2>Projection</h2>");
    if pr.capacity_run && r.verdict != Verdict::GeneratorLimited {
        let _ = write!(s, "<p><b>{}</b></p>", escape(&pr.headline));
    } else {
        let _ = write!(s, "<p class=\"warn\">{}</p>", escape(&pr.headline));
    }
    table(
        s,
        &[
            ("daily active users".into(), thousands(t.dau as f64)),
            (
                "online at peak".into(),
                format!(
                    "{} ({} users)",
                    t.peak_online_share,
                    thousands(t.concurrent_users as f64)
                ),
            ),
            ("devices per user".into(), t.devices_per_user.to_string()),
            (
                "concurrent connections".into(),
                thousands(t.concurrent_connections as f64),
            ),
            (
                "messages per user per day".into(),
                t.messages_per_user_per_day.to_string(),
            ),
            ("peak to average".into(), t.peak_to_average.to_string()),
            ("peak messages/s".into(), thousands(t.peak_messages_per_s)),
            (
                "latency objective (delivery p99)".into(),
                format!("{} ms ({})", t.slo_ms, t.slo_source),
            ),
            (
                "cores per server".into(),
                t.cores_per_server.map_or("n/a".into(), |c| c.to_string()),
            ),
            (
                "usable memory share".into(),
                t.usable_memory_share.to_string(),
            ),
        ],
    );
    s.push_str(
        "<table><tr><th>limit</th><th>per server</th><th>servers</th><th>basis and arithmetic</th></tr>",
    );
    for l in &pr.limits {
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"note text\">{}<br>{}</td></tr>",
            escape(&l.name),
            l.per_server.map_or_else(
                || na().to_string(),
                |v| format!("{} {}", thousands(v), l.unit.replace("_per_s", "/s"))
            ),
            l.servers
                .map_or_else(|| na().to_string(), |v| v.to_string()),
            escape(&l.basis),
            escape(&l.arithmetic)
        );
    }
    s.push_str("</table><ul>");
    for n in &pr.notes {
        let _ = write!(s, "<li class=\"note\">{}</li>", escape(n));
    }
    s.push_str("</ul>");
}
