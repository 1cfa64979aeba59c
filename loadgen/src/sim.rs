//! The simulation's shared state: the population, one control slot per
//! device, the recorder, and the ledger of acknowledged messages the audit
//! checks against.
//!
//! The scheduler talks to a device through its [`Slot`]: a small command queue
//! (a `VecDeque` behind a mutex plus a `Notify`: nothing allocated while idle,
//! unlike a channel per device) and start/stop flags. A device task owns its
//! protocol state while it runs and parks it in the slot when it stops, so a
//! user going offline and online again keeps its cursor and its record of what
//! it received.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::inbox::DeviceState;
use crate::outcome::{Audit, AuditExample};
use crate::population::Population;
use crate::recorder::Recorder;
use crate::scenario::Behavior;

/// Locks a mutex, ignoring poisoning (a panicked device task must not stop the run).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

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
}

#[derive(Debug)]
pub enum Cmd {
    Send(SendJob),
    /// Drop the connection abruptly (no close frame) and reconnect later.
    Drop,
}

#[derive(Default)]
pub struct Ctl {
    pub cmds: VecDeque<Cmd>,
    /// Set to take the device offline; the task exits at its next look.
    pub stop: bool,
    /// A task is running for this device.
    pub running: bool,
    /// The device's protocol state while no task runs.
    pub parked: Option<Box<DeviceState>>,
}

/// The scheduler's handle on one device.
#[derive(Default)]
pub struct Slot {
    pub ctl: Mutex<Ctl>,
    pub wake: Notify,
    pub connected: AtomicBool,
}

/// Most commands a device may have queued; past it a send is refused and
/// counted (`send_queue_full`) rather than queued without bound.
pub const MAX_QUEUED: usize = 10_000;

/// An acknowledged message, for the audit.
#[derive(Debug, Clone)]
pub struct Acked {
    pub channel: u64,
    pub id: u64,
    /// The sending device (index into the population's devices).
    pub device: u32,
    pub to: To,
}

/// Fan-out bookkeeping of one group message: scheduled time, last live arrival.
pub type FanoutMap = HashMap<(u64, u64), (u64, u64)>;

pub struct Sim {
    pub pop: Population,
    pub slots: Vec<Slot>,
    pub rec: Recorder,
    pub behavior: Behavior,
    pub connect_timeout: std::time::Duration,
    pub seed: u64,
    pub ledger: Mutex<Vec<Acked>>,
    pub fanout: Mutex<FanoutMap>,
    /// Live findings (duplicates and reorders seen on the wire), with examples.
    pub findings: Mutex<Audit>,
    /// Cancelled to stop every device (end of the phases, Ctrl-C).
    pub stop_all: CancellationToken,
    pub tasks: TaskTracker,
    /// Set while the scheduler ends the run: devices stop reconnecting.
    pub ending: AtomicBool,
}

impl Sim {
    pub fn new(
        pop: Population,
        rec: Recorder,
        behavior: Behavior,
        connect_timeout: std::time::Duration,
        seed: u64,
    ) -> Arc<Sim> {
        let slots = (0..pop.devices.len()).map(|_| Slot::default()).collect();
        Arc::new(Sim {
            pop,
            slots,
            rec,
            behavior,
            connect_timeout,
            seed,
            ledger: Mutex::new(Vec::new()),
            fanout: Mutex::new(HashMap::new()),
            findings: Mutex::new(Audit::default()),
            stop_all: CancellationToken::new(),
            tasks: TaskTracker::new(),
            ending: AtomicBool::new(false),
        })
    }

    /// Starts a device (or cancels its pending stop).
    pub fn start_device(self: &Arc<Self>, d: u32) {
        let slot = &self.slots[d as usize];
        let mut ctl = lock(&slot.ctl);
        ctl.stop = false;
        if ctl.running {
            return;
        }
        ctl.running = true;
        let state = ctl.parked.take();
        drop(ctl);
        self.tasks.spawn(crate::device::run(self.clone(), d, state));
    }

    /// Asks a device to go offline (close cleanly, park its state).
    pub fn stop_device(&self, d: u32) {
        let slot = &self.slots[d as usize];
        lock(&slot.ctl).stop = true;
        slot.wake.notify_one();
    }

    /// Queues a command; false if the device's queue is full.
    pub fn command(&self, d: u32, cmd: Cmd) -> bool {
        let slot = &self.slots[d as usize];
        let mut ctl = lock(&slot.ctl);
        if ctl.cmds.len() >= MAX_QUEUED {
            return false;
        }
        ctl.cmds.push_back(cmd);
        drop(ctl);
        slot.wake.notify_one();
        true
    }

    /// Records a live finding (`duplicated` or `reordered`) with an example.
    pub fn finding(&self, kind: &str, channel: &str, id: u64, device: u32) {
        let dev = &self.pop.devices[device as usize];
        let user = self.pop.users[dev.user as usize].id;
        let mut f = lock(&self.findings);
        match kind {
            "duplicated" => f.duplicated += 1,
            _ => f.reordered += 1,
        }
        if f.examples.len() < Audit::MAX_EXAMPLES / 2 {
            f.examples.push(AuditExample {
                kind: kind.into(),
                channel: channel.into(),
                id,
                user,
                device: dev.device_id,
            });
        }
    }

    pub fn is_connected(&self, d: u32) -> bool {
        self.slots[d as usize].connected.load(Relaxed)
    }
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
/// in Unix µs, N the run-unique send number.
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
        assert_eq!(text_of(130).len(), 130);
    }
}
