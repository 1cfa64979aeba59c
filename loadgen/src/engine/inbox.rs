//! What one simulated device knows about its inbox, kept across its
//! connections and parked in its slot while it is offline: the cursor (the
//! highest contiguous seq), how each seq reached it (live or by sync), and its
//! unacknowledged sends.
//!
//! Received seqs are two [`RangeSet`]s, `live` and `synced`: a handful of
//! ranges whatever the traffic, so a device's state does not grow with the
//! run, and the audit still knows for every (message, device) pair whether it
//! came live, by a sync, or not at all. Unacked sends are a queue in `req`
//! order (acks come back in that order), so an ack finds its send at the front
//! or by binary search, never by a scan.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::engine::command::SendJob;
use crate::engine::ranges::RangeSet;

/// A send written to the socket, waiting for its ack.
#[derive(Debug, Clone)]
pub struct Pending {
    pub req: i64,
    pub job: SendJob,
    /// When it was first written (Unix µs): carried in its `client_msg_id`.
    pub actual_us: u64,
}

/// How a seq reached the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The first copy.
    New,
    /// Already held (a sync repeating what came live, a late live copy).
    Held,
    /// A second live copy of a seq that already came live: a duplicate.
    Duplicate,
}

/// What a device knows, kept across its connections (and parked while offline).
#[derive(Debug)]
pub struct DeviceState {
    /// Highest contiguous inbox seq received (or settled past).
    pub cursor: u64,
    /// Seqs that came live (a `message` frame), or by the ack of its own send.
    pub live: RangeSet,
    /// Seqs that came in a `sync_batch` first.
    pub synced: RangeSet,
    pub connections: u64,
    /// When the server last ended a connection (a close, a reset): the
    /// catch-up after the reconnect is timed from here (`recovery_latency`).
    pub lost_at: Option<Instant>,
    pub rng: SmallRng,
}

/// A device's sends in flight and its `req` counter: in its slot, shared by
/// its task and the clock thread, which both write frames.
#[derive(Debug)]
pub struct Outbox {
    /// Sends written and not acked, `req` ascending.
    pub pending: VecDeque<Pending>,
    next_req: i64,
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox {
            pending: VecDeque::new(),
            next_req: 1,
        }
    }
}

impl Outbox {
    /// A fresh `req` for a client frame.
    pub fn req(&mut self) -> i64 {
        self.next_req += 1;
        self.next_req
    }

    /// Takes the pending send answered by `req`: the front one, almost always.
    pub fn take(&mut self, req: i64) -> Option<Pending> {
        if self.pending.front().is_some_and(|p| p.req == req) {
            return self.pending.pop_front();
        }
        let i = self.pending.binary_search_by_key(&req, |p| p.req).ok()?;
        self.pending.remove(i)
    }

    pub fn heap_bytes(&self) -> usize {
        self.pending.capacity() * std::mem::size_of::<Pending>()
    }
}

impl DeviceState {
    pub fn new(seed: u64, d: u32) -> Self {
        DeviceState {
            cursor: 0,
            live: RangeSet::default(),
            synced: RangeSet::default(),
            connections: 0,
            lost_at: None,
            rng: SmallRng::seed_from_u64(seed ^ (d as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        }
    }

    pub fn seen(&self, seq: u64) -> bool {
        self.live.contains(seq) || self.synced.contains(seq)
    }

    /// Records a seq that came live (or by an ack).
    pub fn arrived_live(&mut self, seq: u64) -> Arrival {
        if self.live.contains(seq) {
            return Arrival::Duplicate;
        }
        let held = self.synced.contains(seq);
        self.live.insert(seq);
        self.advance();
        if held {
            Arrival::Held
        } else {
            Arrival::New
        }
    }

    /// Records a seq that came in a sync batch.
    pub fn arrived_by_sync(&mut self, seq: u64) -> Arrival {
        if self.seen(seq) {
            return Arrival::Held;
        }
        self.synced.insert(seq);
        self.advance();
        Arrival::New
    }

    /// Moves the cursor over every seq held right above it.
    fn advance(&mut self) {
        loop {
            let next = self.cursor + 1;
            let end = self.live.run_end(next).max(self.synced.run_end(next));
            match end {
                Some(end) => self.cursor = end,
                None => return,
            }
        }
    }

    /// The highest seq received.
    pub fn max_seen(&self) -> u64 {
        self.live
            .max()
            .unwrap_or(0)
            .max(self.synced.max().unwrap_or(0))
    }

    /// A hole below a received seq is still open.
    pub fn has_gap(&self) -> bool {
        self.max_seen() > self.cursor
    }

    /// A sync from the cursor answered in full, up to seq `high`: a seq below
    /// it that the server did not return does not exist, so the cursor moves
    /// past it (a message the server lost then shows in the audit, not as a
    /// device syncing forever).
    pub fn settle(&mut self, high: u64) {
        if high > self.cursor {
            self.cursor = high;
        }
        self.advance();
    }

    /// `d` ±10%.
    pub fn jittered(&mut self, d: Duration) -> Duration {
        d.mul_f64(self.rng.random_range(0.9..1.1))
    }

    /// Bytes this state holds on the heap (its records and queues).
    pub fn heap_bytes(&self) -> usize {
        self.live.heap_bytes() + self.synced.heap_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_is_the_highest_contiguous_seq() {
        let mut st = DeviceState::new(1, 0);
        assert_eq!(st.arrived_live(1), Arrival::New);
        st.arrived_live(3);
        assert_eq!(st.cursor, 1);
        assert!(st.has_gap());
        assert_eq!(st.arrived_by_sync(2), Arrival::New);
        assert_eq!(st.cursor, 3);
        assert!(!st.has_gap());
        assert_eq!(st.arrived_by_sync(3), Arrival::Held);
        assert_eq!(st.arrived_live(3), Arrival::Duplicate);
        assert_eq!(st.arrived_live(2), Arrival::Held, "synced first, then live");
        // Seq 5 arrives, 4 never does: a full sync answer up to 6 settles it.
        st.arrived_live(5);
        st.settle(6);
        assert_eq!(st.cursor, 6);
        assert!(!st.has_gap());
        assert!(!st.seen(4));
    }

    /// Memory flatness: a device receiving many messages in order (and a few
    /// by sync after a hole) keeps a handful of ranges, not a record each.
    #[test]
    fn records_stay_bounded_after_many_messages() {
        let mut st = DeviceState::new(1, 0);
        for seq in 1..=100_000 {
            if seq % 25_000 == 0 {
                continue; // a dropped live frame, recovered by a sync below
            }
            st.arrived_live(seq);
        }
        for seq in (25_000..=100_000).step_by(25_000) {
            st.arrived_by_sync(seq);
        }
        assert_eq!(st.cursor, 100_000);
        assert!(st.live.ranges() <= 5, "{} live ranges", st.live.ranges());
        assert!(st.synced.ranges() <= 4);
        assert!(st.heap_bytes() < 1024, "{} bytes", st.heap_bytes());
    }

    #[test]
    fn acks_find_their_send_without_a_scan() {
        let mut st = Outbox::default();
        for _ in 0..5 {
            let req = st.req();
            st.pending.push_back(Pending {
                req,
                job: SendJob {
                    sched_us: 0,
                    to: crate::engine::command::To::User(1),
                    len: 1,
                    n: req as u64,
                    node: None,
                },
                actual_us: 0,
            });
        }
        let reqs: Vec<i64> = st.pending.iter().map(|p| p.req).collect();
        assert_eq!(st.take(reqs[2]).unwrap().req, reqs[2]);
        assert_eq!(st.take(reqs[0]).unwrap().req, reqs[0]);
        assert!(st.take(reqs[0]).is_none());
        assert_eq!(st.pending.len(), 3);
    }
}
