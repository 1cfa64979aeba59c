//! A connection's bounded outbound queue.
//!
//! Fan-out never waits on a slow client: it pushes an already-serialized frame
//! (`Utf8Bytes`, a cheap clone of shared bytes) and moves on. When a queue passes
//! its bound (frames or bytes), the queue is emptied at once and marked to close
//! with code 1008; the device resyncs from its cursor after reconnecting, so
//! nothing is lost, and a client that does not read cannot grow the server's
//! memory. Logout and shutdown close a connection through the same mark.
//!
//! A `VecDeque` behind a mutex costs nothing until used (an idle connection
//! holds an empty deque), unlike a channel that allocates its first block up
//! front. Its one reader, the connection's task, is woken through an
//! `AtomicWaker` and a flag rather than a `Notify`: the task's idle wait then
//! needs no waiter node of its own, which keeps every idle connection smaller.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::task::{Context, Poll};

use axum::extract::ws::Utf8Bytes;
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;

/// Why a connection is being closed, with the WebSocket close code to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The outbound queue passed its bound (1008, policy violation).
    SlowConsumer,
    /// The device logged out (1000).
    LoggedOut,
    /// The server is shutting down (1001).
    ShuttingDown,
}

impl CloseReason {
    pub fn code(self) -> u16 {
        match self {
            CloseReason::SlowConsumer => 1008,
            CloseReason::LoggedOut => 1000,
            CloseReason::ShuttingDown => 1001,
        }
    }
    pub fn text(self) -> &'static str {
        match self {
            CloseReason::SlowConsumer => {
                "slow consumer: outbound queue full, resync after reconnect"
            }
            CloseReason::LoggedOut => "logged out",
            CloseReason::ShuttingDown => "server shutting down",
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
    /// Set by every push and close, cleared when the task sees it.
    signalled: AtomicBool,
    waker: AtomicWaker,
    max_frames: u32,
    max_bytes: u32,
    /// The largest frame read from and written to the connection: the WebSocket
    /// layer keeps buffers that large (for the memory histogram).
    largest_in: AtomicU32,
    largest_out: AtomicU32,
}

/// What a connection's outbox and WebSocket buffers hold, for the per-connection
/// memory histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    pub largest_in: usize,
    pub largest_out: usize,
    /// Bytes of the frames queued now.
    pub queued_bytes: usize,
    /// Frames the queue has room for without growing.
    pub queue_capacity: usize,
}

#[derive(Default)]
struct State {
    frames: VecDeque<Utf8Bytes>,
    bytes: u32,
    closing: Option<CloseReason>,
}

impl Outbox {
    pub fn new(max_frames: usize, max_bytes: usize) -> Self {
        Outbox {
            state: Mutex::new(State::default()),
            signalled: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            // Four-byte bounds keep every connection's outbox a little smaller;
            // the configuration keeps them far below 4 GiB.
            max_frames: max_frames.min(u32::MAX as usize) as u32,
            max_bytes: max_bytes.min(u32::MAX as usize) as u32,
            largest_in: AtomicU32::new(0),
            largest_out: AtomicU32::new(0),
        }
    }

    pub fn push(&self, frame: Utf8Bytes) -> Pushed {
        let pushed = self.enqueue(frame);
        if pushed != Pushed::Closed {
            self.wake();
        }
        pushed
    }

    /// [`Outbox::push`] from the connection's own task, which looks at the
    /// outbox before it next waits: the outbox is marked ready but the task is
    /// not woken (waking a running task only makes the runtime poll it once
    /// more, for nothing).
    pub fn push_own(&self, frame: Utf8Bytes) -> Pushed {
        let pushed = self.enqueue(frame);
        if pushed != Pushed::Closed {
            self.signalled.store(true, Ordering::Release);
        }
        pushed
    }

    fn enqueue(&self, frame: Utf8Bytes) -> Pushed {
        let mut st = self.state.lock();
        if st.closing.is_some() {
            return Pushed::Closed;
        }
        let len = frame.len().min(u32::MAX as usize) as u32;
        if st.frames.len() >= self.max_frames as usize
            || st.bytes.saturating_add(len) > self.max_bytes
        {
            st.frames = VecDeque::new();
            st.bytes = 0;
            st.closing = Some(CloseReason::SlowConsumer);
            return Pushed::Overflowed;
        }
        st.bytes += len;
        st.frames.push_back(frame);
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
        self.wake();
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
        st.bytes -= into.iter().map(|f| f.len() as u32).sum::<u32>();
        if st.frames.is_empty() && st.frames.capacity() > 64 {
            // A burst is over: give its memory back rather than keep it per connection.
            st.frames = VecDeque::new();
        }
        None
    }

    /// The oldest queued frame, if any, or the close reason.
    pub fn pop(&self) -> Result<Option<Utf8Bytes>, CloseReason> {
        let mut st = self.state.lock();
        if let Some(reason) = st.closing {
            return Err(reason);
        }
        let frame = st.frames.pop_front();
        if let Some(f) = &frame {
            st.bytes -= f.len().min(u32::MAX as usize) as u32;
            if st.frames.is_empty() && st.frames.capacity() > 64 {
                // A burst is over: give its memory back rather than keep it per connection.
                st.frames = VecDeque::new();
            }
        }
        Ok(frame)
    }

    /// Records a frame read from the connection (`in`) or written to it.
    pub fn note_frame(&self, len: usize, incoming: bool) {
        let largest = if incoming {
            &self.largest_in
        } else {
            &self.largest_out
        };
        let len = len.min(u32::MAX as usize) as u32;
        // A plain load first: nearly every frame is no larger than the last.
        if len > largest.load(Ordering::Relaxed) {
            largest.fetch_max(len, Ordering::Relaxed);
        }
    }

    pub fn footprint(&self) -> Footprint {
        let st = self.state.lock();
        Footprint {
            largest_in: self.largest_in.load(Ordering::Relaxed) as usize,
            largest_out: self.largest_out.load(Ordering::Relaxed) as usize,
            queued_bytes: st.bytes as usize,
            queue_capacity: st.frames.capacity(),
        }
    }

    pub fn has_frames(&self) -> bool {
        !self.state.lock().frames.is_empty()
    }

    /// Wakes the connection's task (also to come back for frames left after a batch).
    pub fn wake(&self) {
        self.signalled.store(true, Ordering::Release);
        self.waker.wake();
    }

    pub fn closing(&self) -> Option<CloseReason> {
        self.state.lock().closing
    }

    /// Ready when something was pushed or a close was asked since the last time
    /// it was ready. One task (the connection's) polls it.
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        // Register before looking, so a wake between the two is not lost.
        self.waker.register(cx.waker());
        if self.signalled.swap(false, Ordering::AcqRel) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// [`Outbox::poll_ready`] as a future.
    pub async fn ready(&self) {
        std::future::poll_fn(|cx| self.poll_ready(cx)).await
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
