//! The server's command line (`Opts`, clap derive) and the validated
//! [`Config`] it resolves into before anything starts.
//!
//! The flags named in `docs/design.md` are the contract tests rely on; the
//! others tune limits (outbound queue bound, frame limit, password-hash cost).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

use crate::limits::Rate;
use crate::tls::TlsFiles;

/// `reference-server` command line.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "reference-server",
    version,
    about = "chatscale reference chat server"
)]
pub struct Opts {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Storage backend: memory, embedded:DIR, redis://HOST:PORT (or a Redis
    /// Cluster: redis-cluster://HOST:PORT?node=HOST:PORT...), postgres://...
    /// The default is durable (history is kept forever) and needs nothing installed.
    #[arg(long, default_value = "embedded:./chatscale-data")]
    pub storage: String,

    /// Join a cluster of nodes over this Redis: redis://HOST:PORT[/DB][?prefix=NAME]
    /// (or redis-cluster://...). Needs shared storage (redis:// or postgres://).
    #[arg(long)]
    pub cluster: Option<String>,

    /// This node's name in discovery and metrics (default: node-PID).
    #[arg(long)]
    pub node_id: Option<String>,

    /// Address handed out by discovery and login, as ws://HOST:PORT
    /// (default: the listen address).
    #[arg(long)]
    pub advertise: Option<String>,

    /// Heartbeat interval announced to clients, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub heartbeat_interval_ms: u64,

    /// A user goes offline after this long without a heartbeat from any device.
    #[arg(long, default_value_t = 30000)]
    pub offline_after_ms: u64,

    /// POST push notifications as JSON to this URL (default: count them in /metrics).
    #[arg(long)]
    pub push_webhook: Option<String>,

    /// Argon2id memory cost in KiB (OWASP: 19456). Values as low as 8 are for
    /// load tests that create many accounts quickly, never for production.
    #[arg(long, default_value_t = 19456)]
    pub password_hash_memory_kib: u32,

    /// Argon2id iterations (time cost).
    #[arg(long, default_value_t = 2)]
    pub password_hash_iterations: u32,

    /// Outbound frames a connection may have queued before it is closed with 1008.
    #[arg(long, default_value_t = 1024)]
    pub outbox_max_frames: usize,

    /// Outbound bytes a connection may have queued before it is closed with 1008.
    #[arg(long, default_value_t = 8 * 1024 * 1024)]
    pub outbox_max_bytes: usize,

    /// Largest WebSocket frame or message accepted, in bytes; a larger one closes
    /// the connection with 1009. At least 1 MiB so that 100,000 four-byte
    /// characters fit.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub max_frame_bytes: usize,

    /// Per-connection WebSocket read buffer, in bytes, and the most one read
    /// takes from the socket. Small keeps idle connections cheap: 256 holds a
    /// typical client frame (a `send` with a short text, a heartbeat); a larger
    /// frame grows the buffer, which keeps that size.
    #[arg(long, default_value_t = 256)]
    pub ws_read_buffer_bytes: usize,

    /// Sends a connection may make per second, sustained (0 = no limit); past it
    /// a `send` is answered `rate_limited` and nothing is stored.
    #[arg(long, default_value_t = 200)]
    pub send_rate_per_sec: u32,

    /// Sends a connection may make in a burst above the sustained rate.
    #[arg(long, default_value_t = 1000)]
    pub send_burst: u32,

    /// Sends one user may make per second across all its devices, sustained
    /// (0 = no limit); past it a `send` is answered `rate_limited`.
    #[arg(long, default_value_t = 400)]
    pub user_send_rate_per_sec: u32,

    /// Sends one user may make in a burst, across all its devices.
    #[arg(long, default_value_t = 2000)]
    pub user_send_burst: u32,

    /// Logins and signups per second from one source address (0 = no limit);
    /// past it `429 rate_limited`. Loose by default: a load generator
    /// provisioning 100,000 accounts from one address (200,000 requests, over
    /// 10,000 a second with cheap hashes) must not hit it.
    #[arg(long, default_value_t = 20_000)]
    pub auth_rate_per_addr: u32,

    /// Logins and signups one source address may make in a burst.
    #[arg(long, default_value_t = 200_000)]
    pub auth_burst_per_addr: u32,

    /// Logins and signups per second for one username (0 = no limit): what a
    /// password guesser gets, whatever addresses it comes from.
    #[arg(long, default_value_t = 5)]
    pub auth_rate_per_user: u32,

    /// Logins and signups for one username in a burst.
    #[arg(long, default_value_t = 20)]
    pub auth_burst_per_user: u32,

    /// Password hashes computed at once (0 = one per CPU core); further logins
    /// and signups wait their turn, so a flood cannot start hundreds of
    /// memory-hard hashes together.
    #[arg(long, default_value_t = 0)]
    pub password_hash_concurrency: usize,

    /// Sends waiting for storage at once (in the store's queue or for their
    /// channel's turn); past it a `send` is answered `overloaded` at once.
    #[arg(long, default_value_t = 4096)]
    pub max_pending_accepts: usize,

    /// A resend with the same client_msg_id is answered with the first ack for
    /// this long after the first send; later it is a new message (the dedupe
    /// record is removed, so storage does not grow per message for it forever).
    #[arg(long, default_value_t = 7 * 24 * 3600)]
    pub dedupe_window_secs: u64,

    /// How often expired tokens and old dedupe records are removed.
    #[arg(long, default_value_t = 600)]
    pub expire_interval_secs: u64,

    /// How often every connection's accounted memory is observed in the
    /// `chatscale_connection_memory_bytes` histogram, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub connection_sample_ms: u64,

    /// Most WebSocket connections this node holds; past it an upgrade is answered
    /// `503 overloaded` (0 = the open-file limit less 256 for everything else).
    #[arg(long, default_value_t = 0)]
    pub max_connections: usize,

    /// A connection whose outbound frame cannot be written for this long (the
    /// client stopped reading) is closed with 1008.
    #[arg(long, default_value_t = 10_000)]
    pub write_timeout_ms: u64,

    /// PEM certificate chain: with --tls-key, serve https:// and wss:// (rustls).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// Token lifetime in seconds (0 = until logout). An expired token gets 401.
    #[arg(long, default_value_t = 30 * 24 * 3600)]
    pub token_ttl_secs: u64,

    /// Enables the bulk provisioning endpoints (`/v1/provision/...`, for load
    /// tests) for requests that carry this token in `X-Provisioning-Token`;
    /// without it they do not exist (404). At least 16 characters.
    #[arg(long)]
    pub provisioning_token: Option<String>,
}

/// Everything the server needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub storage: String,
    /// The cluster's Redis URL (`--cluster`), if this node is part of one.
    pub cluster: Option<String>,
    pub node_id: String,
    pub advertise: Option<String>,
    pub heartbeat_interval: Duration,
    pub offline_after: Duration,
    pub push_webhook: Option<String>,
    pub password_hash_memory_kib: u32,
    pub password_hash_iterations: u32,
    pub outbox_max_frames: usize,
    pub outbox_max_bytes: usize,
    pub max_frame_bytes: usize,
    pub ws_read_buffer_bytes: usize,
    pub token_ttl: Option<Duration>,
    pub send_rate_per_sec: u32,
    pub send_burst: u32,
    pub max_connections: usize,
    pub write_timeout: Duration,
    pub user_send: Rate,
    pub auth_per_addr: Rate,
    pub auth_per_user: Rate,
    pub password_hash_concurrency: usize,
    pub tls: Option<TlsFiles>,
    pub max_pending_accepts: usize,
    pub dedupe_window: Duration,
    pub expire_interval: Duration,
    pub connection_sample_interval: Duration,
    /// `--provisioning-token`: the bulk endpoints are on when set.
    pub provisioning_token: Option<String>,
}

/// A flag value that cannot be used; the message names the flag.
#[derive(Debug, thiserror::Error)]
#[error("--{flag}: {reason}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub reason: String,
}

impl Opts {
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let err = |flag, reason: &str| {
            Err(ConfigError {
                flag,
                reason: reason.to_string(),
            })
        };
        if self.heartbeat_interval_ms == 0 {
            return err("heartbeat-interval-ms", "must be above 0");
        }
        if self.offline_after_ms == 0 {
            return err("offline-after-ms", "must be above 0");
        }
        if self.max_frame_bytes < 1024 * 1024 {
            return err("max-frame-bytes", "must be at least 1048576 (1 MiB)");
        }
        if self.outbox_max_frames == 0 || self.outbox_max_bytes < self.max_frame_bytes {
            return err(
                "outbox-max-bytes",
                "must be at least --max-frame-bytes, and --outbox-max-frames above 0",
            );
        }
        if !(8..=4 * 1024 * 1024).contains(&self.password_hash_memory_kib) {
            return err("password-hash-memory-kib", "must be 8 to 4194304");
        }
        if self.dedupe_window_secs < 60 {
            return err("dedupe-window-secs", "must be at least 60");
        }
        if self.write_timeout_ms == 0 {
            return err("write-timeout-ms", "must be above 0");
        }
        if self.password_hash_iterations == 0 {
            return err("password-hash-iterations", "must be above 0");
        }
        if !crate::store::is_known_url(&self.storage) {
            return Err(ConfigError {
                flag: "storage",
                reason: format!(
                    "unknown storage {:?}: use memory, embedded:DIR, redis://HOST:PORT, \
                     redis-cluster://HOST:PORT or postgres://...",
                    crate::store::redact(&self.storage)
                ),
            });
        }
        if let Some(url) = &self.cluster {
            if !crate::store::is_redis_url(url) {
                return err(
                    "cluster",
                    "must be redis://HOST:PORT[/DB] (or redis-cluster://HOST:PORT?node=...)",
                );
            }
            let shared = crate::store::is_redis_url(&self.storage)
                || self.storage.starts_with("postgres://")
                || self.storage.starts_with("postgresql://");
            if !shared {
                return err(
                    "cluster",
                    "needs storage every node shares (--storage redis://... or postgres://...): \
                     with memory or embedded: storage each node would keep its own accounts, \
                     messages and inboxes",
                );
            }
            if let Some(id) = &self.node_id {
                let ok = !id.is_empty()
                    && id.len() <= 64
                    && id
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
                if !ok {
                    return err(
                        "node-id",
                        "must be 1-64 characters of A-Z a-z 0-9 _ - . in a cluster",
                    );
                }
            }
        }
        if let Some(a) = &self.advertise {
            if !(a.starts_with("ws://") || a.starts_with("wss://")) {
                return err("advertise", "must be ws://HOST:PORT or wss://HOST:PORT");
            }
        }
        if let Some(t) = &self.provisioning_token {
            if t.len() < 16 || !t.bytes().all(|b| b.is_ascii_graphic()) {
                return err(
                    "provisioning-token",
                    "must be at least 16 printable ASCII characters (no spaces)",
                );
            }
        }
        if let Some(w) = &self.push_webhook {
            if !(w.starts_with("http://") || w.starts_with("https://")) {
                return err("push-webhook", "must be an http:// URL");
            }
        }
        Ok(Config {
            listen: self.listen,
            storage: self.storage,
            cluster: self.cluster,
            node_id: self
                .node_id
                .unwrap_or_else(|| format!("node-{}", std::process::id())),
            advertise: self.advertise.map(|a| a.trim_end_matches('/').to_string()),
            heartbeat_interval: Duration::from_millis(self.heartbeat_interval_ms),
            offline_after: Duration::from_millis(self.offline_after_ms),
            push_webhook: self.push_webhook,
            password_hash_memory_kib: self.password_hash_memory_kib,
            password_hash_iterations: self.password_hash_iterations,
            outbox_max_frames: self.outbox_max_frames,
            outbox_max_bytes: self.outbox_max_bytes,
            max_frame_bytes: self.max_frame_bytes,
            ws_read_buffer_bytes: self.ws_read_buffer_bytes.max(64),
            token_ttl: (self.token_ttl_secs > 0).then(|| Duration::from_secs(self.token_ttl_secs)),
            send_rate_per_sec: self.send_rate_per_sec,
            send_burst: self.send_burst.max(1),
            max_connections: self.max_connections,
            write_timeout: Duration::from_millis(self.write_timeout_ms),
            user_send: Rate::new(self.user_send_rate_per_sec, self.user_send_burst),
            auth_per_addr: Rate::new(self.auth_rate_per_addr, self.auth_burst_per_addr),
            auth_per_user: Rate::new(self.auth_rate_per_user, self.auth_burst_per_user),
            max_pending_accepts: self.max_pending_accepts.max(1),
            dedupe_window: Duration::from_secs(self.dedupe_window_secs),
            expire_interval: Duration::from_secs(self.expire_interval_secs.max(1)),
            connection_sample_interval: Duration::from_millis(self.connection_sample_ms.max(100)),
            provisioning_token: self.provisioning_token,
            tls: match (self.tls_cert, self.tls_key) {
                (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
                (None, None) => None,
                _ => return err("tls-cert", "--tls-cert and --tls-key go together"),
            },
            password_hash_concurrency: match self.password_hash_concurrency {
                0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
                n => n,
            },
        })
    }
}

impl Config {
    /// The defaults of the command line, listening on a free loopback port with
    /// in-memory storage: what tests and the embedded load-test server start from.
    pub fn for_tests() -> Config {
        let mut opts = Opts::parse_from(["reference-server", "--listen", "127.0.0.1:0"]);
        opts.storage = "memory".into();
        opts.password_hash_memory_kib = 8;
        opts.password_hash_iterations = 1;
        opts.into_config().expect("the defaults are valid")
    }
}
