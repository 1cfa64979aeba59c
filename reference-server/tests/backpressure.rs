//! A client that stops reading is closed with 1008 once its outbound queue
//! passes the bound; after reconnecting, sync returns everything: no silent loss.

use serde_json::json;

use crate::support::TestServer;

#[tokio::test]
async fn a_slow_consumer_is_closed_with_1008_and_loses_nothing() {
    let s = TestServer::with(|c| {
        c.outbox_max_frames = 32;
        c.outbox_max_bytes = 1 << 20;
    })
    .await;
    let a = s.user("fast").await;
    let b = s.user("slow").await;
    let mut wa = a.connect().await;
    let mut wb = b.connect().await; // never read while the flood runs

    // 400 x 20 kB = 8 MB: more than loopback socket buffers plus the queue bound.
    let text = "z".repeat(20_000);
    let mut closed_at = None;
    for i in 1..=400 {
        wa.send_to(i, json!({"user": b.user_id}), &format!("f{i}"), &text)
            .await;
        if i % 20 == 0 && s.metric("chatscale_slow_consumer_disconnects_total").await >= 1.0 {
            closed_at = Some(i);
            break;
        }
    }
    let sent = closed_at.expect("the slow consumer was disconnected") as u64;
    assert_eq!(wb.close_code().await, Some(1008));

    let mut wb = b.connect().await;
    let all = wb.sync_all(0, 100).await;
    assert_eq!(
        all.len() as u64,
        sent,
        "every acked message is in the inbox"
    );
    assert!(all
        .iter()
        .enumerate()
        .all(|(i, m)| m.seq == Some(i as u64 + 1)));
}
