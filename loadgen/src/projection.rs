//! The projection: how many servers like the one measured would carry the
//! target (by default 50M daily active users, 2% of them online at peak, 40
//! messages per user per day).
//!
//! A run measures one server (or one cluster entry point) at a small scale. The
//! projection scales each capacity the run could observe to the target and takes
//! the tightest: sockets per process (the descriptor limit), memory per
//! connection (the fitted slope against the machine's memory) and message
//! throughput (the rate the server carried). Every candidate shows its
//! arithmetic in the report, and a candidate the run could not measure says so
//! and needs no servers rather than a made-up number: a projection that hides
//! its assumptions is worse than none. The model is documented in
//! docs/reports.md.

use serde::{Deserialize, Serialize};

use crate::error::LoadgenError;

/// Sockets one process can hold here: the per-process descriptor hard limit
/// (20,000 on this machine) less about 100 for files, logs and listeners.
pub const DEFAULT_SOCKETS_PER_PROCESS: u64 = 19_900;
/// Descriptors kept back from the hard limit for non-socket files.
const RESERVED_DESCRIPTORS: u64 = 100;
/// Share of the machine's memory a server may fill with connections; the rest
/// is headroom for the OS, page cache and bursts.
pub const USABLE_MEMORY_SHARE: f64 = 0.8;
/// Below this r² the memory fit is called weak in the report.
pub const WEAK_FIT_R2: f64 = 0.5;
/// Peak-hour message rate over the daily average. Chat traffic follows the
/// waking day; twice the average is the usual planning figure.
pub const PEAK_TO_AVERAGE: f64 = 2.0;

/// The `[projection]` table of a scenario file.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProjectionConfig {
    /// Daily active users.
    pub dau: u64,
    /// Share of daily users online at the peak (0.02: 1M of 50M).
    pub peak_online_share: f64,
    pub messages_per_user_per_day: f64,
}

impl Default for ProjectionConfig {
    fn default() -> Self {
        ProjectionConfig {
            dau: 50_000_000,
            peak_online_share: 0.02,
            messages_per_user_per_day: 40.0,
        }
    }
}

impl ProjectionConfig {
    pub fn validate(&self) -> Result<(), LoadgenError> {
        if self.dau == 0 {
            return Err(LoadgenError::invalid(
                "projection.dau",
                "must be at least 1",
            ));
        }
        if !(self.peak_online_share > 0.0 && self.peak_online_share <= 1.0) {
            return Err(LoadgenError::invalid(
                "projection.peak_online_share",
                format!("{} is not a share in (0, 1]", self.peak_online_share),
            ));
        }
        if !(self.messages_per_user_per_day.is_finite() && self.messages_per_user_per_day >= 0.0) {
            return Err(LoadgenError::invalid(
                "projection.messages_per_user_per_day",
                format!(
                    "{} is not a non-negative number",
                    self.messages_per_user_per_day
                ),
            ));
        }
        Ok(())
    }
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
    /// Acknowledged messages per second the run carried.
    pub throughput: f64,
    /// Delivery p99 at that throughput, ms (`None`: no deliveries).
    pub delivery_p99_ms: Option<f64>,
    /// Physical memory of the machine, bytes (`None`: unknown).
    pub machine_memory_bytes: Option<u64>,
    pub sockets_per_process: u64,
    pub generator_limited: bool,
}

/// The target the projection scales to.
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
}

/// One candidate limit and the servers it needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Limit {
    /// `connections`, `memory` or `messages`.
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
    /// below (the message rate it carried, not the most it could carry):
    /// `servers_needed` is then an upper bound, safe but possibly generous.
    pub upper_bound: bool,
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
        config.dau as f64 * config.messages_per_user_per_day / 86_400.0 * PEAK_TO_AVERAGE;
    let target = ProjectionTarget {
        dau: config.dau,
        peak_online_share: config.peak_online_share,
        messages_per_user_per_day: config.messages_per_user_per_day,
        concurrent_users,
        devices_per_user: round2(devices_per_user),
        concurrent_connections,
        peak_to_average: PEAK_TO_AVERAGE,
        peak_messages_per_s: round2(peak_messages_per_s),
    };
    let mut notes = Vec::new();

    let sockets = m.sockets_per_process.max(1);
    let connections = Limit {
        name: "connections".into(),
        per_server: Some(sockets as f64),
        unit: "connections".into(),
        servers: Some(div_ceil(concurrent_connections as f64, sockets as f64)),
        basis: "per-process descriptor limit (one server process per machine)".into(),
        lower_bound: false,
        arithmetic: format!(
            "{} users x {} devices/user = {} connections; / {} sockets per process = {} server(s)",
            thousands(concurrent_users as f64),
            round2(devices_per_user),
            thousands(concurrent_connections as f64),
            thousands(sockets as f64),
            div_ceil(concurrent_connections as f64, sockets as f64)
        ),
    };
    if m.peak_connections < sockets {
        notes.push(format!(
            "the run held {} connections at its peak; {} sockets per process is the descriptor limit, \
             not a measured capacity: run a scenario with about {} online devices to confirm one process holds them",
            thousands(m.peak_connections as f64),
            thousands(sockets as f64),
            thousands(sockets as f64)
        ));
    }

    let memory = memory_limit(m, concurrent_connections);
    let messages = message_limit(config, m, peak_messages_per_s, &mut notes);
    if m.generator_limited {
        notes.push(
            "the generator could not keep its schedule (generator-limited): measured throughput and latency \
             describe the generator as much as the server; rerun with more workers"
                .into(),
        );
    }
    notes.push(
        "per-server figures assume the measured target is one server; for a cluster target they are per cluster".into(),
    );

    let limits = vec![connections, memory, messages];
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
    let upper_bound = limits.iter().any(|l| l.name == limited_by && l.lower_bound);
    Projection {
        servers_needed,
        limited_by,
        upper_bound,
        target,
        limits,
        notes,
    }
}

fn memory_limit(m: &Measured, connections: u64) -> Limit {
    let not_measured = |why: String| Limit {
        name: "memory".into(),
        per_server: None,
        unit: "connections".into(),
        servers: None,
        basis: "not measured".into(),
        lower_bound: false,
        arithmetic: why,
    };
    let Some(slope) = m.server_memory_per_connection else {
        return not_measured(
            "server memory per connection was not measured (remote target, or connections did not vary enough)".into(),
        );
    };
    if slope <= 0.0 {
        return not_measured(format!(
            "the fitted slope ({slope:.0} bytes/connection) is not positive: memory noise exceeded the connections' \
             cost; run more connections"
        ));
    }
    let Some(total) = m.machine_memory_bytes else {
        return not_measured("the machine's memory is unknown".into());
    };
    let base = m.server_base_memory.unwrap_or(0.0).max(0.0);
    let usable = total as f64 * USABLE_MEMORY_SHARE - base;
    if usable <= 0.0 {
        return not_measured(
            "the server's base memory exceeds the usable share of the machine's memory".into(),
        );
    }
    let per_server = (usable / slope).floor().max(1.0);
    let servers = div_ceil(connections as f64, per_server);
    Limit {
        name: "memory".into(),
        per_server: Some(per_server),
        unit: "connections".into(),
        servers: Some(servers),
        lower_bound: false,
        basis: match m.server_memory_r2 {
            Some(r2) if r2 < WEAK_FIT_R2 => format!(
                "fitted slope of server RSS against connections, a weak fit (r2 {r2:.2}): \
                 memory grew with something else too (stored messages, caches); a ramp \
                 phase with no messages measures connections alone"
            ),
            Some(r2) => format!("fitted slope of server RSS against connections (r2 {r2:.2})"),
            None => "fitted slope of server RSS against connections".into(),
        },
        arithmetic: format!(
            "({} bytes x {USABLE_MEMORY_SHARE} usable - {} bytes base) / {} bytes per connection = {} connections \
             per server; {} connections / {} = {servers} server(s)",
            thousands(total as f64),
            thousands(base),
            thousands(slope.round()),
            thousands(per_server),
            thousands(connections as f64),
            thousands(per_server),
        ),
    }
}

fn message_limit(
    config: &ProjectionConfig,
    m: &Measured,
    peak_rate: f64,
    notes: &mut Vec<String>,
) -> Limit {
    if m.throughput <= 0.0 {
        return Limit {
            name: "messages".into(),
            per_server: None,
            unit: "messages_per_s".into(),
            servers: None,
            basis: "not measured".into(),
            lower_bound: false,
            arithmetic: "the run acknowledged no messages: add a phase with a message_rate".into(),
        };
    }
    let servers = div_ceil(peak_rate, m.throughput);
    let latency = m
        .delivery_p99_ms
        .map(|p| format!(" at delivery p99 {p} ms"))
        .unwrap_or_default();
    notes.push(format!(
        "{} messages/s is the rate the run offered and the server carried{latency}, a lower bound on one server's \
         capacity (the open model sends no faster than scheduled): the messages limit is an upper bound on servers; \
         raise message_rate until latency degrades to find the ceiling",
        round2(m.throughput)
    ));
    Limit {
        name: "messages".into(),
        per_server: Some(round2(m.throughput)),
        unit: "messages_per_s".into(),
        servers: Some(servers),
        basis: "achieved throughput (a lower bound on capacity)".into(),
        lower_bound: true,
        arithmetic: format!(
            "{} DAU x {} messages/day / 86,400 s x {PEAK_TO_AVERAGE} peak/average = {} messages/s; / {} per server \
             = {servers} server(s)",
            thousands(config.dau as f64),
            config.messages_per_user_per_day,
            thousands(peak_rate),
            thousands(round2(m.throughput)),
        ),
    }
}

/// Physical memory of this machine from /proc/meminfo (`None` elsewhere).
pub fn machine_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Sockets one process may open: the descriptor hard limit of this process
/// (from /proc/self/limits) less [`RESERVED_DESCRIPTORS`], or
/// [`DEFAULT_SOCKETS_PER_PROCESS`] when it cannot be read or is unlimited.
pub fn sockets_per_process() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("Max open files"))?;
            let hard: u64 = line.split_whitespace().nth(4)?.parse().ok()?;
            Some(hard.saturating_sub(RESERVED_DESCRIPTORS).max(1))
        })
        .unwrap_or(DEFAULT_SOCKETS_PER_PROCESS)
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
