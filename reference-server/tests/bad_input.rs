//! Bad input over the WebSocket: each gets its `error` frame, the connection
//! stays open, and nothing is stored. Text limits count characters, not bytes;
//! a frame over the frame limit closes with 1009.

use reference_server::protocol::ServerFrame;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{TestServer, Ws};
use futures_util::SinkExt;

fn expect_error(f: ServerFrame, want_req: Option<i64>, want: &str) {
    match f {
        ServerFrame::Error { req, code, message } => {
            assert_eq!((req, code.as_str()), (want_req, want), "{message}");
            assert!(!message.is_empty());
        }
        other => panic!("expected error {want}, got {other:?}"),
    }
}

/// The connection is still usable: a heartbeat with a req is acked.
async fn still_open(ws: &mut Ws) {
    ws.drain(424242).await;
}

#[tokio::test]
async fn text_limits_count_characters_and_reject_empty_and_oversized_texts() {
    let s = TestServer::start().await;
    let a = s.user("ta").await;
    let b = s.user("tb").await;
    let mut wa = a.connect().await;
    let to = json!({"user": b.user_id});

    let two_byte = "é".repeat(100_000);
    assert!(matches!(
        wa.send_to(1, to.clone(), "t1", &two_byte).await,
        ServerFrame::Ack { id: 1, .. }
    ));
    let four_byte = "😀".repeat(100_000);
    assert!(
        matches!(
            wa.send_to(2, to.clone(), "t2", &four_byte).await,
            ServerFrame::Ack { id: 2, .. }
        ),
        "400 kB frame fits"
    );

    expect_error(
        wa.send_to(3, to.clone(), "t3", &"é".repeat(100_001)).await,
        Some(3),
        "too_large",
    );
    still_open(&mut wa).await;
    expect_error(
        wa.send_to(4, to.clone(), "t4", "").await,
        Some(4),
        "bad_request",
    );
    still_open(&mut wa).await;
    expect_error(
        wa.send_to(5, to.clone(), "", "no id").await,
        Some(5),
        "bad_request",
    );
    expect_error(
        wa.send_to(6, to.clone(), &"k".repeat(65), "long id").await,
        Some(6),
        "bad_request",
    );

    let mut wb = b.connect().await;
    let stored = wb.sync_all(0, 10).await;
    assert_eq!(stored.len(), 2, "nothing stored for rejected sends");
    assert_eq!(stored[1].text.chars().count(), 100_000);
}

#[tokio::test]
async fn malformed_frames_get_bad_request_and_the_connection_stays_open() {
    let s = TestServer::start().await;
    let a = s.user("ma").await;
    let mut wa = a.connect().await;

    wa.stream
        .send(Message::Text("{not json".into()))
        .await
        .unwrap();
    expect_error(wa.next().await, None, "bad_request");
    still_open(&mut wa).await;

    wa.send_json(json!({"type": "teleport", "req": 11})).await;
    expect_error(wa.next().await, Some(11), "bad_request");
    still_open(&mut wa).await;

    wa.send_json(json!({"type": "send", "req": 12, "to": {"user": 1}}))
        .await;
    expect_error(wa.next().await, Some(12), "bad_request");

    wa.send_json(json!({"type": "sync", "req": 13, "since": "yesterday"}))
        .await;
    expect_error(wa.next().await, Some(13), "bad_request");

    wa.send_json(json!({"req": 14})).await;
    expect_error(wa.next().await, Some(14), "bad_request");

    wa.send_json(json!({"type": "send", "req": 15, "to": {}, "client_msg_id": "x", "text": "y"}))
        .await;
    expect_error(wa.next().await, Some(15), "bad_request");

    wa.stream
        .send(Message::Binary(vec![1u8, 2, 3].into()))
        .await
        .unwrap();
    expect_error(wa.next().await, None, "bad_request");
    still_open(&mut wa).await;
}

#[tokio::test]
async fn an_unknown_recipient_is_not_found_and_self_sends_are_refused() {
    let s = TestServer::start().await;
    let a = s.user("ua").await;
    let mut wa = a.connect().await;
    expect_error(
        wa.send_to(1, json!({"user": 987_654}), "u1", "anyone?")
            .await,
        Some(1),
        "not_found",
    );
    expect_error(
        wa.send_to(2, json!({"channel": "nonsense"}), "u2", "x")
            .await,
        Some(2),
        "not_found",
    );
    expect_error(
        wa.send_to(3, json!({"user": a.user_id}), "u3", "me").await,
        Some(3),
        "bad_request",
    );
    still_open(&mut wa).await;
    assert!(wa.sync_all(0, 10).await.is_empty());
}

#[tokio::test]
async fn a_frame_over_the_limit_closes_with_1009() {
    let s = TestServer::start().await;
    let a = s.user("fa").await;
    let mut wa = a.connect().await;
    let huge = "x".repeat(2 * 1024 * 1024);
    let frame =
        json!({"type": "send", "req": 1, "to": {"user": 1}, "client_msg_id": "h", "text": huge});
    // The server may close before it has read the whole frame: a send error is fine.
    let _ = wa
        .stream
        .send(Message::Text(frame.to_string().into()))
        .await;
    assert_eq!(wa.close_code().await, Some(1009));
}

#[tokio::test]
async fn sending_past_the_allowance_is_rate_limited_and_not_stored() {
    let s = TestServer::with(|c| {
        c.send_rate_per_sec = 1;
        c.send_burst = 3;
    })
    .await;
    let a = s.user("rl").await;
    let b = s.user("rm").await;
    let mut wa = a.connect().await;
    for i in 1..=3 {
        assert!(matches!(
            wa.send_to(i, json!({"user": b.user_id}), &format!("r{i}"), "x")
                .await,
            ServerFrame::Ack { .. }
        ));
    }
    expect_error(
        wa.send_to(4, json!({"user": b.user_id}), "r4", "x").await,
        Some(4),
        "rate_limited",
    );
    still_open(&mut wa).await;
    let mut wb = b.connect().await;
    assert_eq!(wb.sync_all(0, 10).await.len(), 3);
}

#[tokio::test]
async fn past_the_connection_limit_upgrades_get_503_overloaded() {
    let s = TestServer::with(|c| c.max_connections = 1).await;
    let a = s.user("cl").await;
    let _first = a.connect().await;
    let err = tokio_tungstenite::connect_async(format!("{}?token={}", a.ws_url, a.token))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("503"), "{err}");
}
