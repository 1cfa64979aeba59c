//! The four candidate limits of the projection, each from what the run
//! measured: the server's connection limit, memory per connection, message
//! capacity within the latency objective, and CPU per message. Each returns a
//! [`Limit`] with its arithmetic, or one that says why it was not measured.

use super::{div_ceil, round2, thousands, Limit, Measured, ProjectionTarget, WEAK_FIT_R2};

/// A limit the run could not measure, with the reason in place of arithmetic.
fn not_measured(name: &str, unit: &str, why: String) -> Limit {
    Limit {
        name: name.into(),
        per_server: None,
        unit: unit.into(),
        servers: None,
        basis: "not measured".into(),
        lower_bound: false,
        arithmetic: why,
    }
}

/// Connections one server holds: what one node was measured to hold within
/// the latency objective, against the server's own limit (`--max-connections`,
/// as its `/metrics` states it). A node measured at 90% of its limit or more
/// confirms the limit; a capacity-scale run (half the limit or more) that did
/// not reach it gives the measured figure as a lower bound; a smaller run only
/// has the configured limit, and a note says so.
pub(super) fn connections(m: &Measured, t: &ProjectionTarget, notes: &mut Vec<String>) -> Limit {
    let configured = m.server.max_connections.filter(|l| *l > 0);
    let held = m.node_held.as_ref().filter(|h| h.connections > 0);
    let held_words = |h: &super::NodeHeld| {
        format!(
            "node {} held {} connections in phase '{}' at delivery p99 {} ms, within the {} ms objective",
            h.node,
            thousands(h.connections as f64),
            h.phase,
            h.delivery_p99_ms,
            m.slo_ms
        )
    };
    let (per_server, basis, lower_bound) = match (configured, held) {
        (None, None) => {
            return not_measured(
                "connections",
                "connections",
                "the server does not state its connection limit (chatscale_max_connections at /metrics) \
                 and no node was measured holding connections within the objective"
                    .into(),
            )
        }
        (Some(limit), Some(h)) if h.connections * 10 >= limit * 9 => (
            limit,
            format!(
                "the server's own connection limit (chatscale_max_connections at /metrics), measured: {}",
                held_words(h)
            ),
            false,
        ),
        (Some(limit), Some(h)) if h.connections * 2 >= limit => (
            h.connections,
            format!(
                "measured: {}; its configured limit of {} was not reached, so this is a lower bound on a node's capacity",
                held_words(h),
                thousands(limit as f64)
            ),
            true,
        ),
        (None, Some(h)) => (
            h.connections,
            format!(
                "measured: {}; the server does not state its limit, so this is a lower bound",
                held_words(h)
            ),
            true,
        ),
        (Some(limit), _) if held.map_or(m.peak_connections, |h| h.connections) * 2 >= limit => (
            limit,
            "the server's own connection limit (chatscale_max_connections at /metrics)".to_string(),
            false,
        ),
        (Some(limit), _) => {
            notes.push(format!(
                "the run held {} connections at its peak{}; the server's limit of {} is its configured ceiling \
                 (--max-connections, by default its open-file limit less 256), not a measured capacity: run a \
                 scenario with about that many online devices per node to confirm one server holds them",
                thousands(m.peak_connections as f64),
                held.map_or(String::new(), |h| format!(
                    " (the busiest node {} within the objective)",
                    thousands(h.connections as f64)
                )),
                thousands(limit as f64),
            ));
            (
                limit,
                "the server's own connection limit (chatscale_max_connections at /metrics), not measured: the \
                 run held under half of it on any node"
                    .to_string(),
                false,
            )
        }
    };
    let servers = div_ceil(t.concurrent_connections as f64, per_server as f64);
    Limit {
        name: "connections".into(),
        per_server: Some(per_server as f64),
        unit: "connections".into(),
        servers: Some(servers),
        basis,
        lower_bound,
        arithmetic: format!(
            "{} users x {} devices/user = {} connections; / {} per server = {servers} server(s)",
            thousands(t.concurrent_users as f64),
            t.devices_per_user,
            thousands(t.concurrent_connections as f64),
            thousands(per_server as f64),
        ),
    }
}

/// Connections one server's memory holds: the fitted slope against the
/// usable share of its machine's memory.
pub(super) fn memory(m: &Measured, t: &ProjectionTarget) -> Limit {
    let nm = |why: String| not_measured("memory", "connections", why);
    let Some(slope) = m.server_memory_per_connection else {
        return nm(
            "server memory per connection was not measured (connections did not vary enough, or the server's memory was not visible)".into(),
        );
    };
    if slope <= 0.0 {
        return nm(format!(
            "the fitted slope ({slope:.0} bytes/connection) is not positive: memory noise exceeded the connections' \
             cost; run more connections"
        ));
    }
    let Some(total) = m.server.machine_memory_bytes.or(m.local_memory_bytes) else {
        return nm("the server machine's memory is unknown".into());
    };
    let share = t.usable_memory_share;
    // The fit's intercept is the sum of every node's base memory.
    let base = m.server_base_memory.unwrap_or(0.0).max(0.0) / m.server_nodes.max(1) as f64;
    let usable = total as f64 * share - base;
    if usable <= 0.0 {
        return nm(
            "the server's base memory exceeds the usable share of the machine's memory".into(),
        );
    }
    let per_server = (usable / slope).floor().max(1.0);
    let servers = div_ceil(t.concurrent_connections as f64, per_server);
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
            "({} bytes x {share} usable - {} bytes base) / {} bytes per connection = {} connections \
             per server; {} connections / {} = {servers} server(s)",
            thousands(total as f64),
            thousands(base),
            thousands(slope.round()),
            thousands(per_server),
            thousands(t.concurrent_connections as f64),
            thousands(per_server),
        ),
    }
}

/// Messages one server carries within the objective: the highest phase that
/// met it. A higher phase that missed it brackets the ceiling; with none, the
/// rate is only a lower bound.
pub(super) fn messages(m: &Measured, t: &ProjectionTarget, notes: &mut Vec<String>) -> Limit {
    let slo = m.slo_ms;
    let tried: Vec<_> = m
        .phases
        .iter()
        .filter(|p| p.offered > 0.0 && p.acked_per_s > 0.0)
        .collect();
    if tried.is_empty() {
        return not_measured(
            "messages",
            "messages_per_s",
            "the run acknowledged no messages in any phase: add a phase with a message_rate".into(),
        );
    }
    let met = |p: &&&super::PhaseCapacity| p.delivery_p99_ms.is_some_and(|d| d <= slo);
    let best = tried
        .iter()
        .filter(met)
        .max_by(|a, b| a.acked_per_s.total_cmp(&b.acked_per_s));
    let Some(best) = best else {
        let lowest = tried
            .iter()
            .min_by(|a, b| a.offered.total_cmp(&b.offered))
            .expect("tried is not empty");
        return not_measured(
            "messages",
            "messages_per_s",
            format!(
                "no phase met the {slo} ms delivery p99 objective ({}): the lowest, '{}' at {} messages/s, \
                 had p99 {}; one server carries less than that within the objective",
                m.slo_source,
                lowest.name,
                thousands(lowest.offered),
                lowest
                    .delivery_p99_ms
                    .map_or("n/a (no deliveries)".to_string(), |d| format!("{d} ms"))
            ),
        );
    };
    let missed = tried
        .iter()
        .filter(|p| !met(p) && p.offered > best.offered)
        .min_by(|a, b| a.offered.total_cmp(&b.offered));
    let nodes = m.server_nodes.max(1);
    let per_server = round2(best.acked_per_s / nodes as f64);
    let servers = div_ceil(t.peak_messages_per_s, per_server);
    let cluster = if nodes > 1 {
        format!(
            " ({} messages/s over the cluster's {nodes} nodes)",
            thousands(round2(best.acked_per_s))
        )
    } else {
        String::new()
    };
    let p99 = best.delivery_p99_ms.unwrap_or(0.0);
    let (basis, lower_bound) = match missed {
        Some(x) => (
            format!(
                "the highest phase that met the {slo} ms delivery p99 objective ({}): '{}', {} messages/s per server{cluster} at p99 {p99} ms; \
                 the next, '{}' at {} messages/s, missed it (p99 {}): the ceiling lies between",
                m.slo_source,
                best.name,
                thousands(per_server),
                x.name,
                thousands(x.offered),
                x.delivery_p99_ms
                    .map_or("n/a".to_string(), |d| format!("{d} ms")),
            ),
            false,
        ),
        None => {
            notes.push(format!(
                "every phase met the {slo} ms objective, the highest ('{}') at {} messages/s: that is a lower bound \
                 on one server's capacity (the open model sends no faster than scheduled), so the messages limit \
                 is an upper bound on servers; step message_rate up until a phase misses the objective to find \
                 the ceiling",
                best.name,
                thousands(per_server)
            ));
            (
                format!(
                    "the highest phase, '{}', {} messages/s per server{cluster} at p99 {p99} ms, met the {slo} ms objective ({}): a lower bound on capacity",
                    best.name,
                    thousands(per_server),
                    m.slo_source
                ),
                true,
            )
        }
    };
    Limit {
        name: "messages".into(),
        per_server: Some(per_server),
        unit: "messages_per_s".into(),
        servers: Some(servers),
        basis,
        lower_bound,
        arithmetic: format!(
            "{} DAU x {} messages/day / 86,400 s x {} peak/average = {} messages/s; / {} per server \
             = {servers} server(s)",
            thousands(t.dau as f64),
            t.messages_per_user_per_day,
            t.peak_to_average,
            thousands(t.peak_messages_per_s),
            thousands(per_server),
        ),
    }
}

/// Messages one server's cores carry: server CPU seconds per acked message
/// (all-in: connections, heartbeats and presence included, in the run's
/// proportions) against its cores.
pub(super) fn cpu(m: &Measured, t: &ProjectionTarget, notes: &mut Vec<String>) -> Limit {
    let nm = |why: String| not_measured("cpu", "messages_per_s", why);
    let Some(cpu) = m.server.cpu_seconds else {
        return nm(
            "the server's CPU time was not read (process_cpu_seconds_total at /metrics)".into(),
        );
    };
    if m.messages_acked == 0 {
        return nm("the run acknowledged no messages: no CPU per message".into());
    }
    if cpu <= 0.0 {
        return nm(format!(
            "the server used {cpu} CPU seconds over the run: too little to divide (its counter has 10 ms steps)"
        ));
    }
    let Some(cores) = t.cores_per_server else {
        return nm("the cores of a server are unknown: set [projection] cores_per_server".into());
    };
    let per_message = cpu / m.messages_acked as f64;
    let per_server = (cores / per_message).floor().max(1.0);
    let servers = div_ceil(t.peak_messages_per_s * per_message, cores);
    // The all-in cost carries connection upkeep in the run's proportion of
    // connections to messages; at the target the proportion may differ.
    let peak_rate = m.phases.iter().map(|p| p.acked_per_s).fold(0.0, f64::max);
    let run_mix = m.peak_connections as f64 / peak_rate.max(1.0);
    let target_mix = t.concurrent_connections as f64 / t.peak_messages_per_s.max(1.0);
    if run_mix > 3.0 * target_mix || target_mix > 3.0 * run_mix {
        notes.push(format!(
            "CPU per message is all-in (connections, heartbeats and presence included) at the run's mix of \
             {} connections per message/s; the target's is {}: the CPU term is only as good as that match",
            thousands(round2(run_mix)),
            thousands(round2(target_mix))
        ));
    }
    Limit {
        name: "cpu".into(),
        per_server: Some(per_server),
        unit: "messages_per_s".into(),
        servers: Some(servers),
        basis: format!(
            "server CPU time over the measured phases (process_cpu_seconds_total), {} CPU-ms per acked message, all-in",
            round3(per_message * 1000.0)
        ),
        lower_bound: false,
        arithmetic: format!(
            "{} CPU-s / {} messages = {} CPU-ms per message; {} messages/s x {} CPU-ms / {cores} cores per server \
             = {servers} server(s)",
            round3(cpu),
            thousands(m.messages_acked as f64),
            round3(per_message * 1000.0),
            thousands(t.peak_messages_per_s),
            round3(per_message * 1000.0),
        ),
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
