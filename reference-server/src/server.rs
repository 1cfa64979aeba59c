//! Starting and stopping a server: what `main.rs`, the tests and the load
//! generator's embedded mode all use.
//!
//! [`Server::start`] binds, opens storage, starts the background tasks and
//! returns at once with the bound address (port 0 picks a free one). Shutdown is
//! a `CancellationToken`: the accept loop stops, every WebSocket session closes
//! with 1001, storage is flushed, and only then does [`Server::stop`] return.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::chat::App;
use crate::cluster::{Cluster, ClusterError, Membership, Parts};
use crate::config::Config;
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
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
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
        raise_fd_limit();
        let addr = listener.local_addr()?;
        let store = store::open(&config.storage).await?;
        let ws_url = match &config.advertise {
            Some(url) => format!("{url}/v1/ws"),
            None => {
                let mut shown = addr;
                if shown.ip().is_unspecified() {
                    shown.set_ip([127, 0, 0, 1].into());
                }
                format!("ws://{shown}/v1/ws")
            }
        };
        tracing::info!(%addr, storage = store.kind(), durability = %store.durability(), node = %config.node_id, "starting");
        let shutdown = CancellationToken::new();
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
        let task = tokio::spawn(serve(listener, app.clone(), shutdown.clone()));
        Ok(Server {
            addr,
            app,
            shutdown,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://HOST:PORT`, the base URL of the HTTP API.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
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

async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let router = crate::http::router(app.clone());
    // Chat frames are small and latency-bound: never wait to coalesce them.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    // With the peer's address, for the per-address login and signup limits.
    let service = router.into_make_service_with_connect_info::<SocketAddr>();
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
