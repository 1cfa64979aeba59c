//! The Redis backend's key layout: every key carries a hash tag (`{...}`), so the
//! keys one script touches share one Redis Cluster slot, and the same code runs
//! against one Redis or a Redis Cluster.
//!
//! Three kinds of slot: a user's (`{u:ID}`: account, inbox, dedupe, devices,
//! friends), a channel's (`{c:CHANNEL}`: head, messages, pending fan-out, channel
//! dedupe; for a group channel `g:N` also the group's name and members), and
//! single-key ones (a username, a token, the id counters). `docs/storage.md` has the table.

use crate::protocol::UserId;

/// Builds key names under one prefix (`?prefix=`, `cs` by default).
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_string(),
        }
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `P:{u:ID}`: hash `name`, `hash`, `active` (its existence is the account's).
    pub(crate) fn user(&self, id: UserId) -> String {
        format!("{}:{{u:{id}}}", self.prefix)
    }

    /// `P:{u:ID}:PART`: `ih` (inbox head), `ib` (inbox), `ic` (per channel, the last
    /// id appended and its seq), `dd` (dedupe), `dt` (the dedupe records' ts),
    /// `dev` (named devices), `fr` (friends).
    pub(crate) fn user_part(&self, id: UserId, part: &str) -> String {
        format!("{}:{{u:{id}}}:{part}", self.prefix)
    }

    /// The five keys of one member's half of an accept: ih, ib, ic, dd, dt.
    pub(crate) fn inbox_keys(&self, id: UserId) -> Vec<String> {
        ["ih", "ib", "ic", "dd", "dt"]
            .iter()
            .map(|part| self.user_part(id, part))
            .collect()
    }

    /// `P:{c:CHANNEL}:PART`: `head` (highest id), `msgs` (id -> JSON), `pend`
    /// (ids not yet in every inbox), `pm` (their members), `dd` (channel dedupe),
    /// `dt` (the channel dedupe records' ts).
    pub(crate) fn channel(&self, channel: &str, part: &str) -> String {
        format!("{}:{{c:{channel}}}:{part}", self.prefix)
    }

    /// The six keys of the channel's half of an accept: head, msgs, pend, pm, dd, dt.
    pub(crate) fn accept_keys(&self, channel: &str) -> Vec<String> {
        ["head", "msgs", "pend", "pm", "dd", "dt"]
            .iter()
            .map(|part| self.channel(channel, part))
            .collect()
    }

    /// `P:{c:g:N}:name` (string; the group exists while it does) and
    /// `P:{c:g:N}:m` (list): in the slot of the group's channel `g:N`, so that a
    /// script of the channel can read the members in the same atomic step.
    pub(crate) fn group_keys(&self, group: u64) -> Vec<String> {
        vec![
            format!("{}:{{c:g:{group}}}:name", self.prefix),
            format!("{}:{{c:g:{group}}}:m", self.prefix),
        ]
    }

    /// `P:{name:USERNAME}`: the account id of a username.
    pub(crate) fn username(&self, name: &str) -> String {
        format!("{}:{{name:{name}}}", self.prefix)
    }

    /// `P:tok:TOKEN`: `user:device`.
    pub(crate) fn token(&self, token: &str) -> String {
        format!("{}:tok:{token}", self.prefix)
    }

    /// `P:{next}`: hash of counters `user`, `device`, `group`.
    pub(crate) fn counters(&self) -> String {
        format!("{}:{{next}}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash tag Redis Cluster hashes: the first `{...}` with something inside.
    fn tag(key: &str) -> &str {
        let open = key.find('{').unwrap();
        let close = open + key[open..].find('}').unwrap();
        &key[open + 1..close]
    }

    #[test]
    fn one_operation_keys_share_a_tag() {
        let k = Keys::new("cs");
        let tags = |keys: Vec<String>| {
            keys.iter()
                .map(|key| tag(key).to_string())
                .collect::<Vec<_>>()
        };
        assert!(tags(k.accept_keys("dm:1:2"))
            .iter()
            .all(|t| t == "c:dm:1:2"));
        assert!(tags(k.inbox_keys(7)).iter().all(|t| t == "u:7"));
        assert_eq!(tag(&k.user(7)), "u:7");
        assert!(tags(k.group_keys(3)).iter().all(|t| t == "c:g:3"));
        assert_eq!(tag(&k.channel("g:3", "head")), "c:g:3");
    }
}
