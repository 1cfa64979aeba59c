//! The baseline gate: the same run passes against itself, a latency, audit or
//! throughput regression fails with its own row, sub-millisecond noise does
//! not, and a missing or malformed baseline is `Invalid { path: "--baseline" }`.

use std::path::Path;

use loadgen::error::LoadgenError;
use loadgen::outcome::Outcome;
use loadgen::projection::ProjectionConfig;
use loadgen::report::{self, Report};

use crate::report_support::{build_report, run_info, synthetic_outcome, thresholds};

fn gated(outcome: &Outcome, baseline: &Path) -> Result<Report, LoadgenError> {
    report::build(
        &run_info(),
        &thresholds(&[]),
        &ProjectionConfig::default(),
        outcome,
        Some(baseline),
    )
}

fn save(dir: &Path, report: &Report) -> std::path::PathBuf {
    let path = dir.join("baseline.json");
    std::fs::write(&path, report::json::render(report).unwrap()).unwrap();
    path
}

#[test]
fn a_run_passes_against_itself() {
    let dir = tempfile::tempdir().unwrap();
    let base = save(dir.path(), &build_report(&synthetic_outcome(), &[]));
    let r = gated(&synthetic_outcome(), &base).unwrap();
    assert!(r.passed, "{:#?}", r.thresholds);
    let exprs: Vec<&str> = r.thresholds.iter().map(|t| t.expr.as_str()).collect();
    assert_eq!(
        exprs,
        [
            "delivery_latency.p99 <= baseline*1.25",
            "ack_latency.p99 <= baseline*1.25",
            "throughput >= baseline*0.9",
            "lost <= baseline",
            "duplicated <= baseline",
            "reordered <= baseline"
        ]
    );
    assert_eq!(r.run.baseline.as_deref(), Some(base.to_str().unwrap()));
}

#[test]
fn regressions_fail_their_rows() {
    let dir = tempfile::tempdir().unwrap();
    let base = save(dir.path(), &build_report(&synthetic_outcome(), &[]));

    // Delivery p99 40 ms -> 80 ms: worse by 100% and by 40 ms.
    let mut slow = synthetic_outcome();
    slow.histograms
        .get_mut("delivery_latency")
        .unwrap()
        .record(80_000)
        .unwrap();
    for _ in 0..20 {
        slow.histograms
            .get_mut("delivery_latency")
            .unwrap()
            .record(80_000)
            .unwrap();
    }
    let r = gated(&slow, &base).unwrap();
    assert!(!r.passed);
    let failed: Vec<&str> = r
        .thresholds
        .iter()
        .filter(|t| !t.passed)
        .map(|t| t.expr.as_str())
        .collect();
    assert_eq!(failed, ["delivery_latency.p99 <= baseline*1.25"]);

    // One lost message more than the baseline.
    let mut lossy = synthetic_outcome();
    lossy.audit.lost = 1;
    let failed: Vec<String> = gated(&lossy, &base)
        .unwrap()
        .thresholds
        .into_iter()
        .filter(|t| !t.passed)
        .map(|t| t.expr)
        .collect();
    assert_eq!(failed, ["lost <= baseline"]);

    // Half the throughput.
    let mut slower = synthetic_outcome();
    slower.duration_s = 6.0;
    let failed: Vec<String> = gated(&slower, &base)
        .unwrap()
        .thresholds
        .into_iter()
        .filter(|t| !t.passed)
        .map(|t| t.expr)
        .collect();
    assert_eq!(failed, ["throughput >= baseline*0.9"]);
}

#[test]
fn sub_millisecond_noise_does_not_fail() {
    // Ack p99 about 1.5 ms: +50% is still within the 1 ms floor.
    let dir = tempfile::tempdir().unwrap();
    let base = save(dir.path(), &build_report(&synthetic_outcome(), &[]));
    let mut noisy = synthetic_outcome();
    for _ in 0..100 {
        noisy
            .histograms
            .get_mut("ack_latency")
            .unwrap()
            .record(2_200)
            .unwrap();
    }
    let r = gated(&noisy, &base).unwrap();
    let ack = r
        .thresholds
        .iter()
        .find(|t| t.expr.starts_with("ack_latency"))
        .unwrap();
    assert!(
        ack.value > ack.limit / 1.25 * 1.25 - 0.5 && ack.value > 1.9 && ack.passed,
        "{ack:?}"
    );
}

#[test]
fn a_missing_or_malformed_baseline_is_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let not_json = dir.path().join("bad.json");
    std::fs::write(&not_json, "[1, 2").unwrap();
    let not_report = dir.path().join("other.json");
    std::fs::write(&not_report, r#"{"metrics": {"lost": 0}}"#).unwrap();
    for bad in [dir.path().join("missing.json"), not_json, not_report] {
        // Checked before a run as well as after it.
        assert!(matches!(
            report::baseline::Baseline::load(&bad),
            Err(LoadgenError::Invalid { .. })
        ));
        match gated(&synthetic_outcome(), &bad) {
            Err(LoadgenError::Invalid { path, reason }) => {
                assert_eq!(path, "--baseline");
                assert!(reason.contains(&bad.display().to_string()), "{reason}");
            }
            other => panic!("{}: {other:?}", bad.display()),
        }
    }
}
