//! Counters and gauges, exposed at `GET /metrics` in the Prometheus text format.
//!
//! Plain atomics: every hot path (accept, fan-out, heartbeat) bumps one with a
//! relaxed add, and nothing is aggregated until a scrape asks. The names and
//! meanings are documented in `docs/operations.md`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::protocol::ErrorCode;

#[derive(Default)]
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

    /// Renders every metric, each series labelled with this node's id (`node`).
    /// `devices_online` and `users_online` come from the hub and presence, which
    /// own those numbers; `max_connections` is the node's connection limit.
    pub fn render(
        &self,
        node: &str,
        devices_online: usize,
        users_online: usize,
        max_connections: usize,
        storage: &str,
        durability: &str,
    ) -> String {
        let mut out = String::with_capacity(4096);
        let node = label(node);
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{node=\"{node}\"}} {value}"
            );
        };
        let get = |c: &AtomicU64| c.load(Relaxed);
        metric(
            "chatscale_connections",
            "gauge",
            "Open WebSocket connections.",
            get(&self.connections),
        );
        metric(
            "chatscale_connections_total",
            "counter",
            "WebSocket connections accepted since start.",
            get(&self.connections_total),
        );
        metric(
            "chatscale_devices_online",
            "gauge",
            "Distinct devices with at least one open connection.",
            devices_online as u64,
        );
        metric(
            "chatscale_users_online",
            "gauge",
            "Users whose presence status is online.",
            users_online as u64,
        );
        metric(
            "chatscale_messages_accepted_total",
            "counter",
            "Messages stored and acked (duplicates not counted).",
            get(&self.messages_accepted),
        );
        metric(
            "chatscale_messages_deduplicated_total",
            "counter",
            "Sends answered with the ack of an earlier send (same client_msg_id).",
            get(&self.messages_deduplicated),
        );
        metric(
            "chatscale_deliveries_total",
            "counter",
            "Message frames queued to connected devices.",
            get(&self.deliveries),
        );
        metric(
            "chatscale_push_notifications_total",
            "counter",
            "Push notifications for members with no connected device.",
            get(&self.push_notifications),
        );
        metric(
            "chatscale_push_delivered_total",
            "counter",
            "Push notifications the webhook accepted (2xx).",
            get(&self.push_delivered),
        );
        metric(
            "chatscale_push_failed_total",
            "counter",
            "Push notifications given up after retries.",
            get(&self.push_failed),
        );
        metric(
            "chatscale_push_dropped_total",
            "counter",
            "Push notifications dropped because the push queue was full.",
            get(&self.push_dropped),
        );
        metric(
            "chatscale_slow_consumer_disconnects_total",
            "counter",
            "Connections closed with 1008 because their outbound queue was full.",
            get(&self.slow_consumer_disconnects),
        );
        metric(
            "chatscale_presence_changes_total",
            "counter",
            "User status changes (online or offline).",
            get(&self.presence_changes),
        );
        metric(
            "chatscale_seq_held_total",
            "counter",
            "Message frames that waited for an earlier seq of their user (cluster mode).",
            get(&self.seq_held),
        );
        metric(
            "chatscale_seq_dropped_total",
            "counter",
            "Message frames dropped as older than one already delivered (the device syncs).",
            get(&self.seq_dropped),
        );
        metric(
            "chatscale_seq_skipped_total",
            "counter",
            "Seq gaps given up on after the grace (the device sees the gap and syncs).",
            get(&self.seq_skipped),
        );
        metric(
            "chatscale_storage_overloaded_total",
            "counter",
            "Sends answered `overloaded` at once because the accept queue was full.",
            get(&self.storage_overloaded),
        );
        metric(
            "chatscale_expired_tokens_total",
            "counter",
            "Expired tokens removed from storage.",
            get(&self.expired_tokens),
        );
        metric(
            "chatscale_expired_dedupe_total",
            "counter",
            "Dedupe records removed from storage after the dedupe window.",
            get(&self.expired_dedupe),
        );
        metric(
            "chatscale_password_hashes_in_flight",
            "gauge",
            "Password hashes (signup, login) computing now.",
            get(&self.password_hashes_in_flight),
        );
        metric(
            "chatscale_password_hashes_peak",
            "gauge",
            "Most password hashes that ever computed at once (bounded by --password-hash-concurrency).",
            get(&self.password_hashes_peak),
        );
        metric(
            "chatscale_process_resident_memory_bytes",
            "gauge",
            "Resident memory of the server process.",
            resident_memory_bytes().unwrap_or(0),
        );
        metric(
            "chatscale_max_connections",
            "gauge",
            "Connections this node accepts before answering upgrades 503 overloaded.",
            max_connections as u64,
        );
        metric(
            "chatscale_machine_cpus",
            "gauge",
            "CPUs this process may run on.",
            std::thread::available_parallelism().map_or(0, |n| n.get() as u64),
        );
        metric(
            "chatscale_machine_memory_bytes",
            "gauge",
            "Physical memory of the machine (MemTotal).",
            machine_memory_bytes().unwrap_or(0),
        );
        // The Prometheus client libraries' standard name, so dashboards and
        // loadgen's projection (CPU per message) read it without a mapping.
        let _ = writeln!(
            out,
            "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total{{node=\"{node}\"}} {:.2}",
            cpu_seconds().unwrap_or(0.0)
        );
        let _ = writeln!(out, "# HELP chatscale_storage_accept_seconds Time spent in the storage accept operation.\n# TYPE chatscale_storage_accept_seconds summary");
        let _ = writeln!(
            out,
            "chatscale_storage_accept_seconds_sum{{node=\"{node}\",storage=\"{storage}\"}} {:.6}",
            get(&self.storage_accept_micros_sum) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "chatscale_storage_accept_seconds_count{{node=\"{node}\",storage=\"{storage}\"}} {}",
            get(&self.storage_accept_count)
        );
        let _ = writeln!(
            out,
            "# HELP chatscale_storage_info The storage backend and what an acked message survives.\n# TYPE chatscale_storage_info gauge\nchatscale_storage_info{{node=\"{node}\",storage=\"{}\",durability=\"{}\"}} 1",
            label(storage),
            label(durability)
        );
        let _ = writeln!(out, "# HELP chatscale_errors_total Error answers by protocol code.\n# TYPE chatscale_errors_total counter");
        for (code, n) in ErrorCode::ALL.iter().zip(&self.errors) {
            let _ = writeln!(
                out,
                "chatscale_errors_total{{node=\"{node}\",code=\"{code}\"}} {}",
                get(n)
            );
        }
        out
    }
}

/// A Prometheus label value, escaped.
pub fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', " ")
}

/// Resident set size of this process, from `/proc/self/status` (Linux).
pub fn resident_memory_bytes() -> Option<u64> {
    resident_memory_of("self")
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

/// Resident set size of a process by pid (or "self"), in bytes.
pub fn resident_memory_of(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
