//! Benchmarks live in `benches/`; measurement programs in `src/bin/`. This library
//! holds what the programs share: running the reference server as a child process
//! of the program itself (re-executed with `serve`), so that the server's memory
//! and CPU are its own; and generated-input fuzzing ([`fuzz`]) of the frame,
//! body and scenario parsers, which a test and the `fuzz` program both run.

pub mod fuzz;

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

/// A server child process and its `http://HOST:PORT`.
pub struct ServerProcess {
    pub child: Child,
    pub url: String,
}

impl ServerProcess {
    /// Starts this program as a server on a free port with cheap password hashing
    /// and `flags`; returns once it prints its `listening on` line.
    pub fn start(flags: &[&str]) -> anyhow::Result<ServerProcess> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(["--password-hash-memory-kib", "8"])
            .args(["--password-hash-iterations", "1"])
            .args(flags)
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .ok_or_else(|| anyhow::anyhow!("unexpected first line {line:?}"))?
            .to_string();
        Ok(ServerProcess { child, url })
    }

    /// SIGTERM, then waits for the exit.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// POSTs JSON (with a bearer token, if any) and reads the JSON answer; a non-2xx
/// status is an error.
pub async fn post_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    body: &serde_json::Value,
) -> anyhow::Result<T> {
    let mut request = http.post(url).json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    Ok(request.send().await?.error_for_status()?.json().await?)
}
