//! The report of a run: [`build`] judges a merged [`Outcome`] (thresholds,
//! baseline gate, projection) into a [`Report`], [`write_all`] writes it in every
//! format, and [`summary`] gives the few lines a terminal shows.
//!
//! `report.json` is the public, machine-read form (its shape is the contract in
//! scenarios.md plus `schema_version` and more; `loadgen/report.schema.json`
//! describes it and a test holds the two together). The other files are views of
//! the same numbers: `report.md` for a pull request, `report.html` with charts
//! for a person, and one HdrHistogram interval log per latency metric for
//! HdrHistogram's own tools. One file per format below; `measures` derives the
//! figures every reader shares; `baseline` is the regression gate; `merge`
//! rebuilds outcomes from run directories and merges shards into one report.

pub mod baseline;
pub mod connmem;
mod fields;
pub mod hlog;
pub mod html;
pub mod json;
pub mod junit;
pub mod markdown;
pub mod measures;
pub mod merge;
mod nodes;
mod svg;
pub mod verdict;

pub use verdict::Verdict;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::LoadgenError;
use crate::outcome::{
    Audit, AuditCounts, Counters, Outcome, PhaseOutcome, Provisioning, ServerStats, TargetInfo,
    LATENCY_METRICS,
};
use crate::projection::{self, Measured, PhaseCapacity, Projection, ProjectionConfig};
use crate::thresholds::{ThresholdRow, Thresholds};
use measures::{LatencySummary, MemoryPoint};

/// Version of the report.json shape; bumped when a field changes meaning or
/// disappears (adding a field does not bump it).
pub const SCHEMA_VERSION: u32 = 1;

/// How the run was invoked, for the report's header.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    pub scenario: String,
    pub description: String,
    pub seed: u64,
    pub scenario_path: String,
    /// The command line as typed, to reproduce the run.
    pub command: String,
}

/// The measured run, as report.json shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub schema_version: u32,
    pub scenario: String,
    pub description: String,
    /// True only when `verdict` is `passed`.
    pub passed: bool,
    /// `passed`, `failed` (a threshold or the baseline gate),
    /// `generator_limited` or `incomplete` (the audit or the run could not
    /// finish); the exit status follows it (0, 1, 3, 3).
    #[serde(default)]
    pub verdict: Verdict,
    /// Why, in a sentence.
    #[serde(default)]
    pub verdict_reason: String,
    pub run: RunSection,
    pub target: TargetInfo,
    pub metrics: Metrics,
    pub thresholds: Vec<ThresholdRow>,
    pub projection: Projection,
    pub audit: Audit,
    /// Error answers and failures by code.
    pub errors: BTreeMap<String, u64>,
    pub counters: Counters,
    pub provisioning: Provisioning,
    pub generator: GeneratorReport,
    /// What the server said about itself at `/metrics` (CPU over the measured
    /// phases, its connection limit, its machine); nulls when it says nothing.
    #[serde(default)]
    pub server: ServerStats,
    pub phases: Vec<PhaseOutcome>,
    /// Connections and memory over the run (all workers combined).
    pub memory: Vec<MemoryPoint>,
    /// Each server node's connections over the run (sampled from its `/metrics`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<crate::outcome::NodeSeries>,
    /// Memory per connection as distributions (server per node and merged,
    /// loadgen per device) beside the RSS slopes.
    #[serde(default)]
    pub connection_memory: connmem::ConnectionMemory,
}

/// When, how and with what the run was made.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSection {
    pub seed: u64,
    pub scenario_path: String,
    pub command: String,
    /// Unix time in ms when the measured phases started.
    pub started_at_ms: u64,
    /// Length of the measured phases, seconds.
    pub duration_s: f64,
    pub loadgen_version: String,
    /// The baseline report the gate compared against, if any.
    pub baseline: Option<String>,
    /// Ctrl-C cut the phases or the drain short (the verdict is `incomplete`).
    #[serde(default)]
    pub interrupted: bool,
}

/// The headline figures. Latency metrics (every name of [`LATENCY_METRICS`])
/// sit beside the counts, as scenarios.md shows them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// The audit's counts (`lost`, `duplicated`, `reordered`, ...), top-level
    /// numbers. Declared before `latency`: serde hands flattened fields the
    /// unclaimed keys in order, and these must not reach the latency map.
    #[serde(flatten)]
    pub audit: AuditCounts,
    #[serde(flatten)]
    pub latency: BTreeMap<String, LatencySummary>,
    pub messages_scheduled: u64,
    pub messages_sent: u64,
    pub messages_acked: u64,
    pub deliveries: u64,
    pub peak_connections: u64,
    /// Bytes of server RSS per connected device (least-squares slope); `null`
    /// when it could not be measured (see `server_memory_note`).
    pub server_memory_per_connection: Option<f64>,
    /// Samples and goodness of fit behind the slope, or why there is none.
    pub server_memory_note: String,
    /// Acknowledged messages per second over the measured phases.
    pub throughput: f64,
    /// Deliveries per second over the measured phases.
    pub delivery_rate: f64,
    /// Sum of `errors`.
    pub errors_total: u64,
}

/// How well the generator kept its schedule; a limited generator measures itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GeneratorReport {
    pub lag_p50_ms: f64,
    pub lag_p99_ms: f64,
    pub lag_max_ms: f64,
    /// Every send's lateness (frame written minus scheduled), ms.
    #[serde(default)]
    pub send_delay_p50_ms: f64,
    #[serde(default)]
    pub send_delay_p99_ms: f64,
    #[serde(default)]
    pub send_delay_max_ms: f64,
    /// The send delay p99 (timer lag p99 for a run that sent nothing) past
    /// which the run counts as generator-limited (`[generator] max_lag`).
    pub bound_ms: f64,
    pub limited: bool,
    /// Why the generator is limited, with what to change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limited_reason: Option<String>,
    /// The generator ran out of descriptors or ports: which, and what to change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exhausted: Option<String>,
    /// How the clock thread was scheduled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock: Option<String>,
    /// Bytes each connected device's own state accounts for (p50, p99, max),
    /// beside the RSS slope `memory_per_connection`.
    #[serde(default)]
    pub device_memory_p50_bytes: u64,
    #[serde(default)]
    pub device_memory_p99_bytes: u64,
    #[serde(default)]
    pub device_memory_max_bytes: u64,
    pub cpu_seconds: f64,
    pub peak_rss_bytes: u64,
    /// Generator RSS per simulated connection (fitted slope), bytes; `null`
    /// when not measurable.
    pub memory_per_connection: Option<f64>,
}

/// Judges a merged outcome into a report. `baseline` is a report.json (or a
/// directory holding one) to gate against; a missing or unreadable baseline is
/// `Invalid { path: "--baseline" }`.
pub fn build(
    info: &RunInfo,
    thresholds: &Thresholds,
    projection: &ProjectionConfig,
    outcome: &Outcome,
    baseline: Option<&Path>,
) -> Result<Report, LoadgenError> {
    let empty = crate::outcome::new_histogram();
    let latency: BTreeMap<String, LatencySummary> = LATENCY_METRICS
        .iter()
        .map(|(name, _)| {
            (
                name.to_string(),
                LatencySummary::of(outcome.histograms.get(*name).unwrap_or(&empty)),
            )
        })
        .collect();
    let timeline = measures::memory_timeline(&outcome.memory);
    let server_fit = measures::server_memory_fit(&timeline);
    let server_memory_note = match server_fit {
        Some(f) => format!(
            "least-squares slope over {} samples, r2 = {:.3}, intercept {:.0} bytes",
            f.samples, f.r2, f.intercept
        ),
        None => format!("not measured: {}", measures::server_memory_gap(&timeline)),
    };
    let metrics = Metrics {
        messages_scheduled: outcome.counters.messages_scheduled,
        messages_sent: outcome.counters.messages_sent,
        messages_acked: outcome.counters.messages_acked,
        deliveries: outcome.counters.deliveries,
        audit: outcome.audit.counts.clone(),
        peak_connections: outcome.peak_connections,
        server_memory_per_connection: server_fit.map(|f| f.slope.round()),
        server_memory_note,
        throughput: measures::throughput(outcome),
        delivery_rate: measures::delivery_rate(outcome),
        errors_total: outcome.errors.values().sum(),
        latency,
    };
    let lag = &outcome.generator.lag;
    let generator = GeneratorReport {
        lag_p50_ms: if lag.is_empty() {
            0.0
        } else {
            measures::quantile_ms(lag, 0.5)
        },
        lag_p99_ms: if lag.is_empty() {
            0.0
        } else {
            measures::quantile_ms(lag, 0.99)
        },
        lag_max_ms: measures::round3(lag.max() as f64 / 1000.0),
        send_delay_p50_ms: quantile_or_zero(&outcome.generator.send_delay, 0.5),
        send_delay_p99_ms: quantile_or_zero(&outcome.generator.send_delay, 0.99),
        send_delay_max_ms: measures::round3(outcome.generator.send_delay.max() as f64 / 1000.0),
        bound_ms: outcome.generator.bound_ms,
        limited: outcome.generator.limited(),
        limited_reason: outcome.generator.limited_reason(),
        exhausted: outcome.generator.exhausted.clone(),
        clock: outcome.generator.clock.clone(),
        device_memory_p50_bytes: value_or_zero(&outcome.generator.device_memory, 0.5),
        device_memory_p99_bytes: value_or_zero(&outcome.generator.device_memory, 0.99),
        device_memory_max_bytes: outcome.generator.device_memory.max(),
        cpu_seconds: measures::round3(outcome.generator.cpu_seconds),
        peak_rss_bytes: outcome.generator.peak_rss_bytes,
        memory_per_connection: measures::loadgen_memory_fit(&timeline).map(|f| f.slope.round()),
    };

    let mut rows = thresholds.evaluate(outcome);
    if let Some(path) = baseline {
        rows.extend(baseline::gate(path, &metrics)?);
    }
    let (verdict, verdict_reason) = Verdict::judge(&rows, outcome);

    let phases = phase_figures(outcome);
    let (slo_ms, slo_source) = projection.slo_ms(thresholds);
    let measured = Measured {
        peak_connections: outcome.peak_connections,
        devices_per_user: if outcome.provisioning.users > 0 {
            outcome.provisioning.devices as f64 / outcome.provisioning.users as f64
        } else {
            1.0
        },
        server_memory_per_connection: server_fit.map(|f| f.slope),
        server_base_memory: server_fit.map(|f| f.intercept),
        server_memory_r2: server_fit.map(|f| f.r2),
        phases: phases
            .iter()
            .map(|p| PhaseCapacity {
                name: p.name.clone(),
                offered: p.message_rate,
                acked_per_s: p.acked as f64 / p.duration_s.max(1e-3),
                delivery_p99_ms: p.delivery_p99_ms,
            })
            .collect(),
        slo_ms,
        slo_source,
        messages_acked: outcome.counters.messages_acked,
        server: outcome.server.clone(),
        // An embedded server runs on this machine; a remote one says at /metrics.
        local_memory_bytes: if outcome.target.embedded {
            projection::machine_memory_bytes()
        } else {
            None
        },
        local_cpus: if outcome.target.embedded {
            projection::machine_cpus()
        } else {
            0
        },
        generator_limited: generator.limited,
        server_nodes: nodes::serving(&outcome.nodes),
        node_held: nodes::held_within(&outcome.nodes, &phases, slo_ms),
    };
    let connection_memory = connmem::build(
        outcome,
        metrics.server_memory_per_connection,
        generator.memory_per_connection,
    );

    Ok(Report {
        schema_version: SCHEMA_VERSION,
        scenario: if info.scenario.is_empty() {
            outcome.scenario.clone()
        } else {
            info.scenario.clone()
        },
        description: info.description.clone(),
        passed: verdict == Verdict::Passed,
        verdict,
        verdict_reason,
        run: RunSection {
            seed: info.seed,
            scenario_path: info.scenario_path.clone(),
            command: info.command.clone(),
            started_at_ms: outcome.started_at_ms,
            duration_s: measures::round3(outcome.duration_s),
            loadgen_version: env!("CARGO_PKG_VERSION").to_string(),
            baseline: baseline.map(|p| p.display().to_string()),
            interrupted: outcome.interrupted,
        },
        target: outcome.target.clone(),
        metrics,
        thresholds: rows,
        projection: projection::project(projection, &measured),
        audit: outcome.audit.clone(),
        errors: outcome.errors.clone(),
        counters: outcome.counters.clone(),
        connection_memory,
        provisioning: outcome.provisioning.clone(),
        generator,
        server: outcome.server.clone(),
        phases,
        memory: timeline,
        nodes: outcome.nodes.clone(),
    })
}

fn quantile_or_zero(h: &hdrhistogram::Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        measures::quantile_ms(h, q)
    }
}

fn value_or_zero(h: &hdrhistogram::Histogram<u64>, q: f64) -> u64 {
    if h.is_empty() {
        0
    } else {
        h.value_at_quantile(q)
    }
}

/// The phases with their acks, deliveries and history reads, from the per-interval
/// histograms whose middle falls within each phase (so to the precision of
/// `generator.interval`): the figures of one step of a stepped-rate scenario.
fn phase_figures(outcome: &Outcome) -> Vec<PhaseOutcome> {
    let mut phases = outcome.phases.clone();
    let ends: Vec<u64> = phases
        .iter()
        .map(|p| p.start_ms + (p.duration_s * 1000.0).round() as u64)
        .collect();
    for (p, end) in phases.iter_mut().zip(ends) {
        let of = |metric: &str| {
            let mut h = crate::outcome::new_histogram();
            for iv in outcome.intervals.get(metric).into_iter().flatten() {
                if (p.start_ms..end).contains(&(iv.start_ms + iv.duration_ms / 2)) {
                    let _ = h.add(&iv.histogram);
                }
            }
            let p99 = if h.is_empty() {
                0.0
            } else {
                measures::quantile_ms(&h, 0.99)
            };
            (h.len(), p99)
        };
        (p.acked, p.ack_p99_ms) = of("ack_latency");
        (p.history_reads, p.history_p99_ms) = of("history_latency");
        let (deliveries, delivery_p99) = of("delivery_latency");
        p.deliveries = deliveries;
        p.delivery_p99_ms = (deliveries > 0).then_some(delivery_p99);
    }
    phases
}

/// Writes `report.json`, `report.md`, `report.html`, `report.junit.xml` and one
/// `.hlog` per latency metric into `dir` (created if needed).
pub fn write_all(report: &Report, outcome: &Outcome, dir: &Path) -> Result<(), LoadgenError> {
    std::fs::create_dir_all(dir).map_err(|source| LoadgenError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    write_file(&dir.join("report.json"), json::render(report)?.as_bytes())?;
    write_file(&dir.join("report.md"), markdown::render(report).as_bytes())?;
    write_file(
        &dir.join("report.html"),
        html::render(report, outcome).as_bytes(),
    )?;
    write_file(
        &dir.join("report.junit.xml"),
        junit::render(report).as_bytes(),
    )?;
    hlog::write_all(outcome, dir)
}

pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<(), LoadgenError> {
    std::fs::write(path, bytes).map_err(|source| LoadgenError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// A few lines for the terminal: verdict, latencies, throughput, audit.
pub fn summary(report: &Report) -> String {
    let m = &report.metrics;
    let line = |name: &str| {
        let l = m.latency.get(name).cloned().unwrap_or_default();
        if l.count == 0 {
            "no samples".to_string()
        } else {
            format!(
                "p50 {} ms, p99 {} ms ({} samples)",
                l.p50_ms, l.p99_ms, l.count
            )
        }
    };
    let mut out = format!(
        "{}: {} ({})\n",
        report.verdict.headline(),
        report.scenario,
        report.verdict_reason
    );
    out += &format!("  delivery: {}\n", line("delivery_latency"));
    out += &format!("  ack:      {}\n", line("ack_latency"));
    out += &format!(
        "  throughput: {} msg/s acked ({} sent, {} acked, {} deliveries, peak {} connections)\n",
        m.throughput, m.messages_sent, m.messages_acked, m.deliveries, m.peak_connections
    );
    let a = &m.audit;
    out += &format!(
        "  audit: {} lost, {} duplicated, {} reordered; {} live, {} recovered, {} undelivered, {} awaiting sync; {} unacked, {} refused\n",
        a.lost, a.duplicated, a.reordered, a.delivered_live, a.recovered, a.undelivered, a.awaiting_sync, a.unacked, a.refused
    );
    if report.audit.incomplete {
        out += &format!(
            "  INCOMPLETE audit: {}\n",
            report.audit.incomplete_reason.as_deref().unwrap_or("")
        );
    }
    out += &format!(
        "  generator: send delay p50 {} ms, p99 {} ms; clock {}\n",
        report.generator.send_delay_p50_ms,
        report.generator.send_delay_p99_ms,
        report.generator.clock.as_deref().unwrap_or("n/a")
    );
    if let Some(why) = &report.generator.limited_reason {
        out += &format!("  WARNING: generator-limited: {why}\n");
    }
    out
}
