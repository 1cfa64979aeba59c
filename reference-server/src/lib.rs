//! The chatscale reference chat server, as a library: the binary in `main.rs`,
//! the integration tests and the load generator's embedded mode all start it
//! through [`server::Server`].
//!
//! Map of the modules:
//! - [`protocol`]: wire types, error codes and limits (shared with `loadgen`).
//! - [`config`]: the command line (`Opts`) resolved into a validated [`config::Config`].
//! - [`server`]: start, serve, shut down.
//! - [`http`]: the HTTP API and the WebSocket upgrade.
//! - [`web`]: the web chat page served at `GET /` (a reference browser client).
//! - [`tls`]: `https://` and `wss://` with rustls (a listener of handshaken streams).
//! - [`session`]: one WebSocket connection (one device).
//! - [`chat`]: shared state and the service operations (send, sync, membership).
//! - [`hub`]: connected devices on this node, and fan-out to them.
//! - [`uncertain`]: accepts that failed but may have committed; fanned out on resend.
//! - [`order`]: per-channel order of fan-out without a lock across commits.
//! - [`outbox`]: a connection's bounded outbound queue.
//! - [`reply`]: sync batches and history pages cut at a byte budget.
//! - [`presence`]: online/offline by heartbeats, pushed to friends.
//! - [`push`]: push notifications for offline members.
//! - [`auth`]: password hashing and tokens.
//! - [`provision`]: the operator's bulk provisioning endpoints (off by default).
//! - [`cluster`]: nodes over Redis (discovery, routing, cluster-wide presence).
//! - [`limits`]: rate limits by source address, username and user.
//! - [`metrics`]: counters for `/metrics`.
//! - [`error`]: `ApiError`, a protocol error code with a message.
//! - [`store`]: the storage trait and its backends.
pub mod auth;
pub mod chat;
pub mod cluster;
pub mod config;
pub mod error;
pub mod http;
pub mod hub;
pub mod limits;
pub mod metrics;
pub mod order;
pub mod outbox;
pub mod presence;
pub mod protocol;
pub mod provision;
pub mod push;
pub mod reply;
pub mod server;
pub mod session;
pub mod store;
pub mod tls;
pub mod uncertain;
pub mod web;

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    init_tracing_with("info");
}

/// Logs to stderr, filtered by `RUST_LOG` or else `default` (an `EnvFilter`
/// directive). Colour only on a terminal: a log piped to a file or a CI log
/// must not carry raw escape codes.
pub fn init_tracing_with(default: &str) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
