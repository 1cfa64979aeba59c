//! `loadgen compare`: side-by-side table with ratios to the first report, and
//! an unreadable file named in the error.

use loadgen::error::LoadgenError;

use crate::report_support::{build_report, synthetic_outcome};

#[test]
fn compare_shows_ratios_to_the_first_report() {
    let dir = tempfile::tempdir().unwrap();
    let a = build_report(&synthetic_outcome(), &[]);
    let mut slower = synthetic_outcome();
    slower.duration_s = 6.0; // same messages over twice the time: half the throughput
    slower.target.storage = "embedded:/tmp/x".into();
    slower.target.durability = Some("fsync".into());
    let b = build_report(&slower, &[]);
    let (pa, pb) = (dir.path().join("a"), dir.path().join("b.json"));
    std::fs::create_dir(&pa).unwrap();
    std::fs::write(
        pa.join("report.json"),
        loadgen::report::json::render(&a).unwrap(),
    )
    .unwrap();
    std::fs::write(&pb, loadgen::report::json::render(&b).unwrap()).unwrap();

    let table = loadgen::compare::compare(&[pa.clone(), pb.clone()]).unwrap();
    let row = |name: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("| {name} |")))
            .unwrap_or_else(|| panic!("{name}: {table}"))
            .to_string()
    };
    assert_eq!(
        row("throughput (msg/s)"),
        "| throughput (msg/s) | 100 | 50 (0.50x) |"
    );
    assert_eq!(
        row("storage (durability)"),
        "| storage (durability) | memory (none) | embedded:/tmp/x (fsync) |"
    );
    assert_eq!(row("lost"), "| lost | 0 | 0 |");
    assert_eq!(
        row("messages acked"),
        "| messages acked | 300 | 300 (1.00x) |"
    );
    assert_eq!(
        row("server memory/connection (bytes)"),
        "| server memory/connection (bytes) | 10000 | 10000 (1.00x) |"
    );
    assert_eq!(row("generator-limited"), "| generator-limited | no | no |");
    assert_eq!(
        row("history p99 (ms)"),
        "| history p99 (ms) | 20.015 | 20.015 (1.00x) |"
    );
    assert_eq!(
        row("history pages read"),
        "| history pages read | 10 | 10 (1.00x) |"
    );
    for name in [
        "scenario",
        "delivery p50 (ms)",
        "delivery p99 (ms)",
        "delivery p99.9 (ms)",
        "ack p50 (ms)",
        "ack p99 (ms)",
        "fan-out p99 (ms)",
        "connect p99 (ms)",
        "sync p99 (ms)",
        "duplicated",
        "reordered",
    ] {
        row(name);
    }
    assert!(
        table.starts_with(&format!("| metric | {} | {} |", pa.display(), pb.display())),
        "{table}"
    );
}

#[test]
fn an_unreadable_report_is_invalid_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.json");
    let garbage = dir.path().join("garbage.json");
    std::fs::write(&garbage, "{not json").unwrap();
    for bad in [missing, garbage] {
        match loadgen::compare::compare(&[bad.clone(), bad.clone()]) {
            Err(LoadgenError::Invalid { path, .. }) => assert_eq!(path, bad.display().to_string()),
            other => panic!("{other:?}"),
        }
    }
}
