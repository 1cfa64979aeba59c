//! loadgen at fleet scale, with real processes: an embedded cluster over a
//! private `redis-server`, a node killed mid-run (devices fail over, nothing
//! lost), a running cluster reached through one node, `--workers auto`, the
//! fan-out staying exact with workers, two shards against one run, Ctrl-C of
//! a multi-process run, and the refusals (exit 2, exit 3).

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::engine_support::{assert_embedded_server_stopped, opts, run, scenario, target, Fault};

/// Users with 1-2 devices, friends and groups; short heartbeats and reconnects.
const POP: &str = "[population]\nusers = 30\ndevices = { 1 = 0.5, 2 = 0.5 }\nfriends = 4\ngroups = 4\ngroup_size = { min = 3, max = 8 }\n\n[behavior]\nheartbeat_interval = \"1s\"\noffline_after = \"3s\"\ngroup_share = 0.4\ntext_length = { mean = 20, max = 200 }\nreconnect_delay = { min = \"100ms\", max = \"400ms\" }\n";

fn loadgen() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_loadgen"));
    c.env("RUST_LOG", "warn");
    c
}

fn report(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("report.json"))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    serde_json::from_str(&text).unwrap()
}

fn num(r: &Value, path: &[&str]) -> f64 {
    let mut v = r;
    for p in path {
        v = &v[*p];
    }
    v.as_f64().unwrap_or_else(|| panic!("{path:?} in {r}"))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `redis-server` on the PATH, or the test is skipped (a failure when the
/// environment requires services).
fn have_redis() -> bool {
    if loadgen::cluster::redis::find_on_path("redis-server").is_some() {
        return true;
    }
    assert!(
        std::env::var("CHATSCALE_REQUIRE_SERVICES").as_deref() != Ok("1"),
        "redis-server is not on the PATH but CHATSCALE_REQUIRE_SERVICES=1"
    );
    eprintln!("skipped: redis-server is not on the PATH");
    false
}

fn run_bin(args: &[&str]) -> Output {
    loadgen().args(args).output().unwrap()
}

/// Three embedded nodes over a private Redis, node 1 killed (SIGKILL) at the
/// third phase's start under load: its devices ask discovery again and
/// connect to a live node, each timing its failover; nothing acked is lost;
/// the report names every node with its connections over time; deliveries
/// are split by whether sender and recipient were on one node.
#[test]
fn a_killed_node_s_devices_fail_over_and_nothing_is_lost() {
    if !have_redis() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Node 1 takes the first second's connections (discovery breaks ties by
    // node id), so killing it always strands devices.
    let body = format!(
        "{POP}\n[target]\nservers = 3\nstorage = \"redis\"\n\n[[phase]]\nname = \"ramp\"\nduration = \"3s\"\nonline = 30\n\n[[phase]]\nname = \"steady\"\nduration = \"2s\"\nmessage_rate = \"40/s\"\n\n[[phase]]\nname = \"kill\"\nduration = \"4s\"\nmessage_rate = \"40/s\"\nkill_node = 1\n\n[thresholds]\n\"lost\" = \"== 0\"\n\"undelivered\" = \"== 0\"\n"
    );
    let path = scenario(dir.path(), "failover", None, &body);
    let out = dir.path().join("out");
    let o = run_bin(&[
        "run",
        path.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let r = report(&out);
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stderr(&o), r["audit"]);
    assert_eq!(num(&r, &["metrics", "lost"]), 0.0);
    assert!(num(&r, &["metrics", "messages_acked"]) > 0.0);
    let failover = num(&r, &["metrics", "failover_latency", "count"]);
    assert!(
        failover > 0.0,
        "devices failed over: {}",
        r["metrics"]["failover_latency"]
    );
    assert!(num(&r, &["metrics", "delivery_latency_cross_node", "count"]) > 0.0);
    let nodes = r["nodes"].as_array().expect("nodes in report.json");
    let names: Vec<&str> = nodes.iter().map(|n| n["node"].as_str().unwrap()).collect();
    assert_eq!(names, ["n1", "n2", "n3"]);
    // Node 1 answered before the kill, not after.
    let n1 = nodes[0]["connections"].as_array().unwrap();
    assert!(n1.iter().any(|s| s[1].as_u64().is_some_and(|c| c > 0)));
    assert!(
        n1.last().unwrap()[1].is_null(),
        "node 1 is down at the end: {n1:?}"
    );
    assert!(num(&r, &["metrics", "peak_connections"]) > 0.0);
    // Memory per connection as a distribution, per node and merged.
    let per_node = r["connection_memory"]["server_nodes"].as_array().unwrap();
    let named: Vec<&str> = per_node
        .iter()
        .map(|n| n["node"].as_str().unwrap())
        .collect();
    assert_eq!(named, ["n1", "n2", "n3"], "{}", r["connection_memory"]);
    let observed: Vec<f64> = per_node
        .iter()
        .map(|n| n["observations"].as_f64().unwrap())
        .collect();
    assert!(observed.iter().all(|&n| n > 0.0), "{observed:?}");
    let merged = &r["connection_memory"]["server"];
    assert_eq!(
        merged["observations"].as_f64().unwrap(),
        observed.iter().sum::<f64>()
    );
    let (p50, p99, max) = (
        merged["p50_bytes"].as_f64().unwrap(),
        merged["p99_bytes"].as_f64().unwrap(),
        merged["max_bytes"].as_f64().unwrap(),
    );
    // An idle connection is about 1.1-2 KiB: never zero, never megabytes.
    assert!(
        p50 > 500.0 && p50 <= p99 && p99 <= max && max < 1e6,
        "{merged}"
    );
    assert!(std::fs::read_to_string(out.join("report.md"))
        .unwrap()
        .contains("## Memory per connection"));
    assert!(std::fs::read_to_string(out.join("report.md"))
        .unwrap()
        .contains("## Nodes"));
    assert!(std::fs::read_to_string(out.join("report.html"))
        .unwrap()
        .contains("<h2>Nodes</h2>"));
    assert!(!out.join("redis").exists(), "the private Redis is gone");
}

/// A cluster loadgen did not start, reached through one node: login lists
/// every node, so the devices spread over them by discovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_cluster_is_driven_through_one_node() {
    if !have_redis() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let redis = loadgen::cluster::redis::PrivateRedis::start(&dir.path().join("redis"))
        .await
        .unwrap();
    let mut nodes = Vec::new();
    for k in 1..=2 {
        let port = loadgen::cluster::free_port().unwrap();
        let cfg = loadgen::embedded::EmbeddedConfig {
            listen: Some(([127, 0, 0, 1], port).into()),
            cluster: Some((redis.url.clone(), format!("n{k}"))),
            ..loadgen::embedded::EmbeddedConfig::new(
                redis.url.clone(),
                Duration::from_secs(1),
                Duration::from_secs(3),
            )
        };
        std::env::set_var(loadgen::embedded::EXE_ENV, env!("CARGO_BIN_EXE_loadgen"));
        nodes.push(
            loadgen::embedded::EmbeddedServer::start(&cfg)
                .await
                .unwrap(),
        );
    }
    // Both nodes registered: discovery lists both.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let body = format!(
        "{POP}\n[[phase]]\nname = \"ramp\"\nduration = \"2500ms\"\nonline = 30\n\n[[phase]]\nname = \"steady\"\nduration = \"2s\"\nmessage_rate = \"40/s\"\n"
    );
    let path = scenario(dir.path(), "running", Some(&nodes[0].url), &body);
    let out = dir.path().join("out");
    let (code, r) = run(opts(path, out)).await;
    assert_eq!(code, 0, "{r}");
    assert_eq!(num(&r, &["metrics", "lost"]), 0.0);
    let sampled = r["nodes"].as_array().expect("nodes");
    assert_eq!(sampled.len(), 2, "{sampled:?}");
    assert!(num(&r, &["metrics", "delivery_latency_cross_node", "count"]) > 0.0);
    for n in nodes {
        n.stop().await;
    }
    redis.stop().await;
}

#[test]
fn redis_storage_needs_redis_server_on_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "{POP}\n[target]\nservers = 2\nstorage = \"redis\"\n[[phase]]\nduration = \"1s\"\n"
    );
    let path = scenario(dir.path(), "noredis", None, &body);
    let empty = dir.path().join("bin");
    std::fs::create_dir(&empty).unwrap();
    let o = loadgen()
        .args(["run", path.to_str().unwrap(), "--out"])
        .arg(dir.path().join("out"))
        .env("PATH", &empty)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("apt-get install redis-server"),
        "{}",
        stderr(&o)
    );
}

#[tokio::test]
async fn a_cluster_on_unshared_storage_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "{POP}\n[target]\nservers = 2\nstorage = \"memory\"\n[[phase]]\nduration = \"1s\"\n"
    );
    let path = scenario(dir.path(), "memory", None, &body);
    let (code, msg) = run(opts(path, dir.path().join("out"))).await;
    assert_eq!(code, 2, "{msg}");
    let msg = msg.as_str().unwrap();
    assert!(
        msg.contains("target.servers") && msg.contains("each node would keep its own"),
        "{msg}"
    );
    // The same through --storage over a scenario that was fine.
    let body = format!(
        "{POP}\n[target]\nservers = 2\nstorage = \"redis\"\n[[phase]]\nduration = \"1s\"\n"
    );
    let path = scenario(dir.path(), "flag", None, &body);
    let mut o = opts(path, dir.path().join("out"));
    o.storage = Some("embedded:/tmp/nowhere".into());
    let (code, msg) = run(o).await;
    assert_eq!(code, 2, "{msg}");
    assert!(msg.as_str().unwrap().contains("--storage"), "{msg}");
}

/// More devices per source address than it has ports: refused before
/// anything is provisioned, with the arithmetic.
#[tokio::test]
async fn a_scenario_that_cannot_fit_is_refused_with_the_arithmetic() {
    let dir = tempfile::tempdir().unwrap();
    let body = format!("{POP}\n[[phase]]\nduration = \"1s\"\n");
    let path = scenario(dir.path(), "nofit", Some("http://127.0.0.1:1"), &body);
    let text = std::fs::read_to_string(&path).unwrap() + "connections_per_source = 60000\n";
    std::fs::write(&path, text).unwrap();
    let (code, msg) = run(opts(path, dir.path().join("out"))).await;
    assert_eq!(code, 3, "{msg}");
    let msg = msg.as_str().unwrap();
    assert!(
        msg.contains("source address(es) x") && msg.contains("ports"),
        "{msg}"
    );
}

/// `--workers auto` under a low descriptor limit: enough processes for the
/// peak, each with its own slice; one report.
#[test]
fn workers_auto_starts_enough_processes_for_the_peak() {
    let dir = tempfile::tempdir().unwrap();
    // The peak is held 3 s: the server's connections are sampled once a
    // second, and a busy machine may delay a sample.
    // 300 devices; at 600 descriptors a process holds 600 - (256 + 16 + 64 + 64) = 200.
    let body = "[population]\nusers = 300\nfriends = 3\n\n[behavior]\nheartbeat_interval = \"1s\"\noffline_after = \"3s\"\n\n[[phase]]\nduration = \"2s\"\nonline = 300\n\n[[phase]]\nduration = \"3s\"\nmessage_rate = \"50/s\"\n\n[thresholds]\n\"lost\" = \"== 0\"\n";
    let path = scenario(dir.path(), "auto", None, body);
    let out = dir.path().join("out");
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 600 && exec {} run {} --workers auto --out {}",
            env!("CARGO_BIN_EXE_loadgen"),
            path.display(),
            out.display()
        ))
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--workers auto: 2 worker processes"),
        "{}",
        stderr(&o)
    );
    let r = report(&out);
    let w: Vec<Value> = (0..2)
        .map(|i| report(&out.join(format!("workers/worker-{i}"))))
        .collect();
    for wr in &w {
        assert!(
            num(wr, &["provisioning", "users"]) == 0.0,
            "workers load their slice"
        );
    }
    assert!(!out.join("workers/worker-2").exists());
    // Each worker's devices' own memory reaches the merged report.
    let devices: Vec<f64> = w
        .iter()
        .map(|wr| num(wr, &["connection_memory", "loadgen", "observations"]))
        .collect();
    assert!(devices.iter().all(|&n| n > 0.0), "{devices:?}");
    assert_eq!(
        num(&r, &["connection_memory", "loadgen", "observations"]),
        devices.iter().sum::<f64>()
    );
    assert!(num(&r, &["generator", "device_memory_p50_bytes"]) > 0.0);
    assert_eq!(num(&r, &["metrics", "lost"]), 0.0);
    assert_eq!(
        num(&r, &["metrics", "peak_connections"]),
        300.0,
        "the server's peak"
    );
}

fn fanout(r: &Value) -> (f64, f64, f64) {
    (
        num(r, &["metrics", "fanout_latency", "count"]),
        num(r, &["metrics", "fanout_latency", "max_ms"]),
        num(r, &["metrics", "delivery_latency_group", "max_ms"]),
    )
}

/// `fanout_latency` with workers: one sample per group message (the last
/// member device across every worker), as one process records it.
#[test]
fn fanout_latency_with_workers_equals_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "{POP}\n[[phase]]\nname = \"ramp\"\nduration = \"1s\"\nonline = 30\n\n[[phase]]\nname = \"steady\"\nduration = \"3s\"\nmessage_rate = \"40/s\"\n"
    )
    .replace("group_share = 0.4", "group_share = 0.8");
    let path = scenario(dir.path(), "fanout", None, &body);
    let mut reports = Vec::new();
    for workers in ["1", "3"] {
        let out = dir.path().join(format!("out{workers}"));
        let o = run_bin(&[
            "run",
            path.to_str().unwrap(),
            "--workers",
            workers,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        reports.push(report(&out));
    }
    let (one, three) = (fanout(&reports[0]), fanout(&reports[1]));
    let scheduled = |r: &Value| num(r, &["counters", "messages_scheduled"]);
    assert_eq!(
        scheduled(&reports[0]),
        scheduled(&reports[1]),
        "one schedule"
    );
    assert!(one.0 > 0.0);
    assert_eq!(
        one.0, three.0,
        "one sample per group message: {one:?} {three:?}"
    );
    // Each sample is one live delivery's latency: never past the slowest.
    assert!(three.1 <= three.2, "{three:?}");
    // The workers each saw only their members: each alone has none.
    for i in 0..3 {
        let w = report(&dir.path().join(format!("out3/workers/worker-{i}")));
        assert_eq!(num(&w, &["metrics", "fanout_latency", "count"]), 0.0);
    }
}

fn audit_totals(r: &Value) -> [f64; 5] {
    let a = |k: &str| num(r, &["audit", k]);
    [
        num(r, &["counters", "messages_scheduled"]),
        a("messages_checked"),
        a("deliveries_expected"),
        a("delivered_live") + a("recovered") + a("undelivered") + a("awaiting_sync") + a("lost"),
        a("lost"),
    ]
}

/// Two shards as two processes (one start, one population directory), merged,
/// against one run of the same seed: the same sends, the same audit totals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_merge_into_what_one_run_measures() {
    let t = target(Fault::None).await;
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "{POP}\n[[phase]]\nname = \"ramp\"\nduration = \"1s\"\nonline = 30\n\n[[phase]]\nname = \"steady\"\nduration = \"2s\"\nmessage_rate = \"40/s\"\n\n[thresholds]\n\"lost\" = \"== 0\"\n"
    );
    let path = scenario(dir.path(), "shards", Some(&t.url), &body);
    let pop = dir.path().join("pop");
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 4000;
    let shard = |i: u32| -> tokio::process::Child {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
            .args(["run", path.to_str().unwrap(), "--shard", &format!("{i}/2")])
            .arg("--population")
            .arg(&pop)
            .args(["--start-at", &start.to_string(), "--out"])
            .arg(dir.path().join(format!("shard{i}")))
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let (s0, s1) = (shard(0), shard(1));
    let (o0, o1) = tokio::join!(s0.wait_with_output(), s1.wait_with_output());
    for o in [o0.unwrap(), o1.unwrap()] {
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    }
    let r0 = report(&dir.path().join("shard0"));
    assert_eq!(
        r0["audit"]["cross_part_pending"], true,
        "a shard alone is partial"
    );
    let merged = dir.path().join("merged");
    let o = run_bin(&[
        "merge",
        dir.path().join("shard0").to_str().unwrap(),
        dir.path().join("shard1").to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let m = report(&merged);
    assert!(m["audit"]["cross_part_pending"].is_null(), "{}", m["audit"]);
    let (code, single) = run(opts(path.clone(), dir.path().join("single"))).await;
    assert_eq!(code, 0, "{single}");
    assert_eq!(
        audit_totals(&m),
        audit_totals(&single),
        "shards {} / one run {}",
        m["audit"],
        single["audit"]
    );
    assert_eq!(
        num(&m, &["metrics", "fanout_latency", "count"]),
        num(&single, &["metrics", "fanout_latency", "count"])
    );
    assert_eq!(num(&m, &["metrics", "lost"]), 0.0);
    t.server.stop().await.unwrap();
}

/// Ctrl-C during a run with workers: every worker stops and writes its part,
/// the parent writes the report marked incomplete (exit 3) and stops the server.
#[test]
fn ctrl_c_stops_every_worker_and_marks_the_run_incomplete() {
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "{POP}\n[[phase]]\nname = \"ramp\"\nduration = \"1s\"\nonline = 30\n\n[[phase]]\nname = \"steady\"\nduration = \"60s\"\nmessage_rate = \"20/s\"\n"
    );
    let path = scenario(dir.path(), "interrupted", None, &body);
    let out = dir.path().join("out");
    let mut child = loadgen()
        .args(["run", path.to_str().unwrap(), "--workers", "2", "--out"])
        .arg(&out)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(5));
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "still running after Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(3));
    let r = report(&out);
    assert_eq!(r["audit"]["incomplete"], true, "{}", r["audit"]);
    assert!(r["audit"]["incomplete_reason"]
        .as_str()
        .unwrap()
        .contains("interrupted"));
    assert_eq!(r["passed"], false);
    assert!(num(&r, &["run", "duration_s"]) < 30.0);
    for i in 0..2 {
        assert!(out
            .join(format!("workers/worker-{i}/report.json"))
            .is_file());
    }
    assert_embedded_server_stopped(&r);
}
