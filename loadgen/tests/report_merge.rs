//! Merging run directories: an outcome read back from a directory equals the
//! one written, two shards add up exactly, and the merged report is judged by
//! the first report's thresholds, and `loadgen merge` exits by the merged verdict.

use loadgen::error::LoadgenError;
use loadgen::report::{self, merge};

use crate::report_support::{build_report, synthetic_outcome};

#[test]
fn a_run_directory_reads_back_as_its_outcome() {
    let outcome = synthetic_outcome();
    let report = build_report(&outcome, &[("lost", "== 0")]);
    let dir = tempfile::tempdir().unwrap();
    report::write_all(&report, &outcome, dir.path()).unwrap();

    let (read_report, read) = merge::read_outcome(dir.path()).unwrap();
    assert_eq!(read_report, report);
    for (name, h) in &outcome.histograms {
        assert_eq!(&read.histograms[name], h, "{name}");
    }
    let intervals = |o: &loadgen::outcome::Outcome| {
        o.intervals["delivery_latency"]
            .iter()
            .map(|iv| (iv.start_ms, iv.duration_ms, iv.histogram.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(intervals(&read), intervals(&outcome));
    assert_eq!(read.generator.lag, outcome.generator.lag);
    assert_eq!(read.counters, outcome.counters);
    assert_eq!(read.audit, outcome.audit);
    assert_eq!(read.memory, outcome.memory);
}

#[test]
fn two_shards_merge_exactly() {
    let outcome = synthetic_outcome();
    let report = build_report(
        &outcome,
        &[("delivery_latency.count", "== 18"), ("lost", "== 0")],
    );
    let (a, b, out) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    report::write_all(&report, &outcome, a.path()).unwrap();
    report::write_all(&report, &outcome, b.path()).unwrap();

    let merged = merge::merge(
        &[a.path().to_path_buf(), b.path().to_path_buf()],
        out.path(),
        None,
    )
    .unwrap();
    assert_eq!(merged.metrics.latency["delivery_latency"].count, 18);
    assert_eq!(merged.metrics.messages_acked, 600);
    assert_eq!(merged.metrics.peak_connections, 2_000);
    assert_eq!(merged.errors["rate_limited"], 4);
    // The first report's thresholds, judged again: 9 samples each, 18 merged.
    let exprs: Vec<(&str, bool)> = merged
        .thresholds
        .iter()
        .map(|t| (t.expr.as_str(), t.passed))
        .collect();
    assert_eq!(
        exprs,
        [("delivery_latency.count == 18", true), ("lost == 0", true)]
    );
    assert!(merged.passed);
    assert!(merged.run.command.starts_with("loadgen merge "));
    assert!(
        out.path().join("report.json").is_file()
            && out.path().join("delivery_latency.hlog").is_file()
    );
    // The merged interval log holds both shards' samples.
    let logged = merge::read_hlog(&out.path().join("delivery_latency.hlog")).unwrap();
    assert_eq!(logged.iter().map(|iv| iv.histogram.len()).sum::<u64>(), 18);
}

#[test]
fn a_directory_missing_a_log_is_invalid_and_named() {
    let outcome = synthetic_outcome();
    let dir = tempfile::tempdir().unwrap();
    report::write_all(&build_report(&outcome, &[]), &outcome, dir.path()).unwrap();
    let log = dir.path().join("sync_latency.hlog");
    std::fs::remove_file(&log).unwrap();
    match merge::read_outcome(dir.path()) {
        Err(LoadgenError::Invalid { path, .. }) => assert_eq!(path, log.display().to_string()),
        other => panic!("{:?}", other.map(|_| ())),
    }
}

/// Run directories written before history reads existed have no
/// `history_latency.hlog`: they still read back, with no history samples.
#[test]
fn a_directory_from_before_history_reads_still_reads_back() {
    let outcome = synthetic_outcome();
    let dir = tempfile::tempdir().unwrap();
    report::write_all(&build_report(&outcome, &[]), &outcome, dir.path()).unwrap();
    std::fs::remove_file(dir.path().join("history_latency.hlog")).unwrap();
    let (_, read) = merge::read_outcome(dir.path()).unwrap();
    assert!(read.histograms["history_latency"].is_empty());
    assert_eq!(
        read.histograms["delivery_latency"],
        outcome.histograms["delivery_latency"]
    );
}

/// `loadgen merge` exits like `run`: by the merged report's verdict. A shard
/// that was cut short makes the whole merge incomplete (exit 3); a threshold
/// the merged figures fail is exit 1; otherwise 0.
#[test]
fn merge_exits_by_the_merged_verdict() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let outcome = synthetic_outcome();
    let report = build_report(&outcome, &[("lost", "== 0")]);
    report::write_all(&report, &outcome, dirs[0].path()).unwrap();
    report::write_all(&report, &outcome, dirs[1].path()).unwrap();
    let mut cut = synthetic_outcome();
    cut.interrupted = true;
    report::write_all(
        &build_report(&cut, &[("lost", "== 0")]),
        &cut,
        dirs[2].path(),
    )
    .unwrap();
    let strict = tempfile::tempdir().unwrap();
    let failing = build_report(&outcome, &[("delivery_latency.p99", "< 1ms")]);
    report::write_all(&failing, &outcome, strict.path()).unwrap();

    let out = tempfile::tempdir().unwrap();
    let merge_exit = |inputs: &[&std::path::Path]| {
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
            .arg("merge")
            .args(inputs)
            .arg("--out")
            .arg(out.path())
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        let merged: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.path().join("report.json")).unwrap())
                .unwrap();
        (
            status.code(),
            merged["verdict"].as_str().unwrap().to_string(),
        )
    };
    assert_eq!(
        merge_exit(&[dirs[0].path(), dirs[1].path()]),
        (Some(0), "passed".to_string())
    );
    assert_eq!(
        merge_exit(&[dirs[0].path(), dirs[2].path()]),
        (Some(3), "incomplete".to_string())
    );
    assert_eq!(
        merge_exit(&[strict.path(), dirs[1].path()]),
        (Some(1), "failed".to_string())
    );
    assert!(out.path().join("report.junit.xml").is_file());
}
