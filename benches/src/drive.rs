//! Many WebSocket clients, each sending frames at a fixed rate and counting what
//! comes back. The chat server and the echo floor are driven by this same code
//! (same connection count, timers, frame sizes and client stack), so the two
//! measurements differ only in the server.
//!
//! Each connection is one task: a timer (its first tick at a random offset, so
//! the sends spread evenly over each period) writes the next frame, and every
//! frame read is sorted by its first bytes into a counter; nothing is parsed.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

pub type Conn =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What the clients sent and received so far.
#[derive(Default)]
pub struct Counters {
    pub sent: AtomicU64,
    /// Frames answering a client's own frame: `ack`s, or echoes.
    pub replies: AtomicU64,
    /// Chat `message` frames.
    pub deliveries: AtomicU64,
    /// `error` frames, and connections that failed or closed.
    pub errors: AtomicU64,
    /// Anything else (presence frames, ...).
    pub other: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    pub sent: u64,
    pub replies: u64,
    pub deliveries: u64,
    pub errors: u64,
    pub other: u64,
}

impl Counters {
    pub fn snapshot(&self) -> Counts {
        Counts {
            sent: self.sent.load(Relaxed),
            replies: self.replies.load(Relaxed),
            deliveries: self.deliveries.load(Relaxed),
            errors: self.errors.load(Relaxed),
            other: self.other.load(Relaxed),
        }
    }

    fn count(&self, frame: &str) {
        let counter = if frame.starts_with("{\"seq\":")
            || frame.starts_with("{\"type\":\"message\"")
        {
            &self.deliveries
        } else if frame.starts_with("{\"type\":\"ack\"") || frame.starts_with("{\"type\":\"send\"")
        {
            // An ack from the chat server, or a `send` frame echoed back.
            &self.replies
        } else if frame.starts_with("{\"type\":\"error\"") {
            &self.errors
        } else {
            &self.other
        };
        counter.fetch_add(1, Relaxed);
    }
}

impl std::ops::Sub for Counts {
    type Output = Counts;
    fn sub(self, o: Counts) -> Counts {
        Counts {
            sent: self.sent - o.sent,
            replies: self.replies - o.replies,
            deliveries: self.deliveries - o.deliveries,
            errors: self.errors - o.errors,
            other: self.other - o.other,
        }
    }
}

/// Opens a WebSocket to each URL, 100 at a time. With `hello`, each connection
/// first reads one frame (the chat server's `hello`).
pub async fn connect_all(urls: &[String], hello: bool) -> anyhow::Result<Vec<Conn>> {
    let mut conns = Vec::with_capacity(urls.len());
    for chunk in urls.chunks(100) {
        let opened = futures_util::future::try_join_all(chunk.iter().map(|url| async move {
            // Small buffers: ten thousand clients in one process stay light.
            let config = WebSocketConfig::default()
                .read_buffer_size(4096)
                .write_buffer_size(0);
            let (mut ws, _) =
                tokio_tungstenite::connect_async_with_config(url.as_str(), Some(config), true)
                    .await?;
            if hello {
                let first = ws
                    .next()
                    .await
                    .ok_or_else(|| anyhow::anyhow!("closed before hello"))??;
                anyhow::ensure!(
                    first.to_text()?.contains("\"hello\""),
                    "first frame was not hello"
                );
            }
            Ok::<_, anyhow::Error>(ws)
        }))
        .await?;
        conns.extend(opened);
    }
    Ok(conns)
}

/// Makes connection `i`'s `n`-th frame.
pub trait Frames: Send + Sync + 'static {
    fn frame(&self, conn: usize, n: u64, rng: &mut Rng) -> String;
}

/// Runs every connection until `stop` resolves: connection `i` sends
/// `frames.frame(i, n, ..)` every `period`.
pub fn run(
    conns: Vec<Conn>,
    period: Duration,
    frames: Arc<dyn Frames>,
    counters: Arc<Counters>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    for (i, ws) in conns.into_iter().enumerate() {
        let (frames, counters, stop) = (frames.clone(), counters.clone(), stop.clone());
        tasks.spawn(one(i, ws, period, frames, counters, stop));
    }
    tasks
}

async fn one(
    i: usize,
    mut ws: Conn,
    period: Duration,
    frames: Arc<dyn Frames>,
    counters: Arc<Counters>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut rng = Rng::new(i as u64 + 1);
    let offset = period.mul_f64(rng.unit());
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            read = ws.next() => match read {
                Some(Ok(Message::Text(t))) => counters.count(t.as_str()),
                Some(Ok(_)) => {}
                _ => {
                    counters.errors.fetch_add(1, Relaxed);
                    return;
                }
            },
            _ = ticker.tick() => {
                n += 1;
                let frame = frames.frame(i, n, &mut rng);
                if ws.send(Message::text(frame)).await.is_err() {
                    counters.errors.fetch_add(1, Relaxed);
                    return;
                }
                counters.sent.fetch_add(1, Relaxed);
            }
        }
    }
    let _ = ws.close(None).await;
}

/// xorshift64*: a few cycles per number, seeded per connection (reproducible).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}
