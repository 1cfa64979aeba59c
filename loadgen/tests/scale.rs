//! Scale, at test size: thousands of devices spread over several loopback
//! source addresses by a narrowed per-address budget (every one connects,
//! each address holds its share), and a scenario whose embedded nodes cannot
//! hold their share refused before anything is provisioned (exit 3, with
//! the arithmetic), and a run killed outright leaves no server behind.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::engine_support::scenario;

fn num(r: &Value, path: &[&str]) -> f64 {
    let mut v = r;
    for p in path {
        v = &v[*p];
    }
    v.as_f64().unwrap_or_else(|| panic!("{path:?} in {r}"))
}

/// `127.0.0.2` as `/proc/net/tcp` writes it (little-endian hex).
fn proc_hex(ip: [u8; 4]) -> String {
    format!("{:02X}{:02X}{:02X}{:02X}", ip[3], ip[2], ip[1], ip[0])
}

/// Established IPv4 connections per (local address, remote endpoint).
fn established() -> BTreeMap<(String, String), usize> {
    let mut per = BTreeMap::new();
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() > 3 && f[3] == "01" {
            let local = f[1].split(':').next().unwrap_or("").to_string();
            *per.entry((local, f[2].to_string())).or_insert(0) += 1;
        }
    }
    per
}

/// 3,000 devices at a budget of 1,000 per source address: more than one
/// address may carry, so they come from 127.0.0.2, .3 and .4, 1,000 each
/// (seen in the kernel's socket table while they are held), and none fails.
#[test]
fn thousands_of_devices_spread_over_source_addresses_and_all_connect() {
    let dir = tempfile::tempdir().unwrap();
    let body = "[population]\nusers = 3000\nfriends = 2\n\n[behavior]\nheartbeat_interval = \"5s\"\noffline_after = \"15s\"\n\n[[phase]]\nname = \"ramp\"\nduration = \"6s\"\nonline = 3000\n\n[[phase]]\nname = \"hold\"\nduration = \"8s\"\nonline = 3000\nmessage_rate = \"50/s\"\n\n[thresholds]\n\"lost\" = \"== 0\"\n";
    let path = scenario(dir.path(), "sources3k", None, body);
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "[generator]\n",
        "[generator]\nconnections_per_source = 1000\n",
    );
    std::fs::write(&path, text).unwrap();
    let out = dir.path().join("out");
    let mut child = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["run", path.to_str().unwrap(), "--workers", "1", "--out"])
        .arg(&out)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // While the devices are held: the most connections each source address
    // had to one remote endpoint (the embedded server) at once.
    let addrs: Vec<String> = (2..=5).map(|d| proc_hex([127, 0, 0, d])).collect();
    let mut most = vec![0usize; addrs.len()];
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        let now = established();
        for (i, a) in addrs.iter().enumerate() {
            let top = now
                .iter()
                .filter(|((l, _), _)| l == a)
                .map(|(_, n)| *n)
                .max()
                .unwrap_or(0);
            most[i] = most[i].max(top);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(
        num(&r, &["counters", "connect_errors"]),
        0.0,
        "{}",
        r["errors"]
    );
    assert!(
        num(&r, &["counters", "connects"]) >= 3000.0,
        "{}",
        r["counters"]
    );
    assert_eq!(num(&r, &["metrics", "peak_connections"]), 3000.0);
    assert_eq!(num(&r, &["metrics", "lost"]), 0.0);
    // 1,000 devices each; an address may also carry some of the audit's
    // inbox reads after the phases, so each is held to at least its devices.
    assert!(
        most[..3].iter().all(|&n| n >= 1000),
        "127.0.0.2-4 at 1,000 devices each: {most:?}"
    );
    // Other tests may use 127.0.0.5 for a few devices, never 1,000.
    assert!(most[3] < 1000, "{most:?}");
}

/// The committed 100,000-device scenario on 2 embedded nodes: 50,000 each
/// is more than a node's descriptors, so it is refused at once (exit 3)
/// with the arithmetic and the node count that fits, before any server,
/// Redis or account is created.
#[test]
fn too_few_embedded_nodes_are_refused_before_provisioning() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(repo.join("scenarios/capacity-100k.toml")).unwrap();
    let servers = text
        .lines()
        .find(|l| l.starts_with("servers = "))
        .expect("capacity-100k names its servers")
        .to_string();
    let path = dir.path().join("capacity-100k.toml");
    std::fs::write(&path, text.replace(&servers, "servers = 2")).unwrap();
    let out = dir.path().join("out");
    let started = Instant::now();
    // At most 20,000 descriptors per process, as on the machine the
    // scenario is written for (ulimit may lower the hard limit, never raise it).
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 20000 && exec {} run {} --out {}",
            env!("CARGO_BIN_EXE_loadgen"),
            path.display(),
            out.display()
        ))
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(
        err.contains("50000 connections per embedded node")
            && err.contains("servers to at least 6"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "refused at once"
    );
    assert!(!out.exists(), "nothing was started or written");
}

/// Running, not gone and not a zombie waiting for a reaper.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit(')').next().map(|r| r.trim_start().to_string()))
        .is_some_and(|r| !r.starts_with('Z'))
}

/// loadgen killed outright (SIGKILL, or the second Ctrl-C): its embedded
/// server, whose stderr went to the dead parent, still notices and exits.
#[test]
fn a_killed_run_takes_its_embedded_server_with_it() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let body =
        "[population]\nusers = 10\nfriends = 2\n\n[[phase]]\nduration = \"60s\"\nonline = 10\n";
    let path = scenario(dir.path(), "orphan", None, body);
    let mut child = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["run", path.to_str().unwrap(), "--workers", "1", "--out"])
        .arg(dir.path().join("out"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let node: u32 = loop {
        let line = loadgen::embedded::strip_ansi(&lines.next().expect("a started line").unwrap());
        if line.contains("embedded server started") {
            let pid = line.split("pid=").nth(1).expect("pid=");
            break pid
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse()
                .unwrap();
        }
    };
    assert!(alive(node));
    child.kill().unwrap();
    child.wait().unwrap();
    drop(lines);
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(node) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let gone = !alive(node);
    if !gone {
        // Leave nothing behind, then fail.
        let _ = Command::new("kill").arg(node.to_string()).status();
    }
    assert!(gone, "the embedded server {node} outlived the run");
}
