//! Chatting over WebSockets: hello, one-to-one with several devices, no echo,
//! idempotent resend, ordering under a burst, offline inbox and sync paging,
//! reconnect after an abrupt drop, groups, logout.

use reference_server::protocol::ServerFrame;
use serde_json::json;

use crate::support::TestServer;

#[tokio::test]
async fn hello_comes_first_with_the_inbox_head_and_timers() {
    let s = TestServer::start().await;
    let a = s.user("h1").await;
    let ws = a.connect().await;
    match ws.hello {
        ServerFrame::Hello {
            user_id,
            device_id,
            seq,
            heartbeat_interval_ms,
            offline_after_ms,
        } => {
            assert_eq!((user_id, device_id, seq), (a.user_id, a.device_id, 0));
            assert_eq!((heartbeat_interval_ms, offline_after_ms), (5000, 30000));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn one_to_one_reaches_every_device_but_the_sending_one() {
    let s = TestServer::start().await;
    let a1 = s.user("alice").await;
    let a2 = s.login("alice", None).await;
    let b1 = s.user("bob").await;
    let b2 = s.login("bob", None).await;
    let (mut wa1, mut wa2, mut wb1, mut wb2) = (
        a1.connect().await,
        a2.connect().await,
        b1.connect().await,
        b2.connect().await,
    );

    let ack = wa1
        .send_to(7, json!({"user": b1.user_id}), "m-1", "hello bob")
        .await;
    let ServerFrame::Ack {
        req,
        channel,
        id,
        seq,
        ts,
    } = ack
    else {
        panic!("{ack:?}")
    };
    assert_eq!((req, id, seq), (Some(7), 1, 1));
    assert_eq!(channel, format!("dm:{}:{}", a1.user_id, b1.user_id));
    assert!(ts > 0);

    for ws in [&mut wb1, &mut wb2] {
        let m = ws.next_message().await;
        assert_eq!(
            (m.channel.as_str(), m.id, m.seq, m.from, m.from_device),
            (channel.as_str(), 1, Some(1), a1.user_id, a1.device_id)
        );
        assert_eq!(
            (m.text.as_str(), m.client_msg_id.as_str(), m.ts),
            ("hello bob", "m-1", ts)
        );
    }
    let copy = wa2.next_message().await;
    assert_eq!(
        (copy.id, copy.seq, copy.text.as_str()),
        (1, Some(1), "hello bob"),
        "sender's other device gets a copy"
    );
    let echoed: Vec<_> = wa1
        .drain(99)
        .await
        .into_iter()
        .filter(|f| matches!(f, ServerFrame::Message(_)))
        .collect();
    assert!(
        echoed.is_empty(),
        "no echo to the sending device: {echoed:?}"
    );
}

#[tokio::test]
async fn a_resend_with_the_same_client_msg_id_is_stored_and_delivered_once() {
    let s = TestServer::start().await;
    let a = s.user("ia").await;
    let b = s.user("ib").await;
    let mut wa = a.connect().await;
    let mut wb = b.connect().await;
    let first = wa
        .send_to(1, json!({"user": b.user_id}), "same", "once")
        .await;
    let again = wa
        .send_to(2, json!({"user": b.user_id}), "same", "once")
        .await;
    match (first, again) {
        (
            ServerFrame::Ack {
                channel: c1,
                id: i1,
                seq: s1,
                ..
            },
            ServerFrame::Ack {
                req,
                channel: c2,
                id: i2,
                seq: s2,
                ..
            },
        ) => {
            assert_eq!((c1, i1, s1), (c2, i2, s2));
            assert_eq!(req, Some(2), "the repeat is answered under its own req");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(wb.next_message().await.client_msg_id, "same");
    let later = wb.drain(5).await;
    assert!(
        later.iter().all(|f| !matches!(f, ServerFrame::Message(_))),
        "delivered once: {later:?}"
    );
    assert_eq!(wb.sync_all(0, 100).await.len(), 1, "stored once");
}

#[tokio::test]
async fn a_burst_of_200_sends_keeps_its_order() {
    let s = TestServer::start().await;
    let a = s.user("oa").await;
    let b = s.user("ob").await;
    let mut wa = a.connect().await;
    let mut wb = b.connect().await;
    // Pipelined: all 200 frames go out before any ack is read.
    for i in 1..=200 {
        wa.send_json(json!({"type": "send", "req": i, "to": {"user": b.user_id}, "client_msg_id": format!("b{i}"), "text": format!("{i}")})).await;
    }
    for i in 1..=200u64 {
        match wa.next_non_presence().await {
            ServerFrame::Ack { req, id, seq, .. } => {
                assert_eq!((req, id, seq), (Some(i as i64), i, i))
            }
            other => panic!("{other:?}"),
        }
    }
    for i in 1..=200u64 {
        let m = wb.next_message().await;
        assert_eq!((m.id, m.seq, m.text), (i, Some(i), i.to_string()));
    }
}

#[tokio::test]
async fn an_offline_user_finds_everything_by_sync_in_pages() {
    let s = TestServer::start().await;
    let a = s.user("sa").await;
    let b = s.user("sb").await;
    let mut wa = a.connect().await;
    for i in 1..=250 {
        wa.send_to(
            i,
            json!({"user": b.user_id}),
            &format!("o{i}"),
            &format!("t{i}"),
        )
        .await;
    }
    let mut wb = b.connect().await;
    assert!(matches!(wb.hello, ServerFrame::Hello { seq: 250, .. }));
    wb.send_json(json!({"type": "sync", "req": 1, "since": 0, "limit": 100}))
        .await;
    match wb.answer(1).await {
        ServerFrame::SyncBatch {
            req,
            messages,
            more,
        } => {
            assert_eq!((req, messages.len(), more), (Some(1), 100, true));
            assert_eq!(messages[0].seq, Some(1));
        }
        other => panic!("{other:?}"),
    }
    let all = wb.sync_all(0, 100).await;
    assert_eq!(all.len(), 250);
    assert!(all
        .iter()
        .enumerate()
        .all(|(i, m)| m.seq == Some(i as u64 + 1) && m.id == i as u64 + 1));
    assert!(wb.sync_all(250, 100).await.is_empty());
    let tail = wb.sync_all(240, 100).await;
    assert_eq!(
        tail.iter().map(|m| m.seq.unwrap()).collect::<Vec<_>>(),
        (241..=250).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn after_an_abrupt_drop_a_device_resyncs_from_its_cursor() {
    let s = TestServer::start().await;
    let a = s.user("ra").await;
    let b = s.user("rb").await;
    let mut wa = a.connect().await;
    let mut wb = b.connect().await;
    wa.send_to(1, json!({"user": b.user_id}), "r1", "before")
        .await;
    let cursor = wb.next_message().await.seq.unwrap();
    // Drop the TCP connection with no close frame.
    drop(wb);
    for i in 2..=6 {
        wa.send_to(
            i,
            json!({"user": b.user_id}),
            &format!("r{i}"),
            "while away",
        )
        .await;
    }
    let mut wb = b.connect().await;
    assert!(matches!(wb.hello, ServerFrame::Hello { seq: 6, .. }));
    let missed = wb.sync_all(cursor, 2).await;
    assert_eq!(
        missed.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![2, 3, 4, 5, 6]
    );
}

#[tokio::test]
async fn groups_fan_out_to_members_and_refuse_outsiders() {
    let s = TestServer::start().await;
    let a = s.user("ga").await;
    let b = s.user("gb").await;
    let c = s.user("gc").await;
    let d = s.user("gd").await;
    let channel = s.create_group(&a, &[b.user_id, c.user_id]).await;
    let (mut wa, mut wb, mut wc, mut wd) = (
        a.connect().await,
        b.connect().await,
        c.connect().await,
        d.connect().await,
    );
    let ack = wa
        .send_to(1, json!({"channel": channel}), "g1", "hi all")
        .await;
    assert!(matches!(&ack, ServerFrame::Ack { id: 1, .. }), "{ack:?}");
    for ws in [&mut wb, &mut wc] {
        let m = ws.next_message().await;
        assert_eq!(
            (m.channel.as_str(), m.id, m.text.as_str()),
            (channel.as_str(), 1, "hi all")
        );
    }
    match wd
        .send_to(2, json!({"channel": channel}), "x", "let me in")
        .await
    {
        ServerFrame::Error { req, code, .. } => {
            assert_eq!((req, code.as_str()), (Some(2), "forbidden"))
        }
        other => panic!("{other:?}"),
    }
    match wd
        .send_to(3, json!({"channel": "g:4242"}), "y", "nobody")
        .await
    {
        ServerFrame::Error { code, .. } => assert_eq!(code.as_str(), "not_found"),
        other => panic!("{other:?}"),
    }
    let path = format!("/v1/channels/{channel}/messages");
    assert_eq!(s.get(&path, Some(&d.token)).await.0, 403);
    assert_eq!(
        s.get(&path, Some(&c.token)).await.1["messages"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn websocket_logout_revokes_the_token_and_closes() {
    let s = TestServer::start().await;
    let a = s.user("la").await;
    let mut wa = a.connect().await;
    wa.send_json(json!({"type": "logout", "req": 4})).await;
    assert!(matches!(
        wa.answer(4).await,
        ServerFrame::Ack { req: Some(4), .. }
    ));
    assert_eq!(wa.close_code().await, Some(1000));
    assert_eq!(s.get("/v1/discovery", Some(&a.token)).await.0, 401);
}
