//! `report.md`: the report for a pull request or a wiki page. The verdict and
//! the threshold table come first (what a reviewer checks), then latencies,
//! every counter, the audit, provisioning, memory, generator health, the
//! server's own figures, the phases and the projection with its arithmetic.
//! Counters, audit and health rows are read through serde (`fields`), so a
//! field added to them shows here without a change.

use std::fmt::Write as _;

use super::{fields, Report};
use crate::outcome::LATENCY_METRICS;
use crate::projection::thousands;

/// Renders the Markdown report.
pub fn render(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# {}: {}\n", r.scenario, r.verdict.headline());
    let _ = writeln!(s, "**{}**\n", r.verdict_reason);
    if !r.description.is_empty() {
        let _ = writeln!(s, "{}\n", r.description);
    }
    let durability = r.target.durability.as_deref().unwrap_or("n/a");
    let _ = writeln!(s, "- command: `{}`", r.run.command);
    let _ = writeln!(
        s,
        "- scenario file: `{}`, seed {}",
        r.run.scenario_path, r.run.seed
    );
    let _ = writeln!(
        s,
        "- target: {} ({}), storage `{}`, durability {durability}",
        r.target.url,
        if r.target.embedded {
            "embedded"
        } else {
            "remote"
        },
        r.target.storage
    );
    let _ = writeln!(
        s,
        "- measured phases: {} s, started at unix ms {}",
        r.run.duration_s, r.run.started_at_ms
    );
    if let Some(b) = &r.run.baseline {
        let _ = writeln!(s, "- baseline: `{b}`");
    }

    let _ = writeln!(s, "\n## Thresholds\n");
    if r.thresholds.is_empty() {
        let _ = writeln!(s, "No thresholds: nothing was gated.");
    } else {
        let _ = writeln!(
            s,
            "| | threshold | value | limit | note |\n|---|---|---|---|---|"
        );
        for t in &r.thresholds {
            let mark = if t.passed { "pass" } else { "**FAIL**" };
            let _ = writeln!(
                s,
                "| {mark} | `{}` | {} {} | {} {} | {} |",
                t.expr,
                t.value,
                t.unit,
                t.limit,
                t.unit,
                t.note.as_deref().unwrap_or("")
            );
        }
    }

    let _ = writeln!(s, "\n## Latency (ms)\n");
    let _ = writeln!(s, "| metric | count | mean | p50 | p90 | p99 | p99.9 | max |\n|---|---:|---:|---:|---:|---:|---:|---:|");
    for (name, _) in LATENCY_METRICS {
        match r.metrics.latency.get(*name) {
            Some(l) if l.count == 0 => {
                let _ = writeln!(s, "| {name} | 0 | n/a | n/a | n/a | n/a | n/a | n/a |");
            }
            Some(l) => {
                let _ = writeln!(
                    s,
                    "| {name} | {} | {} | {} | {} | {} | {} | {} |",
                    l.count, l.mean_ms, l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
                );
            }
            None => {}
        }
    }

    let m = &r.metrics;
    let _ = writeln!(s, "\n## Throughput\n");
    let _ = writeln!(s, "| | |\n|---|---:|");
    for (_, k, v) in r.counters.rows() {
        let _ = writeln!(s, "| {k} | {} |", thousands(v as f64));
    }
    let _ = writeln!(s, "| throughput (acked msg/s) | {} |", m.throughput);
    let _ = writeln!(s, "| deliveries/s | {} |", m.delivery_rate);
    if !r.errors.is_empty() {
        let _ = writeln!(
            s,
            "\nErrors by code: {}",
            r.errors
                .iter()
                .map(|(k, v)| format!("`{k}` {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }

    let a = &r.audit;
    let _ = writeln!(s, "\n## Audit\n");
    let _ = writeln!(
        s,
        "{} acked messages checked against {} expected deliveries.",
        a.messages_checked, a.deliveries_expected
    );
    if a.incomplete {
        let _ = writeln!(
            s,
            "\n**Incomplete**: {}. The run cannot pass.",
            a.incomplete_reason.as_deref().unwrap_or("no reason given")
        );
    }
    let _ = writeln!(s, "\n| finding | count |\n|---|---:|");
    for (_, label, v) in a.counts.rows() {
        let _ = writeln!(s, "| {label} | {} |", thousands(v as f64));
    }
    if !a.examples.is_empty() {
        let _ = writeln!(
            s,
            "\n| kind | channel | message id | user | device |\n|---|---|---:|---:|---:|"
        );
        for e in &a.examples {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                e.kind, e.channel, e.id, e.user, e.device
            );
        }
    }

    let p = &r.provisioning;
    let _ = writeln!(s, "\n## Provisioning\n");
    let _ = writeln!(
        s,
        "{} users, {} devices, {} friendships, {} groups created in {:.2} s.",
        p.users, p.devices, p.friendships, p.groups, p.seconds
    );
    if p.requests > 0 {
        let how = match p.method.as_str() {
            "bulk" => "bulk endpoints (`/v1/provision/...`)",
            _ => "one request per object",
        };
        let _ = writeln!(
            s,
            "\n| method | nodes | requests | objects | requests/s | objects/s | accounts/s | accounts s | friendships s | groups s |\n|---|---|---|---|---|---|---|---|---|---|\n| {how} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} |",
            p.nodes,
            thousands(p.requests as f64),
            thousands(p.objects as f64),
            p.requests_per_second,
            p.objects_per_second,
            p.accounts_per_second,
            p.accounts_seconds,
            p.friendships_seconds,
            p.groups_seconds
        );
    }

    let _ = writeln!(s, "\n## Memory\n");
    let per_conn = m
        .server_memory_per_connection
        .map(|b| format!("{b} bytes"))
        .unwrap_or_else(|| "not measured".into());
    let _ = writeln!(
        s,
        "- peak connections: {}",
        thousands(m.peak_connections as f64)
    );
    let _ = writeln!(
        s,
        "- server memory per connection: {per_conn} ({})",
        m.server_memory_note
    );

    s.push_str(&super::connmem::markdown(&r.connection_memory));
    s.push_str(&super::nodes::markdown(r));

    let g = &r.generator;
    let _ = writeln!(s, "\n## Generator health\n");
    let _ = writeln!(
        s,
        "- send delay (written minus scheduled) p50 {} ms, p99 {} ms, max {} ms; clock thread: {}",
        g.send_delay_p50_ms,
        g.send_delay_p99_ms,
        g.send_delay_max_ms,
        g.clock.as_deref().unwrap_or("n/a")
    );
    if let Some(why) = &g.limited_reason {
        let _ = writeln!(s, "- **generator-limited**: {why}");
    }
    let _ = writeln!(
        s,
        "- memory each connected device's state accounts for: p50 {} bytes, p99 {} bytes, max {} bytes",
        g.device_memory_p50_bytes, g.device_memory_p99_bytes, g.device_memory_max_bytes
    );
    let _ = writeln!(
        s,
        "- timer lag (scheduler wake-ups, heartbeat timers) p50 {} ms, p99 {} ms, max {} ms (bound on send delay {} ms): {}",
        g.lag_p50_ms,
        g.lag_p99_ms,
        g.lag_max_ms,
        g.bound_ms,
        if g.limited {
            "**generator-limited: the results describe the generator**"
        } else {
            "kept its schedule"
        }
    );
    let loadgen_per_conn = g
        .memory_per_connection
        .map(|b| format!("{b} bytes"))
        .unwrap_or_else(|| "not measured".into());
    let _ = writeln!(
        s,
        "- CPU {} s, peak RSS {} bytes, memory per connection {loadgen_per_conn}",
        g.cpu_seconds,
        thousands(g.peak_rss_bytes as f64)
    );

    let _ = writeln!(s, "\n## Server (from its /metrics)\n");
    let _ = writeln!(s, "| | |\n|---|---:|");
    for (k, v) in fields::rows(&r.server) {
        let _ = writeln!(s, "| {} | {v} |", k.replace('_', " "));
    }

    if !r.phases.is_empty() {
        let _ = writeln!(s, "\n## Phases\n");
        let _ = writeln!(
            s,
            "| {} |\n|---|{}",
            fields::PHASE_COLUMNS.join(" | "),
            "---:|".repeat(fields::PHASE_COLUMNS.len() - 1)
        );
        for ph in &r.phases {
            let _ = writeln!(s, "| {} |", fields::phase_cells(ph).join(" | "));
        }
    }

    let pr = &r.projection;
    let t = &pr.target;
    let _ = writeln!(s, "\n## Projection\n");
    let _ = writeln!(
        s,
        "Target: {} DAU, {} online at peak ({} users, {} connections), {} messages/user/day ({} messages/s at peak, {} x the daily average). \
         Latency objective: delivery p99 {} ms ({}); {} cores per server; {} of a server's memory usable.\n",
        thousands(t.dau as f64),
        t.peak_online_share,
        thousands(t.concurrent_users as f64),
        thousands(t.concurrent_connections as f64),
        t.messages_per_user_per_day,
        thousands(t.peak_messages_per_s),
        t.peak_to_average,
        t.slo_ms,
        t.slo_source,
        t.cores_per_server.map_or("n/a".to_string(), |c| c.to_string()),
        t.usable_memory_share
    );
    // Bold only for a capacity run: otherwise the headline is the caveat.
    if pr.capacity_run {
        let _ = writeln!(s, "**{}**\n", pr.headline);
    } else {
        let _ = writeln!(s, "> {}\n", pr.headline);
    }
    let _ = writeln!(
        s,
        "| limit | per server | servers | basis | arithmetic |\n|---|---:|---:|---|---|"
    );
    for l in &pr.limits {
        let per = l
            .per_server
            .map(|v| format!("{} {}", thousands(v), l.unit))
            .unwrap_or_else(|| "not measured".into());
        let servers = l
            .servers
            .map(|v| v.to_string())
            .unwrap_or_else(|| "n/a".into());
        let _ = writeln!(
            s,
            "| {} | {per} | {servers} | {} | {} |",
            l.name, l.basis, l.arithmetic
        );
    }
    s.push('\n');
    for n in &pr.notes {
        let _ = writeln!(s, "- {n}");
    }
    s
}
