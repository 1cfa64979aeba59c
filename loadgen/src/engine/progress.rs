//! Live progress on stderr, and the periodic samples taken with it (server and
//! generator memory against connected devices).
//!
//! On a terminal the display is one line rewritten in place every second:
//! phase, connected devices, messages/s, delivery p99 so far, errors. When
//! stderr is not a terminal (CI logs) it prints one plain line every 5 s
//! instead. Sampling runs on the same tick so the two cost one wake-up.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::engine::recorder::{Metric, Recorder};
use crate::engine::sim::{lock, Sim};
use crate::outcome::{MemorySample, ServerStats};

/// Where the server's memory is read from.
#[derive(Debug, Clone)]
pub enum ServerMemory {
    /// The embedded child: `/proc/PID/status`.
    Pid(u32),
    /// The embedded cluster's nodes running now: the sum of theirs.
    Nodes(Arc<Mutex<crate::cluster::sampler::Live>>),
    /// A running target: scrape `chatscale_process_resident_memory_bytes`.
    Metrics(reqwest::Client, String),
}

impl ServerMemory {
    pub async fn read(&self) -> Option<u64> {
        match self {
            ServerMemory::Pid(pid) => {
                reference_server::metrics::resident_memory_of(&pid.to_string())
            }
            ServerMemory::Nodes(live) => {
                let pids: Vec<u32> = lock(live).pids.iter().flatten().copied().collect();
                let rss: Vec<u64> = pids
                    .iter()
                    .filter_map(|p| reference_server::metrics::resident_memory_of(&p.to_string()))
                    .collect();
                (!rss.is_empty()).then(|| rss.iter().sum())
            }
            ServerMemory::Metrics(client, base) => {
                scrape(client, base, "chatscale_process_resident_memory_bytes")
                    .await
                    .map(|v| v as u64)
            }
        }
    }
}

/// The first series of a metric in a server's `/metrics` (Prometheus text
/// format), labelled (`name{node="n1"} 5`, as servers label every series) or not.
pub async fn scrape(client: &reqwest::Client, base: &str, name: &str) -> Option<f64> {
    metric_value(
        &metrics_text(client, base, Duration::from_secs(2)).await?,
        name,
    )
}

/// The first series of a metric in a `/metrics` page, labelled or not.
fn metric_value(text: &str, name: &str) -> Option<f64> {
    let (bare, labelled) = (format!("{name} "), format!("{name}{{"));
    text.lines()
        .find(|l| l.starts_with(&bare) || l.starts_with(&labelled))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.trim().parse().ok())
}

/// A server's `/metrics` page, or None when it does not answer within `timeout`.
pub async fn metrics_text(
    client: &reqwest::Client,
    base: &str,
    timeout: Duration,
) -> Option<String> {
    client
        .get(format!("{base}/metrics"))
        .timeout(timeout)
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()
}

/// What the server says about itself, at one moment; `cpu_seconds` is the
/// process's total so far (the caller subtracts two readings).
pub async fn read_server(client: &reqwest::Client, base: &str) -> ServerStats {
    let Some(text) = metrics_text(client, base, Duration::from_secs(2)).await else {
        return ServerStats::default();
    };
    let count = |name: &str| {
        metric_value(&text, name)
            .filter(|v| *v > 0.0)
            .map(|v| v as u64)
    };
    ServerStats {
        cpu_seconds: metric_value(&text, "process_cpu_seconds_total"),
        max_connections: count("chatscale_max_connections"),
        cpus: count("chatscale_machine_cpus"),
        machine_memory_bytes: count("chatscale_machine_memory_bytes"),
    }
}

/// [`read_server`] on every node of the run: `bases` lists them (one for a
/// single server). The limits and the machine come from the first node that
/// answers; CPU seconds are kept per node, so a cluster's CPU over the phases is
/// the sum of each node's own difference ([`cpu_between`]).
pub async fn read_servers(client: &reqwest::Client, bases: &[String]) -> Vec<ServerStats> {
    futures_util::future::join_all(bases.iter().map(|b| read_server(client, b))).await
}

/// The server side's CPU seconds between two [`read_servers`] of the same nodes
/// (summed over the nodes that answered both times), with the first answering
/// node's limits and machine.
pub fn cpu_between(before: &[ServerStats], after: &[ServerStats]) -> ServerStats {
    let cpu: Vec<f64> = before
        .iter()
        .zip(after)
        .filter_map(|(b, a)| Some((a.cpu_seconds? - b.cpu_seconds?).max(0.0)))
        .collect();
    let first = after
        .iter()
        .find(|s| s.max_connections.is_some() || s.cpus.is_some())
        .cloned()
        .unwrap_or_default();
    ServerStats {
        cpu_seconds: (!cpu.is_empty()).then(|| cpu.iter().sum()),
        ..first
    }
}

/// Shared with the run: which phase is running (index into `names`).
pub struct Progress {
    pub phase: AtomicUsize,
    pub names: Vec<String>,
    pub samples: Mutex<Vec<MemorySample>>,
}

/// This process's resident memory in bytes.
pub fn self_rss() -> u64 {
    reference_server::metrics::resident_memory_bytes().unwrap_or(0)
}

/// Peak resident memory of this process (VmHWM), in bytes.
pub fn self_peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// CPU time (user + system) this process has used, in seconds.
pub fn self_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 (1-based), 11 and 12 after ')'.
    // /proc reports them in USER_HZ, which Linux fixes at 100.
    (ticks(11) + ticks(12)) / 100.0
}

/// Runs until `done`: samples memory every second, prints progress (when
/// `show`; a worker process only samples).
pub async fn run(
    progress: Arc<Progress>,
    sim: Arc<Sim>,
    server: ServerMemory,
    show: bool,
    done: CancellationToken,
) {
    let rec: &Recorder = &sim.rec;
    let tty = show && std::io::stderr().is_terminal();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_acked = 0;
    let mut last_t = Instant::now();
    let mut last_print = Instant::now();
    loop {
        tokio::select! {
            _ = done.cancelled() => break,
            _ = tick.tick() => {}
        }
        let connections = rec.connected.load(Relaxed);
        let server_rss = server.read().await;
        lock(&progress.samples).push(MemorySample {
            t_ms: rec.elapsed_ms(),
            connections,
            server_rss_bytes: server_rss,
            loadgen_rss_bytes: self_rss(),
        });
        let c = rec.counters.snapshot();
        let dt = last_t.elapsed().as_secs_f64().max(0.001);
        let rate = (c.messages_acked - last_acked) as f64 / dt;
        last_acked = c.messages_acked;
        last_t = Instant::now();
        let p99 = rec
            .quantile_so_far(Metric::DELIVERY, 0.99)
            .map_or("-".to_string(), |us| format!("{:.1}ms", us as f64 / 1000.0));
        let phase = progress
            .names
            .get(progress.phase.load(Relaxed))
            .map_or("-", |s| s.as_str());
        let line = format!(
            "[{:>5.0}s] phase {phase}: {connections} devices connected, {rate:.0} msg/s acked, delivery p99 {p99}, {} sent, {} errors",
            rec.elapsed_ms() as f64 / 1000.0,
            c.messages_sent,
            rec.errors_total()
        );
        let mut err = std::io::stderr().lock();
        if tty {
            let _ = write!(err, "\r\x1b[2K{line}");
            let _ = err.flush();
        } else if show && last_print.elapsed() >= Duration::from_secs(5) {
            let _ = writeln!(err, "{line}");
            last_print = Instant::now();
        }
    }
    if tty {
        let _ = writeln!(std::io::stderr());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(cpu: Option<f64>, max: Option<u64>) -> ServerStats {
        ServerStats {
            cpu_seconds: cpu,
            max_connections: max,
            ..ServerStats::default()
        }
    }

    #[test]
    fn a_clusters_cpu_is_the_sum_of_each_nodes_own_difference() {
        let before = [
            stats(Some(1.0), Some(100)),
            stats(Some(5.0), Some(100)),
            stats(None, None),
        ];
        let after = [
            stats(Some(3.5), Some(100)),
            stats(Some(6.0), Some(100)),
            stats(Some(9.0), None),
        ];
        let s = cpu_between(&before, &after);
        // The third node did not answer before: its 9 s are not all this run's.
        assert_eq!(s.cpu_seconds, Some(3.5));
        assert_eq!(s.max_connections, Some(100));
    }

    #[test]
    fn no_node_answering_gives_no_cpu_figure() {
        let s = cpu_between(&[stats(None, None)], &[stats(None, None)]);
        assert_eq!(s, ServerStats::default());
    }
}
