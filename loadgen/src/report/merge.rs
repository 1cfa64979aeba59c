//! Merging shard reports (`loadgen merge DIR...`): runs made on several machines,
//! or several runs of one scenario, combined into one report as if one
//! generator had made them all.
//!
//! A run directory holds everything a merge needs, losslessly: `report.json` has
//! the counters, audit, errors, memory timeline and generator figures, and the
//! `.hlog` interval logs hold every latency sample (and the generator's schedule
//! lag) as HdrHistograms. [`read_outcome`] rebuilds an [`Outcome`] from one
//! directory, [`merge`] merges them with [`Outcome::merge`] (histograms add
//! exactly) and judges the result again with the first report's thresholds and
//! projection, so a merged report is built by the same code as any other.
//! Directories that are parts of one split run (`--shard`, each with its
//! `part.json`, or a shard's workers under it) also get the audit across the
//! parts and the fan-out completed from their files ([`crate::parts`]).

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;

use super::{json, Report, RunInfo};
use crate::error::LoadgenError;
use crate::outcome::{new_histogram, Interval, MemorySample, Outcome, LATENCY_METRICS};
use crate::projection::ProjectionConfig;
use crate::thresholds::Thresholds;

/// The interval log of the generator's schedule lag, beside the latency logs.
pub const GENERATOR_LAG_LOG: &str = "generator_lag";
/// The interval log of every send's lateness (written minus scheduled).
pub const SEND_DELAY_LOG: &str = "send_delay";
/// The bytes each connected device's own state accounted for (one interval,
/// values in bytes), so merged workers and shards keep the distribution.
pub const DEVICE_MEMORY_LOG: &str = "device_memory";

/// The intervals of one `.hlog` file, in file order.
pub fn read_hlog(path: &Path) -> Result<Vec<Interval>, LoadgenError> {
    let invalid = |reason: String| LoadgenError::invalid(path.display().to_string(), reason);
    let bytes = std::fs::read(path).map_err(|e| invalid(format!("cannot read: {e}")))?;
    let mut out = Vec::new();
    for entry in IntervalLogIterator::new(&bytes) {
        let entry =
            entry.map_err(|e| invalid(format!("not an HdrHistogram interval log: {e:?}")))?;
        let LogEntry::Interval(iv) = entry else {
            continue;
        };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(iv.encoded_histogram())
            .map_err(|e| {
                invalid(format!(
                    "interval at {:?}: bad base64: {e}",
                    iv.start_timestamp()
                ))
            })?;
        let h: Histogram<u64> = Deserializer::new()
            .deserialize(&mut Cursor::new(raw))
            .map_err(|e| invalid(format!("interval at {:?}: {e:?}", iv.start_timestamp())))?;
        out.push(Interval {
            start_ms: iv.start_timestamp().as_millis() as u64,
            duration_ms: iv.duration().as_millis() as u64,
            histogram: h,
        });
    }
    Ok(out)
}

/// Latency logs a run directory may lack: metrics added after the first
/// report version (`history_latency`).
const OPTIONAL_LOGS: &[&str] = &[
    "history_latency",
    "recovery_latency",
    "failover_latency",
    "delivery_latency_same_node",
    "delivery_latency_cross_node",
];

/// Rebuilds the outcome a run directory was written from. Every latency
/// metric's `.hlog` must be there, except those added since the first
/// version ([`OPTIONAL_LOGS`]); the generator-lag log is optional too (older
/// runs lack them, and then they read as empty).
pub fn read_outcome(dir: &Path) -> Result<(Report, Outcome), LoadgenError> {
    let report = json::read(dir)?;
    let mut o = Outcome::new(report.scenario.clone(), report.generator.bound_ms);
    o.started_at_ms = report.run.started_at_ms;
    o.duration_s = report.run.duration_s;
    for (metric, _) in LATENCY_METRICS {
        let path = dir.join(format!("{metric}.hlog"));
        if OPTIONAL_LOGS.contains(metric) && !path.is_file() {
            continue;
        }
        let intervals = read_hlog(&path)?;
        let total = o
            .histograms
            .entry(metric.to_string())
            .or_insert_with(new_histogram);
        for iv in &intervals {
            total.add(&iv.histogram).map_err(|e| {
                LoadgenError::invalid(dir.display().to_string(), format!("{metric}: {e:?}"))
            })?;
        }
        o.intervals.insert(metric.to_string(), intervals);
    }
    let lag_log = dir.join(format!("{GENERATOR_LAG_LOG}.hlog"));
    if lag_log.is_file() {
        for iv in read_hlog(&lag_log)? {
            let _ = o.generator.lag.add(&iv.histogram);
        }
    }
    let delay_log = dir.join(format!("{SEND_DELAY_LOG}.hlog"));
    if delay_log.is_file() {
        for iv in read_hlog(&delay_log)? {
            let _ = o.generator.send_delay.add(&iv.histogram);
        }
    }
    let device_log = dir.join(format!("{DEVICE_MEMORY_LOG}.hlog"));
    if device_log.is_file() {
        for iv in read_hlog(&device_log)? {
            let _ = o.generator.device_memory.add(&iv.histogram);
        }
    }
    o.generator
        .exhausted
        .clone_from(&report.generator.exhausted);
    o.generator.clock.clone_from(&report.generator.clock);
    o.generator.cpu_seconds = report.generator.cpu_seconds;
    o.generator.peak_rss_bytes = report.generator.peak_rss_bytes;
    o.counters = report.counters.clone();
    o.errors = report.errors.clone();
    o.audit = report.audit.clone();
    o.peak_connections = report.metrics.peak_connections;
    o.nodes.clone_from(&report.nodes);
    o.memory = report
        .memory
        .iter()
        .map(|p| MemorySample {
            t_ms: p.t_ms,
            connections: p.connections,
            server_rss_bytes: p.server_rss_bytes,
            loadgen_rss_bytes: p.loadgen_rss_bytes,
        })
        .collect();
    o.provisioning = report.provisioning.clone();
    o.phases = report.phases.clone();
    o.target = report.target.clone();
    o.interrupted = report.run.interrupted;
    o.server = report.server.clone();
    Ok((report, o))
}

/// The threshold table a report was judged by, recovered from its rows
/// (`"delivery_latency.p99 < 50ms"` -> key and limit); baseline rows are left
/// out (a merge takes its own `--baseline`).
pub fn thresholds_of(report: &Report) -> Result<Thresholds, LoadgenError> {
    let table: BTreeMap<String, String> = report
        .thresholds
        .iter()
        .filter(|row| !row.expr.contains("baseline"))
        .filter_map(|row| {
            row.expr
                .split_once(' ')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    Thresholds::parse(&table)
}

/// Merges run directories into one report, written to `out` in every format.
/// The first report supplies the scenario, thresholds and projection target.
pub fn merge(
    dirs: &[PathBuf],
    out: &Path,
    baseline: Option<&Path>,
) -> Result<Report, LoadgenError> {
    let Some((first_dir, rest)) = dirs.split_first() else {
        return Err(LoadgenError::invalid(
            "merge",
            "name at least one run directory",
        ));
    };
    if let Some(path) = baseline {
        super::baseline::Baseline::load(path)?;
    }
    let (first, mut merged) = read_outcome(first_dir)?;
    for dir in rest {
        let (_, o) = read_outcome(dir)?;
        for (mine, theirs) in merged.phases.iter_mut().zip(&o.phases) {
            mine.messages_sent += theirs.messages_sent;
        }
        if merged.provisioning.users == 0 {
            merged.provisioning.clone_from(&o.provisioning);
        }
        merged.merge(&o);
    }
    // Parts of one split run (shards, workers): the audit across them and
    // the fan-out come from their part files, exactly.
    let leaves: Vec<PathBuf> = dirs.iter().flat_map(|d| crate::parts::leaves(d)).collect();
    if let Some(first_leaf) = leaves.first() {
        let shape = crate::parts::PartInfo::read(first_leaf)?.plan();
        crate::parts::complete(&leaves, &shape, &mut merged)?;
    }
    let info = RunInfo {
        scenario: first.scenario.clone(),
        description: first.description.clone(),
        seed: first.run.seed,
        scenario_path: first.run.scenario_path.clone(),
        command: format!(
            "loadgen merge {}",
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(" ")
        ),
    };
    let target = &first.projection.target;
    let projection = ProjectionConfig {
        dau: target.dau,
        peak_online_share: target.peak_online_share,
        messages_per_user_per_day: target.messages_per_user_per_day,
        // An objective set in [projection]; one taken from the thresholds (or
        // the default) is found again from the re-parsed thresholds.
        slo: (target.slo_source == "[projection] slo" && target.slo_ms > 0.0)
            .then(|| format!("{}ms", target.slo_ms)),
        cores_per_server: target.cores_per_server,
        peak_to_average: target.peak_to_average,
        usable_memory_share: target.usable_memory_share,
    };
    let report = super::build(
        &info,
        &thresholds_of(&first)?,
        &projection,
        &merged,
        baseline,
    )?;
    super::write_all(&report, &merged, out)?;
    Ok(report)
}
