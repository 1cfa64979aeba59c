//! `loadgen compare`: side-by-side table with ratios to the first report,
//! short column labels, `n/a` for metrics without samples, differences within
//! noise marked `~` (two identical runs never look apart), and an unreadable
//! file named in the error.

use loadgen::error::LoadgenError;
use loadgen::report::Report;

use crate::report_support::{build_report, synthetic_outcome};

fn row(table: &str, name: &str) -> String {
    table
        .lines()
        .find(|l| l.starts_with(&format!("| {name} |")))
        .unwrap_or_else(|| panic!("{name}: {table}"))
        .to_string()
}

fn save(dir: &std::path::Path, name: &str, r: &Report) -> std::path::PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("report.json"),
        loadgen::report::json::render(r).unwrap(),
    )
    .unwrap();
    d
}

#[test]
fn compare_shows_ratios_to_the_first_report() {
    let dir = tempfile::tempdir().unwrap();
    let a = build_report(&synthetic_outcome(), &[]);
    let mut slower = synthetic_outcome();
    slower.duration_s = 6.0; // same messages over twice the time: half the throughput
    slower.target.storage = "embedded:/tmp/x".into();
    slower.target.durability = Some("fsync: survives a crash".into());
    let b = build_report(&slower, &[]);
    let pa = save(dir.path(), "memory-run", &a);
    let pb = dir.path().join("b.json");
    std::fs::write(&pb, loadgen::report::json::render(&b).unwrap()).unwrap();

    let table = loadgen::compare::compare(&[pa.clone(), pb.clone()]).unwrap();
    // Short labels: the run directory's name, the file's stem.
    assert!(table.starts_with("| metric | memory-run | b |"), "{table}");
    assert!(table.contains(&format!(
        "- memory-run: {}",
        pa.join("report.json").display()
    )));
    assert_eq!(row(&table, "msg/s"), "| msg/s | 100 | 50 (0.50x) |");
    assert_eq!(
        row(&table, "storage"),
        "| storage | memory (none) | embedded:/tmp/x (fsync) |"
    );
    assert_eq!(row(&table, "verdict"), "| verdict | passed | passed |");
    assert_eq!(row(&table, "lost"), "| lost | 0 | 0 |");
    assert_eq!(row(&table, "acked"), "| acked | 300 | 300 (1.00x) |");
    assert_eq!(
        row(&table, "mem/conn (B)"),
        "| mem/conn (B) | 10000 | 10000 (1.00x) |"
    );
    assert_eq!(row(&table, "gen-limited"), "| gen-limited | no | no |");
    assert_eq!(
        row(&table, "history reads"),
        "| history reads | 10 | 10 (1.00x) |"
    );
    // No samples: n/a, never a row of zeros.
    assert_eq!(row(&table, "fan-out p99"), "| fan-out p99 | n/a | n/a |");
    for name in [
        "scenario",
        "delivery p50",
        "delivery p99",
        "delivery p99.9",
        "ack p50",
        "ack p99",
        "connect p99",
        "sync p99",
        "history p50",
        "history p99",
        "duplicated",
        "reordered",
    ] {
        row(&table, name);
    }
}

/// The rule: a percentile's interval comes from its histogram and sample
/// count, so a small difference over few samples is marked, a large one over
/// many is not; counts follow Poisson.
#[test]
fn differences_within_noise_are_marked() {
    let dir = tempfile::tempdir().unwrap();
    let base = synthetic_outcome();
    // Nine delivery samples: p99 is the largest one, 40 ms. A second run whose
    // largest is 70 ms is 1.75x apart, but 9 samples cannot tell the two apart.
    let mut other = synthetic_outcome();
    let h = other.histograms.get_mut("delivery_latency").unwrap();
    h.reset();
    for v in [
        1_000u64, 2_000, 3_000, 1_500, 2_500, 4_000, 5_000, 6_000, 70_000,
    ] {
        h.record(v).unwrap();
    }
    // The ack figures: 300 samples 0.5-1.5 ms; the other run 4x slower.
    let ack = other.histograms.get_mut("ack_latency").unwrap();
    let shifted: Vec<u64> = ack.iter_recorded().map(|v| v.value_iterated_to()).collect();
    ack.reset();
    for v in &shifted {
        ack.record_n(v * 4, 3).unwrap();
    }
    // The interval logs are written from the totals.
    other.intervals.remove("delivery_latency");
    other.intervals.remove("ack_latency");
    let (ra, rb) = (build_report(&base, &[]), build_report(&other, &[]));
    let pa = save(dir.path(), "a", &ra);
    let pb = save(dir.path(), "b", &rb);
    // With the histograms beside the reports, the interval is read from them.
    loadgen::report::hlog::write_all(&base, &pa).unwrap();
    loadgen::report::hlog::write_all(&other, &pb).unwrap();
    let table = loadgen::compare::compare(&[pa.clone(), pb.clone()]).unwrap();
    assert!(row(&table, "delivery p99").contains("x ~)"), "{table}");
    assert!(!row(&table, "ack p50").contains('~'), "{table}");
    assert!(table.contains("`~`: within run-to-run noise"), "{table}");

    // Two identical runs: every ratio 1.00x and nothing to flag.
    let same = loadgen::compare::compare(&[pa.clone(), pa.clone()]).unwrap();
    assert!(!same.contains('~'), "{same}");
    assert!(row(&same, "delivery p99").ends_with("(1.00x) |"), "{same}");

    // Without the .hlog files, a percentile with under 10 samples past it is noise.
    std::fs::remove_file(pb.join("delivery_latency.hlog")).unwrap();
    let table = loadgen::compare::compare(&[pa, pb]).unwrap();
    assert!(row(&table, "delivery p99").contains("x ~)"), "{table}");
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
