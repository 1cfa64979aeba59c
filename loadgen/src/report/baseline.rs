//! The baseline gate (`loadgen run --baseline REPORT.json`): a regression check
//! against a committed report of the same scenario.
//!
//! A run fails the gate when its p99 delivery or ack latency is more than 25%
//! *and* more than 1 ms worse than the baseline's (the 1 ms floor keeps
//! sub-millisecond noise from failing CI), when its throughput is more than 10%
//! lower, or when its audit found more lost, duplicated or reordered messages.
//! Each check is a row in the report's `thresholds`, with the baseline's value
//! in its note, so a failed gate says exactly what regressed.
//!
//! The baseline is read as plain JSON rather than as a [`super::Report`], so
//! older reports (and the minimal shape of scenarios.md) still gate.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::Metrics;
use crate::error::LoadgenError;
use crate::thresholds::ThresholdRow;

/// Latency may grow by this factor...
pub const LATENCY_FACTOR: f64 = 1.25;
/// ...and must also grow by more than this many ms before the gate fails.
pub const LATENCY_FLOOR_MS: f64 = 1.0;
/// Throughput may fall to this share of the baseline's.
pub const THROUGHPUT_FACTOR: f64 = 0.9;

/// A report path as given: a report.json, or a directory holding one.
pub fn resolve(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join("report.json")
    } else {
        path.to_path_buf()
    }
}

/// Reads a report.json as JSON; `flag` names the argument in errors.
pub fn read_report(path: &Path, flag: &str) -> Result<Value, LoadgenError> {
    let file = resolve(path);
    let text = std::fs::read_to_string(&file).map_err(|e| {
        LoadgenError::invalid(
            flag,
            format!(
                "cannot read {}: {}",
                file.display(),
                crate::scenario::io_reason(&e)
            ),
        )
    })?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| LoadgenError::invalid(flag, format!("{} is not JSON: {e}", file.display())))?;
    if !value.get("metrics").is_some_and(Value::is_object) {
        return Err(LoadgenError::invalid(
            flag,
            format!(
                "{} is not a loadgen report (no \"metrics\")",
                file.display()
            ),
        ));
    }
    Ok(value)
}

/// A number at a `/`-separated path of a report, e.g. `metrics/ack_latency/p99_ms`.
pub fn number(report: &Value, pointer: &str) -> Option<f64> {
    report
        .pointer(&format!("/{pointer}"))
        .and_then(Value::as_f64)
}

/// The figures of a baseline report that the gate compares.
#[derive(Clone, Debug, PartialEq)]
pub struct Baseline {
    /// (metric, samples, p99 in ms) for delivery and ack latency.
    pub latency: Vec<(&'static str, f64, f64)>,
    /// Acked messages per second; `None` in reports that predate the field.
    pub throughput: Option<f64>,
    /// (name, count) for lost, duplicated, reordered.
    pub audit: Vec<(&'static str, f64)>,
}

impl Baseline {
    /// Reads the baseline at `path` (a report.json or a directory holding one).
    /// Missing, unreadable or lacking a figure the gate needs: `Invalid {
    /// path: "--baseline" }`. `loadgen run` can call this before a run starts,
    /// so a typo in the path costs nothing.
    pub fn load(path: &Path) -> Result<Baseline, LoadgenError> {
        let base = read_report(path, "--baseline")?;
        let need = |pointer: &str| {
            number(&base, pointer).ok_or_else(|| {
                LoadgenError::invalid(
                    "--baseline",
                    format!("{} has no number at {pointer}", resolve(path).display()),
                )
            })
        };
        let mut latency = Vec::new();
        for metric in ["delivery_latency", "ack_latency"] {
            let p99 = need(&format!("metrics/{metric}/p99_ms"))?;
            // A hand-written baseline without a count is taken to have samples.
            let count = number(&base, &format!("metrics/{metric}/count")).unwrap_or(1.0);
            latency.push((metric, count, p99));
        }
        let mut audit = Vec::new();
        for name in ["lost", "duplicated", "reordered"] {
            audit.push((name, need(&format!("metrics/{name}"))?));
        }
        let throughput = number(&base, "metrics/throughput");
        Ok(Baseline {
            latency,
            throughput,
            audit,
        })
    }

    /// The gate's rows for the current metrics.
    pub fn rows(&self, current: &Metrics) -> Vec<ThresholdRow> {
        let mut rows = Vec::new();
        for &(metric, base_count, base_p99) in &self.latency {
            // A baseline that recorded nothing for this metric gates nothing.
            if base_count == 0.0 {
                continue;
            }
            let limit = (base_p99 * LATENCY_FACTOR).max(base_p99 + LATENCY_FLOOR_MS);
            let now = current.latency.get(metric).cloned().unwrap_or_default();
            let note = format!(
                "baseline p99 {base_p99} ms; limit max(x{LATENCY_FACTOR}, +{LATENCY_FLOOR_MS} ms) \
                 = {limit:.3} ms"
            );
            let (value, passed, note) = if now.count == 0 {
                (
                    0.0,
                    false,
                    format!("no {metric} samples in this run; {note}"),
                )
            } else {
                (now.p99_ms, now.p99_ms <= limit, note)
            };
            rows.push(ThresholdRow {
                expr: format!("{metric}.p99 <= baseline*{LATENCY_FACTOR}"),
                value,
                passed,
                unit: "ms".into(),
                limit,
                note: Some(note),
            });
        }
        if let Some(base_tp) = self.throughput.filter(|t| *t > 0.0) {
            let limit = base_tp * THROUGHPUT_FACTOR;
            rows.push(ThresholdRow {
                expr: format!("throughput >= baseline*{THROUGHPUT_FACTOR}"),
                value: current.throughput,
                passed: current.throughput >= limit,
                unit: "per_s".into(),
                limit,
                note: Some(format!("baseline throughput {base_tp} messages/s")),
            });
        }
        for &(name, base_n) in &self.audit {
            let now = current.audit.get(name).unwrap_or(0) as f64;
            rows.push(ThresholdRow {
                expr: format!("{name} <= baseline"),
                value: now,
                passed: now <= base_n,
                unit: "count".into(),
                limit: base_n,
                note: Some(format!("baseline {name} {base_n}")),
            });
        }
        rows
    }
}

/// The gate's rows for the current metrics against the baseline at `path`.
pub fn gate(path: &Path, current: &Metrics) -> Result<Vec<ThresholdRow>, LoadgenError> {
    Ok(Baseline::load(path)?.rows(current))
}
