//! Counters, gauges and histograms, exposed at `GET /metrics` in the Prometheus
//! text format by the `prometheus-client` crate (the Prometheus project's Rust
//! client).
//!
//! The hot paths (accept, fan-out, heartbeat) bump plain atomics with a relaxed
//! add; nothing is aggregated until a scrape asks, when [`Metrics::render`]
//! hands a snapshot of them to the crate's encoder, every series labelled with
//! this node's id (`node`). The per-connection memory histogram is the crate's
//! own `Histogram`, fed every few seconds by a sampler over all connections
//! (`--connection-sample-ms`, 5 s by default), never from a hot path. The names and
//! meanings are documented in `docs/operations.md`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use std::fmt::Write as _;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::protocol::ErrorCode;

pub struct Metrics {
    pub connections: AtomicU64,
    pub connections_total: AtomicU64,
    pub messages_accepted: AtomicU64,
    pub messages_deduplicated: AtomicU64,
    pub deliveries: AtomicU64,
    pub push_notifications: AtomicU64,
    pub push_delivered: AtomicU64,
    pub push_failed: AtomicU64,
    pub push_dropped: AtomicU64,
    pub slow_consumer_disconnects: AtomicU64,
    pub presence_changes: AtomicU64,
    pub storage_accept_micros_sum: AtomicU64,
    pub storage_accept_count: AtomicU64,
    /// Where a send's time goes, summed over sends (microseconds): reading the
    /// channel's members, waiting for the channel's stripe and submitting the
    /// accept, waiting for the commit, waiting for the earlier sends of the stripe.
    pub send_members_micros: AtomicU64,
    pub send_submit_micros: AtomicU64,
    pub send_commit_micros: AtomicU64,
    pub send_turn_micros: AtomicU64,
    /// Ordered delivery (cluster mode, see `hub`): frames that waited for an
    /// earlier seq, frames dropped as older than what was released, gaps skipped.
    pub seq_held: AtomicU64,
    pub seq_dropped: AtomicU64,
    pub seq_skipped: AtomicU64,
    pub storage_overloaded: AtomicU64,
    pub expired_tokens: AtomicU64,
    pub expired_dedupe: AtomicU64,
    pub password_hashes_in_flight: AtomicU64,
    pub password_hashes_peak: AtomicU64,
    errors: [AtomicU64; ErrorCode::ALL.len()],
    /// Bytes the server accounts to one connection (session task, WebSocket
    /// buffers, queued outbound frames), one observation per connection per sample.
    pub connection_memory: Histogram,
    /// The largest connection's bytes at the last sample (a histogram's buckets
    /// bound the maximum only to within a bucket).
    pub connection_memory_max: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            connections: AtomicU64::default(),
            connections_total: AtomicU64::default(),
            messages_accepted: AtomicU64::default(),
            messages_deduplicated: AtomicU64::default(),
            deliveries: AtomicU64::default(),
            push_notifications: AtomicU64::default(),
            push_delivered: AtomicU64::default(),
            push_failed: AtomicU64::default(),
            push_dropped: AtomicU64::default(),
            slow_consumer_disconnects: AtomicU64::default(),
            presence_changes: AtomicU64::default(),
            storage_accept_micros_sum: AtomicU64::default(),
            storage_accept_count: AtomicU64::default(),
            send_members_micros: AtomicU64::default(),
            send_submit_micros: AtomicU64::default(),
            send_commit_micros: AtomicU64::default(),
            send_turn_micros: AtomicU64::default(),
            seq_held: AtomicU64::default(),
            seq_dropped: AtomicU64::default(),
            seq_skipped: AtomicU64::default(),
            storage_overloaded: AtomicU64::default(),
            expired_tokens: AtomicU64::default(),
            expired_dedupe: AtomicU64::default(),
            password_hashes_in_flight: AtomicU64::default(),
            password_hashes_peak: AtomicU64::default(),
            errors: Default::default(),
            connection_memory: Histogram::new(connection_memory_buckets()),
            connection_memory_max: AtomicU64::default(),
        }
    }
}

/// Upper bounds of `chatscale_connection_memory_bytes`' buckets: 512 B to
/// 16 MiB (an idle connection near the bottom, a slow consumer's full outbound
/// queue near the top), four buckets per doubling, so a quantile read from them
/// is within 19% of the true value (less with interpolation) where a doubling per
/// bucket would leave a factor of two.
pub fn connection_memory_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(512.0, 2f64.powf(0.25), 61)
}

/// Values that scrapes read from the parts that own them (hub, presence, store).
pub struct Scrape<'a> {
    pub node: &'a str,
    pub devices_online: usize,
    pub users_online: usize,
    /// The node's connection limit (`--max-connections`).
    pub max_connections: usize,
    pub storage: &'a str,
    pub durability: &'a str,
    /// The backend's own counters ([`crate::store::Store::counters`]).
    pub storage_counters: Vec<crate::store::StoreCounter>,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    pub fn inc_by(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub fn error(&self, code: ErrorCode) {
        let i = ErrorCode::ALL.iter().position(|c| *c == code).unwrap_or(0);
        self.errors[i].fetch_add(1, Relaxed);
    }

    /// Renders every metric in the Prometheus text format (0.0.4), each series
    /// labelled `node`.
    pub fn render(&self, scrape: &Scrape<'_>) -> String {
        let mut registry =
            Registry::with_labels([("node".into(), scrape.node.to_string().into())].into_iter());
        registry.register_collector(Box::new(self.snapshot(scrape)));
        registry.register(
            "chatscale_connection_memory_bytes",
            "Bytes the server accounts to one connection (session task, WebSocket buffers, \
             queued outbound frames): every connection observed every few seconds",
            self.connection_memory.clone(),
        );
        let mut out = String::with_capacity(8192);
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        // The Prometheus client libraries' standard name, so dashboards and
        // loadgen's projection (CPU per message) read it without a mapping.
        let _ = writeln!(
            out,
            "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total{{node=\"{}\"}} {:.2}",
            label(scrape.node),
            cpu_seconds().unwrap_or(0.0)
        );
        out
    }

    fn snapshot(&self, scrape: &Scrape<'_>) -> Snapshot {
        let get = |c: &AtomicU64| c.load(Relaxed);
        let gauge = |name, help, value: u64| (name, help, MetricType::Gauge, value);
        let counter = |name, help, value: u64| (name, help, MetricType::Counter, value);
        let mut plain = vec![
                gauge(
                    "chatscale_connections",
                    "Open WebSocket connections",
                    get(&self.connections),
                ),
                counter(
                    "chatscale_connections",
                    "WebSocket connections accepted since start",
                    get(&self.connections_total),
                ),
                gauge(
                    "chatscale_devices_online",
                    "Distinct devices with at least one open connection",
                    scrape.devices_online as u64,
                ),
                gauge(
                    "chatscale_users_online",
                    "Users whose presence status is online",
                    scrape.users_online as u64,
                ),
                counter(
                    "chatscale_messages_accepted",
                    "Messages stored and acked (duplicates not counted)",
                    get(&self.messages_accepted),
                ),
                counter(
                    "chatscale_messages_deduplicated",
                    "Sends answered with the ack of an earlier send (same client_msg_id)",
                    get(&self.messages_deduplicated),
                ),
                counter(
                    "chatscale_deliveries",
                    "Message frames queued to connected devices",
                    get(&self.deliveries),
                ),
                counter(
                    "chatscale_push_notifications",
                    "Push notifications for members with no connected device",
                    get(&self.push_notifications),
                ),
                counter(
                    "chatscale_push_delivered",
                    "Push notifications the webhook accepted (2xx)",
                    get(&self.push_delivered),
                ),
                counter(
                    "chatscale_push_failed",
                    "Push notifications given up after retries",
                    get(&self.push_failed),
                ),
                counter(
                    "chatscale_push_dropped",
                    "Push notifications dropped because the push queue was full",
                    get(&self.push_dropped),
                ),
                counter(
                    "chatscale_slow_consumer_disconnects",
                    "Connections closed with 1008 because their outbound queue was full",
                    get(&self.slow_consumer_disconnects),
                ),
                counter(
                    "chatscale_presence_changes",
                    "User status changes (online or offline)",
                    get(&self.presence_changes),
                ),
                counter(
                    "chatscale_seq_held",
                    "Message frames that waited for an earlier seq of their user (cluster mode)",
                    get(&self.seq_held),
                ),
                counter(
                    "chatscale_seq_dropped",
                    "Message frames dropped as older than one already delivered (the device syncs)",
                    get(&self.seq_dropped),
                ),
                counter(
                    "chatscale_seq_skipped",
                    "Seq gaps given up on after the grace (the device sees the gap and syncs)",
                    get(&self.seq_skipped),
                ),
                counter(
                    "chatscale_storage_overloaded",
                    "Sends answered `overloaded` at once because the accept queue was full",
                    get(&self.storage_overloaded),
                ),
                counter(
                    "chatscale_expired_tokens",
                    "Expired tokens removed from storage",
                    get(&self.expired_tokens),
                ),
                counter(
                    "chatscale_expired_dedupe",
                    "Dedupe records removed from storage after the dedupe window",
                    get(&self.expired_dedupe),
                ),
                gauge(
                    "chatscale_password_hashes_in_flight",
                    "Password hashes (signup, login) computing now",
                    get(&self.password_hashes_in_flight),
                ),
                gauge(
                    "chatscale_password_hashes_peak",
                    "Most password hashes that ever computed at once (bounded by --password-hash-concurrency)",
                    get(&self.password_hashes_peak),
                ),
                gauge(
                    "chatscale_connection_memory_max_bytes",
                    "The largest bytes one connection accounted for at the last sample of chatscale_connection_memory_bytes",
                    get(&self.connection_memory_max),
                ),
                gauge(
                    "chatscale_max_connections",
                    "Connections this node accepts before answering upgrades 503 overloaded",
                    scrape.max_connections as u64,
                ),
                gauge(
                    "chatscale_machine_cpus",
                    "CPUs this process may run on",
                    std::thread::available_parallelism().map_or(0, |n| n.get() as u64),
                ),
                gauge(
                    "chatscale_machine_memory_bytes",
                    "Physical memory of the machine (MemTotal)",
                    machine_memory_bytes().unwrap_or(0),
                ),
                gauge(
                    "chatscale_process_resident_memory_bytes",
                    "Resident memory of the server process",
                    resident_memory_bytes().unwrap_or(0),
                ),
                counter(
                    "chatscale_send_members_microseconds",
                    "Time sends spent reading their channel's members, in microseconds",
                    get(&self.send_members_micros),
                ),
                counter(
                    "chatscale_send_submit_microseconds",
                    "Time sends spent waiting for their channel's stripe and submitting the accept, in microseconds",
                    get(&self.send_submit_micros),
                ),
                counter(
                    "chatscale_send_commit_microseconds",
                    "Time sends spent waiting for their accept to commit, in microseconds",
                    get(&self.send_commit_micros),
                ),
                counter(
                    "chatscale_send_turn_microseconds",
                    "Time committed sends spent waiting for the earlier sends of their stripe, in microseconds",
                    get(&self.send_turn_micros),
                ),
            ];
        plain.extend(
            scrape
                .storage_counters
                .iter()
                .map(|c| counter(c.name, c.help, c.value)),
        );
        Snapshot {
            plain,
            storage: scrape.storage.to_string(),
            durability: scrape.durability.to_string(),
            accept_seconds_sum: get(&self.storage_accept_micros_sum) as f64 / 1e6,
            accept_count: get(&self.storage_accept_count),
            errors: ErrorCode::ALL
                .iter()
                .zip(&self.errors)
                .map(|(code, n)| (code.as_str(), get(n)))
                .collect(),
        }
    }
}

/// The values of one scrape, encoded by `prometheus-client`.
#[derive(Debug)]
struct Snapshot {
    /// (name, help, counter or gauge, value); counters get `_total` from the encoder.
    plain: Vec<(&'static str, &'static str, MetricType, u64)>,
    storage: String,
    durability: String,
    accept_seconds_sum: f64,
    accept_count: u64,
    errors: Vec<(&'static str, u64)>,
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        for &(name, help, kind, value) in &self.plain {
            let metric = encoder.encode_descriptor(name, help, None, kind)?;
            match kind {
                MetricType::Counter => ConstCounter::new(value).encode(metric)?,
                _ => ConstGauge::new(value as i64).encode(metric)?,
            }
        }
        // Sum and count of the accept time, labelled with the backend (a
        // histogram with its one `+Inf` bucket: the hot path keeps two atomics).
        let mut accept = encoder.encode_descriptor(
            "chatscale_storage_accept_seconds",
            "Time spent in the storage accept operation",
            None,
            MetricType::Histogram,
        )?;
        let storage = [("storage", self.storage.as_str())];
        accept
            .encode_family(&storage)?
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                self.accept_seconds_sum,
                self.accept_count,
                &[(f64::INFINITY, self.accept_count)],
                None,
            )?;
        let mut info = encoder.encode_descriptor(
            "chatscale_storage_info",
            "The storage backend and what an acked message survives",
            None,
            MetricType::Gauge,
        )?;
        let labels = [
            ("storage", self.storage.as_str()),
            ("durability", self.durability.as_str()),
        ];
        ConstGauge::new(1i64).encode(info.encode_family(&labels)?)?;
        let mut errors = encoder.encode_descriptor(
            "chatscale_errors",
            "Error answers by protocol code",
            None,
            MetricType::Counter,
        )?;
        for &(code, n) in &self.errors {
            ConstCounter::new(n).encode(errors.encode_family(&[("code", code)])?)?;
        }
        Ok(())
    }
}

/// A Prometheus label value, escaped (for series written outside this module's
/// registry, such as the cluster's).
pub fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', " ")
}

/// Resident set size of this process, from `/proc/self/status` (Linux).
pub fn resident_memory_bytes() -> Option<u64> {
    resident_memory_of("self")
}

/// Resident set size of a process by pid (or "self"), in bytes.
pub fn resident_memory_of(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// User plus system CPU time of this process, in seconds, from `/proc/self/stat`
/// (Linux). Its fields 14 and 15 count clock ticks of `USER_HZ`, which Linux
/// fixes at 100 for every architecture it exposes to user space.
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; the fields after ')' do not.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

/// Physical memory of this machine, from `/proc/meminfo` (Linux).
pub fn machine_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
