//! Threshold parsing (each error path names the key) and evaluation against
//! an outcome (units, zero-sample latencies fail, derived metrics).

use std::collections::BTreeMap;

use loadgen::error::LoadgenError;
use loadgen::outcome::Outcome;
use loadgen::thresholds::Thresholds;

use crate::report_support::{synthetic_outcome, thresholds};

fn parse_err(key: &str, value: &str) -> (String, String) {
    let table = BTreeMap::from([(key.to_string(), value.to_string())]);
    match Thresholds::parse(&table) {
        Err(LoadgenError::Invalid { path, reason }) => (path, reason),
        other => panic!("{key} = {value}: expected Invalid, got {other:?}"),
    }
}

#[test]
fn every_bad_line_is_invalid_and_names_its_key() {
    let cases = [
        ("delivery_latncy.p99", "< 50ms", "unknown metric"),
        ("delivery_latency.p0", "< 50ms", "out of range"),
        ("delivery_latency.q99", "< 50ms", "unknown statistic"),
        ("delivery_latency", "< 50ms", "names a statistic"),
        ("delivery_latency.p99", "~ 50ms", "no comparison"),
        ("delivery_latency.p99", "= 50ms", "no comparison"),
        ("delivery_latency.p99", "<", "no limit"),
        ("delivery_latency.p99", "< 50", "no unit"),
        (
            "delivery_latency.p99",
            "< 50parsecs",
            "unknown duration unit",
        ),
        (
            "server_memory_per_connection",
            "< 8 furlongs",
            "unknown size unit",
        ),
        ("lost", "== 0ms", "not a number"),
        ("errors.", "== 0", "no error code"),
    ];
    for (key, value, why) in cases {
        let (path, reason) = parse_err(key, value);
        assert_eq!(path, format!("thresholds.\"{key}\""), "{key}");
        assert!(
            reason.contains(why),
            "{key} = {value}: {reason:?} should say {why:?}"
        );
    }
}

#[test]
fn good_lines_parse_with_their_units() {
    let t = thresholds(&[
        ("delivery_latency.p99", "< 50ms"),
        ("ack_latency.p999", "<= 2s"),
        ("server_memory_per_connection", "< 8KiB"),
        ("messages_acked", "> 1_000"),
        ("throughput", ">= 60/m"),
    ]);
    let limits: BTreeMap<&str, f64> = t.rules.iter().map(|r| (r.key.as_str(), r.limit)).collect();
    assert_eq!(limits["delivery_latency.p99"], 50.0);
    assert_eq!(limits["ack_latency.p999"], 2000.0);
    assert_eq!(limits["server_memory_per_connection"], 8192.0);
    assert_eq!(limits["messages_acked"], 1000.0);
    assert_eq!(limits["throughput"], 1.0);
}

#[test]
fn evaluation_reports_values_in_display_units() {
    let outcome = synthetic_outcome();
    let rows = thresholds(&[
        ("delivery_latency.p99", "< 50ms"),
        ("delivery_latency.max", "< 10ms"),
        ("ack_latency.p50", "<= 2ms"),
        ("lost", "== 0"),
        ("messages_acked", "> 100"),
        ("errors", "== 0"),
        ("errors.rate_limited", "== 2"),
        ("server_memory_per_connection", "< 8KiB"),
        ("throughput", ">= 100"),
        ("delivery_latency.count", "== 9"),
    ])
    .evaluate(&outcome);
    let by_expr: BTreeMap<&str, (f64, bool)> = rows
        .iter()
        .map(|r| (r.expr.as_str(), (r.value, r.passed)))
        .collect();
    // 40 ms is the largest of nine samples: p99 and max both land on it, reported as the
    // highest value HdrHistogram (3 significant digits) holds equivalent to it.
    assert_eq!(by_expr["delivery_latency.p99 < 50ms"], (40.031, true));
    assert_eq!(by_expr["delivery_latency.max < 10ms"], (40.031, false));
    assert!(by_expr["ack_latency.p50 <= 2ms"].1);
    assert_eq!(by_expr["lost == 0"], (0.0, true));
    assert_eq!(by_expr["messages_acked > 100"], (300.0, true));
    assert_eq!(by_expr["errors == 0"], (3.0, false));
    assert_eq!(by_expr["errors.rate_limited == 2"], (2.0, true));
    // 10,000 bytes per connection: more than 8 KiB.
    assert_eq!(
        by_expr["server_memory_per_connection < 8KiB"],
        (10_000.0, false)
    );
    assert_eq!(by_expr["throughput >= 100"], (100.0, true));
    assert_eq!(by_expr["delivery_latency.count == 9"], (9.0, true));
    let units: BTreeMap<&str, &str> = rows
        .iter()
        .map(|r| (r.expr.as_str(), r.unit.as_str()))
        .collect();
    assert_eq!(units["delivery_latency.p99 < 50ms"], "ms");
    assert_eq!(units["server_memory_per_connection < 8KiB"], "bytes");
    assert_eq!(units["lost == 0"], "count");
}

#[test]
fn a_latency_threshold_over_no_samples_fails_and_says_why() {
    let outcome = synthetic_outcome();
    let rows = thresholds(&[
        ("presence_latency.p99", "< 50ms"),
        ("fanout_latency.count", "== 0"),
    ])
    .evaluate(&outcome);
    let presence = rows
        .iter()
        .find(|r| r.expr.starts_with("presence"))
        .unwrap();
    assert!(!presence.passed);
    assert!(
        presence
            .note
            .as_deref()
            .unwrap()
            .contains("no presence_latency samples"),
        "{presence:?}"
    );
    // Counting samples is fine over none.
    assert!(
        rows.iter()
            .find(|r| r.expr.starts_with("fanout"))
            .unwrap()
            .passed
    );
}

#[test]
fn unmeasured_memory_fails_rather_than_passes() {
    let mut outcome = synthetic_outcome();
    for s in &mut outcome.memory {
        s.server_rss_bytes = None;
    }
    let rows = thresholds(&[("server_memory_per_connection", "< 8KiB")]).evaluate(&outcome);
    assert!(!rows[0].passed);
    assert!(
        rows[0].note.as_deref().unwrap().contains("remote target"),
        "{:?}",
        rows[0]
    );
    let empty = Outcome::new("empty", 50.0);
    assert!(Thresholds::default().evaluate(&empty).is_empty());
}
