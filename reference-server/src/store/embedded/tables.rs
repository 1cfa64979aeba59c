//! The embedded backend's schema (one redb table per kind of record) and the
//! writes that run inside the writer's transaction, `accept` first among them.

use std::collections::HashMap;
use std::sync::Arc;

use redb::{ReadableTable, Table, TableDefinition, WriteTransaction};

use super::backend;
use crate::protocol::{DeviceId, Millis, UserId};
use crate::store::{Accepted, StoreError, StoreResult};

/// Counters: `next_user`, `next_device`, `next_group`; and [`WAL_LSN`].
pub(super) const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
/// The number of the last write-ahead log record the database holds.
pub(super) const WAL_LSN: &str = "wal_lsn";
/// user id -> (username, password hash).
pub(super) const USERS: TableDefinition<'_, u64, (&str, &str)> = TableDefinition::new("users");
pub(super) const USER_NAMES: TableDefinition<'_, &str, u64> = TableDefinition::new("user_names");
/// user id -> last active time (ms).
pub(super) const LAST_ACTIVE: TableDefinition<'_, u64, u64> = TableDefinition::new("last_active");
/// (user, device name) -> device id; unnamed devices only take a number.
pub(super) const DEVICES: TableDefinition<'_, (u64, &str), u64> = TableDefinition::new("devices");
/// token -> (user, device).
pub(super) const TOKENS: TableDefinition<'_, &str, (u64, u64)> = TableDefinition::new("tokens");
/// (user, friend), both directions.
pub(super) const FRIENDS: TableDefinition<'_, (u64, u64), ()> = TableDefinition::new("friends");
/// group number -> (name, members in order).
pub(super) const GROUPS: TableDefinition<'_, u64, (&str, Vec<u64>)> =
    TableDefinition::new("groups");
/// (channel, id) -> (from, from_device, ts, client_msg_id, text).
pub(super) type MessageRow<'a> = (u64, u64, u64, &'a str, &'a str);
pub(super) const MESSAGES: TableDefinition<'_, (&str, u64), MessageRow<'_>> =
    TableDefinition::new("messages");
/// channel -> highest message id.
pub(super) const CHANNEL_HEADS: TableDefinition<'_, &str, u64> =
    TableDefinition::new("channel_heads");
/// (user, seq) -> (channel, id): one row per inbox entry, as databases written
/// before [`INBOX_RUNS`] hold them. Read, no longer written.
pub(super) const INBOX: TableDefinition<'_, (u64, u64), (&str, u64)> =
    TableDefinition::new("inbox");
/// (user, first seq) -> the entries with seqs `first, first + 1, ...`, packed
/// (see [`encode_run`]): what one transaction appended to the user's inbox. One
/// row per user per checkpoint rather than one per entry: an accept appends
/// one entry per member, and a B-tree insert each cost more than the rest of the
/// accept.
pub(super) const INBOX_RUNS: TableDefinition<'_, (u64, u64), &[u8]> =
    TableDefinition::new("inbox_runs");
/// user -> highest inbox seq.
pub(super) const INBOX_HEADS: TableDefinition<'_, u64, u64> = TableDefinition::new("inbox_heads");
/// (sender, client_msg_id) -> (channel, id, sender's seq).
pub(super) const DEDUPE: TableDefinition<'_, (u64, &str), (&str, u64, u64)> =
    TableDefinition::new("dedupe");

/// (message ts, sender, client_msg_id): the dedupe records by age, so the old
/// ones can be found without reading them all.
pub(super) const DEDUPE_BY_TS: TableDefinition<'_, (u64, u64, &str), ()> =
    TableDefinition::new("dedupe_by_ts");

/// Takes the next value of a counter in `META` (1 for the first).
pub(super) fn next_counter(txn: &WriteTransaction, name: &str) -> StoreResult<u64> {
    let mut meta = txn.open_table(META).map_err(backend)?;
    let next = meta.get(name).map_err(backend)?.map_or(0, |v| v.value()) + 1;
    meta.insert(name, next).map_err(backend)?;
    Ok(next)
}

pub(super) fn user_exists(txn: &WriteTransaction, user: UserId) -> StoreResult<bool> {
    Ok(txn
        .open_table(USERS)
        .map_err(backend)?
        .get(user)
        .map_err(backend)?
        .is_some())
}

/// The tables an accept reads and writes (and the reads and presence writes
/// that run in the writer's transaction), opened once per transaction: opening a
/// table looks it up in the database's table tree, which for a batch of small
/// accepts cost as much as the accepts' own reads and writes.
pub(super) struct AcceptTables<'t> {
    pub(super) dedupe: Table<'t, (u64, &'static str), (&'static str, u64, u64)>,
    pub(super) dedupe_by_ts: Table<'t, (u64, u64, &'static str), ()>,
    pub(super) groups: Table<'t, u64, (&'static str, Vec<u64>)>,
    pub(super) users: Table<'t, u64, (&'static str, &'static str)>,
    pub(super) heads: Table<'t, &'static str, u64>,
    pub(super) messages: Table<'t, (&'static str, u64), MessageRow<'static>>,
    pub(super) inbox: Table<'t, (u64, u64), (&'static str, u64)>,
    pub(super) inbox_runs: Table<'t, (u64, u64), &'static [u8]>,
    pub(super) inbox_heads: Table<'t, u64, u64>,
    pub(super) last_active: Table<'t, u64, u64>,
    /// Channel and inbox heads as this transaction has them, with whether they
    /// changed: an accept reads and bumps one channel head and one inbox head per
    /// member, so they are kept here and written to their tables once, when the
    /// tables close (before every commit), instead of once per accept.
    channel_heads: HashMap<String, (u64, bool)>,
    inbox_head_cache: HashMap<u64, (u64, bool)>,
    /// Inbox entries appended in this transaction and not yet written: per
    /// user, the first entry's seq and the entries (channel, id) in seq order.
    pending_inbox: HashMap<u64, (u64, Vec<InboxEntry>)>,
    /// Groups' members and accounts known to exist, as read in this
    /// transaction: only writes that close these tables change them (and
    /// closing drops what is kept here).
    groups_read: HashMap<u64, Arc<Vec<UserId>>>,
    users_seen: std::collections::HashSet<UserId>,
}

/// An inbox entry: the message's channel and id.
type InboxEntry = (Arc<str>, u64);

impl AcceptTables<'_> {
    /// Group `group`'s members, as of this transaction; `NotFound` if none.
    fn group_members(&mut self, group: u64) -> StoreResult<Arc<Vec<UserId>>> {
        if let Some(members) = self.groups_read.get(&group) {
            return Ok(members.clone());
        }
        let members = self
            .groups
            .get(group)
            .map_err(backend)?
            .map(|v| Arc::new(v.value().1))
            .ok_or(StoreError::NotFound)?;
        self.groups_read.insert(group, members.clone());
        Ok(members)
    }

    /// True if account `user` exists (accounts are never removed).
    fn user_exists(&mut self, user: UserId) -> StoreResult<bool> {
        if self.users_seen.contains(&user) {
            return Ok(true);
        }
        let exists = self.users.get(user).map_err(backend)?.is_some();
        if exists {
            self.users_seen.insert(user);
        }
        Ok(exists)
    }

    /// User `user`'s highest inbox seq, as of this transaction.
    pub(super) fn inbox_head(&mut self, user: u64) -> StoreResult<u64> {
        if let Some(&(seq, _)) = self.inbox_head_cache.get(&user) {
            return Ok(seq);
        }
        let seq = self
            .inbox_heads
            .get(user)
            .map_err(backend)?
            .map_or(0, |v| v.value());
        self.inbox_head_cache.insert(user, (seq, false));
        Ok(seq)
    }

    fn channel_head(&mut self, channel: &str) -> StoreResult<u64> {
        if let Some(&(id, _)) = self.channel_heads.get(channel) {
            return Ok(id);
        }
        let id = self
            .heads
            .get(channel)
            .map_err(backend)?
            .map_or(0, |v| v.value());
        self.channel_heads.insert(channel.to_string(), (id, false));
        Ok(id)
    }

    /// User `user`'s inbox entries `(seq, channel, id)` after `since`, at most
    /// `limit`, in seq order: the old per-entry rows, the runs, then the entries
    /// this transaction has not yet written.
    pub(super) fn inbox_entries(
        &self,
        user: u64,
        since: u64,
        limit: usize,
    ) -> StoreResult<Vec<(u64, String, u64)>> {
        let start = since.saturating_add(1);
        let mut out = Vec::with_capacity(limit.min(512));
        for entry in self
            .inbox
            .range((user, start)..=(user, u64::MAX))
            .map_err(backend)?
            .take(limit)
        {
            let (k, v) = entry.map_err(backend)?;
            let (channel, id) = v.value();
            out.push((k.value().1, channel.to_string(), id));
        }
        // The run that holds `start`, if one does, and every run after it.
        let first_run = match self
            .inbox_runs
            .range((user, 0)..=(user, start))
            .map_err(backend)?
            .next_back()
        {
            Some(entry) => entry.map_err(backend)?.0.value().1,
            None => start,
        };
        for entry in self
            .inbox_runs
            .range((user, first_run)..=(user, u64::MAX))
            .map_err(backend)?
        {
            if out.len() >= limit {
                return Ok(out);
            }
            let (k, v) = entry.map_err(backend)?;
            let first = k.value().1;
            let run = decode_run(v.value()).ok_or_else(|| {
                StoreError::Backend(format!("damaged inbox run ({user}, {first})"))
            })?;
            for (i, (channel, id)) in run.into_iter().enumerate() {
                let seq = first + i as u64;
                if seq >= start && out.len() < limit {
                    out.push((seq, channel.to_string(), id));
                }
            }
        }
        if let Some((first, entries)) = self.pending_inbox.get(&user) {
            for (i, (channel, id)) in entries.iter().enumerate() {
                let seq = first + i as u64;
                if seq >= start && out.len() < limit {
                    out.push((seq, channel.to_string(), *id));
                }
            }
        }
        Ok(out)
    }

    /// Writes the heads that changed and the pending inbox entries to their
    /// tables.
    fn flush(&mut self) -> StoreResult<()> {
        let mut buf = Vec::new();
        for (user, (first, entries)) in self.pending_inbox.drain() {
            buf.clear();
            encode_run(&mut buf, &entries);
            self.inbox_runs
                .insert((user, first), buf.as_slice())
                .map_err(backend)?;
        }
        for (channel, (id, changed)) in self.channel_heads.iter_mut() {
            if std::mem::take(changed) {
                self.heads.insert(channel.as_str(), *id).map_err(backend)?;
            }
        }
        for (user, (seq, changed)) in self.inbox_head_cache.iter_mut() {
            if std::mem::take(changed) {
                self.inbox_heads.insert(*user, *seq).map_err(backend)?;
            }
        }
        Ok(())
    }
}

/// The accept tables of one batch's transaction, if open. Any other write
/// closes them first (a table cannot be open twice in one transaction), and
/// they are closed before the commit.
pub(super) struct OpenTables<'t> {
    open: Option<AcceptTables<'t>>,
}

impl<'t> OpenTables<'t> {
    pub(super) fn new() -> Self {
        OpenTables { open: None }
    }

    pub(super) fn accept(
        &mut self,
        txn: &'t WriteTransaction,
    ) -> StoreResult<&mut AcceptTables<'t>> {
        if self.open.is_none() {
            self.open = Some(AcceptTables {
                dedupe: txn.open_table(DEDUPE).map_err(backend)?,
                dedupe_by_ts: txn.open_table(DEDUPE_BY_TS).map_err(backend)?,
                groups: txn.open_table(GROUPS).map_err(backend)?,
                users: txn.open_table(USERS).map_err(backend)?,
                heads: txn.open_table(CHANNEL_HEADS).map_err(backend)?,
                messages: txn.open_table(MESSAGES).map_err(backend)?,
                inbox: txn.open_table(INBOX).map_err(backend)?,
                inbox_runs: txn.open_table(INBOX_RUNS).map_err(backend)?,
                inbox_heads: txn.open_table(INBOX_HEADS).map_err(backend)?,
                last_active: txn.open_table(LAST_ACTIVE).map_err(backend)?,
                channel_heads: HashMap::new(),
                inbox_head_cache: HashMap::new(),
                pending_inbox: HashMap::new(),
                groups_read: HashMap::new(),
                users_seen: Default::default(),
            });
        }
        Ok(self.open.as_mut().expect("just opened"))
    }

    /// Writes the cached heads and closes the accept tables (if open): before
    /// another write opens one of them, and before every commit.
    pub(super) fn close(&mut self) -> StoreResult<()> {
        if let Some(mut open) = self.open.take() {
            open.flush()?;
        }
        Ok(())
    }
}

/// The part of `accept` that runs in the writer's transaction.
pub(super) fn accept_in(t: &mut AcceptTables<'_>, msg: &OwnedMessage) -> StoreResult<Accepted> {
    let seen = t
        .dedupe
        .get((msg.from, msg.client_msg_id.as_str()))
        .map_err(backend)?
        .map(|v| {
            let (channel, id, seq) = v.value();
            (channel.to_string(), id, seq)
        });
    if let Some((channel, id, sender_seq)) = seen {
        let ts = t
            .messages
            .get((channel.as_str(), id))
            .map_err(backend)?
            .map_or(0, |v| v.value().2);
        return Ok(Accepted {
            channel,
            id,
            ts,
            sender_seq,
            recipients: Vec::new(),
            duplicate: true,
        });
    }
    // A group's members as they are now, in the same transaction as the append.
    let group_members;
    let members: &[UserId] = match crate::store::group_of(&msg.channel) {
        Some(g) => {
            group_members = t.group_members(g)?;
            if !group_members.contains(&msg.from) {
                return Err(StoreError::NotMember);
            }
            // Each member's account was checked when it joined, and accounts
            // are never removed.
            &group_members
        }
        None => {
            for &m in &msg.members {
                if !t.user_exists(m)? {
                    return Err(StoreError::NotFound);
                }
            }
            &msg.members
        }
    };
    let channel = msg.channel.as_str();
    let id = t.channel_head(channel)? + 1;
    t.messages
        .insert(
            (channel, id),
            (
                msg.from,
                msg.from_device,
                msg.ts,
                msg.client_msg_id.as_str(),
                msg.text.as_str(),
            ),
        )
        .map_err(backend)?;
    match t.channel_heads.get_mut(channel) {
        Some(head) => *head = (id, true),
        None => {
            t.channel_heads.insert(channel.to_string(), (id, true));
        }
    }
    let mut recipients = Vec::with_capacity(members.len());
    let shared: Arc<str> = Arc::from(channel);
    for &m in members {
        let seq = t.inbox_head(m)? + 1;
        t.inbox_head_cache.insert(m, (seq, true));
        let (first, entries) = t
            .pending_inbox
            .entry(m)
            .or_insert_with(|| (seq, Vec::new()));
        debug_assert_eq!(*first + entries.len() as u64, seq);
        entries.push((shared.clone(), id));
        recipients.push((m, seq));
    }
    let sender_seq = recipients
        .iter()
        .find(|(m, _)| *m == msg.from)
        .map_or(0, |&(_, s)| s);
    t.dedupe
        .insert(
            (msg.from, msg.client_msg_id.as_str()),
            (channel, id, sender_seq),
        )
        .map_err(backend)?;
    t.dedupe_by_ts
        .insert((msg.ts, msg.from, msg.client_msg_id.as_str()), ())
        .map_err(backend)?;
    Ok(Accepted {
        channel: msg.channel.clone(),
        id,
        ts: msg.ts,
        sender_seq,
        recipients,
        duplicate: false,
    })
}

/// [`NewMessage`] with owned fields, to cross into the writer thread.
pub(super) struct OwnedMessage {
    pub(super) channel: String,
    pub(super) members: Vec<UserId>,
    pub(super) from: UserId,
    pub(super) from_device: DeviceId,
    pub(super) client_msg_id: String,
    pub(super) text: String,
    pub(super) ts: Millis,
}

/// Most records one [`crate::store::Store::expire`] call removes per kind, so
/// that it holds the writer (and every accept behind it) only briefly; the next
/// sweep goes on where it stopped.
pub(super) const EXPIRE_CHUNK: usize = 50_000;

/// Removes expired tokens and old dedupe records (at most a chunk of each).
pub(super) fn expire_in(
    txn: &WriteTransaction,
    now: u64,
    dedupe_before: u64,
) -> StoreResult<crate::store::Expired> {
    let mut tokens = txn.open_table(TOKENS).map_err(backend)?;
    let mut stale = Vec::new();
    for entry in tokens.iter().map_err(backend)? {
        let (k, _) = entry.map_err(backend)?;
        if crate::auth::token_expired(k.value(), now) {
            stale.push(k.value().to_string());
            if stale.len() >= EXPIRE_CHUNK {
                break;
            }
        }
    }
    for t in &stale {
        tokens.remove(t.as_str()).map_err(backend)?;
    }
    let mut by_ts = txn.open_table(DEDUPE_BY_TS).map_err(backend)?;
    let mut old = Vec::new();
    for entry in by_ts
        .range((0, 0, "")..(dedupe_before, 0, ""))
        .map_err(backend)?
        .take(EXPIRE_CHUNK)
    {
        let (k, _) = entry.map_err(backend)?;
        let (ts, from, cmid) = k.value();
        old.push((ts, from, cmid.to_string()));
    }
    let mut dedupe = txn.open_table(DEDUPE).map_err(backend)?;
    for (ts, from, cmid) in &old {
        by_ts.remove((*ts, *from, cmid.as_str())).map_err(backend)?;
        dedupe.remove((*from, cmid.as_str())).map_err(backend)?;
    }
    Ok(crate::store::Expired {
        tokens: stale.len() as u64,
        dedupe: old.len() as u64,
    })
}

/// Packs inbox entries: per entry, the channel's length (`u16`), its bytes and
/// the message id (`u64`), little-endian.
fn encode_run(out: &mut Vec<u8>, entries: &[InboxEntry]) {
    for (channel, id) in entries {
        out.extend_from_slice(&(channel.len() as u16).to_le_bytes());
        out.extend_from_slice(channel.as_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
}

/// Unpacks [`encode_run`]'s entries; `None` if the bytes do not parse.
fn decode_run(mut bytes: &[u8]) -> Option<Vec<(&str, u64)>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let len = u16::from_le_bytes(bytes.get(..2)?.try_into().ok()?) as usize;
        let channel = std::str::from_utf8(bytes.get(2..2 + len)?).ok()?;
        let id = u64::from_le_bytes(bytes.get(2 + len..10 + len)?.try_into().ok()?);
        out.push((channel, id));
        bytes = &bytes[10 + len..];
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_read_back_and_damage_is_refused() {
        let entries: Vec<InboxEntry> = vec![
            (Arc::from("g:7"), 3),
            (Arc::from("dm:1:2"), 9),
            (Arc::from(""), 0),
        ];
        let mut buf = Vec::new();
        encode_run(&mut buf, &entries);
        let back = decode_run(&buf).unwrap();
        assert_eq!(back, [("g:7", 3), ("dm:1:2", 9), ("", 0)]);
        assert!(decode_run(&buf[..buf.len() - 1]).is_none());
    }
}
