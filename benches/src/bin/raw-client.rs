//! The floor under loadgen's CPU per chat message: a minimal tokio-tungstenite
//! client driving loadgen's `scenarios/cpu-per-message.toml` workload against
//! the same reference server, timing nothing and auditing nothing.
//!
//! ```text
//! cargo run --release -p chatscale-benches --bin raw-client
//! benches/gen-cpu-floor.sh        # this beside loadgen, alternating runs
//! ```
//!
//! It starts the reference server as its child process with the flags loadgen's
//! embedded server gets (memory storage, 5 s heartbeats, 30 s presence timeout,
//! cheap password hashing), creates `--users` accounts with one device each and
//! `--friends` friends each (a ring: user i befriends the next `friends / 2`
//! users), connects every device and reads its `hello`. Then each connection
//! is one task that sends one-to-one messages to its friends in turn as Poisson
//! arrivals (together `--rate` a second, open model: no send waits for an ack),
//! a heartbeat every `--heartbeat`, and reads every frame, sorting it by its
//! first bytes (ack, message, other) without parsing it.
//!
//! The figure is the client process's own CPU time (user + system,
//! `/proc/self/stat`; the server is a separate process) over the steady phase
//! without its first `--skip` seconds and its last second, divided by the
//! messages sent in that window: one message is one send, its ack and one
//! delivery, loadgen's unit in `benches/loadgen-cpu.sh`. At the end it checks
//! that every send was acked and delivered once.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatscale_benches::child::cpu_seconds;
use chatscale_benches::drive::{self, Conn, Rng};
use chatscale_benches::world::accounts;
use chatscale_benches::ServerProcess;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Parser)]
#[command(about = "CPU per chat message of a minimal tokio-tungstenite client")]
struct Opts {
    /// Users, one device each.
    #[arg(long, default_value_t = 2000)]
    users: usize,
    /// Friends per user (even: a ring of `friends / 2` on each side).
    #[arg(long, default_value_t = 4)]
    friends: usize,
    /// One-to-one sends a second, over all devices (Poisson arrivals).
    #[arg(long, default_value_t = 5000.0)]
    rate: f64,
    /// Seconds of steady load.
    #[arg(long, default_value_t = 30.0)]
    steady: f64,
    /// Seconds at the start of the steady phase left out of the figure.
    #[arg(long, default_value_t = 5.0)]
    skip: f64,
    /// Seconds between a device's heartbeats.
    #[arg(long, default_value_t = 5.0)]
    heartbeat: f64,
    /// Characters of text per message.
    #[arg(long, default_value_t = 60)]
    text: usize,
    /// Runtime worker threads (1: a current-thread runtime, as loadgen's devices).
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    acks: AtomicU64,
    deliveries: AtomicU64,
    errors: AtomicU64,
    other: AtomicU64,
}

fn main() -> anyhow::Result<()> {
    if let Some(served) = chatscale_benches::serve_if_asked() {
        return served;
    }
    let opts = Opts::parse();
    anyhow::ensure!(
        opts.friends >= 2 && opts.friends % 2 == 0 && opts.friends < opts.users,
        "--friends: an even number from 2, below --users"
    );
    anyhow::ensure!(
        opts.rate > 0.0 && opts.steady > opts.skip + 1.0,
        "--rate above 0 and --steady longer than --skip + 1"
    );
    reference_server::server::raise_fd_limit();
    let heartbeat_ms = ((opts.heartbeat * 1000.0) as u64).max(1).to_string();
    let server = ServerProcess::start(&[
        "--storage",
        "memory",
        "--auth-rate-per-addr",
        "0",
        "--heartbeat-interval-ms",
        &heartbeat_ms,
        "--offline-after-ms",
        "30000",
    ])?;
    let rt = if opts.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(opts.threads)
            .enable_all()
            .build()?
    };
    rt.block_on(measure(&opts, &server))
}

async fn measure(opts: &Opts, server: &ServerProcess) -> anyhow::Result<()> {
    let started = Instant::now();
    let (urls, friends) = provision(&server.url, opts.users, opts.friends).await?;
    let conns = drive::connect_all(&urls, true).await?;
    eprintln!(
        "{} devices connected, {} friends each, in {:.1}s",
        conns.len(),
        opts.friends,
        started.elapsed().as_secs_f64()
    );
    let counters = Arc::new(Counters::default());
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let text: Arc<str> = "abcdefghijklmnopqrstuvwxyz0123456789 "
        .chars()
        .cycle()
        .take(opts.text)
        .collect::<String>()
        .into();
    let per_device = opts.rate / opts.users as f64;
    let heartbeat = Duration::from_secs_f64(opts.heartbeat);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (ws, to)) in conns.into_iter().zip(friends).enumerate() {
        let device = Device {
            i,
            to,
            text: text.clone(),
            rate: per_device,
            heartbeat,
            counters: counters.clone(),
        };
        tasks.spawn(device.run(ws, stop.clone()));
    }
    let steady_start = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(opts.skip)).await;
    let (cpu0, sent0, t0) = (
        cpu_seconds("self")?,
        counters.sent.load(Relaxed),
        Instant::now(),
    );
    let end = steady_start + Duration::from_secs_f64(opts.steady - 1.0);
    tokio::time::sleep_until(end.into()).await;
    let (cpu1, sent1, secs) = (
        cpu_seconds("self")?,
        counters.sent.load(Relaxed),
        t0.elapsed().as_secs_f64(),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = stop_tx.send(true);
    // In-flight acks and deliveries arrive before the sockets close.
    while tasks.join_next().await.is_some() {}
    let sends = (sent1 - sent0) as f64;
    let c = &counters;
    let (sent, acks, deliveries) = (
        c.sent.load(Relaxed),
        c.acks.load(Relaxed),
        c.deliveries.load(Relaxed),
    );
    let us = (cpu1 - cpu0) / sends * 1e6;
    println!(
        "raw client: {us:.1} us CPU per message ({:.0} sends/s over {secs:.1}s on {:.2} cores; \
         {sent} sent, {acks} acked, {deliveries} delivered, {} errors, {} other frames)",
        sends / secs,
        (cpu1 - cpu0) / secs,
        c.errors.load(Relaxed),
        c.other.load(Relaxed),
    );
    anyhow::ensure!(
        acks == sent && deliveries == sent && c.errors.load(Relaxed) == 0,
        "not every send was acked and delivered once: the figure does not stand"
    );
    Ok(())
}

/// Accounts, one login (device) each, and a ring of friendships: the device
/// URLs and each user's friends' ids.
async fn provision(
    base: &str,
    users: usize,
    friends: usize,
) -> anyhow::Result<(Vec<String>, Vec<Vec<u64>>)> {
    let http = reqwest::Client::new();
    let logins = accounts(&http, base, "r", users).await?;
    let pairs: Vec<(usize, usize)> = (0..users)
        .flat_map(|i| (1..=friends / 2).map(move |k| (i, (i + k) % users)))
        .collect();
    for chunk in pairs.chunks(64) {
        futures_util::future::try_join_all(chunk.iter().map(|&(a, b)| {
            let (http, token) = (http.clone(), logins[a].token.clone());
            let body = json!({"user_id": logins[b].user_id});
            async move {
                // 204 No Content: no JSON body to read.
                http.post(format!("{base}/v1/friends"))
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .await?
                    .error_for_status()?;
                Ok::<_, anyhow::Error>(())
            }
        }))
        .await?;
    }
    let urls = logins
        .iter()
        .map(|l| format!("{}?token={}", l.servers[0], l.token))
        .collect();
    let friends = (0..users)
        .map(|i| {
            (1..=friends / 2)
                .flat_map(|k| [(i + k) % users, (i + users - k) % users])
                .map(|f| logins[f].user_id)
                .collect()
        })
        .collect();
    Ok((urls, friends))
}

struct Device {
    i: usize,
    /// Its friends' user ids, written to in turn.
    to: Vec<u64>,
    text: Arc<str>,
    /// Its sends a second (Poisson).
    rate: f64,
    heartbeat: Duration,
    counters: Arc<Counters>,
}

impl Device {
    async fn run(self, mut ws: Conn, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut rng = Rng::new(self.i as u64 + 1);
        let gap = |rng: &mut Rng| {
            let u = rng.unit().max(f64::EPSILON);
            Duration::from_secs_f64(-u.ln() / self.rate)
        };
        let mut next = tokio::time::Instant::now() + gap(&mut rng);
        let send = tokio::time::sleep_until(next);
        tokio::pin!(send);
        let first_beat = self.heartbeat.mul_f64(rng.unit());
        let mut beats =
            tokio::time::interval_at(tokio::time::Instant::now() + first_beat, self.heartbeat);
        let mut n = 0u64;
        let c = &self.counters;
        let sending = loop {
            tokio::select! {
                _ = stop.changed() => break true,
                read = ws.next() => match read {
                    Some(Ok(Message::Text(t))) => {
                        let t = t.as_str();
                        let counter = if t.starts_with("{\"type\":\"ack\"") {
                            &c.acks
                        } else if is_delivery(t) {
                            &c.deliveries
                        } else if t.starts_with("{\"type\":\"error\"") {
                            &c.errors
                        } else {
                            &c.other
                        };
                        counter.fetch_add(1, Relaxed);
                    }
                    Some(Ok(_)) => {}
                    _ => break false,
                },
                _ = &mut send => {
                    n += 1;
                    let to = self.to[n as usize % self.to.len()];
                    let frame = format!(
                        "{{\"type\":\"send\",\"req\":{n},\"to\":{{\"user\":{to}}},\"client_msg_id\":\"r{}-{n}\",\"text\":\"{}\"}}",
                        self.i, self.text
                    );
                    if ws.send(Message::text(frame)).await.is_err() {
                        break false;
                    }
                    c.sent.fetch_add(1, Relaxed);
                    next += gap(&mut rng);
                    send.as_mut().reset(next);
                }
                _ = beats.tick() => {
                    if ws.send(Message::text("{\"type\":\"heartbeat\"}")).await.is_err() {
                        break false;
                    }
                }
            }
        };
        if !sending {
            c.errors.fetch_add(1, Relaxed);
            return;
        }
        // The run is over: read what is still in flight for a moment, then close.
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            while let Some(Ok(m)) = ws.next().await {
                if let Message::Text(t) = m {
                    if t.as_str().starts_with("{\"type\":\"ack\"") {
                        c.acks.fetch_add(1, Relaxed);
                    } else if is_delivery(t.as_str()) {
                        c.deliveries.fetch_add(1, Relaxed);
                    }
                }
            }
        })
        .await;
        let _ = ws.close(None).await;
    }
}

/// A `message` frame: the server writes it with its inbox `seq` spliced in
/// first (`{"seq":N,"type":"message",...}`).
fn is_delivery(frame: &str) -> bool {
    frame.starts_with("{\"seq\":") || frame.starts_with("{\"type\":\"message\"")
}
