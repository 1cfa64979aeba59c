//! Benchmarks live in `benches/`; measurement programs in `src/bin/`. This library
//! holds what the programs share: running the reference server as a child process
//! of the program itself (re-executed with `serve`), so that the server's memory
//! and CPU are its own, and driving servers over real WebSockets on loopback.
//!
//! - [`child`]: a server as a child process (this same binary re-executed),
//!   its address, CPU time and resident memory from `/proc`.
//! - [`echo`]: the minimal tokio-tungstenite echo server, the floor a chat
//!   server's per-frame cost is compared with.
//! - [`relay`]: the relay floor, a minimal tokio-tungstenite server doing the
//!   chat protocol's frame work (an ack, a delivery per recipient through the
//!   recipient's bounded queue) and nothing else.
//! - [`drive`]: many WebSocket clients sending frames at a fixed rate and
//!   counting what comes back, the same way for the chat server and the echo.
//! - [`world`]: the chat side's population (accounts, devices, groups) and the
//!   `send` frames its devices write.
//! - [`fuzz`]: generated-input fuzzing of the frame, body and scenario
//!   parsers, which a test and the `fuzz` program both run.

pub mod child;
pub mod drive;
pub mod echo;
pub mod fuzz;
pub mod relay;
pub mod world;

pub use child::{serve_if_asked, ServerProcess};

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
