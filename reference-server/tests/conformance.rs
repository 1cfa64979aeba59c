//! The storage conformance suite: every backend must behave like the in-memory
//! reference on every property here.
//!
//! Each property is one generic async function taking `Arc<dyn Store>`; the
//! `conformance!` macro at the bottom turns every (backend, property) pair into its
//! own test (`conformance::redis::dedupe`, ...), each on a fresh namespace: a new
//! in-memory store, a new embedded database in a temp dir, a fresh key prefix in
//! Redis (`?prefix=`), a fresh schema in PostgreSQL (`?schema=`). Redis, the Redis
//! Cluster and PostgreSQL run when `CHATSCALE_REDIS_URL`,
//! `CHATSCALE_REDIS_CLUSTER_URL` / `CHATSCALE_POSTGRES_URL` are set
//! (`source .ci/services.sh` sets all three); otherwise their tests print a "skipped"
//! line, unless `CHATSCALE_REQUIRE_SERVICES=1`, which makes a missing or
//! unreachable service fail them.

use std::collections::HashSet;
use std::sync::Arc;

use reference_server::protocol::UserId;
use reference_server::store::{self, NewMessage, Store, StoreError, TokenOwner};

mod backends;
mod submission;
mod write_path;
pub use backends::service_url;
use backends::{run, run_two_nodes};
use submission::{members_follow_changes, submission_order, submitted_resend};
use write_path::{
    a_bad_accept_fails_alone, expiry, expiry_counts_every_record, membership_in_accept,
    unicode_round_trip,
};

async fn users(s: &dyn Store, n: usize) -> Vec<UserId> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        ids.push(
            s.create_user(&format!("user{i}"), "hash")
                .await
                .expect("create_user"),
        );
    }
    ids
}

fn msg<'a>(channel: &'a str, members: &'a [UserId], from: UserId, cmid: &'a str) -> NewMessage<'a> {
    NewMessage {
        channel,
        members,
        from,
        from_device: 7,
        client_msg_id: cmid,
        text: "hi",
        ts: 1_000,
    }
}

/// Reads a whole inbox in pages of `page`, checking that seqs are 1, 2, 3, ...
async fn whole_inbox(s: &dyn Store, user: UserId, page: usize) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    loop {
        let batch = s
            .inbox_after(user, out.len() as u64, page)
            .await
            .expect("inbox_after");
        if batch.is_empty() {
            return out;
        }
        assert!(batch.len() <= page);
        for m in batch {
            assert_eq!(
                m.seq,
                Some(out.len() as u64 + 1),
                "inbox seqs must be gap-free"
            );
            out.push((m.channel, m.id));
        }
    }
}

// -- properties ----------------------------------------------------------------

/// 8 tasks x 50 sends into one group: ids exactly 1..=400, every inbox gap-free.
async fn gap_free_ids(s: Arc<dyn Store>) {
    let members = users(&*s, 8).await;
    let group = s
        .create_group("g", &members, 100)
        .await
        .expect("create_group");
    let channel = format!("g:{group}");
    let mut tasks = Vec::new();
    for (t, &from) in members.iter().enumerate() {
        let (s, members, channel) = (s.clone(), members.clone(), channel.clone());
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..50 {
                let cmid = format!("{t}-{i}");
                let a = s
                    .accept(msg(&channel, &members, from, &cmid))
                    .await
                    .expect("accept");
                assert!(!a.duplicate);
                assert_eq!(a.recipients.len(), members.len());
                ids.push(a.id);
            }
            ids
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let ids = t.await.expect("sender task");
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "one sender's ids increase"
        );
        all.extend(ids);
    }
    all.sort_unstable();
    assert_eq!(all, (1..=400).collect::<Vec<u64>>());
    for &m in &members {
        assert_eq!(s.inbox_head(m).await.expect("head"), 400);
        let inbox = whole_inbox(&*s, m, 64).await;
        let ids: Vec<u64> = inbox.iter().map(|(_, id)| *id).collect();
        assert_eq!(
            ids,
            (1..=400).collect::<Vec<u64>>(),
            "inbox in id order, each once"
        );
    }
    let page = s.history(&channel, None, None, 500).await.expect("history");
    assert_eq!(
        page.iter().map(|m| m.id).collect::<Vec<_>>(),
        (1..=400).collect::<Vec<u64>>()
    );
}

/// The same sender and client_msg_id: the first ack again, stored once.
async fn dedupe(s: Arc<dyn Store>) {
    let u = users(&*s, 2).await;
    let ch = format!("dm:{}:{}", u[0], u[1]);
    let first = s.accept(msg(&ch, &u, u[0], "x")).await.expect("first");
    assert!(!first.duplicate);
    let again = s.accept(msg(&ch, &u, u[0], "x")).await.expect("again");
    assert!(again.duplicate);
    assert!(again.recipients.is_empty());
    assert_eq!(
        (&again.channel, again.id, again.sender_seq, again.ts),
        (&first.channel, first.id, first.sender_seq, first.ts)
    );
    // Even when retried "into" another channel, the answer is the first one's.
    let other = s
        .accept(msg("g:999", &u, u[0], "x"))
        .await
        .expect("other channel");
    assert!(other.duplicate);
    assert_eq!(other.channel, ch);
    // Another sender may use the same client_msg_id.
    let theirs = s
        .accept(msg(&ch, &u, u[1], "x"))
        .await
        .expect("other sender");
    assert!(!theirs.duplicate);
    assert_eq!(theirs.id, 2);
    assert_eq!(
        s.history(&ch, None, None, 50).await.expect("history").len(),
        2
    );
    assert_eq!(s.inbox_head(u[0]).await.expect("head"), 2);
    assert_eq!(s.inbox_head(u[1]).await.expect("head"), 2);
}

/// Racing resends of one client_msg_id: exactly one is new, all get its answer.
async fn dedupe_race(s: Arc<dyn Store>) {
    let u = users(&*s, 2).await;
    let ch = format!("dm:{}:{}", u[0], u[1]);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (s, u, ch) = (s.clone(), u.clone(), ch.clone());
        tasks.push(tokio::spawn(async move {
            s.accept(msg(&ch, &u, u[0], "same")).await.expect("accept")
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.expect("task"));
    }
    assert_eq!(
        answers.iter().filter(|a| !a.duplicate).count(),
        1,
        "stored once"
    );
    for a in &answers {
        assert_eq!(
            (a.channel.as_str(), a.id, a.sender_seq),
            (ch.as_str(), 1, 1)
        );
    }
    assert_eq!(s.inbox_head(u[1]).await.expect("head"), 1);
}

/// Racing adds to a group never pass its limit.
async fn group_limit_race(s: Arc<dyn Store>) {
    let u = users(&*s, 12).await;
    let g = s.create_group("race", &u[..1], 5).await.expect("create");
    let mut tasks = Vec::new();
    for &m in &u[1..] {
        let s = s.clone();
        tasks.push(tokio::spawn(async move { s.add_member(g, m, 5).await }));
    }
    let (mut added, mut full) = (0, 0);
    for t in tasks {
        match t.await.expect("task") {
            Ok(()) => added += 1,
            Err(StoreError::GroupFull) => full += 1,
            Err(e) => panic!("add_member: {e}"),
        }
    }
    assert_eq!((added, full), (4, 7));
    let members = s.group_members(g).await.expect("members").expect("group");
    assert_eq!(members.len(), 5);
}

/// Inbox reads after a cursor, in pages, per user.
async fn inbox_cursors(s: Arc<dyn Store>) {
    let u = users(&*s, 3).await;
    let ab = [u[0], u[1]];
    let ac = [u[0], u[2]];
    for i in 0..25 {
        let (members, ch) = if i % 5 == 4 {
            (&ac, format!("dm:{}:{}", u[0], u[2]))
        } else {
            (&ab, format!("dm:{}:{}", u[0], u[1]))
        };
        let a = s
            .accept(msg(&ch, members, u[0], &format!("m{i}")))
            .await
            .expect("accept");
        assert_eq!(a.sender_seq, i + 1);
        let other = members[1];
        assert_eq!(
            a.recipients,
            vec![(u[0], i + 1), (other, a.recipients[1].1)]
        );
    }
    assert_eq!(s.inbox_head(u[0]).await.expect("head"), 25);
    assert_eq!(s.inbox_head(u[1]).await.expect("head"), 20);
    assert_eq!(s.inbox_head(u[2]).await.expect("head"), 5);
    let page = s.inbox_after(u[0], 0, 10).await.expect("page");
    assert_eq!(
        page.iter().map(|m| m.seq.unwrap_or(0)).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<u64>>()
    );
    let page = s.inbox_after(u[0], 20, 10).await.expect("page");
    assert_eq!(
        page.iter().map(|m| m.seq.unwrap_or(0)).collect::<Vec<_>>(),
        (21..=25).collect::<Vec<u64>>()
    );
    assert_eq!(page[4].client_msg_id, "m24");
    assert!(s.inbox_after(u[0], 25, 10).await.expect("empty").is_empty());
    assert!(s
        .inbox_after(u[0], 1_000, 10)
        .await
        .expect("past the head")
        .is_empty());
    let c = whole_inbox(&*s, u[2], 2).await;
    assert_eq!(
        c.iter().map(|(_, id)| *id).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    // A user with no messages, and one that does not exist.
    let lonely = s.create_user("lonely", "h").await.expect("user");
    assert_eq!(s.inbox_head(lonely).await.expect("head"), 0);
    assert!(s
        .inbox_after(lonely, 0, 10)
        .await
        .expect("empty")
        .is_empty());
    assert_eq!(s.inbox_head(99_999).await.expect("head of unknown"), 0);
}

/// History pages: newest, before, after, both, and the message's fields.
async fn history_paging(s: Arc<dyn Store>) {
    let u = users(&*s, 2).await;
    let ch = "dm:1:2";
    for i in 1..=30u64 {
        let text = format!("message {i} ✓");
        let m = NewMessage {
            channel: ch,
            members: &u,
            from: u[i as usize % 2],
            from_device: 40 + i,
            client_msg_id: &format!("c{i}"),
            text: &text,
            ts: 5_000 + i,
        };
        assert_eq!(s.accept(m).await.expect("accept").id, i);
    }
    let ids = |page: Vec<store::StoredMessage>| page.iter().map(|m| m.id).collect::<Vec<_>>();
    let h = |a, b, l| {
        let s = s.clone();
        async move { s.history(ch, a, b, l).await.expect("history") }
    };
    assert_eq!(
        ids(h(None, None, 10).await),
        (21..=30).collect::<Vec<_>>(),
        "newest page"
    );
    assert_eq!(
        ids(h(None, Some(21), 10).await),
        (11..=20).collect::<Vec<_>>(),
        "before"
    );
    assert_eq!(
        ids(h(None, Some(4), 10).await),
        vec![1, 2, 3],
        "before, short"
    );
    assert_eq!(
        ids(h(Some(0), None, 10).await),
        (1..=10).collect::<Vec<_>>(),
        "after 0"
    );
    assert_eq!(
        ids(h(Some(25), None, 10).await),
        (26..=30).collect::<Vec<_>>(),
        "after, short"
    );
    assert_eq!(ids(h(Some(5), Some(9), 10).await), vec![6, 7, 8], "both");
    assert_eq!(
        ids(h(Some(5), Some(20), 3).await),
        vec![6, 7, 8],
        "both, limited from after"
    );
    assert_eq!(ids(h(None, Some(1), 10).await), Vec::<u64>::new());
    assert_eq!(ids(h(Some(30), None, 10).await), Vec::<u64>::new());
    assert_eq!(ids(h(Some(9), Some(5), 10).await), Vec::<u64>::new());
    assert_eq!(ids(h(None, None, 500).await), (1..=30).collect::<Vec<_>>());
    assert_eq!(ids(h(None, Some(1_000), 2).await), vec![29, 30]);
    assert!(s
        .history("g:404", None, None, 10)
        .await
        .expect("unknown channel")
        .is_empty());
    let m = &h(Some(6), None, 1).await[0];
    assert_eq!(
        (m.channel.as_str(), m.id, m.from, m.from_device, m.ts),
        (ch, 7, u[1], 47, 5_007)
    );
    assert_eq!(
        (m.client_msg_id.as_str(), m.text.as_str(), m.seq),
        ("c7", "message 7 ✓", None)
    );
}

/// Groups: creation (deduplicated, in order), membership, the limit, NotFound.
async fn groups(s: Arc<dyn Store>) {
    let u = users(&*s, 6).await;
    let g = s
        .create_group("team", &[u[2], u[0], u[2], u[1]], 4)
        .await
        .expect("create");
    assert_eq!(
        s.group_members(g).await.expect("members"),
        Some(vec![u[2], u[0], u[1]])
    );
    let g2 = s.create_group("other", &[u[0]], 4).await.expect("create");
    assert_ne!(g, g2);
    s.add_member(g, u[3], 4).await.expect("add 4th");
    s.add_member(g, u[3], 4).await.expect("idempotent add");
    assert!(matches!(
        s.add_member(g, u[4], 4).await,
        Err(StoreError::GroupFull)
    ));
    assert!(matches!(
        s.create_group("big", &u[..5], 4).await,
        Err(StoreError::GroupFull)
    ));
    s.remove_member(g, u[0]).await.expect("remove");
    s.remove_member(g, u[0]).await.expect("idempotent remove");
    s.add_member(g, u[4], 4).await.expect("room again");
    assert_eq!(
        s.group_members(g).await.expect("members"),
        Some(vec![u[2], u[1], u[3], u[4]])
    );
    for m in [u[2], u[1], u[3], u[4]] {
        s.remove_member(g, m).await.expect("empty it");
    }
    assert_eq!(s.group_members(g).await.expect("empty group"), Some(vec![]));
    assert_eq!(s.group_members(9_999).await.expect("unknown"), None);
    assert!(matches!(
        s.add_member(9_999, u[0], 4).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.remove_member(9_999, u[0]).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.add_member(g2, 9_999, 4).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.create_group("x", &[u[0], 9_999], 4).await,
        Err(StoreError::NotFound)
    ));
}

/// Accounts, unknown users and NotFound outcomes.
async fn accounts(s: Arc<dyn Store>) {
    let a = s.create_user("alice", "hash-a").await.expect("alice");
    let b = s.create_user("bob", "hash-b").await.expect("bob");
    assert_ne!(a, b);
    assert!(matches!(
        s.create_user("alice", "other").await,
        Err(StoreError::Conflict)
    ));
    let rec = s
        .user_by_name("alice")
        .await
        .expect("lookup")
        .expect("alice exists");
    assert_eq!(
        (rec.id, rec.username.as_str(), rec.password_hash.as_str()),
        (a, "alice", "hash-a")
    );
    assert!(s.user_by_name("carol").await.expect("lookup").is_none());
    let infos = s.users(&[b, 9_999, a]).await.expect("users");
    let names: Vec<_> = infos
        .iter()
        .map(|i| (i.id, i.username.as_str(), i.last_active_at))
        .collect();
    assert_eq!(names, vec![(b, "bob", None), (a, "alice", None)]);
    assert!(s.users(&[]).await.expect("none").is_empty());
    assert_eq!(s.users(&[a]).await.expect("one").len(), 1);
    let dm = [a, 9_999];
    assert!(matches!(
        s.accept(msg("dm:x", &dm, a, "c")).await,
        Err(StoreError::NotFound)
    ));
    assert!(s
        .history("dm:x", None, None, 10)
        .await
        .expect("nothing stored")
        .is_empty());
    assert!(matches!(
        s.add_friend(a, 9_999).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.login_device(9_999, None).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.set_last_active(9_999, 5).await,
        Err(StoreError::NotFound)
    ));
}

/// Tokens: put, owner, revoke; login_device by name.
async fn tokens_and_devices(s: Arc<dyn Store>) {
    let u = users(&*s, 2).await;
    let d1 = s.login_device(u[0], None).await.expect("device");
    let d2 = s.login_device(u[0], None).await.expect("device");
    let phone = s.login_device(u[0], Some("phone")).await.expect("phone");
    let ids: HashSet<_> = [d1, d2, phone].into_iter().collect();
    assert_eq!(ids.len(), 3, "each unnamed login is a new device");
    assert_eq!(
        s.login_device(u[0], Some("phone")).await.expect("again"),
        phone
    );
    let theirs = s
        .login_device(u[1], Some("phone"))
        .await
        .expect("other user's phone");
    assert!(!ids.contains(&theirs));
    let owner = TokenOwner {
        user_id: u[0],
        device_id: phone,
    };
    s.put_token("tok-1", owner).await.expect("put");
    assert_eq!(s.token_owner("tok-1").await.expect("owner"), Some(owner));
    assert_eq!(s.token_owner("tok-2").await.expect("unknown"), None);
    s.revoke_token("tok-1").await.expect("revoke");
    assert_eq!(s.token_owner("tok-1").await.expect("revoked"), None);
    s.revoke_token("never-issued")
        .await
        .expect("revoking unknown is fine");
}

/// Friends are mutual and idempotent.
async fn friends(s: Arc<dyn Store>) {
    let u = users(&*s, 4).await;
    s.add_friend(u[0], u[1]).await.expect("friend");
    s.add_friend(u[0], u[1]).await.expect("idempotent");
    s.add_friend(u[2], u[0]).await.expect("friend");
    let mut f0 = s.friends(u[0]).await.expect("friends");
    f0.sort_unstable();
    assert_eq!(f0, vec![u[1], u[2]]);
    assert_eq!(s.friends(u[1]).await.expect("friends"), vec![u[0]]);
    assert!(s.friends(u[3]).await.expect("none").is_empty());
}

/// Presence: `set_last_active` keeps the latest time.
async fn presence(s: Arc<dyn Store>) {
    let u = users(&*s, 1).await;
    s.set_last_active(u[0], 2_000).await.expect("set");
    s.set_last_active(u[0], 1_000)
        .await
        .expect("older is ignored");
    assert_eq!(
        s.users(&u).await.expect("users")[0].last_active_at,
        Some(2_000)
    );
    s.set_last_active(u[0], 3_000).await.expect("newer");
    assert_eq!(
        s.users(&u).await.expect("users")[0].last_active_at,
        Some(3_000)
    );
}

/// Two nodes on one shared store, 4 senders each into one group: ids exactly
/// 1..=400 and gap-free inboxes (the atomicity holds across connections).
async fn two_nodes(a: Arc<dyn Store>, b: Arc<dyn Store>) {
    let members = users(&*a, 8).await;
    let group = a
        .create_group("g", &members, 100)
        .await
        .expect("create_group");
    let channel = format!("g:{group}");
    let mut tasks = Vec::new();
    for (t, &from) in members.iter().enumerate() {
        let s = if t % 2 == 0 { a.clone() } else { b.clone() };
        let (members, channel) = (members.clone(), channel.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                let cmid = format!("{t}-{i}");
                s.accept(msg(&channel, &members, from, &cmid))
                    .await
                    .expect("accept");
            }
        }));
    }
    for t in tasks {
        t.await.expect("sender task");
    }
    let page = b.history(&channel, None, None, 500).await.expect("history");
    assert_eq!(
        page.iter().map(|m| m.id).collect::<Vec<_>>(),
        (1..=400).collect::<Vec<u64>>()
    );
    for &m in &members {
        let ids: Vec<u64> = whole_inbox(&*a, m, 100)
            .await
            .iter()
            .map(|(_, id)| *id)
            .collect();
        assert_eq!(
            ids,
            (1..=400).collect::<Vec<u64>>(),
            "inbox in id order, each once"
        );
    }
}

/// Two nodes, many concurrent senders each, into overlapping but different member
/// sets (direct channels between every pair, and groups of different members): a
/// backend that batches accepts must take its locks in one global order, or two
/// batches deadlock. Every accept succeeds, ids per channel are exactly 1..=n, and
/// every inbox is gap-free with each message once.
async fn two_nodes_overlapping(a: Arc<dyn Store>, b: Arc<dyn Store>) {
    let u = users(&*a, 10).await;
    let mut channels: Vec<(String, Vec<UserId>)> = Vec::new();
    for (i, &x) in u.iter().enumerate() {
        for &y in &u[i + 1..] {
            channels.push((format!("dm:{x}:{y}"), vec![x, y]));
        }
    }
    for k in 0..6 {
        let members: Vec<UserId> = u.iter().copied().filter(|m| (m + k) % 3 != 0).collect();
        let g = a.create_group("g", &members, 100).await.expect("group");
        channels.push((format!("g:{g}"), members));
    }
    let channels = Arc::new(channels);
    let mut tasks = Vec::new();
    for t in 0..48usize {
        let s = if t % 2 == 0 { a.clone() } else { b.clone() };
        let channels = channels.clone();
        tasks.push(tokio::spawn(async move {
            let mut sent = Vec::new();
            for i in 0..15usize {
                // Each task walks the channels in its own order.
                let c = (t * 7 + i * (t % 5 + 1)) % channels.len();
                let (channel, members) = &channels[c];
                let from = members[(t + i) % members.len()];
                let cmid = format!("{t}-{i}");
                let got = s.accept(msg(channel, members, from, &cmid)).await;
                let got = got.unwrap_or_else(|e| panic!("accept into {channel}: {e}"));
                sent.push((c, got.id));
            }
            sent
        }));
    }
    let mut per_channel = vec![Vec::new(); channels.len()];
    for t in tasks {
        for (c, id) in t.await.expect("sender") {
            per_channel[c].push(id);
        }
    }
    for (c, mut ids) in per_channel.into_iter().enumerate() {
        ids.sort_unstable();
        let n = ids.len() as u64;
        assert_eq!(ids, (1..=n).collect::<Vec<_>>(), "ids of {}", channels[c].0);
    }
    for &m in &u {
        let inbox = whole_inbox(&*b, m, 100).await;
        let distinct: HashSet<_> = inbox.iter().collect();
        assert_eq!(
            distinct.len(),
            inbox.len(),
            "each message once in {m}'s inbox"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_nodes_overlapping() {
    run_two_nodes("postgres", "overlap", two_nodes_overlapping).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_two_nodes_overlapping() {
    run_two_nodes("redis_cluster", "overlap", two_nodes_overlapping).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_two_nodes() {
    run_two_nodes("redis", "two_nodes", two_nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_two_nodes() {
    run_two_nodes("redis_cluster", "two_nodes", two_nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_nodes() {
    run_two_nodes("postgres", "two_nodes", two_nodes).await;
}

/// One test per (backend, property): `conformance::redis::dedupe`, ...
macro_rules! conformance {
    ($($backend:ident),* ; $properties:tt) => {
        $(conformance!(@backend $backend $properties);)*
    };
    (@backend $backend:ident ($($property:ident),*)) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $property() {
                    super::run(stringify!($backend), stringify!($property), super::$property).await;
                }
            )*
        }
    };
}

conformance!(memory, embedded, redis, redis_cluster, postgres; (
    gap_free_ids, dedupe, dedupe_race, group_limit_race, inbox_cursors, history_paging, groups, accounts,
    tokens_and_devices, friends, presence, unicode_round_trip, a_bad_accept_fails_alone,
    membership_in_accept, expiry, expiry_counts_every_record, submission_order, submitted_resend,
    members_follow_changes
));
