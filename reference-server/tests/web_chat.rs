//! The web chat page (`GET /`) in headless Chromium, driven over WebDriver as
//! two users would use it: sign up, befriend, presence, 1:1 and group chat, a
//! dropped connection while messages arrive, a second device, scroll-back.
//!
//! The drop is real: the page's WebSocket runs through [`NetPath`], a TCP relay
//! the server advertises in `servers`, and the test makes one device's path
//! stop carrying bytes (as a dead Wi-Fi or tunnel does: no close, no reset),
//! while DevTools tells the browser it is offline. The page has to notice by
//! its own heartbeats, wait for the network, reconnect and sync.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use reference_server::protocol::{ServerFrame, UserId};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::support::TestServer;
use crate::webdriver::{self, Driver, Session};

/// A TCP relay to the chat server whose traffic the test can stop per device
/// (per token, which the WebSocket upgrade carries in its request line).
struct NetPath {
    links: Arc<Mutex<HashMap<String, Link>>>,
    shutdown: CancellationToken,
}

/// One token's path: `cut` stops its connections carrying bytes (they stay
/// open, silent); `restored` then drops them, as a network that comes back
/// finds the old connections gone.
#[derive(Clone, Default)]
struct Link {
    cut: CancellationToken,
    restored: CancellationToken,
}

impl NetPath {
    async fn bind() -> (TcpListener, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (listener, addr)
    }

    fn start(listener: TcpListener, upstream: SocketAddr) -> NetPath {
        let links: Arc<Mutex<HashMap<String, Link>>> = Arc::default();
        let shutdown = CancellationToken::new();
        let (l, stop) = (links.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                let (client, _) = tokio::select! {
                    _ = stop.cancelled() => return,
                    accepted = listener.accept() => accepted.unwrap(),
                };
                tokio::spawn(relay(client, upstream, l.clone(), stop.clone()));
            }
        });
        NetPath { links, shutdown }
    }

    fn cut(&self, token: &str) {
        self.links
            .lock()
            .entry(token.to_string())
            .or_default()
            .cut
            .cancel();
    }

    fn restore(&self, token: &str) {
        if let Some(link) = self.links.lock().remove(token) {
            link.restored.cancel();
        }
    }
}

impl Drop for NetPath {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn relay(
    mut client: TcpStream,
    upstream: SocketAddr,
    links: Arc<Mutex<HashMap<String, Link>>>,
    stop: CancellationToken,
) {
    // Read the request head to learn the token (`GET /v1/ws?token=T HTTP/1.1`).
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match client.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&head);
    let token = line
        .split_once("token=")
        .map(|(_, rest)| {
            rest.split([' ', '&'])
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .unwrap_or_default();
    let link = links.lock().entry(token).or_default().clone();
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    if server.write_all(&head).await.is_err() {
        return;
    }
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = link.cut.cancelled() => {
            // Silent: hold both ends, carry nothing, until the network is back.
            tokio::select! {
                _ = link.restored.cancelled() => {}
                _ = stop.cancelled() => {}
            }
        }
        _ = stop.cancelled() => {}
    }
}

/// A signed-in tab, as the page keeps it in sessionStorage.
struct Me {
    user_id: UserId,
    device_id: u64,
    token: String,
}

const PASSWORD: &str = "password123"; // the one `support` uses too
const ENTER: &str = "\u{E007}";

async fn sign_in(s: &Session, url: &str, name: &str, button: &str) -> Me {
    s.goto(url).await;
    s.type_into("#username", name).await;
    s.type_into("#password", PASSWORD).await;
    s.click(button).await;
    wait_connected(s).await;
    let v = s
        .js(
            "return JSON.parse(sessionStorage.getItem('chatscale.session'))",
            json!([]),
        )
        .await;
    Me {
        user_id: v["user_id"].as_u64().unwrap(),
        device_id: v["device_id"].as_u64().unwrap(),
        token: v["token"].as_str().unwrap().to_string(),
    }
}

async fn wait_connected(s: &Session) {
    s.wait_for(
        "the page to be connected and synced",
        "document.querySelector('#conn-status').dataset.state === 'connected'",
    )
    .await;
}

fn friend_is(user: UserId, status: &str) -> String {
    format!(
        "document.querySelector('#friends li[data-user-id=\"{user}\"][data-status=\"{status}\"]')"
    )
}

/// Opens a conversation from the list, once it is there.
async fn open(s: &Session, channel: &str) {
    let item = format!("#channels li[data-channel=\"{channel}\"]");
    s.wait_for(
        &format!("{channel} in the conversations"),
        &format!("document.querySelector('{item}')"),
    )
    .await;
    s.click(&format!("{item} button")).await;
}

/// Types a message and presses Enter; waits for its ack (no longer pending).
async fn say(s: &Session, text: &str) {
    s.type_into("#text", &format!("{text}{ENTER}")).await;
    s.wait_for(
        &format!("the ack of {text:?}"),
        "!document.querySelector('#messages li.pending, #messages li.failed')",
    )
    .await;
}

/// The open conversation's messages as shown: `[id, text]`, top to bottom.
async fn shown(s: &Session) -> Vec<(u64, String)> {
    let v = s
        .js(
            "return [...document.querySelectorAll('#messages li.msg[data-id]')]
                .map(li => [Number(li.dataset.id), li.querySelector('.text').textContent])",
            json!([]),
        )
        .await;
    serde_json::from_value(v).unwrap()
}

/// Waits until the open conversation shows exactly `texts`, in this order,
/// each once, with ids increasing.
async fn wait_shown(s: &Session, texts: &[String]) {
    let expected = serde_json::to_string(texts).unwrap();
    s.wait_for(
        &format!("the conversation to show exactly {expected}"),
        &format!(
            "JSON.stringify([...document.querySelectorAll('#messages li.msg[data-id] .text')]
                .map(t => t.textContent)) === {}",
            Value::String(expected.clone())
        ),
    )
    .await;
    let ids: Vec<u64> = shown(s).await.into_iter().map(|(id, _)| id).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids out of order: {ids:?}"
    );
}

fn texts(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

async fn set_offline(s: &Session, offline: bool) {
    s.devtools("Network.enable", json!({})).await;
    s.devtools(
        "Network.emulateNetworkConditions",
        json!({"offline": offline, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1}),
    )
    .await;
}

/// The page's cursor rules (its `Inbox`), run in the page: what arrives out of
/// order or twice in the live flow is hard to provoke from outside.
async fn inbox_cursor_rules(s: &Session) {
    let checks = s
        .js(
            "const inbox = new Inbox(5);
             const r = [];
             r.push(inbox.take(5) === false);                    // at the cursor: a duplicate
             r.push(inbox.take(7) && inbox.cursor === 5 && inbox.hasGap);  // a gap at 6
             r.push(inbox.take(7) === false);                    // seen above the gap: a duplicate
             r.push(inbox.take(6) && inbox.cursor === 7 && !inbox.hasGap); // the gap filled
             inbox.take(9);
             inbox.completeTo(8);                                // a sync answered up to 8
             r.push(inbox.cursor === 9 && !inbox.hasGap);
             inbox.take(12);
             inbox.completeTo(10);                               // 10 was the last: 11 missing still
             r.push(inbox.cursor === 10 && inbox.hasGap);
             return r;",
            json!([]),
        )
        .await;
    assert_eq!(
        checks,
        json!([true, true, true, true, true, true]),
        "Inbox rules"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_chat_in_headless_chromium_through_a_dropped_connection() {
    let Some(programs) = webdriver::programs("web_chat") else {
        return;
    };
    let (listener, path_addr) = NetPath::bind().await;
    let server = TestServer::with(|c| {
        c.heartbeat_interval = Duration::from_millis(500);
        c.offline_after = Duration::from_millis(3000);
        c.advertise = Some(format!("ws://{path_addr}"));
    })
    .await;
    let path = NetPath::start(listener, server.server().addr());
    let url = format!("{}/", server.url);
    let mut driver = Driver::start(&programs).await;
    let (a, b) = (driver.session().await, driver.session().await);

    // Sign up, befriend by user id, see each other online.
    let alice = sign_in(&a, &url, "alice", "#signup").await;
    inbox_cursor_rules(&a).await;
    let bob = sign_in(&b, &url, "bob", "#signup").await;
    a.type_into("#friend-id", &bob.user_id.to_string()).await;
    a.click("#add-friend button").await;
    a.wait_for("bob online at alice's", &friend_is(bob.user_id, "online"))
        .await;
    b.click("#friends-refresh").await;
    b.wait_for("alice online at bob's", &friend_is(alice.user_id, "online"))
        .await;

    // 1:1 chat, both ways.
    let dm = format!(
        "dm:{}:{}",
        alice.user_id.min(bob.user_id),
        alice.user_id.max(bob.user_id)
    );
    a.click(&format!(
        "#friends li[data-user-id=\"{}\"] button",
        bob.user_id
    ))
    .await;
    say(&a, "hello bob").await;
    open(&b, &dm).await;
    wait_shown(&b, &texts(&["hello bob"])).await;
    say(&b, "hi alice").await;
    let mut dm_texts = texts(&["hello bob", "hi alice"]);
    wait_shown(&a, &dm_texts).await;
    a.snapshot("web-chat-1-dm-alice").await;

    // A group: alice creates it with bob ticked; bob learns of it by its first message.
    a.type_into("#group-name", "team").await;
    a.click(&format!(
        "#group-members input[data-user-id=\"{}\"]",
        bob.user_id
    ))
    .await;
    a.click("#new-group button[type=submit]").await;
    a.wait_for(
        "the new group open",
        "document.querySelector('#channels li[aria-current=true][data-channel^=\"g:\"]')",
    )
    .await;
    let group = a
        .js(
            "return document.querySelector('#channels li[aria-current=true]').dataset.channel",
            json!([]),
        )
        .await;
    let group = group.as_str().unwrap().to_string();
    say(&a, "hello team").await;
    open(&b, &group).await;
    wait_shown(&b, &texts(&["hello team"])).await;
    say(&b, "team, hi").await;
    let mut group_texts = texts(&["hello team", "team, hi"]);
    wait_shown(&a, &group_texts).await;
    b.snapshot("web-chat-2-group-bob").await;

    // Bob's network goes away: the browser is told it is offline and his
    // WebSocket stops carrying bytes. His page notices by its heartbeats;
    // the server notices by their absence, and alice sees him go offline.
    open(&b, &dm).await;
    set_offline(&b, true).await;
    path.cut(&bob.token);
    b.wait_for(
        "bob's page to see that it is offline",
        "document.querySelector('#conn-status').dataset.state === 'offline'",
    )
    .await;
    a.wait_for("bob offline at alice's", &friend_is(bob.user_id, "offline"))
        .await;
    b.snapshot("web-chat-3-bob-offline").await;
    a.snapshot("web-chat-3-alice-sees-bob-offline").await;

    // Alice sends meanwhile, in both conversations.
    open(&a, &dm).await;
    for i in 1..=5 {
        let text = format!("while you were away {i}");
        say(&a, &text).await;
        dm_texts.push(text);
    }
    open(&a, &group).await;
    say(&a, "team: while you were away").await;
    group_texts.push("team: while you were away".into());

    // The network comes back: reconnect, sync, nothing lost, nothing twice, in order.
    path.restore(&bob.token);
    set_offline(&b, false).await;
    wait_connected(&b).await;
    wait_shown(&b, &dm_texts).await;
    open(&b, &group).await;
    wait_shown(&b, &group_texts).await;
    a.wait_for(
        "bob online again at alice's",
        &friend_is(bob.user_id, "online"),
    )
    .await;
    b.snapshot("web-chat-4-bob-back").await;

    // History to scroll back through: 260 messages in a group, sent by another
    // device of alice's, more than a new device's first sync (200) fetches.
    let seeder = server.login("alice", None).await;
    let archive = server.create_group(&seeder, &[bob.user_id]).await;
    let mut ws = seeder.connect().await;
    let seeds: Vec<String> = (1..=260).map(|i| format!("seed {i}")).collect();
    for (i, text) in seeds.iter().enumerate() {
        let to = json!({ "channel": archive });
        let frame =
            json!({"type": "send", "req": i, "to": to, "client_msg_id": text, "text": text});
        ws.send_json(frame).await;
    }
    for i in 0..seeds.len() {
        let answer = ws.answer(i as i64).await;
        assert!(matches!(answer, ServerFrame::Ack { .. }), "{answer:?}");
    }

    // A second tab of bob's is a second device: it logs in, syncs, receives too.
    let tab1 = b.window().await;
    let tab2 = b.new_window().await;
    let bob2 = sign_in(&b, &url, "bob", "#login").await;
    assert_ne!(
        bob2.device_id, bob.device_id,
        "a second tab is a second device"
    );
    // Its first sync brought the archive's newest messages, not the dm (older):
    // the dm opens from the friends list, its messages from history.
    b.click(&format!(
        "#friends li[data-user-id=\"{}\"] button",
        alice.user_id
    ))
    .await;
    wait_shown(&b, &dm_texts).await;
    open(&a, &dm).await;
    say(&a, "to both of your devices").await;
    dm_texts.push("to both of your devices".into());
    wait_shown(&b, &dm_texts).await;
    say(&b, "from my second device").await;
    dm_texts.push("from my second device".into());
    wait_shown(&a, &dm_texts).await;
    b.switch_to(&tab1).await;
    open(&b, &dm).await;
    wait_shown(&b, &dm_texts).await;
    b.snapshot("web-chat-5-first-device-sees-second").await;
    // A reload keeps the tab's device, cursor and conversations.
    b.goto(&url).await;
    wait_connected(&b).await;
    let reloaded = b
        .js(
            "return JSON.parse(sessionStorage.getItem('chatscale.session')).device_id",
            json!([]),
        )
        .await;
    assert_eq!(
        reloaded,
        json!(bob.device_id),
        "a reload is the same device"
    );
    open(&b, &dm).await;
    wait_shown(&b, &dm_texts).await;
    b.switch_to(&tab2).await;

    // Scroll-back: the newest messages came with the first sync; scrolling to
    // the top loads older pages from history (`before`), until the start.
    open(&b, &archive).await;
    b.wait_for(
        "the archive's newest messages",
        "document.querySelector('#messages li.msg[data-id]')",
    )
    .await;
    let first_shown = shown(&b).await[0].0;
    assert!(
        first_shown > 1,
        "the first sync should not have brought all 260"
    );
    for _ in 0..20 {
        let top = "const box = document.querySelector('#messages-box'); box.scrollTop = 0;
                   return !document.querySelector('#history-note').hidden";
        if b.js(top, json!([])).await == json!(true) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_shown(&b, &seeds).await;
    b.snapshot("web-chat-6-second-device-history").await;

    // Nothing went wrong in any page's console (a session's log covers all its windows).
    a.assert_no_console_errors("alice").await;
    b.assert_no_console_errors("bob").await;

    a.quit().await;
    b.quit().await;
    drop(driver);
    drop(path);
    server.stop().await;
}
