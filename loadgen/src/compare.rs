//! `loadgen compare A B [...]`: reports side by side as a Markdown table, each
//! column after the first with its ratio to the first, e.g. `12.3 (1.52x)`.
//!
//! The usual question is "what does this change cost?": the same scenario run
//! against two storage backends, two commits or two machines. Reports are read
//! as plain JSON (not as this version's `Report`), so reports written by older
//! versions still compare; a figure a report lacks, or a latency metric with
//! no samples, shows as `n/a`.
//!
//! A ratio is only worth reading when it is larger than the noise of the two
//! figures, so a ratio is marked `~` (within noise) when each figure lies
//! inside the other's 95% interval. For a latency percentile the interval
//! comes from the run's `.hlog` files (`noise`: sampling and run-to-run
//! variation across the run's intervals); a report without them is taken as
//! noisy when fewer than 10 samples lie past the percentile. For counts and
//! rates it is ± 1.96·sqrt(count) (Poisson). Audit counts and memory are never
//! marked: any difference in them matters.
//! docs/reports.md states the rule.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use hdrhistogram::Histogram;
use serde_json::Value;

mod noise;

use crate::error::LoadgenError;
use crate::outcome::new_histogram;
use crate::report::baseline::{number, read_report, resolve};
use noise::{percentile_interval, PRECISION, Z95};
/// Fewer samples past a percentile than this, without a histogram to read:
/// the percentile is noise.
const MIN_TAIL_SAMPLES: f64 = 10.0;

/// How a row reads its figure out of a report.
enum Cell {
    Text(fn(&Value) -> String),
    /// A latency percentile: metric, quantile, field of its summary.
    Latency(&'static str, f64, &'static str),
    /// A count or rate whose noise is Poisson in the count at the second
    /// pointer (messages acked for throughput).
    Count(&'static str, &'static str),
    /// A number compared without a noise judgement (audit counts, memory).
    Exact(&'static str),
    Flag(&'static str),
}

const ROWS: &[(&str, Cell)] = &[
    ("scenario", Cell::Text(scenario)),
    ("verdict", Cell::Text(verdict)),
    ("storage", Cell::Text(storage)),
    (
        "acked",
        Cell::Count("metrics/messages_acked", "metrics/messages_acked"),
    ),
    (
        "msg/s",
        Cell::Count("metrics/throughput", "metrics/messages_acked"),
    ),
    (
        "delivery p50",
        Cell::Latency("delivery_latency", 0.5, "p50_ms"),
    ),
    (
        "delivery p99",
        Cell::Latency("delivery_latency", 0.99, "p99_ms"),
    ),
    (
        "delivery p99.9",
        Cell::Latency("delivery_latency", 0.999, "p999_ms"),
    ),
    ("ack p50", Cell::Latency("ack_latency", 0.5, "p50_ms")),
    ("ack p99", Cell::Latency("ack_latency", 0.99, "p99_ms")),
    (
        "fan-out p99",
        Cell::Latency("fanout_latency", 0.99, "p99_ms"),
    ),
    (
        "connect p99",
        Cell::Latency("connect_latency", 0.99, "p99_ms"),
    ),
    ("sync p99", Cell::Latency("sync_latency", 0.99, "p99_ms")),
    (
        "history reads",
        Cell::Count("counters/history_reads", "counters/history_reads"),
    ),
    (
        "history p50",
        Cell::Latency("history_latency", 0.5, "p50_ms"),
    ),
    (
        "history p99",
        Cell::Latency("history_latency", 0.99, "p99_ms"),
    ),
    ("lost", Cell::Exact("metrics/lost")),
    ("duplicated", Cell::Exact("metrics/duplicated")),
    ("reordered", Cell::Exact("metrics/reordered")),
    (
        "mem/conn (B)",
        Cell::Exact("metrics/server_memory_per_connection"),
    ),
    ("gen-limited", Cell::Flag("generator/limited")),
];

fn scenario(r: &Value) -> String {
    r.get("scenario")
        .and_then(Value::as_str)
        .unwrap_or("n/a")
        .to_string()
}

fn verdict(r: &Value) -> String {
    match r.get("verdict").and_then(Value::as_str) {
        Some(v) => v.to_string(),
        // Reports written before verdicts existed.
        None => match r.get("passed").and_then(Value::as_bool) {
            Some(true) => "passed".into(),
            Some(false) => "failed".into(),
            None => "n/a".into(),
        },
    }
}

fn storage(r: &Value) -> String {
    let storage = r
        .pointer("/target/storage")
        .and_then(Value::as_str)
        .unwrap_or("n/a");
    match r.pointer("/target/durability").and_then(Value::as_str) {
        Some(d) => format!("{storage} ({})", d.split(':').next().unwrap_or(d)),
        None => storage.to_string(),
    }
}

/// `12.3`, `1500`, `0.125`: at most three decimals, no trailing zeros.
fn fmt_num(x: f64) -> String {
    let s = format!("{x:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.to_string()
    }
}

/// Escapes the cell separator so a path or storage URL cannot break the table.
fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// A report as compared: its JSON and, when its run directory has them, the
/// whole-run and per-interval histograms of each latency metric.
struct Compared {
    json: Value,
    histograms: HashMap<&'static str, (Histogram<u64>, Vec<Histogram<u64>>)>,
}

impl Compared {
    fn read(path: &Path) -> Result<Compared, LoadgenError> {
        let json = read_report(path, &path.display().to_string())?;
        let dir = resolve(path)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let mut histograms = HashMap::new();
        for (_, cell) in ROWS {
            let Cell::Latency(metric, ..) = cell else {
                continue;
            };
            let log = dir.join(format!("{metric}.hlog"));
            if histograms.contains_key(metric) || !log.is_file() {
                continue;
            }
            // An unreadable log only costs the noise judgement.
            if let Ok(intervals) = crate::report::merge::read_hlog(&log) {
                let mut h = new_histogram();
                for iv in &intervals {
                    let _ = h.add(&iv.histogram);
                }
                let batches = intervals.into_iter().map(|iv| iv.histogram).collect();
                histograms.insert(*metric, (h, batches));
            }
        }
        Ok(Compared { json, histograms })
    }

    /// The figure of a row and its 95% interval (`None`: no interval known,
    /// the figure is noise); `None` when the report has no figure.
    fn figure(&self, how: &Cell) -> Option<(f64, Option<(f64, f64)>)> {
        match how {
            Cell::Latency(metric, q, field) => {
                let count = number(&self.json, &format!("metrics/{metric}/count"))?;
                if count == 0.0 {
                    return None;
                }
                let v = number(&self.json, &format!("metrics/{metric}/{field}"))?;
                let interval = match self.histograms.get(metric).filter(|(h, _)| !h.is_empty()) {
                    Some((total, batches)) => Some(percentile_interval(total, batches, *q, v)),
                    None if count * (1.0 - q) < MIN_TAIL_SAMPLES => None,
                    None => Some((v * (1.0 - PRECISION), v * (1.0 + PRECISION))),
                };
                Some((v, interval))
            }
            Cell::Count(ptr, count_ptr) => {
                let v = number(&self.json, ptr)?;
                let n = number(&self.json, count_ptr).unwrap_or(v);
                // The count's Poisson interval, scaled to the figure (a rate).
                let rel = if n > 0.0 { Z95 * n.sqrt() / n } else { 0.0 };
                Some((v, Some((v * (1.0 - rel), v * (1.0 + rel)))))
            }
            Cell::Exact(ptr) => number(&self.json, ptr).map(|v| (v, Some((v, v)))),
            Cell::Text(_) | Cell::Flag(_) => None,
        }
    }
}

/// Column labels: each report's run directory name (or file stem), or A, B,
/// C... when those are not distinct.
fn labels(reports: &[PathBuf]) -> Vec<String> {
    let names: Vec<String> = reports
        .iter()
        .map(|p| {
            let file = resolve(p);
            let name = if file.file_name().is_some_and(|n| n == "report.json") {
                file.parent().and_then(Path::file_name)
            } else {
                file.file_stem()
            };
            name.map_or_else(
                || p.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            )
        })
        .collect();
    let distinct = names
        .iter()
        .enumerate()
        .all(|(i, n)| !n.is_empty() && !names[..i].contains(n));
    if distinct && names.iter().all(|n| n.len() <= 24) {
        names
    } else {
        (0..reports.len())
            .map(|i| char::from(b'A' + (i % 26) as u8).to_string())
            .collect()
    }
}

/// Reads every report (a report.json or a directory holding one) and returns
/// the comparison table. An unreadable or non-report file is `Invalid`,
/// naming it.
pub fn compare(reports: &[PathBuf]) -> Result<String, LoadgenError> {
    if reports.is_empty() {
        return Err(LoadgenError::invalid(
            "compare",
            "name at least one report.json",
        ));
    }
    let runs = reports
        .iter()
        .map(|p| Compared::read(p))
        .collect::<Result<Vec<_>, _>>()?;
    let labels = labels(reports);
    let mut out = String::new();
    let _ = write!(out, "| metric |");
    for l in &labels {
        let _ = write!(out, " {} |", cell(l));
    }
    let _ = write!(out, "\n|---|");
    for _ in reports {
        out.push_str("---:|");
    }
    out.push('\n');
    let mut noisy = false;
    for (name, how) in ROWS {
        let _ = write!(out, "| {name} |");
        let first = runs[0].figure(how);
        for (i, r) in runs.iter().enumerate() {
            let text = match how {
                Cell::Text(f) => f(&r.json),
                Cell::Flag(ptr) => {
                    match r.json.pointer(&format!("/{ptr}")).and_then(Value::as_bool) {
                        Some(true) => "yes".into(),
                        Some(false) => "no".into(),
                        None => "n/a".into(),
                    }
                }
                _ => match (r.figure(how), &first) {
                    (None, _) => "n/a".into(),
                    (Some((v, iv)), Some((f, first_iv))) if i > 0 && *f != 0.0 => {
                        // Each figure inside the other's interval: neither run
                        // tells the two apart.
                        let within = match (iv, first_iv) {
                            (Some((lo, hi)), Some((flo, fhi))) => {
                                (lo..=hi).contains(f) && (*flo..=*fhi).contains(&v)
                            }
                            _ => true,
                        };
                        noisy |= within && v != *f;
                        if within && v != *f {
                            format!("{} ({:.2}x ~)", fmt_num(v), v / f)
                        } else {
                            format!("{} ({:.2}x)", fmt_num(v), v / f)
                        }
                    }
                    (Some((v, _)), _) => fmt_num(v),
                },
            };
            let _ = write!(out, " {} |", cell(&text));
        }
        out.push('\n');
    }
    out.push_str("\nLatencies in ms; msg/s: acked messages per second; mem/conn: server bytes per connection.\n\n");
    for (l, p) in labels.iter().zip(reports) {
        let _ = writeln!(out, "- {l}: {}", resolve(p).display());
    }
    if noisy {
        out.push_str("- `~`: within run-to-run noise for that metric (each figure lies inside the other's 95% interval; docs/reports.md)\n");
    }
    Ok(out)
}
