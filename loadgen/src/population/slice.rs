//! A process's slice of the population: the users it drives and what they
//! need, indexed as in the whole population.
//!
//! With several generator processes (workers on this machine, shards on
//! several), each holds only its share: its users (`index % count`, a
//! [`Share`]) with their devices and tokens, their groups (channel and
//! members), and the server ids of the friends they write to. Its memory is
//! then O(its devices) plus 16 bytes per friend outside the slice, not
//! O(population). The process that provisioned the population writes one
//! slice file per process ([`Population::slice`]); each process loads its own.
//!
//! Users and groups keep their *global* indices (a [`Sparse`] maps them to
//! what is held), because the schedule is drawn over the whole population in
//! every process and names users by global index. Devices are numbered
//! locally (a device index only ever means something in the process that
//! drives it).

use std::ops::{Index, IndexMut};

use serde::{Deserialize, Serialize};

use super::{Group, Population, User};

/// A share of the users: those whose index is `index` modulo `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    pub index: u32,
    pub count: u32,
}

impl Share {
    /// Every user (one process).
    pub const WHOLE: Share = Share { index: 0, count: 1 };

    pub fn owns(self, user: u32) -> bool {
        user % self.count == self.index
    }

    /// Part `j` of `m` of this share: users `index + count * j` modulo
    /// `count * m` (worker J of M inside shard I of N).
    pub fn split(self, j: u32, m: u32) -> Share {
        Share {
            index: self.index + self.count * j,
            count: self.count * m,
        }
    }

    pub fn is_whole(self) -> bool {
        self.count == 1
    }

    /// `I/N`, as `--shard` and the worker environment write it.
    pub fn parse(s: &str) -> Option<Share> {
        let (i, n) = s.split_once('/')?;
        let (index, count) = (i.trim().parse().ok()?, n.trim().parse().ok()?);
        (count > 0 && index < count).then_some(Share { index, count })
    }
}

impl std::fmt::Display for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Items by global index, of which a slice holds some.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Sparse<T> {
    /// Items in the whole population.
    total: u32,
    /// Global indices of `held`, ascending; empty when `held` is everything.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    index: Vec<u32>,
    held: Vec<T>,
}

impl<T> Sparse<T> {
    /// Every item of the population, in order.
    pub fn whole(items: Vec<T>) -> Self {
        Sparse {
            total: items.len() as u32,
            index: Vec::new(),
            held: items,
        }
    }

    fn local(&self, i: usize) -> Option<usize> {
        if self.index.is_empty() {
            (i < self.held.len()).then_some(i)
        } else {
            self.index.binary_search(&(i as u32)).ok()
        }
    }

    /// Items in the whole population (held or not).
    pub fn len(&self) -> usize {
        self.total as usize
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    pub fn get(&self, i: usize) -> Option<&T> {
        self.local(i).map(|l| &self.held[l])
    }

    /// Adds the next item of a whole population.
    pub fn push(&mut self, item: T) {
        self.held.push(item);
        self.total += 1;
    }

    /// The held items.
    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.held.iter()
    }

    pub fn iter_mut(&mut self) -> std::slice::IterMut<'_, T> {
        self.held.iter_mut()
    }

    /// The held items with their global indices.
    pub fn indexed(&self) -> impl Iterator<Item = (u32, &T)> {
        self.held.iter().enumerate().map(|(l, t)| {
            let g = if self.index.is_empty() {
                l as u32
            } else {
                self.index[l]
            };
            (g, t)
        })
    }

    /// How many are held.
    pub fn held(&self) -> usize {
        self.held.len()
    }
}

impl<T> Index<usize> for Sparse<T> {
    type Output = T;
    fn index(&self, i: usize) -> &T {
        match self.local(i) {
            Some(l) => &self.held[l],
            None => panic!("item {i} is not in this slice of the population"),
        }
    }
}

impl<T> IndexMut<usize> for Sparse<T> {
    fn index_mut(&mut self, i: usize) -> &mut T {
        match self.local(i) {
            Some(l) => &mut self.held[l],
            None => panic!("item {i} is not in this slice of the population"),
        }
    }
}

impl Population {
    /// The server id of user `u`: one this slice holds, or a friend of one.
    pub fn user_id(&self, u: u32) -> u64 {
        match self.users.get(u as usize) {
            Some(user) => user.id,
            None => self
                .others
                .binary_search_by_key(&u, |&(g, _)| g)
                .map_or(0, |i| self.others[i].1),
        }
    }

    /// The slice a process driving `share` needs: its users (their devices
    /// renumbered from 0), their groups, and the ids of their other friends.
    pub fn slice(&self, share: Share) -> Population {
        let mut users = Vec::new();
        let mut index = Vec::new();
        let mut devices = Vec::new();
        let mut groups: Vec<u32> = Vec::new();
        let mut others: Vec<(u32, u64)> = Vec::new();
        for (u, user) in self.users.indexed() {
            if !share.owns(u) {
                continue;
            }
            let mut mine = User {
                id: user.id,
                devices: Vec::with_capacity(user.devices.len()),
                friends: user.friends.clone(),
                groups: user.groups.clone(),
            };
            for &d in &user.devices {
                mine.devices.push(devices.len() as u32);
                devices.push(self.devices[d as usize].clone());
            }
            groups.extend_from_slice(&user.groups);
            others.extend(
                user.friends
                    .iter()
                    .filter(|&&f| !share.owns(f))
                    .map(|&f| (f, self.user_id(f))),
            );
            index.push(u);
            users.push(mine);
        }
        groups.sort_unstable();
        groups.dedup();
        others.sort_unstable();
        others.dedup();
        let held: Vec<Group> = groups
            .iter()
            .map(|&g| self.groups[g as usize].clone())
            .collect();
        Population {
            users: Sparse {
                total: self.users.total,
                index,
                held: users,
            },
            devices,
            groups: Sparse {
                total: self.groups.total,
                index: groups,
                held,
            },
            friendships: Vec::new(),
            others,
            ws_url: self.ws_url.clone(),
            servers: self.servers.clone(),
            nonce: self.nonce.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Population as Spec;

    fn whole() -> Population {
        let spec = Spec {
            users: 40,
            devices: vec![(1, 0.5), (2, 0.3), (3, 0.2)],
            friends: 4.0,
            groups: 6,
            group_size: (3, 6),
        };
        let mut pop = crate::population::plan(&spec, 3);
        for (u, user) in pop.users.iter_mut().enumerate() {
            user.id = 1000 + u as u64;
        }
        for (d, dev) in pop.devices.iter_mut().enumerate() {
            dev.token = format!("t{d}");
        }
        pop
    }

    /// Every user is in exactly one slice, with its devices (tokens intact),
    /// its groups and the ids of all its friends; nothing else is held.
    #[test]
    fn slices_hold_their_users_and_only_what_those_need() {
        let pop = whole();
        let n = 3;
        let slices: Vec<Population> = (0..n)
            .map(|i| pop.slice(Share { index: i, count: n }))
            .collect();
        let held: usize = slices.iter().map(|s| s.users.held()).sum();
        assert_eq!(held, pop.users.len(), "each user once");
        let devices: usize = slices.iter().map(|s| s.devices.len()).sum();
        assert_eq!(devices, pop.devices.len());
        for (i, s) in slices.iter().enumerate() {
            assert_eq!(s.users.len(), 40, "indices stay global");
            for (u, user) in s.users.indexed() {
                assert_eq!(u % n, i as u32);
                let whole_user = &pop.users[u as usize];
                assert_eq!(user.id, whole_user.id);
                let tokens: Vec<&str> = user
                    .devices
                    .iter()
                    .map(|&d| s.devices[d as usize].token.as_str())
                    .collect();
                let expected: Vec<&str> = whole_user
                    .devices
                    .iter()
                    .map(|&d| pop.devices[d as usize].token.as_str())
                    .collect();
                assert_eq!(tokens, expected);
                for &f in &user.friends {
                    assert_eq!(s.user_id(f), pop.users[f as usize].id, "friend {f}");
                }
                for &g in &user.groups {
                    assert_eq!(s.groups[g as usize].members, pop.groups[g as usize].members);
                }
                assert!(user
                    .devices
                    .iter()
                    .all(|&d| s.devices[d as usize].user == u));
            }
            assert!(s.others.iter().all(|&(u, _)| u % n != i as u32));
            assert!(s.groups.held() <= pop.groups.len());
        }
        // A slice of a slice: worker 1 of 2 inside shard 2 of 3.
        let inner = slices[2].slice(Share { index: 2, count: 3 }.split(1, 2));
        for (u, user) in inner.users.indexed() {
            assert_eq!(u % 6, 5);
            for &f in &user.friends {
                assert_eq!(inner.user_id(f), pop.users[f as usize].id);
            }
        }
    }

    #[test]
    fn shares_parse_and_split() {
        assert_eq!(Share::parse("1/4"), Some(Share { index: 1, count: 4 }));
        assert_eq!(Share::parse("4/4"), None);
        assert_eq!(Share::parse("0/0"), None);
        assert_eq!(Share::parse("x"), None);
        let s = Share { index: 1, count: 4 }.split(2, 3);
        assert_eq!(
            s,
            Share {
                index: 9,
                count: 12
            }
        );
        assert!((0..100).filter(|&u| s.owns(u)).all(|u| u % 4 == 1));
        assert_eq!(Share::WHOLE.to_string(), "0/1");
    }
}
