//! `loadgen compare A B [...]`: reports side by side as a Markdown table, each
//! column after the first with its ratio to the first, e.g. `12.3 (1.52x)`.
//!
//! The usual question is "what does this change cost?": the same scenario run
//! against two storage backends, two commits or two machines. Reports are read
//! as plain JSON (not as this version's `Report`), so reports written by older
//! versions still compare; a figure a report lacks shows as `n/a`.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde_json::Value;

use crate::error::LoadgenError;
use crate::report::baseline::{number, read_report};

/// How a row reads its figure out of a report.
enum Cell {
    Text(fn(&Value) -> String),
    /// A number at a JSON pointer (without the leading `/`); ratios apply.
    Number(&'static str),
    Flag(&'static str),
}

const ROWS: &[(&str, Cell)] = &[
    ("scenario", Cell::Text(scenario)),
    ("storage (durability)", Cell::Text(storage)),
    ("messages acked", Cell::Number("metrics/messages_acked")),
    ("throughput (msg/s)", Cell::Number("metrics/throughput")),
    (
        "delivery p50 (ms)",
        Cell::Number("metrics/delivery_latency/p50_ms"),
    ),
    (
        "delivery p99 (ms)",
        Cell::Number("metrics/delivery_latency/p99_ms"),
    ),
    (
        "delivery p99.9 (ms)",
        Cell::Number("metrics/delivery_latency/p999_ms"),
    ),
    ("ack p50 (ms)", Cell::Number("metrics/ack_latency/p50_ms")),
    ("ack p99 (ms)", Cell::Number("metrics/ack_latency/p99_ms")),
    (
        "fan-out p99 (ms)",
        Cell::Number("metrics/fanout_latency/p99_ms"),
    ),
    (
        "connect p99 (ms)",
        Cell::Number("metrics/connect_latency/p99_ms"),
    ),
    ("sync p99 (ms)", Cell::Number("metrics/sync_latency/p99_ms")),
    ("history pages read", Cell::Number("counters/history_reads")),
    (
        "history p50 (ms)",
        Cell::Number("metrics/history_latency/p50_ms"),
    ),
    (
        "history p99 (ms)",
        Cell::Number("metrics/history_latency/p99_ms"),
    ),
    ("lost", Cell::Number("metrics/lost")),
    ("duplicated", Cell::Number("metrics/duplicated")),
    ("reordered", Cell::Number("metrics/reordered")),
    (
        "server memory/connection (bytes)",
        Cell::Number("metrics/server_memory_per_connection"),
    ),
    ("generator-limited", Cell::Flag("generator/limited")),
];

fn scenario(r: &Value) -> String {
    r.get("scenario")
        .and_then(Value::as_str)
        .unwrap_or("n/a")
        .to_string()
}

fn storage(r: &Value) -> String {
    let storage = r
        .pointer("/target/storage")
        .and_then(Value::as_str)
        .unwrap_or("n/a");
    match r.pointer("/target/durability").and_then(Value::as_str) {
        Some(d) => format!("{storage} ({d})"),
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
    let values = reports
        .iter()
        .map(|p| read_report(p, &p.display().to_string()))
        .collect::<Result<Vec<Value>, _>>()?;
    let mut out = String::new();
    let _ = write!(out, "| metric |");
    for p in reports {
        let _ = write!(out, " {} |", cell(&p.display().to_string()));
    }
    let _ = write!(out, "\n|---|");
    for _ in reports {
        out.push_str("---:|");
    }
    out.push('\n');
    for (name, how) in ROWS {
        let _ = write!(out, "| {name} |");
        let first = match how {
            Cell::Number(ptr) => number(&values[0], ptr),
            _ => None,
        };
        for (i, r) in values.iter().enumerate() {
            let text = match how {
                Cell::Text(f) => f(r),
                Cell::Flag(ptr) => match r.pointer(&format!("/{ptr}")).and_then(Value::as_bool) {
                    Some(true) => "yes".into(),
                    Some(false) => "no".into(),
                    None => "n/a".into(),
                },
                Cell::Number(ptr) => match (number(r, ptr), first) {
                    (None, _) => "n/a".into(),
                    (Some(v), Some(f)) if i > 0 && f != 0.0 => {
                        format!("{} ({:.2}x)", fmt_num(v), v / f)
                    }
                    (Some(v), _) => fmt_num(v),
                },
            };
            let _ = write!(out, " {} |", cell(&text));
        }
        out.push('\n');
    }
    Ok(out)
}
