//! The embedded server: with no target, `run` starts the reference server as a
//! child process and stops it at the end.
//!
//! A child process rather than a task in this one, so the server's memory and
//! CPU are measured apart from the generator's, and its file descriptors come
//! from its own limit. The child is this very executable re-run with the hidden
//! `serve` subcommand (nothing else to install or find), on a free loopback
//! port; it prints `listening on http://HOST:PORT` once ready.
//!
//! Stopping: [`EmbeddedServer::stop`] sends SIGTERM (the server closes its
//! sessions and flushes storage) and waits; `kill_on_drop` covers every early
//! return. If this process dies without either (SIGKILL), the child notices its
//! stdin pipe closing and exits ([`watch_parent`]), since `PR_SET_PDEATHSIG`
//! would take `unsafe`.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::error::LoadgenError;

/// Set in the child's environment: watch stdin, exit when the parent is gone.
pub const PARENT_WATCH_ENV: &str = "CHATSCALE_LOADGEN_PARENT_WATCH";
/// Overrides the executable started as the server (tests run from a test
/// binary, which has no `serve` subcommand).
pub const EXE_ENV: &str = "CHATSCALE_LOADGEN_EXE";
/// How long the child may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long it may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What the embedded server is started with.
#[derive(Debug, Clone)]
pub struct EmbeddedConfig {
    pub storage: String,
    pub heartbeat_interval: Duration,
    pub offline_after: Duration,
    /// The address to listen on; `None`: a free port on 127.0.0.1.
    pub listen: Option<std::net::SocketAddr>,
    /// A node of an embedded cluster: the cluster's Redis and the node's id
    /// (`--cluster`, `--node-id`; it advertises its listen address).
    pub cluster: Option<(String, String)>,
}

impl EmbeddedConfig {
    /// One server with `storage`, timed like the scenario's behavior.
    pub fn new(storage: String, heartbeat_interval: Duration, offline_after: Duration) -> Self {
        EmbeddedConfig {
            storage,
            heartbeat_interval,
            offline_after,
            listen: None,
            cluster: None,
        }
    }
}

/// The provisioning token of the servers this process starts: random per
/// process, so the bulk endpoints of a loopback test server take requests from
/// the loadgen that started it only.
pub fn provisioning_token() -> &'static str {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOKEN.get_or_init(|| {
        let bytes: [u8; 16] = rand::random();
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    })
}

pub struct EmbeddedServer {
    child: Child,
    /// Our end of the child's stdin: closing it tells the child we are gone,
    /// so it is held until the child has stopped (tokio's `wait` would close it).
    stdin: Option<tokio::process::ChildStdin>,
    pub pid: u32,
    pub url: String,
    /// The storage's durability, as the server described it at start-up.
    pub durability: Option<String>,
}

impl EmbeddedServer {
    /// Starts the child and waits for its `listening on` line.
    pub async fn start(cfg: &EmbeddedConfig) -> Result<EmbeddedServer, LoadgenError> {
        let exe = match std::env::var_os(EXE_ENV) {
            Some(p) => p.into(),
            None => std::env::current_exe().map_err(|e| {
                LoadgenError::unrunnable(format!(
                    "cannot find this executable to start the embedded server: {e}"
                ))
            })?,
        };
        let listen = cfg
            .listen
            .map_or_else(|| "127.0.0.1:0".to_string(), |a| a.to_string());
        let mut cmd = Command::new(&exe);
        cmd.arg("serve")
            .args(["--listen", &listen, "--storage", &cfg.storage])
            // Cheap password hashing: a load test creates thousands of accounts,
            // all from this one address (so no per-address login limit either).
            .args([
                "--password-hash-memory-kib",
                "8",
                "--password-hash-iterations",
                "1",
                "--auth-rate-per-addr",
                "0",
                // The bulk provisioning endpoints, for this process only.
                "--provisioning-token",
                provisioning_token(),
            ])
            .args([
                "--heartbeat-interval-ms",
                &cfg.heartbeat_interval.as_millis().max(1).to_string(),
            ])
            .args([
                "--offline-after-ms",
                &cfg.offline_after.as_millis().max(1).to_string(),
            ])
            // The report's memory-per-connection distribution: every
            // connection observed every second (a pass over the hub).
            .args(["--connection-sample-ms", "1000"])
            .env(PARENT_WATCH_ENV, "1");
        if let Some((redis, node)) = &cfg.cluster {
            cmd.args(["--cluster", redis, "--node-id", node]);
            if let Some(addr) = cfg.listen {
                cmd.args(["--advertise", &format!("ws://{addr}")]);
            }
        }
        cmd
            // Its own process group: a terminal's Ctrl-C goes to loadgen only,
            // which then stops the server after writing the report.
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let quiet = std::env::var_os("RUST_LOG").is_none();
        if quiet {
            // Warnings, plus the start-up line that names the storage's durability.
            cmd.env("RUST_LOG", "warn,reference_server::server=info");
        }
        let mut child = cmd.spawn().map_err(|e| {
            LoadgenError::unrunnable(format!(
                "cannot start the embedded server ({}): {e}",
                exe.display()
            ))
        })?;
        let pid = child.id().unwrap_or(0);
        let stdin = child.stdin.take();
        let (durability_tx, mut durability_rx) = tokio::sync::watch::channel(None);
        let (listening_tx, listening_rx) = tokio::sync::watch::channel(false);
        let tag = cfg.cluster.as_ref().map(|(_, node)| format!("[{node}] "));
        let relay = child.stderr.take().map(|stderr| {
            tokio::spawn(relay_stderr(
                stderr,
                quiet,
                tag,
                durability_tx,
                listening_rx,
            ))
        });
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| LoadgenError::unrunnable("embedded server: no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let url = tokio::time::timeout(START_TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.strip_prefix("listening on ") {
                    return Some(url.trim().to_string());
                }
            }
            None
        })
        .await;
        let url = match url {
            Ok(Some(url)) => url,
            Ok(None) => {
                // Said once: the server's own reason (held back by the relay)
                // when it gave one, else how it exited.
                let status = child.wait().await.ok();
                let reason = match relay {
                    Some(relay) => tokio::time::timeout(Duration::from_secs(2), relay)
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .flatten(),
                    None => None,
                };
                return Err(LoadgenError::unrunnable(match reason {
                    Some(reason) => reason,
                    None => format!(
                        "the embedded server exited before listening ({}); storage {:?}{}",
                        status.map_or("exit status unknown".to_string(), |s| s.to_string()),
                        reference_server::store::redact(&cfg.storage),
                        cfg.listen
                            .map_or(String::new(), |a| format!(", listening on {a}"))
                    ),
                }));
            }
            Err(_) => {
                return Err(LoadgenError::unrunnable(
                    "the embedded server did not start listening within 30s",
                ))
            }
        };
        let _ = listening_tx.send(true);
        // Keep reading stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        // The server logs its durability just before it prints its address.
        let _ = tokio::time::timeout(
            Duration::from_millis(500),
            durability_rx.wait_for(Option::is_some),
        )
        .await;
        let durability = durability_rx.borrow().clone();
        tracing::info!(%url, pid, storage = %cfg.storage, "embedded server started");
        Ok(EmbeddedServer {
            child,
            stdin,
            pid,
            url,
            durability,
        })
    }

    /// Resident memory of the server process, in bytes.
    pub fn rss(&self) -> Option<u64> {
        reference_server::metrics::resident_memory_of(&self.pid.to_string())
    }

    /// `kill -9`: no goodbye (a node fault); waits for the process to be gone.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
        drop(self.stdin.take());
        tracing::info!(pid = self.pid, "embedded server killed");
    }

    /// SIGTERM, wait; SIGKILL if it does not stop in time.
    pub async fn stop(mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(_) => tracing::info!(pid = self.pid, "embedded server stopped"),
            Err(_) => {
                tracing::warn!(
                    pid = self.pid,
                    "embedded server did not stop after SIGTERM: killing it"
                );
                let _ = self.child.kill().await;
            }
        }
        drop(self.stdin.take());
    }
}

/// Forwards the child's log lines to our stderr, picking out the `starting`
/// line's `durability=` field (and, unless the user set `RUST_LOG`, keeping the
/// server's info lines to itself).
///
/// Before the child is listening, its `error: ...` line (a storage it cannot
/// open, a bad flag) is held back and returned rather than printed, so that
/// loadgen reports the failure once, with the server's own reason.
async fn relay_stderr(
    stderr: tokio::process::ChildStderr,
    quiet: bool,
    tag: Option<String>,
    durability: tokio::sync::watch::Sender<Option<String>>,
    listening: tokio::sync::watch::Receiver<bool>,
) -> Option<String> {
    let tag = tag.unwrap_or_default();
    let mut lines = BufReader::new(stderr).lines();
    let mut held = None;
    while let Ok(Some(line)) = lines.next_line().await {
        let plain = strip_ansi(&line);
        if !*listening.borrow() && held.is_none() {
            if let Some(reason) = plain.strip_prefix("error: ") {
                // `serve` words its failure "cannot run: embedded server:
                // ...", as loadgen prints its own errors.
                let reason = reason.strip_prefix("cannot run: ").unwrap_or(reason);
                held = Some(format!("{tag}{reason}"));
                continue;
            }
        }
        if let Some(rest) = plain.split_once(" durability=").map(|(_, r)| r) {
            let value = rest
                .split(" node=")
                .next()
                .unwrap_or(rest)
                .trim()
                .to_string();
            let _ = durability.send(Some(value));
        }
        if quiet && plain.contains(" INFO ") {
            continue;
        }
        eprintln!("{tag}{line}");
    }
    held
}

/// `line` without ANSI colour sequences (`ESC [ ... m`).
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// In a child (`serve`, or a worker of `run --workers`): when its parent asked
/// for it (the environment says so), exit as soon as the parent's end of the
/// stdin pipe closes, that is when the parent is gone, however it died.
pub fn watch_parent() {
    if std::env::var_os(PARENT_WATCH_ENV).is_none() {
        return;
    }
    std::thread::spawn(|| {
        use std::io::Read;
        let mut buf = [0u8; 64];
        let mut stdin = std::io::stdin();
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
        // Not `eprintln!`: a node's stderr is a pipe to the parent, closed
        // now, and a failed eprintln! panics this thread before the exit,
        // leaving the child running forever.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "loadgen child {}: the parent process is gone; exiting",
            std::process::id()
        );
        std::process::exit(0);
    });
}
