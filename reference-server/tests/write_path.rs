//! The write path as clients see it: U+0000 refused everywhere, sends answered
//! `overloaded` at once when storage is backed up, and a resend after an
//! ambiguous failure (stored, but the sender saw an error) still fanned out.
//!
//! Storage faults cannot be produced on demand in a real backend, so these
//! tests put a thin wrapper around the in-memory store: it delegates every call,
//! and its `accept` can be held at a gate or made to fail after committing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reference_server::protocol::{DeviceId, Message, MessageId, Millis, Seq, ServerFrame, UserId};
use reference_server::store::memory::MemoryStore;
use reference_server::store::{
    Accepted, Expired, NewMessage, Store, StoreError, StoreResult, StoredMessage, TokenOwner,
    UserInfo, UserRecord,
};
use serde_json::json;

use crate::support::TestServer;

/// The in-memory store, with faults on `accept`.
struct Faulty {
    inner: MemoryStore,
    /// Accepts wait for a permit here while `hold` is set.
    gate: tokio::sync::Semaphore,
    hold: AtomicBool,
    /// An accept whose client_msg_id starts with "ambiguous" commits, then fails.
    ambiguous: AtomicBool,
}

impl Default for Faulty {
    fn default() -> Self {
        Faulty {
            inner: MemoryStore::new(),
            gate: tokio::sync::Semaphore::new(0),
            hold: AtomicBool::new(false),
            ambiguous: AtomicBool::new(false),
        }
    }
}

#[async_trait]
impl Store for Faulty {
    fn kind(&self) -> &'static str {
        "memory"
    }
    fn durability(&self) -> String {
        self.inner.durability()
    }
    async fn create_user(&self, name: &str, hash: &str) -> StoreResult<UserId> {
        self.inner.create_user(name, hash).await
    }
    async fn user_by_name(&self, name: &str) -> StoreResult<Option<UserRecord>> {
        self.inner.user_by_name(name).await
    }
    async fn users(&self, ids: &[UserId]) -> StoreResult<Vec<UserInfo>> {
        self.inner.users(ids).await
    }
    async fn login_device(&self, user: UserId, name: Option<&str>) -> StoreResult<DeviceId> {
        self.inner.login_device(user, name).await
    }
    async fn put_token(&self, token: &str, owner: TokenOwner) -> StoreResult<()> {
        self.inner.put_token(token, owner).await
    }
    async fn token_owner(&self, token: &str) -> StoreResult<Option<TokenOwner>> {
        self.inner.token_owner(token).await
    }
    async fn revoke_token(&self, token: &str) -> StoreResult<()> {
        self.inner.revoke_token(token).await
    }
    async fn add_friend(&self, a: UserId, b: UserId) -> StoreResult<()> {
        self.inner.add_friend(a, b).await
    }
    async fn friends(&self, user: UserId) -> StoreResult<Vec<UserId>> {
        self.inner.friends(user).await
    }
    async fn create_group(&self, name: &str, members: &[UserId], max: usize) -> StoreResult<u64> {
        self.inner.create_group(name, members, max).await
    }
    async fn group_members(&self, group: u64) -> StoreResult<Option<Vec<UserId>>> {
        self.inner.group_members(group).await
    }
    async fn add_member(&self, group: u64, user: UserId, max: usize) -> StoreResult<()> {
        self.inner.add_member(group, user, max).await
    }
    async fn remove_member(&self, group: u64, user: UserId) -> StoreResult<()> {
        self.inner.remove_member(group, user).await
    }
    async fn accept(&self, msg: NewMessage<'_>) -> StoreResult<Accepted> {
        if self.hold.load(Ordering::SeqCst) {
            let _ = self.gate.acquire().await.expect("gate").forget();
        }
        let accepted = self.inner.accept(msg).await?;
        if self.ambiguous.load(Ordering::SeqCst)
            && msg.client_msg_id.starts_with("ambiguous")
            && !accepted.duplicate
        {
            return Err(StoreError::Backend(
                "connection lost after the commit".into(),
            ));
        }
        Ok(accepted)
    }
    async fn history(
        &self,
        channel: &str,
        after: Option<MessageId>,
        before: Option<MessageId>,
        limit: usize,
    ) -> StoreResult<Vec<StoredMessage>> {
        self.inner.history(channel, after, before, limit).await
    }
    async fn inbox_head(&self, user: UserId) -> StoreResult<Seq> {
        self.inner.inbox_head(user).await
    }
    async fn inbox_after(
        &self,
        user: UserId,
        since: Seq,
        limit: usize,
    ) -> StoreResult<Vec<Message>> {
        self.inner.inbox_after(user, since, limit).await
    }
    async fn set_last_active(&self, user: UserId, at: Millis) -> StoreResult<()> {
        self.inner.set_last_active(user, at).await
    }
    async fn expire(&self, now: Millis, before: Millis) -> StoreResult<Expired> {
        self.inner.expire(now, before).await
    }
    async fn flush(&self) -> StoreResult<()> {
        self.inner.flush().await
    }
}

fn code_of(f: &ServerFrame) -> &'static str {
    match f {
        ServerFrame::Error { code, .. } => code.as_str(),
        ServerFrame::Ack { .. } => "ack",
        _ => "other",
    }
}

#[tokio::test]
async fn u_0000_is_refused_in_every_string_the_server_stores() {
    let s = TestServer::start().await;
    let a = s.user("nul-a").await;
    let b = s.user("nul-b").await;
    let mut wa = a.connect().await;
    let to = json!({"user": b.user_id});
    assert_eq!(
        code_of(&wa.send_to(1, to.clone(), "n1", "a\u{0}b").await),
        "bad_request"
    );
    assert_eq!(
        code_of(&wa.send_to(2, to.clone(), "n\u{0}2", "ab").await),
        "bad_request"
    );
    assert_eq!(
        code_of(&wa.send_to(3, to.clone(), "n3", "\u{1}\u{7f}").await),
        "ack"
    );
    let (status, body) = s
        .post(
            "/v1/groups",
            Some(&a.token),
            json!({"name": "g\u{0}", "members": []}),
        )
        .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")));
    let (status, _) = s
        .post(
            "/v1/login",
            None,
            json!({"username": "nul-a", "password": "password123", "device": "p\u{0}"}),
        )
        .await;
    assert_eq!(status, 400);
    let mut wb = b.connect().await;
    assert_eq!(
        wb.sync_all(0, 10).await.len(),
        1,
        "only the clean message is stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_past_the_pending_bound_are_answered_overloaded_at_once() {
    let store = Arc::new(Faulty::default());
    let s = TestServer::with_store(|c| c.max_pending_accepts = 2, store.clone()).await;
    let target = s.user("sink").await;
    let mut senders = Vec::new();
    for i in 0..3 {
        senders.push(s.user(&format!("busy{i}")).await.connect().await);
    }
    store.hold.store(true, Ordering::SeqCst);
    let to = json!({"user": target.user_id});
    for (i, ws) in senders.iter_mut().enumerate().take(2) {
        ws.send_json(json!({"type": "send", "req": 1, "to": to, "client_msg_id": format!("p{i}"), "text": "wait"}))
            .await;
    }
    // Both parked sends hold the two slots; the third is refused without waiting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let third = tokio::time::timeout(
        Duration::from_secs(2),
        senders[2].send_to(1, to.clone(), "p2", "no room"),
    )
    .await
    .expect("answered at once, not parked");
    assert_eq!(code_of(&third), "overloaded");
    assert_eq!(s.metric("chatscale_storage_overloaded_total").await, 1.0);
    // Storage catches up: the parked sends are acked.
    store.hold.store(false, Ordering::SeqCst);
    store.gate.add_permits(2);
    for ws in senders.iter_mut().take(2) {
        assert_eq!(code_of(&ws.answer(1).await), "ack");
    }
}

#[tokio::test]
async fn a_resend_after_an_ambiguous_failure_still_reaches_the_recipient_live() {
    let store = Arc::new(Faulty::default());
    store.ambiguous.store(true, Ordering::SeqCst);
    let s = TestServer::with_store(|_| {}, store).await;
    let a = s.user("amb-a").await;
    let b = s.user("amb-b").await;
    let mut wa = a.connect().await;
    let mut wb = b.connect().await;
    let to = json!({"user": b.user_id});
    // Stored, but the sender is told it failed; nobody got it live.
    assert_eq!(
        code_of(&wa.send_to(1, to.clone(), "ambiguous-1", "did it?").await),
        "internal"
    );
    assert!(wb
        .drain(50)
        .await
        .iter()
        .all(|f| !matches!(f, ServerFrame::Message(_))));
    // The resend is answered as the first send, and now the recipient gets it.
    match wa.send_to(2, to.clone(), "ambiguous-1", "did it?").await {
        ServerFrame::Ack { id, seq, .. } => assert_eq!((id, seq), (1, 1)),
        other => panic!("{other:?}"),
    }
    let m = wb.next_message().await;
    assert_eq!((m.id, m.seq, m.text.as_str()), (1, Some(1), "did it?"));
    // A second resend is a plain duplicate: no second live copy.
    assert_eq!(
        code_of(&wa.send_to(3, to, "ambiguous-1", "did it?").await),
        "ack"
    );
    assert!(wb
        .drain(51)
        .await
        .iter()
        .all(|f| !matches!(f, ServerFrame::Message(_))));
}

#[tokio::test]
async fn expired_tokens_are_removed_from_storage() {
    let s = TestServer::with(|c| {
        c.token_ttl = Some(Duration::from_millis(300));
        c.expire_interval = Duration::from_millis(100);
    })
    .await;
    let a = s.user("brief").await;
    assert_eq!(s.get("/v1/discovery", Some(&a.token)).await.0, 200);
    let mut waited = 0;
    while s.metric("chatscale_expired_tokens_total").await < 1.0 {
        assert!(waited < 50, "the token was never removed");
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
    }
    assert_eq!(s.get("/v1/discovery", Some(&a.token)).await.0, 401);
}
