//! `--workers N`: one run spread over N worker processes on this machine.
//!
//! One process can hold only as many sockets as its descriptor limit allows
//! (about 19,900 here), and one tokio runtime's timers start to lag long before
//! a large population is driven. So the parent process makes the server (or
//! reaches the target) and the population once, writes the provisioned
//! population (ids, tokens, channels) to `OUT/workers/population.json`, and
//! re-executes itself N times as `run SCENARIO --target URL --out
//! OUT/workers/worker-I` with `CHATSCALE_LOADGEN_WORKER=I/N`. Worker I drives
//! the users whose index is I modulo N: its share of each phase's `online` and
//! 1/N of each rate, with its own seed, and audits the messages it sent
//! (reading every member's inbox, wherever that member is driven). Each worker
//! writes an ordinary run directory; the parent reads them back
//! ([`crate::report::merge::read_outcome`]), merges them exactly
//! ([`Outcome::merge`]), and judges the merged outcome like any other. The
//! parent itself samples the server's memory against the total connection count
//! (from `/metrics`) and the workers' summed memory, so per-connection figures
//! stay right.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use crate::cli::RunOpts;
use crate::engine::progress::ServerMemory;
use crate::engine::{simulate, Part};
use crate::error::LoadgenError;
use crate::outcome::{MemorySample, Outcome, TargetInfo};
use crate::population::provision_for;
use crate::population::Population;
use crate::scenario::Scenario;

/// `I/N`: this process is worker I of N.
pub const WORKER_ENV: &str = "CHATSCALE_LOADGEN_WORKER";
/// Path of the provisioned population a worker loads.
pub const POPULATION_ENV: &str = "CHATSCALE_LOADGEN_POPULATION";

/// This process's place in a multi-process run.
#[derive(Debug, Clone)]
pub struct Role {
    pub index: u32,
    pub count: u32,
    pub population: PathBuf,
}

impl Role {
    /// The role the parent gave this process, if it is a worker.
    pub fn from_env() -> Result<Option<Role>, LoadgenError> {
        let Some(spec) = std::env::var_os(WORKER_ENV) else {
            return Ok(None);
        };
        let bad = || LoadgenError::invalid(WORKER_ENV, format!("{spec:?}: expected I/N"));
        let spec_str = spec.to_str().ok_or_else(bad)?;
        let (i, n) = spec_str.split_once('/').ok_or_else(bad)?;
        let (index, count): (u32, u32) =
            (i.parse().map_err(|_| bad())?, n.parse().map_err(|_| bad())?);
        if count == 0 || index >= count {
            return Err(bad());
        }
        let population = std::env::var_os(POPULATION_ENV)
            .map(PathBuf::from)
            .ok_or_else(|| {
                LoadgenError::invalid(POPULATION_ENV, "a worker needs the population file")
            })?;
        Ok(Some(Role {
            index,
            count,
            population,
        }))
    }

    pub fn owns(&self, user: u32) -> bool {
        user % self.count == self.index
    }
}

/// Worker side: drive this worker's users; the caller writes its run directory.
pub async fn run_worker(
    scenario: &Scenario,
    base: &str,
    out: &Path,
    role: Role,
    stop: &CancellationToken,
) -> Result<Outcome, LoadgenError> {
    crate::embedded::watch_parent();
    let pop = Population::load(&role.population)?;
    // Siblings' run directories: worker-J beside this one.
    let work = out.parent().unwrap_or(Path::new("."));
    let peers = (0..role.count)
        .filter(|&j| j != role.index)
        .map(|j| worker_dir(work, j))
        .collect();
    let (index, count) = (role.index, role.count);
    let part = Part {
        owned: Box::new(move |u| u % count == index),
        dir: out.to_path_buf(),
        peers,
    };
    let memory = ServerMemory::Metrics(crate::population::http_client(1)?, base.to_string());
    let endpoint = crate::engine::history::Endpoint {
        client: crate::population::http_client(crate::engine::history::MAX_IN_FLIGHT)?,
        base: base.to_string(),
    };
    let mut outcome = simulate(
        scenario,
        pop,
        part,
        &scenario.phases,
        (memory, endpoint),
        false,
        stop,
    )
    .await;
    outcome.target = TargetInfo {
        url: base.to_string(),
        embedded: false,
        storage: format!("worker {}/{}", role.index, role.count),
        durability: None,
    };
    Ok(outcome)
}

fn worker_exe() -> Result<PathBuf, LoadgenError> {
    match std::env::var_os(crate::embedded::EXE_ENV) {
        Some(p) => Ok(p.into()),
        None => std::env::current_exe().map_err(|e| {
            LoadgenError::unrunnable(format!("cannot find this executable to start workers: {e}"))
        }),
    }
}

/// Parent side: provision, start the workers (their run directories go under
/// `out/workers/`), sample, merge; the caller judges the merged outcome.
pub async fn run_parent(
    opts: &RunOpts,
    scenario: &Scenario,
    base: &str,
    out: &Path,
    (target, memory): (TargetInfo, ServerMemory),
    stop: &CancellationToken,
) -> Result<Outcome, LoadgenError> {
    let (pop, provisioning, _) = provision_for(scenario, base).await?;
    let work = out.join("workers");
    std::fs::create_dir_all(&work).map_err(|source| LoadgenError::Io {
        path: work.clone(),
        source,
    })?;
    let pop_path = work.join("population.json");
    pop.save(&pop_path)?;
    drop(pop);

    let exe = worker_exe()?;
    let n = opts.workers;
    let mut children: Vec<Child> = Vec::new();
    for i in 0..n {
        let mut cmd = Command::new(&exe);
        cmd.arg("run")
            .arg(&opts.scenario)
            .args(["--target", base])
            .arg("--out")
            .arg(worker_dir(&work, i));
        if let Some(ca) = &opts.ca_file {
            cmd.arg("--ca-file").arg(ca);
        }
        cmd.env(WORKER_ENV, format!("{i}/{n}"))
            .env(POPULATION_ENV, &pop_path)
            .stdout(std::process::Stdio::null())
            // Own process group: a terminal's Ctrl-C reaches the parent only,
            // which forwards one (a second would make a worker exit unreported).
            .process_group(0)
            // The worker exits when this pipe closes: when the parent is gone.
            .env(crate::embedded::PARENT_WATCH_ENV, "1")
            .stdin(std::process::Stdio::piped())
            .kill_on_drop(true);
        children.push(
            cmd.spawn()
                .map_err(|e| LoadgenError::unrunnable(format!("cannot start worker {i}: {e}")))?,
        );
    }
    eprintln!("{n} workers started");
    // Held until the workers are done (tokio's `wait` would close them).
    let stdins: Vec<_> = children.iter_mut().map(|c| c.stdin.take()).collect();
    let pids: Vec<String> = children
        .iter()
        .filter_map(|c| c.id())
        .map(|p| p.to_string())
        .collect();

    // Sample until every worker is done; forward a Ctrl-C the workers did not see.
    let client = crate::population::http_client(1)?;
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut waits: Vec<_> = children.iter_mut().map(|c| Box::pin(c.wait())).collect();
    let mut statuses = vec![None; waits.len()];
    let mut forwarded = false;
    let mut last_print = Instant::now();
    while statuses.iter().any(Option::is_none) {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.cancelled(), if !forwarded => {
                forwarded = true;
                for pid in &pids {
                    let _ = Command::new("kill").args(["-INT", pid]).status().await;
                }
            }
        }
        for (i, w) in waits.iter_mut().enumerate() {
            if statuses[i].is_none() {
                if let Some(r) = futures_util::FutureExt::now_or_never(w.as_mut()) {
                    statuses[i] = Some(r.ok().and_then(|s| s.code()));
                }
            }
        }
        let connections = crate::engine::progress::scrape(&client, base, "chatscale_connections")
            .await
            .unwrap_or(0.0) as u64;
        let loadgen_rss = pids
            .iter()
            .filter_map(|p| reference_server::metrics::resident_memory_of(p))
            .sum();
        samples.push(MemorySample {
            t_ms: started.elapsed().as_millis() as u64,
            connections,
            server_rss_bytes: memory.read().await,
            loadgen_rss_bytes: loadgen_rss,
        });
        if last_print.elapsed() >= Duration::from_secs(5) {
            let acked =
                crate::engine::progress::scrape(&client, base, "chatscale_messages_accepted_total")
                    .await
                    .unwrap_or(0.0);
            eprintln!("[{:>5.0}s] {n} workers: {connections} connections on the server, {acked:.0} messages accepted", started.elapsed().as_secs_f64());
            last_print = Instant::now();
        }
    }
    drop(waits);
    drop(stdins);
    for (i, status) in statuses.iter().enumerate() {
        if *status != Some(Some(0)) {
            return Err(LoadgenError::unrunnable(format!(
                "worker {i} failed (exit status {status:?}); its output is in {}",
                worker_dir(&work, i as u32).display()
            )));
        }
    }

    for i in 0..n {
        let _ = std::fs::remove_file(worker_dir(&work, i).join(crate::engine::ledger::FILE));
    }
    let mut merged: Option<Outcome> = None;
    let mut phases_sent = vec![0u64; scenario.phases.len()];
    for i in 0..n {
        let (_, o) = crate::report::merge::read_outcome(&worker_dir(&work, i))?;
        for (k, p) in o.phases.iter().enumerate().take(phases_sent.len()) {
            phases_sent[k] += p.messages_sent;
        }
        match &mut merged {
            None => merged = Some(o),
            Some(m) => m.merge(&o),
        }
    }
    let mut outcome = merged.ok_or_else(|| LoadgenError::unrunnable("no worker outcome"))?;
    for (k, p) in outcome.phases.iter_mut().enumerate() {
        p.online = scenario.phases.get(k).map_or(p.online, |s| s.online);
        p.message_rate = scenario
            .phases
            .get(k)
            .map_or(p.message_rate, |s| s.message_rate);
        p.messages_sent = phases_sent.get(k).copied().unwrap_or(0);
    }
    outcome.memory = samples;
    outcome.provisioning = provisioning;
    outcome.target = target;
    Ok(outcome)
}

fn worker_dir(work: &Path, i: u32) -> PathBuf {
    work.join(format!("worker-{i}"))
}
