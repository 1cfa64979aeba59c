//! Durability: an acknowledged message survives `kill -9` of the server.
//!
//! Each test starts the real binary on a durable backend (embedded in a temp dir;
//! Redis with its append-only file on; PostgreSQL), signs two users up, sends a
//! burst of 1:1 and group messages over WebSocket without waiting between sends
//! (so the backend's group commit batches them), kills the process with SIGKILL
//! right after the last ack, starts it again on the same storage and checks that
//! every acked message is in the channel history and in both users' inboxes, once,
//! with the acked id and seq, and that a resend is answered as a duplicate.
//! Redis and PostgreSQL run when their URLs are set (see `conformance`).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use reference_server::protocol::{LoginResponse, Message, ServerFrame};
use serde_json::{json, Value};

use crate::conformance::service_url;
use crate::support::{Device, Ws};

const MESSAGES: i64 = 120;

/// The server binary as a child process, killed (SIGKILL) on drop.
struct Proc {
    child: Child,
    url: String,
}

impl Proc {
    fn start(storage: &str) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_reference-server"))
            .args(["--listen", "127.0.0.1:0", "--storage", storage])
            .args([
                "--password-hash-memory-kib",
                "8",
                "--password-hash-iterations",
                "1",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn reference-server");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the listening line");
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("expected `listening on URL`, got {line:?}"))
            .to_string();
        Proc { child, url }
    }

    /// `kill -9`: no shutdown, no flush.
    fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        let mut req = reqwest::Client::new()
            .post(format!("{}{path}", self.url))
            .json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("http");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn login(&self, name: &str) -> Device {
        let body = json!({"username": name, "password": "password123", "device": "laptop"});
        let (status, body) = self.post("/v1/login", None, body).await;
        assert_eq!(status, 200, "login {name}: {body}");
        let r: LoginResponse = serde_json::from_value(body).expect("login body");
        Device {
            token: r.token,
            user_id: r.user_id,
            device_id: r.device_id,
            ws_url: r.servers[0].clone(),
        }
    }

    async fn history(&self, token: &str, channel: &str) -> Vec<Message> {
        let url = format!(
            "{}/v1/channels/{channel}/messages?after=0&limit=500",
            self.url
        );
        let resp = reqwest::Client::new()
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .expect("http");
        assert_eq!(resp.status().as_u16(), 200);
        let body: Value = resp.json().await.expect("json");
        serde_json::from_value(body["messages"].clone()).expect("messages")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What an ack promised: channel, id, sender seq.
type Acked = HashMap<String, (String, u64, u64)>;

async fn send_burst(ws: &mut Ws, to: &[Value]) -> Acked {
    for i in 0..MESSAGES {
        let frame = json!({"type": "send", "req": i, "to": to[i as usize % to.len()],
                           "client_msg_id": format!("c{i}"), "text": format!("durable {i}")});
        ws.send_json(frame).await;
    }
    let mut acked = Acked::new();
    while acked.len() < MESSAGES as usize {
        match ws.next().await {
            ServerFrame::Ack {
                req: Some(r),
                channel,
                id,
                seq,
                ..
            } => {
                acked.insert(format!("c{r}"), (channel, id, seq));
            }
            ServerFrame::Error { code, message, .. } => panic!("send failed: {code:?} {message}"),
            _ => {}
        }
    }
    acked
}

async fn survives_kill9(storage: &str) {
    let first = Proc::start(storage);
    for name in ["alice", "bob"] {
        let body = json!({"username": name, "password": "password123"});
        let (status, body) = first.post("/v1/signup", None, body).await;
        assert_eq!(status, 201, "{body}");
    }
    let alice = first.login("alice").await;
    let bob = first.login("bob").await;
    let body = json!({"name": "g", "members": [bob.user_id]});
    let (status, body) = first.post("/v1/groups", Some(&alice.token), body).await;
    assert_eq!(status, 201, "{body}");
    let group = body["channel"].as_str().expect("channel").to_string();
    let mut ws = alice.connect().await;
    let to = [json!({"user": bob.user_id}), json!({"channel": group})];
    let acked = send_burst(&mut ws, &to).await;
    first.kill9();

    let second = Proc::start(storage);
    let alice = second.login("alice").await;
    let bob = second.login("bob").await;
    let dm = format!(
        "dm:{}:{}",
        alice.user_id.min(bob.user_id),
        alice.user_id.max(bob.user_id)
    );
    let mut stored: HashMap<String, (String, u64)> = HashMap::new();
    for channel in [&dm, &group] {
        for m in second.history(&alice.token, channel).await {
            let before = stored.insert(m.client_msg_id.clone(), (m.channel.clone(), m.id));
            assert!(before.is_none(), "{} stored twice", m.client_msg_id);
        }
    }
    for (cmid, (channel, id, _)) in &acked {
        assert_eq!(
            stored.get(cmid),
            Some(&(channel.clone(), *id)),
            "acked {cmid} lost"
        );
    }
    for device in [&alice, &bob] {
        let mut ws = device.connect().await;
        let inbox = ws.sync_all(0, 50).await;
        let seqs: Vec<u64> = inbox.iter().filter_map(|m| m.seq).collect();
        assert_eq!(
            seqs,
            (1..=inbox.len() as u64).collect::<Vec<_>>(),
            "gap-free inbox"
        );
        let cmids: HashMap<&str, u64> = inbox
            .iter()
            .map(|m| (m.client_msg_id.as_str(), m.seq.unwrap_or(0)))
            .collect();
        for (cmid, (_, _, seq)) in &acked {
            let got = cmids.get(cmid.as_str()).copied();
            assert!(got.is_some(), "acked {cmid} missing from an inbox");
            if device.user_id == alice.user_id {
                assert_eq!(got, Some(*seq), "the sender's seq is the acked one");
            }
        }
    }
    // The dedupe record survived too: a resend gets the first ack back.
    let mut ws = alice.connect().await;
    let (channel, id, seq) = acked["c0"].clone();
    match ws.send_to(9_999, to[0].clone(), "c0", "durable 0").await {
        ServerFrame::Ack {
            channel: c,
            id: i,
            seq: s,
            ..
        } => assert_eq!((c, i, s), (channel, id, seq)),
        other => panic!("expected the first ack again, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_survives_kill9() {
    let dir = tempfile::tempdir().expect("temp dir");
    survives_kill9(&format!("embedded:{}", dir.path().display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_survives_kill9() {
    let Some(base) = service_url("CHATSCALE_REDIS_URL") else {
        return;
    };
    let url = format!(
        "{base}?prefix=dur_{}_{:x}",
        std::process::id(),
        rand::random::<u32>()
    );
    survives_kill9(&url).await;
    let store = reference_server::store::redis::RedisStore::open(&url)
        .await
        .expect("redis");
    store.clear().await.expect("clear");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_survives_kill9() {
    let Some(base) = service_url("CHATSCALE_POSTGRES_URL") else {
        return;
    };
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!(
        "{base}{sep}schema=dur_{}_{:x}",
        std::process::id(),
        rand::random::<u32>()
    );
    survives_kill9(&url).await;
    let store = reference_server::store::postgres::PostgresStore::open(&url)
        .await
        .expect("pg");
    store.drop_schema().await.expect("drop schema");
}
