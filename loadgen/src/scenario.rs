//! Scenario files: TOML, parsed and validated into a [`Scenario`] before
//! anything starts.
//!
//! Parsing is two passes. serde (with `deny_unknown_fields` everywhere, through
//! `serde_path_to_error` so a failure names its key path, `phase[1].duration`)
//! reads the file into raw structs whose durations and rates are still strings;
//! then [`validate`] turns them into typed values and checks every rule the run
//! relies on (shares sum to 1, `online` within `users`, text within the
//! protocol's limit, ...). Either pass fails with [`LoadgenError::Invalid`],
//! exit 2, naming the field the way the file writes it. Every field has a
//! default (docs/scenarios.md lists them), so a file names only what it changes.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

mod raw;

use raw::RawScenario;

use crate::error::LoadgenError;
use crate::projection::ProjectionConfig;
use crate::thresholds::Thresholds;
use crate::units::{parse_duration, parse_rate};
use reference_server::protocol::{MAX_GROUP_MEMBERS, MAX_TEXT_CHARS};

/// A validated scenario: what a run needs, typed.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub seed: u64,
    pub target: Target,
    pub population: Population,
    pub behavior: Behavior,
    pub generator: Generator,
    pub phases: Vec<Phase>,
    /// The `[thresholds]` table as written (the report shows it).
    pub threshold_table: BTreeMap<String, String>,
    pub thresholds: Thresholds,
    pub projection: ProjectionConfig,
}

#[derive(Debug, Clone)]
pub struct Target {
    /// A running server; `None` starts the embedded one.
    pub url: Option<String>,
    pub storage: String,
    /// Nodes of the embedded cluster (1: one server, no cluster).
    pub servers: u32,
    /// The Redis an embedded cluster's nodes meet in (`--cluster`); `None`:
    /// the storage's Redis, or a private `redis-server` (see [`crate::cluster`]).
    pub cluster: Option<String>,
    /// The server's `--provisioning-token`: with it, the population is created
    /// through the bulk endpoints (`/v1/provision/...`); without it, one
    /// request per object. The embedded server always gets one.
    pub provisioning_token: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Population {
    pub users: u64,
    /// (devices per user, share of users), shares summing to 1.
    pub devices: Vec<(u32, f64)>,
    pub friends: f64,
    pub groups: u64,
    pub group_size: (u32, u32),
}

#[derive(Debug, Clone)]
pub struct Behavior {
    pub heartbeat_interval: Duration,
    pub offline_after: Duration,
    pub text_mean: f64,
    pub text_max: usize,
    pub group_share: f64,
    pub reconnect_delay: (Duration, Duration),
}

#[derive(Debug, Clone)]
pub struct Generator {
    pub max_lag: Duration,
    pub interval: Duration,
    pub drain: Duration,
    pub provision_concurrency: usize,
    pub connect_timeout: Duration,
    /// Local addresses the devices connect from; empty: chosen
    /// (`crate::engine::source`).
    pub source_addresses: Vec<std::net::IpAddr>,
    /// Devices per source address when they are chosen (loopback targets).
    pub connections_per_source: usize,
    /// The clock thread's wake-up grid (zero: each send on time).
    pub clock_resolution: Duration,
}

#[derive(Debug, Clone)]
pub struct Phase {
    pub name: String,
    pub duration: Duration,
    pub online: u64,
    /// Sends per second (open model).
    pub message_rate: f64,
    /// Abrupt disconnects per second.
    pub disconnect_rate: f64,
    /// History page reads per second (open model, over HTTP).
    pub history_rate: f64,
    /// Node faults at the phase's start, in order (embedded cluster only).
    pub faults: Vec<NodeFault>,
}

/// Most nodes an embedded cluster may have.
pub const MAX_SERVERS: u32 = 32;

/// What a phase does to a node of the embedded cluster at its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeFault {
    /// `kill_node = K`: SIGKILL (no goodbye: its clients see the connection drop).
    Kill(u32),
    /// `stop_node = K`: SIGTERM (it leaves discovery and closes with 1001).
    Stop(u32),
    /// `start_node = K`: started again (same node id, same port if it is free).
    Start(u32),
}

impl NodeFault {
    /// The node, 0-based.
    pub fn node(self) -> usize {
        match self {
            NodeFault::Kill(k) | NodeFault::Stop(k) | NodeFault::Start(k) => k as usize - 1,
        }
    }

    /// True for a fault that takes the node down (its devices fail over).
    pub fn takes_down(self) -> bool {
        !matches!(self, NodeFault::Start(_))
    }
}

impl Scenario {
    /// Reads and validates a scenario file. The file stem is the default name.
    /// A file that cannot be read is invalid command-line input (exit 2),
    /// named by its path.
    pub fn load(path: &Path) -> Result<Scenario, LoadgenError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            LoadgenError::invalid(
                path.display().to_string(),
                format!("cannot read the scenario file: {}", io_reason(&e)),
            )
        })?;
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("scenario");
        Scenario::parse_file(&text, stem, &path.display().to_string())
    }

    /// Parses and validates scenario text; `default_name` is used when the file
    /// has no `name`.
    pub fn parse(text: &str, default_name: &str) -> Result<Scenario, LoadgenError> {
        Scenario::parse_file(text, default_name, "scenario file")
    }

    /// [`Scenario::parse`], with `file` naming the text in a syntax error.
    fn parse_file(text: &str, default_name: &str, file: &str) -> Result<Scenario, LoadgenError> {
        let value: toml::Value = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| line_col(text, s.start))
                .unwrap_or_default();
            LoadgenError::invalid(
                format!("{file}{at}"),
                format!(
                    "not valid TOML: {}",
                    e.message().trim_end().replace('\n', "; ")
                ),
            )
        })?;
        let raw: RawScenario = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let message = e.into_inner().message().to_string();
            let (path, message) = raw::explain(path, message);
            LoadgenError::invalid(path, message)
        })?;
        validate(raw, default_name)
    }

    /// The most devices connected at once: the `online` users with the most
    /// devices, at the phase with the most users online (an upper bound).
    pub fn peak_devices(&self) -> u64 {
        let online = self.phases.iter().map(|p| p.online).max().unwrap_or(0);
        let mut left = online;
        let mut devices = 0u64;
        let mut shares = self.population.devices.clone();
        shares.sort_by_key(|s| std::cmp::Reverse(s.0));
        for (n, share) in shares {
            let users = ((share * self.population.users as f64).ceil() as u64).min(left);
            devices += users * n as u64;
            left -= users;
        }
        devices
    }
}

/// An I/O error's reason without Rust's `(os error 2)` suffix.
pub(crate) fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

fn line_col(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!(" (line {line}, column {col})")
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

fn bad(path: impl Into<String>, reason: impl Into<String>) -> LoadgenError {
    LoadgenError::invalid(path, reason)
}

fn duration(path: &str, s: &str) -> Result<Duration, LoadgenError> {
    parse_duration(s).map_err(|r| bad(path, r))
}

fn positive_duration(path: &str, s: &str) -> Result<Duration, LoadgenError> {
    let d = duration(path, s)?;
    if d.is_zero() {
        return Err(bad(path, format!("{s:?}: must be above 0")));
    }
    Ok(d)
}

fn rate(path: &str, s: &str) -> Result<f64, LoadgenError> {
    parse_rate(s).map_err(|r| bad(path, r))
}

/// The validation pass: raw values to typed ones, every rule checked.
fn validate(raw: RawScenario, default_name: &str) -> Result<Scenario, LoadgenError> {
    let name = raw.name.unwrap_or_else(|| default_name.to_string());
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    {
        return Err(bad(
            "name",
            format!(
                "{name:?}: 1-64 characters of A-Z a-z 0-9 _ . - (it names the output directory)"
            ),
        ));
    }

    let t = raw.target;
    if let Some(url) = &t.url {
        check_target_url(url).map_err(|r| bad("target.url", r))?;
    }
    check_storage(&t.storage).map_err(|r| bad("target.storage", r))?;
    if !(1..=MAX_SERVERS as i64).contains(&t.servers) {
        return Err(bad(
            "target.servers",
            format!("{}: must be 1 to {MAX_SERVERS}", t.servers),
        ));
    }
    let servers = t.servers as u32;
    if servers > 1 && t.url.is_some() {
        return Err(bad(
            "target.servers",
            format!("{servers}: servers starts an embedded cluster, but target.url names a running one (loadgen follows its discovery): drop one of the two"),
        ));
    }
    if servers > 1 {
        crate::cluster::check_shared_storage(&t.storage)
            .map_err(|r| bad("target.servers", format!("{servers} nodes: {r}")))?;
    }
    if let Some(c) = &t.cluster {
        if servers < 2 {
            return Err(bad(
                "target.cluster",
                "only an embedded cluster (servers > 1) has a cluster Redis",
            ));
        }
        crate::cluster::check_cluster_redis(c).map_err(|r| bad("target.cluster", r))?;
    }

    let p = raw.population;
    if !(1..=10_000_000).contains(&p.users) {
        return Err(bad(
            "population.users",
            format!("{}: must be 1 to 10,000,000", p.users),
        ));
    }
    let users = p.users as u64;
    let mut devices = Vec::new();
    let mut sum = 0.0;
    for (key, share) in &p.devices {
        let path = format!("population.devices.{key}");
        let n: u32 = key
            .parse()
            .ok()
            .filter(|n| (1..=10).contains(n))
            .ok_or_else(|| {
                bad(
                    &path,
                    format!("{key:?}: the key is a number of devices, 1 to 10"),
                )
            })?;
        if !(0.0..=1.0).contains(share) {
            return Err(bad(&path, format!("{share}: a share is between 0 and 1")));
        }
        sum += share;
        if *share > 0.0 {
            devices.push((n, *share));
        }
    }
    if (sum - 1.0).abs() > 1e-6 {
        return Err(bad(
            "population.devices",
            format!("shares sum to {sum}, not 1"),
        ));
    }
    if !(p.friends >= 0.0 && p.friends < users as f64) {
        return Err(bad(
            "population.friends",
            format!("{}: a mean between 0 and users - 1", p.friends),
        ));
    }
    if !(0..=1_000_000).contains(&p.groups) {
        return Err(bad(
            "population.groups",
            format!("{}: must be 0 to 1,000,000", p.groups),
        ));
    }
    let (gmin, gmax) = (p.group_size.min, p.group_size.max);
    if gmin < 2 {
        return Err(bad(
            "population.group_size.min",
            format!("{gmin}: a group has at least 2 members"),
        ));
    }
    if gmax > MAX_GROUP_MEMBERS as i64 {
        return Err(bad(
            "population.group_size.max",
            format!("{gmax}: a group has at most {MAX_GROUP_MEMBERS} members"),
        ));
    }
    if gmin > gmax {
        return Err(bad(
            "population.group_size",
            format!("min {gmin} is above max {gmax}"),
        ));
    }
    if p.groups > 0 && gmin as u64 > users {
        return Err(bad(
            "population.group_size.min",
            format!("{gmin}: more than the {users} users"),
        ));
    }

    let b = raw.behavior;
    let heartbeat_interval =
        positive_duration("behavior.heartbeat_interval", &b.heartbeat_interval)?;
    let offline_after = positive_duration("behavior.offline_after", &b.offline_after)?;
    if offline_after < heartbeat_interval {
        return Err(bad(
            "behavior.offline_after",
            format!(
                "{:?} is shorter than heartbeat_interval: every user would flap offline",
                b.offline_after
            ),
        ));
    }
    let tl = b.text_length;
    if !(1..=MAX_TEXT_CHARS as i64).contains(&tl.max) {
        return Err(bad(
            "behavior.text_length.max",
            format!(
                "{}: must be 1 to {MAX_TEXT_CHARS} (the protocol's limit)",
                tl.max
            ),
        ));
    }
    if !(tl.mean >= 1.0 && tl.mean <= tl.max as f64) {
        return Err(bad(
            "behavior.text_length.mean",
            format!("{}: must be 1 to max ({})", tl.mean, tl.max),
        ));
    }
    if !(0.0..=1.0).contains(&b.group_share) {
        return Err(bad(
            "behavior.group_share",
            format!("{}: a share is between 0 and 1", b.group_share),
        ));
    }
    if b.group_share > 0.0 && p.groups == 0 {
        return Err(bad(
            "behavior.group_share",
            "population.groups is 0: there is no group to send to",
        ));
    }
    let rmin = duration("behavior.reconnect_delay.min", &b.reconnect_delay.min)?;
    let rmax = duration("behavior.reconnect_delay.max", &b.reconnect_delay.max)?;
    if rmin > rmax {
        return Err(bad(
            "behavior.reconnect_delay",
            format!(
                "min {:?} is above max {:?}",
                b.reconnect_delay.min, b.reconnect_delay.max
            ),
        ));
    }

    let g = raw.generator;
    let generator = Generator {
        max_lag: positive_duration("generator.max_lag", &g.max_lag)?,
        interval: positive_duration("generator.interval", &g.interval)?,
        drain: duration("generator.drain", &g.drain)?,
        provision_concurrency: g.provision_concurrency.clamp(0, 4096) as usize,
        connect_timeout: positive_duration("generator.connect_timeout", &g.connect_timeout)?,
        source_addresses: g
            .source_addresses
            .iter()
            .enumerate()
            .map(|(i, a)| {
                a.parse().map_err(|_| {
                    bad(
                        format!("generator.source_addresses[{i}]"),
                        format!("{a:?} is not an IP address (e.g. \"127.0.0.2\")"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
        clock_resolution: duration("generator.clock_resolution", &g.clock_resolution)?,
        connections_per_source: usize::try_from(g.connections_per_source)
            .ok()
            .filter(|&n| (1..=60_000).contains(&n))
            .ok_or_else(|| {
                bad(
                    "generator.connections_per_source",
                    format!("{}: must be 1 to 60,000", g.connections_per_source),
                )
            })?,
    };
    if generator.interval < Duration::from_millis(100) {
        return Err(bad(
            "generator.interval",
            format!("{:?}: at least 100ms", g.interval),
        ));
    }
    if !(1..=1024).contains(&g.provision_concurrency) {
        return Err(bad(
            "generator.provision_concurrency",
            format!("{}: must be 1 to 1024", g.provision_concurrency),
        ));
    }

    if raw.phase.is_empty() {
        return Err(bad("phase", "a scenario needs at least one [[phase]]"));
    }
    let mut phases = Vec::new();
    let mut online = users;
    // Nodes down after each phase's faults (a node is started only when down).
    let mut down = vec![false; servers as usize];
    for (i, rp) in raw.phase.into_iter().enumerate() {
        let at = |field: &str| format!("phase[{i}].{field}");
        let duration = positive_duration(&at("duration"), &rp.duration)?;
        if let Some(o) = rp.online {
            if o < 0 || o as u64 > users {
                return Err(bad(
                    at("online"),
                    format!("{o}: must be 0 to population.users ({users})"),
                ));
            }
            online = o as u64;
        }
        let message_rate = rate(&at("message_rate"), &rp.message_rate)?;
        if message_rate > 0.0 && p.friends == 0.0 && p.groups == 0 {
            return Err(bad(
                at("message_rate"),
                "nobody to send to: population.friends and population.groups are 0",
            ));
        }
        if message_rate > 0.0 && p.friends == 0.0 && b.group_share < 1.0 {
            return Err(bad(
                "behavior.group_share",
                "population.friends is 0: one-to-one sends need friends; set group_share = 1",
            ));
        }
        let disconnect_rate = rate(&at("disconnect_rate"), &rp.disconnect_rate)?;
        let history_rate = rate(&at("history_rate"), &rp.history_rate)?;
        if history_rate > 0.0 && p.friends == 0.0 && p.groups == 0 {
            return Err(bad(
                at("history_rate"),
                "no channel to read: population.friends and population.groups are 0",
            ));
        }
        let faults = node_faults(i, &rp, servers, t.url.is_some(), &mut down)?;
        phases.push(Phase {
            faults,
            name: rp.name.unwrap_or_else(|| format!("phase{i}")),
            duration,
            online,
            message_rate,
            disconnect_rate,
            history_rate,
        });
    }

    let thresholds = Thresholds::parse(&raw.thresholds)?;
    raw.projection.validate()?;

    Ok(Scenario {
        name,
        description: raw.description,
        seed: raw.seed,
        target: Target {
            url: t.url,
            storage: t.storage,
            servers,
            cluster: t.cluster,
            provisioning_token: t.provisioning_token,
        },
        population: Population {
            users,
            devices,
            friends: p.friends,
            groups: p.groups as u64,
            group_size: (gmin as u32, gmax as u32),
        },
        behavior: Behavior {
            heartbeat_interval,
            offline_after,
            text_mean: tl.mean,
            text_max: tl.max as usize,
            group_share: b.group_share,
            reconnect_delay: (rmin, rmax),
        },
        generator,
        phases,
        threshold_table: raw.thresholds,
        thresholds,
        projection: raw.projection,
    })
}

/// A phase's `kill_node`, `stop_node`, `start_node`, checked against the
/// nodes' state after the phases before it (`down`, updated).
fn node_faults(
    i: usize,
    rp: &raw::RawPhase,
    servers: u32,
    remote: bool,
    down: &mut [bool],
) -> Result<Vec<NodeFault>, LoadgenError> {
    let keys = [
        ("kill_node", rp.kill_node),
        ("stop_node", rp.stop_node),
        ("start_node", rp.start_node),
    ];
    let mut faults = Vec::new();
    for (key, value) in keys {
        let Some(k) = value else { continue };
        let path = format!("phase[{i}].{key}");
        if remote {
            return Err(bad(
                path,
                "target.url is set: loadgen kills, stops and starts only the nodes it started (drop url and set servers)",
            ));
        }
        if !(1..=servers as i64).contains(&k) {
            return Err(bad(
                path,
                format!("{k}: a node number from 1 to target.servers ({servers})"),
            ));
        }
        let k = k as u32;
        let fault = match key {
            "kill_node" => NodeFault::Kill(k),
            "stop_node" => NodeFault::Stop(k),
            _ => NodeFault::Start(k),
        };
        let was_down = down[fault.node()];
        if fault.takes_down() && was_down {
            return Err(bad(path, format!("node {k} is already down at this phase")));
        }
        if !fault.takes_down() && !was_down {
            return Err(bad(
                path,
                format!(
                    "node {k} is running at this phase (kill or stop it in an earlier phase first)"
                ),
            ));
        }
        down[fault.node()] = fault.takes_down();
        faults.push(fault);
    }
    Ok(faults)
}

/// A target is the server's HTTP address, `http://HOST[:PORT]` or
/// `https://HOST[:PORT]` (its WebSocket URL is then `ws://` or `wss://`, as
/// discovery hands it out). Any host: capacity planners test their own
/// staging clusters.
pub fn check_target_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("{url:?}: expected http://HOST:PORT or https://HOST:PORT"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let (host, port) = match authority.strip_prefix('[') {
        // [IPv6]:PORT
        Some(v6) => match v6.split_once(']') {
            Some((h, after)) => (h, after.strip_prefix(':')),
            None => ("", None),
        },
        None => match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        },
    };
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '@') {
        return Err(format!("{url:?}: no host name (expected http://HOST:PORT)"));
    }
    if let Some(p) = port {
        if p.parse::<u16>().is_err() {
            return Err(format!("{url:?}: {p:?} is not a port number"));
        }
    }
    Ok(())
}

/// The storage backends the embedded server can open, by the form of their
/// URL (whether they are reachable is found when the server starts).
pub const STORAGE_FORMS: &str = "memory, embedded:DIR, redis (a private redis-server), \
     redis://HOST:PORT, redis-cluster://HOST:PORT or postgres://...";

/// Checks a storage URL's form before anything starts, by the server's own
/// rule ([`reference_server::store::is_known_url`]): `memory`, `embedded:DIR`,
/// `redis://`, `redis-cluster://`, `postgres://` (or `postgresql://`), each
/// with something after the scheme; or loadgen's own `redis`
/// ([`crate::cluster::PRIVATE_REDIS`]).
pub fn check_storage(storage: &str) -> Result<(), String> {
    let s = storage.trim();
    let has_rest = s.split_once("://").is_none_or(|(_, rest)| !rest.is_empty());
    if s.is_empty() {
        Err(format!("must name a backend: {STORAGE_FORMS}"))
    } else if s == "embedded:" || s == "embedded" {
        Err(format!(
            "{s:?} needs a directory, as in embedded:./chatscale-data"
        ))
    } else if s == crate::cluster::PRIVATE_REDIS
        || (reference_server::store::is_known_url(s) && has_rest)
    {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a storage backend: use {STORAGE_FORMS}"
        ))
    }
}
