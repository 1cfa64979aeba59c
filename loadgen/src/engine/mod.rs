//! The simulation engine: simulated devices over real WebSockets, the
//! open-model schedule that drives them, what they record, and the audit.
//!
//! Layers, lowest first (a module imports only from the ones above it):
//! - [`command`]: what the scheduler asks of a device; `client_msg_id` encoding.
//! - [`recorder`]: worker-local latency histograms, counters and errors.
//! - [`inbox`]: what one device knows (cursor, received seqs, unacked sends).
//! - [`sim`]: the shared state: population, one control slot per device, the
//!   recorder, the acked-message ledger.
//! - [`device`]: one simulated device (a tokio task over one WebSocket at a time).
//! - [`history`]: history page reads over HTTP, bounded in flight.
//! - [`schedule`]: phases, the online ramp, Poisson sends, drops and reads.
//! - [`audit`]: the end-of-run check of every (message, member device) pair.
//! - [`progress`]: live progress on stderr, memory and CPU sampling.
//!
//! [`simulate`] runs them for one process: the phases, the drain, the audit.

pub mod audit;
pub mod command;
pub mod device;
pub mod history;
pub mod inbox;
pub mod progress;
pub mod recorder;
pub mod schedule;
pub mod sim;

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::outcome::Outcome;
use crate::population::Population;
use crate::scenario::{Phase, Scenario};
use history::{Endpoint, Reader};
use progress::{Progress, ServerMemory};
use recorder::{Clock, Metric, Recorder};
use schedule::Scheduler;
use sim::{lock, Sim};

/// Runs the phases with the users in `owned`, drains, stops the devices and
/// audits: everything one worker measures. `server`: where its memory is read
/// and where history is read from. `show`: print live progress.
#[allow(clippy::too_many_arguments)] // one call site per mode; a struct would only rename them
pub async fn simulate(
    scenario: &Scenario,
    pop: Population,
    seed: u64,
    owned: Vec<u32>,
    phases: &[Phase],
    (memory, endpoint): (ServerMemory, Endpoint),
    show: bool,
    stop: &CancellationToken,
) -> Outcome {
    let concurrency = scenario.generator.provision_concurrency;
    let mut outcome = Outcome::new(
        &scenario.name,
        scenario.generator.max_lag.as_secs_f64() * 1000.0,
    );
    let clock = Clock::new();
    let mine: std::collections::HashSet<u32> = owned.iter().copied().collect();
    let sim = Sim::new(
        pop,
        Recorder::new(clock, scenario.generator.interval),
        scenario.behavior.clone(),
        scenario.generator.connect_timeout,
        seed,
    );
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
    let mut scheduler =
        Scheduler::new(sim.clone(), owned).with_reader(Reader::new(sim.clone(), endpoint));
    for (i, phase) in phases.iter().enumerate() {
        progress.phase.store(i, Relaxed);
        let done = scheduler.run_phase(phase, stop).await;
        outcome.phases.push(done);
        if stop.is_cancelled() {
            break;
        }
    }
    outcome.duration_s = started.elapsed().as_secs_f64();
    // Drain: no new sends; in-flight acks and deliveries arrive.
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = tokio::time::sleep(scenario.generator.drain) => {}
    }
    sim.ending.store(true, Relaxed);
    sim.stop_all.cancel();
    sim.tasks.close();
    if tokio::time::timeout(Duration::from_secs(15), sim.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("some devices did not stop within 15s");
        sim.rec.error("device_stop_timeout");
    }
    outcome.generator.cpu_seconds = progress::self_cpu_seconds() - cpu_before;
    progress_done.cancel();
    let _ = progress_task.await;
    outcome.memory = std::mem::take(&mut *lock(&progress.samples));

    // Fan-out: scheduled send -> the last member device that got it live.
    for (_, (sched, last)) in std::mem::take(&mut *lock(&sim.fanout)) {
        sim.rec.record(Metric::FANOUT, last.saturating_sub(sched));
    }
    if show {
        eprintln!("auditing: reading the inbox of every member");
    }
    let audit_started = Instant::now();
    outcome.audit = audit::audit(&sim, concurrency, |u| mine.contains(&u)).await;
    tracing::info!(
        seconds = audit_started.elapsed().as_secs_f64(),
        "audit done"
    );
    sim.rec.drain_into(&mut outcome);
    outcome.generator.peak_rss_bytes = progress::self_peak_rss();
    outcome
}
