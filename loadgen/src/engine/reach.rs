//! Which inboxes the audit reads: those a message could have reached.
//!
//! A message goes from an online user to one of its friends (a dm) or to one
//! of its groups. So an inbox can hold a message of this run only if its user
//! sent one, is a friend of a user who sent one, or shares a group with one.
//! Every process of a run draws every send's sender from the same global
//! schedule (whoever drives it), so each records the same [`Senders`], and
//! each can decide for its own users, from what its slice holds (their
//! friends, their groups' members), whether their inbox needs reading. A
//! million-account run with 2% online then reads the inboxes of the users
//! around the senders, not a million. Every pair the audit follows is still
//! checked: a message's members are all among the users read.

use crate::population::Population;

/// Every user (global index) that some send of the schedule came from.
#[derive(Debug, Clone, Default)]
pub struct Senders {
    bits: Vec<u64>,
}

impl Senders {
    pub fn insert(&mut self, u: u32) {
        let (word, bit) = (u as usize / 64, u % 64);
        if word >= self.bits.len() {
            self.bits.resize(word + 1, 0);
        }
        self.bits[word] |= 1 << bit;
    }

    pub fn contains(&self, u: u32) -> bool {
        self.bits
            .get(u as usize / 64)
            .is_some_and(|w| w & (1 << (u % 64)) != 0)
    }

    /// How many users sent.
    pub fn len(&self) -> usize {
        self.bits.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|&w| w == 0)
    }
}

/// Could a message of this run be in user `u`'s inbox? `u` must be held by
/// `pop` (a process's own user): its friends and its groups' members are.
pub fn could_receive(pop: &Population, u: u32, senders: &Senders) -> bool {
    if senders.contains(u) {
        return true;
    }
    let Some(user) = pop.users.get(u as usize) else {
        return true;
    };
    user.friends.iter().any(|&f| senders.contains(f))
        || user.groups.iter().any(|&g| {
            pop.groups
                .get(g as usize)
                .is_none_or(|g| g.members.iter().any(|&m| senders.contains(m)))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Population as Spec;

    #[test]
    fn only_senders_their_friends_and_group_mates_are_read() {
        let pop = crate::population::plan(
            &Spec {
                users: 300,
                devices: vec![(1, 1.0)],
                friends: 2.0,
                groups: 3,
                group_size: (3, 4),
            },
            5,
        );
        let mut senders = Senders::default();
        assert!(senders.is_empty());
        assert!((0..300).all(|u| !could_receive(&pop, u, &senders)));
        senders.insert(7);
        senders.insert(7);
        assert_eq!(senders.len(), 1);
        let read: Vec<u32> = (0..300)
            .filter(|&u| could_receive(&pop, u, &senders))
            .collect();
        let sender = &pop.users[7];
        let mut expected: Vec<u32> = vec![7];
        expected.extend(&sender.friends);
        for &g in &sender.groups {
            expected.extend(&pop.groups[g as usize].members);
        }
        expected.sort_unstable();
        expected.dedup();
        assert_eq!(read, expected);
        assert!(read.len() < 300 / 2, "read {} of 300", read.len());
    }
}
