//! The chat server's CPU per delivery against a raw-echo floor, in one run.
//!
//! ```text
//! cargo run --release -p chatscale-benches --bin echo-ratio
//! ```
//!
//! Starts three servers as child processes: the reference server (memory
//! storage), a minimal tokio-tungstenite echo server with the same WebSocket
//! settings (512-byte read buffer, no write buffer), and the relay floor
//! (`chatscale_benches::relay`: the same settings, doing only the chat
//! protocol's frame work: an ack per send and a delivery per recipient through
//! the recipient's bounded queue). It creates 2,000 accounts with one device
//! each (groups of 4, 4 and 3 members in turn), connects every device to the
//! chat server and as many clients to the echo server and to the relay, then
//! drives all three at once, side by side, with the same client code: each chat
//! device sends at a fixed rate (30% to its group, the rest to one partner),
//! each relay client sends to the same recipients at the same rate, and each
//! echo client sends frames of the same bytes at the rate the chat server
//! writes deliveries (the send rate times the deliveries per send), so the
//! servers write about as many frames a second.
//!
//! Each measuring window reads both servers' CPU time (`/proc/PID/stat`,
//! user + system, all threads) and what the clients received, and prints
//! *deliveries per chat-server CPU-second*, *echoed frames per echo-server
//! CPU-second* and their ratio (chat/echo), then *deliveries per relay
//! CPU-second* with relay/echo (the protocol's floor, measured) and chat/relay
//! (how near the chat server is to that floor); then the medians of the
//! windows. The servers share the machine during the same seconds, so noise
//! from other work on the machine touches them alike and mostly cancels out of
//! the ratios.
//!
//! Flags: `--devices`, `--rate` (chat sends a second), `--group-share`, `--text`
//! (characters per message), `--warmup`, `--window` and `--rounds` (seconds,
//! windows); `--echo-rate` overrides the echo clients' frame rate. Anything
//! after `--` goes to the chat server's command line.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chatscale_benches::child::cpu_seconds;
use chatscale_benches::drive::{self, Counters, Counts};
use chatscale_benches::relay::RelayFrames;
use chatscale_benches::world::{SendFrames, World};
use chatscale_benches::ServerProcess;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(about = "chat deliveries per server CPU-second against a raw echo server")]
struct Opts {
    /// Connected devices (and echo clients).
    #[arg(long, default_value_t = 2000)]
    devices: usize,
    /// Chat sends per second, over all devices.
    #[arg(long, default_value_t = 10_000.0)]
    rate: f64,
    /// Share of sends that go to the sender's group.
    #[arg(long, default_value_t = 0.3)]
    group_share: f64,
    /// Characters of text per message.
    #[arg(long, default_value_t = 80)]
    text: usize,
    /// Echo frames per second (default: the chat server's expected deliveries a second).
    #[arg(long)]
    echo_rate: Option<f64>,
    /// Seconds of load before the first window.
    #[arg(long, default_value_t = 5.0)]
    warmup: f64,
    /// Seconds per measuring window.
    #[arg(long, default_value_t = 10.0)]
    window: f64,
    /// Measuring windows (the summary is their median).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Extra flags for the chat server.
    #[arg(last = true)]
    server: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    if let Some(served) = chatscale_benches::serve_if_asked() {
        return served;
    }
    if std::env::args().nth(1).as_deref() == Some("serve-echo") {
        return chatscale_benches::echo::run(512);
    }
    if std::env::args().nth(1).as_deref() == Some("serve-relay") {
        return chatscale_benches::relay::run(512);
    }
    let opts = Opts::parse();
    anyhow::ensure!(
        opts.rounds > 0 && opts.window > 0.0,
        "--rounds and --window above 0"
    );
    reference_server::server::raise_fd_limit();
    // Presence stays still for the whole run (no heartbeats are sent), and the
    // per-connection send allowance is not what is measured.
    let mut flags = vec![
        "--storage",
        "memory",
        "--offline-after-ms",
        "86400000",
        "--send-rate-per-sec",
        "0",
    ];
    flags.extend(opts.server.iter().map(String::as_str));
    let chat = ServerProcess::start(&flags)?;
    let echo = ServerProcess::spawn(&["serve-echo"])?;
    let relay = ServerProcess::spawn(&["serve-relay"])?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(measure(&opts, &Servers { chat, echo, relay }))
}

struct Servers {
    chat: ServerProcess,
    echo: ServerProcess,
    relay: ServerProcess,
}

async fn measure(opts: &Opts, servers: &Servers) -> anyhow::Result<()> {
    let Servers { chat, echo, relay } = servers;
    let started = Instant::now();
    let world = World::create(&chat.url, opts.devices, &[4, 4, 3]).await?;
    let per_send = world.deliveries_per_send(opts.group_share);
    let echo_rate = opts.echo_rate.unwrap_or(opts.rate * per_send);
    let chat_conns = drive::connect_all(&world.urls(), true).await?;
    let echo_urls = vec![echo.url.clone(); opts.devices];
    let echo_conns = drive::connect_all(&echo_urls, false).await?;
    let relay_frames = Arc::new(RelayFrames::new(&world, opts.group_share, opts.text));
    let relay_conns = drive::connect_all(&relay_frames.urls(&relay.url), false).await?;
    println!(
        "{} devices on each server (set up in {:.1}s); chat {:.0} sends/s ({:.0}% to groups, {:.3} deliveries per send), echo {:.0} frames/s; {}-character texts",
        opts.devices,
        started.elapsed().as_secs_f64(),
        opts.rate,
        opts.group_share * 100.0,
        per_send,
        echo_rate,
        opts.text,
    );
    println!(
        "chat server pid {}, echo server pid {}",
        chat.pid(),
        echo.pid()
    );
    println!("relay server pid {}", relay.pid());

    let frames = Arc::new(SendFrames::new(&world, opts.group_share, opts.text));
    let period = |rate: f64| Duration::from_secs_f64(opts.devices as f64 / rate);
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let chat_counts = Arc::new(Counters::default());
    let echo_counts = Arc::new(Counters::default());
    let relay_counts = Arc::new(Counters::default());
    let mut chat_tasks = drive::run(
        chat_conns,
        period(opts.rate),
        frames.clone(),
        chat_counts.clone(),
        stop.clone(),
    );
    let mut echo_tasks = drive::run(
        echo_conns,
        period(echo_rate),
        frames,
        echo_counts.clone(),
        stop.clone(),
    );
    let mut relay_tasks = drive::run(
        relay_conns,
        period(opts.rate),
        relay_frames,
        relay_counts.clone(),
        stop,
    );
    let counts = Sides {
        chat: &chat_counts,
        echo: &echo_counts,
        relay: &relay_counts,
    };
    tokio::time::sleep(Duration::from_secs_f64(opts.warmup)).await;

    let mut ratios = Vec::new();
    let mut chat_rates = Vec::new();
    let mut echo_rates = Vec::new();
    let mut relay_rates = Vec::new();
    let mut relay_ratios = Vec::new();
    let mut chat_relay_ratios = Vec::new();
    for round in 1..=opts.rounds {
        let before = Sample::take(servers, &counts)?;
        tokio::time::sleep(Duration::from_secs_f64(opts.window)).await;
        let after = Sample::take(servers, &counts)?;
        let w = after.minus(&before);
        let chat_per_cpu = w.chat.deliveries as f64 / w.chat_cpu;
        let echo_per_cpu = w.echo.replies as f64 / w.echo_cpu;
        let ratio = chat_per_cpu / echo_per_cpu;
        let relay_per_cpu = w.relay.deliveries as f64 / w.relay_cpu;
        println!(
            "window {round}: chat {:.0} sends/s, {:.0} acks/s, {:.0} deliveries/s on {:.2} cores: {:.0} deliveries per CPU-second ({:.2} us per send); \
             echo {:.0} frames/s on {:.2} cores: {:.0} frames per CPU-second; ratio {:.1}%{}",
            w.chat.sent as f64 / w.secs,
            w.chat.replies as f64 / w.secs,
            w.chat.deliveries as f64 / w.secs,
            w.chat_cpu / w.secs,
            chat_per_cpu,
            w.chat_cpu * 1e6 / w.chat.replies.max(1) as f64,
            w.echo.replies as f64 / w.secs,
            w.echo_cpu / w.secs,
            echo_per_cpu,
            ratio * 100.0,
            notes(&w),
        );
        println!(
            "window {round}: relay {:.0} sends/s, {:.0} acks/s, {:.0} deliveries/s on {:.2} cores: {:.0} deliveries per CPU-second ({:.2} us per send); \
             relay/echo {:.1}%, chat/relay {:.1}%{}",
            w.relay.sent as f64 / w.secs,
            w.relay.replies as f64 / w.secs,
            w.relay.deliveries as f64 / w.secs,
            w.relay_cpu / w.secs,
            relay_per_cpu,
            w.relay_cpu * 1e6 / w.relay.replies.max(1) as f64,
            100.0 * relay_per_cpu / echo_per_cpu,
            100.0 * chat_per_cpu / relay_per_cpu,
            side_notes(&[("relay", &w.relay)]),
        );
        relay_rates.push(relay_per_cpu);
        relay_ratios.push(relay_per_cpu / echo_per_cpu);
        chat_relay_ratios.push(chat_per_cpu / relay_per_cpu);
        ratios.push(ratio);
        chat_rates.push(chat_per_cpu);
        echo_rates.push(echo_per_cpu);
    }
    let _ = stop_tx.send(true);
    let lag = |c: &Counters| {
        let s = c.snapshot();
        s.sent.saturating_sub(s.replies)
    };
    println!(
        "median of {} windows: chat {:.0} deliveries per CPU-second, echo {:.0} frames per CPU-second, chat/echo {:.1}% \
         (unanswered at the end: chat {}, echo {}; driver CPU {:.1}s)",
        opts.rounds,
        median(&mut chat_rates),
        median(&mut echo_rates),
        median(&mut ratios) * 100.0,
        lag(&chat_counts),
        lag(&echo_counts),
        cpu_seconds("self")?,
    );
    while chat_tasks.join_next().await.is_some() {}
    println!(
        "median of {} windows: relay {:.0} deliveries per CPU-second, relay/echo {:.1}%, chat/relay {:.1}% \
         (unanswered at the end: relay {})",
        opts.rounds,
        median(&mut relay_rates),
        median(&mut relay_ratios) * 100.0,
        median(&mut chat_relay_ratios) * 100.0,
        lag(&relay_counts),
    );
    while echo_tasks.join_next().await.is_some() {}
    while relay_tasks.join_next().await.is_some() {}
    Ok(())
}

/// What makes a window's figures doubtful: errors, or answers falling behind
/// the sends (a server, or the machine, could not keep up with the rate).
fn notes(w: &Window) -> String {
    side_notes(&[("chat", &w.chat), ("echo", &w.echo)])
}

fn side_notes(sides: &[(&str, &Counts)]) -> String {
    let mut notes = Vec::new();
    let errors: u64 = sides.iter().map(|(_, c)| c.errors).sum();
    if errors > 0 {
        notes.push(format!("{errors} errors"));
    }
    for &(side, c) in sides {
        if (c.replies as f64) < 0.98 * c.sent as f64 {
            notes.push(format!(
                "{side} answered {:.0}% of its sends: not keeping up, lower --rate",
                100.0 * c.replies as f64 / c.sent.max(1) as f64
            ));
        }
    }
    match notes.is_empty() {
        true => String::new(),
        false => format!(" ({})", notes.join("; ")),
    }
}

/// Each side's client counters.
struct Sides<'a> {
    chat: &'a Counters,
    echo: &'a Counters,
    relay: &'a Counters,
}

/// The servers' CPU time and the sides' counters at one moment.
struct Sample {
    at: Instant,
    chat_cpu: f64,
    echo_cpu: f64,
    relay_cpu: f64,
    chat: Counts,
    echo: Counts,
    relay: Counts,
}

/// The difference of two samples: one window.
struct Window {
    secs: f64,
    chat_cpu: f64,
    echo_cpu: f64,
    relay_cpu: f64,
    chat: Counts,
    echo: Counts,
    relay: Counts,
}

impl Sample {
    fn take(servers: &Servers, counts: &Sides<'_>) -> anyhow::Result<Sample> {
        Ok(Sample {
            at: Instant::now(),
            chat_cpu: servers.chat.cpu_seconds()?,
            echo_cpu: servers.echo.cpu_seconds()?,
            relay_cpu: servers.relay.cpu_seconds()?,
            chat: counts.chat.snapshot(),
            echo: counts.echo.snapshot(),
            relay: counts.relay.snapshot(),
        })
    }

    fn minus(&self, earlier: &Sample) -> Window {
        Window {
            secs: (self.at - earlier.at).as_secs_f64(),
            chat_cpu: self.chat_cpu - earlier.chat_cpu,
            echo_cpu: self.echo_cpu - earlier.echo_cpu,
            relay_cpu: self.relay_cpu - earlier.relay_cpu,
            chat: self.chat - earlier.chat,
            echo: self.echo - earlier.echo,
            relay: self.relay - earlier.relay,
        }
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}
