//! Conformance properties of the write path: what is stored comes back exactly,
//! membership is checked inside the atomic accept, and one failing accept does
//! not fail the others of its batch.

use std::sync::Arc;

use fred::clients::Client;
use fred::interfaces::{HashesInterface, KeysInterface, SortedSetsInterface};
use reference_server::store::{NewMessage, Store, StoreError};

use super::backends::run_redis;
use super::{msg, users};

/// Every kind of Unicode scalar but U+0000 (which the protocol refuses) comes
/// back exactly, in history and in the inbox.
pub async fn unicode_round_trip(s: Arc<dyn Store>) {
    let u = users(&*s, 2).await;
    let ch = format!("dm:{}:{}", u[0], u[1]);
    let controls: String = (1u32..0x20).filter_map(char::from_u32).collect();
    let texts = [
        controls,
        "\u{7f}\u{80}\u{9f}\u{a0}\u{ad}".to_string(),
        "\u{2028}\u{2029}\u{200b}\u{200d}\u{feff}\u{fffd}\u{fffe}\u{ffff}".to_string(),
        "\u{d7ff}\u{e000}\u{f8ff}\u{10000}\u{1f600}\u{10fffd}\u{10ffff}".to_string(),
        "e\u{301} \u{5d0}\u{5d1} \u{202e}rtl\u{202c} \"quoted\" \\ back\\slash '".to_string(),
        "\\u0000 is only text here".to_string(),
    ];
    for (i, text) in texts.iter().enumerate() {
        let cmid = format!("u{i}\u{1}\u{10ffff}");
        let m = NewMessage {
            text,
            client_msg_id: &cmid,
            ..msg(&ch, &u, u[0], "")
        };
        s.accept(m).await.expect("accept");
    }
    let page = s.history(&ch, None, None, 50).await.expect("history");
    let inbox = s.inbox_after(u[1], 0, 50).await.expect("inbox");
    assert_eq!(page.len(), texts.len());
    for (i, text) in texts.iter().enumerate() {
        assert_eq!(&page[i].text, text, "history text {i}");
        assert_eq!(&inbox[i].text, text, "inbox text {i}");
        assert_eq!(inbox[i].client_msg_id, format!("u{i}\u{1}\u{10ffff}"));
    }
}

/// A stale member list does not let a removed member slip a message in or out.
pub async fn membership_in_accept(s: Arc<dyn Store>) {
    let u = users(&*s, 3).await;
    let g = s.create_group("g", &u, 10).await.expect("group");
    let ch = format!("g:{g}");
    let first = s
        .accept(msg(&ch, &u, u[0], "before"))
        .await
        .expect("accept");
    assert_eq!(first.recipients.len(), 3);
    s.remove_member(g, u[2]).await.expect("remove");
    // The caller still believes u[2] is in: the store knows better.
    let after = s.accept(msg(&ch, &u, u[0], "after")).await.expect("accept");
    let got: Vec<u64> = after.recipients.iter().map(|(m, _)| *m).collect();
    assert_eq!(
        got,
        vec![u[0], u[1]],
        "out: the removed member gets nothing"
    );
    assert_eq!(s.inbox_head(u[2]).await.expect("head"), 1);
    // In: a removed sender cannot send, but its resend of an accepted message
    // still gets the first ack.
    assert!(matches!(
        s.accept(msg(&ch, &u, u[2], "from-removed")).await,
        Err(StoreError::NotMember)
    ));
    s.remove_member(g, u[0]).await.expect("remove sender");
    let again = s.accept(msg(&ch, &u, u[0], "after")).await.expect("resend");
    assert!(again.duplicate);
    assert_eq!(again.id, after.id);
    assert_eq!(s.inbox_head(u[1]).await.expect("head"), 2);
    assert!(matches!(
        s.accept(msg("g:99999", &u, u[0], "nowhere")).await,
        Err(StoreError::NotFound)
    ));
    // A member added since the caller looked gets the message all the same.
    s.add_member(g, u[2], 10).await.expect("add back");
    let stale = [u[1]];
    let late = s
        .accept(msg(&ch, &stale, u[1], "to-the-newcomer"))
        .await
        .expect("accept");
    let got: Vec<u64> = late.recipients.iter().map(|(m, _)| *m).collect();
    assert_eq!(got, vec![u[1], u[2]], "in: the added member gets it");
    assert_eq!(s.inbox_head(u[2]).await.expect("head"), 2);
}

/// Sixty accepts at once, every tenth one carrying U+0000 (which PostgreSQL's
/// TEXT refuses): every other accept succeeds, whatever batch it shared.
pub async fn a_bad_accept_fails_alone(s: Arc<dyn Store>) {
    let u = users(&*s, 2).await;
    let ch = format!("dm:{}:{}", u[0], u[1]);
    let mut tasks = Vec::new();
    for i in 0..60 {
        let (s, u, ch) = (s.clone(), u.clone(), ch.clone());
        tasks.push(tokio::spawn(async move {
            let text = if i % 10 == 0 { "nul\0here" } else { "fine" };
            let cmid = format!("b{i}");
            let m = NewMessage {
                text,
                client_msg_id: &cmid,
                ..msg(&ch, &u, u[0], "")
            };
            (i, s.accept(m).await)
        }));
    }
    let mut stored = 0;
    for t in tasks {
        let (i, r) = t.await.expect("task");
        match r {
            Ok(a) => {
                assert!(!a.duplicate);
                stored += 1;
            }
            Err(e) => assert_eq!(i % 10, 0, "good accept {i} failed: {e}"),
        }
    }
    let page = s.history(&ch, None, None, 100).await.expect("history");
    assert_eq!(page.len(), stored);
    assert!(stored >= 54);
}

/// Expired tokens and dedupe records past the window are removed; the rest stay.
pub async fn expiry(s: Arc<dyn Store>) {
    let u = users(&*s, 2).await;
    let owner = reference_server::store::TokenOwner {
        user_id: u[0],
        device_id: 1,
    };
    for t in ["aaaa.1500", "bbbb.0", "cccc.9000000000000"] {
        s.put_token(t, owner).await.expect("put");
    }
    let ch = format!("dm:{}:{}", u[0], u[1]);
    let old = NewMessage {
        ts: 1_000,
        ..msg(&ch, &u, u[0], "old")
    };
    let new = NewMessage {
        ts: 5_000,
        ..msg(&ch, &u, u[0], "new")
    };
    s.accept(old).await.expect("old");
    s.accept(new).await.expect("new");
    let gone = s.expire(2_000, 2_000).await.expect("expire");
    assert!(gone.tokens <= 1 && gone.dedupe <= 1, "{gone:?}");
    assert_eq!(s.token_owner("aaaa.1500").await.expect("owner"), None);
    assert_eq!(s.token_owner("bbbb.0").await.expect("owner"), Some(owner));
    assert_eq!(
        s.token_owner("cccc.9000000000000").await.expect("owner"),
        Some(owner)
    );
    // Past the window a resend is a new message; inside it, the first ack.
    let again = s
        .accept(NewMessage { ts: 6_000, ..old })
        .await
        .expect("old again");
    assert!(!again.duplicate, "the old record expired");
    assert_eq!(again.id, 3);
    assert!(s.accept(new).await.expect("new again").duplicate);
}

/// Every dedupe record past the window is removed and counted once, whether
/// `expire` removes it at once or the backend does it lazily (Redis: the next
/// accepts of its sender and channel, counted by the next `expire`).
pub async fn expiry_counts_every_record(s: Arc<dyn Store>) {
    let u = users(&*s, 2).await;
    let ch = format!("dm:{}:{}", u[0], u[1]);
    for i in 0..100 {
        let cmid = format!("old{i}");
        s.accept(msg(&ch, &u, u[0], &cmid)).await.expect("old");
    }
    let first = s.expire(2_000, 2_000).await.expect("expire").dedupe;
    for cmid in ["new0", "new1"] {
        let m = NewMessage {
            ts: 5_000,
            ..msg(&ch, &u, u[0], cmid)
        };
        assert!(!s.accept(m).await.expect("new").duplicate);
    }
    let second = s.expire(6_000, 2_000).await.expect("expire").dedupe;
    assert_eq!(first + second, 100, "{first} + {second}");
    let resend = NewMessage {
        ts: 5_000,
        ..msg(&ch, &u, u[0], "new0")
    };
    assert!(s.accept(resend).await.expect("resend").duplicate);
    let old = NewMessage {
        ts: 7_000,
        ..msg(&ch, &u, u[0], "old5")
    };
    assert_eq!(s.accept(old).await.expect("old again").id, 103);
}

/// On Redis the dedupe records past the window leave the keys themselves (the
/// hash and the sorted set of ts beside it, per sender and per channel), and
/// those keys carry a TTL, so an idle sender's records go too.
async fn dedupe_keys_shrink(s: Arc<dyn Store>, redis: Client, prefix: String) {
    let u = users(&*s, 2).await;
    let ch = format!("dm:{}:{}", u[0], u[1]);
    for i in 0..100 {
        let cmid = format!("old{i}");
        s.accept(msg(&ch, &u, u[0], &cmid)).await.expect("old");
    }
    let keys = [
        format!("{prefix}:{{u:{}}}:dd", u[0]),
        format!("{prefix}:{{u:{}}}:dt", u[0]),
        format!("{prefix}:{{c:{ch}}}:dd"),
        format!("{prefix}:{{c:{ch}}}:dt"),
    ];
    let sizes = |redis: Client, keys: [String; 4]| async move {
        let mut out = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let n: u64 = if i % 2 == 0 {
                redis.hlen(k).await.expect("hlen")
            } else {
                redis.zcard(k).await.expect("zcard")
            };
            out.push(n);
        }
        out
    };
    assert_eq!(sizes(redis.clone(), keys.clone()).await, [100; 4]);
    s.expire(2_000, 2_000).await.expect("expire");
    for cmid in ["new0", "new1"] {
        let m = NewMessage {
            ts: 5_000,
            ..msg(&ch, &u, u[0], cmid)
        };
        s.accept(m).await.expect("new");
    }
    assert_eq!(sizes(redis.clone(), keys.clone()).await, [2; 4]);
    for k in &keys {
        let ttl: i64 = redis.pttl(k).await.expect("pttl");
        assert!(ttl > 0, "{k} has no TTL ({ttl})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_dedupe_keys_shrink() {
    run_redis("redis", "dd_keys", dedupe_keys_shrink).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_dedupe_keys_shrink() {
    run_redis("redis_cluster", "dd_keys", dedupe_keys_shrink).await;
}
