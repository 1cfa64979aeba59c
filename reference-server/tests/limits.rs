//! Abuse limits: logins and signups per source address and per username
//! (`429 rate_limited`), password hashes bounded in number, and a user's send
//! rate across all its devices.

use reference_server::limits::Rate;
use reference_server::protocol::ServerFrame;
use serde_json::json;

use crate::support::TestServer;

fn login_body(name: &str) -> serde_json::Value {
    json!({"username": name, "password": "password123"})
}

#[tokio::test]
async fn logins_past_the_per_username_budget_are_rate_limited() {
    let s = TestServer::with(|c| c.auth_per_user = Rate::new(1, 3)).await;
    s.signup("guessed").await; // one attempt of the three
    for _ in 0..2 {
        let (status, body) = s.post("/v1/login", None, login_body("guessed")).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = s
        .post(
            "/v1/login",
            None,
            json!({"username": "guessed", "password": "wrong-guess"}),
        )
        .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"], "rate_limited");
    // Another username is not held back by this one's budget.
    s.signup("bystander").await;
    let (status, _) = s.post("/v1/login", None, login_body("bystander")).await;
    assert_eq!(status, 200);
    assert!(
        s.metric("chatscale_errors_total{code=\"rate_limited\"}")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn signups_past_the_per_address_budget_are_rate_limited() {
    let s = TestServer::with(|c| c.auth_per_addr = Rate::new(1, 5)).await;
    for i in 0..5 {
        s.signup(&format!("spam{i}")).await;
    }
    let (status, body) = s
        .post(
            "/v1/signup",
            None,
            json!({"username": "spam5", "password": "password123"}),
        )
        .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"], "rate_limited");
    let (status, _) = s.post("/v1/login", None, login_body("spam0")).await;
    assert_eq!(status, 429, "logins from that address share the budget");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_hashes_run_at_most_the_configured_number_at_once() {
    let s = TestServer::with(|c| {
        c.password_hash_concurrency = 2;
        // Costly enough that 24 hashes overlap if nothing holds them back.
        c.password_hash_memory_kib = 4096;
    })
    .await;
    let mut tasks = Vec::new();
    for i in 0..24 {
        let (url, body) = (
            s.url.clone(),
            json!({"username": format!("flood{i}"), "password": "password123"}),
        );
        tasks.push(tokio::spawn(async move {
            reqwest::Client::new()
                .post(format!("{url}/v1/signup"))
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 201);
    }
    let peak = s.metric("chatscale_password_hashes_peak").await;
    assert!((1.0..=2.0).contains(&peak), "peak {peak}");
    assert_eq!(s.metric("chatscale_password_hashes_in_flight").await, 0.0);
}

#[tokio::test]
async fn a_user_cannot_multiply_its_send_rate_with_more_devices() {
    let s = TestServer::with(|c| c.user_send = Rate::new(1, 6)).await;
    let a1 = s.user("many").await;
    let a2 = s.login("many", None).await;
    let b = s.user("target").await;
    let (mut w1, mut w2) = (a1.connect().await, a2.connect().await);
    let to = json!({"user": b.user_id});
    for i in 0..3 {
        let ack = w1.send_to(i, to.clone(), &format!("one{i}"), "hi").await;
        assert!(matches!(ack, ServerFrame::Ack { .. }), "{ack:?}");
        let ack = w2.send_to(i, to.clone(), &format!("two{i}"), "hi").await;
        assert!(matches!(ack, ServerFrame::Ack { .. }), "{ack:?}");
    }
    // Each connection is far under its own allowance; the user is at its own.
    match w2.send_to(9, to.clone(), "two9", "hi").await {
        ServerFrame::Error { code, req, .. } => {
            assert_eq!((code.as_str(), req), ("rate_limited", Some(9)))
        }
        other => panic!("expected rate_limited, got {other:?}"),
    }
    // Another user is not held back.
    let mut wb = b.connect().await;
    let ack = wb
        .send_to(1, json!({"user": a1.user_id}), "back", "hi")
        .await;
    assert!(matches!(ack, ServerFrame::Ack { .. }), "{ack:?}");
}
