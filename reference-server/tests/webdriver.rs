//! Headless Chromium driven over WebDriver (chromedriver), for tests of pages
//! as a browser renders and runs them. Self-contained (std, tokio, reqwest,
//! serde_json, base64) so that another crate's tests can use it too, e.g. with
//! `#[path = "../../reference-server/tests/webdriver.rs"] mod webdriver;`.
//!
//! The skip rule, in one place: without `chromium` and `chromedriver` on the
//! PATH a browser test prints `skipped` and passes, unless
//! `CHATSCALE_REQUIRE_BROWSER=1` (CI sets it after installing both), then it
//! fails. The browser flags are in [`CHROMIUM_FLAGS`].
//!
//! Only the WebDriver commands the tests use are here (W3C WebDriver plus
//! chromedriver's browser log and DevTools passthrough); each is one HTTP call.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Headless, and quiet on the network: without the background-networking flags
/// Chromium reaches out to Google services, which a closed network refuses
/// (and which have no place in a test). A fresh `--user-data-dir` is added per
/// session.
pub const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,800",
];

/// How long a test waits for the page to reach a state.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// The browser programs, if installed.
pub struct Programs {
    pub chromium: PathBuf,
    pub chromedriver: PathBuf,
}

fn on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

/// Chromium and chromedriver from the PATH. `None` (the test prints
/// `skipped` and returns) when one is missing, unless
/// `CHATSCALE_REQUIRE_BROWSER=1`: then a missing browser fails the test.
pub fn programs(test: &str) -> Option<Programs> {
    let chromium = on_path(&["chromium", "chromium-browser", "google-chrome"]);
    let chromedriver = on_path(&["chromedriver"]);
    match (chromium, chromedriver) {
        (Some(chromium), Some(chromedriver)) => Some(Programs {
            chromium,
            chromedriver,
        }),
        _ if std::env::var("CHATSCALE_REQUIRE_BROWSER").as_deref() == Ok("1") => panic!(
            "{test}: chromium and chromedriver are required (CHATSCALE_REQUIRE_BROWSER=1) \
             but not both are on the PATH"
        ),
        _ => {
            println!("{test}: skipped (chromium and chromedriver not found on the PATH)");
            None
        }
    }
}

/// A running chromedriver; each [`Session`] is one browser (its own profile).
pub struct Driver {
    child: Child,
    base: String,
    chromium: PathBuf,
    profiles: tempfile::TempDir,
    http: reqwest::Client,
    sessions: usize,
}

impl Driver {
    /// Starts chromedriver on a free port (it prints which).
    pub async fn start(programs: &Programs) -> Driver {
        let mut child = Command::new(&programs.chromedriver)
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let port = tokio::time::timeout(PATIENCE, async {
            while let Some(line) = lines.next_line().await.expect("chromedriver output") {
                if let Some(rest) = line.split("started successfully on port ").nth(1) {
                    return rest.trim_end_matches('.').parse::<u16>().expect("a port");
                }
            }
            panic!("chromedriver exited before it was ready");
        })
        .await
        .expect("chromedriver ready in time");
        // Keep reading its output so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Driver {
            child,
            base: format!("http://127.0.0.1:{port}"),
            chromium: programs.chromium.clone(),
            profiles: tempfile::tempdir().unwrap(),
            http: reqwest::Client::new(),
            sessions: 0,
        }
    }

    /// A new browser with a fresh profile, logging everything the page's
    /// console says.
    pub async fn session(&mut self) -> Session {
        self.sessions += 1;
        let profile = self
            .profiles
            .path()
            .join(format!("profile-{}", self.sessions));
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": self.chromium, "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let value = call(
            &self.http,
            reqwest::Method::POST,
            &format!("{}/session", self.base),
            Some(caps),
        )
        .await
        .unwrap_or_else(|e| panic!("a browser session: {e}"));
        Session {
            base: format!(
                "{}/session/{}",
                self.base,
                value["sessionId"].as_str().unwrap()
            ),
            http: self.http.clone(),
        }
    }
}

impl Drop for Driver {
    /// Chromium outlives a killed chromedriver, so first ask chromedriver to
    /// quit every browser it started (also when a test panicked midway).
    fn drop(&mut self) {
        use std::io::{Read, Write};
        let addr = self.base.trim_start_matches("http://");
        if let Ok(mut s) = std::net::TcpStream::connect(addr) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = write!(
                s,
                "GET /shutdown HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
            );
            let _ = s.read_to_end(&mut Vec::new());
        }
        let _ = self.child.start_kill();
    }
}

/// One WebDriver call; a WebDriver error becomes `Err("error: message")`.
async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> Result<Value, String> {
    let mut req = http.request(method, url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| format!("chromedriver unreachable: {e}"))?;
    let ok = resp.status().is_success();
    let body: Value = resp
        .json()
        .await
        .map_err(|e| format!("chromedriver answer: {e}"))?;
    let value = body["value"].clone();
    if ok {
        Ok(value)
    } else {
        Err(format!("{}: {}", value["error"], value["message"]))
    }
}

/// An element reference (W3C's element key).
#[derive(Clone, Debug)]
pub struct Element(String);

const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One browser.
pub struct Session {
    base: String,
    http: reqwest::Client,
}

impl Session {
    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        call(&self.http, method, &format!("{}{path}", self.base), body)
            .await
            .unwrap_or_else(|e| panic!("webdriver {path}: {e}"))
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.cmd(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }

    /// The first element matching a CSS selector (panics if none).
    pub async fn find(&self, css: &str) -> Element {
        let v = self
            .post("/element", json!({"using": "css selector", "value": css}))
            .await;
        Element(v[ELEMENT_KEY].as_str().expect("an element").to_string())
    }

    pub async fn click(&self, css: &str) {
        let e = self.find(css).await;
        let url = format!("{}/element/{}/click", self.base, e.0);
        call(&self.http, reqwest::Method::POST, &url, Some(json!({})))
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Types into an element, as keystrokes ("\u{E007}" is Enter).
    pub async fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.post(&format!("/element/{}/value", e.0), json!({ "text": text }))
            .await;
    }

    /// Runs a function body in the page (`arguments[i]` are `args`) and returns its value.
    pub async fn js(&self, script: &str, args: Value) -> Value {
        self.post("/execute/sync", json!({"script": script, "args": args}))
            .await
    }

    /// Waits until a JavaScript expression is truthy; on timeout panics with
    /// what the page shows.
    pub async fn wait_for(&self, what: &str, expr: &str) {
        let start = Instant::now();
        let script = format!("return !!({expr});");
        while start.elapsed() < PATIENCE {
            if self.js(&script, json!([])).await == json!(true) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let shown = self.js("return document.body.innerText", json!([])).await;
        panic!(
            "waited {PATIENCE:?} for {what} ({expr}); the page shows:\n{}",
            shown.as_str().unwrap_or_default()
        );
    }

    /// What the console logged since the last call, in every window of this
    /// browser (chromedriver's browser log: console calls, uncaught
    /// exceptions, failed loads and 4xx/5xx answers).
    pub async fn console(&self) -> Vec<Value> {
        let v = self.post("/se/log", json!({"type": "browser"})).await;
        v.as_array().cloned().unwrap_or_default()
    }

    /// Fails on any console entry at level SEVERE (errors, uncaught exceptions,
    /// failed requests).
    pub async fn assert_no_console_errors(&self, who: &str) {
        let errors: Vec<Value> = self
            .console()
            .await
            .into_iter()
            .filter(|e| e["level"] == "SEVERE")
            .collect();
        assert!(errors.is_empty(), "{who}: console errors: {errors:#?}");
    }

    /// A DevTools protocol command on the current tab.
    pub async fn devtools(&self, cmd: &str, params: Value) -> Value {
        self.post("/goog/cdp/execute", json!({"cmd": cmd, "params": params}))
            .await
    }

    /// Opens a new window (its own sessionStorage) and switches to it.
    pub async fn new_window(&self) -> String {
        let v = self.post("/window/new", json!({"type": "window"})).await;
        let handle = v["handle"].as_str().unwrap().to_string();
        self.switch_to(&handle).await;
        handle
    }

    pub async fn window(&self) -> String {
        let v = self.cmd(reqwest::Method::GET, "/window", None).await;
        v.as_str().unwrap().to_string()
    }

    pub async fn switch_to(&self, handle: &str) {
        self.post("/window", json!({ "handle": handle })).await;
    }

    /// Saves a PNG of the current window.
    pub async fn screenshot(&self, path: &Path) {
        let v = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .expect("base64 PNG");
        std::fs::write(path, png).expect("write screenshot");
    }

    /// Saves a screenshot into `$CHATSCALE_SCREENSHOTS` when that is set (to look
    /// at what the browser rendered); does nothing otherwise.
    pub async fn snapshot(&self, name: &str) {
        if let Some(dir) = std::env::var_os("CHATSCALE_SCREENSHOTS") {
            std::fs::create_dir_all(&dir).unwrap();
            self.screenshot(&Path::new(&dir).join(format!("{name}.png")))
                .await;
        }
    }

    pub async fn quit(self) {
        let _ = call(&self.http, reqwest::Method::DELETE, &self.base, None).await;
    }
}
