//! The per-device audit and the generator's honesty, through a fault-injecting
//! proxy: live frames dropped (sync intact) are counted pair by pair, a send
//! stored twice is a duplicate, an inbox the audit cannot read makes the run
//! incomplete (exit 3), a saturated generator and an unusable source address
//! are the generator's limit (exit 3), and connections spread over several
//! source addresses.

use std::time::Duration;

use crate::engine_support::{opts, run, scenario, target, Fault, SMALL};

fn steady(rate: &str, secs: u32) -> String {
    format!("{SMALL}\n[[phase]]\nname = \"ramp\"\nduration = \"300ms\"\nonline = 8\n\n[[phase]]\nname = \"steady\"\nduration = \"{secs}s\"\nonline = 8\nmessage_rate = \"{rate}\"\n")
}

fn num(report: &serde_json::Value, path: &[&str]) -> u64 {
    let mut v = report;
    for p in path {
        v = &v[*p];
    }
    v.as_u64().unwrap_or_else(|| panic!("{path:?} in {report}"))
}

/// Every (message, device) pair lands in exactly one class.
fn classes_add_up(r: &serde_json::Value) {
    let m = |k: &str| num(r, &["metrics", k]);
    assert_eq!(
        m("delivered_live") + m("recovered") + m("undelivered") + m("awaiting_sync") + m("lost"),
        m("deliveries_expected"),
        "{}",
        r["audit"]
    );
}

/// The proxy drops live `message` frames (a third of them) and leaves sync
/// answers alone: nothing is lost from storage, and each dropped pair is
/// counted exactly once, as recovered by a gap sync or undelivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_live_frames_are_counted_pair_by_pair() {
    let t = target(Fault::DropLive(3)).await;
    let dir = tempfile::tempdir().unwrap();
    let body = format!("{}\n[thresholds]\n\"lost\" = \"== 0\"\n", steady("40/s", 2));
    let path = scenario(dir.path(), "droplive", Some(&t.url), &body);
    let (_, r) = run(opts(path, dir.path().join("out"))).await;
    let dropped = t.dropped.load(std::sync::atomic::Ordering::Relaxed);
    assert!(dropped > 0, "the proxy dropped frames");
    assert_eq!(num(&r, &["metrics", "lost"]), 0, "{}", r["audit"]);
    assert_eq!(
        num(&r, &["metrics", "undelivered"]) + num(&r, &["metrics", "recovered"]),
        dropped,
        "{}",
        r["audit"]
    );
    assert_eq!(num(&r, &["metrics", "awaiting_sync"]), 0);
    classes_add_up(&r);
    t.server.stop().await.unwrap();
}

/// A send the server stored twice (the proxy forwards a re-stamped copy, as
/// a server whose dedupe failed after a resend would store it) is duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_stored_twice_is_duplicated() {
    let t = target(Fault::StoreTwice(4)).await;
    let dir = tempfile::tempdir().unwrap();
    let path = scenario(dir.path(), "twice", Some(&t.url), &steady("40/s", 2));
    let (code, r) = run(opts(path, dir.path().join("out"))).await;
    assert!(num(&r, &["metrics", "duplicated"]) > 0, "{}", r["audit"]);
    assert_eq!(num(&r, &["metrics", "lost"]), 0);
    assert!(
        r["audit"]["examples"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "duplicated"),
        "{}",
        r["audit"]
    );
    assert_eq!(code, 0, "no threshold on duplicated here");
    t.server.stop().await.unwrap();
}

/// The proxy refuses connections once the phases are over: the audit cannot
/// read any inbox, so it is incomplete, the run exits 3 and does not pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_inbox_makes_the_audit_incomplete() {
    let t = target(Fault::RefuseAfter(Duration::from_millis(1500))).await;
    let dir = tempfile::tempdir().unwrap();
    let body = format!("{}\n[thresholds]\n\"lost\" = \"== 0\"\n", steady("20/s", 1));
    let path = scenario(dir.path(), "unreadable", Some(&t.url), &body);
    let (code, r) = run(opts(path, dir.path().join("out"))).await;
    assert_eq!(code, 3, "{}", r["audit"]);
    assert_eq!(r["audit"]["incomplete"], true);
    assert!(
        r["audit"]["incomplete_reason"]
            .as_str()
            .unwrap()
            .contains("could not be read"),
        "{}",
        r["audit"]
    );
    assert_eq!(r["passed"], false);
    t.server.stop().await.unwrap();
}

/// The server closes every connection once (1001, as one shedding load
/// would): the devices reconnect and catch up, and that catch-up is timed as
/// `recovery_latency` instead of vanishing from every histogram.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_initiated_close_is_timed_as_recovery() {
    let t = target(Fault::CloseAt(Duration::from_millis(1000))).await;
    let dir = tempfile::tempdir().unwrap();
    let path = scenario(dir.path(), "shed", Some(&t.url), &steady("30/s", 2));
    let (_, r) = run(opts(path, dir.path().join("out"))).await;
    assert!(
        num(&r, &["counters", "server_closes"]) > 0,
        "{}",
        r["counters"]
    );
    assert!(
        num(&r, &["metrics", "recovery_latency", "count"]) > 0,
        "{}",
        r["metrics"]["recovery_latency"]
    );
    assert!(
        r["errors"]["closed_1001"].as_u64().unwrap_or(0) > 0,
        "{}",
        r["errors"]
    );
    assert_eq!(num(&r, &["metrics", "lost"]), 0);
    classes_add_up(&r);
    t.server.stop().await.unwrap();
}

/// A send rate far past what the generator can write (1,000,000/s from 13
/// devices): the sends go out late, `send_delay` shows it and the run is
/// generator-limited (exit 3), not a slow server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_generator_is_detected() {
    let t = target(Fault::None).await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "name = \"saturated\"\nseed = 3\n[target]\nurl = \"{}\"\n{SMALL}\n[generator]\nmax_lag = \"20ms\"\ndrain = \"500ms\"\n[[phase]]\nname = \"ramp\"\nduration = \"300ms\"\nonline = 8\n[[phase]]\nname = \"flood\"\nduration = \"300ms\"\nonline = 8\nmessage_rate = \"1000000/s\"\n",
        t.url
    );
    let path = dir.path().join("saturated.toml");
    std::fs::write(&path, text).unwrap();
    let (code, r) = run(opts(path, dir.path().join("out"))).await;
    assert_eq!(code, 3, "{}", r["generator"]);
    assert_eq!(r["generator"]["limited"], true);
    assert!(
        r["generator"]["send_delay_p99_ms"].as_f64().unwrap() > 20.0,
        "{}",
        r["generator"]
    );
    assert!(r["generator"]["limited_reason"]
        .as_str()
        .unwrap()
        .contains("send delay"));
    t.server.stop().await.unwrap();
}

/// A source address the machine does not have (EADDRNOTAVAIL): the
/// generator's limit, named, never `connect` errors charged to the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_source_address_is_the_generators_limit() {
    let t = target(Fault::None).await;
    let dir = tempfile::tempdir().unwrap();
    let path = scenario(dir.path(), "badsource", Some(&t.url), &steady("5/s", 1));
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "[generator]\n",
        "[generator]\nsource_addresses = [\"192.0.2.1\"]\n",
    );
    std::fs::write(&path, text).unwrap();
    let (code, r) = run(opts(path, dir.path().join("out"))).await;
    assert_eq!(code, 3, "{}", r["generator"]);
    assert_eq!(
        num(&r, &["counters", "connect_errors"]),
        0,
        "{}",
        r["errors"]
    );
    assert!(
        r["generator"]["exhausted"]
            .as_str()
            .unwrap()
            .contains("192.0.2.1"),
        "{}",
        r["generator"]
    );
    t.server.stop().await.unwrap();
}

/// 40 devices at a narrowed budget of 10 per source address: they come from
/// 127.0.0.2 to 127.0.0.5, 10 each, and every one connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_spread_over_source_addresses() {
    let t = target(Fault::None).await;
    let dir = tempfile::tempdir().unwrap();
    let body = "[population]\nusers = 40\nfriends = 2\n\n[behavior]\nheartbeat_interval = \"500ms\"\noffline_after = \"1500ms\"\n\n[[phase]]\nname = \"ramp\"\nduration = \"500ms\"\nonline = 40\n\n[[phase]]\nname = \"hold\"\nduration = \"1s\"\nonline = 40\nmessage_rate = \"20/s\"\n";
    let path = scenario(dir.path(), "sources", Some(&t.url), body);
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "[generator]\n",
        "[generator]\nconnections_per_source = 10\n",
    );
    std::fs::write(&path, text).unwrap();
    let (code, r) = run(opts(path, dir.path().join("out"))).await;
    assert_eq!(code, 0, "{r}");
    assert_eq!(num(&r, &["counters", "connects"]), 40);
    assert_eq!(num(&r, &["counters", "connect_errors"]), 0);
    let peers = t.peers.lock().unwrap().clone();
    let mut per: std::collections::BTreeMap<String, usize> = Default::default();
    for p in &peers {
        *per.entry(p.to_string()).or_default() += 1;
    }
    for a in ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"] {
        // 10 devices each, plus the audit's reads (from the kernel's choice).
        assert_eq!(per.get(a).copied(), Some(10), "{per:?}");
    }
    t.server.stop().await.unwrap();
}

/// Memory flatness at small scale: after a few hundred messages, what each
/// connected device's state accounts for stays small (ranges, not records).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_records_stay_bounded() {
    let t = target(Fault::None).await;
    let dir = tempfile::tempdir().unwrap();
    let path = scenario(dir.path(), "flat", Some(&t.url), &steady("200/s", 2));
    let (code, r) = run(opts(path, dir.path().join("out"))).await;
    assert_eq!(code, 0, "{r}");
    assert!(num(&r, &["metrics", "deliveries"]) > 300);
    let max = num(&r, &["generator", "device_memory_max_bytes"]);
    assert!(max > 0 && max < 8 * 1024, "{max} bytes");
    t.server.stop().await.unwrap();
}
