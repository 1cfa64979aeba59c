//! What one simulated device knows about its inbox, kept across its
//! connections and parked in its slot while it is offline: the cursor (the
//! highest contiguous seq), the seqs seen above it, every message it holds
//! (for the audit), and its unacknowledged sends.
//!
//! Seqs are deduplicated with a bit set (one bit per inbox position), far
//! smaller than a hash set for the dense, small numbers seqs are.

use std::collections::BTreeSet;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::engine::command::SendJob;

/// A growable bit set over sequence numbers.
#[derive(Debug, Default, Clone)]
pub struct Bits(Vec<u64>);

impl Bits {
    pub fn get(&self, i: u64) -> bool {
        self.0
            .get((i / 64) as usize)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
    pub fn set(&mut self, i: u64) {
        let w = (i / 64) as usize;
        if w >= self.0.len() {
            self.0.resize(w + 1, 0);
        }
        self.0[w] |= 1 << (i % 64);
    }
}

/// A message a device holds: (channel key, id, seq).
pub type Rec = (u64, u64, u64);

#[derive(Debug)]
pub(crate) struct Pending {
    pub req: i64,
    pub job: SendJob,
    pub actual_us: u64,
}

/// What a device knows, kept across its connections (and parked while offline).
#[derive(Debug)]
pub struct DeviceState {
    /// Highest contiguous inbox seq received.
    pub cursor: u64,
    /// Seqs received above the cursor (holes below them).
    above: BTreeSet<u64>,
    pub(crate) seen: Bits,
    /// Every message this device holds: live, by sync, or its own acked sends.
    pub recs: Vec<Rec>,
    pub(crate) pending: Vec<Pending>,
    pub(crate) connections: u64,
    next_req: i64,
    pub(crate) rng: SmallRng,
}

impl DeviceState {
    pub fn new(seed: u64, d: u32) -> Self {
        DeviceState {
            cursor: 0,
            above: BTreeSet::new(),
            seen: Bits::default(),
            recs: Vec::new(),
            pending: Vec::new(),
            connections: 0,
            next_req: 1,
            rng: SmallRng::seed_from_u64(seed ^ (d as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        }
    }

    /// A fresh `req` for a client frame.
    pub fn req(&mut self) -> i64 {
        self.next_req += 1;
        self.next_req
    }

    /// Moves the cursor over a received seq.
    pub fn advance(&mut self, seq: u64) {
        if seq <= self.cursor {
            return;
        }
        self.above.insert(seq);
        while self.above.remove(&(self.cursor + 1)) {
            self.cursor += 1;
        }
    }

    /// A hole below a received seq is still open.
    pub fn has_gap(&self) -> bool {
        !self.above.is_empty()
    }

    /// A sync from the cursor answered in full, up to seq `high`: a seq below
    /// it that the server did not return does not exist, so the cursor moves
    /// past it (a message the server lost then shows in the audit, not as a
    /// device syncing forever).
    pub fn settle(&mut self, high: u64) {
        if high <= self.cursor {
            return;
        }
        self.cursor = high;
        let cursor = self.cursor;
        self.above.retain(|&s| s > cursor);
        while self.above.remove(&(self.cursor + 1)) {
            self.cursor += 1;
        }
    }

    /// `d` ±10%.
    pub fn jittered(&mut self, d: Duration) -> Duration {
        d.mul_f64(self.rng.random_range(0.9..1.1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_is_the_highest_contiguous_seq() {
        let mut st = DeviceState::new(1, 0);
        st.advance(1);
        st.advance(3);
        assert_eq!(st.cursor, 1);
        assert!(st.has_gap());
        st.advance(2);
        assert_eq!(st.cursor, 3);
        assert!(!st.has_gap());
        // Seq 5 arrives, 4 never does: a full sync answer up to 6 settles it.
        st.advance(5);
        st.settle(6);
        assert_eq!(st.cursor, 6);
        assert!(!st.has_gap());
        let mut b = Bits::default();
        b.set(130);
        assert!(b.get(130) && !b.get(129));
    }
}
