//! Memory per idle WebSocket connection in the reference server.
//!
//! Starts the server as a child process (this same binary, re-executed with
//! `serve`, so the server's memory is its own), creates devices, opens a warm-up
//! batch of connections, reads the server's resident memory, opens the rest, waits
//! for the server to settle, and prints the growth per connection:
//!
//! ```text
//! cargo run --release -p chatscale-benches --bin idle-connections -- 10000
//! ```
//!
//! Flags after the count go to the server (`-- 10000 --ws-read-buffer-bytes 256`),
//! except two of the bench's own:
//! - `--tls`: the server serves `wss://` with a certificate made for the run
//!   (rcgen), and every client connects over TLS;
//! - `--messages N`: after the idle measurement, N one-to-one messages go between
//!   pairs of the open connections (64 in flight), and the server's CPU time per
//!   message (send, ack, delivery) is printed.
//!
//! With `--target URL --pid PID` first, no server is started: the connections
//! go to the server at URL, whose process PID is measured (how
//! `benches/idle-breakdown.sh` runs the server under a heap profiler).
//!
//! Every connection has read its `hello` and then sits idle, as a phone on a chat
//! app does between messages. The number to watch is `bytes per connection`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chatscale_benches::{child::cpu_seconds, ServerProcess};
use futures_util::StreamExt;
use reference_server::metrics::resident_memory_of;
use reference_server::protocol::LoginResponse;
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::Connector;

const WARMUP: usize = 500;
const DEVICES_PER_USER: usize = 10;

fn main() -> anyhow::Result<()> {
    if let Some(served) = chatscale_benches::serve_if_asked() {
        return served;
    }
    let mut args: Vec<String> = std::env::args().collect();
    let mut target = None;
    if args.get(1).map(String::as_str) == Some("--target") {
        anyhow::ensure!(
            args.len() >= 5 && args[3] == "--pid",
            "usage: idle-connections --target URL --pid PID [COUNT]"
        );
        target = Some((args[2].clone(), args[4].clone()));
        args.drain(1..5);
    }
    let total: usize = args
        .get(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10_000);
    anyhow::ensure!(total > WARMUP, "open more than {WARMUP} connections");
    reference_server::server::raise_fd_limit();
    let mut extra: Vec<String> = Vec::new();
    let (mut tls, mut messages) = (false, 0usize);
    let mut rest = args[2.min(args.len())..].iter();
    while let Some(a) = rest.next() {
        match a.as_str() {
            "--tls" => tls = true,
            "--messages" => messages = rest.next().map(|n| n.parse()).transpose()?.unwrap_or(0),
            _ => extra.push(a.clone()),
        }
    }
    let cert = tls.then(TestCert::new).transpose()?;
    if let Some(c) = &cert {
        extra.extend(c.server_flags());
    }
    let rt = tokio::runtime::Runtime::new()?;
    if let Some((url, pid)) = target {
        let connector = cert.as_ref().map(TestCert::connector);
        let http = match &cert {
            Some(c) => c.http()?,
            None => reqwest::Client::new(),
        };
        return rt.block_on(measure(&url, &pid, total, http, connector, messages));
    }
    let mut flags = vec!["--storage", "memory"];
    flags.extend(extra.iter().map(String::as_str));
    let mut child = ServerProcess::start(&flags)?;
    let connector = cert.as_ref().map(TestCert::connector);
    let http = match &cert {
        Some(c) => c.http()?,
        None => reqwest::Client::new(),
    };
    let (url, pid) = (child.url.clone(), child.pid().to_string());
    let result = rt.block_on(measure(&url, &pid, total, http, connector, messages));
    child.stop();
    result
}

async fn measure(
    url: &str,
    pid: &str,
    total: usize,
    http: reqwest::Client,
    connector: Option<Connector>,
    messages: usize,
) -> anyhow::Result<()> {
    let users = total.div_ceil(DEVICES_PER_USER);
    let mut devices = Vec::with_capacity(total);
    for u in 0..users {
        let body = json!({"username": format!("idle{u}"), "password": "password123"});
        http.post(format!("{url}/v1/signup"))
            .json(&body)
            .send()
            .await?
            .error_for_status()?;
        for _ in 0..DEVICES_PER_USER.min(total - devices.len()) {
            let r: LoginResponse = http
                .post(format!("{url}/v1/login"))
                .json(&body)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            devices.push((format!("{}?token={}", r.servers[0], r.token), r.user_id));
        }
    }
    drop(http);

    let urls: Vec<String> = devices.iter().map(|(u, _)| u.clone()).collect();
    let mut conns = Vec::with_capacity(total);
    open(&urls[..WARMUP], &connector, &mut conns).await?;
    let before = settled_rss(pid).await;
    open(&urls[WARMUP..], &connector, &mut conns).await?;
    let after = settled_rss(pid).await;
    let opened = (total - WARMUP) as f64;
    let per_conn = (after as f64 - before as f64) / opened;
    println!(
        "connections: {total} (warm-up {WARMUP}, measured {})",
        total - WARMUP
    );
    println!(
        "server RSS: {:.1} MiB after warm-up, {:.1} MiB at {total}",
        mib(before),
        mib(after)
    );
    println!("bytes per connection: {per_conn:.0}");
    if messages > 0 {
        let users: Vec<u64> = devices.iter().map(|(_, u)| *u).collect();
        exchange(pid, &mut conns, &users, messages).await?;
    }
    drop(conns);
    Ok(())
}

/// Sends `n` messages, each from connection `i` to the user of connection
/// `i + DEVICES_PER_USER` (another user), 64 in flight, every one acked and
/// delivered; prints the server's CPU time per message.
async fn exchange(pid: &str, conns: &mut [Conn], users: &[u64], n: usize) -> anyhow::Result<()> {
    use futures_util::SinkExt;
    let pairs = conns.len() - DEVICES_PER_USER;
    let cpu_before = cpu_seconds(pid)?;
    let started = std::time::Instant::now();
    for round in (0..n).collect::<Vec<_>>().chunks(64) {
        // What each connection will receive in this round: an ack per send it
        // made, a message per send to its user or by its user's other devices.
        let mut want: HashMap<usize, (usize, usize)> = HashMap::new();
        for &k in round {
            let from = k % pairs;
            let to = users[from + DEVICES_PER_USER];
            let frame = json!({"type": "send", "req": k, "to": {"user": to},
                "client_msg_id": format!("m{k}"), "text": "x".repeat(80)});
            conns[from]
                .send(Message::Text(frame.to_string().into()))
                .await?;
            want.entry(from).or_default().0 += 1;
            for (c, _) in users
                .iter()
                .enumerate()
                .filter(|(c, &u)| (u == to || u == users[from]) && *c != from && *c < conns.len())
            {
                want.entry(c).or_default().1 += 1;
            }
        }
        for (c, (acks, msgs)) in want {
            let (mut a, mut m) = (0, 0);
            while a < acks || m < msgs {
                let msg = conns[c]
                    .next()
                    .await
                    .ok_or_else(|| anyhow::anyhow!("closed mid-exchange"))??;
                let text = msg.to_text().unwrap_or("");
                a += usize::from(text.contains("\"ack\""));
                m += usize::from(text.contains("\"message\""));
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid)? - cpu_before;
    println!(
        "messages: {n} in {elapsed:.1} s, server CPU {:.1} us per message ({} deliveries each: the recipient's devices and the sender's other ones)",
        cpu * 1e6 / n as f64,
        2 * DEVICES_PER_USER - 1
    );
    Ok(())
}

/// A certificate for 127.0.0.1 made for the run, as PEM files in a temp dir.
struct TestCert {
    dir: tempfile::TempDir,
    pem: String,
}

impl TestCert {
    fn new() -> anyhow::Result<Self> {
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])?;
        let dir = tempfile::tempdir()?;
        let pem = cert.cert.pem();
        std::fs::write(dir.path().join("cert.pem"), &pem)?;
        std::fs::write(dir.path().join("key.pem"), cert.key_pair.serialize_pem())?;
        Ok(TestCert { dir, pem })
    }

    fn server_flags(&self) -> Vec<String> {
        let path = |f: &str| self.dir.path().join(f).display().to_string();
        vec![
            "--tls-cert".into(),
            path("cert.pem"),
            "--tls-key".into(),
            path("key.pem"),
        ]
    }

    fn http(&self) -> anyhow::Result<reqwest::Client> {
        let ca = reqwest::Certificate::from_pem(self.pem.as_bytes())?;
        Ok(reqwest::Client::builder()
            .add_root_certificate(ca)
            .build()?)
    }

    fn connector(&self) -> Connector {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        if let Ok(der) = rustls_pki_types::CertificateDer::from_pem_slice(self.pem.as_bytes()) {
            let _ = roots.add(der);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Connector::Rustls(Arc::new(config))
    }
}

type Conn =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens connections 100 at a time and reads each one's `hello`.
async fn open(
    urls: &[String],
    tls: &Option<Connector>,
    into: &mut Vec<Conn>,
) -> anyhow::Result<()> {
    for chunk in urls.chunks(100) {
        let opened = futures_util::future::try_join_all(chunk.iter().map(|url| async move {
            let config = WebSocketConfig::default()
                .read_buffer_size(4096)
                .write_buffer_size(0);
            let (mut ws, _) = tokio_tungstenite::connect_async_tls_with_config(
                url.as_str(),
                Some(config),
                true,
                tls.clone(),
            )
            .await?;
            let hello = ws
                .next()
                .await
                .ok_or_else(|| anyhow::anyhow!("closed before hello"))??;
            anyhow::ensure!(
                hello.to_text()?.contains("\"hello\""),
                "first frame was not hello"
            );
            Ok::<_, anyhow::Error>(ws)
        }))
        .await?;
        into.extend(opened);
    }
    Ok(())
}

/// The server's RSS once it stops moving (allocator and kernel settle).
async fn settled_rss(pid: &str) -> u64 {
    let mut last = 0;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = resident_memory_of(pid).unwrap_or(0);
        if now.abs_diff(last) < 64 * 1024 {
            return now;
        }
        last = now;
    }
    last
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
