//! Shared helpers for the engine tests: a real server on port 0 (optionally
//! behind a fault-injecting WebSocket proxy), scenario files in a temp dir, and
//! an in-process `loadgen run` that returns its exit status and report.json.
//!
//! The proxy sits between the simulated devices and the server's WebSocket
//! endpoint (the server advertises the proxy's address, so login hands it out;
//! HTTP calls go to the server directly) and corrupts what the server sends:
//! it can drop a message everywhere (live and in sync batches: a message the
//! server lost), drop only live message frames (a broken live path, sync
//! intact), send a message frame twice, swap two message frames of one
//! channel, hold every frame for a while (a stalled server), store a send
//! twice (an idempotency failure), or refuse connections after a while (an
//! inbox the audit cannot read).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use loadgen::cli::RunOpts;
use reference_server::config::Config;
use reference_server::server::Server;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OnceCell;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;

/// What the proxy does to server-to-client frames.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    None,
    /// Drops messages whose id is a multiple of N, live and in sync batches.
    Drop(u64),
    /// Sends message frames whose id is a multiple of N twice.
    Duplicate(u64),
    /// Holds a message frame whose id is a multiple of N until the next
    /// message of the same channel on that connection has gone out.
    Reorder(u64),
    /// From `after` past the first connection, holds every frame for `hold`.
    Stall {
        after: Duration,
        hold: Duration,
    },
    /// Drops live `message` frames whose id is a multiple of N; sync answers
    /// pass untouched. The drops are counted in [`TestTarget::dropped`].
    DropLive(u64),
    /// Forwards every send whose client_msg_id's send number is a multiple of
    /// N twice, the copy re-stamped (so the server stores it again, as a
    /// server whose dedupe failed would), and swallows the copy's ack.
    StoreTwice(u64),
    /// From `after` past the first connection, closes every new connection
    /// at once.
    RefuseAfter(Duration),
    /// Once, `after` past the first connection, closes every open connection
    /// with close code 1001 (a server shedding its clients).
    CloseAt(Duration),
}

pub struct TestTarget {
    pub server: Server,
    pub url: String,
    /// Frames the proxy dropped (`DropLive`), and the addresses connections
    /// came from, in order.
    pub dropped: Arc<AtomicU64>,
    pub peers: Arc<Mutex<Vec<std::net::IpAddr>>>,
}

/// A server on a free port, with its WebSocket endpoint behind a proxy doing `fault`.
pub async fn target(fault: Fault) -> TestTarget {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = listener.local_addr().unwrap();
    let mut config = Config::for_tests();
    config.heartbeat_interval = Duration::from_millis(500);
    config.offline_after = Duration::from_millis(1500);
    config.advertise = Some(format!("ws://{proxy_addr}"));
    let server = Server::start(config).await.unwrap();
    let dropped = Arc::new(AtomicU64::new(0));
    let peers = Arc::new(Mutex::new(Vec::new()));
    tokio::spawn(proxy(
        listener,
        server.addr(),
        fault,
        dropped.clone(),
        peers.clone(),
    ));
    let url = server.url();
    TestTarget {
        server,
        url,
        dropped,
        peers,
    }
}

async fn proxy(
    listener: TcpListener,
    upstream: SocketAddr,
    fault: Fault,
    dropped: Arc<AtomicU64>,
    peers: Arc<Mutex<Vec<std::net::IpAddr>>>,
) {
    let first = Arc::new(OnceCell::new());
    while let Ok((tcp, peer)) = listener.accept().await {
        peers.lock().unwrap().push(peer.ip());
        let first = first.clone();
        let dropped = dropped.clone();
        tokio::spawn(async move {
            let start = *first.get_or_init(|| async { Instant::now() }).await;
            if let Fault::RefuseAfter(after) = fault {
                if start.elapsed() > after {
                    return; // the socket closes unanswered
                }
            }
            let _ = relay(tcp, upstream, fault, start, dropped).await;
        });
    }
}

/// `S-A-N` re-stamped `S-(A+1)-N`: the same send, under a new client_msg_id.
fn restamp(id: &str) -> String {
    let mut parts: Vec<String> = id.splitn(3, '-').map(String::from).collect();
    if let Some(a) = parts.get(1).and_then(|a| a.parse::<u64>().ok()) {
        parts[1] = (a + 1).to_string();
    }
    parts.join("-")
}

fn is_dropped(fault: Fault, m: &Value) -> bool {
    matches!(fault, Fault::Drop(n) if m["id"].as_u64().is_some_and(|id| id % n == 0))
}

async fn relay(
    tcp: TcpStream,
    upstream: SocketAddr,
    fault: Fault,
    start: Instant,
    dropped: Arc<AtomicU64>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut uri = String::new();
    #[allow(clippy::result_large_err)] // the handshake callback's signature is tungstenite's
    let callback = |req: &Request, resp: Response| {
        uri = req.uri().to_string();
        Ok(resp)
    };
    let client = tokio_tungstenite::accept_hdr_async(tcp, callback).await?;
    let (server, _) = tokio_tungstenite::connect_async(format!("ws://{upstream}{uri}")).await?;
    let (mut c_tx, mut c_rx) = client.split();
    let (mut s_tx, mut s_rx) = server.split();
    // Reqs whose second ack the client must not see (StoreTwice).
    let swallow: Arc<Mutex<std::collections::HashMap<i64, u32>>> = Arc::default();
    let swallow_up = swallow.clone();
    let up = async move {
        while let Some(Ok(m)) = c_rx.next().await {
            let mut copy = None;
            if let (Fault::StoreTwice(n), Message::Text(text)) = (fault, &m) {
                let mut v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
                let number = v["client_msg_id"]
                    .as_str()
                    .and_then(|id| id.rsplit('-').next())
                    .and_then(|n| n.parse::<u64>().ok());
                if v["type"] == "send" && number.is_some_and(|k| k % n == 0) {
                    let id = restamp(v["client_msg_id"].as_str().unwrap_or(""));
                    v["client_msg_id"] = Value::String(id);
                    if let Some(req) = v["req"].as_i64() {
                        swallow_up.lock().unwrap().insert(req, 0);
                    }
                    copy = Some(Message::Text(v.to_string().into()));
                }
            }
            if s_tx.send(m).await.is_err() {
                break;
            }
            if let Some(c) = copy {
                if s_tx.send(c).await.is_err() {
                    break;
                }
            }
        }
        let _ = s_tx.close().await;
    };
    let down = async move {
        let mut held: Option<(String, Message)> = None;
        if let Fault::CloseAt(after) = fault {
            let at = start + after;
            if Instant::now() < at {
                let stream = async {
                    while let Some(Ok(m)) = s_rx.next().await {
                        if c_tx.send(m).await.is_err() {
                            return;
                        }
                    }
                };
                tokio::select! {
                    _ = stream => return,
                    _ = tokio::time::sleep_until(at.into()) => {
                        let close = tokio_tungstenite::tungstenite::protocol::CloseFrame {
                            code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Away,
                            reason: "shedding".into(),
                        };
                        let _ = c_tx.send(Message::Close(Some(close))).await;
                        return;
                    }
                }
            }
        }
        while let Some(Ok(m)) = s_rx.next().await {
            if let Fault::Stall { after, hold } = fault {
                let (from, to) = (start + after, start + after + hold);
                if (from..to).contains(&Instant::now()) {
                    tokio::time::sleep_until(to.into()).await;
                }
            }
            let Message::Text(text) = &m else {
                if c_tx.send(m).await.is_err() {
                    break;
                }
                continue;
            };
            let mut v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
            let mut out = vec![m.clone()];
            match (v["type"].as_str(), fault) {
                (Some("ack"), Fault::StoreTwice(_)) => {
                    if let Some(req) = v["req"].as_i64() {
                        let mut s = swallow.lock().unwrap();
                        if let Some(seen) = s.get_mut(&req) {
                            *seen += 1;
                            if *seen == 2 {
                                s.remove(&req);
                                out.clear();
                            }
                        }
                    }
                }
                (Some("message"), Fault::DropLive(n))
                    if v["id"].as_u64().is_some_and(|id| id % n == 0) =>
                {
                    dropped.fetch_add(1, Ordering::Relaxed);
                    out.clear();
                }
                (Some("message"), Fault::Drop(_)) if is_dropped(fault, &v) => out.clear(),
                (Some("sync_batch"), Fault::Drop(_)) => {
                    if let Some(list) = v["messages"].as_array_mut() {
                        list.retain(|m| !is_dropped(fault, m));
                    }
                    out = vec![Message::Text(v.to_string().into())];
                }
                (Some("message"), Fault::Duplicate(n))
                    if v["id"].as_u64().unwrap_or(1) % n == 0 =>
                {
                    out.push(m.clone())
                }
                (Some("message"), Fault::Reorder(n)) => {
                    let channel = v["channel"].as_str().unwrap_or("").to_string();
                    match held.take() {
                        Some((c, h)) if c == channel => out.push(h),
                        other => {
                            held = other;
                            if held.is_none() && v["id"].as_u64().unwrap_or(1) % n == 0 {
                                held = Some((channel, m.clone()));
                                out.clear();
                            }
                        }
                    }
                }
                _ => {}
            }
            for f in out {
                if c_tx.send(f).await.is_err() {
                    return;
                }
            }
        }
        let _ = c_tx.close().await;
    };
    tokio::join!(up, down);
    Ok(())
}

/// A small scenario against `url`: `extra` is appended (phases, thresholds).
pub fn scenario(dir: &std::path::Path, name: &str, url: Option<&str>, body: &str) -> PathBuf {
    let target = url.map_or(String::new(), |u| format!("[target]\nurl = \"{u}\"\n"));
    let text = format!(
        "name = \"{name}\"\nseed = 7\n{target}\n{body}\n[generator]\nmax_lag = \"10s\"\ndrain = \"1s\"\ninterval = \"500ms\"\nprovision_concurrency = 16\n"
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// A population with little churn and lots of same-channel traffic.
pub const SMALL: &str = "[population]\nusers = 8\ndevices = { 1 = 0.5, 2 = 0.5 }\nfriends = 3\ngroups = 2\ngroup_size = { min = 3, max = 5 }\n\n[behavior]\nheartbeat_interval = \"500ms\"\noffline_after = \"1500ms\"\ngroup_share = 0.3\ntext_length = { mean = 20, max = 200 }\nreconnect_delay = { min = \"50ms\", max = \"200ms\" }\n";

pub fn opts(path: PathBuf, out: PathBuf) -> RunOpts {
    RunOpts {
        scenario: path,
        target: None,
        storage: None,
        out: Some(out),
        workers: 1,
        baseline: None,
        ca_file: None,
        shard: None,
        start_at: None,
        population: None,
        provisioning_token: None,
    }
}

/// Runs `loadgen run` in this process; returns the exit status and report.json.
pub async fn run(opts: RunOpts) -> (u8, Value) {
    let out = opts.out.clone().unwrap();
    let code = match loadgen::run::run(opts).await {
        Ok(c) => c,
        Err(e) => return (e.exit_code(), Value::String(e.to_string())),
    };
    let report = std::fs::read_to_string(out.join("report.json")).unwrap();
    (code, serde_json::from_str(&report).unwrap())
}

/// After a run with the embedded server: nothing listens on its address any more.
pub fn assert_embedded_server_stopped(report: &Value) {
    let addr = report["target"]["url"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://")
        .to_string();
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "the embedded server is stopped"
    );
}
