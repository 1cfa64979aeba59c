//! What the scheduler asks of a device ([`Cmd`]: a send or an abrupt drop), and
//! how a send travels: its `client_msg_id` carries the scheduled and the actual
//! send time, so a receiver computes both latencies without a shared map.
//!
//! The lowest layer of the engine: the device state, the slots and the
//! scheduler all speak these types, and this module imports none of them.

use std::hash::{Hash, Hasher};

/// Where a scheduled message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum To {
    /// A friend, by user index.
    User(u32),
    /// A group, by group index.
    Group(u32),
}

/// One scheduled send.
#[derive(Debug, Clone)]
pub struct SendJob {
    /// When the open-model schedule wanted it sent (Unix µs).
    pub sched_us: u64,
    pub to: To,
    pub len: u32,
    /// Unique per run: keeps `client_msg_id` unique per sender.
    pub n: u64,
    /// In a cluster, the node of its first write (the `client_msg_id`'s
    /// fourth part): kept for a resend from another node after a failover, so
    /// the resend carries the same `client_msg_id`, the server's idempotency key.
    pub node: Option<u16>,
}

#[derive(Debug)]
pub enum Cmd {
    Send(SendJob),
    /// Drop the connection abruptly (no close frame) and reconnect later.
    Drop,
}

/// A compact, deterministic key for a channel id (the audit compares keys, not
/// strings, to keep per-device records small).
pub fn chan_key(channel: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    channel.hash(&mut h);
    h.finish()
}

/// `client_msg_id` carrying the scheduled and the actual send time, so a
/// receiver computes both latencies without a shared map: `S-A-N` with S and A
/// in Unix µs, N the run-unique send number. In a cluster a fourth part, `-K`,
/// names the node the sending device is on ([`decode_node`]).
pub fn encode_msg_id(sched_us: u64, actual_us: u64, n: u64) -> String {
    format!("{sched_us}-{actual_us}-{n}")
}

/// The scheduled and actual send times of a `client_msg_id` made by
/// [`encode_msg_id`]; `None` for one this generator did not make.
pub fn decode_msg_id(id: &str) -> Option<(u64, u64)> {
    let mut parts = id.splitn(3, '-');
    let sched = parts.next()?.parse().ok()?;
    let actual = parts.next()?.parse().ok()?;
    parts.next()?;
    Some((sched, actual))
}

/// The send number N of a `client_msg_id` made by [`encode_msg_id`]: with the
/// sender, what identifies one logical send however often it was resent (or
/// re-stamped), so the audit finds one send stored under two ids.
pub fn send_number(id: &str) -> Option<u64> {
    let mut parts = id.splitn(4, '-');
    parts.next()?.parse::<u64>().ok()?;
    parts.next()?.parse::<u64>().ok()?;
    parts.next()?.parse().ok()
}

/// The sending device's node (`S-A-N-K`), when the sender was in a cluster.
pub fn decode_node(id: &str) -> Option<u16> {
    let mut parts = id.splitn(4, '-');
    parts.next()?.parse::<u64>().ok()?;
    parts.next()?.parse::<u64>().ok()?;
    parts.next()?.parse::<u64>().ok()?;
    parts.next()?.parse().ok()
}

/// Text of `len` ASCII characters, from one shared pattern.
pub fn text_of(len: u32) -> String {
    const PATTERN: &[u8] = b"the quick brown fox jumps over the lazy dog 0123456789 ";
    let len = len as usize;
    let mut s = String::with_capacity(len);
    while s.len() < len {
        let take = (len - s.len()).min(PATTERN.len());
        s.push_str(std::str::from_utf8(&PATTERN[..take]).unwrap_or("x"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msg_ids_carry_both_send_times() {
        let id = encode_msg_id(1_700_000_000_000_000, 1_700_000_000_250_000, 42);
        assert!(id.len() <= 64);
        assert_eq!(
            decode_msg_id(&id),
            Some((1_700_000_000_000_000, 1_700_000_000_250_000))
        );
        assert_eq!(decode_msg_id("someone-else"), None);
        assert_eq!(send_number(&id), Some(42));
        assert_eq!(send_number("a-b-c"), None);
        assert_eq!(decode_node(&id), None, "one server: no node");
        // In a cluster the sender's node follows.
        assert_eq!(send_number("1-2-42-3"), Some(42));
        assert_eq!(decode_msg_id("1-2-42-3"), Some((1, 2)));
        assert_eq!(decode_node("1-2-42-3"), Some(3));
        assert_eq!(text_of(130).len(), 130);
    }
}
