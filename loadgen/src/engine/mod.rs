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
//! - [`source`]: loopback source addresses; descriptor and port exhaustion.
//! - [`wire`]: the socket a device shares with the clock thread; client frames.
//! - [`sim`]: the shared state: population, one control slot per device, the
//!   recorder, the ledger.
//! - [`outbound`]: a device's frames onto its socket (the clock thread's sends too).
//! - [`device`]: one simulated device (a tokio task over one WebSocket at a time).
//! - [`history`]: history page reads over HTTP, bounded in flight.
//! - [`clock`]: the generator's own clock thread (precise wake-ups).
//! - [`schedule`]: phases, the online ramp, Poisson sends, drops and reads.
//! - [`audit`]: the end-of-run check of every (message, member device) pair.
//! - [`progress`]: live progress on stderr, memory and CPU sampling.
//!
//! [`simulate`] runs them for one process: the phases, the drain, the audit.

pub mod audit;
pub mod clock;
pub mod command;
pub mod device;
pub mod frame;
pub mod history;
pub mod inbox;
pub mod ledger;
pub mod outbound;
pub mod progress;
pub mod ranges;
pub mod recorder;
pub mod schedule;
pub mod sim;
pub mod source;
pub mod wire;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::outcome::Outcome;
use crate::population::Population;
use crate::scenario::{Phase, Scenario};
use history::{Endpoint, Reader};
use progress::{Progress, ServerMemory};
use recorder::{Clock, Recorder};
use schedule::{Owned, Scheduler};
use sim::{lock, Sim, SimConfig};
use source::Sources;

/// How one process takes part in a run.
pub struct Part {
    /// Which users this process drives, by user index (every user in a single
    /// process; `|u| u % N == I` for worker I of N). The schedule is drawn
    /// globally whatever the split ([`schedule`]).
    pub owned: Owned,
    /// Its run directory: the ledger of acked messages goes there.
    pub dir: PathBuf,
    /// The other processes' run directories, whose ledgers the audit reads
    /// once they are complete (workers of one run); empty alone.
    pub peers: Vec<PathBuf>,
}

/// How long a worker waits for the other workers' ledgers before auditing.
const PEER_WAIT: Duration = Duration::from_secs(120);

/// Runs the phases, drains, stops the devices and audits: everything one
/// process measures. `memory`: where the server's memory is read;
/// `endpoint`: where history is read from. `show`: print live progress.
#[allow(clippy::too_many_arguments)] // one call site per mode; a struct would only rename them
pub async fn simulate(
    scenario: &Scenario,
    pop: Population,
    part: Part,
    phases: &[Phase],
    (memory, endpoint): (ServerMemory, Endpoint),
    show: bool,
    stop: &CancellationToken,
) -> Outcome {
    let g = &scenario.generator;
    let concurrency = g.provision_concurrency;
    let mut outcome = Outcome::new(&scenario.name, g.max_lag.as_secs_f64() * 1000.0);
    let clock = Clock::new();
    let devices = pop.devices.len();
    let sim = Sim::new(
        pop,
        Recorder::new(clock, g.interval),
        SimConfig {
            behavior: scenario.behavior.clone(),
            connect_timeout: g.connect_timeout,
            seed: scenario.seed,
            sources: Vec::new(),
        },
        &part.dir,
    );
    let sim = sim.with_sources(|target| {
        Sources::choose(
            target,
            &g.source_addresses,
            devices,
            g.connections_per_source,
        )
    });
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
    outcome.started_at_ms = clock.now_us() / 1000;
    let started = Instant::now();
    let owned: Arc<Owned> = Arc::new(part.owned);
    let scheduler = Scheduler::new(sim.clone(), {
        let owned = owned.clone();
        Box::new(move |u| owned(u))
    })
    .with_reader(Reader::new(sim.clone(), endpoint));
    // The schedule runs on the clock thread; the runtime keeps the devices.
    let phase_list = phases.to_vec();
    let (progress2, stop2) = (progress.clone(), stop.clone());
    let done = clock::spawn(stop.clone(), g.clock_resolution, move |mode, timer| {
        let mut scheduler = scheduler;
        let mut out = Vec::new();
        for (i, phase) in phase_list.iter().enumerate() {
            progress2.phase.store(i, Relaxed);
            out.push(scheduler.run_phase(phase, &stop2, timer));
            if stop2.is_cancelled() {
                break;
            }
        }
        (out, mode)
    });
    match done.await {
        Ok((phases, mode)) => {
            outcome.phases = phases;
            if let clock::ClockMode::Normal(why) = &mode {
                tracing::warn!("the clock thread is a normal thread: {why}");
            }
            outcome.generator.clock = Some(mode.describe());
        }
        Err(_) => tracing::error!("the clock thread ended without its phases"),
    }
    outcome.duration_s = started.elapsed().as_secs_f64();
    // Drain: no new sends; in-flight acks and deliveries arrive.
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = tokio::time::sleep(g.drain) => {}
    }
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
    outcome.generator.cpu_seconds = progress::self_cpu_seconds() - cpu_before;
    progress_done.cancel();
    let _ = progress_task.await;
    outcome.memory = std::mem::take(&mut *lock(&progress.samples));
    device::account_memory(
        &sim,
        &connected_at_end,
        &mut outcome.generator.device_memory,
    );

    // Fan-out: scheduled send -> the last member device that got it live.
    sim.flush_fanout(None);
    if show {
        eprintln!("auditing: reading the inbox of every member");
    }
    let audit_started = Instant::now();
    let own = sim.ledger.finish().map(|p| p.to_path_buf());
    let peers = wait_for_peers(&part.peers).await;
    let inputs = audit::Inputs {
        own,
        peers: peers.iter().map(|d| d.join(ledger::FILE)).collect(),
        connected_at_end,
        unstopped,
    };
    outcome.audit = audit::audit(&sim, concurrency, |u| owned(u), inputs).await;
    for p in peers.len()..part.peers.len() {
        outcome.audit.incomplete(format!(
            "the ledger of {} did not appear within {PEER_WAIT:?}",
            part.peers[p].display()
        ));
    }
    // The ledger served its purpose; it is as large as the run is long. (The
    // other workers may still be reading a worker's: their parent removes it.)
    if part.peers.is_empty() {
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

/// Waits (bounded) until every peer has marked its ledger complete; returns
/// those that did, in order, stopping at the first that did not.
async fn wait_for_peers(peers: &[PathBuf]) -> Vec<PathBuf> {
    let deadline = tokio::time::Instant::now() + PEER_WAIT;
    let mut ready = Vec::new();
    for p in peers {
        while !p.join(ledger::DONE).exists() {
            if tokio::time::Instant::now() >= deadline {
                return ready;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ready.push(p.clone());
    }
    ready
}
