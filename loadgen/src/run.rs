//! One scenario run, end to end: validate, start (or reach) the server,
//! create the population, run the phases, drain, audit, judge, write the report.
//!
//! Everything that can be checked before load starts is: the scenario and the
//! command line (exit 2), the descriptor limit and the target's health (exit 3).
//! The embedded server is stopped on every path out of [`run`] (an explicit
//! SIGTERM on the normal and error paths, `kill_on_drop` and the child's stdin
//! watch otherwise). The first Ctrl-C ends the phases early and still writes
//! the report; the second exits at once.
//!
//! One process is one worker: [`simulate`] produces one [`Outcome`] and
//! [`finish`] judges it and writes the report. With `--workers N` the
//! [`crate::workers`] parent starts N worker processes and merges their
//! outcomes with [`Outcome::merge`] before judging.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::cli::RunOpts;
use crate::embedded::{EmbeddedConfig, EmbeddedServer};
use crate::error::{exit, LoadgenError};
use crate::history::{Endpoint, Reader};
use crate::outcome::{Outcome, Provisioning, TargetInfo};
use crate::population::Population;
use crate::progress::{self, Progress, ServerMemory};
use crate::recorder::{Clock, Metric, Recorder};
use crate::report::{self, RunInfo};
use crate::scenario::{check_target_url, Phase, Scenario};
use crate::schedule::Scheduler;
use crate::sim::{lock, Sim};
use crate::{audit, population};

/// Descriptors kept aside for provisioning, the audit, logs and the runtime.
const FD_SLACK: u64 = 256;

/// `loadgen run`: returns the exit status (0 passed, 1 a threshold failed,
/// 3 generator-limited), or the error that stopped the run (2 or 3).
pub async fn run(opts: RunOpts) -> Result<u8, LoadgenError> {
    if opts.workers == 0 || opts.workers > 64 {
        return Err(LoadgenError::invalid(
            "--workers",
            format!("{}: must be 1 to 64", opts.workers),
        ));
    }
    let role = crate::workers::Role::from_env()?;
    let scenario = Scenario::load(&opts.scenario)?;
    if opts.workers as u64 > scenario.population.users {
        return Err(LoadgenError::invalid(
            "--workers",
            format!(
                "{}: more workers than the {} users to share among them",
                opts.workers, scenario.population.users
            ),
        ));
    }
    let target = match &opts.target {
        Some(url) => {
            check_target_url(url).map_err(|r| LoadgenError::invalid("--target", r))?;
            Some(url.trim_end_matches('/').to_string())
        }
        None => scenario
            .target
            .url
            .as_ref()
            .map(|u| u.trim_end_matches('/').to_string()),
    };
    if let Some(storage) = &opts.storage {
        if storage.trim().is_empty() {
            return Err(LoadgenError::invalid("--storage", "must name a backend"));
        }
    }
    let storage = opts
        .storage
        .clone()
        .unwrap_or_else(|| scenario.target.storage.clone());
    check_descriptors(&scenario, role.as_ref().map_or(opts.workers, |r| r.count))?;

    let stop = CancellationToken::new();
    tokio::spawn(watch_ctrl_c(stop.clone()));
    if let Some(role) = role {
        // A worker process of a multi-process run: the parent made the server
        // and the population; drive this worker's share of the users.
        let base =
            target.ok_or_else(|| LoadgenError::invalid("--target", "a worker needs the target"))?;
        return crate::workers::run_worker(&opts, &scenario, &base, role, &stop).await;
    }

    let server = match &target {
        Some(_) => None,
        None => Some(
            EmbeddedServer::start(&EmbeddedConfig {
                storage: storage.clone(),
                heartbeat_interval: scenario.behavior.heartbeat_interval,
                offline_after: scenario.behavior.offline_after,
            })
            .await?,
        ),
    };
    let base = target
        .clone()
        .or_else(|| server.as_ref().map(|s| s.url.clone()))
        .unwrap_or_default();
    let info = TargetInfo {
        url: base.clone(),
        embedded: server.is_some(),
        storage: if server.is_some() {
            storage
        } else {
            "unknown (remote target)".into()
        },
        durability: server.as_ref().and_then(|s| s.durability.clone()),
    };
    let memory = match &server {
        Some(s) => ServerMemory::Pid(s.pid),
        None => ServerMemory::Metrics(population::http_client(1)?, base.clone()),
    };
    let result = if opts.workers > 1 {
        crate::workers::run_parent(&opts, &scenario, &base, info, memory, &stop).await
    } else {
        drive(&opts, &scenario, &base, info, memory, &stop).await
    };
    if let Some(server) = server {
        server.stop().await;
    }
    result
}

/// Fails with exit 3 when the scenario needs more sockets than each process may open.
fn check_descriptors(scenario: &Scenario, workers: u32) -> Result<(), LoadgenError> {
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    let need = scenario.peak_devices().div_ceil(workers as u64)
        + FD_SLACK
        + scenario.generator.provision_concurrency as u64;
    if need > limit {
        return Err(LoadgenError::unrunnable(format!(
            "the scenario needs up to {need} file descriptors per process (one socket per connected device, plus {FD_SLACK}) but a process may open {limit}: use more --workers, lower the phases' `online`, or split the load over several machines"
        )));
    }
    Ok(())
}

/// First Ctrl-C: stop the phases (the report is still written). Second: exit now.
async fn watch_ctrl_c(stop: CancellationToken) {
    if tokio::signal::ctrl_c().await.is_err() {
        return;
    }
    eprintln!(
        "\ninterrupted: stopping the users and writing the report (Ctrl-C again to exit at once)"
    );
    stop.cancel();
    if tokio::signal::ctrl_c().await.is_ok() {
        eprintln!("interrupted twice: exiting");
        // The embedded server sees its stdin close and exits by itself.
        std::process::exit(130);
    }
}

async fn drive(
    opts: &RunOpts,
    scenario: &Scenario,
    base: &str,
    target: TargetInfo,
    memory: ServerMemory,
    stop: &CancellationToken,
) -> Result<u8, LoadgenError> {
    let (pop, provisioning, client) = provision(scenario, base).await?;
    let owned = (0..pop.users.len() as u32).collect();
    let endpoint = Endpoint {
        client,
        base: base.to_string(),
    };
    let mut outcome = simulate(
        scenario,
        pop,
        scenario.seed,
        owned,
        &scenario.phases,
        (memory, endpoint),
        true,
        stop,
    )
    .await;
    outcome.provisioning = provisioning;
    outcome.target = target;
    finish(opts, scenario, &outcome, true)
}

/// Creates the scenario's population on the server; returns it with the HTTP
/// client that made it (history reads reuse its connection pool).
pub(crate) async fn provision(
    scenario: &Scenario,
    base: &str,
) -> Result<(Population, Provisioning, reqwest::Client), LoadgenError> {
    let concurrency = scenario.generator.provision_concurrency;
    let client = population::http_client(concurrency)?;
    population::wait_healthy(&client, base).await?;
    let mut pop = population::plan(&scenario.population, scenario.seed);
    eprintln!(
        "creating the population: {} users, {} devices, {} friendships, {} groups",
        pop.users.len(),
        pop.devices.len(),
        pop.friendships.len(),
        pop.groups.len()
    );
    let provisioning = population::provision(&client, base, &mut pop, concurrency).await?;
    eprintln!(
        "population created in {:.1}s; running {} phase(s) against {base}",
        provisioning.seconds,
        scenario.phases.len()
    );
    Ok((pop, provisioning, client))
}

/// Runs the phases with the users in `owned`, drains, stops the devices and
/// audits: everything one worker measures. `server`: where its memory is read
/// and where history is read from. `show`: print live progress.
#[allow(clippy::too_many_arguments)] // one call site per mode; a struct would only rename them
pub(crate) async fn simulate(
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

/// Judges the outcome, writes the report, prints the summary; the exit status.
pub(crate) fn finish(
    opts: &RunOpts,
    scenario: &Scenario,
    outcome: &Outcome,
    show: bool,
) -> Result<u8, LoadgenError> {
    let info = RunInfo {
        scenario: scenario.name.clone(),
        description: scenario.description.clone(),
        seed: scenario.seed,
        scenario_path: opts.scenario.display().to_string(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    let report = report::build(
        &info,
        &scenario.thresholds,
        &scenario.projection,
        outcome,
        opts.baseline.as_deref(),
    )?;
    let dir = opts
        .out
        .clone()
        .unwrap_or_else(|| default_out_dir(&scenario.name));
    report::write_all(&report, outcome, &dir)?;
    if !show {
        return Ok(exit::PASSED);
    }
    println!("{}", report::summary(&report));
    println!("report: {}", dir.display());
    if outcome.generator.limited() {
        eprintln!(
            "the generator could not keep its schedule (lag p99 {:.1}ms > {:.0}ms): these results measure the generator, not the server; give it fewer devices or a lower rate, or more --workers",
            outcome.generator.lag.value_at_quantile(0.99) as f64 / 1000.0,
            outcome.generator.bound_ms
        );
        return Ok(exit::UNRUNNABLE);
    }
    Ok(if report.passed {
        exit::PASSED
    } else {
        exit::FAILED
    })
}

/// `reports/runs/NAME-YYYYMMDD-HHMMSS/` (UTC).
pub(crate) fn default_out_dir(name: &str) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    PathBuf::from("reports/runs").join(format!(
        "{name}-{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    ))
}
