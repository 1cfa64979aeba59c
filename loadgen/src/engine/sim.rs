//! The simulation's shared state: the population, one control slot per
//! device, the recorder, the ledger of acknowledged messages the audit checks
//! against, and what the devices observe live (fan-out arrivals, duplicates,
//! reorders).
//!
//! The scheduler talks to a device through its [`Slot`]: a small command queue
//! (a `VecDeque` behind a mutex plus a `Notify`: nothing allocated while idle,
//! unlike a channel per device) and start/stop flags. A device task owns its
//! protocol state while it runs and parks it in the slot when it stops, so a
//! user going offline and online again keeps its cursor and its record of what
//! it received.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::engine::beat::Wheel;
use crate::engine::command::Cmd;
use crate::engine::inbox::{DeviceState, Outbox};
use crate::engine::ledger::Ledger;
use crate::engine::nodes::Nodes;
use crate::engine::recorder::{Metric, Recorder};
use crate::engine::source::Sources;
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
    /// The socket while connected (after `hello` and the catch-up request):
    /// the clock thread writes sends to it directly.
    pub wire: Option<Arc<tokio::net::TcpStream>>,
    /// Bytes a write could not place; the task flushes them first.
    pub backlog: Vec<u8>,
    /// The connection's TLS session on a `wss://` run: every frame is
    /// written through it ([`crate::engine::secure`]).
    pub tls: Option<Box<rustls::ClientConnection>>,
    /// Counts the device's connections: a heartbeat scheduled for one
    /// connection is not written on the next ([`crate::engine::beat`]).
    pub epoch: u32,
    /// Sends in flight and the `req` counter.
    pub out: Outbox,
    /// Set to take the device offline; the task exits at its next look.
    pub stop: bool,
    /// A task is running for this device.
    pub running: bool,
    /// The device's protocol state while no task runs.
    pub parked: Option<Box<DeviceState>>,
    /// Its node in a cluster, and what it lost ([`crate::engine::nodes`]).
    pub link: Link,
    /// A token from logging in again (the provisioned one was refused).
    pub token: Option<Box<str>>,
}

/// Which node a device is on, and the node it lost (in a cluster).
#[derive(Debug, Default, Clone, Copy)]
pub struct Link {
    /// The node of the current (or last) connection: stamped in its sends.
    pub node: Option<u16>,
    /// The node of the last lost or failed connection: passed over at the
    /// next discovery answer.
    pub avoid: Option<u16>,
    /// The node the device lost its connection to, and when (Unix µs): its
    /// failover is timed at its next `hello`.
    pub lost: Option<(u16, u64)>,
}

/// The scheduler's handle on one device.
#[derive(Default)]
pub struct Slot {
    pub ctl: Mutex<Ctl>,
    pub wake: Notify,
    pub connected: AtomicBool,
    /// `ctl.backlog` is not empty: the task waits for the socket to be
    /// writable (read without the lock on every turn of its loop).
    pub backlogged: AtomicBool,
}

/// Most commands a device may have queued; past it a send is refused and
/// counted (the audit's `refused`) rather than queued without bound.
pub const MAX_QUEUED: usize = 10_000;

/// How long a group message's fan-out is followed: its entry leaves the map
/// (and becomes a `fanout_latency` sample) this long after its scheduled time,
/// so the map holds a window of messages, not the whole run.
pub const FANOUT_HORIZON: Duration = Duration::from_secs(30);

/// Fan-out bookkeeping of one group message: scheduled time, last live arrival.
pub type FanoutMap = HashMap<(u64, u64), (u64, u64)>;

/// Where the devices connect: the WebSocket URL login handed out, resolved.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `ws://HOST:PORT/PATH`, as login gave it.
    pub url: String,
    /// Its address, resolved once.
    pub addr: SocketAddr,
}

pub struct Sim {
    pub pop: Population,
    pub slots: Vec<Slot>,
    pub rec: Recorder,
    pub behavior: Behavior,
    pub connect_timeout: Duration,
    pub seed: u64,
    pub ws: Endpoint,
    /// Set on a `wss://` run: the devices connect over TLS.
    pub tls: Option<crate::engine::secure::TlsTarget>,
    /// Local addresses the devices' connections come from.
    pub sources: Sources,
    pub ledger: Ledger,
    /// When each connected device's next heartbeat is due.
    pub beats: Mutex<Wheel>,
    /// The runtime the device tasks run on (the current one when unset).
    pub runtime: Option<tokio::runtime::Handle>,
    pub fanout: Mutex<FanoutMap>,
    /// Live findings (duplicates and reorders seen on the wire), with examples.
    pub findings: Mutex<Audit>,
    /// Cancelled to stop every device (end of the phases, Ctrl-C).
    pub stop_all: CancellationToken,
    pub tasks: TaskTracker,
    /// Set while the scheduler ends the run: devices stop reconnecting.
    pub ending: AtomicBool,
    /// Sends refused because a device's queue was full.
    pub refused: AtomicU64,
    /// The nodes devices connect to (a cluster: chosen by discovery).
    pub nodes: Nodes,
}

/// What a [`Sim`] is made of besides the population and the recorder.
pub struct SimConfig {
    pub behavior: Behavior,
    pub connect_timeout: Duration,
    pub seed: u64,
    /// Source addresses; empty: chosen with [`Sim::with_sources`] or the kernel's.
    pub sources: Vec<std::net::IpAddr>,
}

impl Sim {
    /// A simulation whose ledger goes to `dir/ledger.bin`.
    pub fn new(pop: Population, rec: Recorder, cfg: SimConfig, dir: &Path) -> Arc<Sim> {
        let slots = (0..pop.devices.len()).map(|_| Slot::default()).collect();
        let ws = resolve(&pop.ws_url);
        let tls = crate::engine::secure::TlsTarget::for_url(&pop.ws_url);
        Arc::new(Sim {
            pop,
            slots,
            rec,
            behavior: cfg.behavior,
            connect_timeout: cfg.connect_timeout,
            seed: cfg.seed,
            tls,
            ws,
            sources: Sources { addrs: cfg.sources },
            ledger: Ledger::create(dir),
            beats: Mutex::new(Wheel::default()),
            runtime: None,
            fanout: Mutex::new(HashMap::new()),
            findings: Mutex::new(Audit::default()),
            stop_all: CancellationToken::new(),
            tasks: TaskTracker::new(),
            ending: AtomicBool::new(false),
            refused: AtomicU64::new(0),
            nodes: Nodes::default(),
        })
    }

    /// Sets the nodes (before any device runs).
    pub fn with_nodes(mut self: Arc<Self>, nodes: Nodes) -> Arc<Self> {
        if let Some(me) = Arc::get_mut(&mut self) {
            me.nodes = nodes;
        }
        self
    }

    /// Chooses the source addresses from the resolved target address (before
    /// any device runs).
    pub fn with_sources(
        mut self: Arc<Self>,
        choose: impl FnOnce(SocketAddr) -> Sources,
    ) -> Arc<Self> {
        let target = self.ws.addr;
        if let Some(me) = Arc::get_mut(&mut self) {
            me.sources = choose(target);
        }
        self
    }

    /// Runs the device tasks on `runtime` (before any device runs).
    pub fn with_runtime(mut self: Arc<Self>, runtime: tokio::runtime::Handle) -> Arc<Self> {
        if let Some(me) = Arc::get_mut(&mut self) {
            me.runtime = Some(runtime);
        }
        self
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

    /// A group message reached a member device live at `now_us`.
    pub fn fanout_arrival(&self, key: (u64, u64), sched_us: u64, now_us: u64) {
        let mut f = lock(&self.fanout);
        let e = f.entry(key).or_insert((sched_us, now_us));
        e.1 = e.1.max(now_us);
    }

    /// Moves the fan-out of messages scheduled before `before_us` (every one
    /// with `None`) into `fanout_latency`.
    pub fn flush_fanout(&self, before_us: Option<u64>) {
        let done: Vec<(u64, u64)> = {
            let mut f = lock(&self.fanout);
            match before_us {
                None => f.drain().map(|(_, v)| v).collect(),
                Some(t) => {
                    let mut out = Vec::new();
                    f.retain(|_, v| {
                        let keep = v.0 >= t;
                        if !keep {
                            out.push(*v);
                        }
                        keep
                    });
                    out
                }
            }
        };
        for (sched, last) in done {
            self.rec.latency(Metric::FANOUT, last, sched);
        }
    }
}

/// `ws://HOST:PORT/PATH` -> its socket address (the first the name resolves
/// to); an unresolvable URL gives an address nothing listens on, so the
/// devices' connects fail and say so.
fn resolve(url: &str) -> Endpoint {
    use std::net::ToSocketAddrs;
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("wss://"))
        .unwrap_or(url);
    let host_port = rest.split('/').next().unwrap_or("");
    let addr = host_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9)));
    Endpoint {
        url: url.to_string(),
        addr,
    }
}
