//! A private `redis-server` for the run (`[target] storage = "redis"`): the
//! shared store of an embedded cluster with nothing to set up.
//!
//! It is the `redis-server` on the PATH, on a free loopback port, with its
//! working directory in the run directory, in memory only (no snapshots, no
//! append-only file: the run's data need not outlive the run, and the disk
//! stays out of the latencies). It runs under a small `sh` that holds our end
//! of a stdin pipe: when loadgen exits however it dies (even `kill -9`), the
//! pipe closes and the shell stops Redis, so no Redis outlives its run. A
//! missing binary is exit 3 with the command that installs it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, ChildStdin, Command};

use crate::error::LoadgenError;

/// How long Redis may take to answer on its port.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// What to install when `redis-server` is missing.
pub const INSTALL: &str =
    "apt-get install redis-server (Debian, Ubuntu), dnf install redis (Fedora), brew install redis (macOS)";

pub struct PrivateRedis {
    child: Child,
    stdin: Option<ChildStdin>,
    dir: PathBuf,
    pub url: String,
}

/// `name` on the PATH, as an absolute path.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

impl PrivateRedis {
    /// Starts `redis-server` in `dir` on a free port and waits until it answers.
    pub async fn start(dir: &Path) -> Result<PrivateRedis, LoadgenError> {
        let exe = find_on_path("redis-server").ok_or_else(|| {
            LoadgenError::unrunnable(format!(
                "storage \"redis\" starts a private redis-server, but there is no redis-server on the PATH: install it ({INSTALL}), or name a running Redis (redis://HOST:PORT)"
            ))
        })?;
        std::fs::create_dir_all(dir).map_err(|source| LoadgenError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let port = super::free_port()
            .map_err(|e| LoadgenError::unrunnable(format!("no free port for Redis: {e}")))?;
        // `read` returns when our end of stdin closes (at the end of the run,
        // or when loadgen dies): then Redis is stopped and waited for.
        let script = r#"exe="$1"; shift; "$exe" "$@" & pid=$!; read _ignored; kill $pid 2>/dev/null; wait $pid"#;
        let mut child = Command::new("sh")
            .args(["-c", script, "sh"])
            .arg(&exe)
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                LoadgenError::unrunnable(format!("cannot start {}: {e}", exe.display()))
            })?;
        let stdin = child.stdin.take();
        let addr = format!("127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if tokio::net::TcpStream::connect(&addr).await.is_ok() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(LoadgenError::unrunnable(format!(
                    "{} exited before answering on {addr} ({status})",
                    exe.display()
                )));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(LoadgenError::unrunnable(format!(
                    "{} did not answer on {addr} within {START_TIMEOUT:?}",
                    exe.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::info!(%addr, "private redis-server started");
        Ok(PrivateRedis {
            child,
            stdin,
            dir: dir.to_path_buf(),
            url: format!("redis://{addr}"),
        })
    }

    /// Stops Redis (closing the pipe its shell reads), waits, removes its directory.
    pub async fn stop(mut self) {
        drop(self.stdin.take());
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            if let Some(pid) = self.child.id() {
                // The shell's process group holds Redis too.
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = self.child.wait().await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
