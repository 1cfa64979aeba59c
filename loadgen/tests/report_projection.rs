//! The projection's arithmetic: each candidate limit (the server's own
//! connection limit, memory, the highest phase within the latency objective,
//! CPU per message), the tightest one wins, unmeasured limits say so instead of
//! inventing a number, a run with no ceiling says plainly it is not a
//! capacity run, and the config validates its fields.

use loadgen::error::LoadgenError;
use loadgen::outcome::ServerStats;
use loadgen::projection::{
    project, Limit, Measured, NodeHeld, PhaseCapacity, Projection, ProjectionConfig,
};

use crate::report_support::{build_report, synthetic_outcome};

const GIB: u64 = 1024 * 1024 * 1024;

fn phase(name: &str, offered: f64, p99: f64) -> PhaseCapacity {
    PhaseCapacity {
        name: name.into(),
        offered,
        acked_per_s: offered,
        delivery_p99_ms: Some(p99),
    }
}

/// A stepped run: 1,000 and 2,000 msg/s within 50 ms, 4,000 msg/s past it.
fn measured() -> Measured {
    Measured {
        peak_connections: 20_000,
        devices_per_user: 1.3,
        server_memory_per_connection: Some(10_000.0),
        server_base_memory: Some(50_000_000.0),
        server_memory_r2: Some(0.98),
        phases: vec![
            phase("ramp", 0.0, 1.0),
            phase("step1", 1_000.0, 5.0),
            phase("step2", 2_000.0, 12.5),
            phase("step3", 4_000.0, 180.0),
        ],
        slo_ms: 50.0,
        slo_source: "the default".into(),
        messages_acked: 100_000,
        server: ServerStats {
            cpu_seconds: Some(20.0),
            max_connections: Some(19_744),
            cpus: Some(2),
            machine_memory_bytes: Some(24 * GIB),
        },
        local_memory_bytes: None,
        local_cpus: 2,
        generator_limited: false,
        server_nodes: 1,
        node_held: Some(NodeHeld {
            node: "n1".into(),
            connections: 19_000,
            phase: "step2".into(),
            delivery_p99_ms: 12.5,
        }),
    }
}

fn limit<'a>(p: &'a Projection, name: &str) -> &'a Limit {
    p.limits.iter().find(|l| l.name == name).unwrap()
}

#[test]
fn each_limit_rests_on_what_the_run_measured() {
    let p = project(&ProjectionConfig::default(), &measured());
    // 50M x 0.02 = 1M users; x 1.3 devices = 1.3M connections.
    assert_eq!(p.target.concurrent_users, 1_000_000);
    assert_eq!(p.target.concurrent_connections, 1_300_000);
    // 50M x 40 / 86,400 x 2 = 46,296.3 messages/s.
    assert_eq!(p.target.peak_messages_per_s, 46_296.3);
    // The server's own limit: ceil(1.3M / 19,744) = 66.
    assert_eq!(limit(&p, "connections").per_server, Some(19_744.0));
    assert_eq!(limit(&p, "connections").servers, Some(66));
    // (24 GiB x 0.8 - 50 MB) / 10,000 B = 2,056,584 connections per server -> 1 server.
    assert_eq!(limit(&p, "memory").per_server, Some(2_056_584.0));
    assert_eq!(limit(&p, "memory").servers, Some(1));
    // The highest phase within 50 ms is step2, 2,000/s; step3 missed: a ceiling.
    let msgs = limit(&p, "messages");
    assert_eq!(msgs.per_server, Some(2_000.0));
    assert_eq!(msgs.servers, Some(24));
    assert!(!msgs.lower_bound, "{msgs:?}");
    assert!(
        msgs.basis.contains("step2") && msgs.basis.contains("step3"),
        "{msgs:?}"
    );
    // CPU: 20 s / 100,000 messages = 0.2 ms each; 46,296.3 x 0.0002 / 2 cores = 4.6 -> 5.
    assert_eq!(limit(&p, "cpu").servers, Some(5));
    assert_eq!(limit(&p, "cpu").per_server, Some(10_000.0));
    assert_eq!(
        (p.servers_needed, p.limited_by.as_str()),
        (66, "connections")
    );
    assert!(p.capacity_run && !p.upper_bound);
    assert!(
        p.headline.starts_with("66 servers needed"),
        "{}",
        p.headline
    );
    assert_eq!(p.target.cores_per_server, Some(2.0));
}

#[test]
fn a_run_with_no_ceiling_is_not_a_capacity_run() {
    let mut m = measured();
    // A smoke run: 100 and 300 msg/s, both far within the objective.
    m.phases = vec![phase("ramp", 100.0, 3.0), phase("steady", 300.0, 6.0)];
    m.server.max_connections = Some(1_000_000);
    let p = project(&ProjectionConfig::default(), &m);
    let msgs = limit(&p, "messages");
    assert_eq!(msgs.per_server, Some(300.0));
    assert!(msgs.lower_bound);
    // ceil(46,296.3 / 300) = 155.
    assert_eq!((p.servers_needed, p.limited_by.as_str()), (155, "messages"));
    assert!(p.upper_bound && !p.capacity_run);
    assert!(
        p.headline
            .starts_with("Not a capacity run: every phase met the 50 ms objective"),
        "{}",
        p.headline
    );
    assert!(p.headline.contains("at most 155 servers"), "{}", p.headline);

    // The objective decides which phases count.
    let mut m = measured();
    m.slo_ms = 200.0;
    let p = project(&ProjectionConfig::default(), &m);
    assert_eq!(limit(&p, "messages").per_server, Some(4_000.0));
    assert!(limit(&p, "messages").lower_bound);

    // A generator that could not keep its schedule never makes a capacity run.
    let mut m = measured();
    m.generator_limited = true;
    let p = project(&ProjectionConfig::default(), &m);
    assert!(
        !p.capacity_run && p.headline.contains("generator"),
        "{}",
        p.headline
    );
}

#[test]
fn the_configured_factors_change_the_arithmetic() {
    let config = ProjectionConfig {
        peak_to_average: 4.0,
        usable_memory_share: 0.5,
        cores_per_server: Some(8.0),
        ..Default::default()
    };
    let p = project(&config, &measured());
    assert_eq!(p.target.peak_messages_per_s, 92_592.59);
    assert_eq!(p.target.usable_memory_share, 0.5);
    // (24 GiB x 0.5 - 50 MB) / 10,000 B = 1,283,490.
    assert_eq!(limit(&p, "memory").per_server, Some(1_283_490.0));
    // 92,592.59 x 0.0002 / 8 = 2.3 -> 3.
    assert_eq!(limit(&p, "cpu").servers, Some(3));
    assert!(limit(&p, "cpu").arithmetic.contains("8 cores"));
}

#[test]
fn a_run_too_small_to_measure_says_so() {
    let mut m = measured();
    m.peak_connections = 50;
    m.node_held = None;
    m.server_memory_per_connection = None;
    m.server_base_memory = None;
    m.phases = vec![phase("idle", 0.0, 1.0)];
    m.messages_acked = 0;
    m.server.cpu_seconds = None;
    let p = project(&ProjectionConfig::default(), &m);
    assert_eq!(limit(&p, "memory").servers, None);
    assert_eq!(limit(&p, "memory").basis, "not measured");
    assert_eq!(limit(&p, "messages").servers, None);
    assert!(limit(&p, "messages").arithmetic.contains("no messages"));
    assert_eq!(limit(&p, "cpu").servers, None);
    assert_eq!(
        (p.servers_needed, p.limited_by.as_str()),
        (66, "connections")
    );
    assert!(
        p.notes
            .iter()
            .any(|n| n.contains("not a measured capacity")),
        "{:?}",
        p.notes
    );

    // No phase met the objective: the messages limit says so, with the lowest.
    let mut m = measured();
    m.slo_ms = 1.0;
    let p = project(&ProjectionConfig::default(), &m);
    assert_eq!(limit(&p, "messages").servers, None);
    assert!(
        limit(&p, "messages")
            .arithmetic
            .contains("no phase met the 1 ms"),
        "{:?}",
        limit(&p, "messages")
    );

    // A server that does not state its limit, and no node measured within
    // the objective: not measured, not loadgen's own.
    let mut m = measured();
    m.server.max_connections = None;
    m.node_held = None;
    let p = project(&ProjectionConfig::default(), &m);
    assert_eq!(limit(&p, "connections").servers, None);
    assert!(limit(&p, "connections")
        .arithmetic
        .contains("chatscale_max_connections"));

    let mut m = measured();
    m.server_memory_per_connection = Some(-300.0);
    let p = project(&ProjectionConfig::default(), &m);
    assert_eq!(limit(&p, "memory").servers, None);
    assert!(limit(&p, "memory").arithmetic.contains("not positive"));
}

/// A capacity-scale run that held most of a node's limit, but not all of it,
/// projects with what a node was measured to hold (a lower bound, so the
/// servers it needs are an upper bound), never the configured limit alone; a
/// cluster's message rate is shared by its nodes.
#[test]
fn a_cluster_projects_per_node_from_what_a_node_held() {
    let mut m = measured();
    m.server_nodes = 7;
    m.node_held = Some(NodeHeld {
        node: "n3".into(),
        connections: 14_465,
        phase: "hold".into(),
        delivery_p99_ms: 18.1,
    });
    let p = project(&ProjectionConfig::default(), &m);
    let c = limit(&p, "connections");
    assert_eq!(c.per_server, Some(14_465.0));
    // ceil(1.3M / 14,465) = 90.
    assert_eq!(c.servers, Some(90));
    assert!(c.lower_bound, "{c:?}");
    assert!(
        c.basis.contains("node n3") && c.basis.contains("19,744"),
        "{c:?}"
    );
    // The cluster's 2,000 msg/s within the objective: 285.71 per node, and
    // 4,000 missed it, so messages decide, measured: 163 servers.
    let msgs = limit(&p, "messages");
    assert_eq!(msgs.per_server, Some(285.71));
    assert!(msgs.basis.contains("7 nodes"), "{msgs:?}");
    assert_eq!((p.servers_needed, p.limited_by.as_str()), (163, "messages"));
    assert!(p.capacity_run, "{p:?}");
    // The memory fit's intercept is every node's base together.
    assert_eq!(
        limit(&p, "memory").per_server,
        Some((((24 * GIB) as f64 * 0.8 - 50_000_000.0 / 7.0) / 10_000.0).floor())
    );
    assert!(p.notes.iter().any(|n| n.contains("cluster of 7 nodes")));

    // Under half the limit on every node: the configured limit, with a note.
    let mut m = measured();
    m.node_held.as_mut().unwrap().connections = 5_000;
    let p = project(&ProjectionConfig::default(), &m);
    assert_eq!(limit(&p, "connections").per_server, Some(19_744.0));
    assert!(!limit(&p, "connections").lower_bound);
    assert!(p
        .notes
        .iter()
        .any(|n| n.contains("not a measured capacity")));
}

/// The objective defaults to the delivery p99 threshold, else 50 ms; the
/// report's phases carry the delivery p99 the projection judges.
#[test]
fn the_objective_comes_from_the_scenario() {
    let r = build_report(&synthetic_outcome(), &[("delivery_latency.p99", "< 30ms")]);
    assert_eq!(r.projection.target.slo_ms, 30.0);
    assert_eq!(
        r.projection.target.slo_source,
        "the delivery_latency.p99 threshold"
    );
    let r = build_report(&synthetic_outcome(), &[]);
    assert_eq!(r.projection.target.slo_ms, 50.0);
    assert!(r.phases[0].delivery_p99_ms.is_some());
    assert_eq!(r.phases[0].deliveries, 9);
    let config: ProjectionConfig = toml::from_str("slo = \"20ms\"").unwrap();
    let table = loadgen::thresholds::Thresholds::default();
    assert_eq!(config.slo_ms(&table).0, 20.0);
}

#[test]
fn the_config_validates_each_field() {
    assert!(ProjectionConfig::default().validate().is_ok());
    let bad = [
        (
            ProjectionConfig {
                dau: 0,
                ..Default::default()
            },
            "projection.dau",
        ),
        (
            ProjectionConfig {
                peak_online_share: 0.0,
                ..Default::default()
            },
            "projection.peak_online_share",
        ),
        (
            ProjectionConfig {
                peak_online_share: 1.5,
                ..Default::default()
            },
            "projection.peak_online_share",
        ),
        (
            ProjectionConfig {
                messages_per_user_per_day: f64::NAN,
                ..Default::default()
            },
            "projection.messages_per_user_per_day",
        ),
        (
            ProjectionConfig {
                slo: Some("soon".into()),
                ..Default::default()
            },
            "projection.slo",
        ),
        (
            ProjectionConfig {
                cores_per_server: Some(0.0),
                ..Default::default()
            },
            "projection.cores_per_server",
        ),
        (
            ProjectionConfig {
                peak_to_average: 0.5,
                ..Default::default()
            },
            "projection.peak_to_average",
        ),
        (
            ProjectionConfig {
                usable_memory_share: f64::NAN,
                ..Default::default()
            },
            "projection.usable_memory_share",
        ),
    ];
    for (config, field) in bad {
        match config.validate() {
            Err(LoadgenError::Invalid { path, .. }) => assert_eq!(path, field),
            other => panic!("{config:?}: {other:?}"),
        }
    }
    let parsed: ProjectionConfig = toml::from_str("dau = 1_000_000").unwrap();
    assert_eq!((parsed.dau, parsed.peak_online_share), (1_000_000, 0.02));
    assert_eq!(
        (parsed.peak_to_average, parsed.usable_memory_share),
        (2.0, 0.8)
    );
    assert!(
        toml::from_str::<ProjectionConfig>("daus = 1").is_err(),
        "unknown keys are errors"
    );
}
