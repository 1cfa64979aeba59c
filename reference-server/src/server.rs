//! Starting and stopping a server: what `main.rs`, the tests and the load
//! generator's embedded mode all use.
//!
//! [`Server::start`] binds, opens storage, starts the background tasks and
//! returns at once with the bound address (port 0 picks a free one). Shutdown is
//! a `CancellationToken`: the accept loop stops, every WebSocket session closes
//! with 1001, storage is flushed, and only then does [`Server::stop`] return.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::chat::App;
use crate::cluster::{Cluster, ClusterError, Membership, Parts};
use crate::config::Config;
use crate::outbox::CloseReason;
use crate::store::{self, OpenError};

/// How long shutdown waits for sessions to finish their closing handshakes.
const DRAIN: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Storage(#[from] OpenError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("server I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("flushing storage at shutdown failed: {0}")]
    Flush(String),
    #[error("server task failed: {0}")]
    Task(String),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    tls: bool,
    app: Arc<App>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ServerError>>,
}

impl Server {
    /// Binds `config.listen` and starts serving.
    pub async fn start(config: Config) -> Result<Server, ServerError> {
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: config.listen,
                    source,
                })?;
        Self::start_on(listener, config).await
    }

    /// Starts serving on a listener the caller bound.
    pub async fn start_on(listener: TcpListener, config: Config) -> Result<Server, ServerError> {
        let store = store::open(&config.storage).await?;
        Self::start_with_store(listener, config, store).await
    }

    /// Starts serving on a listener the caller bound, with a store the caller
    /// opened (tests wrap a backend to inject its failures).
    pub async fn start_with_store(
        listener: TcpListener,
        config: Config,
        store: std::sync::Arc<dyn crate::store::Store>,
    ) -> Result<Server, ServerError> {
        raise_fd_limit();
        let addr = listener.local_addr()?;
        let tls = config
            .tls
            .as_ref()
            .map(crate::tls::server_config)
            .transpose()?;
        let ws_url = match &config.advertise {
            Some(url) => format!("{url}/v1/ws"),
            None => {
                let mut shown = addr;
                if shown.ip().is_unspecified() {
                    shown.set_ip([127, 0, 0, 1].into());
                }
                let scheme = if tls.is_some() { "wss" } else { "ws" };
                format!("{scheme}://{shown}/v1/ws")
            }
        };
        tracing::info!(%addr, storage = store.kind(), durability = %store.durability(), node = %config.node_id, "starting");
        let shutdown = CancellationToken::new();
        let config_tls = tls.is_some();
        let cluster_url = config.cluster.clone();
        let mut app = App::new(config, store, vec![ws_url.clone()], shutdown.clone());
        let changes: Arc<dyn crate::presence::Changes> = match cluster_url {
            Some(url) => {
                let me = Membership {
                    url,
                    node_id: app.config.node_id.clone(),
                    ws_url,
                    capacity: app.max_connections as u64,
                    offline_after: app.config.offline_after,
                };
                let parts = Parts {
                    hub: app.hub.clone(),
                    presence: app.presence.clone(),
                    store: app.store.clone(),
                    metrics: app.metrics.clone(),
                };
                let cluster = Cluster::join(me, parts, shutdown.clone()).await?;
                let changes = cluster.changes();
                app.cluster = Some(cluster);
                changes
            }
            None => Arc::new(crate::presence::ToFriends {
                store: app.store.clone(),
                hub: app.hub.clone(),
                metrics: app.metrics.clone(),
            }),
        };
        let app = Arc::new(app);
        tokio::spawn(crate::presence::run(
            app.presence.clone(),
            changes,
            shutdown.clone(),
        ));
        tokio::spawn(expire_loop(app.clone(), shutdown.clone()));
        // Sessions wait on their outboxes only (their idle state stays small),
        // so shutdown reaches them as a close mark on every outbox.
        let closing = app.clone();
        tokio::spawn(async move {
            closing.shutdown.cancelled().await;
            closing.hub.close_all(CloseReason::ShuttingDown);
        });
        tokio::spawn(sample_connections(app.clone()));
        let task = match tls {
            Some(tls) => {
                let listener = crate::tls::TlsListener::start(listener, tls, shutdown.clone())?;
                tokio::spawn(serve(listener, app.clone(), shutdown.clone()))
            }
            None => tokio::spawn(serve(
                PlainListener(listener),
                app.clone(),
                shutdown.clone(),
            )),
        };
        Ok(Server {
            tls: config_tls,
            addr,
            app,
            shutdown,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://HOST:PORT` (`https://` with TLS), the base URL of the HTTP API.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The shared state, for tests and embedding programs that look inside.
    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Cancelling this token shuts the server down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Shuts down and waits until sessions are closed and storage is flushed.
    pub async fn stop(self) -> Result<(), ServerError> {
        self.shutdown.cancel();
        self.wait().await
    }

    /// Waits for the server to end (after its shutdown token is cancelled).
    pub async fn wait(self) -> Result<(), ServerError> {
        self.task
            .await
            .map_err(|e| ServerError::Task(e.to_string()))?
    }
}

async fn serve<L>(
    listener: L,
    app: Arc<App>,
    shutdown: CancellationToken,
) -> Result<(), ServerError>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
    PeerAddr: for<'a> Connected<IncomingStream<'a, L>>,
{
    let router = crate::http::router(app.clone());
    // With the peer's address, for the per-address login and signup limits.
    let service = router.into_make_service_with_connect_info::<PeerAddr>();
    axum::serve(listener, service)
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await?;
    // Upgraded connections are not the HTTP server's any more: wait for the
    // sessions themselves, which saw the same token and are closing with 1001.
    app.sessions.close();
    if tokio::time::timeout(DRAIN, app.sessions.wait())
        .await
        .is_err()
    {
        tracing::warn!("some sessions did not close within {DRAIN:?}");
    }
    app.store
        .flush()
        .await
        .map_err(|e| ServerError::Flush(e.to_string()))?;
    tracing::info!("stopped");
    Ok(())
}

/// Every `--expire-interval-secs`: removes expired tokens and dedupe records
/// older than the dedupe window (see [`crate::store::Store::expire`]).
async fn expire_loop(app: Arc<App>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(app.config.expire_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = crate::auth::now_ms();
        let before = now.saturating_sub(app.config.dedupe_window.as_millis() as u64);
        match app.store.expire(now, before).await {
            Ok(gone) => {
                crate::metrics::Metrics::inc_by(&app.metrics.expired_tokens, gone.tokens);
                crate::metrics::Metrics::inc_by(&app.metrics.expired_dedupe, gone.dedupe);
            }
            Err(e) => tracing::warn!(cause = %e, "expiring tokens and dedupe records failed"),
        }
    }
}

/// The peer's address of a connection, plain or TLS (axum only knows how to
/// take it from its own listener types).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

impl Connected<IncomingStream<'_, PlainListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, PlainListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, crate::tls::TlsListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, crate::tls::TlsListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

/// A plain TCP listener whose connections never wait to coalesce small writes
/// (chat frames are small and latency-bound).
pub struct PlainListener(TcpListener);

impl axum::serve::Listener for PlainListener {
    type Io = tokio::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (tcp, addr) = axum::serve::Listener::accept(&mut self.0).await;
        let _ = tcp.set_nodelay(true);
        (tcp, addr)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// Observes every connection's accounted memory in the histogram, every
/// `--connection-sample-ms`, until shutdown: a pass over the hub, off the
/// hot paths.
async fn sample_connections(app: Arc<App>) {
    let mut tick = tokio::time::interval(app.config.connection_sample_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let read_buffer = app.config.ws_read_buffer_bytes;
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut largest = 0;
        app.hub.each_outbox(|outbox| {
            let bytes = crate::session::connection_bytes(outbox, read_buffer);
            app.metrics.connection_memory.observe(bytes as f64);
            largest = largest.max(bytes as u64);
        });
        app.metrics.connection_memory_max.store(largest, Relaxed);
    }
}

/// Raises the open-file soft limit to the hard limit: each connection is a file.
pub fn raise_fd_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(cause = %e, "cannot raise the open-file limit");
            0
        }
    }
}

/// Runs a server until SIGTERM or SIGINT, printing `listening on http://HOST:PORT`
/// (`https://` with TLS)
/// on stdout once it accepts connections: the body of the `reference-server`
/// binary, callable from other binaries (the load generator embeds it this way).
pub async fn run_until_signal(config: Config) -> Result<(), ServerError> {
    use std::io::Write as _;
    let server = Server::start(config).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {}", server.url())?;
        out.flush()?;
    }
    let token = server.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received: shutting down");
        token.cancel();
    });
    server.wait().await
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
