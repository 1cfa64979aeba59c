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
//! Flags after the count go to the server (`-- 10000 --ws-read-buffer-bytes 256`).
//!
//! Every connection has read its `hello` and then sits idle, as a phone on a chat
//! app does between messages. The number to watch is `bytes per connection`.

use std::time::Duration;

use chatscale_benches::ServerProcess;
use futures_util::StreamExt;
use reference_server::metrics::resident_memory_of;
use reference_server::protocol::LoginResponse;
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

const WARMUP: usize = 500;
const DEVICES_PER_USER: usize = 10;

fn main() -> anyhow::Result<()> {
    if let Some(served) = chatscale_benches::serve_if_asked() {
        return served;
    }
    let args: Vec<String> = std::env::args().collect();
    let total: usize = args
        .get(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10_000);
    anyhow::ensure!(total > WARMUP, "open more than {WARMUP} connections");
    reference_server::server::raise_fd_limit();
    let rt = tokio::runtime::Runtime::new()?;
    let extra: Vec<&str> = args[2.min(args.len())..]
        .iter()
        .map(String::as_str)
        .collect();
    let mut flags = vec!["--storage", "memory"];
    flags.extend(extra);
    let mut child = ServerProcess::start(&flags)?;
    let result = rt.block_on(measure(&mut child, total));
    child.stop();
    result
}

async fn measure(server: &mut ServerProcess, total: usize) -> anyhow::Result<()> {
    let pid = server.child.id().to_string();
    let url = server.url.clone();
    let http = reqwest::Client::new();
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
            devices.push(format!("{}?token={}", r.servers[0], r.token));
        }
    }
    drop(http);

    let mut conns = Vec::with_capacity(total);
    open(&devices[..WARMUP], &mut conns).await?;
    let before = settled_rss(&pid).await;
    open(&devices[WARMUP..], &mut conns).await?;
    let after = settled_rss(&pid).await;
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
    drop(conns);
    Ok(())
}

type Conn =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens connections 100 at a time and reads each one's `hello`.
async fn open(urls: &[String], into: &mut Vec<Conn>) -> anyhow::Result<()> {
    for chunk in urls.chunks(100) {
        let opened = futures_util::future::try_join_all(chunk.iter().map(|url| async move {
            let config = WebSocketConfig::default()
                .read_buffer_size(4096)
                .write_buffer_size(0);
            let (mut ws, _) =
                tokio_tungstenite::connect_async_with_config(url.as_str(), Some(config), true)
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
