//! One HdrHistogram interval log per latency metric (`delivery_latency.hlog`,
//! ...): the per-interval histograms of the run, losslessly, in the format of
//! HdrHistogram's own `HistogramLogWriter` (V2 compressed histograms, base64),
//! so HistogramLogAnalyzer, `HistogramLogProcessor` or `hdr-plot` read them and
//! can slice the run however a report's fixed percentiles do not.
//!
//! Values are microseconds. The header carries the run's start as both
//! `StartTime` and `BaseTime`, so interval timestamps are seconds since the
//! measured phases began; the `Interval_Max` column is in milliseconds.

use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;
use hdrhistogram::serialization::V2DeflateSerializer;

use super::merge::{DEVICE_MEMORY_LOG, GENERATOR_LAG_LOG, SEND_DELAY_LOG};
use crate::error::LoadgenError;
use crate::outcome::{Interval, Outcome, LATENCY_METRICS};

/// The legend line of HdrHistogram's Java writer (readers skip it).
const LEGEND: &str =
    "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"\n";

/// Renders one metric's interval log. Without intervals, a non-empty total
/// histogram becomes a single interval spanning the run, so no file that has
/// data is empty.
pub fn render(metric: &str, outcome: &Outcome) -> Result<Vec<u8>, String> {
    let total = match metric {
        GENERATOR_LAG_LOG => Some(&outcome.generator.lag),
        SEND_DELAY_LOG => Some(&outcome.generator.send_delay),
        DEVICE_MEMORY_LOG => Some(&outcome.generator.device_memory),
        _ => outcome.histograms.get(metric),
    };
    let intervals: Vec<Interval> = match outcome.intervals.get(metric) {
        Some(list) if !list.is_empty() => list.clone(),
        _ => match total {
            Some(h) if !h.is_empty() => vec![Interval {
                start_ms: 0,
                duration_ms: (outcome.duration_s * 1000.0).round() as u64,
                histogram: h.clone(),
            }],
            _ => Vec::new(),
        },
    };
    let mut out = Vec::new();
    let mut serializer = V2DeflateSerializer::new();
    let mut header = IntervalLogWriterBuilder::new();
    header.add_comment("[Histogram log format version 1.3]");
    header.add_comment(&format!(
        "[chatscale loadgen: {metric} in {}, scenario {}]",
        if metric == DEVICE_MEMORY_LOG {
            "bytes"
        } else {
            "microseconds"
        },
        outcome.scenario
    ));
    header.with_max_value_divisor(1000.0);
    if outcome.started_at_ms > 0 {
        let start = UNIX_EPOCH + Duration::from_millis(outcome.started_at_ms);
        header.with_start_time(start).with_base_time(start);
    }
    // The builder writes the header lines; the legend follows them, as in the
    // Java writer's output, then a second (header-less) writer adds intervals.
    header
        .begin_log_with(&mut out, &mut serializer)
        .map_err(|e| e.to_string())?;
    out.extend_from_slice(LEGEND.as_bytes());
    let mut body = Vec::new();
    {
        let mut writer = IntervalLogWriterBuilder::new()
            .with_max_value_divisor(1000.0)
            .begin_log_with(&mut body, &mut serializer)
            .map_err(|e| e.to_string())?;
        for iv in &intervals {
            writer
                .write_histogram(
                    &iv.histogram,
                    Duration::from_millis(iv.start_ms),
                    Duration::from_millis(iv.duration_ms),
                    None,
                )
                .map_err(|e| e.to_string())?;
        }
    }
    // The second builder repeats the divisor line; keep only the first one.
    let body = String::from_utf8_lossy(&body);
    for line in body.lines().filter(|l| !l.starts_with("#[MaxValueDivisor")) {
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    Ok(out)
}

/// Writes `NAME.hlog` into `dir` for every name of [`LATENCY_METRICS`], and
/// `generator_lag.hlog` and `send_delay.hlog` (how late the generator's timers
/// ran and its sends went out, one interval each), which `loadgen merge` needs
/// to judge a merged run's generator, and `device_memory.hlog` (bytes per
/// device, so merged workers keep that distribution).
pub fn write_all(outcome: &Outcome, dir: &Path) -> Result<(), LoadgenError> {
    let names = LATENCY_METRICS.iter().map(|(n, _)| *n).chain([
        GENERATOR_LAG_LOG,
        SEND_DELAY_LOG,
        DEVICE_MEMORY_LOG,
    ]);
    for metric in names {
        let path = dir.join(format!("{metric}.hlog"));
        let bytes = render(metric, outcome).map_err(|e| LoadgenError::Io {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        super::write_file(&path, &bytes)?;
    }
    Ok(())
}
