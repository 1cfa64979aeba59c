//! Shared helpers for the report tests: a synthetic merged outcome with known
//! numbers, and a report built from it.

use std::collections::BTreeMap;

use loadgen::outcome::{
    new_histogram, AuditExample, Interval, MemorySample, Outcome, PhaseOutcome, Provisioning,
    TargetInfo,
};
use loadgen::projection::ProjectionConfig;
use loadgen::report::{self, Report, RunInfo};
use loadgen::thresholds::Thresholds;

/// Delivery latencies recorded per interval (µs): three one-second intervals.
pub const DELIVERY_INTERVALS: [&[u64]; 3] = [
    &[1_000, 2_000, 3_000],
    &[1_500, 2_500],
    &[4_000, 5_000, 6_000, 40_000],
];

/// An outcome as one worker might report it: delivery, ack, connect, sync and
/// history latencies with per-interval histograms, a ramp of 0 -> 1,000 connections
/// costing 10,000 bytes each on a 50 MB server, 130 devices for 100 users.
pub fn synthetic_outcome() -> Outcome {
    let mut o = Outcome::new("synthetic", 50.0);
    o.started_at_ms = 1_700_000_000_000;
    o.duration_s = 3.0;
    let mut delivery = Vec::new();
    for (i, values) in DELIVERY_INTERVALS.iter().enumerate() {
        let mut h = new_histogram();
        for v in *values {
            h.record(*v).unwrap();
        }
        o.histograms
            .get_mut("delivery_latency")
            .unwrap()
            .add(&h)
            .unwrap();
        o.histograms
            .get_mut("delivery_latency_1to1")
            .unwrap()
            .add(&h)
            .unwrap();
        delivery.push(Interval {
            start_ms: i as u64 * 1000,
            duration_ms: 1000,
            histogram: h,
        });
    }
    o.intervals.insert("delivery_latency".into(), delivery);
    let mut ack = Vec::new();
    for i in 0..3u64 {
        let mut h = new_histogram();
        for v in 0..100u64 {
            h.record(500 + v * 10 + i).unwrap();
        }
        o.histograms
            .get_mut("ack_latency")
            .unwrap()
            .add(&h)
            .unwrap();
        ack.push(Interval {
            start_ms: i * 1000,
            duration_ms: 1000,
            histogram: h,
        });
    }
    o.intervals.insert("ack_latency".into(), ack);
    for v in [800u64, 900, 1_200] {
        o.histograms
            .get_mut("connect_latency")
            .unwrap()
            .record(v)
            .unwrap();
        o.histograms
            .get_mut("sync_latency")
            .unwrap()
            .record(v * 3)
            .unwrap();
    }
    // Ten history pages in the second interval: 2 ms to 20 ms.
    let mut history = new_histogram();
    for v in 1..=10u64 {
        history.record(v * 2_000).unwrap();
    }
    o.histograms
        .get_mut("history_latency")
        .unwrap()
        .add(&history)
        .unwrap();
    o.intervals.insert(
        "history_latency".into(),
        vec![Interval {
            start_ms: 1000,
            duration_ms: 1000,
            histogram: history,
        }],
    );
    o.counters.history_scheduled = 11;
    o.counters.history_reads = 10;
    o.counters.history_messages = 420;
    o.counters.history_skipped = 1;
    o.counters.messages_scheduled = 300;
    o.counters.messages_sent = 300;
    o.counters.messages_acked = 300;
    o.counters.deliveries = 450;
    o.counters.connects = 130;
    o.errors = BTreeMap::from([
        ("rate_limited".to_string(), 2u64),
        ("connect".to_string(), 1),
    ]);
    o.audit.messages_checked = 300;
    o.audit.deliveries_expected = 450;
    o.audit.examples.push(AuditExample {
        kind: "lost".into(),
        channel: "dm:1:2".into(),
        id: 7,
        user: 2,
        device: 1,
    });
    o.peak_connections = 1_000;
    o.memory = (0..=10u64)
        .map(|i| MemorySample {
            t_ms: i * 300,
            connections: i * 100,
            server_rss_bytes: Some(50_000_000 + i * 100 * 10_000),
            loadgen_rss_bytes: 20_000_000 + i * 100 * 4_000,
        })
        .collect();
    o.provisioning = Provisioning {
        users: 100,
        devices: 130,
        friendships: 500,
        groups: 10,
        seconds: 1.25,
        method: "bulk".into(),
        requests: 4,
        nodes: 1,
        accounts_seconds: 1.0,
        friendships_seconds: 0.2,
        groups_seconds: 0.05,
        ..Provisioning::default()
    }
    .with_rates();
    o.generator.lag.record(200).unwrap();
    o.generator.cpu_seconds = 1.5;
    o.generator.peak_rss_bytes = 24_000_000;
    o.phases.push(PhaseOutcome {
        name: "steady".into(),
        duration_s: 3.0,
        online: 100,
        message_rate: 100.0,
        messages_sent: 300,
        history_rate: 10.0,
        start_ms: 0,
        ..Default::default()
    });
    o.target = TargetInfo {
        url: "http://127.0.0.1:9".into(),
        embedded: true,
        storage: "memory".into(),
        durability: Some("none".into()),
    };
    o
}

pub fn run_info() -> RunInfo {
    RunInfo {
        scenario: "synthetic".into(),
        description: "a synthetic outcome".into(),
        seed: 42,
        scenario_path: "scenarios/synthetic.toml".into(),
        command: "loadgen run scenarios/synthetic.toml".into(),
    }
}

pub fn thresholds(lines: &[(&str, &str)]) -> Thresholds {
    let table: BTreeMap<String, String> = lines
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Thresholds::parse(&table).unwrap()
}

/// The synthetic outcome's report with the given thresholds and no baseline.
pub fn build_report(outcome: &Outcome, lines: &[(&str, &str)]) -> Report {
    report::build(
        &run_info(),
        &thresholds(lines),
        &ProjectionConfig::default(),
        outcome,
        None,
    )
    .unwrap()
}

/// Standard base64 (what interval logs use), decoded without a dependency.
pub fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET
            .iter()
            .position(|a| *a == c)
            .expect("base64 character") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}
