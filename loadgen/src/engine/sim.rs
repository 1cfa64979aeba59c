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
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::engine::command::{Cmd, To};
use crate::engine::inbox::DeviceState;
use crate::engine::recorder::Recorder;
use crate::outcome::{Audit, AuditExample};
use crate::population::Population;
use crate::scenario::Behavior;

/// Locks a mutex, ignoring poisoning (a panicked device task must not stop the run).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
