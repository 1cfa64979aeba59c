//! Presence with short timers: online on connect, a dropped connection stays
//! online until `offline_after` passes, logout of the last device is offline at
//! once, and changes are pushed to online friends only.

use std::time::Duration;

use reference_server::protocol::{ServerFrame, Status};

use crate::support::{TestServer, Ws};

const OFFLINE_AFTER: Duration = Duration::from_millis(1500);

async fn next_presence(ws: &mut Ws) -> (u64, Status) {
    loop {
        if let ServerFrame::Presence {
            user_id,
            status,
            last_active_at,
        } = ws.next().await
        {
            assert!(last_active_at.is_some());
            return (user_id, status);
        }
    }
}

async fn status_of(s: &TestServer, token: &str, user: u64) -> String {
    let (_, body) = s
        .get(&format!("/v1/presence?users={user}"), Some(token))
        .await;
    body["presence"][0]["status"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_drop_goes_offline_only_after_the_timeout_and_logout_at_once() {
    let s = TestServer::with(|c| {
        c.offline_after = OFFLINE_AFTER;
        c.heartbeat_interval = Duration::from_millis(500);
    })
    .await;
    let a = s.user("pa").await;
    let b = s.user("pb").await;
    let stranger = s.user("pc").await;
    s.befriend(&a, &b).await;
    let mut wb = b.connect().await;
    let mut wc = stranger.connect().await;

    let wa = a.connect().await;
    assert_eq!(next_presence(&mut wb).await, (a.user_id, Status::Online));
    drop(wa); // abrupt: no close frame, no logout
    assert_eq!(
        status_of(&s, &b.token, a.user_id).await,
        "online",
        "not offline at once"
    );
    let started = std::time::Instant::now();
    assert_eq!(next_presence(&mut wb).await, (a.user_id, Status::Offline));
    assert!(
        started.elapsed() >= OFFLINE_AFTER / 2,
        "offline came only after the timeout"
    );
    assert_eq!(status_of(&s, &b.token, a.user_id).await, "offline");

    let mut wa = a.connect().await;
    assert_eq!(next_presence(&mut wb).await, (a.user_id, Status::Online));
    wa.send_json(serde_json::json!({"type": "logout"})).await;
    assert_eq!(next_presence(&mut wb).await, (a.user_id, Status::Offline));
    assert_eq!(status_of(&s, &b.token, a.user_id).await, "offline");

    // Not a friend: no presence frames at all.
    let frames = wc.drain(1).await;
    assert!(
        frames
            .iter()
            .all(|f| !matches!(f, ServerFrame::Presence { .. })),
        "{frames:?}"
    );
}

#[tokio::test]
async fn heartbeats_keep_a_user_online_past_the_timeout() {
    let s = TestServer::with(|c| c.offline_after = Duration::from_millis(600)).await;
    let a = s.user("ha").await;
    let b = s.user("hb").await;
    s.befriend(&a, &b).await;
    let mut wa = a.connect().await;
    for i in 0..8 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        wa.drain(i).await; // a heartbeat with a req, acked
    }
    assert_eq!(status_of(&s, &b.token, a.user_id).await, "online");
}
