//! The simulation engine: simulated devices over real WebSockets, the
//! open-model schedule that drives them, what they record, and the audit.
//!
//! Layers, lowest first (a module imports only from the ones above it):
//! - [`command`]: what the scheduler asks of a device; `client_msg_id` encoding.
//! - [`ranges`]: seq sets as ranges (what keeps a device's records bounded).
//! - [`frame`]: a borrowed view of server frames, only the fields used.
//! - [`recorder`]: worker-local latency histograms, counters and errors.
//! - [`inbox`]: what one device knows (cursor, received seqs, unacked sends).
//! - [`ledger`]: acked messages, streamed to a file for the audit.
//! - [`handoff`]: what a part of a split run leaves for the merge (pending
//!   pairs, fan-out arrivals).
//! - [`nodes`]: where devices connect: one server, or a cluster's nodes by discovery.
//! - [`source`]: loopback source addresses; descriptor and port exhaustion.
//! - [`wire`]: the client frames a device writes, and the non-blocking write.
//! - [`inbound`]: the frame reader (the read side of a device's WebSocket).
//! - [`handshake`]: the WebSocket opening handshake, client side.
//! - [`beat`]: the heartbeat wheel (one shared tick, not a timer per device).
//! - [`secure`]: the same connection over TLS (`wss://`).
//! - [`sim`]: the shared state: population, one control slot per device, the
//!   recorder, the ledger, the heartbeat wheel.
//! - [`outbound`]: a device's frames onto its socket (the clock thread's sends
//!   and the heartbeat tick's heartbeats too).
//! - [`receive`]: what a device does with each server frame.
//! - [`device`]: one simulated device (a tokio task over one WebSocket at a time).
//! - [`history`]: history page reads over HTTP, bounded in flight.
//! - [`clock`]: the generator's own clock thread (precise wake-ups).
//! - [`schedule`]: phases, the online ramp, Poisson sends, drops and reads.
//! - [`audit`]: the end-of-run check of every (message, member device) pair.
//! - [`progress`]: live progress on stderr, memory and CPU sampling.
//!
//! [`simulate`] runs them for one process: the phases, the drain, the audit.

pub mod audit;
pub mod beat;
pub mod clock;
pub mod command;
pub mod device;
pub mod frame;
pub mod handoff;
pub mod handshake;
pub mod history;
pub mod inbound;
pub mod inbox;
pub mod ledger;
pub mod nodes;
pub mod outbound;
pub mod progress;
pub mod ranges;
pub mod reach;
pub mod receive;
pub mod recorder;
pub mod schedule;
pub mod secure;
pub mod sim;
pub mod source;
pub mod wire;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::outcome::Outcome;
use crate::population::{Population, Share};
use crate::scenario::{Phase, Scenario};
use history::{Endpoint, Reader};
use progress::{Progress, ServerMemory};
use recorder::{Clock, Recorder};
use schedule::{Owned, Scheduler};
use sim::{lock, Sim, SimConfig};
use source::Sources;

/// How one process takes part in a run.
pub struct Part {
    /// Which users this process drives: every user alone; `u % N == I` for
    /// part I of N (a worker, a shard). The schedule is drawn globally
    /// whatever the split ([`schedule`]).
    pub share: Share,
    /// Its run directory: the ledger of acked messages goes there (and, for
    /// a part of a split run, what the merge needs: [`handoff`]).
    pub dir: PathBuf,
    /// When the first phase starts, Unix µs: the same in every process of a
    /// split run, so their schedules and intervals line up.
    pub start_us: u64,
}

impl Part {
    /// The whole run in this process, starting now.
    pub fn whole(dir: PathBuf) -> Part {
        Part {
            share: Share::WHOLE,
            dir,
            start_us: recorder::Clock::new().now_us(),
        }
    }
}

/// What a run reaches besides the population: where the server's memory is
/// read, where history is read, where devices connect.
pub struct Setup {
    pub memory: ServerMemory,
    pub endpoint: Endpoint,
    pub nodes: nodes::Nodes,
}

/// Runs the phases, drains, stops the devices and audits: everything one
/// process measures. `memory`: where the server's memory is read;
/// `endpoint`: where history is read from. `show`: print live progress.
pub async fn simulate(
    scenario: &Scenario,
    pop: Population,
    part: Part,
    phases: &[Phase],
    setup: Setup,
    show: bool,
    stop: &CancellationToken,
) -> Outcome {
    let Setup {
        memory,
        endpoint,
        nodes,
    } = setup;
    let g = &scenario.generator;
    let concurrency = g.provision_concurrency;
    let mut outcome = Outcome::new(&scenario.name, g.max_lag.as_secs_f64() * 1000.0);
    let clock = Clock::new();
    let start = clock.instant_of(part.start_us);
    let devices = pop.devices.len();
    let sim = Sim::new(
        pop,
        Recorder::new(clock, g.interval).starting_at(start),
        SimConfig {
            behavior: scenario.behavior.clone(),
            connect_timeout: g.connect_timeout,
            seed: scenario.seed,
            sources: Vec::new(),
        },
        &part.dir,
    );
    let share = part.share;
    let sim = sim.with_sources(|target| {
        let chosen = Sources::choose(
            target,
            &g.source_addresses,
            devices,
            g.connections_per_source,
        );
        if g.source_addresses.is_empty() && !share.is_whole() {
            // Parts on one machine: each its own loopback addresses.
            let stride = chosen.addrs.len() as u32 + 1;
            chosen.shifted(share.index * stride)
        } else {
            chosen
        }
    });
    let sim = sim.with_nodes(nodes);
    let device_thread = DeviceThread::start();
    let sim = match &device_thread {
        Some(t) => sim.with_runtime(t.handle.clone()),
        None => sim,
    };
    match &sim.runtime {
        Some(rt) => drop(sim.tasks.spawn_on(beat::run(sim.clone()), rt)),
        None => drop(sim.tasks.spawn(beat::run(sim.clone()))),
    }
    let progress = Arc::new(Progress {
        phase: AtomicUsize::new(0),
        names: phases.iter().map(|p| p.name.clone()).collect(),
        samples: Mutex::new(Vec::new()),
    });
    let progress_done = CancellationToken::new();
    let progress_task = tokio::spawn(progress::run(
        progress.clone(),
        sim.clone(),
        memory,
        show,
        progress_done.clone(),
    ));

    let cpu_before = progress::self_cpu_seconds();
    // What the server says about itself, before and after: its CPU over the
    // measured phases, its connection limit, its machine (the projection).
    // Every node of a cluster (its CPU is the sum of theirs), else the server.
    let server_client = endpoint.client.clone();
    let server_bases = match sim.nodes.http_bases() {
        b if b.is_empty() => vec![endpoint.base.clone()],
        b => b,
    };
    let server_before = progress::read_servers(&server_client, &server_bases).await;
    outcome.started_at_ms = part.start_us / 1000;
    let owned: Arc<Owned> = Arc::new(Box::new(move |u| share.owns(u)));
    let scheduler = Scheduler::new(sim.clone(), {
        let owned = owned.clone();
        Box::new(move |u| owned(u))
    })
    .with_reader(Reader::new(sim.clone(), endpoint));
    // The schedule runs on the clock thread; the runtime keeps the devices.
    let phase_list = phases.to_vec();
    let (progress2, stop2) = (progress.clone(), stop.clone());
    let starts: Vec<Instant> = crate::cluster::faults::phase_starts(phases, part.start_us)
        .into_iter()
        .map(|us| clock.instant_of(us))
        .collect();
    let done = clock::spawn(stop.clone(), g.clock_resolution, move |mode, timer| {
        let mut scheduler = scheduler;
        let mut out = Vec::new();
        for (i, phase) in phase_list.iter().enumerate() {
            progress2.phase.store(i, Relaxed);
            out.push(scheduler.run_phase(phase, starts[i], &stop2, timer));
            if stop2.is_cancelled() {
                break;
            }
        }
        (out, mode, scheduler.senders().clone())
    });
    let mut senders = None;
    match done.await {
        Ok((phases, mode, sent)) => {
            senders = Some(sent);
            outcome.phases = phases;
            if let clock::ClockMode::Normal(why) = &mode {
                tracing::warn!("the clock thread is a normal thread: {why}");
            }
            outcome.generator.clock = Some(mode.describe());
        }
        Err(_) => tracing::error!("the clock thread ended without its phases"),
    }
    outcome.duration_s = start.elapsed().as_secs_f64();
    // Drain: no new sends; in-flight acks and deliveries arrive.
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = tokio::time::sleep(g.drain) => {}
    }
    // Ctrl-C during the phases or the drain: what was measured is written,
    // but it is not the run the scenario describes.
    outcome.interrupted = stop.is_cancelled();
    sim.ending.store(true, Relaxed);
    let connected_at_end: Vec<bool> = (0..devices as u32).map(|d| sim.is_connected(d)).collect();
    sim.stop_all.cancel();
    sim.tasks.close();
    let unstopped = tokio::time::timeout(Duration::from_secs(15), sim.tasks.wait())
        .await
        .is_err();
    if unstopped {
        tracing::warn!("some devices did not stop within 15s");
        sim.rec.error("device_stop_timeout");
    }
    if let Some(t) = device_thread {
        t.stop().await;
    }
    outcome.generator.cpu_seconds = progress::self_cpu_seconds() - cpu_before;
    let server_after = progress::read_servers(&server_client, &server_bases).await;
    outcome.server = progress::cpu_between(&server_before, &server_after);
    progress_done.cancel();
    let _ = progress_task.await;
    outcome.memory = std::mem::take(&mut *lock(&progress.samples));
    device::account_memory(
        &sim,
        &connected_at_end,
        &mut outcome.generator.device_memory,
    );

    // Fan-out: scheduled send -> the last member device that got it live.
    // A part of a split run saw its own members only: it hands its latest
    // arrivals to the merge, which takes the latest across parts.
    let split = !part.share.is_whole();
    if split {
        if let Err(e) = write_fanout(&sim, &part.dir.join(handoff::FANOUT)) {
            outcome
                .audit
                .incomplete(format!("cannot write the fan-out arrivals: {e}"));
        }
    } else {
        sim.flush_fanout(None);
    }
    if show {
        eprintln!("auditing: reading the inboxes a message could have reached");
    }
    let audit_started = Instant::now();
    let own = sim.ledger.finish().map(|p| p.to_path_buf());
    let inputs = audit::Inputs {
        own,
        pending: split.then(|| part.dir.join(handoff::PENDING)),
        connected_at_end,
        unstopped,
        senders,
    };
    let found = audit::audit(&sim, concurrency, |u| owned(u), inputs).await;
    if show {
        eprintln!(
            "audit: {} inboxes read in {:.1}s ({} users no message could reach were not read)",
            found.inboxes_read,
            audit_started.elapsed().as_secs_f64(),
            found.inboxes_skipped
        );
    }
    outcome.audit.merge(&found);
    // The ledger served its purpose alone; a part keeps it for the merge.
    if !split {
        let _ = std::fs::remove_file(part.dir.join(ledger::FILE));
    }
    tracing::info!(
        seconds = audit_started.elapsed().as_secs_f64(),
        "audit done"
    );
    sim.rec.drain_into(&mut outcome);
    outcome.generator.peak_rss_bytes = progress::self_peak_rss();
    outcome
}

/// Writes the latest live arrival of each group message seen here.
fn write_fanout(sim: &Sim, path: &std::path::Path) -> std::io::Result<()> {
    let mut out = handoff::Records::create(path)?;
    for ((channel, id), (sched_us, last_us)) in lock(&sim.fanout).drain() {
        out.arrival(&handoff::Arrival {
            channel,
            id,
            sched_us,
            last_us,
        })?;
    }
    out.finish()
}

/// The thread the device tasks run on: one current-thread runtime. Every
/// device's reads, acks and deliveries happen there; with the clock thread
/// writing the sends, a message costs no hand-off between runtime workers
/// (measured on 2 cores: the multi-threaded runtime's workers waking each
/// other cost more CPU per message than the work itself).
struct DeviceThread {
    handle: tokio::runtime::Handle,
    done: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl DeviceThread {
    /// `None` (the devices then run on the current runtime) if it cannot start.
    fn start() -> Option<DeviceThread> {
        let started = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .and_then(|rt| {
                let handle = rt.handle().clone();
                let (done, wait) = tokio::sync::oneshot::channel::<()>();
                let thread = std::thread::Builder::new()
                    .name("loadgen-devices".into())
                    .spawn(move || {
                        rt.block_on(async {
                            let _ = wait.await;
                        });
                    })?;
                Ok(DeviceThread {
                    handle,
                    done,
                    thread,
                })
            });
        match started {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!("the devices run on the main runtime: no device thread ({e})");
                None
            }
        }
    }

    /// Ends the thread (its runtime drops what is left) and waits for it.
    async fn stop(self) {
        let _ = self.done.send(());
        let _ = tokio::task::spawn_blocking(move || self.thread.join()).await;
    }
}
