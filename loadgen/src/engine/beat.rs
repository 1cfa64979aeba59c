//! Heartbeats for every connected device from one shared tick, instead of a
//! timer per device.
//!
//! A timer per device cost each connected device a timer entry in its task's
//! future and a task wake-up per heartbeat. Here one task ticks every
//! [`TICK`] and writes the heartbeats that fell due, on each device's socket
//! under its slot lock like any other frame ([`crate::engine::outbound`]).
//! The due times sit in a hashed timing wheel: [`BUCKETS`] buckets of
//! (due tick, device, connection epoch), so scheduling is a push and a tick
//! looks at one bucket's entries, whatever the population.
//!
//! A device's first heartbeat falls at a random point of the interval after it
//! connects, the next ones every interval ±10%, as before. An entry names the
//! connection it was made for (the slot's epoch): when that connection ends,
//! its entry is dropped when it falls due, and a new connection schedules its
//! own. Each tick records its own lateness as generator lag (a tick, not a
//! beat, is the generator's timer); a heartbeat may be up to a tick late by
//! design, which the ±10% jitter dwarfs.

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::{Instant, MissedTickBehavior};

use crate::engine::outbound;
use crate::engine::sim::{lock, Sim};

/// How often due heartbeats are written.
pub const TICK: Duration = Duration::from_millis(10);
/// Buckets of the wheel (entries further out than this many ticks wait in
/// their bucket for their turn).
const BUCKETS: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    due: u64,
    device: u32,
    epoch: u32,
}

/// The heartbeat wheel: every connected device has one entry.
#[derive(Debug)]
pub struct Wheel {
    start: Instant,
    /// The next tick to look at.
    next: u64,
    buckets: Vec<Vec<Entry>>,
}

impl Default for Wheel {
    fn default() -> Self {
        Wheel {
            start: Instant::now(),
            next: 0,
            buckets: vec![Vec::new(); BUCKETS],
        }
    }
}

impl Wheel {
    fn tick_of(&self, at: Instant) -> u64 {
        (at.saturating_duration_since(self.start).as_nanos() / TICK.as_nanos()) as u64
    }

    /// Schedules a heartbeat of `device`'s connection `epoch` at `at` (on the
    /// tick at or after it, never a tick already looked at).
    pub fn schedule(&mut self, device: u32, epoch: u32, at: Instant) {
        let due = self
            .tick_of(at + TICK - Duration::from_nanos(1))
            .max(self.next);
        self.buckets[due as usize % BUCKETS].push(Entry { due, device, epoch });
    }

    /// Moves the entries due by `now` into `out` (device, epoch, due instant).
    fn take_due(&mut self, now: Instant, out: &mut Vec<(u32, u32, Instant)>) {
        let last = self.tick_of(now);
        while self.next <= last {
            let tick = self.next;
            let bucket = &mut self.buckets[tick as usize % BUCKETS];
            let mut i = 0;
            while i < bucket.len() {
                if bucket[i].due <= tick {
                    let e = bucket.swap_remove(i);
                    out.push((e.device, e.epoch, self.start + TICK * e.due as u32));
                } else {
                    i += 1;
                }
            }
            self.next += 1;
        }
    }

    /// Entries held (one per connected device).
    pub fn len(&self) -> usize {
        self.buckets.iter().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `d` ±10%.
pub fn jittered(rng: &mut SmallRng, d: Duration) -> Duration {
    d.mul_f64(rng.random_range(0.9..1.1))
}

/// The ticking task: writes the heartbeats due every [`TICK`] until the run
/// stops.
pub async fn run(sim: Arc<Sim>) {
    let interval = sim.behavior.heartbeat_interval;
    let mut rng = SmallRng::seed_from_u64(sim.seed ^ 0x6865_6172_7462_6561);
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut due = Vec::new();
    loop {
        let scheduled = tokio::select! {
            _ = sim.stop_all.cancelled() => return,
            t = ticks.tick() => t,
        };
        let now = Instant::now();
        sim.rec.record_lag(now.saturating_duration_since(scheduled));
        lock(&sim.beats).take_due(now, &mut due);
        for (d, epoch, _) in due.drain(..) {
            if outbound::heartbeat(&sim, d, epoch) {
                let next = now + jittered(&mut rng, interval);
                lock(&sim.beats).schedule(d, epoch, next);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_come_due_on_their_tick_once() {
        let mut w = Wheel::default();
        let t0 = w.start;
        w.schedule(1, 0, t0 + Duration::from_millis(25));
        w.schedule(2, 0, t0 + Duration::from_millis(5));
        // Further out than the wheel's span: waits for its own turn.
        let far = TICK * (BUCKETS as u32 + 3);
        w.schedule(3, 7, t0 + far);
        assert_eq!(w.len(), 3);
        let mut out = Vec::new();
        w.take_due(t0 + Duration::from_millis(9), &mut out);
        assert!(out.is_empty(), "{out:?}");
        w.take_due(t0 + Duration::from_millis(10), &mut out);
        assert_eq!(out.iter().map(|e| e.0).collect::<Vec<_>>(), vec![2]);
        out.clear();
        w.take_due(t0 + Duration::from_millis(30), &mut out);
        assert_eq!(out.iter().map(|e| e.0).collect::<Vec<_>>(), vec![1]);
        // Never earlier than asked.
        assert!(out[0].2 >= t0 + Duration::from_millis(25));
        out.clear();
        w.take_due(t0 + far - TICK, &mut out);
        assert!(out.is_empty(), "a lap of the wheel is not its turn");
        w.take_due(t0 + far, &mut out);
        assert_eq!(out, vec![(3, 7, t0 + far)]);
        assert!(w.is_empty());
        // A due time already passed goes on the next tick looked at.
        w.schedule(4, 0, t0);
        w.take_due(t0 + far + TICK, &mut out);
        assert_eq!(out.last().map(|e| e.0), Some(4));
    }
}
