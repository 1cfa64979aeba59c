//! The open-model schedule: phases, the online ramp, sends, disconnects and
//! history reads, run on the generator's own clock thread ([`crate::engine::clock`]).
//!
//! Sends, abrupt disconnects and history reads ([`crate::engine::history`]) are
//! Poisson arrivals (exponential gaps drawn from a seeded RNG), fixed in
//! advance of anything the server does: the scheduler never waits for an
//! answer, so a stalled server shows up as latency (measured from each send's
//! *scheduled* time) and never as fewer sends. When the scheduler wakes late
//! it issues every arrival it missed at once; every send's lateness (written
//! minus scheduled) is recorded as `send_delay`, the number that tells a
//! saturated generator apart from a slow server.
//!
//! **One schedule, however the users are split.** Every process draws the
//! same global streams from the seed: the ramp (which users are online), each
//! arrival's time, its sender user and recipient, text length and send number.
//! Each process then keeps only the events of the users it owns (`owned`, a
//! predicate on the user index: every user in a single process; `i % N == I`
//! for worker I of N). N processes together issue exactly the sends, drops and
//! reads one process would; only the choice among a user's own devices (a
//! connected one first) is local. Arrivals drawn while nobody is online are
//! not scheduled (counted as `sends_before_online`). For the draws to match,
//! every process must see the same online users at each arrival: the ramp is
//! evaluated at each arrival's *scheduled* time (never at the moment the
//! clock thread happened to wake), and every phase starts at its planned
//! instant, one absolute time shared by all processes of the run.
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

use crate::engine::clock::Timer;
use crate::engine::command::{Cmd, SendJob, To};
use crate::engine::history::{Read, Reader};
use crate::engine::reach::Senders;
use crate::engine::recorder::inc;
use crate::engine::sim::Sim;
use crate::engine::{device, outbound};
use crate::outcome::PhaseOutcome;
use crate::scenario::{Behavior, Phase};

/// How often the ramp is re-evaluated when nothing else is due.
const TICK: Duration = Duration::from_millis(20);

/// Which users this process drives, by user index.
pub type Owned = Box<dyn Fn(u32) -> bool + Send + Sync>;

/// Who is online (globally), and the RNGs of the schedule.
pub struct Scheduler {
    sim: Arc<Sim>,
    owned: Owned,
    online: Vec<u32>,
    offline: Vec<u32>,
    /// The ramp's order and who goes offline.
    ramp: StdRng,
    /// Send times, and each send's sender, recipient and length: separate
    /// streams, so the arrival times depend on the seed and the rate only.
    arrivals: StdRng,
    picks: StdRng,
    drops: StdRng,
    /// History reads: their own arrivals and picks, so adding reads to a
    /// scenario leaves its sends and drops where they were.
    reads: StdRng,
    reader: Option<Reader>,
    /// Global send number: the same in every process for the same arrival.
    next_n: u64,
    /// Every send's sender, whoever drives it: whose inboxes the audit reads.
    senders: Senders,
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
    /// A scheduler over the whole population that drives the users `owned`
    /// accepts (`|_| true` in a single process).
    pub fn new(sim: Arc<Sim>, owned: Owned) -> Self {
        let mut ramp = StdRng::seed_from_u64(sim.seed ^ 0x7069_636b);
        let mut offline: Vec<u32> = (0..sim.pop.users.len() as u32).collect();
        offline.shuffle(&mut ramp);
        // Popping from the end: reverse so the drawn order is kept.
        offline.reverse();
        Scheduler {
            arrivals: StdRng::seed_from_u64(sim.seed ^ 0x6172_7269_7661_6c73),
            picks: StdRng::seed_from_u64(sim.seed ^ 0x7365_6e64),
            drops: StdRng::seed_from_u64(sim.seed ^ 0x6472_6f70),
            reads: StdRng::seed_from_u64(sim.seed ^ 0x0068_6973_746f_7279),
            ramp,
            reader: None,
            sim,
            owned,
            online: Vec::new(),
            offline,
            next_n: 0,
            senders: Senders::default(),
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

    /// The users sends came from (in every process, the same).
    pub fn senders(&self) -> &Senders {
        &self.senders
    }

    /// Counts an event no user owns once, in the process owning user 0.
    fn count_unowned(&self) -> bool {
        (self.owned)(0)
    }

    fn bring_online(&mut self) {
        if let Some(u) = self.offline.pop() {
            if (self.owned)(u) {
                for &d in &self.sim.pop.users[u as usize].devices {
                    device::start(&self.sim, d);
                }
            }
            self.online.push(u);
        }
    }

    fn take_offline(&mut self) {
        if self.online.is_empty() {
            return;
        }
        let i = self.ramp.random_range(0..self.online.len());
        let u = self.online.swap_remove(i);
        if (self.owned)(u) {
            for &d in &self.sim.pop.users[u as usize].devices {
                self.sim.stop_device(d);
            }
        }
        // Back among the offline at a random place, in O(1): it swaps with
        // the user there, who moves to the end (next to come online).
        self.offline.push(u);
        let last = self.offline.len() - 1;
        let j = self.ramp.random_range(0..=last);
        self.offline.swap(j, last);
    }

    /// A device of user `u` for a send or a drop: a connected one if it has any,
    /// starting from the drawn one.
    fn device_of(&self, u: u32, drawn: u32) -> u32 {
        let devices = &self.sim.pop.users[u as usize].devices;
        let start = drawn as usize % devices.len();
        (0..devices.len())
            .map(|k| devices[(start + k) % devices.len()])
            .find(|&d| self.sim.is_connected(d))
            .unwrap_or(devices[start])
    }

    fn issue_send(&mut self, sched: Instant) {
        self.next_n += 1;
        let sim = self.sim.clone();
        if self.online.is_empty() {
            if self.count_unowned() {
                inc(&sim.rec.counters.sends_before_online);
            }
            return;
        }
        // Every draw happens whoever owns the sender: the streams stay the
        // same in every process.
        let u = self.online[self.picks.random_range(0..self.online.len())];
        let drawn_device: u32 = self.picks.random();
        let group_roll: f64 = self.picks.random();
        let index: u32 = self.picks.random();
        let len = text_len(&mut self.picks, &sim.behavior);
        self.senders.insert(u);
        if !(self.owned)(u) {
            return;
        }
        inc(&sim.rec.counters.messages_scheduled);
        let user = &sim.pop.users[u as usize];
        let to_group = !user.groups.is_empty()
            && (user.friends.is_empty() || group_roll < sim.behavior.group_share);
        let to = if to_group {
            To::Group(user.groups[index as usize % user.groups.len()])
        } else if !user.friends.is_empty() {
            To::User(user.friends[index as usize % user.friends.len()])
        } else {
            sim.rec.error("no_recipient");
            return;
        };
        let d = self.device_of(u, drawn_device);
        let job = SendJob {
            sched_us: sim.rec.clock.unix_us(sched),
            to,
            len,
            n: self.next_n,
            node: None,
        };
        if !outbound::send(&sim, d, job) {
            sim.refused.fetch_add(1, Relaxed);
        }
    }

    fn issue_drop(&mut self) {
        if self.online.is_empty() {
            return;
        }
        let u = self.online[self.drops.random_range(0..self.online.len())];
        let drawn: u32 = self.drops.random();
        if !(self.owned)(u) {
            return;
        }
        let d = self.device_of(u, drawn);
        if self.sim.is_connected(d) {
            self.sim.command(d, Cmd::Drop);
        }
    }

    /// A random online user reads a page of one of its channels.
    fn issue_read(&mut self, sched: Instant) {
        let sim = self.sim.clone();
        if self.online.is_empty() {
            if self.count_unowned() {
                inc(&sim.rec.counters.history_scheduled);
                sim.rec.error("history_no_reader_online");
            }
            return;
        }
        let rng = &mut self.reads;
        let u = self.online[rng.random_range(0..self.online.len())];
        let group_roll: f64 = rng.random();
        let index: u32 = rng.random();
        let device: u32 = rng.random();
        let cold = rng.random_bool(0.5);
        let pick: u64 = rng.random();
        if !(self.owned)(u) {
            return;
        }
        inc(&sim.rec.counters.history_scheduled);
        let Some(reader) = &self.reader else {
            sim.rec.error("history_no_reader_online");
            return;
        };
        let user = &sim.pop.users[u as usize];
        // Where people talk is where they read: a group as often as sends go
        // to groups (`group_share`), a dm with a friend otherwise.
        let to_group = !user.groups.is_empty()
            && (user.friends.is_empty() || group_roll < sim.behavior.group_share);
        let channel = if to_group {
            let g = user.groups[index as usize % user.groups.len()];
            sim.pop.groups[g as usize].channel.clone()
        } else if !user.friends.is_empty() {
            let f = user.friends[index as usize % user.friends.len()];
            ChannelId::direct(user.id, sim.pop.user_id(f)).to_string()
        } else {
            sim.rec.error("history_no_channel");
            return;
        };
        let d = user.devices[device as usize % user.devices.len()];
        reader.issue(Read {
            sched,
            channel,
            token: sim.pop.devices[d as usize].token.clone(),
            cold,
            pick,
        });
    }

    /// Moves the online count to the ramp's value at `at`.
    fn ramp(&mut self, at: Instant, start: Instant, phase: &Phase, from: f64) {
        let t = (at.saturating_duration_since(start).as_secs_f64() / phase.duration.as_secs_f64())
            .min(1.0);
        let target = (from + (phase.online as f64 - from) * t).round() as usize;
        while self.online.len() < target && !self.offline.is_empty() {
            self.bring_online();
        }
        while self.online.len() > target {
            self.take_offline();
        }
    }

    /// Runs one phase, planned to start at `start`, to its end (or until
    /// `cancel`) on the calling thread, sleeping on `timer` between arrivals;
    /// returns what it did. A phase that begins late (a slow start, a long
    /// previous phase) still draws its arrivals from `start`: the late ones go
    /// out at once, and their send delay shows it.
    pub fn run_phase(
        &mut self,
        phase: &Phase,
        start: Instant,
        cancel: &CancellationToken,
        timer: &mut Timer,
    ) -> PhaseOutcome {
        let sim = self.sim.clone();
        let rec = &sim.rec;
        let sent_before = rec.counters.messages_scheduled.load(Relaxed);
        let start_ms = rec.elapsed_ms_at(start);
        let end = start + phase.duration;
        let from = self.online.len() as f64;
        let mut next_send = (phase.message_rate > 0.0)
            .then(|| start + exp_gap(&mut self.arrivals, phase.message_rate));
        let mut next_drop = (phase.disconnect_rate > 0.0)
            .then(|| start + exp_gap(&mut self.drops, phase.disconnect_rate));
        let mut next_read = (phase.history_rate > 0.0)
            .then(|| start + exp_gap(&mut self.reads, phase.history_rate));
        let mut wake = start;
        if Instant::now() < start {
            timer.sleep_until(start, cancel);
        }
        loop {
            let now = Instant::now();
            rec.record_lag(now.saturating_duration_since(wake));
            // Every arrival due by now goes out now, however late we are, in
            // time order, each after the ramp moved to its scheduled time.
            loop {
                let now = Instant::now();
                let due = |t: Option<Instant>| t.filter(|&at| at <= now && at < end);
                let next = [
                    due(next_send).map(|t| (t, 0)),
                    due(next_drop).map(|t| (t, 1)),
                    due(next_read).map(|t| (t, 2)),
                ]
                .into_iter()
                .flatten()
                .min();
                let Some((at, kind)) = next else { break };
                self.ramp(at, start, phase, from);
                match kind {
                    0 => {
                        self.issue_send(at);
                        next_send = Some(at + exp_gap(&mut self.arrivals, phase.message_rate));
                        timer.worked();
                    }
                    1 => {
                        self.issue_drop();
                        next_drop = Some(at + exp_gap(&mut self.drops, phase.disconnect_rate));
                    }
                    _ => {
                        self.issue_read(at);
                        next_read = Some(at + exp_gap(&mut self.reads, phase.history_rate));
                    }
                }
            }
            let now = Instant::now();
            self.ramp(now.min(end), start, phase, from);
            if now >= end || cancel.is_cancelled() {
                break;
            }
            wake = [next_send, next_drop, next_read, Some(now + TICK), Some(end)]
                .into_iter()
                .flatten()
                .filter(|&t| t <= end)
                .min()
                .unwrap_or(end);
            timer.sleep_until(wake, cancel);
        }
        PhaseOutcome {
            name: phase.name.clone(),
            duration_s: start.elapsed().min(phase.duration).as_secs_f64(),
            online: phase.online,
            message_rate: phase.message_rate,
            messages_sent: rec.counters.messages_scheduled.load(Relaxed) - sent_before,
            history_rate: phase.history_rate,
            start_ms,
            // The per-phase figures are the report's to fill.
            ..PhaseOutcome::default()
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
