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

use tokio_util::sync::CancellationToken;

use crate::cli::RunOpts;
use crate::embedded::{EmbeddedConfig, EmbeddedServer};
use crate::engine::history::Endpoint;
use crate::engine::progress::ServerMemory;
use crate::error::{exit, LoadgenError};
use crate::outcome::{Outcome, TargetInfo};
use crate::report::{self, RunInfo};
use crate::scenario::{check_target_url, Scenario};
use crate::{engine, population};

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
    if let Some(ca) = &opts.ca_file {
        crate::tls::trust_ca_file(ca)?;
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
        let out = out_dir(&opts, &scenario);
        let outcome = crate::workers::run_worker(&scenario, &base, &out, role, &stop).await?;
        return finish(&opts, &scenario, &outcome, false);
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
        let out = out_dir(&opts, &scenario);
        match crate::workers::run_parent(&opts, &scenario, &base, &out, (info, memory), &stop).await
        {
            Ok(outcome) => finish(&opts, &scenario, &outcome, true),
            Err(e) => Err(e),
        }
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
    let (pop, provisioning, client) = population::provision_for(scenario, base).await?;
    let endpoint = Endpoint {
        client,
        base: base.to_string(),
    };
    let part = engine::Part {
        owned: Box::new(|_| true),
        dir: out_dir(opts, scenario),
        peers: Vec::new(),
    };
    let mut outcome = engine::simulate(
        scenario,
        pop,
        part,
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
    let dir = out_dir(opts, scenario);
    report::write_all(&report, outcome, &dir)?;
    if !show {
        return Ok(exit::PASSED);
    }
    println!("{}", report::summary(&report));
    println!("report: {}", dir.display());
    if let Some(why) = outcome.generator.limited_reason() {
        eprintln!("{why}");
        return Ok(exit::UNRUNNABLE);
    }
    if outcome.audit.incomplete {
        eprintln!(
            "the audit is incomplete ({}): the run cannot pass",
            outcome
                .audit
                .incomplete_reason
                .as_deref()
                .unwrap_or("no reason given")
        );
        return Ok(exit::UNRUNNABLE);
    }
    Ok(if report.passed {
        exit::PASSED
    } else {
        exit::FAILED
    })
}

/// Where the run writes: `--out`, or a new directory under `reports/runs/`
/// (fixed once per process, so the ledger and the report land together).
fn out_dir(opts: &RunOpts, scenario: &Scenario) -> PathBuf {
    static DEFAULT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    match &opts.out {
        Some(p) => p.clone(),
        None => DEFAULT
            .get_or_init(|| default_out_dir(&scenario.name))
            .clone(),
    }
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
