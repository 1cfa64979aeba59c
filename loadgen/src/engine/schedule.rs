//! The open-model schedule: phases, the online ramp, sends, disconnects and
//! history reads.
//!
//! Sends, abrupt disconnects and history reads ([`crate::history`]) are Poisson arrivals (exponential gaps drawn
//! from a seeded RNG), fixed in advance of anything the server does: the
//! scheduler never waits for an answer, so a stalled server shows up as
//! latency (measured from each send's *scheduled* time) and never as fewer
//! sends. When the scheduler itself wakes late it issues every arrival it
//! missed at once, and records how late it was as generator lag; that is the
//! number that tells a saturated generator apart from a slow server.
//!
//! The number of online users follows a linear ramp from the previous phase's
//! `online` to this one's. Users come online in an order drawn from the seed
//! (all their devices connect) and go offline in random order (their devices
//! close cleanly; presence turns them offline after `offline_after`).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use reference_server::protocol::ChannelId;

use crate::engine::command::{Cmd, SendJob, To};
use crate::engine::device;
use crate::engine::history::{Read, Reader};
use crate::engine::recorder::inc;
use crate::engine::sim::Sim;
use crate::outcome::PhaseOutcome;
use crate::scenario::{Behavior, Phase};

/// Online users tried when looking for a sender with a connected device.
const PICK_TRIES: usize = 8;
/// How often the ramp is re-evaluated when nothing else is due.
const TICK: Duration = Duration::from_millis(20);

/// Who is online, and the RNGs of the schedule.
pub struct Scheduler {
    sim: Arc<Sim>,
    online: Vec<u32>,
    offline: Vec<u32>,
    /// Drives sends and drops: separate from the ramp's RNG, so the arrival
    /// times depend on the seed and the rates only.
    arrivals: StdRng,
    drops: StdRng,
    picks: StdRng,
    /// History reads: their own arrivals and picks, so adding reads to a
    /// scenario leaves its sends and drops where they were.
    reads: StdRng,
    reader: Option<Reader>,
    next_n: u64,
}

/// An exponential gap for `rate` events per second.
fn exp_gap(rng: &mut StdRng, rate: f64) -> Duration {
    let u: f64 = rng.random_range(f64::EPSILON..1.0);
    Duration::from_secs_f64(-u.ln() / rate)
}

/// A text length: exponential with the given mean, at least 1, capped at max.
pub fn text_len(rng: &mut StdRng, b: &Behavior) -> u32 {
    let u: f64 = rng.random_range(f64::EPSILON..1.0);
    ((-u.ln() * b.text_mean).ceil() as usize).clamp(1, b.text_max) as u32
}

impl Scheduler {
    /// A scheduler driving the users in `owned` (all of them in a single
    /// process; one worker's share otherwise).
    pub fn new(sim: Arc<Sim>, owned: Vec<u32>) -> Self {
        let mut picks = StdRng::seed_from_u64(sim.seed ^ 0x7069_636b);
        let mut offline = owned;
        offline.shuffle(&mut picks);
        // Popping from the end: reverse so the drawn order is kept.
        offline.reverse();
        Scheduler {
            arrivals: StdRng::seed_from_u64(sim.seed ^ 0x6172_7269_7661_6c73),
            drops: StdRng::seed_from_u64(sim.seed ^ 0x6472_6f70),
            picks,
            reads: StdRng::seed_from_u64(sim.seed ^ 0x0068_6973_746f_7279),
            reader: None,
            sim,
            online: Vec::new(),
            offline,
            next_n: 0,
        }
    }

    /// Reads history through `reader` in phases with a `history_rate`.
    pub fn with_reader(mut self, reader: Reader) -> Self {
        self.reader = Some(reader);
        self
    }

    pub fn online_users(&self) -> usize {
        self.online.len()
    }

    fn bring_online(&mut self) {
        if let Some(u) = self.offline.pop() {
            for &d in &self.sim.pop.users[u as usize].devices {
                device::start(&self.sim, d);
            }
            self.online.push(u);
        }
    }

    fn take_offline(&mut self) {
        if self.online.is_empty() {
            return;
        }
        let i = self.picks.random_range(0..self.online.len());
        let u = self.online.swap_remove(i);
        for &d in &self.sim.pop.users[u as usize].devices {
            self.sim.stop_device(d);
        }
        let at = self.picks.random_range(0..=self.offline.len());
        self.offline.insert(at, u);
    }

    /// A device of a random online user: a connected one if it has any.
    /// A connected device of a random online user. A user whose devices are all
    /// between a drop and their reconnect is passed over (a few tries), so a send
    /// waits for a reconnect only when almost nobody is connected: what it
    /// measures is the server, not the scenario's own reconnect delay.
    fn pick_device(&mut self) -> Option<(u32, u32)> {
        if self.online.is_empty() {
            return None;
        }
        let mut fallback = None;
        for _ in 0..PICK_TRIES {
            let u = self.online[self.picks.random_range(0..self.online.len())];
            let devices = &self.sim.pop.users[u as usize].devices;
            let connected: Vec<u32> = devices
                .iter()
                .copied()
                .filter(|&d| self.sim.is_connected(d))
                .collect();
            if !connected.is_empty() {
                return Some((u, connected[self.picks.random_range(0..connected.len())]));
            }
            fallback.get_or_insert((u, devices[self.picks.random_range(0..devices.len())]));
        }
        fallback
    }

    fn issue_send(&mut self, sched: Instant) {
        let sim = self.sim.clone();
        inc(&sim.rec.counters.messages_scheduled);
        let Some((u, d)) = self.pick_device() else {
            sim.rec.error("no_sender_online");
            return;
        };
        let user = &sim.pop.users[u as usize];
        let to_group = !user.groups.is_empty()
            && (user.friends.is_empty() || self.picks.random_bool(sim.behavior.group_share));
        let to = if to_group {
            To::Group(user.groups[self.picks.random_range(0..user.groups.len())])
        } else if !user.friends.is_empty() {
            To::User(user.friends[self.picks.random_range(0..user.friends.len())])
        } else {
            sim.rec.error("no_recipient");
            return;
        };
        self.next_n += 1;
        let job = SendJob {
            sched_us: sim.rec.clock.unix_us(sched),
            to,
            len: text_len(&mut self.picks, &sim.behavior),
            n: self.next_n,
        };
        if !sim.command(d, Cmd::Send(job)) {
            sim.rec.error("send_queue_full");
        }
    }

    fn issue_drop(&mut self) {
        let Some((_, d)) = self.pick_device() else {
            return;
        };
        if self.sim.is_connected(d) {
            self.sim.command(d, Cmd::Drop);
        }
    }

    /// A random online user reads a page of one of its channels.
    fn issue_read(&mut self, sched: Instant) {
        let sim = self.sim.clone();
        inc(&sim.rec.counters.history_scheduled);
        let (Some(reader), false) = (&self.reader, self.online.is_empty()) else {
            sim.rec.error("history_no_reader_online");
            return;
        };
        let rng = &mut self.reads;
        let u = self.online[rng.random_range(0..self.online.len())];
        let user = &sim.pop.users[u as usize];
        // Where people talk is where they read: a group as often as sends go
        // to groups (`group_share`), a dm with a friend otherwise.
        let to_group = !user.groups.is_empty()
            && (user.friends.is_empty() || rng.random_bool(sim.behavior.group_share));
        let channel = if to_group {
            let g = user.groups[rng.random_range(0..user.groups.len())];
            sim.pop.groups[g as usize].channel.clone()
        } else if !user.friends.is_empty() {
            let f = user.friends[rng.random_range(0..user.friends.len())];
            ChannelId::direct(user.id, sim.pop.users[f as usize].id).to_string()
        } else {
            sim.rec.error("history_no_channel");
            return;
        };
        let d = user.devices[rng.random_range(0..user.devices.len())];
        reader.issue(Read {
            sched,
            channel,
            token: sim.pop.devices[d as usize].token.clone(),
            cold: rng.random_bool(0.5),
            pick: rng.random(),
        });
    }

    /// Runs one phase to its end (or until `cancel`); returns what it did.
    pub async fn run_phase(&mut self, phase: &Phase, cancel: &CancellationToken) -> PhaseOutcome {
        let sim = self.sim.clone();
        let rec = &sim.rec;
        let sent_before = rec.counters.messages_scheduled.load(Relaxed);
        let start_ms = rec.elapsed_ms();
        let start = Instant::now();
        let end = start + phase.duration;
        let from = self.online.len() as f64;
        let to = phase.online as f64;
        let mut next_send = (phase.message_rate > 0.0)
            .then(|| start + exp_gap(&mut self.arrivals, phase.message_rate));
        let mut next_drop = (phase.disconnect_rate > 0.0)
            .then(|| start + exp_gap(&mut self.drops, phase.disconnect_rate));
        let mut next_read = (phase.history_rate > 0.0)
            .then(|| start + exp_gap(&mut self.reads, phase.history_rate));
        let mut wake = start;
        loop {
            let now = Instant::now();
            rec.record_lag(now.saturating_duration_since(wake));
            let t = (now.saturating_duration_since(start).as_secs_f64()
                / phase.duration.as_secs_f64())
            .min(1.0);
            let target = (from + (to - from) * t).round() as usize;
            while self.online.len() < target && !self.offline.is_empty() {
                self.bring_online();
            }
            while self.online.len() > target {
                self.take_offline();
            }
            // Every arrival due by now goes out now, however late we are.
            while let Some(at) = next_send.filter(|&at| at <= now && at < end) {
                self.issue_send(at);
                next_send = Some(at + exp_gap(&mut self.arrivals, phase.message_rate));
            }
            while let Some(at) = next_drop.filter(|&at| at <= now && at < end) {
                self.issue_drop();
                next_drop = Some(at + exp_gap(&mut self.drops, phase.disconnect_rate));
            }
            while let Some(at) = next_read.filter(|&at| at <= now && at < end) {
                self.issue_read(at);
                next_read = Some(at + exp_gap(&mut self.reads, phase.history_rate));
            }
            if now >= end || cancel.is_cancelled() {
                break;
            }
            wake = [next_send, next_drop, next_read, Some(now + TICK), Some(end)]
                .into_iter()
                .flatten()
                .filter(|&t| t <= end)
                .min()
                .unwrap_or(end);
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        }
        PhaseOutcome {
            name: phase.name.clone(),
            duration_s: start.elapsed().as_secs_f64(),
            online: phase.online,
            message_rate: phase.message_rate,
            messages_sent: rec.counters.messages_scheduled.load(Relaxed) - sent_before,
            history_rate: phase.history_rate,
            start_ms,
            acked: 0,
            ack_p99_ms: 0.0,
            history_reads: 0,
            history_p99_ms: 0.0,
        }
    }
}

/// The arrival times (offsets from the phase start) an open-model phase
/// schedules: what [`Scheduler::run_phase`] issues, whatever the server does.
pub fn planned_arrivals(seed: u64, rate: f64, duration: Duration) -> u64 {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6172_7269_7661_6c73);
    let mut t = Duration::ZERO;
    let mut n = 0;
    loop {
        t += exp_gap(&mut rng, rate);
        if t >= duration {
            return n;
        }
        n += 1;
    }
}
