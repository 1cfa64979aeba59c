//! The dedupe window on Redis: records expire without a global index.
//!
//! The other backends delete old records in [`crate::store::Store::expire`] through
//! one index by ts; Redis Cluster has no key spanning slots to hold one. So each
//! dedupe hash has a sorted set of its records' ts beside it, in its own slot
//! (`P:{u:ID}:dt` beside `:dd`, `P:{c:CHANNEL}:dt` beside `:dd`), and the accept
//! scripts do the removing (`dedupe.lua`): each one first removes up to 64 of its
//! sender's and channel's records older than the cutoff, and never answers from an
//! expired record it meets. `expire` only hands them the cutoff (records of
//! messages sent before it are expired) and a TTL for those keys, the window plus
//! an hour, renewed by every record written: a user or channel that stops sending
//! has its whole record set dropped by Redis a window after its last send. Until
//! the first `expire` call (the server makes one at start-up) nothing expires.

use std::sync::atomic::{AtomicU64, Ordering};

use fred::prelude::Value;

/// Slack on the keys' TTL past the window: it counts from Redis's clock while a
/// record's ts comes from a chat node's, and the TTL must never cut a window short.
const TTL_SLACK_MS: u64 = 3_600_000;

/// The cutoff and TTL of the last `expire` call, and what the scripts removed since.
#[derive(Debug, Default)]
pub(crate) struct DedupeWindow {
    cutoff: AtomicU64,
    ttl_ms: AtomicU64,
    removed: AtomicU64,
}

impl DedupeWindow {
    /// `expire(now, before)`: records with a ts below `before` are expired from now
    /// on. Returns the records the scripts removed since the previous call.
    pub(crate) fn set(&self, now: u64, before: u64) -> u64 {
        self.cutoff.fetch_max(before, Ordering::Relaxed);
        let window = now.saturating_sub(before);
        self.ttl_ms
            .store(window.saturating_add(TTL_SLACK_MS), Ordering::Relaxed);
        self.removed.swap(0, Ordering::Relaxed)
    }

    /// The scripts' cutoff and TTL arguments ('0': none yet).
    pub(crate) fn args(&self) -> [Value; 2] {
        [&self.cutoff, &self.ttl_ms].map(|v| Value::from(v.load(Ordering::Relaxed).to_string()))
    }

    /// A dedupe record `channel\nid\nseq\nts` of a message sent before the cutoff.
    pub(crate) fn is_expired(&self, record: &str) -> bool {
        let ts = record
            .rsplit('\n')
            .next()
            .and_then(|t| t.parse::<u64>().ok());
        ts.is_some_and(|ts| ts < self.cutoff.load(Ordering::Relaxed))
    }

    /// Counts records a script removed.
    pub(crate) fn expired(&self, n: u64) {
        self.removed.fetch_add(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_expires_below_the_cutoff_only() {
        let w = DedupeWindow::default();
        assert!(!w.is_expired("dm:1:2\n1\n1\n1000"), "no cutoff yet");
        assert_eq!(w.args().map(|v| v.as_string().unwrap()), ["0", "0"]);
        w.expired(3);
        assert_eq!(w.set(10_000, 2_000), 3);
        assert_eq!(w.set(10_000, 2_000), 0);
        assert!(w.is_expired("dm:1:2\n1\n1\n1999"));
        assert!(!w.is_expired("dm:1:2\n1\n1\n2000"));
        assert_eq!(
            w.args().map(|v| v.as_string().unwrap()),
            ["2000", (8_000 + TTL_SLACK_MS).to_string().as_str()]
        );
        // A late call with an older cutoff does not bring records back.
        w.set(9_000, 1_000);
        assert!(w.is_expired("dm:1:2\n1\n1\n1999"));
    }
}
