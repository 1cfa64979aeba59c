//! Push notifications: one per offline member per message, POSTed as JSON to
//! the configured webhook; none for members with a connected device.

use std::sync::Arc;

use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::support::TestServer;

/// A webhook that forwards every POSTed body to the test.
async fn webhook() -> (String, mpsc::UnboundedReceiver<Value>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let tx = Arc::new(tx);
    let app = Router::new().route(
        "/push",
        post(move |Json(body): Json<Value>| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(body);
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/push", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, rx)
}

#[tokio::test]
async fn offline_members_get_a_push_and_online_ones_do_not() {
    let (url, mut pushes) = webhook().await;
    let s = TestServer::with(|c| c.push_webhook = Some(url)).await;
    let a = s.user("sender").await;
    let b = s.user("offline").await;
    let c = s.user("online").await;
    let _wc = c.connect().await;
    let channel = s.create_group(&a, &[b.user_id, c.user_id]).await;
    let mut wa = a.connect().await;
    wa.send_to(
        1,
        json!({"channel": channel}),
        "p1",
        &"long text ".repeat(50),
    )
    .await;

    let n = tokio::time::timeout(crate::support::PATIENCE, pushes.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n["user_id"].as_u64(), Some(b.user_id));
    assert_eq!(n["channel"].as_str(), Some(channel.as_str()));
    assert_eq!(n["id"].as_u64(), Some(1));
    assert_eq!(n["from"].as_u64(), Some(a.user_id));
    assert!(n["preview"].as_str().unwrap().starts_with("long text"));
    assert!(n["preview"].as_str().unwrap().chars().count() <= 100);
    assert_eq!(
        s.metric("chatscale_push_notifications_total").await,
        1.0,
        "one push: the online member got none"
    );
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(pushes.try_recv().is_err());
}

#[tokio::test]
async fn without_a_webhook_pushes_are_counted() {
    let s = TestServer::start().await;
    let a = s.user("ca").await;
    let b = s.user("cb").await;
    let mut wa = a.connect().await;
    for i in 1..=3 {
        wa.send_to(i, json!({"user": b.user_id}), &format!("c{i}"), "ping")
            .await;
    }
    assert_eq!(s.metric("chatscale_push_notifications_total").await, 3.0);
}
