//! The in-memory backend: fastest, and gone when the process ends.
//!
//! One `parking_lot::Mutex` guards everything. Each operation holds it for a few
//! map look-ups (no await inside), so contention stays low on the core counts this
//! server runs on, and every operation is trivially atomic, which is exactly what
//! [`Store::accept`] needs. Messages are `Arc`-shared between the channel history
//! and the members' inboxes, so a group message is stored once.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{
    Accepted, Expired, NewMessage, PendingAccept, Store, StoreError, StoreResult, StoredMessage,
    TokenOwner, UserInfo, UserRecord,
};
use crate::protocol::{DeviceId, Message, MessageId, Millis, Seq, UserId};

#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    users: Vec<User>,
    by_name: HashMap<String, UserId>,
    next_device: DeviceId,
    tokens: HashMap<String, TokenOwner>,
    groups: Vec<Vec<UserId>>,
    /// Channel id -> messages; message `id` is its index + 1.
    channels: HashMap<String, Vec<StoredMessage>>,
    /// `(sender, client_msg_id)` -> the first send's message (shared with its
    /// channel, so no copy of the channel name) and the sender's seq for it.
    dedupe: HashMap<(UserId, String), (StoredMessage, Seq)>,
}

struct User {
    username: String,
    password_hash: String,
    devices: Vec<(DeviceId, Option<String>)>,
    friends: Vec<UserId>,
    last_active_at: Option<Millis>,
    /// Inbox: entry `seq` is at index `seq - 1`.
    inbox: Vec<StoredMessage>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores a message under the one lock ([`Store::accept`]). The fields of
    /// `Inner` are borrowed apart so that the dedupe key is hashed and probed
    /// once (an `entry`, kept while the message is appended), the group's
    /// members are read where they are (not copied), and the channel's history
    /// is looked up once.
    fn accept_now(&self, msg: NewMessage<'_>) -> StoreResult<Accepted> {
        let mut inner = self.inner.lock();
        let Inner {
            users,
            groups,
            channels,
            dedupe,
            ..
        } = &mut *inner;
        let slot = match dedupe.entry((msg.from, msg.client_msg_id.to_string())) {
            Entry::Occupied(seen) => {
                let (first, sender_seq) = seen.get();
                return Ok(Accepted {
                    channel: first.channel.clone(),
                    id: first.id,
                    ts: first.ts,
                    sender_seq: *sender_seq,
                    recipients: Vec::new(),
                    duplicate: true,
                });
            }
            Entry::Vacant(slot) => slot,
        };
        // A group's members as they are now, under the same lock as the append.
        let members = match super::group_of(msg.channel) {
            Some(g) => {
                let current = g
                    .checked_sub(1)
                    .and_then(|i| groups.get(i as usize))
                    .ok_or(StoreError::NotFound)?;
                if !current.contains(&msg.from) {
                    return Err(StoreError::NotMember);
                }
                &current[..]
            }
            None => msg.members,
        };
        let index = |m: UserId| m.checked_sub(1).map(|i| i as usize);
        if members
            .iter()
            .any(|&m| index(m).and_then(|i| users.get(i)).is_none())
        {
            return Err(StoreError::NotFound);
        }
        let message = |id| {
            Arc::new(Message {
                channel: msg.channel.to_string(),
                id,
                seq: None,
                from: msg.from,
                from_device: msg.from_device,
                client_msg_id: msg.client_msg_id.to_string(),
                text: msg.text.to_string(),
                ts: msg.ts,
            })
        };
        // Looked up by `&str`: a busy channel's key is not allocated again for
        // every message, only a new channel's.
        let stored = match channels.get_mut(msg.channel) {
            Some(history) => {
                let stored = message(history.len() as MessageId + 1);
                history.push(stored.clone());
                stored
            }
            None => {
                let stored = message(1);
                channels.insert(msg.channel.to_string(), vec![stored.clone()]);
                stored
            }
        };
        let mut recipients = Vec::with_capacity(members.len());
        for &m in members {
            let user = index(m)
                .and_then(|i| users.get_mut(i))
                .ok_or(StoreError::NotFound)?;
            user.inbox.push(stored.clone());
            recipients.push((m, user.inbox.len() as Seq));
        }
        let sender_seq = recipients
            .iter()
            .find(|(m, _)| *m == msg.from)
            .map(|&(_, s)| s)
            .unwrap_or(0);
        let (id, ts) = (stored.id, stored.ts);
        slot.insert((stored, sender_seq));
        Ok(Accepted {
            channel: msg.channel.to_string(),
            id,
            ts,
            sender_seq,
            recipients,
            duplicate: false,
        })
    }
}

impl Inner {
    fn user(&self, id: UserId) -> Option<&User> {
        id.checked_sub(1).and_then(|i| self.users.get(i as usize))
    }
    fn user_mut(&mut self, id: UserId) -> StoreResult<&mut User> {
        id.checked_sub(1)
            .and_then(|i| self.users.get_mut(i as usize))
            .ok_or(StoreError::NotFound)
    }
    fn group_mut(&mut self, group: u64) -> StoreResult<&mut Vec<UserId>> {
        group
            .checked_sub(1)
            .and_then(|i| self.groups.get_mut(i as usize))
            .ok_or(StoreError::NotFound)
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn durability(&self) -> String {
        "none: an acked message lives in process memory only".into()
    }

    async fn create_user(&self, username: &str, password_hash: &str) -> StoreResult<UserId> {
        let mut inner = self.inner.lock();
        if inner.by_name.contains_key(username) {
            return Err(StoreError::Conflict);
        }
        inner.users.push(User {
            username: username.to_string(),
            password_hash: password_hash.to_string(),
            devices: Vec::new(),
            friends: Vec::new(),
            last_active_at: None,
            inbox: Vec::new(),
        });
        let id = inner.users.len() as UserId;
        inner.by_name.insert(username.to_string(), id);
        Ok(id)
    }

    async fn user_by_name(&self, username: &str) -> StoreResult<Option<UserRecord>> {
        let inner = self.inner.lock();
        Ok(inner.by_name.get(username).and_then(|&id| {
            inner.user(id).map(|u| UserRecord {
                id,
                username: u.username.clone(),
                password_hash: u.password_hash.clone(),
            })
        }))
    }

    async fn users(&self, ids: &[UserId]) -> StoreResult<Vec<UserInfo>> {
        let inner = self.inner.lock();
        Ok(ids
            .iter()
            .filter_map(|&id| {
                inner.user(id).map(|u| UserInfo {
                    id,
                    username: u.username.clone(),
                    last_active_at: u.last_active_at,
                })
            })
            .collect())
    }

    async fn login_device(&self, user: UserId, name: Option<&str>) -> StoreResult<DeviceId> {
        let mut inner = self.inner.lock();
        inner.next_device += 1;
        let fresh = inner.next_device;
        let u = inner.user_mut(user)?;
        if let Some(name) = name {
            if let Some((id, _)) = u.devices.iter().find(|(_, n)| n.as_deref() == Some(name)) {
                return Ok(*id);
            }
        }
        u.devices.push((fresh, name.map(str::to_string)));
        Ok(fresh)
    }

    async fn put_token(&self, token: &str, owner: TokenOwner) -> StoreResult<()> {
        self.inner.lock().tokens.insert(token.to_string(), owner);
        Ok(())
    }

    async fn token_owner(&self, token: &str) -> StoreResult<Option<TokenOwner>> {
        Ok(self.inner.lock().tokens.get(token).copied())
    }

    async fn revoke_token(&self, token: &str) -> StoreResult<()> {
        self.inner.lock().tokens.remove(token);
        Ok(())
    }

    async fn add_friend(&self, a: UserId, b: UserId) -> StoreResult<()> {
        let mut inner = self.inner.lock();
        if inner.user(a).is_none() || inner.user(b).is_none() {
            return Err(StoreError::NotFound);
        }
        for (x, y) in [(a, b), (b, a)] {
            let u = inner.user_mut(x)?;
            if !u.friends.contains(&y) {
                u.friends.push(y);
            }
        }
        Ok(())
    }

    async fn friends(&self, user: UserId) -> StoreResult<Vec<UserId>> {
        Ok(self
            .inner
            .lock()
            .user(user)
            .map(|u| u.friends.clone())
            .unwrap_or_default())
    }

    async fn create_group(
        &self,
        _name: &str,
        members: &[UserId],
        max_members: usize,
    ) -> StoreResult<u64> {
        let list = super::distinct_members(members, max_members)?;
        let mut inner = self.inner.lock();
        if list.iter().any(|&m| inner.user(m).is_none()) {
            return Err(StoreError::NotFound);
        }
        inner.groups.push(list);
        Ok(inner.groups.len() as u64)
    }

    async fn group_members(&self, group: u64) -> StoreResult<Option<Vec<UserId>>> {
        let inner = self.inner.lock();
        Ok(group
            .checked_sub(1)
            .and_then(|i| inner.groups.get(i as usize))
            .cloned())
    }

    async fn add_member(&self, group: u64, user: UserId, max_members: usize) -> StoreResult<()> {
        let mut inner = self.inner.lock();
        if inner.user(user).is_none() {
            return Err(StoreError::NotFound);
        }
        let members = inner.group_mut(group)?;
        if members.contains(&user) {
            return Ok(());
        }
        if members.len() >= max_members {
            return Err(StoreError::GroupFull);
        }
        members.push(user);
        Ok(())
    }

    async fn remove_member(&self, group: u64, user: UserId) -> StoreResult<()> {
        let mut inner = self.inner.lock();
        inner.group_mut(group)?.retain(|&m| m != user);
        Ok(())
    }

    async fn accept(&self, msg: NewMessage<'_>) -> StoreResult<Accepted> {
        self.accept_now(msg)
    }

    /// The whole accept, done before returning (the default would box a
    /// second future, the `accept` call's, for every send).
    async fn submit_accept(&self, msg: NewMessage<'_>) -> StoreResult<PendingAccept> {
        let accepted = self.accept_now(msg);
        Ok(Box::pin(std::future::ready(accepted)))
    }

    async fn history(
        &self,
        channel: &str,
        after: Option<MessageId>,
        before: Option<MessageId>,
        limit: usize,
    ) -> StoreResult<Vec<StoredMessage>> {
        let inner = self.inner.lock();
        let Some(all) = inner.channels.get(channel) else {
            return Ok(Vec::new());
        };
        // Message `id` sits at index `id - 1`, so a range of ids is a slice.
        let end = before.map_or(all.len(), |b| (b.saturating_sub(1) as usize).min(all.len()));
        let range = match after {
            Some(a) => {
                let start = (a as usize).min(end);
                start..end.min(start.saturating_add(limit))
            }
            None => end.saturating_sub(limit)..end,
        };
        Ok(all[range].to_vec())
    }

    async fn inbox_head(&self, user: UserId) -> StoreResult<Seq> {
        Ok(self
            .inner
            .lock()
            .user(user)
            .map_or(0, |u| u.inbox.len() as Seq))
    }

    async fn inbox_after(
        &self,
        user: UserId,
        since: Seq,
        limit: usize,
    ) -> StoreResult<Vec<Message>> {
        let inner = self.inner.lock();
        let Some(u) = inner.user(user) else {
            return Ok(Vec::new());
        };
        let start = (since as usize).min(u.inbox.len());
        let end = u.inbox.len().min(start.saturating_add(limit));
        Ok(u.inbox[start..end]
            .iter()
            .enumerate()
            .map(|(i, m)| Message {
                seq: Some((start + i + 1) as Seq),
                ..(**m).clone()
            })
            .collect())
    }

    async fn set_last_active(&self, user: UserId, at: Millis) -> StoreResult<()> {
        let mut inner = self.inner.lock();
        let u = inner.user_mut(user)?;
        u.last_active_at = Some(u.last_active_at.map_or(at, |prev| prev.max(at)));
        Ok(())
    }

    async fn expire(&self, now: Millis, dedupe_before: Millis) -> StoreResult<Expired> {
        let mut inner = self.inner.lock();
        let tokens = inner.tokens.len();
        inner
            .tokens
            .retain(|token, _| !crate::auth::token_expired(token, now));
        let dedupe = &mut inner.dedupe;
        let records = dedupe.len();
        dedupe.retain(|_, (first, _)| first.ts >= dedupe_before);
        Ok(Expired {
            tokens: (tokens - inner.tokens.len()) as u64,
            dedupe: (records - inner.dedupe.len()) as u64,
        })
    }

    async fn flush(&self) -> StoreResult<()> {
        Ok(())
    }
}
