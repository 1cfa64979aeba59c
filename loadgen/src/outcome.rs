//! What a run measured: the engine's output and the reports' input.
//!
//! An [`Outcome`] is what one worker recorded. Everything in it merges exactly
//! ([`Outcome::merge`]): HdrHistograms add, counters add, audit findings add,
//! memory samples concatenate. That is what lets several worker processes, and
//! shards on several machines, be combined into one report after the fact; the
//! reports (`report/`) and the threshold gate only ever read a merged outcome.
//!
//! All latencies are in microseconds, 3 significant digits.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

pub use crate::catalog::{AuditCounts, Counters, LATENCY_METRICS};

/// A new latency histogram: 1 µs to 1 hour, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static bounds are valid")
}

/// One histogram interval: what was recorded between `start_ms` and
/// `start_ms + duration_ms` (milliseconds since the run started). Written to the
/// `.hlog` interval logs and used for the charts.
#[derive(Clone, Debug)]
pub struct Interval {
    pub start_ms: u64,
    pub duration_ms: u64,
    pub histogram: Histogram<u64>,
}

/// One audit finding, as an example in the report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditExample {
    /// `lost`, `duplicated` or `reordered`.
    pub kind: String,
    pub channel: String,
    pub id: u64,
    pub user: u64,
    pub device: u64,
}

/// The end-of-run audit: every acked message against every device of every member.
/// Its counts ([`AuditCounts`]) read as its own fields (`audit.lost`) and sit
/// beside the examples in report.json.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Audit {
    #[serde(flatten)]
    pub counts: AuditCounts,
    /// A few findings of each kind (at most [`Audit::MAX_EXAMPLES`] in all).
    pub examples: Vec<AuditExample>,
    /// The audit could not check everything (an inbox it could not read, a
    /// ledger it could not write): the run is then never a pass (exit 3).
    #[serde(default)]
    pub incomplete: bool,
    /// Why it is incomplete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incomplete_reason: Option<String>,
    /// One part of a split run (a shard): the pairs of messages between its
    /// users and other parts' users are counted by `loadgen merge`, not here.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cross_part_pending: bool,
}

impl std::ops::Deref for Audit {
    type Target = AuditCounts;
    fn deref(&self) -> &AuditCounts {
        &self.counts
    }
}

impl std::ops::DerefMut for Audit {
    fn deref_mut(&mut self) -> &mut AuditCounts {
        &mut self.counts
    }
}

impl Audit {
    pub const MAX_EXAMPLES: usize = 20;

    /// Marks the audit incomplete, keeping the first reason.
    pub fn incomplete(&mut self, reason: impl Into<String>) {
        self.incomplete = true;
        self.incomplete_reason.get_or_insert_with(|| reason.into());
    }

    pub fn merge(&mut self, o: &Audit) {
        self.counts.merge(&o.counts);
        self.cross_part_pending |= o.cross_part_pending;
        if o.incomplete {
            self.incomplete(o.incomplete_reason.clone().unwrap_or_default());
        }
        for e in &o.examples {
            if self.examples.len() < Self::MAX_EXAMPLES {
                self.examples.push(e.clone());
            }
        }
    }
}

/// Resident memory of the server and the generator, sampled during the run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemorySample {
    /// Milliseconds since the run started.
    pub t_ms: u64,
    /// Connected simulated devices at that moment (this worker's).
    pub connections: u64,
    /// Server resident memory in bytes (embedded server only; `None` for a
    /// remote target).
    pub server_rss_bytes: Option<u64>,
    /// This generator process's resident memory in bytes.
    pub loadgen_rss_bytes: u64,
}

/// One node's connections over the run, from its `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeSeries {
    /// The node's name (the `node` label of its metrics), or its address.
    pub node: String,
    /// `http://HOST:PORT`.
    pub url: String,
    /// Most connections seen at one sample.
    pub peak_connections: u64,
    /// (ms since the phases started, connections; `null` when it did not answer).
    pub connections: Vec<(u64, Option<u64>)>,
    /// Its `chatscale_connection_memory_bytes` observations made during the run
    /// (absent when the node does not expose the histogram).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_memory: Option<BucketCounts>,
}

/// A Prometheus histogram's buckets as counted over a span: `cumulative[i]`
/// observations were at most `bounds[i]` bytes, `count` in all (the `+Inf`
/// bucket), and `max_bytes` the largest single value seen (0: unknown).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BucketCounts {
    pub bounds: Vec<f64>,
    pub cumulative: Vec<u64>,
    pub count: u64,
    pub max_bytes: u64,
}

impl BucketCounts {
    /// Adds another span's counts, bucket by bucket (same bounds; a bucket the
    /// other lacks adds its nearest lower one's count, which keeps the sums
    /// cumulative when two servers' versions bucket differently).
    pub fn add(&mut self, o: &BucketCounts) {
        if self.bounds == o.bounds {
            for (a, b) in self.cumulative.iter_mut().zip(&o.cumulative) {
                *a += b;
            }
        } else {
            for (bound, a) in self.bounds.iter().zip(self.cumulative.iter_mut()) {
                let below = o
                    .bounds
                    .iter()
                    .zip(&o.cumulative)
                    .take_while(|(b, _)| *b <= bound)
                    .last()
                    .map_or(0, |(_, c)| *c);
                *a += below;
            }
        }
        self.count += o.count;
        self.max_bytes = self.max_bytes.max(o.max_bytes);
    }

    /// What was counted after `earlier` (the same histogram read before):
    /// bucket by bucket, never below zero.
    pub fn since(&self, earlier: &BucketCounts) -> BucketCounts {
        let at = |i: usize| earlier.cumulative.get(i).copied().unwrap_or(0);
        BucketCounts {
            bounds: self.bounds.clone(),
            cumulative: self
                .cumulative
                .iter()
                .enumerate()
                .map(|(i, c)| c.saturating_sub(at(i)))
                .collect(),
            count: self.count.saturating_sub(earlier.count),
            max_bytes: self.max_bytes,
        }
    }
}

/// Creating the population, before the measured phases.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Provisioning {
    pub users: u64,
    pub devices: u64,
    pub friendships: u64,
    pub groups: u64,
    pub seconds: f64,
    /// `bulk` (the server's `/v1/provision/...` endpoints, many objects per
    /// request) or `per_object` (signup, login, friends, groups: one request
    /// each); empty in reports written before it was recorded.
    #[serde(default)]
    pub method: String,
    /// HTTP requests provisioning made (the health check included).
    #[serde(default)]
    pub requests: u64,
    /// Objects created: accounts, device logins, friendships and groups.
    #[serde(default)]
    pub objects: u64,
    /// `requests`, `objects` and `users` over `seconds`.
    #[serde(default)]
    pub requests_per_second: f64,
    #[serde(default)]
    pub objects_per_second: f64,
    #[serde(default)]
    pub accounts_per_second: f64,
    /// Server nodes the requests were spread over.
    #[serde(default)]
    pub nodes: u64,
    /// Seconds of each stage: accounts (with their device logins),
    /// friendships, groups.
    #[serde(default)]
    pub accounts_seconds: f64,
    #[serde(default)]
    pub friendships_seconds: f64,
    #[serde(default)]
    pub groups_seconds: f64,
}

impl Provisioning {
    /// Fills in the totals and rates from the counts and `seconds`.
    pub fn with_rates(mut self) -> Self {
        self.objects = self.users + self.devices + self.friendships + self.groups;
        let per_s = |n: u64| {
            if self.seconds > 0.0 {
                n as f64 / self.seconds
            } else {
                0.0
            }
        };
        self.requests_per_second = per_s(self.requests);
        self.objects_per_second = per_s(self.objects);
        self.accounts_per_second = per_s(self.users);
        self
    }
}

/// How well the generator kept its own schedule.
#[derive(Clone, Debug)]
pub struct GeneratorHealth {
    /// How late timers ran (the scheduler's wake-ups, every device's
    /// heartbeat timer), in microseconds.
    pub lag: Histogram<u64>,
    /// Every send's lateness: the frame written minus its scheduled time, µs.
    pub send_delay: Histogram<u64>,
    /// Bytes each simulated device's own state accounts for (sampled at the
    /// end of the phases: task, slot, records, queues).
    pub device_memory: Histogram<u64>,
    /// The send delay (p99, in ms) past which the run counts as
    /// generator-limited (timer lag when the run sent nothing).
    pub bound_ms: f64,
    /// The generator ran out of descriptors or ports: which, and what to change.
    pub exhausted: Option<String>,
    /// How the clock thread was scheduled (`realtime (SCHED_FIFO)`, or why not).
    pub clock: Option<String>,
    /// CPU time the generator used during the measured phases, in seconds.
    pub cpu_seconds: f64,
    pub peak_rss_bytes: u64,
}

impl GeneratorHealth {
    pub fn new(bound_ms: f64) -> Self {
        GeneratorHealth {
            lag: new_histogram(),
            send_delay: new_histogram(),
            device_memory: new_histogram(),
            bound_ms,
            exhausted: None,
            clock: None,
            cpu_seconds: 0.0,
            peak_rss_bytes: 0,
        }
    }

    /// The p99 (ms) the verdict compares with the bound: send delay, or timer
    /// lag for a run that sent nothing.
    pub fn judged_p99_ms(&self) -> Option<f64> {
        let h = if self.send_delay.is_empty() {
            &self.lag
        } else {
            &self.send_delay
        };
        (!h.is_empty()).then(|| h.value_at_quantile(0.99) as f64 / 1000.0)
    }

    /// True when the generator could not keep its schedule (its sends went out
    /// late) or ran out of descriptors or ports: its results say more about
    /// the generator than about the server.
    pub fn limited(&self) -> bool {
        self.exhausted.is_some() || self.judged_p99_ms().is_some_and(|p| p > self.bound_ms)
    }

    /// Why the generator is limited, in a sentence with what to change.
    pub fn limited_reason(&self) -> Option<String> {
        if let Some(why) = &self.exhausted {
            return Some(why.clone());
        }
        let p99 = self.judged_p99_ms().filter(|&p| p > self.bound_ms)?;
        let what = if self.send_delay.is_empty() {
            "timer lag"
        } else {
            "send delay"
        };
        Some(format!(
            "the generator could not keep its schedule ({what} p99 {p99:.3}ms > {:.3}ms): these results measure the generator, not the server; give it fewer devices or a lower rate, or more --workers",
            self.bound_ms
        ))
    }

    pub fn merge(&mut self, o: &GeneratorHealth) {
        let _ = self.lag.add(&o.lag);
        let _ = self.send_delay.add(&o.send_delay);
        let _ = self.device_memory.add(&o.device_memory);
        self.cpu_seconds += o.cpu_seconds;
        self.peak_rss_bytes += o.peak_rss_bytes;
        self.bound_ms = self.bound_ms.max(o.bound_ms);
        if self.exhausted.is_none() {
            self.exhausted.clone_from(&o.exhausted);
        }
        if self.clock.is_none() {
            self.clock.clone_from(&o.clock);
        }
    }
}

/// One phase as run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PhaseOutcome {
    pub name: String,
    pub duration_s: f64,
    /// Online users the phase ramps to.
    pub online: u64,
    /// Scheduled sends per second (0 when the phase sends nothing).
    pub message_rate: f64,
    pub messages_sent: u64,
    /// Scheduled history page reads per second (0 when the phase reads none).
    #[serde(default)]
    pub history_rate: f64,
    /// When the phase started, ms since the measured phases started.
    #[serde(default)]
    pub start_ms: u64,
    /// Acks received during the phase, and their p99 (ms), from the
    /// per-interval histograms the phase's time covers; filled by the report.
    #[serde(default)]
    pub acked: u64,
    #[serde(default)]
    pub ack_p99_ms: f64,
    /// History pages received during the phase, and their p99 (ms).
    #[serde(default)]
    pub history_reads: u64,
    #[serde(default)]
    pub history_p99_ms: f64,
    /// Deliveries during the phase, and their p99 (ms; `null` with none):
    /// what the projection's latency objective is judged on.
    #[serde(default)]
    pub deliveries: u64,
    #[serde(default)]
    pub delivery_p99_ms: Option<f64>,
}

/// The server a run drove.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TargetInfo {
    pub url: String,
    /// True when loadgen started the server itself.
    pub embedded: bool,
    pub storage: String,
    /// The backend's durability mode, when known (embedded server).
    pub durability: Option<String>,
}

/// Everything one worker measured.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub scenario: String,
    /// Unix time in ms when the measured phases started.
    pub started_at_ms: u64,
    /// Length of the measured phases, in seconds.
    pub duration_s: f64,
    /// Keyed by the names in [`LATENCY_METRICS`]; microseconds.
    pub histograms: BTreeMap<String, Histogram<u64>>,
    /// Per-interval histograms of the same metrics, in time order.
    pub intervals: BTreeMap<String, Vec<Interval>>,
    pub counters: Counters,
    /// Error answers and failures by code (`rate_limited`, `connect`, ...).
    pub errors: BTreeMap<String, u64>,
    pub audit: Audit,
    /// The most devices connected at once: the server side's count (summed
    /// over its nodes) when `nodes` were sampled, else the generator's.
    pub peak_connections: u64,
    /// Each server node's connections over the run (sampled from `/metrics`).
    pub nodes: Vec<NodeSeries>,
    pub memory: Vec<MemorySample>,
    pub provisioning: Provisioning,
    pub generator: GeneratorHealth,
    pub phases: Vec<PhaseOutcome>,
    pub target: TargetInfo,
    /// Ctrl-C ended the phases early: the run is `incomplete`.
    pub interrupted: bool,
    /// What the server reported about itself at `/metrics`.
    pub server: ServerStats,
}

/// What the server says about itself at `/metrics`, read when the measured
/// phases start and end: the projection's CPU and connection terms. Every
/// field is `None` when the server does not expose it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerStats {
    /// CPU seconds the server process used over the measured phases
    /// (`process_cpu_seconds_total`, end minus start).
    pub cpu_seconds: Option<f64>,
    /// The server's own connection limit (`chatscale_max_connections`).
    pub max_connections: Option<u64>,
    /// CPUs the server may run on (`chatscale_machine_cpus`).
    pub cpus: Option<u64>,
    /// Physical memory of the server's machine (`chatscale_machine_memory_bytes`).
    pub machine_memory_bytes: Option<u64>,
}

impl ServerStats {
    /// Several workers (or shards) read the same server over the same phases:
    /// the widest reading stands for all.
    pub fn merge(&mut self, o: &ServerStats) {
        fn max<T: PartialOrd + Copy>(a: Option<T>, b: Option<T>) -> Option<T> {
            match (a, b) {
                (Some(x), Some(y)) => Some(if y > x { y } else { x }),
                (x, None) => x,
                (None, y) => y,
            }
        }
        self.cpu_seconds = max(self.cpu_seconds, o.cpu_seconds);
        self.max_connections = max(self.max_connections, o.max_connections);
        self.cpus = max(self.cpus, o.cpus);
        self.machine_memory_bytes = max(self.machine_memory_bytes, o.machine_memory_bytes);
    }
}

impl Outcome {
    pub fn new(scenario: impl Into<String>, lag_bound_ms: f64) -> Self {
        Outcome {
            scenario: scenario.into(),
            started_at_ms: 0,
            duration_s: 0.0,
            histograms: LATENCY_METRICS
                .iter()
                .map(|(n, _)| (n.to_string(), new_histogram()))
                .collect(),
            intervals: BTreeMap::new(),
            counters: Counters::default(),
            errors: BTreeMap::new(),
            audit: Audit::default(),
            peak_connections: 0,
            nodes: Vec::new(),
            memory: Vec::new(),
            provisioning: Provisioning::default(),
            generator: GeneratorHealth::new(lag_bound_ms),
            phases: Vec::new(),
            target: TargetInfo::default(),
            interrupted: false,
            server: ServerStats::default(),
        }
    }

    /// Adds another worker's outcome into this one. Exact: histograms add.
    pub fn merge(&mut self, o: &Outcome) {
        for (name, h) in &o.histograms {
            let mine = self
                .histograms
                .entry(name.clone())
                .or_insert_with(new_histogram);
            let _ = mine.add(h);
        }
        for (name, list) in &o.intervals {
            let mine = self.intervals.entry(name.clone()).or_default();
            for iv in list {
                match mine.iter_mut().find(|m| m.start_ms == iv.start_ms) {
                    Some(m) => {
                        let _ = m.histogram.add(&iv.histogram);
                    }
                    None => mine.push(iv.clone()),
                }
            }
            mine.sort_by_key(|iv| iv.start_ms);
        }
        self.counters.merge(&o.counters);
        for (code, n) in &o.errors {
            *self.errors.entry(code.clone()).or_default() += n;
        }
        self.audit.merge(&o.audit);
        // Server-side peaks (every part saw the whole server) do not add;
        // generators' own peaks do.
        match (self.nodes.is_empty(), o.nodes.is_empty()) {
            (false, false) => self.peak_connections = self.peak_connections.max(o.peak_connections),
            (true, false) => {
                self.peak_connections = o.peak_connections;
                self.nodes.clone_from(&o.nodes);
            }
            (false, true) => {}
            (true, true) => self.peak_connections += o.peak_connections,
        }
        self.memory.extend(o.memory.iter().cloned());
        self.generator.merge(&o.generator);
        self.interrupted |= o.interrupted;
        self.server.merge(&o.server);
        self.duration_s = self.duration_s.max(o.duration_s);
        self.started_at_ms = match (self.started_at_ms, o.started_at_ms) {
            (0, b) => b,
            (a, 0) => a,
            (a, b) => a.min(b),
        };
    }
}
