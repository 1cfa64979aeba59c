//! End-to-end runs of the engine against a real server: exit statuses 0/1/2/3,
//! the audit catching each fault the proxy injects (and nothing on a clean
//! run), the open model keeping its rate through a stalled server, the
//! embedded server started as a child of the real binary, and `--workers`.

use std::time::Duration;

use crate::engine_support::{
    assert_embedded_server_stopped, opts, run, scenario, target, Fault, SMALL,
};

fn steady(rate: &str, secs: u32, disconnects: &str) -> String {
    format!("{SMALL}\n[[phase]]\nname = \"ramp\"\nduration = \"300ms\"\nonline = 8\n\n[[phase]]\nname = \"steady\"\nduration = \"{secs}s\"\nonline = 8\nmessage_rate = \"{rate}\"\ndisconnect_rate = \"{disconnects}\"\n")
}

fn num(report: &serde_json::Value, path: &[&str]) -> f64 {
    let mut v = report;
    for p in path {
        v = &v[*p];
    }
    v.as_f64().unwrap_or_else(|| panic!("{path:?} in {report}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_run_passes_with_nothing_lost_duplicated_or_reordered() {
    let t = target(Fault::None).await;
    let dir = tempfile::tempdir().unwrap();
    let body = format!("{}\n[thresholds]\n\"lost\" = \"== 0\"\n\"duplicated\" = \"== 0\"\n\"reordered\" = \"== 0\"\n", steady("40/s", 3, "2/s"));
    let path = scenario(dir.path(), "clean", Some(&t.url), &body);
    let (code, r) = run(opts(path, dir.path().join("out"))).await;
    assert_eq!(code, 0, "{r}");
    assert!(num(&r, &["metrics", "messages_acked"]) > 50.0);
    assert!(num(&r, &["metrics", "deliveries"]) > 50.0);
    for k in ["lost", "duplicated", "reordered"] {
        assert_eq!(num(&r, &["metrics", k]), 0.0, "{k}: {}", r["audit"]);
    }
    assert!(num(&r, &["audit", "deliveries_expected"]) > num(&r, &["audit", "messages_checked"]));
    assert!(num(&r, &["counters", "disconnects"]) > 0.0);
    assert!(num(&r, &["counters", "reconnects"]) > 0.0);
    assert!(num(&r, &["counters", "heartbeats"]) > 0.0);
    assert!(num(&r, &["metrics", "delivery_latency", "count"]) > 0.0);
    assert!(num(&r, &["metrics", "fanout_latency", "count"]) > 0.0);
    for m in [
        "ack_latency",
        "connect_latency",
        "sync_latency",
        "presence_latency",
    ] {
        assert!(num(&r, &["metrics", m, "count"]) > 0.0, "{m} recorded");
    }
    assert!(num(&r, &["counters", "presence_frames"]) > 0.0);
    for f in [
        "report.json",
        "report.md",
        "report.html",
        "delivery_latency.hlog",
    ] {
        assert!(dir.path().join("out").join(f).exists(), "{f}");
    }
    t.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_counts_messages_the_server_lost() {
    let t = target(Fault::Drop(4)).await;
    let dir = tempfile::tempdir().unwrap();
    let path = scenario(dir.path(), "drop", Some(&t.url), &steady("40/s", 2, "0/s"));
    let (_, r) = run(opts(path, dir.path().join("out"))).await;
    assert!(num(&r, &["metrics", "lost"]) > 0.0, "{}", r["audit"]);
    assert!(r["audit"]["examples"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["kind"] == "lost"));
    t.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_counts_duplicated_frames() {
    let t = target(Fault::Duplicate(3)).await;
    let dir = tempfile::tempdir().unwrap();
    let path = scenario(dir.path(), "dup", Some(&t.url), &steady("40/s", 2, "0/s"));
    let (_, r) = run(opts(path, dir.path().join("out"))).await;
    assert!(num(&r, &["metrics", "duplicated"]) > 0.0, "{}", r["audit"]);
    assert_eq!(
        num(&r, &["metrics", "lost"]),
        0.0,
        "duplicates are not losses"
    );
    t.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_counts_reordered_frames() {
    let t = target(Fault::Reorder(2)).await;
    let dir = tempfile::tempdir().unwrap();
    let path = scenario(
        dir.path(),
        "reorder",
        Some(&t.url),
        &steady("60/s", 2, "0/s"),
    );
    let (_, r) = run(opts(path, dir.path().join("out"))).await;
    assert!(num(&r, &["metrics", "reordered"]) > 0.0, "{}", r["audit"]);
    assert_eq!(
        num(&r, &["metrics", "lost"]),
        0.0,
        "reordered frames still arrive"
    );
    t.server.stop().await.unwrap();
}

/// Open model: a server that stalls for 2 s gets the same sends (the number
/// the seed schedules) and the stall shows up as latency, not as fewer sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_keeps_its_rate_while_the_server_stalls() {
    let hold = Duration::from_secs(2);
    let t = target(Fault::Stall {
        after: Duration::from_millis(1000),
        hold,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let path = scenario(dir.path(), "stall", Some(&t.url), &steady("50/s", 4, "0/s"));
    let (_, r) = run(opts(path, dir.path().join("out"))).await;
    let scheduled = num(&r, &["counters", "messages_scheduled"]);
    let planned = loadgen::engine::schedule::planned_arrivals(7, 50.0, Duration::from_secs(4));
    assert_eq!(
        scheduled as u64, planned,
        "every arrival the seed plans is issued"
    );
    assert_eq!(
        num(&r, &["counters", "messages_sent"]),
        scheduled,
        "sends do not wait for answers"
    );
    // Acks held by the stall are late by up to the hold: measured from the
    // scheduled time, the worst ack latency includes most of it.
    assert!(
        num(&r, &["metrics", "ack_latency", "max_ms"]) >= 1000.0,
        "{}",
        r["metrics"]["ack_latency"]
    );
    assert_eq!(num(&r, &["metrics", "lost"]), 0.0);
    t.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impossible_threshold_exits_1() {
    let t = target(Fault::None).await;
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "{}\n[thresholds]\n\"delivery_latency.p99\" = \"< 0.001ms\"\n",
        steady("20/s", 1, "0/s")
    );
    let path = scenario(dir.path(), "impossible", Some(&t.url), &body);
    let (code, r) = run(opts(path, dir.path().join("out"))).await;
    assert_eq!(code, 1, "{r}");
    assert_eq!(r["passed"], false);
    t.server.stop().await.unwrap();
}

#[tokio::test]
async fn an_unreachable_target_exits_3_and_bad_input_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = scenario(dir.path(), "unreachable", None, &steady("1/s", 1, "0/s"));
    let mut o = opts(path.clone(), dir.path().join("out"));
    o.target = Some("http://127.0.0.1:1".into());
    let (code, msg) = run(o).await;
    assert_eq!(code, 3, "{msg}");
    assert!(msg.as_str().unwrap().contains("unreachable"), "{msg}");

    let mut o = opts(path.clone(), dir.path().join("out"));
    o.workers = 9;
    assert_eq!(run(o).await.0, 2, "more workers than the 8 users");
    let mut o = opts(path.clone(), dir.path().join("out"));
    o.target = Some("http://:80".into());
    assert_eq!(run(o).await.0, 2, "a target names a host");
    // More devices than one process may open sockets for: refused before it starts.
    let huge = scenario(
        dir.path(),
        "huge",
        None,
        "[population]\nusers = 10000000\ndevices = { 10 = 1.0 }\n[[phase]]\nduration = \"1s\"\n",
    );
    let (code, msg) = run(opts(huge, dir.path().join("out"))).await;
    assert_eq!(code, 3, "{msg}");
    assert!(msg.as_str().unwrap().contains("file descriptors"), "{msg}");
    let bad = scenario(
        dir.path(),
        "bad",
        None,
        "[[phase]]\nduration = \"1s\"\nmessage_rate = \"-5/s\"\n",
    );
    let (code, msg) = run(opts(bad, dir.path().join("out"))).await;
    assert_eq!(code, 2);
    assert!(
        msg.as_str().unwrap().contains("phase[0].message_rate"),
        "{msg}"
    );
}

/// The real binary with no target: it starts the server as its own child,
/// runs, writes the report and stops the child.
#[test]
fn the_binary_runs_the_embedded_server_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "{}\n[thresholds]\n\"lost\" = \"== 0\"\n",
        steady("20/s", 2, "1/s")
    );
    let path = scenario(dir.path(), "embedded", None, &body);
    let out = dir.path().join("out");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "run",
            path.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .env("RUST_LOG", "warn")
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(r["verdict"], "passed", "{}", r["verdict_reason"]);
    assert!(out.join("report.junit.xml").is_file());
    assert_eq!(r["target"]["embedded"], true);
    assert!(num(&r, &["metrics", "messages_acked"]) > 0.0);
    assert!(
        r["memory"].as_array().is_some_and(|m| !m.is_empty()),
        "server memory sampled"
    );
}

/// `--workers 2`: two worker processes share the users; the parent merges
/// their outcomes into one report, audited as a whole.
#[test]
fn two_workers_merge_into_one_report() {
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "{}\n[thresholds]\n\"lost\" = \"== 0\"\n",
        steady("30/s", 2, "1/s")
    );
    let path = scenario(dir.path(), "workers", None, &body);
    let out = dir.path().join("out");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "run",
            path.to_str().unwrap(),
            "--workers",
            "2",
            "--out",
            out.to_str().unwrap(),
        ])
        .env("RUST_LOG", "warn")
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let read = |p: std::path::PathBuf| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    let r = read(out.join("report.json"));
    let w0 = read(out.join("workers/worker-0/report.json"));
    let w1 = read(out.join("workers/worker-1/report.json"));
    let acked = |r: &serde_json::Value| num(r, &["metrics", "messages_acked"]);
    assert!(acked(&w0) > 0.0 && acked(&w1) > 0.0, "both workers sent");
    assert_eq!(acked(&r), acked(&w0) + acked(&w1), "counters add");
    // One global schedule, split by owner: together the workers issue exactly
    // the arrivals one process would.
    let planned = loadgen::engine::schedule::planned_arrivals(7, 30.0, Duration::from_secs(2));
    assert_eq!(
        num(&r, &["counters", "messages_scheduled"]) as u64,
        planned,
        "{}",
        r["counters"]
    );
    assert_eq!(
        num(&r, &["metrics", "delivery_latency", "count"]),
        num(&w0, &["metrics", "delivery_latency", "count"])
            + num(&w1, &["metrics", "delivery_latency", "count"]),
        "histograms add"
    );
    assert_eq!(num(&r, &["metrics", "lost"]), 0.0);
    assert!(num(&r, &["audit", "messages_checked"]) > 0.0);
}

/// The first Ctrl-C (SIGINT) ends the phases early, still audits and writes
/// the report, and stops the embedded server.
#[test]
fn ctrl_c_stops_the_run_and_still_writes_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "{}\n[thresholds]\n\"lost\" = \"== 0\"\n",
        steady("20/s", 60, "0/s")
    );
    let path = scenario(dir.path(), "interrupted", None, &body);
    let out = dir.path().join("out");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "run",
            path.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(4));
    let kill = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    // Bounded wait: the run must end long before its 60 s phase would.
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(40),
            "still running after Ctrl-C"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    // Interrupted: the report is written, but it is not the run the scenario
    // describes: incomplete, exit 3, never a pass.
    assert_eq!(status.code(), Some(3));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(r["verdict"], "incomplete", "{}", r["verdict_reason"]);
    assert_eq!(r["passed"], false);
    assert_eq!(r["run"]["interrupted"], true);
    assert!(
        num(&r, &["run", "duration_s"]) < 30.0,
        "the phases ended early"
    );
    assert!(num(&r, &["metrics", "messages_acked"]) > 0.0);
    assert_embedded_server_stopped(&r);
}

/// A generator that cannot keep its schedule (here: a lag bound no timer can
/// meet) says so in the report and exits 3, so it is never taken for a slow server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generator_limited_run_exits_3() {
    let t = target(Fault::None).await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "name = \"limited\"\n[target]\nurl = \"{}\"\n{SMALL}\n[generator]\nmax_lag = \"1us\"\ndrain = \"200ms\"\n[[phase]]\nduration = \"1s\"\nonline = 8\nmessage_rate = \"20/s\"\n",
        t.url
    );
    let path = dir.path().join("limited.toml");
    std::fs::write(&path, text).unwrap();
    let (code, r) = run(opts(path, dir.path().join("out"))).await;
    assert_eq!(code, 3, "{r}");
    assert_eq!(r["generator"]["limited"], true);
    t.server.stop().await.unwrap();
}

/// Sends drawn from the first instant, while devices are still connecting: no
/// error code for them (smoke once showed `1 errors`, `no_sender_online`);
/// a send waits for a connected sender, and one drawn while nobody was
/// online is counted apart (`sends_before_online`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_from_the_first_instant_are_not_errors() {
    let t = target(Fault::None).await;
    let dir = tempfile::tempdir().unwrap();
    let body = format!("{SMALL}\n[[phase]]\nname = \"at-once\"\nduration = \"1s\"\nonline = 8\nmessage_rate = \"200/s\"\n");
    let path = scenario(dir.path(), "at-once", Some(&t.url), &body);
    let (code, r) = run(opts(path, dir.path().join("out"))).await;
    assert!(code == 0 || code == 3, "{code}: {r}");
    assert_eq!(r["errors"], serde_json::json!({}), "{}", r["errors"]);
    assert!(num(&r, &["metrics", "messages_acked"]) > 0.0);
    assert!(num(&r, &["counters", "sends_before_online"]) >= 0.0);
    t.server.stop().await.unwrap();
}
