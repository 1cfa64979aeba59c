//! The projection's arithmetic: each candidate limit, the tightest one wins,
//! unmeasured limits say so instead of inventing a number, and the config
//! validates its fields.

use loadgen::error::LoadgenError;
use loadgen::projection::{project, Measured, ProjectionConfig};

const GIB: u64 = 1024 * 1024 * 1024;

fn measured() -> Measured {
    Measured {
        peak_connections: 20_000,
        devices_per_user: 1.3,
        server_memory_per_connection: Some(10_000.0),
        server_base_memory: Some(50_000_000.0),
        server_memory_r2: Some(0.98),
        throughput: 2_000.0,
        delivery_p99_ms: Some(12.5),
        machine_memory_bytes: Some(24 * GIB),
        sockets_per_process: 19_900,
        generator_limited: false,
    }
}

fn limit<'a>(p: &'a loadgen::projection::Projection, name: &str) -> &'a loadgen::projection::Limit {
    p.limits.iter().find(|l| l.name == name).unwrap()
}

#[test]
fn the_default_target_is_limited_by_connections() {
    let p = project(&ProjectionConfig::default(), &measured());
    // 50M x 0.02 = 1M users; x 1.3 devices = 1.3M connections.
    assert_eq!(p.target.concurrent_users, 1_000_000);
    assert_eq!(p.target.concurrent_connections, 1_300_000);
    // 50M x 40 / 86,400 x 2 = 46,296.3 messages/s.
    assert_eq!(p.target.peak_messages_per_s, 46_296.3);
    // ceil(1.3M / 19,900) = 66.
    assert_eq!(limit(&p, "connections").servers, Some(66));
    // (24 GiB x 0.8 - 50 MB) / 10,000 B = 2,056,584 connections per server -> 1 server.
    assert_eq!(limit(&p, "memory").per_server, Some(2_056_584.0));
    assert_eq!(limit(&p, "memory").servers, Some(1));
    // ceil(46,296.3 / 2,000) = 24.
    assert_eq!(limit(&p, "messages").servers, Some(24));
    assert!(limit(&p, "messages").lower_bound && !limit(&p, "memory").lower_bound);
    assert_eq!(
        (p.servers_needed, p.limited_by.as_str()),
        (66, "connections")
    );
    assert!(
        limit(&p, "connections")
            .arithmetic
            .contains("1,300,000 connections"),
        "{:?}",
        limit(&p, "connections")
    );
}

#[test]
fn memory_and_messages_limit_when_they_are_tighter() {
    let mut m = measured();
    m.server_memory_per_connection = Some(2_000_000.0);
    let p = project(&ProjectionConfig::default(), &m);
    // (25,769,803,776 x 0.8 - 50,000,000) / 2,000,000 = 10,282 per server; 1.3M / 10,282 = 127.
    assert_eq!(limit(&p, "memory").per_server, Some(10_282.0));
    assert_eq!((p.servers_needed, p.limited_by.as_str()), (127, "memory"));
    assert!(limit(&p, "memory").basis.contains("r2 0.98"));
    m.server_memory_r2 = Some(0.2);
    let p = project(&ProjectionConfig::default(), &m);
    assert!(
        limit(&p, "memory").basis.contains("weak fit"),
        "{:?}",
        limit(&p, "memory")
    );

    let mut m = measured();
    m.throughput = 100.0;
    let p = project(&ProjectionConfig::default(), &m);
    assert_eq!(
        (p.servers_needed, p.limited_by.as_str(), p.upper_bound),
        (463, "messages", true)
    );
}

#[test]
fn a_run_too_small_to_measure_says_so() {
    let mut m = measured();
    m.peak_connections = 50;
    m.server_memory_per_connection = None;
    m.server_base_memory = None;
    m.throughput = 0.0;
    m.delivery_p99_ms = None;
    let p = project(&ProjectionConfig::default(), &m);
    assert_eq!(limit(&p, "memory").servers, None);
    assert_eq!(limit(&p, "memory").basis, "not measured");
    assert_eq!(limit(&p, "messages").servers, None);
    assert!(limit(&p, "messages").arithmetic.contains("no messages"));
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

    let mut m = measured();
    m.server_memory_per_connection = Some(-300.0);
    let p = project(&ProjectionConfig::default(), &m);
    assert_eq!(limit(&p, "memory").servers, None);
    assert!(limit(&p, "memory").arithmetic.contains("not positive"));
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
    ];
    for (config, field) in bad {
        match config.validate() {
            Err(LoadgenError::Invalid { path, .. }) => assert_eq!(path, field),
            other => panic!("{config:?}: {other:?}"),
        }
    }
    let parsed: ProjectionConfig = toml::from_str("dau = 1_000_000").unwrap();
    assert_eq!((parsed.dau, parsed.peak_online_share), (1_000_000, 0.02));
    assert!(
        toml::from_str::<ProjectionConfig>("daus = 1").is_err(),
        "unknown keys are errors"
    );
}
