//! The HTTP API row by row: accounts, tokens, discovery, friends, groups, history
//! paging, presence queries, health and metrics.

use std::time::Duration;

use reference_server::protocol::ServerFrame;
use serde_json::{json, Value};

use crate::support::TestServer;

#[tokio::test]
async fn signup_validates_names_and_passwords_and_refuses_taken_names() {
    let s = TestServer::start().await;
    let (status, body) = s
        .post(
            "/v1/signup",
            None,
            json!({"username": "alice", "password": "password123"}),
        )
        .await;
    assert_eq!(status, 201);
    assert!(body["user_id"].as_u64().unwrap() > 0);

    let (status, body) = s
        .post(
            "/v1/signup",
            None,
            json!({"username": "alice", "password": "password123"}),
        )
        .await;
    assert_eq!((status, body["error"].as_str()), (409, Some("conflict")));

    let long = "x".repeat(65);
    for bad in ["", long.as_str(), "has space", "émile", "a/b"] {
        let (status, body) = s
            .post(
                "/v1/signup",
                None,
                json!({"username": bad, "password": "password123"}),
            )
            .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("bad_request")),
            "username {bad:?}"
        );
    }
    let ok64 = "y".repeat(64);
    assert_eq!(
        s.post(
            "/v1/signup",
            None,
            json!({"username": ok64, "password": "password123"})
        )
        .await
        .0,
        201
    );
    let (status, _) = s
        .post(
            "/v1/signup",
            None,
            json!({"username": "bob", "password": "short"}),
        )
        .await;
    assert_eq!(status, 400);
    let (status, body) = s.post("/v1/signup", None, json!({"username": "bob"})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("bad_request")),
        "missing field"
    );
    let (status, body) = s.post_raw("/v1/signup", "{not json").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("bad_request")),
        "malformed JSON"
    );
    let (status, _) = s
        .post(
            "/v1/signup",
            None,
            json!({"username": 5, "password": "password123"}),
        )
        .await;
    assert_eq!(status, 400, "wrong-typed field");
}

#[tokio::test]
async fn login_makes_a_device_per_login_unless_named_and_rejects_bad_passwords() {
    let s = TestServer::start().await;
    let uid = s.signup("carol").await;
    let a = s.login("carol", None).await;
    let b = s.login("carol", None).await;
    assert_eq!((a.user_id, b.user_id), (uid, uid));
    assert_ne!(a.device_id, b.device_id, "each login is a new device");
    assert_ne!(a.token, b.token);
    assert!(a.token.len() >= 32, "at least 128 random bits");
    let p1 = s.login("carol", Some("phone")).await;
    let p2 = s.login("carol", Some("phone")).await;
    assert_eq!(p1.device_id, p2.device_id, "a named device is reused");
    assert!(
        a.ws_url.starts_with("ws://") && a.ws_url.ends_with("/v1/ws"),
        "{}",
        a.ws_url
    );

    let (status, body) = s
        .post(
            "/v1/login",
            None,
            json!({"username": "carol", "password": "wrongpass1"}),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, _) = s
        .post(
            "/v1/login",
            None,
            json!({"username": "nobody", "password": "password123"}),
        )
        .await;
    assert_eq!(status, 401);
    let (status, _) = s
        .post("/v1/login", None, json!({"username": "carol"}))
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn tokens_are_checked_and_logout_revokes_at_once() {
    let s = TestServer::start().await;
    let d = s.user("dave").await;
    assert_eq!(s.get("/v1/discovery", None).await.0, 401, "no token");
    assert_eq!(
        s.get("/v1/discovery", Some("deadbeef.0")).await.0,
        401,
        "unknown token"
    );
    let (status, body) = s.get("/v1/discovery", Some(&d.token)).await;
    assert_eq!(status, 200);
    assert_eq!(body["servers"][0].as_str().unwrap(), d.ws_url);

    // A live connection of the device is closed by an HTTP logout.
    let mut ws = d.connect().await;
    let (status, _) = s
        .request(reqwest::Method::POST, "/v1/logout", Some(&d.token), None)
        .await;
    assert_eq!(status, 204);
    assert_eq!(
        s.get("/v1/discovery", Some(&d.token)).await.0,
        401,
        "token stops working at once"
    );
    assert_eq!(ws.close_code().await, Some(1000));
    let err = tokio_tungstenite::connect_async(format!("{}?token={}", d.ws_url, d.token))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("401"),
        "no upgrade with a revoked token: {err}"
    );
    let err = tokio_tungstenite::connect_async(d.ws_url.clone())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("401"),
        "no upgrade without a token: {err}"
    );
}

#[tokio::test]
async fn expired_tokens_are_refused() {
    let s = TestServer::with(|c| c.token_ttl = Some(std::time::Duration::from_millis(200))).await;
    let d = s.user("erin").await;
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let (status, body) = s.get("/v1/discovery", Some(&d.token)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized"))
    );
}

#[tokio::test]
async fn friendship_is_mutual_and_shows_status() {
    let s = TestServer::start().await;
    let a = s.user("fa").await;
    let b = s.user("fb").await;
    s.befriend(&a, &b).await;
    let (status, body) = s.get("/v1/friends", Some(&b.token)).await;
    assert_eq!(status, 200);
    let friend = &body["friends"][0];
    assert_eq!(friend["user_id"].as_u64(), Some(a.user_id));
    assert_eq!(friend["username"].as_str(), Some("fa"));
    assert_eq!(friend["status"].as_str(), Some("offline"));
    let _ws = a.connect().await;
    let (_, body) = s.get("/v1/friends", Some(&b.token)).await;
    assert_eq!(body["friends"][0]["status"].as_str(), Some("online"));
    assert!(body["friends"][0]["last_active_at"].as_u64().is_some());
    let (status, body) = s
        .post("/v1/friends", Some(&a.token), json!({"user_id": 999_999}))
        .await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
}

#[tokio::test]
async fn groups_hold_at_most_100_members_and_only_members_manage_them() {
    let s = TestServer::start().await;
    let owner = s.user("owner").await;
    let mut ids = Vec::new();
    for i in 0..100 {
        ids.push(s.signup(&format!("m{i}")).await);
    }
    let outsider = s.login("m99", None).await;
    // 100 members including the caller: 99 others is the most.
    let (status, body) = s
        .post(
            "/v1/groups",
            Some(&owner.token),
            json!({"name": "big", "members": ids}),
        )
        .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("group_full")));
    let channel = s.create_group(&owner, &ids[..99]).await;
    assert!(channel.starts_with("g:"));
    let path = format!("/v1/groups/{channel}/members");
    let (status, body) = s
        .post(&path, Some(&owner.token), json!({"user_id": ids[99]}))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("group_full")),
        "101st member"
    );

    let small = s.create_group(&owner, &[ids[0]]).await;
    let path = format!("/v1/groups/{small}/members");
    let (status, body) = s
        .post(
            &path,
            Some(&outsider.token),
            json!({"user_id": outsider.user_id}),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("forbidden")),
        "non-member adds"
    );
    assert_eq!(
        s.post(
            &path,
            Some(&owner.token),
            json!({"user_id": outsider.user_id})
        )
        .await
        .0,
        204
    );
    let history = format!("/v1/channels/{small}/messages");
    assert_eq!(s.get(&history, Some(&outsider.token)).await.0, 200);
    let del = format!("/v1/groups/{small}/members/{}", outsider.user_id);
    assert_eq!(
        s.request(reqwest::Method::DELETE, &del, Some(&owner.token), None)
            .await
            .0,
        204
    );
    assert_eq!(
        s.get(&history, Some(&outsider.token)).await.0,
        403,
        "removed member cannot read"
    );

    let (status, _) = s
        .post(
            "/v1/groups",
            Some(&owner.token),
            json!({"name": "x", "members": [424242]}),
        )
        .await;
    assert_eq!(status, 404, "unknown member");
    assert_eq!(
        s.get("/v1/channels/g:9999/messages", Some(&owner.token))
            .await
            .0,
        404
    );
}

#[tokio::test]
async fn history_pages_forwards_and_backwards() {
    let s = TestServer::start().await;
    let a = s.user("ha").await;
    let b = s.user("hb").await;
    let mut ws = a.connect().await;
    for i in 1..=120 {
        let ack = ws
            .send_to(
                i,
                json!({"user": b.user_id}),
                &format!("c{i}"),
                &format!("m{i}"),
            )
            .await;
        assert!(
            matches!(ack, ServerFrame::Ack { id, .. } if id == i as u64),
            "{ack:?}"
        );
    }
    let channel = format!(
        "dm:{}:{}",
        a.user_id.min(b.user_id),
        a.user_id.max(b.user_id)
    );
    let ids = |v: &Value| -> Vec<u64> {
        v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_u64().unwrap())
            .collect()
    };
    let page = |q: &str| {
        let path = format!("/v1/channels/{channel}/messages{q}");
        let token = b.token.clone();
        let s = &s;
        async move {
            let (status, body) = s.get(&path, Some(&token)).await;
            assert_eq!(status, 200, "{path}: {body}");
            body
        }
    };
    assert_eq!(
        ids(&page("").await),
        (71..=120).collect::<Vec<_>>(),
        "default: newest 50"
    );
    assert_eq!(
        ids(&page("?after=0&limit=10").await),
        (1..=10).collect::<Vec<_>>()
    );
    assert_eq!(
        ids(&page("?after=100").await),
        (101..=120).collect::<Vec<_>>()
    );
    assert_eq!(
        ids(&page("?before=51&limit=10").await),
        (41..=50).collect::<Vec<_>>()
    );
    assert_eq!(ids(&page("?after=5&before=9").await), vec![6, 7, 8]);
    assert_eq!(
        ids(&page("?after=0&limit=1000").await).len(),
        120,
        "limit capped at 500"
    );
    let first = &page("?after=0&limit=1").await["messages"][0];
    assert_eq!(first["text"].as_str(), Some("m1"));
    assert_eq!(first["from"].as_u64(), Some(a.user_id));
    assert_eq!(first["client_msg_id"].as_str(), Some("c1"));
    let path = format!("/v1/channels/{channel}/messages?after=x");
    assert_eq!(s.get(&path, Some(&b.token)).await.0, 400);
    let c = s.user("hc").await;
    let path = format!("/v1/channels/{channel}/messages");
    assert_eq!(
        s.get(&path, Some(&c.token)).await.0,
        403,
        "not a member of the dm"
    );
}

#[tokio::test]
async fn presence_query_health_and_metrics() {
    let s = TestServer::start().await;
    let a = s.user("pa").await;
    let b = s.user("pb").await;
    let _ws = a.connect().await;
    let (status, body) = s
        .get(
            &format!("/v1/presence?users={},{}", a.user_id, b.user_id),
            Some(&b.token),
        )
        .await;
    assert_eq!(status, 200);
    let p = body["presence"].as_array().unwrap();
    assert_eq!(p[0]["status"].as_str(), Some("online"));
    assert_eq!(p[1]["status"].as_str(), Some("offline"));
    assert_eq!(s.get("/v1/presence?users=1,x", Some(&b.token)).await.0, 400);
    assert_eq!(s.get("/healthz", None).await.0, 200);
    for name in [
        "chatscale_connections",
        "chatscale_devices_online",
        "chatscale_messages_accepted_total",
        "chatscale_deliveries_total",
        "chatscale_push_notifications_total",
        "chatscale_slow_consumer_disconnects_total",
        "chatscale_process_resident_memory_bytes",
    ] {
        s.metric(name).await;
    }
    assert_eq!(s.metric("chatscale_connections").await, 1.0);
    assert_eq!(s.metric("chatscale_storage_info{storage=\"memory\",durability=\"none: an acked message lives in process memory only\"}").await, 1.0);
    assert!(s.metric("chatscale_process_resident_memory_bytes").await > 0.0);
    // What loadgen's projection reads: the node's limit, its machine, its CPU.
    assert!(s.metric("chatscale_max_connections").await >= 1.0);
    assert!(s.metric("chatscale_machine_cpus").await >= 1.0);
    assert!(s.metric("chatscale_machine_memory_bytes").await > 0.0);
    assert!(s.metric("process_cpu_seconds_total").await >= 0.0);
    assert!(s.metric("chatscale_connection_memory_bytes_count").await >= 0.0);
}

#[tokio::test]
async fn metrics_label_every_series_with_the_node_and_keep_their_names() {
    let s = TestServer::start().await;
    let text = s.metrics_text().await;
    let series: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert!(series.len() > 30, "{text}");
    for line in &series {
        assert!(line.contains("node=\""), "no node label: {line}");
    }
    for (name, kind) in [
        ("chatscale_connections", "gauge"),
        ("chatscale_connections_total", "counter"),
        ("chatscale_errors_total", "counter"),
        ("chatscale_storage_accept_seconds", "histogram"),
        ("chatscale_connection_memory_bytes", "histogram"),
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} {kind}\n")),
            "{name} is not a {kind}: {text}"
        );
    }
    for name in [
        "chatscale_storage_accept_seconds_sum",
        "chatscale_storage_accept_seconds_count",
        "chatscale_errors_total{code=\"bad_request\"}",
        "chatscale_connection_memory_bytes_bucket{le=\"+Inf\"}",
    ] {
        s.metric(name).await;
    }
}

/// Every open connection is observed in `chatscale_connection_memory_bytes`
/// each `--connection-sample-ms`, and the largest one is a gauge beside it (the
/// buckets bound a maximum only to within a bucket).
#[tokio::test]
async fn connection_memory_is_sampled_per_connection_with_its_maximum() {
    let s = TestServer::with(|c| c.connection_sample_interval = Duration::from_millis(100)).await;
    let (a, b) = (s.user("mem-a").await, s.user("mem-b").await);
    let _wa = a.connect().await;
    let _wb = b.connect().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut count = 0.0;
    while count < 4.0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        count = s.metric("chatscale_connection_memory_bytes_count").await;
    }
    assert!(count >= 4.0, "two connections observed twice: {count}");
    let max = s.metric("chatscale_connection_memory_max_bytes").await;
    let sum = s.metric("chatscale_connection_memory_bytes_sum").await;
    // An idle connection: about a KiB or two, and the max at least the mean.
    assert!((512.0..65_536.0).contains(&max), "{max}");
    assert!(max >= sum / count, "max {max}, mean {}", sum / count);
    // Four buckets per doubling from 512 B to 16 MiB, then +Inf.
    let text = s.metrics_text().await;
    let buckets = text
        .lines()
        .filter(|l| l.starts_with("chatscale_connection_memory_bytes_bucket"))
        .count();
    assert_eq!(buckets, 62, "{text}");
}
