//! A server as a child process: the measuring program re-executes itself with a
//! sub-command (`serve` for the reference server, `serve-echo` for the echo
//! floor), reads the server's `listening on URL` line, and reads the child's CPU
//! time and memory from `/proc`, so that what it measures is the server's own
//! and not the clients'.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// In the re-executed child (`PROGRAM serve FLAGS...`): runs the server with those
/// flags until a signal, and returns its result. `None` in the measuring parent.
pub fn serve_if_asked() -> Option<anyhow::Result<()>> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) != Some("serve") {
        return None;
    }
    Some((|| {
        let opts = <reference_server::config::Opts as clap::Parser>::parse_from(&args[1..]);
        let config = opts.into_config()?;
        let rt = tokio::runtime::Runtime::new()?;
        Ok(rt.block_on(reference_server::server::run_until_signal(config))?)
    })())
}

/// A server child process and its URL; stopped (SIGTERM, then waited for) by
/// [`ServerProcess::stop`] or on drop.
pub struct ServerProcess {
    pub child: Child,
    pub url: String,
    stopped: bool,
}

impl ServerProcess {
    /// Starts this program as the reference server on a free port with cheap
    /// password hashing and `flags`; returns once it prints its `listening on` line.
    pub fn start(flags: &[&str]) -> anyhow::Result<ServerProcess> {
        let mut args = vec![
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--password-hash-memory-kib",
            "8",
            "--password-hash-iterations",
            "1",
        ];
        args.extend(flags);
        Self::spawn(&args)
    }

    /// Starts this program again with `args` and waits for its `listening on` line.
    pub fn spawn<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> anyhow::Result<ServerProcess> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
        let Some(url) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            anyhow::bail!("unexpected first line from the server: {line:?}");
        };
        Ok(ServerProcess {
            url: url.to_string(),
            child,
            stopped: false,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User plus system CPU time of the whole process (every thread, exited
    /// ones included), in seconds.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        cpu_seconds(&self.pid().to_string())
    }

    /// SIGTERM, then waits for the exit.
    pub fn stop(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `utime + stime` of a process (`/proc/PID/stat` fields 14 and 15), in seconds.
/// `pid` may be `self`.
pub fn cpu_seconds(pid: &str) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; the fields after its `)` are
    // state (3), ..., utime (14), stime (15).
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow::anyhow!("unreadable /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(i)
            .ok_or_else(|| anyhow::anyhow!("short /proc/{pid}/stat"))?
            .parse::<f64>()?)
    };
    Ok((ticks(14 - 3)? + ticks(15 - 3)?) / clock_ticks_per_second())
}

/// `sysconf(_SC_CLK_TCK)`, from `getconf` (100 on every Linux we run on).
fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}
