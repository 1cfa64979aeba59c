//! `write_all`: every file is written; the interval logs read back with
//! HdrHistogram's own parser with every recorded count intact; the HTML is
//! self-contained; the Markdown carries the sections a reviewer reads.

use std::io::Cursor;

use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;
use loadgen::outcome::LATENCY_METRICS;

use crate::report_support::{base64_decode, build_report, synthetic_outcome, DELIVERY_INTERVALS};

/// One interval of a log: start and duration in seconds, and its histogram.
type LoggedInterval = (f64, f64, Histogram<u64>);

/// Reads an interval log: its BaseTime (seconds) and its intervals.
fn read_hlog(bytes: &[u8]) -> (Option<f64>, Vec<LoggedInterval>) {
    let mut base = None;
    let mut out = Vec::new();
    for entry in IntervalLogIterator::new(bytes) {
        match entry.expect("the log parses") {
            LogEntry::BaseTime(t) => base = Some(t.as_secs_f64()),
            LogEntry::StartTime(_) => {}
            LogEntry::Interval(iv) => {
                let raw = base64_decode(iv.encoded_histogram());
                let h: Histogram<u64> = Deserializer::new()
                    .deserialize(&mut Cursor::new(raw))
                    .unwrap();
                out.push((
                    iv.start_timestamp().as_secs_f64(),
                    iv.duration().as_secs_f64(),
                    h,
                ));
            }
        }
    }
    (base, out)
}

#[test]
fn interval_logs_round_trip_through_hdrhistogram() {
    let outcome = synthetic_outcome();
    let report = build_report(&outcome, &[]);
    let dir = tempfile::tempdir().unwrap();
    loadgen::report::write_all(&report, &outcome, dir.path()).unwrap();

    for (metric, _) in LATENCY_METRICS {
        assert!(
            dir.path().join(format!("{metric}.hlog")).is_file(),
            "{metric}.hlog"
        );
    }
    let text = std::fs::read(dir.path().join("delivery_latency.hlog")).unwrap();
    let (base, intervals) = read_hlog(&text);
    assert_eq!(base, Some(1_700_000_000.0));
    assert_eq!(intervals.len(), DELIVERY_INTERVALS.len());
    for (i, ((start, duration, h), values)) in intervals.iter().zip(DELIVERY_INTERVALS).enumerate()
    {
        assert_eq!((*start, *duration), (i as f64, 1.0));
        assert_eq!(h.len(), values.len() as u64, "interval {i}");
        for v in values {
            assert_eq!(
                h.count_at(*v),
                values.iter().filter(|x| h.equivalent(**x, *v)).count() as u64
            );
        }
        assert_eq!(h, &outcome.intervals["delivery_latency"][i].histogram);
    }

    // A metric with a total histogram but no intervals becomes one interval.
    let (_, connect) = read_hlog(&std::fs::read(dir.path().join("connect_latency.hlog")).unwrap());
    assert_eq!(connect.len(), 1);
    assert_eq!(connect[0].2.len(), 3);
    // A metric with nothing recorded is a header-only log.
    let (_, presence) =
        read_hlog(&std::fs::read(dir.path().join("presence_latency.hlog")).unwrap());
    assert!(presence.is_empty());
}

#[test]
fn html_is_self_contained_and_markdown_has_its_sections() {
    let outcome = synthetic_outcome();
    let report = build_report(&outcome, &[("delivery_latency.p99", "< 1ms")]);
    let dir = tempfile::tempdir().unwrap();
    loadgen::report::write_all(&report, &outcome, dir.path()).unwrap();

    let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
    assert!(
        !html.contains("<script") && !html.contains("<link") && !html.contains("src="),
        "nothing external"
    );
    assert!(
        html.matches("<svg").count() >= 5,
        "latency over time x2, connections, memory, distribution"
    );
    assert!(html.contains("delivery_latency per interval") && html.contains("FAILED"));

    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    for section in [
        "# synthetic: FAILED",
        "## Thresholds",
        "## Latency (ms)",
        "## Throughput",
        "## Audit",
        "## Provisioning",
        "## Generator health",
        "## Projection",
    ] {
        assert!(md.contains(section), "report.md lacks {section:?}");
    }
    assert!(
        md.contains("| **FAIL** | `delivery_latency.p99 < 1ms` |"),
        "{md}"
    );

    let json = loadgen::report::json::read(dir.path()).unwrap();
    assert_eq!(json, report);

    let summary = loadgen::report::summary(&report);
    assert!(summary.starts_with("FAILED: synthetic"), "{summary}");
    assert!(
        summary.contains("delivery: p50") && summary.contains("0 lost, 0 duplicated, 0 reordered"),
        "{summary}"
    );
}
