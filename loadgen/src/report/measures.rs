//! Measures derived from an [`Outcome`]: latency summaries in milliseconds,
//! throughput, the memory timeline and the memory-per-connection fit.
//!
//! They live in one place because three readers need the same numbers: the
//! report itself, the threshold gate (`server_memory_per_connection < 8KiB`
//! must judge exactly the figure the report prints) and the projection.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::outcome::{MemorySample, Outcome};

/// Fewer server-memory samples than this and the slope is not reported.
pub const MIN_MEMORY_SAMPLES: usize = 3;
/// The connection count must vary by at least this much over the samples for a
/// slope to mean anything: a flat run measures the allocator, not connections.
pub const MIN_CONNECTION_SPREAD: u64 = 100;

/// One latency metric in the report: the `{count, p50_ms, ...}` shape of
/// scenarios.md, plus the mean.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl LatencySummary {
    /// Summarises a histogram of microseconds. An empty histogram is all zeros
    /// with `count: 0`; readers must check `count` before trusting a percentile.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: h.len(),
            mean_ms: round3(h.mean() / 1000.0),
            p50_ms: quantile_ms(h, 0.5),
            p90_ms: quantile_ms(h, 0.9),
            p99_ms: quantile_ms(h, 0.99),
            p999_ms: quantile_ms(h, 0.999),
            max_ms: round3(h.max() as f64 / 1000.0),
        }
    }
}

/// The value at quantile `q` (0..=1) of a microsecond histogram, in ms.
pub fn quantile_ms(h: &Histogram<u64>, q: f64) -> f64 {
    round3(h.value_at_quantile(q) as f64 / 1000.0)
}

/// Rounds to three decimals: microsecond resolution for values in ms, and
/// stable JSON (no `12.300000000000001`).
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Acknowledged messages per second over the measured phases (0 when the
/// duration is unknown).
pub fn throughput(outcome: &Outcome) -> f64 {
    if outcome.duration_s > 0.0 {
        round3(outcome.counters.messages_acked as f64 / outcome.duration_s)
    } else {
        0.0
    }
}

/// Deliveries (message frames received by devices) per second.
pub fn delivery_rate(outcome: &Outcome) -> f64 {
    if outcome.duration_s > 0.0 {
        round3(outcome.counters.deliveries as f64 / outcome.duration_s)
    } else {
        0.0
    }
}

/// One moment of the whole run's memory timeline (all workers combined).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemoryPoint {
    pub t_ms: u64,
    pub connections: u64,
    pub server_rss_bytes: Option<u64>,
    pub loadgen_rss_bytes: u64,
}

/// Combines the merged memory samples of all workers into one timeline.
///
/// [`Outcome::merge`] concatenates the workers' series, each in time order, so
/// a step back in `t_ms` marks where the next worker's series starts. At every
/// sample time the timeline holds the sum of each worker's latest connection
/// count and generator RSS, and the largest latest server RSS (the workers
/// sample the same server). With one worker this is the series unchanged.
pub fn memory_timeline(samples: &[MemorySample]) -> Vec<MemoryPoint> {
    let mut streams: Vec<&[MemorySample]> = Vec::new();
    let mut start = 0;
    for i in 1..samples.len() {
        if samples[i].t_ms < samples[i - 1].t_ms {
            streams.push(&samples[start..i]);
            start = i;
        }
    }
    if start < samples.len() {
        streams.push(&samples[start..]);
    }
    if streams.len() <= 1 {
        return samples
            .iter()
            .map(|s| MemoryPoint {
                t_ms: s.t_ms,
                connections: s.connections,
                server_rss_bytes: s.server_rss_bytes,
                loadgen_rss_bytes: s.loadgen_rss_bytes,
            })
            .collect();
    }
    let mut times: Vec<u64> = samples.iter().map(|s| s.t_ms).collect();
    times.sort_unstable();
    times.dedup();
    times
        .into_iter()
        .map(|t| {
            let mut point = MemoryPoint {
                t_ms: t,
                connections: 0,
                server_rss_bytes: None,
                loadgen_rss_bytes: 0,
            };
            for stream in &streams {
                // The latest sample of this worker at or before `t`.
                let n = stream.partition_point(|s| s.t_ms <= t);
                if let Some(s) = n.checked_sub(1).map(|i| &stream[i]) {
                    point.connections += s.connections;
                    point.loadgen_rss_bytes += s.loadgen_rss_bytes;
                    point.server_rss_bytes = point.server_rss_bytes.max(s.server_rss_bytes);
                }
            }
            point
        })
        .collect()
}

/// A least-squares line `y = slope * x + intercept` and how well it fits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fit {
    pub slope: f64,
    pub intercept: f64,
    /// Coefficient of determination (1 = every sample on the line).
    pub r2: f64,
    pub samples: usize,
}

/// Fits `y` against `x` by least squares. `None` with fewer than
/// [`MIN_MEMORY_SAMPLES`] points or an `x` spread under
/// [`MIN_CONNECTION_SPREAD`].
pub fn fit(points: &[(f64, f64)]) -> Option<Fit> {
    if points.len() < MIN_MEMORY_SAMPLES {
        return None;
    }
    let (lo, hi) = points
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), (x, _)| {
            (lo.min(*x), hi.max(*x))
        });
    if hi - lo < MIN_CONNECTION_SPREAD as f64 {
        return None;
    }
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    let syy: f64 = points.iter().map(|p| (p.1 - mean_y).powi(2)).sum();
    let slope = sxy / sxx;
    let intercept = mean_y - slope * mean_x;
    let r2 = if syy > 0.0 {
        (sxy * sxy) / (sxx * syy)
    } else {
        1.0
    };
    Some(Fit {
        slope,
        intercept,
        r2,
        samples: points.len(),
    })
}

/// The part of the timeline that measures memory per connection: from the
/// start until connections first reach their peak (the ramp-up), one point per
/// connection count (the first sample at that count).
///
/// Memory that does not follow connections would otherwise bend the line: a
/// steady phase grows RSS through stored messages (the `memory` backend keeps
/// them all) while the count stands still, and after a ramp-down the allocator
/// keeps what it had. While connections rise, the rise dominates.
pub fn ramp_up(timeline: &[MemoryPoint]) -> Vec<&MemoryPoint> {
    let peak = timeline.iter().map(|p| p.connections).max().unwrap_or(0);
    let end = timeline
        .iter()
        .position(|p| p.connections == peak)
        .map_or(0, |i| i + 1);
    let mut last = None;
    timeline[..end]
        .iter()
        .filter(|p| {
            let new_count = last != Some(p.connections);
            last = Some(p.connections);
            new_count
        })
        .collect()
}

/// Server resident memory per connected device: the slope of server RSS
/// against connections over the ramp-up ([`ramp_up`]). `None` when it cannot
/// be measured (a remote target reports no RSS, or too few samples or too
/// little change in connections).
pub fn server_memory_fit(timeline: &[MemoryPoint]) -> Option<Fit> {
    let points: Vec<(f64, f64)> = ramp_up(timeline)
        .into_iter()
        .filter_map(|p| {
            p.server_rss_bytes
                .map(|rss| (p.connections as f64, rss as f64))
        })
        .collect();
    fit(&points)
}

/// Generator resident memory per simulated connection, fitted the same way.
pub fn loadgen_memory_fit(timeline: &[MemoryPoint]) -> Option<Fit> {
    let points: Vec<(f64, f64)> = ramp_up(timeline)
        .into_iter()
        .map(|p| (p.connections as f64, p.loadgen_rss_bytes as f64))
        .collect();
    fit(&points)
}

/// Why the server-memory slope is missing, for the report's note.
pub fn server_memory_gap(timeline: &[MemoryPoint]) -> String {
    if timeline.iter().all(|p| p.server_rss_bytes.is_none()) {
        return "no server memory samples (a remote target's memory is not visible to loadgen)"
            .into();
    }
    let with_rss: Vec<&MemoryPoint> = ramp_up(timeline)
        .into_iter()
        .filter(|p| p.server_rss_bytes.is_some())
        .collect();
    if with_rss.len() < MIN_MEMORY_SAMPLES {
        return format!(
            "only {} server memory samples with distinct connection counts while \
             connections rose (need {MIN_MEMORY_SAMPLES}); ramp up over a few seconds",
            with_rss.len()
        );
    }
    let lo = with_rss.iter().map(|p| p.connections).min().unwrap_or(0);
    let hi = with_rss.iter().map(|p| p.connections).max().unwrap_or(0);
    format!(
        "connections only rose from {lo} to {hi} over the ramp-up (need a spread of \
         {MIN_CONNECTION_SPREAD}); run a ramp phase to measure memory per connection"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t_ms: u64, connections: u64, server: u64, loadgen: u64) -> MemorySample {
        MemorySample {
            t_ms,
            connections,
            server_rss_bytes: Some(server),
            loadgen_rss_bytes: loadgen,
        }
    }

    #[test]
    fn merged_workers_become_one_timeline() {
        // Two workers' series, concatenated the way Outcome::merge does.
        let samples = [
            sample(0, 0, 100, 10),
            sample(1000, 50, 150, 20),
            sample(2000, 100, 200, 30),
            sample(500, 10, 120, 5),
            sample(1500, 60, 180, 6),
        ];
        let t = memory_timeline(&samples);
        let at = |ms: u64| t.iter().find(|p| p.t_ms == ms).unwrap();
        assert_eq!(t.len(), 5);
        // At 1500 ms: worker 1's 1000 ms sample plus worker 2's 1500 ms sample.
        assert_eq!(at(1500).connections, 110);
        assert_eq!(at(1500).loadgen_rss_bytes, 26);
        assert_eq!(at(1500).server_rss_bytes, Some(180));
        // Before worker 2's first sample only worker 1 counts.
        assert_eq!(at(0).connections, 0);
        assert_eq!(at(2000).connections, 160);
    }

    #[test]
    fn one_worker_is_unchanged_and_the_fit_is_exact_on_a_line() {
        let samples: Vec<MemorySample> = (0..5)
            .map(|i| sample(i * 100, i * 100, 1_000 + i * 100 * 7, 0))
            .collect();
        let t = memory_timeline(&samples);
        assert_eq!(t.len(), 5);
        let f = server_memory_fit(&t).unwrap();
        assert!((f.slope - 7.0).abs() < 1e-9 && (f.intercept - 1_000.0).abs() < 1e-6);
        assert!((f.r2 - 1.0).abs() < 1e-9);
    }

    #[test]
    fn too_few_samples_or_too_little_spread_is_not_measured() {
        let flat: Vec<MemorySample> = (0..10).map(|i| sample(i, 500 + i, 1_000 + i, 0)).collect();
        let t = memory_timeline(&flat);
        assert_eq!(server_memory_fit(&t), None);
        assert!(server_memory_gap(&t).contains("only rose from 500 to 509"));
        let two = memory_timeline(&flat[..2]);
        assert!(server_memory_gap(&two).contains("only 2 server memory samples"));
        let remote: Vec<MemoryPoint> = t
            .iter()
            .map(|p| MemoryPoint {
                server_rss_bytes: None,
                ..p.clone()
            })
            .collect();
        assert!(server_memory_gap(&remote).contains("remote target"));
    }

    #[test]
    fn the_fit_uses_the_ramp_up_only() {
        // Connections rise 0 -> 1000 at 3000 bytes each, then stay flat while
        // memory keeps growing (stored messages), then fall (memory retained).
        let mut samples = Vec::new();
        for i in 0..=10u64 {
            samples.push(sample(i * 1000, i * 100, 1_000_000 + i * 100 * 3000, 0));
        }
        for i in 11..=20u64 {
            samples.push(sample(i * 1000, 1000, 4_000_000 + (i - 10) * 500_000, 0));
        }
        for i in 21..=25u64 {
            samples.push(sample(i * 1000, 1000 - (i - 20) * 150, 9_000_000, 0));
        }
        let timeline = memory_timeline(&samples);
        assert_eq!(ramp_up(&timeline).len(), 11);
        let f = server_memory_fit(&timeline).unwrap();
        assert!((f.slope - 3000.0).abs() < 1e-6, "{f:?}");
    }
}
