//! Conformance properties of ordered submission ([`Store::submit_accept`]):
//! ids follow the order accepts were submitted in, even when many tasks submit
//! into one channel and wait for their commits at once; a resend through it is
//! answered with the first ack; an accept answered is readable. And the members
//! a send checks follow membership changes at once (the embedded backend caches
//! them).

use std::sync::Arc;

use reference_server::store::{PendingAccept, Store};

use super::{msg, users, whole_inbox};

/// 8 tasks x 20 sends into one group, each submitting under one shared lock
/// (as the chat service's channel stripe does) and waiting for its commit
/// after letting go: the ids are 1..=160 in the order the lock was taken,
/// every member's inbox holds them in that order, and each answered accept is
/// in the channel's history when its answer arrives.
pub async fn submission_order(s: Arc<dyn Store>) {
    let members = users(&*s, 8).await;
    let group = s.create_group("g", &members, 100).await.expect("group");
    let channel = format!("g:{group}");
    let order = Arc::new(tokio::sync::Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for (t, &from) in members.iter().enumerate() {
        let (s, members, channel, order) =
            (s.clone(), members.clone(), channel.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..20 {
                let cmid = format!("{t}-{i}");
                let pending: PendingAccept = {
                    let mut order = order.lock().await;
                    let p = s
                        .submit_accept(msg(&channel, &members, from, &cmid))
                        .await
                        .expect("submit");
                    order.push(cmid.clone());
                    p
                };
                let a = pending.await.expect("accept");
                assert!(!a.duplicate);
                let page = s
                    .history(&channel, Some(a.id - 1), Some(a.id + 1), 1)
                    .await
                    .expect("history");
                assert_eq!(
                    page.first().map(|m| m.client_msg_id.clone()),
                    Some(cmid.clone()),
                    "an answered accept is stored"
                );
                acked.push((cmid, a.id));
            }
            acked
        }));
    }
    let mut by_cmid = std::collections::HashMap::new();
    for t in tasks {
        by_cmid.extend(t.await.expect("sender task"));
    }
    let ids: Vec<u64> = order.lock().await.iter().map(|c| by_cmid[c]).collect();
    assert_eq!(
        ids,
        (1..=160).collect::<Vec<u64>>(),
        "ids in submission order"
    );
    for &m in &members {
        let inbox: Vec<u64> = whole_inbox(&*s, m, 64)
            .await
            .into_iter()
            .map(|(_, id)| id)
            .collect();
        assert_eq!(inbox, (1..=160).collect::<Vec<u64>>());
    }
}

/// Sends submitted back to back without waiting (one a resend of an earlier
/// one): each is answered as `accept` would, the resend with the first ack.
pub async fn submitted_resend(s: Arc<dyn Store>) {
    let u = users(&*s, 2).await;
    let ch = format!("dm:{}:{}", u[0], u[1]);
    let mut pending = Vec::new();
    for cmid in ["a", "b", "a", "c"] {
        pending.push(
            s.submit_accept(msg(&ch, &u, u[0], cmid))
                .await
                .expect("submit"),
        );
    }
    let mut answers = Vec::new();
    for p in pending {
        answers.push(p.await.expect("accept"));
    }
    let got: Vec<(u64, bool)> = answers.iter().map(|a| (a.id, a.duplicate)).collect();
    assert_eq!(got, [(1, false), (2, false), (1, true), (3, false)]);
    assert_eq!(answers[2].sender_seq, answers[0].sender_seq);
    let again = s.accept(msg(&ch, &u, u[0], "b")).await.expect("resend");
    assert_eq!((again.id, again.duplicate), (2, true));
    assert_eq!(s.inbox_head(u[1]).await.expect("head"), 3);
}

/// A group's members, read (and so cached, where a backend caches them), then
/// changed: the next read sees the change, and so does the accept.
pub async fn members_follow_changes(s: Arc<dyn Store>) {
    let u = users(&*s, 3).await;
    let g = s.create_group("g", &u[..2], 10).await.expect("group");
    for _ in 0..2 {
        assert_eq!(
            s.group_members(g).await.expect("members"),
            Some(u[..2].to_vec())
        );
    }
    s.add_member(g, u[2], 10).await.expect("add");
    assert_eq!(s.group_members(g).await.expect("members"), Some(u.clone()));
    s.remove_member(g, u[0]).await.expect("remove");
    let now = s.group_members(g).await.expect("members").expect("group");
    assert_eq!(now, [u[1], u[2]]);
    let channel = format!("g:{g}");
    let a = s
        .accept(msg(&channel, &now, u[2], "x"))
        .await
        .expect("accept");
    let got: Vec<u64> = a.recipients.iter().map(|&(m, _)| m).collect();
    assert_eq!(got, [u[1], u[2]]);
    assert!(s.user_exists(u[0]).await.expect("exists"));
    assert!(s.user_exists(u[0]).await.expect("exists, again"));
    assert!(!s.user_exists(u[2] + 1000).await.expect("unknown"));
}
