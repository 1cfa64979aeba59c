//! History reads (`history_rate`): a short run against a real server records
//! `history_latency` samples and pages, and a negative rate is exit 2 naming
//! the key.

use crate::engine_support::{opts, run, scenario, target, Fault, SMALL};

fn num(report: &serde_json::Value, pointer: &str) -> f64 {
    report
        .pointer(pointer)
        .and_then(serde_json::Value::as_f64)
        .unwrap_or_else(|| panic!("{pointer} in {report}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_with_history_rate_records_history_latency() {
    let t = target(Fault::None).await;
    let dir = tempfile::tempdir().unwrap();
    let body = format!("{SMALL}\n[[phase]]\nname = \"ramp\"\nduration = \"300ms\"\nonline = 8\n\n[[phase]]\nname = \"steady\"\nduration = \"2s\"\nonline = 8\nmessage_rate = \"40/s\"\nhistory_rate = \"30/s\"\n\n[thresholds]\n\"lost\" = \"== 0\"\n");
    let path = scenario(dir.path(), "history", Some(&t.url), &body);
    let (code, r) = run(opts(path, dir.path().join("out"))).await;
    assert_eq!(code, 0, "{r}");
    let reads = num(&r, "/counters/history_reads");
    assert!(reads > 20.0, "pages read: {}", r["counters"]);
    assert_eq!(num(&r, "/metrics/history_latency/count"), reads);
    assert!(num(&r, "/metrics/history_latency/p99_ms") > 0.0);
    // Pages hold the messages the run sent (the newest page of a busy channel).
    assert!(
        num(&r, "/counters/history_messages") > 0.0,
        "{}",
        r["counters"]
    );
    assert_eq!(num(&r, "/phases/1/history_rate"), 30.0);
    assert!(num(&r, "/phases/1/history_reads") > 0.0, "{}", r["phases"]);
    assert!(
        !r["errors"]
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.starts_with("history_")),
        "{}",
        r["errors"]
    );
    assert!(dir.path().join("out/history_latency.hlog").exists());
    t.server.stop().await.unwrap();
}

#[tokio::test]
async fn a_negative_history_rate_is_exit_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = scenario(
        dir.path(),
        "negative",
        None,
        "[[phase]]\nduration = \"1s\"\n[[phase]]\nduration = \"1s\"\nhistory_rate = \"-5/s\"\n",
    );
    let (code, msg) = run(opts(path, dir.path().join("out"))).await;
    assert_eq!(code, 2, "{msg}");
    assert!(
        msg.as_str().unwrap().contains("phase[1].history_rate"),
        "{msg}"
    );
}
