//! Cross-node against same-node delivery latency in a 2-node cluster, and what
//! one message and one heartbeat cost in Redis.
//!
//! ```text
//! RUST_LOG=warn cargo run --release -p chatscale-benches --bin cluster-latency -- [MESSAGES] [RATE] [FSYNC]
//! ```
//!
//! Starts a private `redis-server` (append-only, `appendfsync FSYNC`: `always` by
//! default, like CI; `no` takes the disk out of the latencies) on a free port, and two nodes as child processes (this binary re-executed with
//! `serve`) with `--storage` and `--cluster` on it. Then, from this process:
//!
//! 1. **Latency**: one sender on node 1 sends `MESSAGES` (default 2,000) 1:1
//!    messages at `RATE` per second (default 200), alternately to a user on node 1
//!    (same node) and one on node 2 (cross node); each receiver notes send to
//!    receive time (one clock: this process). Prints p50/p90/p99 of each and the
//!    ratio.
//! 2. **Redis per message**: `INFO commandstats` before and after 500 1:1
//!    cross-node messages, then 500 messages into a group of 10 (5 members per
//!    node): commands per message, by command, and the cluster's own round trips
//!    per message (`chatscale_cluster_redis_round_trips_total`).
//! 3. **Redis per heartbeat**: 200 connected devices each send 10 heartbeats;
//!    commands per heartbeat, with the registry refreshes of the same seconds
//!    counted apart.
//!
//! The numbers are for this machine and this moment: run it on a quiet machine,
//! and compare the two latencies of one run (the ratio cancels most noise).

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chatscale_benches::{post_json, ServerProcess};
use futures_util::{SinkExt, StreamExt};
use reference_server::protocol::{LoginResponse, ServerFrame};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn main() -> anyhow::Result<()> {
    if let Some(served) = chatscale_benches::serve_if_asked() {
        return served;
    }
    let args: Vec<String> = std::env::args().collect();
    let messages: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(2_000);
    let rate: u64 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(200);
    let fsync = args.get(3).map_or("always", String::as_str);
    let dir = std::env::temp_dir().join(format!("cluster-latency-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut redis = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--appendonly", "yes", "--appendfsync", fsync, "--save", ""])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("redis-server: {e} (apt-get install redis-server)"))?;
    std::thread::sleep(Duration::from_millis(300));
    let url = format!("redis://127.0.0.1:{port}?prefix=bench");
    let mut nodes = Vec::new();
    for id in ["n1", "n2"] {
        let flags = ["--node-id", id, "--storage", &url, "--cluster", &url];
        let no_limit = ["--send-rate-per-sec", "0"];
        nodes.push(ServerProcess::start(&[&flags[..], &no_limit].concat())?);
    }
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(run(&nodes, port, messages, rate));
    for n in &mut nodes {
        n.stop();
    }
    let _ = redis.kill();
    let _ = redis.wait();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

struct Client {
    http: reqwest::Client,
}

impl Client {
    async fn signup(&self, node: &str, name: &str) -> anyhow::Result<u64> {
        let body = json!({"username": name, "password": "password123"});
        let r: serde_json::Value =
            post_json(&self.http, &format!("{node}/v1/signup"), None, &body).await?;
        Ok(r["user_id"].as_u64().unwrap_or(0))
    }

    /// Logs in and connects to `node` itself (not where discovery points).
    async fn connect(&self, node: &str, name: &str) -> anyhow::Result<(LoginResponse, Ws)> {
        let body = json!({"username": name, "password": "password123"});
        let r: LoginResponse =
            post_json(&self.http, &format!("{node}/v1/login"), None, &body).await?;
        let ws_url = format!("{}/v1/ws?token={}", node.replacen("http", "ws", 1), r.token);
        let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await?;
        ws.next().await; // hello
        Ok((r, ws))
    }
}

async fn run(nodes: &[ServerProcess], port: u16, messages: usize, rate: u64) -> anyhow::Result<()> {
    let (n1, n2) = (nodes[0].url.as_str(), nodes[1].url.as_str());
    let c = Client {
        http: reqwest::Client::new(),
    };
    for name in ["sender", "same", "cross"] {
        c.signup(n1, name).await?;
    }
    let (_, sender) = c.connect(n1, "sender").await?;
    // The sender's acks are not measured: read and drop them so its socket never fills.
    let (mut sender, acks) = sender.split();
    let acked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tokio::spawn(count_acks(acks, acked.clone()));
    let mut sent = 0;
    let (same, same_ws) = c.connect(n1, "same").await?;
    let (cross, cross_ws) = c.connect(n2, "cross").await?;
    let base = Instant::now();
    let lat: Arc<Mutex<HashMap<&'static str, Vec<u64>>>> = Arc::default();
    for (label, ws) in [("same node", same_ws), ("cross node", cross_ws)] {
        tokio::spawn(receive(label, ws, base, lat.clone()));
    }

    // 1. Latency, same node against cross node, interleaved.
    let gap = Duration::from_micros(1_000_000 / rate.max(1));
    let mut next = Instant::now();
    for i in 0..messages {
        let to = if i % 2 == 0 {
            same.user_id
        } else {
            cross.user_id
        };
        let sent_us = base.elapsed().as_micros() as u64;
        send(
            &mut sender,
            json!({"user": to}),
            &format!("l{i}"),
            &sent_us.to_string(),
        )
        .await?;
        sent += 1;
        next += gap;
        tokio::time::sleep_until(next.into()).await;
    }
    all_acked(&acked, sent).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!("delivery latency, {messages} 1:1 messages at {rate}/s from node 1:");
    let mut p50s = Vec::new();
    for label in ["same node", "cross node"] {
        let mut v = lat.lock().unwrap().remove(label).unwrap_or_default();
        v.sort_unstable();
        let pct = |p: f64| {
            v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0) as f64
                / 1000.0
        };
        println!(
            "  {label:>10}: {} received, p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms",
            v.len(),
            pct(0.5),
            pct(0.9),
            pct(0.99)
        );
        p50s.push(pct(0.5));
    }
    if p50s[0] > 0.0 {
        println!("  cross / same (p50): {:.2}x", p50s[1] / p50s[0]);
    }

    // 2. Redis per message.
    let n = 500;
    let mut phase = Phase {
        sender: &mut sender,
        acked: &acked,
        sent: &mut sent,
        port,
        client: &c,
        nodes,
    };
    phase
        .measure("1:1 cross-node message", n, json!({"user": cross.user_id}))
        .await?;

    let mut members = vec![same.user_id, cross.user_id];
    let mut held = Vec::new();
    for i in 0..7 {
        let name = format!("member{i}");
        members.push(c.signup(n1, &name).await?);
        let node = if i % 2 == 0 { n2 } else { n1 };
        let (_, ws) = c.connect(node, &name).await?;
        held.push(tokio::spawn(discard(ws)));
    }
    let token = c.connect(n1, "sender").await?.0.token;
    let body = json!({"name": "bench", "members": members});
    let g: serde_json::Value =
        post_json(&c.http, &format!("{n1}/v1/groups"), Some(&token), &body).await?;
    let group = g["channel"].as_str().unwrap_or_default().to_string();
    phase
        .measure(
            "group message (10 members, 2 nodes)",
            n,
            json!({"channel": group}),
        )
        .await?;

    // 3. Redis per heartbeat.
    let mut devices = Vec::new();
    for i in 0..20 {
        let name = format!("hb{i}");
        c.signup(n1, &name).await?;
        for d in 0..10 {
            let node = if d % 2 == 0 { n1 } else { n2 };
            devices.push(c.connect(node, &name).await?.1);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = (commandstats(port).await?, round_trips(&c, nodes).await?);
    let heartbeats = 10 * devices.len();
    for _ in 0..10 {
        for ws in &mut devices {
            ws.send(WsMessage::Text(r#"{"type":"heartbeat"}"#.into()))
                .await?;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = (commandstats(port).await?, round_trips(&c, nodes).await?);
    report("heartbeat", heartbeats, &before, &after);
    Ok(())
}

type Sink = futures_util::stream::SplitSink<Ws, WsMessage>;

/// What a "Redis per message" measurement needs.
struct Phase<'a> {
    sender: &'a mut Sink,
    acked: &'a std::sync::atomic::AtomicUsize,
    sent: &'a mut usize,
    port: u16,
    client: &'a Client,
    nodes: &'a [ServerProcess],
}

impl Phase<'_> {
    /// Sends `n` messages to `to`, waits for their acks, and reports the Redis
    /// commands and cluster round trips per message.
    async fn measure(&mut self, what: &str, n: usize, to: serde_json::Value) -> anyhow::Result<()> {
        let before = (
            commandstats(self.port).await?,
            round_trips(self.client, self.nodes).await?,
        );
        for i in 0..n {
            send(self.sender, to.clone(), &format!("{what}{i}"), "x").await?;
            *self.sent += 1;
        }
        all_acked(self.acked, *self.sent).await;
        let after = (
            commandstats(self.port).await?,
            round_trips(self.client, self.nodes).await?,
        );
        report(what, n, &before, &after);
        Ok(())
    }
}

async fn send(ws: &mut Sink, to: serde_json::Value, cmid: &str, text: &str) -> anyhow::Result<()> {
    let frame = json!({"type": "send", "to": to, "client_msg_id": cmid, "text": text});
    ws.send(WsMessage::Text(frame.to_string().into())).await?;
    Ok(())
}

/// Counts the sender's acks (nothing else it receives matters here).
async fn count_acks(
    mut s: futures_util::stream::SplitStream<Ws>,
    acked: Arc<std::sync::atomic::AtomicUsize>,
) {
    while let Some(Ok(WsMessage::Text(t))) = s.next().await {
        if t.starts_with(r#"{"type":"ack""#) {
            acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Waits until `n` sends were acked (then their whole fan-out is done: the
/// server acks after routing).
async fn all_acked(acked: &std::sync::atomic::AtomicUsize, n: usize) {
    while acked.load(std::sync::atomic::Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn discard(mut ws: Ws) {
    while ws.next().await.is_some() {}
}

async fn receive(
    label: &'static str,
    mut ws: Ws,
    base: Instant,
    into: Arc<Mutex<HashMap<&'static str, Vec<u64>>>>,
) {
    while let Some(Ok(WsMessage::Text(t))) = ws.next().await {
        let now = base.elapsed().as_micros() as u64;
        if let Ok(ServerFrame::Message(m)) = serde_json::from_str::<ServerFrame>(&t) {
            if let (true, Ok(sent)) = (m.client_msg_id.starts_with('l'), m.text.parse::<u64>()) {
                into.lock()
                    .unwrap()
                    .entry(label)
                    .or_default()
                    .push(now.saturating_sub(sent));
            }
        }
    }
}

/// `INFO commandstats` of the private Redis: command -> calls.
async fn commandstats(port: u16) -> anyhow::Result<HashMap<String, u64>> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(b"INFO commandstats\r\n").await?;
    // A bulk string: `$LEN\r\n`, LEN bytes, `\r\n`.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let want = loop {
        let n = s.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "redis closed the connection");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            let len: usize = std::str::from_utf8(&buf[1..end])?.parse()?;
            break end + 2 + len;
        }
    };
    while buf.len() < want {
        let n = s.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "redis closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf);
    Ok(text
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_string(), calls))
        })
        .collect())
}

/// The cluster's own round-trip counters, summed over the nodes: op -> count.
async fn round_trips(c: &Client, nodes: &[ServerProcess]) -> anyhow::Result<HashMap<String, u64>> {
    let mut out = HashMap::new();
    for n in nodes {
        let text = c
            .http
            .get(format!("{}/metrics", n.url))
            .send()
            .await?
            .text()
            .await?;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("chatscale_cluster_redis_round_trips_total{") {
                let op = rest.split("op=\"").nth(1).and_then(|s| s.split('"').next());
                let value = rest.rsplit(' ').next().and_then(|v| v.parse::<u64>().ok());
                if let (Some(op), Some(v)) = (op, value) {
                    *out.entry(op.to_string()).or_insert(0) += v;
                }
            }
        }
    }
    Ok(out)
}

type Snapshot = (HashMap<String, u64>, HashMap<String, u64>);

fn report(what: &str, n: usize, before: &Snapshot, after: &Snapshot) {
    let delta = |a: &HashMap<String, u64>, b: &HashMap<String, u64>| {
        let mut d: Vec<(String, u64)> = b
            .iter()
            .map(|(k, v)| (k.clone(), v - a.get(k).copied().unwrap_or(0)))
            .filter(|(k, v)| *v > 0 && k != "info")
            .collect();
        d.sort();
        d
    };
    let commands = delta(&before.0, &after.0);
    let total: u64 = commands.iter().map(|(_, v)| v).sum();
    println!("{what}: {n} of them");
    println!(
        "  redis commands: {:.2} per {what} ({})",
        total as f64 / n as f64,
        commands
            .iter()
            .map(|(k, v)| format!("{k} {:.2}", *v as f64 / n as f64))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let trips = delta(&before.1, &after.1);
    println!(
        "  cluster round trips: {}",
        trips
            .iter()
            .map(|(k, v)| format!("{k} {v} ({:.3} per {what})", *v as f64 / n as f64))
            .collect::<Vec<_>>()
            .join(", ")
    );
}
