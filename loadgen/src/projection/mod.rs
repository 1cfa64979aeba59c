//! The projection: how many servers like the one measured would carry the
//! target (by default 50M daily active users, 2% of them online at peak, 40
//! messages per user per day).
//!
//! A run measures one server (or a cluster's nodes) at a small scale. The
//! projection scales each capacity the run could observe to the target and takes
//! the tightest: the connections one node was measured to hold within the
//! objective, against the server's own limit (from its `/metrics`),
//! memory per connection (the fitted slope against the machine's memory),
//! message capacity (the highest phase that met the latency objective) and CPU
//! (server CPU seconds per message against the cores of a server). Every
//! candidate shows its arithmetic in the report, and a candidate the run could
//! not measure says so and needs no servers rather than a made-up number.
//!
//! A run that did not find a ceiling (every phase met the objective, as in a
//! smoke run) only bounds capacity from below: the headline then says plainly
//! that this was not a capacity run, rather than printing a server count in
//! bold with the caveat in small print. The model is documented in
//! docs/reports.md.

mod limits;

use serde::{Deserialize, Serialize};

use crate::error::LoadgenError;
use crate::outcome::ServerStats;
use crate::thresholds::{Metric, Op, Stat, Thresholds};
use crate::units::parse_duration;

/// Default share of the machine's memory a server may fill with connections;
/// the rest is headroom for the OS, page cache and bursts.
pub const USABLE_MEMORY_SHARE: f64 = 0.8;
/// Below this r² the memory fit is called weak in the report.
pub const WEAK_FIT_R2: f64 = 0.5;
/// Default peak-hour message rate over the daily average. Chat traffic follows
/// the waking day; twice the average is the usual planning figure.
pub const PEAK_TO_AVERAGE: f64 = 2.0;
/// The latency objective when neither `[projection] slo` nor a
/// `delivery_latency.p99` threshold names one, in ms.
pub const DEFAULT_SLO_MS: f64 = 50.0;

/// The `[projection]` table of a scenario file.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProjectionConfig {
    /// Daily active users.
    pub dau: u64,
    /// Share of daily users online at the peak (0.02: 1M of 50M).
    pub peak_online_share: f64,
    pub messages_per_user_per_day: f64,
    /// The latency objective a phase must meet for its rate to count as
    /// capacity (delivery p99), as a duration: `"50ms"`. Default: the
    /// scenario's `delivery_latency.p99` threshold, else 50 ms.
    pub slo: Option<String>,
    /// Cores of one server for the CPU term. Default: the measured server's
    /// (`chatscale_machine_cpus`), else this machine's.
    pub cores_per_server: Option<f64>,
    /// Peak-hour message rate over the daily average.
    pub peak_to_average: f64,
    /// Share of a server's memory its connections may fill.
    pub usable_memory_share: f64,
}

impl Default for ProjectionConfig {
    fn default() -> Self {
        ProjectionConfig {
            dau: 50_000_000,
            peak_online_share: 0.02,
            messages_per_user_per_day: 40.0,
            slo: None,
            cores_per_server: None,
            peak_to_average: PEAK_TO_AVERAGE,
            usable_memory_share: USABLE_MEMORY_SHARE,
        }
    }
}

impl ProjectionConfig {
    pub fn validate(&self) -> Result<(), LoadgenError> {
        let bad = |field: &str, reason: String| {
            Err(LoadgenError::invalid(format!("projection.{field}"), reason))
        };
        if self.dau == 0 {
            return bad("dau", "must be at least 1".into());
        }
        if !(self.peak_online_share > 0.0 && self.peak_online_share <= 1.0) {
            return bad(
                "peak_online_share",
                format!("{} is not a share in (0, 1]", self.peak_online_share),
            );
        }
        if !(self.messages_per_user_per_day.is_finite() && self.messages_per_user_per_day >= 0.0) {
            return bad(
                "messages_per_user_per_day",
                format!(
                    "{} is not a non-negative number",
                    self.messages_per_user_per_day
                ),
            );
        }
        if let Some(slo) = &self.slo {
            let d = parse_duration(slo).map_err(|r| LoadgenError::invalid("projection.slo", r))?;
            if d.is_zero() {
                return bad("slo", format!("{slo:?}: must be above 0"));
            }
        }
        if let Some(c) = self.cores_per_server {
            if !(c > 0.0 && c <= 4096.0) {
                return bad(
                    "cores_per_server",
                    format!("{c}: must be above 0 and at most 4096"),
                );
            }
        }
        if !(self.peak_to_average >= 1.0 && self.peak_to_average <= 100.0) {
            return bad(
                "peak_to_average",
                format!(
                    "{}: must be 1 to 100 (the peak is at least the average)",
                    self.peak_to_average
                ),
            );
        }
        if !(self.usable_memory_share > 0.0 && self.usable_memory_share <= 1.0) {
            return bad(
                "usable_memory_share",
                format!("{} is not a share in (0, 1]", self.usable_memory_share),
            );
        }
        Ok(())
    }

    /// The latency objective in ms and where it comes from: `[projection]
    /// slo`, else the scenario's `delivery_latency.p99` threshold (`<` or
    /// `<=`), else [`DEFAULT_SLO_MS`].
    pub fn slo_ms(&self, thresholds: &Thresholds) -> (f64, String) {
        if let Some(d) = self.slo.as_deref().and_then(|s| parse_duration(s).ok()) {
            return (d.as_secs_f64() * 1000.0, "[projection] slo".into());
        }
        let from_threshold = thresholds.rules.iter().find_map(|t| match &t.metric {
            Metric::Latency {
                name,
                stat: Stat::Percentile(p),
            } if name == "delivery_latency" && *p == 99.0 && matches!(t.op, Op::Lt | Op::Le) => {
                Some(t.limit)
            }
            _ => None,
        });
        match from_threshold {
            Some(ms) => (ms, "the delivery_latency.p99 threshold".into()),
            None => (DEFAULT_SLO_MS, "the default".into()),
        }
    }
}

/// One phase as the message term sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct PhaseCapacity {
    pub name: String,
    /// Scheduled sends per second.
    pub offered: f64,
    /// Acks per second received during the phase.
    pub acked_per_s: f64,
    /// Delivery p99 during the phase, ms (`None`: no deliveries).
    pub delivery_p99_ms: Option<f64>,
}

/// What the run measured, as the projection needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct Measured {
    pub peak_connections: u64,
    /// Devices per user in the simulated population (1 when unknown).
    pub devices_per_user: f64,
    /// Fitted server memory per connection, bytes (`None`: not measured).
    pub server_memory_per_connection: Option<f64>,
    /// Server memory with no connections (the fit's intercept), bytes.
    pub server_base_memory: Option<f64>,
    /// Goodness of that fit (r², 0..=1).
    pub server_memory_r2: Option<f64>,
    /// The phases, in order, with their rates and delivery p99.
    pub phases: Vec<PhaseCapacity>,
    /// The latency objective (delivery p99), ms, and where it comes from.
    pub slo_ms: f64,
    pub slo_source: String,
    /// Messages acked over the measured phases (the CPU term divides by it).
    pub messages_acked: u64,
    /// What the server said about itself at `/metrics`.
    pub server: ServerStats,
    /// Physical memory of the loadgen machine, bytes: the server's when it
    /// does not say (an embedded server runs here).
    pub local_memory_bytes: Option<u64>,
    /// CPUs of the loadgen machine: the fallback for the server's.
    pub local_cpus: u64,
    pub generator_limited: bool,
    /// Server nodes that held connections during the run (1 for one server,
    /// and when the nodes were not sampled): the message and memory terms are
    /// per node, the CPU term sums every node's CPU.
    pub server_nodes: u64,
    /// The most connections one node was measured to hold inside a phase that
    /// met the latency objective (`None`: no node sampled, or no phase met it).
    pub node_held: Option<NodeHeld>,
}

/// Connections one node held within the objective: a measured lower bound on
/// a node's connection capacity.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeHeld {
    pub node: String,
    pub connections: u64,
    pub phase: String,
    pub delivery_p99_ms: f64,
}

/// The target the projection scales to, with every assumption it used.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProjectionTarget {
    pub dau: u64,
    pub peak_online_share: f64,
    pub messages_per_user_per_day: f64,
    pub concurrent_users: u64,
    pub devices_per_user: f64,
    pub concurrent_connections: u64,
    pub peak_to_average: f64,
    pub peak_messages_per_s: f64,
    /// The latency objective a phase had to meet (delivery p99), ms.
    #[serde(default)]
    pub slo_ms: f64,
    /// Where the objective comes from.
    #[serde(default)]
    pub slo_source: String,
    /// Cores of one server in the CPU term (`null`: unknown).
    #[serde(default)]
    pub cores_per_server: Option<f64>,
    /// Share of a server's memory its connections may fill.
    #[serde(default = "usable_memory_share")]
    pub usable_memory_share: f64,
}

fn usable_memory_share() -> f64 {
    USABLE_MEMORY_SHARE
}

/// One candidate limit and the servers it needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Limit {
    /// `connections`, `memory`, `messages` or `cpu`.
    pub name: String,
    /// What one server holds by this limit (`None`: not measured).
    pub per_server: Option<f64>,
    /// Unit of `per_server`: `connections` or `messages_per_s`.
    pub unit: String,
    /// Servers needed by this limit alone (`None`: not measured).
    pub servers: Option<u64>,
    /// Where `per_server` comes from, and how far to trust it.
    pub basis: String,
    /// `per_server` is only a lower bound on one server's capacity (the run
    /// did not push it to its ceiling), so `servers` is an upper bound.
    pub lower_bound: bool,
    /// The arithmetic, in words and numbers.
    pub arithmetic: String,
}

/// The projection in report.json.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Projection {
    /// The most servers any measured limit needs.
    pub servers_needed: u64,
    /// The limit that sets `servers_needed`.
    pub limited_by: String,
    /// True when `limited_by` rests on a capacity the run only bounded from
    /// below (no phase missed the objective): `servers_needed` is then an
    /// upper bound, safe but possibly generous.
    pub upper_bound: bool,
    /// True when the run measured the capacity that decides: the deciding
    /// limit is not a lower bound and the generator kept its schedule.
    #[serde(default)]
    pub capacity_run: bool,
    /// The one sentence to read first; says plainly when this was not a
    /// capacity run.
    #[serde(default)]
    pub headline: String,
    pub target: ProjectionTarget,
    pub limits: Vec<Limit>,
    /// Caveats: what the run was too small or too constrained to show.
    pub notes: Vec<String>,
}

/// Scales the measured capacities to the configured target.
pub fn project(config: &ProjectionConfig, m: &Measured) -> Projection {
    let devices_per_user = if m.devices_per_user.is_finite() && m.devices_per_user >= 1.0 {
        m.devices_per_user
    } else {
        1.0
    };
    let concurrent_users = (config.dau as f64 * config.peak_online_share).round() as u64;
    let concurrent_connections = (concurrent_users as f64 * devices_per_user).ceil() as u64;
    let peak_messages_per_s =
        config.dau as f64 * config.messages_per_user_per_day / 86_400.0 * config.peak_to_average;
    let cores = config
        .cores_per_server
        .or(m.server.cpus.map(|c| c as f64))
        .or((m.local_cpus > 0).then_some(m.local_cpus as f64));
    let target = ProjectionTarget {
        dau: config.dau,
        peak_online_share: config.peak_online_share,
        messages_per_user_per_day: config.messages_per_user_per_day,
        concurrent_users,
        devices_per_user: round2(devices_per_user),
        concurrent_connections,
        peak_to_average: config.peak_to_average,
        peak_messages_per_s: round2(peak_messages_per_s),
        slo_ms: m.slo_ms,
        slo_source: m.slo_source.clone(),
        cores_per_server: cores,
        usable_memory_share: config.usable_memory_share,
    };
    let mut notes = Vec::new();
    let limits = vec![
        limits::connections(m, &target, &mut notes),
        limits::memory(m, &target),
        limits::messages(m, &target, &mut notes),
        limits::cpu(m, &target, &mut notes),
    ];
    if m.generator_limited {
        notes.push(
            "the generator could not keep its schedule (generator-limited): measured throughput and latency \
             describe the generator as much as the server; rerun with more workers"
                .into(),
        );
    }
    notes.push(if m.server_nodes > 1 {
        format!(
            "the target was a cluster of {} nodes: connections and memory are per node, the messages limit is the \
             cluster's rate divided by its nodes (they shared the load), and the CPU term sums every node's CPU",
            m.server_nodes
        )
    } else {
        "per-server figures assume the measured target is one server (its /metrics); a cluster reached through \
         one address counts as one"
            .into()
    });

    let (servers_needed, limited_by) = limits
        .iter()
        .filter_map(|l| l.servers.map(|s| (s, l.name.clone())))
        .fold((0, String::from("connections")), |best, cur| {
            if cur.0 > best.0 {
                cur
            } else {
                best
            }
        });
    let deciding = limits
        .iter()
        .find(|l| l.name == limited_by && l.servers.is_some());
    let upper_bound = deciding.is_some_and(|l| l.lower_bound);
    let capacity_run = deciding.is_some() && !upper_bound && !m.generator_limited;
    let headline = headline(
        &target,
        &limits,
        (servers_needed, &limited_by),
        upper_bound,
        capacity_run,
        m,
    );
    Projection {
        servers_needed,
        limited_by,
        upper_bound,
        capacity_run,
        headline,
        target,
        limits,
        notes,
    }
}

/// The sentence a planner reads first.
fn headline(
    t: &ProjectionTarget,
    limits: &[Limit],
    (servers, limited_by): (u64, &str),
    upper_bound: bool,
    capacity_run: bool,
    m: &Measured,
) -> String {
    let goal = format!(
        "{} DAU ({} connections, {} messages/s at peak)",
        thousands(t.dau as f64),
        thousands(t.concurrent_connections as f64),
        thousands(t.peak_messages_per_s)
    );
    if servers == 0 {
        return format!("Not a capacity run: nothing this run measured scales to {goal}.");
    }
    if capacity_run {
        return format!("{servers} servers needed for {goal}, limited by {limited_by}.");
    }
    let why = if m.generator_limited {
        "the generator could not keep its schedule, so the figures describe the generator"
            .to_string()
    } else {
        let top = m
            .phases
            .iter()
            .filter(|p| p.offered > 0.0)
            .map(|p| p.offered)
            .fold(0.0, f64::max);
        let messages = limits.iter().find(|l| l.name == "messages");
        if messages.is_some_and(|l| l.lower_bound) {
            format!(
                "every phase met the {} ms objective, up to {} messages/s offered, so no ceiling was found",
                m.slo_ms,
                thousands(top)
            )
        } else {
            format!("the {limited_by} limit is only a lower bound on one server's capacity")
        }
    };
    let at_most = if upper_bound { "at most " } else { "" };
    format!(
        "Not a capacity run: {why}. By what it measured, {goal} would need {at_most}{servers} servers \
         (limited by {limited_by}); to measure capacity, step message_rate up until a phase misses the objective."
    )
}

/// Physical memory of this machine from /proc/meminfo (`None` elsewhere).
pub fn machine_memory_bytes() -> Option<u64> {
    reference_server::metrics::machine_memory_bytes()
}

/// CPUs this process may run on (1 when unknown).
pub fn machine_cpus() -> u64 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u64)
}

fn div_ceil(a: f64, b: f64) -> u64 {
    if b <= 0.0 {
        return 0;
    }
    (a / b).ceil().max(0.0) as u64
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// `1234567.8` -> `"1,234,568"`; fractional values under 100 keep two decimals.
pub fn thousands(x: f64) -> String {
    if x.abs() < 100.0 && x.fract() != 0.0 {
        return format!("{:.2}", x);
    }
    let n = x.round() as i128;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}
