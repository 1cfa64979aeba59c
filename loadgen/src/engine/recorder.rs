//! The worker-local recorder: latency histograms, counters and error counts
//! that every simulated device writes into directly.
//!
//! One `Mutex` per latency metric, each holding the histogram of the current
//! interval; a record is a lock, an index computation and an increment (tens
//! of nanoseconds), never a channel message per sample (goose's mistake). When
//! a sample falls into a later interval than the current one, the current
//! histogram is closed into the metric's interval list and added to its total:
//! the per-interval histograms for the `.hlog` files and charts come for free,
//! and no timer task is needed. Counters are relaxed atomics.
//!
//! Time is kept as Unix microseconds derived from one `Instant` taken at start
//! ([`Clock`]), so timestamps written into a `client_msg_id` by the sender and
//! read by a receiver compare exactly and never go backwards.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;

pub use crate::catalog::{inc, AtomicCounters, Metric};
use crate::outcome::{new_histogram, Interval, Outcome, LATENCY_METRICS};

/// Unix time in microseconds, monotonic within this process.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: Instant,
    base_unix_us: u64,
}

impl Clock {
    pub fn new() -> Self {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Clock {
            base: Instant::now(),
            base_unix_us: unix.as_micros() as u64,
        }
    }

    pub fn unix_us(&self, at: Instant) -> u64 {
        self.base_unix_us + at.saturating_duration_since(self.base).as_micros() as u64
    }

    pub fn now_us(&self) -> u64 {
        self.unix_us(Instant::now())
    }

    /// The instant of a Unix time in µs (one shared by several processes).
    pub fn instant_of(&self, unix_us: u64) -> Instant {
        let now = Instant::now();
        let now_us = self.unix_us(now);
        if unix_us >= now_us {
            now + Duration::from_micros(unix_us - now_us)
        } else {
            now.checked_sub(Duration::from_micros(now_us - unix_us))
                .unwrap_or(self.base)
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// A histogram for one interval: same precision as the totals, but sized to
/// the values it has seen (it grows on demand), since a run keeps one per
/// metric per interval and most hold only small values.
fn interval_histogram() -> Histogram<u64> {
    let mut h = Histogram::new(3).expect("3 significant digits are valid");
    h.auto(true);
    h
}

/// A closed interval, kept serialized (HdrHistogram's V2 encoding, which
/// run-length encodes the empty buckets): a few hundred bytes instead of the
/// tens of kilobytes of its counts array, so a long run's intervals do not
/// grow the generator's memory by megabytes a minute.
struct Packed {
    start_ms: u64,
    bytes: Vec<u8>,
}

struct Series {
    /// Interval number of `current` (elapsed / interval).
    index: u64,
    current: Histogram<u64>,
    done: Vec<Packed>,
    total: Histogram<u64>,
}

impl Series {
    fn close_current(&mut self, interval_ms: u64) {
        if self.current.is_empty() {
            return;
        }
        let _ = self.total.add(&self.current);
        let mut bytes = Vec::new();
        let _ = V2Serializer::new().serialize(&self.current, &mut bytes);
        self.current.reset();
        self.done.push(Packed {
            start_ms: self.index * interval_ms,
            bytes,
        });
    }

    /// The closed intervals, decoded.
    fn unpack(done: Vec<Packed>, interval_ms: u64) -> Vec<Interval> {
        done.into_iter()
            .filter_map(|p| {
                let mut h: Histogram<u64> = Deserializer::new()
                    .deserialize(&mut std::io::Cursor::new(p.bytes))
                    .ok()?;
                h.auto(true);
                Some(Interval {
                    start_ms: p.start_ms,
                    duration_ms: interval_ms,
                    histogram: h,
                })
            })
            .collect()
    }
}

/// Everything the devices and the scheduler record during the measured phases.
pub struct Recorder {
    pub clock: Clock,
    /// Start of the measured phases; interval numbers count from here.
    start: Instant,
    interval_ms: u64,
    series: Vec<Mutex<Series>>,
    lag: Mutex<Histogram<u64>>,
    send_delay: Mutex<Histogram<u64>>,
    exhausted: Mutex<Option<String>>,
    errors: Mutex<BTreeMap<String, u64>>,
    pub counters: AtomicCounters,
    /// Devices connected right now, and the most at once.
    pub connected: AtomicU64,
    pub peak_connected: AtomicU64,
}

impl Recorder {
    pub fn new(clock: Clock, interval: Duration) -> Self {
        Recorder {
            clock,
            start: Instant::now(),
            interval_ms: interval.as_millis().max(1) as u64,
            series: LATENCY_METRICS
                .iter()
                .map(|_| {
                    Mutex::new(Series {
                        index: 0,
                        current: interval_histogram(),
                        done: Vec::new(),
                        total: new_histogram(),
                    })
                })
                .collect(),
            lag: Mutex::new(new_histogram()),
            send_delay: Mutex::new(new_histogram()),
            exhausted: Mutex::new(None),
            errors: Mutex::new(BTreeMap::new()),
            counters: AtomicCounters::default(),
            connected: AtomicU64::new(0),
            peak_connected: AtomicU64::new(0),
        }
    }

    /// Intervals counted from `start` (the run's first phase, the same
    /// instant in every process of a split run, so their intervals line up).
    pub fn starting_at(mut self, start: Instant) -> Self {
        self.start = start;
        self
    }

    /// Milliseconds since the measured phases started.
    pub fn elapsed_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Milliseconds from the start of the measured phases to `at`.
    pub fn elapsed_ms_at(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.start).as_millis() as u64
    }

    /// Records a latency in microseconds (clamped to the histogram's range).
    pub fn record(&self, metric: Metric, micros: u64) {
        let index = self.elapsed_ms() / self.interval_ms;
        let mut s = self.series[metric.index()]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if index > s.index {
            s.close_current(self.interval_ms);
            s.index = index;
        }
        // Clamped to the totals' range (1 µs to 1 h) so every interval adds into them.
        // `record`, not `saturating_record`: the latter clamps instead of growing.
        let _ = s.current.record(micros.clamp(1, 3_600_000_000));
    }

    /// Records a latency from `from_us` to `now_us` (Unix µs). A receipt
    /// stamped before its cause (two processes' clocks apart) is counted in
    /// `negative_latency`, not clamped into the histogram.
    pub fn latency(&self, metric: Metric, now_us: u64, from_us: u64) {
        match now_us.checked_sub(from_us) {
            Some(d) => self.record(metric, d),
            None => inc(&self.counters.negative_latency),
        }
    }

    /// Records one send's lateness: written at `actual_us`, scheduled at `sched_us`.
    pub fn record_send_delay(&self, actual_us: u64, sched_us: u64) {
        let mut h = self.send_delay.lock().unwrap_or_else(|e| e.into_inner());
        h.saturating_record(actual_us.saturating_sub(sched_us).max(1));
    }

    /// The generator ran out of descriptors or ports (`why` says which and
    /// what to change): the run is generator-limited.
    pub fn exhausted(&self, why: String) {
        self.exhausted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(why);
    }

    /// Records how late the generator ran a piece of scheduled work.
    pub fn record_lag(&self, late: Duration) {
        let mut lag = self.lag.lock().unwrap_or_else(|e| e.into_inner());
        lag.saturating_record((late.as_micros() as u64).max(1));
    }

    /// Counts an error by code (`connect`, `rate_limited`, `closed_1008`, ...).
    pub fn error(&self, code: &str) {
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        match errors.get_mut(code) {
            Some(n) => *n += 1,
            None => {
                errors.insert(code.to_string(), 1);
            }
        }
    }

    pub fn errors_total(&self) -> u64 {
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .sum()
    }

    pub fn device_connected(&self) {
        let now = self.connected.fetch_add(1, Relaxed) + 1;
        self.peak_connected.fetch_max(now, Relaxed);
    }

    pub fn device_disconnected(&self) {
        self.connected.fetch_sub(1, Relaxed);
    }

    /// A quantile (in µs) of everything recorded so far for a metric.
    pub fn quantile_so_far(&self, metric: Metric, q: f64) -> Option<u64> {
        let s = self.series[metric.index()]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut h = s.total.clone();
        let _ = h.add(&s.current);
        (!h.is_empty()).then(|| h.value_at_quantile(q))
    }

    /// Moves everything recorded into `outcome` (histograms, intervals,
    /// counters, errors, lag, peak connections).
    pub fn drain_into(&self, outcome: &mut Outcome) {
        for (i, (name, _)) in LATENCY_METRICS.iter().enumerate() {
            let mut s = self.series[i].lock().unwrap_or_else(|e| e.into_inner());
            s.close_current(self.interval_ms);
            s.current = interval_histogram();
            let total = std::mem::replace(&mut s.total, new_histogram());
            let done = std::mem::take(&mut s.done);
            let _ = outcome
                .histograms
                .entry(name.to_string())
                .or_insert_with(new_histogram)
                .add(&total);
            outcome
                .intervals
                .entry(name.to_string())
                .or_default()
                .extend(Series::unpack(done, self.interval_ms));
        }
        let lag = std::mem::replace(
            &mut *self.lag.lock().unwrap_or_else(|e| e.into_inner()),
            new_histogram(),
        );
        let _ = outcome.generator.lag.add(&lag);
        let delay = std::mem::replace(
            &mut *self.send_delay.lock().unwrap_or_else(|e| e.into_inner()),
            new_histogram(),
        );
        let _ = outcome.generator.send_delay.add(&delay);
        if let Some(why) = self
            .exhausted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            outcome.generator.exhausted.get_or_insert(why);
        }
        outcome.counters.merge(&self.counters.snapshot());
        for (code, n) in std::mem::take(&mut *self.errors.lock().unwrap_or_else(|e| e.into_inner()))
        {
            *outcome.errors.entry(code).or_default() += n;
        }
        outcome.peak_connections = outcome
            .peak_connections
            .max(self.peak_connected.load(Relaxed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_land_in_totals_and_intervals() {
        let r = Recorder::new(Clock::new(), Duration::from_millis(100));
        r.record(Metric::ACK, 1_000);
        r.record(Metric::ACK, 2_000_000);
        r.error("connect");
        r.error("connect");
        let mut o = Outcome::new("t", 50.0);
        r.drain_into(&mut o);
        assert_eq!(o.histograms["ack_latency"].len(), 2);
        // Interval histograms grow to fit: a 2 s sample is not clamped.
        assert!(o.histograms["ack_latency"].max() >= 1_999_000);
        assert_eq!(
            o.intervals["ack_latency"]
                .iter()
                .map(|i| i.histogram.len())
                .sum::<u64>(),
            2
        );
        assert_eq!(o.errors["connect"], 2);
    }

    /// A receipt stamped before its scheduled time is counted, not clamped
    /// into the histogram as a 1 us latency.
    #[test]
    fn negative_deltas_are_counted_not_recorded() {
        let r = Recorder::new(Clock::new(), Duration::from_millis(100));
        r.latency(Metric::DELIVERY, 1_000, 1_500);
        r.latency(Metric::DELIVERY, 2_000, 1_500);
        let mut o = Outcome::new("t", 50.0);
        r.drain_into(&mut o);
        assert_eq!(o.histograms["delivery_latency"].len(), 1);
        assert_eq!(o.counters.negative_latency, 1);
    }
}
