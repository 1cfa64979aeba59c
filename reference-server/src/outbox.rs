//! A connection's bounded outbound queue.
//!
//! Fan-out never waits on a slow client: it pushes an already-serialized frame
//! (`Utf8Bytes`, a cheap clone of shared bytes) and moves on. When a queue passes
//! its bound (frames or bytes), the queue is emptied at once and marked to close
//! with code 1008; the device resyncs from its cursor after reconnecting, so
//! nothing is lost, and a client that does not read cannot grow the server's
//! memory. Logout and shutdown close a connection through the same mark.
//!
//! A `VecDeque` behind a mutex plus a `Notify` costs nothing until used (an idle
//! connection holds an empty deque), unlike a channel that allocates its first
//! block up front.

use std::collections::VecDeque;

use axum::extract::ws::Utf8Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

/// Why a connection is being closed, with the WebSocket close code to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The outbound queue passed its bound (1008, policy violation).
    SlowConsumer,
    /// The device logged out (1000).
    LoggedOut,
}

impl CloseReason {
    pub fn code(self) -> u16 {
        match self {
            CloseReason::SlowConsumer => 1008,
            CloseReason::LoggedOut => 1000,
        }
    }
    pub fn text(self) -> &'static str {
        match self {
            CloseReason::SlowConsumer => {
                "slow consumer: outbound queue full, resync after reconnect"
            }
            CloseReason::LoggedOut => "logged out",
        }
    }
}

/// Result of [`Outbox::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// The push passed the bound: the queue now closes with 1008.
    Overflowed,
    /// The connection is already closing; the frame was not queued.
    Closed,
}

pub struct Outbox {
    state: Mutex<State>,
    ready: Notify,
    max_frames: usize,
    max_bytes: usize,
}

#[derive(Default)]
struct State {
    frames: VecDeque<Utf8Bytes>,
    bytes: usize,
    closing: Option<CloseReason>,
}

impl Outbox {
    pub fn new(max_frames: usize, max_bytes: usize) -> Self {
        Outbox {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            max_frames,
            max_bytes,
        }
    }

    pub fn push(&self, frame: Utf8Bytes) -> Pushed {
        let mut st = self.state.lock();
        if st.closing.is_some() {
            return Pushed::Closed;
        }
        if st.frames.len() >= self.max_frames || st.bytes + frame.len() > self.max_bytes {
            st.frames = VecDeque::new();
            st.bytes = 0;
            st.closing = Some(CloseReason::SlowConsumer);
            drop(st);
            self.ready.notify_one();
            return Pushed::Overflowed;
        }
        st.bytes += frame.len();
        st.frames.push_back(frame);
        drop(st);
        self.ready.notify_one();
        Pushed::Queued
    }

    /// Marks the connection to close (first reason wins) and wakes its task.
    pub fn close(&self, reason: CloseReason) {
        let mut st = self.state.lock();
        if st.closing.is_none() {
            st.closing = Some(reason);
            st.frames = VecDeque::new();
            st.bytes = 0;
        }
        drop(st);
        self.ready.notify_one();
    }

    /// Moves up to `max` queued frames into `into`, or returns the close reason.
    pub fn take(&self, into: &mut Vec<Utf8Bytes>, max: usize) -> Option<CloseReason> {
        let mut st = self.state.lock();
        if let Some(reason) = st.closing {
            return Some(reason);
        }
        let n = st.frames.len().min(max);
        for frame in st.frames.drain(..n) {
            into.push(frame);
        }
        st.bytes -= into.iter().map(|f| f.len()).sum::<usize>();
        if st.frames.is_empty() && st.frames.capacity() > 64 {
            // A burst is over: give its memory back rather than keep it per connection.
            st.frames = VecDeque::new();
        }
        None
    }

    pub fn has_frames(&self) -> bool {
        !self.state.lock().frames.is_empty()
    }

    /// Wakes the connection's task (to come back for frames left after a batch).
    pub fn wake(&self) {
        self.ready.notify_one();
    }

    pub fn closing(&self) -> Option<CloseReason> {
        self.state.lock().closing
    }

    /// Resolves when something was pushed or a close was asked since the last wake.
    pub async fn ready(&self) {
        self.ready.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_empties_the_queue_and_closes_with_1008() {
        let q = Outbox::new(2, 1 << 20);
        assert_eq!(q.push("a".into()), Pushed::Queued);
        assert_eq!(q.push("b".into()), Pushed::Queued);
        assert_eq!(q.push("c".into()), Pushed::Overflowed);
        assert_eq!(q.push("d".into()), Pushed::Closed);
        let mut out = Vec::new();
        assert_eq!(q.take(&mut out, 10), Some(CloseReason::SlowConsumer));
        assert!(out.is_empty());
        assert_eq!(CloseReason::SlowConsumer.code(), 1008);
    }

    #[test]
    fn byte_bound_counts_queued_bytes() {
        let q = Outbox::new(100, 5);
        assert_eq!(q.push("abc".into()), Pushed::Queued);
        let mut out = Vec::new();
        assert_eq!(q.take(&mut out, 10), None);
        assert_eq!(out.len(), 1);
        assert_eq!(q.push("abcd".into()), Pushed::Queued);
        assert_eq!(q.push("ab".into()), Pushed::Overflowed);
    }
}
