//! The cluster: real `reference-server` processes on port 0 sharing one Redis
//! (`--cluster`, and shared storage), each test in its own key prefix and pub/sub
//! namespace. Cross-node delivery (1:1, group, multi-device, order under
//! concurrent senders on two nodes), presence across nodes, push only for members
//! connected nowhere, logout across nodes, discovery by load, SIGTERM and
//! `kill -9` (clients fail over through discovery and lose nothing), PostgreSQL
//! storage, and the refusal of unshared storage.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use reference_server::protocol::{ServerFrame, Status};
use serde_json::{json, Value};

use crate::support::{Device, Ws, PATIENCE};

mod nodes;
mod private_redis;
use nodes::{Namespace, Node};
use private_redis::PrivateRedis;

/// Sends and returns the ack's (channel, id, seq), panicking on anything else.
async fn send(ws: &mut Ws, req: i64, to: Value, text: &str) -> (String, u64, u64) {
    match ws.send_to(req, to, &format!("m{req}"), text).await {
        ServerFrame::Ack {
            channel, id, seq, ..
        } => (channel, id, seq),
        other => panic!("expected an ack, got {other:?}"),
    }
}

/// The next presence frame (messages skipped).
async fn next_presence(ws: &mut Ws) -> (u64, Status) {
    loop {
        if let ServerFrame::Presence {
            user_id, status, ..
        } = ws.next().await
        {
            return (user_id, status);
        }
    }
}

/// Presence frames among what is queued for `ws` now.
async fn presence_queued(ws: &mut Ws, req: i64) -> Vec<(u64, Status)> {
    ws.drain(req)
        .await
        .into_iter()
        .filter_map(|f| match f {
            ServerFrame::Presence {
                user_id, status, ..
            } => Some((user_id, status)),
            _ => None,
        })
        .collect()
}

/// Polls until `check` holds (panics past twice the patience); returns how long.
async fn eventually<F, Fut>(what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < PATIENCE * 2,
            "{what}: not within the patience"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

async fn discovery(node: &Node, token: &str) -> Vec<String> {
    let (status, body) = node.get("/v1/discovery", Some(token)).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_value(body["servers"].clone()).unwrap()
}

async fn status_of(node: &Node, token: &str, user: u64) -> String {
    let (_, body) = node
        .get(&format!("/v1/presence?users={user}"), Some(token))
        .await;
    body["presence"][0]["status"].as_str().unwrap().to_string()
}

/// Three nodes; alice on nodes 1 and 2, bob on 2, carol on 3: 1:1 and group
/// messages reach every device of every member, on every node, with each user's seq.
async fn delivery_across_nodes(ns: Namespace) {
    let nodes = Node::start_many(&ns, 3, &[]).await;
    for name in ["alice", "bob", "carol"] {
        nodes[0].signup(name).await;
    }
    let a1 = nodes[0].device("alice", Some("phone")).await;
    let a2 = nodes[1].device("alice", Some("laptop")).await;
    let b1 = nodes[1].device("bob", None).await;
    let c1 = nodes[2].device("carol", None).await;
    let (mut wa1, mut wa2) = (a1.connect().await, a2.connect().await);
    let (mut wb1, mut wc1) = (b1.connect().await, c1.connect().await);

    // 1:1 sent on node 1: bob's device on node 2 and alice's other device on node 2.
    let (dm, id, seq) = send(&mut wa1, 1, json!({"user": b1.user_id}), "hi bob").await;
    let m = wb1.next_message().await;
    assert_eq!(
        (m.channel.as_str(), m.id, m.text.as_str()),
        (dm.as_str(), id, "hi bob")
    );
    let m = wa2.next_message().await;
    assert_eq!(
        (m.channel.as_str(), m.id, m.seq),
        (dm.as_str(), id, Some(seq))
    );

    // A group message sent on node 2: every other device, on all three nodes.
    let group = nodes[2].create_group(&c1, &[a1.user_id, b1.user_id]).await;
    let (_, gid, _) = send(&mut wb1, 2, json!({"channel": group}), "hello all").await;
    for ws in [&mut wa1, &mut wa2, &mut wc1] {
        let m = ws.next_message().await;
        assert_eq!(
            (m.channel.as_str(), m.id, m.text.as_str()),
            (group.as_str(), gid, "hello all")
        );
        assert_eq!(m.from, b1.user_id);
    }
    // Not back to the sending device.
    assert!(wb1.drain(3).await.is_empty());
    ns.remove(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_reach_every_device_on_every_node() {
    let Some(ns) = Namespace::redis("deliver") else {
        return;
    };
    delivery_across_nodes(ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_reach_every_device_on_every_node_with_postgres_storage() {
    let Some(ns) = Namespace::postgres("pgdeliver") else {
        return;
    };
    delivery_across_nodes(ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_reach_every_device_on_every_node_over_a_redis_cluster() {
    let Some(ns) = Namespace::redis_cluster("rcdeliver") else {
        return;
    };
    delivery_across_nodes(ns).await;
}

/// Two nodes send into one group at once: every device (on a third node, and
/// the senders' other devices) sees the group's ids in increasing order, and
/// has every message (live, or by a sync from its cursor).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_on_two_nodes_keep_id_order_everywhere() {
    let Some(ns) = Namespace::redis("order") else {
        return;
    };
    const EACH: i64 = 25;
    let nodes = Node::start_many(&ns, 3, &[]).await;
    for name in ["ann", "ben", "cat"] {
        nodes[0].signup(name).await;
    }
    let a = nodes[0].device("ann", Some("one")).await;
    let a_other = nodes[1].device("ann", Some("two")).await;
    let b = nodes[1].device("ben", None).await;
    let c = nodes[2].device("cat", None).await;
    let group = nodes[0].create_group(&a, &[b.user_id, c.user_id]).await;
    let (mut wc, mut wa_other) = (c.connect().await, a_other.connect().await);
    let senders = [a.clone(), b.clone()].map(|d| {
        let group = group.clone();
        tokio::spawn(async move {
            let mut ws = d.connect().await;
            for i in 1..=EACH {
                send(
                    &mut ws,
                    i,
                    json!({"channel": group}),
                    &format!("{} {i}", d.user_id),
                )
                .await;
            }
        })
    });
    for s in senders {
        s.await.expect("sender");
    }
    for ws in [&mut wc, &mut wa_other] {
        let mut live = Vec::new();
        while live.len() < 2 * EACH as usize {
            match tokio::time::timeout(Duration::from_secs(3), ws.next_message()).await {
                Ok(m) => live.push(m),
                Err(_) => break, // a frame skipped after the grace: the sync below has it
            }
        }
        let ids: Vec<u64> = live.iter().map(|m| m.id).collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "live ids in order: {ids:?}"
        );
        let all: BTreeSet<u64> = ws.sync_all(0, 500).await.iter().map(|m| m.id).collect();
        assert_eq!(
            all,
            (1..=2 * EACH as u64).collect(),
            "every message in the inbox"
        );
    }
    ns.remove(nodes).await;
}

/// Presence: online when a device connects on any node, still online while a
/// device anywhere is fresh, offline at once on logout of the last device
/// anywhere, offline after the timeout when the last device goes quiet; one frame
/// per transition to a friend on another node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_cluster_wide() {
    let Some(ns) = Namespace::redis("presence") else {
        return;
    };
    let nodes = Node::start_many(&ns, 3, &["--offline-after-ms", "1500"]).await;
    nodes[0].signup("pa").await;
    nodes[0].signup("pb").await;
    let a = nodes[0].device("pa", None).await;
    let b2 = nodes[1].device("pb", Some("two")).await;
    let b3 = nodes[2].device("pb", Some("three")).await;
    nodes[0].befriend(&a, &b2).await;
    let mut wa = a.connect().await;

    let mut wb2 = b2.connect().await;
    assert_eq!(next_presence(&mut wa).await, (b2.user_id, Status::Online));
    assert_eq!(status_of(&nodes[2], &a.token, b2.user_id).await, "online");
    let mut wb3 = b3.connect().await;
    // bob's device on node 2 logs out; the one on node 3 keeps him online.
    wb2.send_json(json!({"type": "logout", "req": 1})).await;
    assert_eq!(wb2.close_code().await, Some(1000));
    wb3.drain(1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(presence_queued(&mut wa, 1).await, vec![], "no flap");
    assert_eq!(status_of(&nodes[0], &a.token, b2.user_id).await, "online");
    // The last device logs out: offline at once.
    wb3.send_json(json!({"type": "logout", "req": 2})).await;
    assert_eq!(next_presence(&mut wa).await, (b2.user_id, Status::Offline));
    assert_eq!(status_of(&nodes[1], &a.token, b2.user_id).await, "offline");

    // A device that goes quiet: offline once the timeout passes.
    let b = nodes[1].device("pb", None).await;
    let wb = b.connect().await;
    assert_eq!(next_presence(&mut wa).await, (b.user_id, Status::Online));
    let quiet = Instant::now();
    drop(wb);
    assert_eq!(next_presence(&mut wa).await, (b.user_id, Status::Offline));
    assert!(
        quiet.elapsed() >= Duration::from_millis(700),
        "not before the timeout"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        presence_queued(&mut wa, 2).await,
        vec![],
        "one frame per transition"
    );
    ns.remove(nodes).await;
}

/// A push goes out only for a member with no connected device on any node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_only_for_members_connected_nowhere() {
    let Some(ns) = Namespace::redis("push") else {
        return;
    };
    let nodes = Node::start_many(&ns, 2, &[]).await;
    nodes[0].signup("sender").await;
    nodes[0].signup("reader").await;
    let s = nodes[0].device("sender", None).await;
    let r = nodes[1].device("reader", None).await;
    let mut ws = s.connect().await;
    let mut wr = r.connect().await;
    send(&mut ws, 1, json!({"user": r.user_id}), "while connected").await;
    wr.next_message().await;
    assert_eq!(
        nodes[0].metric("chatscale_push_notifications_total").await,
        0.0
    );
    drop(wr);
    // The reader's node drops it from the directory on its own schedule: keep
    // sending until a send finds the reader connected nowhere.
    let started = Instant::now();
    for req in 2.. {
        send(&mut ws, req, json!({"user": r.user_id}), "after").await;
        if nodes[0].metric("chatscale_push_notifications_total").await >= 1.0 {
            break;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "no push for a reader connected nowhere"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ns.remove(nodes).await;
}

/// A logout on one node closes that device's connections on another within a
/// second (the user's other device stays connected).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_closes_the_device_on_every_node() {
    let Some(ns) = Namespace::redis("logout") else {
        return;
    };
    let nodes = Node::start_many(&ns, 2, &[]).await;
    nodes[0].signup("lo").await;
    let d1 = nodes[1].device("lo", Some("one")).await;
    let d2 = nodes[1].device("lo", Some("two")).await;
    let (mut w1, mut w2) = (d1.connect().await, d2.connect().await);
    let started = Instant::now();
    let (status, _) = nodes[0]
        .request(reqwest::Method::POST, "/v1/logout", Some(&d1.token), None)
        .await;
    assert_eq!(status, 204);
    assert_eq!(w1.close_code().await, Some(1000));
    let took = started.elapsed();
    assert!(w2.drain(1).await.is_empty(), "the other device stays");
    eprintln!("logout closed the device on the other node after {took:?}");
    let (status, _) = nodes[1].get("/v1/friends", Some(&d1.token)).await;
    assert_eq!(status, 401, "the token is dead on every node");
    ns.remove(nodes).await;
}

/// Discovery lists the live nodes least loaded first; SIGTERM takes a node out at
/// once and closes its WebSockets with 1001.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_orders_by_load_and_sigterm_leaves_at_once() {
    let Some(ns) = Namespace::redis("discovery") else {
        return;
    };
    let mut nodes = Node::start_many(&ns, 2, &["--max-connections", "10"]).await;
    nodes[0].signup("busy").await;
    let mut held = Vec::new();
    for i in 0..4 {
        held.push(
            nodes[0]
                .device("busy", Some(&format!("d{i}")))
                .await
                .connect()
                .await,
        );
    }
    let token = nodes[0].login("busy", None).await.token;
    let quiet = nodes[1].ws_url();
    eventually("the idle node listed first by both nodes", || {
        let (nodes, token, quiet) = (&nodes, &token, &quiet);
        async move {
            discovery(&nodes[0], token).await.first() == Some(quiet)
                && discovery(&nodes[1], token).await.first() == Some(quiet)
        }
    })
    .await;
    let login = nodes[0].login("busy", None).await;
    assert_eq!(login.ws_url, quiet, "login's servers: least loaded first");
    assert_eq!(discovery(&nodes[0], &token).await.len(), 2);

    let on_quiet = nodes[1].device("busy", Some("q")).await;
    let mut ws = on_quiet.connect().await;
    assert_eq!(nodes[1].terminate().await, Some(0));
    assert_eq!(ws.close_code().await, Some(1001));
    let gone = eventually("the stopped node out of discovery", || {
        let (nodes, token, quiet) = (&nodes, &token, &quiet);
        async move { !discovery(&nodes[0], token).await.contains(quiet) }
    })
    .await;
    eprintln!("SIGTERM: out of discovery {gone:?} after the exit");
    ns.remove(nodes).await;
}

/// `kill -9` of a node: it leaves discovery by itself; its clients log in
/// through discovery on a live node, sync from their cursors and lose nothing
/// that was acked. Its users' presence is reaped once `offline_after` has passed
/// since the node was last seen: one that reconnected elsewhere meanwhile does not
/// flap, one that did not goes offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_clients_fail_over_and_lose_nothing() {
    let Some(ns) = Namespace::redis("kill9") else {
        return;
    };
    let mut nodes = Node::start_many(&ns, 2, &["--offline-after-ms", "6000"]).await;
    for name in ["writer", "victim", "quiet"] {
        nodes[0].signup(name).await;
    }
    let w = nodes[0].device("writer", Some("sends")).await;
    let watcher = nodes[0].device("writer", Some("watches")).await;
    let v = nodes[1].device("victim", None).await;
    let q = nodes[1].device("quiet", None).await;
    nodes[0].befriend(&w, &v).await;
    nodes[0].befriend(&w, &q).await;
    let (mut ww, mut watch) = (w.connect().await, watcher.connect().await);
    let (mut wv, _wq) = (v.connect().await, q.connect().await);
    let online = [
        next_presence(&mut watch).await,
        next_presence(&mut watch).await,
    ];
    for user in [v.user_id, q.user_id] {
        assert!(online.contains(&(user, Status::Online)), "{online:?}");
    }
    let mut acked = BTreeSet::new();
    let mut cursor = 0;
    for i in 1..=10 {
        acked.insert(
            send(&mut ww, i, json!({"user": v.user_id}), "before")
                .await
                .1,
        );
        cursor = wv.next_message().await.seq.expect("seq");
    }
    let dead = nodes[1].ws_url();
    eventually("both nodes in discovery", || {
        let (nodes, token, dead) = (&nodes, &w.token, &dead);
        async move { discovery(&nodes[0], token).await.contains(dead) }
    })
    .await;
    nodes[1].kill9().await;
    let killed = Instant::now();
    for i in 11..=20 {
        acked.insert(
            send(&mut ww, i, json!({"user": v.user_id}), "after")
                .await
                .1,
        );
    }
    assert_eq!(wv.close_code().await, None, "no goodbye from a killed node");
    eventually("the killed node out of discovery", || {
        let (nodes, token, dead) = (&nodes, &w.token, &dead);
        async move { !discovery(&nodes[0], token).await.contains(dead) }
    })
    .await;
    eprintln!(
        "kill -9: out of discovery {:?} after the kill",
        killed.elapsed()
    );
    // The victim logs in again through discovery and syncs from its cursor.
    let servers = discovery(&nodes[0], &v.token).await;
    let again = Device {
        ws_url: servers[0].clone(),
        ..v.clone()
    };
    let mut wv = again.connect().await;
    let mut have: BTreeSet<u64> = acked.iter().copied().filter(|&id| id <= 10).collect();
    have.extend(wv.sync_all(cursor, 7).await.iter().map(|m| m.id));
    assert_eq!(have, acked, "every acked message reached the victim");
    // The reap: the quiet user goes offline; the victim, back on a live node and
    // heartbeating there, never did.
    let heartbeats = tokio::spawn(async move {
        for req in 1.. {
            wv.drain(req).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    assert_eq!(
        next_presence(&mut watch).await,
        (q.user_id, Status::Offline)
    );
    eprintln!(
        "kill -9: its idle user offline {:?} after the kill",
        killed.elapsed()
    );
    assert!(
        killed.elapsed() >= Duration::from_secs(3),
        "not before offline_after"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        presence_queued(&mut watch, 1).await,
        vec![],
        "no flap for the victim"
    );
    assert_eq!(status_of(&nodes[0], &w.token, v.user_id).await, "online");
    heartbeats.abort();
    ns.remove(nodes).await;
}

#[tokio::test]
async fn cluster_with_unshared_storage_exits_2() {
    for storage in ["memory", "embedded:/tmp/never-created"] {
        let out = nodes::command(&["--storage", storage, "--cluster", "redis://127.0.0.1:1"])
            .stderr(std::process::Stdio::piped())
            .output()
            .await
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "{storage}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("--cluster") && stderr.contains("shares"),
            "{stderr}"
        );
    }
}

/// Redis (storage and cluster) dies under traffic and comes back: sends in
/// between are answered with an error, never a false ack; the nodes reconnect,
/// re-subscribe and register again by themselves; live delivery across nodes
/// resumes; every acked message is in the recipient's inbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_recovers_and_loses_nothing_acked() {
    let Some(mut redis) = PrivateRedis::start().await else {
        return;
    };
    let ns = Namespace {
        storage: format!("{}?prefix=rs", redis.url()),
        cluster: format!("{}?prefix=rs", redis.url()),
    };
    let nodes = Node::start_many(&ns, 2, &[]).await;
    nodes[0].signup("src").await;
    nodes[0].signup("dst").await;
    let s = nodes[0].device("src", None).await;
    let d = nodes[1].device("dst", None).await;
    let (mut ws, mut wd) = (s.connect().await, d.connect().await);
    let mut acked = BTreeSet::new();
    acked.insert(
        send(&mut ws, 1, json!({"user": d.user_id}), "before")
            .await
            .1,
    );
    let cursor = wd.next_message().await.seq.expect("seq");

    redis.crash().await;
    // Waits for Redis (up to the command timeout), then gets an error.
    for req in 2..=2 {
        let answer = ws
            .send_to(
                req,
                json!({"user": d.user_id}),
                &format!("m{req}"),
                "during",
            )
            .await;
        match answer {
            ServerFrame::Ack { id, .. } => {
                acked.insert(id);
            }
            ServerFrame::Error { code, .. } => {
                assert!(matches!(code.as_str(), "internal" | "overloaded"), "{code}");
            }
            other => panic!("{other:?}"),
        }
    }
    redis.up().await;

    // Live delivery across nodes comes back by itself.
    let mut req = 10;
    let started = Instant::now();
    loop {
        req += 1;
        let answer = ws
            .send_to(req, json!({"user": d.user_id}), &format!("m{req}"), "after")
            .await;
        if let ServerFrame::Ack { id, .. } = answer {
            acked.insert(id);
            let live = tokio::time::timeout(Duration::from_secs(1), async {
                loop {
                    if wd.next_message().await.id == id {
                        return;
                    }
                }
            });
            if live.await.is_ok() {
                break;
            }
        }
        assert!(
            started.elapsed() < PATIENCE * 3,
            "cross-node delivery did not come back"
        );
    }
    eprintln!(
        "live cross-node delivery back {:?} after Redis restarted",
        started.elapsed()
    );
    let inbox: BTreeSet<u64> = wd
        .sync_all(cursor - 1, 100)
        .await
        .iter()
        .map(|m| m.id)
        .collect();
    assert!(acked.is_subset(&inbox), "acked {acked:?}, inbox {inbox:?}");
    drop(nodes);
}
