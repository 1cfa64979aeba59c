//! Sends whose outcome the server does not know, and their fan-out on resend.
//!
//! When storage fails an accept with a backend error, the write may still have
//! committed (the connection dropped after the commit, say): the sender saw an
//! error, and nobody got the message live. The client resends with the same
//! `client_msg_id` and is answered from the dedupe record as a duplicate, which
//! normally fans out nothing (the first send did). So this node remembers the
//! senders and ids of its failed accepts (a bounded set, oldest forgotten first),
//! and when one of them comes back as a duplicate it fans the stored message out
//! after all, with each recipient's inbox seq found by reading the newest entries
//! of its inbox. A resend that reaches another node is not covered: its
//! recipients get the message by the seq gap at their next message, or by sync.

use std::collections::{HashSet, VecDeque};

use parking_lot::Mutex;

use crate::protocol::{MessageId, Seq, UserId};
use crate::store::{Store, StoreResult};

/// Failed accepts remembered at once; past it the oldest is forgotten.
const REMEMBERED: usize = 10_000;
/// How far back a recipient's inbox is searched for the message.
const INBOX_WINDOW: u64 = 256;

type Key = (UserId, String);

#[derive(Default)]
pub struct Uncertain {
    keys: Mutex<(HashSet<Key>, VecDeque<Key>)>,
}

impl Uncertain {
    /// Remembers that an accept of `(sender, client_msg_id)` failed.
    pub fn note(&self, sender: UserId, client_msg_id: &str) {
        let key = (sender, client_msg_id.to_string());
        let mut keys = self.keys.lock();
        if keys.0.insert(key.clone()) {
            keys.1.push_back(key);
            if keys.1.len() > REMEMBERED {
                if let Some(old) = keys.1.pop_front() {
                    keys.0.remove(&old);
                }
            }
        }
    }

    /// True (once) if an accept of `(sender, client_msg_id)` failed here before.
    pub fn take(&self, sender: UserId, client_msg_id: &str) -> bool {
        let key = (sender, client_msg_id.to_string());
        let mut keys = self.keys.lock();
        let found = keys.0.remove(&key);
        if found {
            keys.1.retain(|k| k != &key);
        }
        found
    }
}

/// `(member, that member's seq)` for each member whose inbox holds message
/// `(channel, id)` among its newest entries.
pub async fn recipients(
    store: &dyn Store,
    channel: &str,
    id: MessageId,
    members: &[UserId],
) -> StoreResult<Vec<(UserId, Seq)>> {
    let mut out = Vec::with_capacity(members.len());
    for &m in members {
        let head = store.inbox_head(m).await?;
        let since = head.saturating_sub(INBOX_WINDOW);
        let entries = store.inbox_after(m, since, INBOX_WINDOW as usize).await?;
        if let Some(e) = entries.iter().find(|e| e.channel == channel && e.id == id) {
            out.push((m, e.seq.unwrap_or(0)));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_noted_failure_is_taken_once_and_the_set_stays_bounded() {
        let u = Uncertain::default();
        u.note(1, "a");
        assert!(u.take(1, "a"));
        assert!(!u.take(1, "a"));
        for i in 0..(REMEMBERED + 5) {
            u.note(2, &i.to_string());
        }
        assert!(!u.take(2, "0"), "the oldest was forgotten");
        assert!(u.take(2, &(REMEMBERED + 4).to_string()));
        assert!(u.keys.lock().1.len() <= REMEMBERED);
    }
}
