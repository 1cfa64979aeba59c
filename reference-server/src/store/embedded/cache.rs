//! What a send reads before its accept, kept in memory: a group's members and
//! which accounts exist.
//!
//! Every send checks its channel's members (the chat service answers
//! `forbidden` or `not_found` before queueing the accept), and on the embedded
//! backend each such read was a blocking-pool task with its own read
//! transaction, competing for the same two cores as the writer thread that
//! sets the ceiling. The embedded backend cannot run in a cluster: this process
//! is the database's only writer, so it sees every change and can cache safely.
//!
//! - Accounts are never removed and ids never reused, so "user N exists", once
//!   read, stays true.
//! - A group's members change only through this store's writer. Each change
//!   drops the group's entry *after* its commit, from the writer thread (so a
//!   caller cancelled mid-write cannot skip it), and bumps an epoch; a read
//!   that started before that bump does not store what it read, since it may
//!   have seen the members before the change.
//!
//! Both maps are bounded: when one is full it is emptied and refills from reads.
//! A stale answer would not break anything stored: the accept reads the group's
//! members again inside its own transaction (see `tables::accept_in`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::protocol::UserId;

/// Most groups whose members are kept.
const MAX_GROUPS: usize = 100_000;
/// Most accounts whose existence is kept.
const MAX_USERS: usize = 1_000_000;

#[derive(Default)]
pub(super) struct Cache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Bumped by every membership change.
    epoch: u64,
    groups: HashMap<u64, Arc<[UserId]>>,
    users: HashSet<UserId>,
}

impl Cache {
    /// The epoch to hand back to [`Cache::put_group`] after a read.
    pub(super) fn epoch(&self) -> u64 {
        self.inner.lock().epoch
    }

    pub(super) fn group(&self, group: u64) -> Option<Arc<[UserId]>> {
        self.inner.lock().groups.get(&group).cloned()
    }

    /// Keeps members read from a transaction begun after `epoch` was taken,
    /// unless a membership change has committed since.
    pub(super) fn put_group(&self, group: u64, members: &[UserId], epoch: u64) {
        let mut inner = self.inner.lock();
        if inner.epoch != epoch {
            return;
        }
        if inner.groups.len() >= MAX_GROUPS {
            inner.groups.clear();
        }
        inner.groups.insert(group, members.into());
    }

    /// Called after a change of the group's members has committed (or failed).
    pub(super) fn changed(&self, group: u64) {
        let mut inner = self.inner.lock();
        inner.epoch += 1;
        inner.groups.remove(&group);
    }

    pub(super) fn user_known(&self, user: UserId) -> bool {
        self.inner.lock().users.contains(&user)
    }

    pub(super) fn put_user(&self, user: UserId) {
        let mut inner = self.inner.lock();
        if inner.users.len() >= MAX_USERS {
            inner.users.clear();
        }
        inner.users.insert(user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_read_before_a_change_are_not_kept() {
        let cache = Cache::default();
        let before = cache.epoch();
        cache.changed(7);
        cache.put_group(7, &[1, 2], before);
        assert!(cache.group(7).is_none(), "a read older than the change");
        let now = cache.epoch();
        cache.put_group(7, &[1, 2, 3], now);
        assert_eq!(cache.group(7).as_deref(), Some(&[1, 2, 3][..]));
        cache.changed(7);
        assert!(cache.group(7).is_none(), "a change drops the entry");
    }
}
