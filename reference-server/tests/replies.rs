//! Bounded replies: a large inbox syncs in several batches under the byte
//! budget, history pages are cut the same way, and a client that sends
//! requests but never reads its answers is closed with 1008 in bounded time.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use reference_server::protocol::{ServerFrame, REPLY_BUDGET_BYTES};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::support::TestServer;

/// 100 messages of 100,000 characters: 10 MB, far past the WebSocket write limit.
const BIG: usize = 100_000;

#[tokio::test]
async fn a_fresh_device_syncs_100_messages_of_100k_characters() {
    let s = TestServer::start().await;
    let a = s.user("bulk-sender").await;
    let b = s.user("bulk-reader").await;
    let mut wa = a.connect().await;
    for i in 0..100 {
        let text = format!("{i:03}{}", "x".repeat(BIG - 3));
        let ack = wa
            .send_to(i, json!({"user": b.user_id}), &format!("big{i}"), &text)
            .await;
        assert!(matches!(ack, ServerFrame::Ack { .. }), "{ack:?}");
    }

    // A fresh device of the reader, syncing from 0 with the default limit.
    let reader = s.login("bulk-reader", Some("fresh")).await;
    let mut wb = reader.connect().await;
    let (mut got, mut batches, mut since) = (Vec::new(), 0, 0);
    loop {
        batches += 1;
        wb.send_json(json!({"type": "sync", "req": batches, "since": since}))
            .await;
        let raw = loop {
            match wb.stream.next().await.expect("open").expect("no ws error") {
                Message::Text(t) if t.contains("sync_batch") => break t,
                Message::Text(_) | Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("connection ended mid-sync: {other:?}"),
            }
        };
        assert!(
            raw.len() <= REPLY_BUDGET_BYTES + BIG + 1024,
            "batch of {} bytes",
            raw.len()
        );
        let ServerFrame::SyncBatch { messages, more, .. } = serde_json::from_str(&raw).unwrap()
        else {
            panic!("not a sync_batch")
        };
        assert!(
            !messages.is_empty(),
            "every batch holds at least one message"
        );
        since = messages.last().unwrap().seq.unwrap();
        got.extend(messages);
        if !more {
            break;
        }
    }
    assert!(batches > 1, "the inbox came in several batches");
    assert_eq!(got.len(), 100);
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.seq, Some(i as u64 + 1));
        assert!(m.text.starts_with(&format!("{i:03}")));
        assert_eq!(m.text.len(), BIG);
    }
}

#[tokio::test]
async fn history_pages_are_cut_at_the_budget_and_say_more() {
    let s = TestServer::start().await;
    let a = s.user("hist-a").await;
    let b = s.user("hist-b").await;
    let mut wa = a.connect().await;
    let mut channel = String::new();
    for i in 0..30 {
        let text = format!("{i:03}{}", "y".repeat(BIG - 3));
        if let ServerFrame::Ack { channel: c, .. } = wa
            .send_to(i, json!({"user": b.user_id}), &format!("h{i}"), &text)
            .await
        {
            channel = c;
        }
    }
    let path = |q: &str| format!("/v1/channels/{channel}/messages?{q}");

    // Forwards from the start: pages of a few messages each, `more` until the end.
    let (mut ids, mut after, mut pages) = (Vec::new(), 0, 0);
    loop {
        pages += 1;
        let (status, body) = s
            .get(&path(&format!("after={after}&limit=500")), Some(&b.token))
            .await;
        assert_eq!(status, 200, "{body}");
        let page = body["messages"].as_array().unwrap();
        assert!(!page.is_empty());
        assert!(body.to_string().len() <= REPLY_BUDGET_BYTES + BIG + 1024);
        ids.extend(page.iter().map(|m| m["id"].as_u64().unwrap()));
        after = *ids.last().unwrap();
        if !body["more"].as_bool().unwrap() {
            break;
        }
    }
    assert!(pages > 1);
    assert_eq!(ids, (1..=30).collect::<Vec<u64>>());

    // Backwards from the newest: each page is the newest that fit, ascending.
    let (mut back, mut before) = (Vec::new(), None::<u64>);
    loop {
        let q = before.map_or("limit=500".to_string(), |b| format!("before={b}&limit=500"));
        let (_, body) = s.get(&path(&q), Some(&b.token)).await;
        let page: Vec<u64> = body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_u64().unwrap())
            .collect();
        assert!(page.windows(2).all(|w| w[0] + 1 == w[1]), "{page:?}");
        before = page.first().copied();
        back.splice(0..0, page);
        if !body["more"].as_bool().unwrap() {
            break;
        }
    }
    assert_eq!(back, (1..=30).collect::<Vec<u64>>());

    // Small pages still stop at `limit`, and say whether more remain.
    let (_, body) = s.get(&path("after=0&limit=1"), Some(&b.token)).await;
    assert_eq!(body["messages"].as_array().unwrap().len(), 1);
    assert_eq!(body["more"], json!(true));
    let (_, body) = s.get(&path("after=29&limit=5"), Some(&b.token)).await;
    assert_eq!(body["messages"].as_array().unwrap().len(), 1);
    assert_eq!(body["more"], json!(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_answers_is_closed_with_1008() {
    let s = TestServer::with(|c| c.write_timeout = Duration::from_millis(500)).await;
    let a = s.user("deaf").await;
    let b = s.user("loud").await;
    // A full inbox makes every sync answer a ~256 kB batch.
    let mut wb = b.connect().await;
    for i in 0..20 {
        wb.send_to(
            i,
            json!({"user": a.user_id}),
            &format!("l{i}"),
            &"z".repeat(BIG),
        )
        .await;
    }
    let rss_before = s.metric("chatscale_process_resident_memory_bytes").await;

    let ws = a.connect().await;
    let (mut sink, mut stream) = ws.stream.split();
    let started = Instant::now();
    // Requests go out until the server stops reading them; nothing is read back.
    let sender = tokio::spawn(async move {
        for req in 0..100_000 {
            let frame = json!({"type": "sync", "req": req, "since": 0}).to_string();
            if sink.send(Message::Text(frame.into())).await.is_err() {
                break;
            }
        }
        sink
    });
    loop {
        if s.metric("chatscale_slow_consumer_disconnects_total").await >= 1.0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the session was never closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sender.abort();
    let rss_after = s.metric("chatscale_process_resident_memory_bytes").await;
    assert!(
        rss_after - rss_before < 256.0 * 1024.0 * 1024.0,
        "server memory grew by {} MB",
        (rss_after - rss_before) / 1e6
    );
    // Reading now drains what the server wrote, then its close frame.
    let code = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(msg) = stream.next().await {
            match msg {
                Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    })
    .await
    .expect("the close arrives");
    assert_eq!(code, Some(1008));
}
