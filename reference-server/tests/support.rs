//! Test helpers: a real server on a free loopback port (stopped on drop), and
//! typed HTTP and WebSocket clients speaking the protocol as any client would.
#![allow(dead_code)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reference_server::config::Config;
use reference_server::protocol::{LoginResponse, ServerFrame, UserId};
use reference_server::server::Server;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for a frame that should come.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub struct TestServer {
    server: Option<Server>,
    api: Api,
}

/// The HTTP API of one server (in-process or a node process), by URL.
#[derive(Clone)]
pub struct Api {
    pub url: String,
    http: reqwest::Client,
}

impl std::ops::Deref for TestServer {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

/// A logged-in device.
#[derive(Debug, Clone)]
pub struct Device {
    pub token: String,
    pub user_id: UserId,
    pub device_id: u64,
    pub ws_url: String,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::with(|_| {}).await
    }

    /// Starts a server on port 0 with a tweaked test configuration.
    pub async fn with(tweak: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config::for_tests();
        tweak(&mut config);
        let server = Server::start(config).await.expect("server starts");
        Self::running(server)
    }

    /// Starts a server on port 0 over a store the test made (to inject faults).
    pub async fn with_store(
        tweak: impl FnOnce(&mut Config),
        store: std::sync::Arc<dyn reference_server::store::Store>,
    ) -> Self {
        let mut config = Config::for_tests();
        tweak(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = Server::start_with_store(listener, config, store)
            .await
            .expect("server starts");
        Self::running(server)
    }

    fn running(server: Server) -> Self {
        let url = server.url();
        TestServer {
            server: Some(server),
            api: Api::new(url),
        }
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("running")
    }

    /// Stops the server and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.stop().await.expect("clean stop");
        }
    }
}

impl Api {
    pub fn new(url: String) -> Self {
        Api {
            url,
            http: reqwest::Client::new(),
        }
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        self.request(reqwest::Method::POST, path, token, Some(body))
            .await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.request(reqwest::Method::GET, path, token, None).await
    }

    /// POSTs a raw body (for malformed-JSON tests).
    pub async fn post_raw(&self, path: &str, body: &'static str) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.url))
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn signup(&self, name: &str) -> UserId {
        let (status, body) = self
            .post(
                "/v1/signup",
                None,
                json!({"username": name, "password": "password123"}),
            )
            .await;
        assert_eq!(status, 201, "signup {name}: {body}");
        body["user_id"].as_u64().unwrap()
    }

    pub async fn login(&self, name: &str, device: Option<&str>) -> Device {
        let mut body = json!({"username": name, "password": "password123"});
        if let Some(d) = device {
            body["device"] = json!(d);
        }
        let (status, body) = self.post("/v1/login", None, body).await;
        assert_eq!(status, 200, "login {name}: {body}");
        let r: LoginResponse = serde_json::from_value(body).unwrap();
        Device {
            token: r.token,
            user_id: r.user_id,
            device_id: r.device_id,
            ws_url: r.servers[0].clone(),
        }
    }

    /// Signs a user up and logs in its first device.
    pub async fn user(&self, name: &str) -> Device {
        self.signup(name).await;
        self.login(name, None).await
    }

    pub async fn befriend(&self, a: &Device, b: &Device) {
        let (status, body) = self
            .post("/v1/friends", Some(&a.token), json!({"user_id": b.user_id}))
            .await;
        assert_eq!(status, 204, "{body}");
    }

    pub async fn create_group(&self, owner: &Device, members: &[UserId]) -> String {
        let (status, body) = self
            .post(
                "/v1/groups",
                Some(&owner.token),
                json!({"name": "g", "members": members}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["channel"].as_str().unwrap().to_string()
    }

    /// The whole `/metrics` page.
    pub async fn metrics_text(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// A metric's value from `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics_text().await;
        metric_value(&text, name).unwrap_or_else(|| panic!("metric {name} missing"))
    }
}

/// A series' value in Prometheus text: `name` alone, or `name{k="v",...}` to pick
/// the series carrying (at least) those labels. Every series also carries the
/// node label, which need not be named.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    let (base, wanted) = match name.split_once('{') {
        Some((base, labels)) => (base, split_labels(labels.trim_end_matches('}'))),
        None => (name, Vec::new()),
    };
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (line_base, labels) = match series.split_once('{') {
                Some((b, l)) => (b, split_labels(l.trim_end_matches('}'))),
                None => (series, Vec::new()),
            };
            if line_base != base || !wanted.iter().all(|w| labels.contains(w)) {
                return None;
            }
            value.trim().parse().ok()
        })
}

/// `k="v",k2="v2"` -> the pairs as written (values may hold commas inside quotes).
fn split_labels(labels: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut cur, mut quoted, mut escaped) = (String::new(), false, false);
    for c in labels.chars() {
        match c {
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            '"' if !escaped => {
                quoted = !quoted;
                cur.push(c);
            }
            _ => cur.push(c),
        }
        escaped = c == '\\' && !escaped;
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = &self.server {
            s.shutdown_token().cancel();
        }
    }
}

pub type Stream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket client of one device.
pub struct Ws {
    pub stream: Stream,
    pub hello: ServerFrame,
}

impl Device {
    pub async fn connect(&self) -> Ws {
        let url = format!("{}?token={}", self.ws_url, self.token);
        let (mut stream, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("ws connect");
        let hello = next_frame(&mut stream).await;
        assert!(
            matches!(hello, ServerFrame::Hello { .. }),
            "first frame must be hello: {hello:?}"
        );
        Ws { stream, hello }
    }
}

async fn next_frame(stream: &mut Stream) -> ServerFrame {
    loop {
        let msg = tokio::time::timeout(PATIENCE, stream.next())
            .await
            .expect("a frame within the patience")
            .expect("stream open")
            .expect("no ws error");
        match msg {
            Message::Text(t) => {
                return serde_json::from_str(&t).unwrap_or_else(|e| panic!("bad frame {t}: {e}"))
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

impl Ws {
    pub async fn send_json(&mut self, v: Value) {
        self.stream
            .send(Message::Text(v.to_string().into()))
            .await
            .expect("send");
    }

    pub async fn next(&mut self) -> ServerFrame {
        next_frame(&mut self.stream).await
    }

    /// The next frame that is not a `presence` frame.
    pub async fn next_non_presence(&mut self) -> ServerFrame {
        loop {
            let f = self.next().await;
            if !matches!(f, ServerFrame::Presence { .. }) {
                return f;
            }
        }
    }

    /// The next `message` frame (skipping presence).
    pub async fn next_message(&mut self) -> reference_server::protocol::Message {
        match self.next_non_presence().await {
            ServerFrame::Message(m) => m,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Sends a message and returns the answer to it (ack or error), skipping other frames.
    pub async fn send_to(&mut self, req: i64, to: Value, cmid: &str, text: &str) -> ServerFrame {
        self.send_json(
            json!({"type": "send", "req": req, "to": to, "client_msg_id": cmid, "text": text}),
        )
        .await;
        self.answer(req).await
    }

    /// The frame answering `req`, skipping others.
    pub async fn answer(&mut self, req: i64) -> ServerFrame {
        loop {
            let f = self.next().await;
            match &f {
                ServerFrame::Ack { req: Some(r), .. }
                | ServerFrame::SyncBatch { req: Some(r), .. }
                | ServerFrame::Error { req: Some(r), .. }
                    if *r == req =>
                {
                    return f
                }
                ServerFrame::Error { req: None, .. } => return f,
                _ => {}
            }
        }
    }

    /// Sends a heartbeat with `req` and returns every frame that came before its
    /// ack. The server writes queued deliveries before it reads the next client
    /// frame, so anything already queued for this device shows up here.
    pub async fn drain(&mut self, req: i64) -> Vec<ServerFrame> {
        self.send_json(json!({"type": "heartbeat", "req": req}))
            .await;
        let mut before = Vec::new();
        loop {
            let f = self.next().await;
            if matches!(&f, ServerFrame::Ack { req: Some(r), .. } if *r == req) {
                return before;
            }
            before.push(f);
        }
    }

    /// All inbox messages after `since`, paging with `limit`.
    pub async fn sync_all(
        &mut self,
        since: u64,
        limit: u32,
    ) -> Vec<reference_server::protocol::Message> {
        let mut out = Vec::new();
        let mut cursor = since;
        for req in 1_000_000.. {
            self.send_json(json!({"type": "sync", "req": req, "since": cursor, "limit": limit}))
                .await;
            match self.answer(req).await {
                ServerFrame::SyncBatch { messages, more, .. } => {
                    if let Some(last) = messages.last() {
                        cursor = last.seq.unwrap();
                    }
                    out.extend(messages);
                    if !more {
                        return out;
                    }
                }
                other => panic!("expected sync_batch, got {other:?}"),
            }
        }
        unreachable!()
    }

    /// Reads until the server closes; returns the close code (None: no close frame).
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            match tokio::time::timeout(PATIENCE, self.stream.next())
                .await
                .expect("closed in time")
            {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }
}

pub fn close_code(code: CloseCode) -> u16 {
    code.into()
}
