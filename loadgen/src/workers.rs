//! `--workers N` (or `auto`): one run spread over N worker processes on this
//! machine.
//!
//! One process can hold only as many sockets as its descriptor limit allows
//! (about 19,900 here), and one runtime's timers start to lag long before a
//! large population is driven. So the parent process makes the server (or
//! reaches the target) and the population once, writes each worker's *slice*
//! of it (its users, their devices and groups, their friends' ids:
//! [`Population::slice`]) to `OUT/workers/worker-I/population.json`, and
//! re-executes itself N times as `run SCENARIO --target URL --out
//! OUT/workers/worker-I`, told its place by the environment
//! ([`WORKER_ENV`] and friends). Each worker holds only its slice (memory
//! O(its devices)) and drives the users of its [`Share`].
//!
//! **One start.** A worker that has loaded its slice writes `ready` in its
//! directory; once all are ready (or when the run's start is fixed already,
//! a shard's) the parent writes `OUT/workers/start.json` with the absolute
//! time the first phase starts, and every worker starts each phase then: the
//! same global schedule, the same intervals, so merged per-interval
//! histograms line up.
//!
//! **One outcome.** Each worker writes an ordinary run directory plus what
//! the merge needs ([`crate::parts`]); the parent reads them back, merges them
//! exactly ([`Outcome::merge`]), completes the audit across workers and the
//! fan-out ([`crate::parts::complete`]), and judges the result like any other.
//! It samples the server's memory and its nodes' connections itself, so
//! per-connection figures and `peak_connections` are the server's.
//!
//! **Ctrl-C.** The parent forwards it to every worker (each stops its phases,
//! audits and writes its report), merges what they wrote and marks the run
//! incomplete; the embedded nodes are stopped after it. A second Ctrl-C exits
//! at once: the workers and nodes see their stdin close and exit too.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use crate::cli::RunOpts;
use crate::engine::nodes::Nodes;
use crate::engine::progress::ServerMemory;
use crate::engine::{simulate, Part, Setup};
use crate::error::LoadgenError;
use crate::outcome::{MemorySample, Outcome, TargetInfo};
use crate::parts::PartInfo;
use crate::population::{Population, Share};
use crate::scenario::Scenario;

/// `I/N`: this process drives share I of N of the users.
pub const WORKER_ENV: &str = "CHATSCALE_LOADGEN_WORKER";
/// Path of the population slice a worker loads.
pub const POPULATION_ENV: &str = "CHATSCALE_LOADGEN_POPULATION";
/// The nodes devices connect to: `discover|ws://...,ws://...` (`discover` 1
/// for a cluster), in the order every process numbers them.
pub const NODES_ENV: &str = "CHATSCALE_LOADGEN_NODES";
/// Path of the start file a worker waits for.
pub const START_ENV: &str = "CHATSCALE_LOADGEN_START";

/// Written in a worker's directory once its slice is loaded.
const READY: &str = "ready";
/// How long workers may take to load their slices.
const READY_TIMEOUT: Duration = Duration::from_secs(600);
/// Between the last worker ready and the first phase.
const START_MARGIN: Duration = Duration::from_millis(500);

/// This process's place in a multi-process run.
#[derive(Debug, Clone)]
pub struct Role {
    pub share: Share,
    pub population: PathBuf,
    pub nodes: Vec<String>,
    pub discover: bool,
    pub start: PathBuf,
}

fn env_path(name: &str) -> Result<PathBuf, LoadgenError> {
    std::env::var_os(name)
        .map(PathBuf::from)
        .ok_or_else(|| LoadgenError::invalid(name, "a worker needs it (the parent sets it)"))
}

impl Role {
    /// The role the parent gave this process, if it is a worker.
    pub fn from_env() -> Result<Option<Role>, LoadgenError> {
        let Some(spec) = std::env::var_os(WORKER_ENV) else {
            return Ok(None);
        };
        let share = spec
            .to_str()
            .and_then(Share::parse)
            .ok_or_else(|| LoadgenError::invalid(WORKER_ENV, format!("{spec:?}: expected I/N")))?;
        let nodes = std::env::var(NODES_ENV).unwrap_or_default();
        let (flag, list) = nodes.split_once('|').unwrap_or(("0", ""));
        Ok(Some(Role {
            share,
            population: env_path(POPULATION_ENV)?,
            nodes: list
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
            discover: flag == "1",
            start: env_path(START_ENV)?,
        }))
    }
}

/// The start file: when the first phase starts, Unix µs.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Start {
    pub start_us: u64,
}

/// Writes a start file (whole, by rename: readers never see half of one).
pub fn write_start(path: &Path, start_us: u64) -> Result<(), LoadgenError> {
    let tmp = path.with_extension("tmp");
    let io = |source| LoadgenError::Io {
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(
        &tmp,
        serde_json::to_vec(&Start { start_us }).expect("serializes"),
    )
    .map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Waits for a start file (bounded; `None` on Ctrl-C or past `timeout`).
pub async fn wait_start(path: &Path, timeout: Duration, stop: &CancellationToken) -> Option<u64> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(s) = std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Start>(&b).ok())
        {
            return Some(s.start_us);
        }
        if stop.is_cancelled() || tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Worker side: load the slice, wait for the start, drive this worker's
/// users; writes the worker's run directory (report and part files).
pub async fn run_worker(
    opts: &RunOpts,
    scenario: &Scenario,
    base: &str,
    role: Role,
    stop: &CancellationToken,
) -> Result<u8, LoadgenError> {
    crate::embedded::watch_parent();
    let out = opts
        .out
        .clone()
        .ok_or_else(|| LoadgenError::invalid("--out", "a worker needs its directory"))?;
    let pop = Population::load(&role.population)?;
    std::fs::create_dir_all(&out).map_err(|source| LoadgenError::Io {
        path: out.clone(),
        source,
    })?;
    crate::report::write_file(&out.join(READY), b"")?;
    let clock = crate::engine::recorder::Clock::new();
    let start_us = wait_start(&role.start, READY_TIMEOUT, stop)
        .await
        .unwrap_or_else(|| clock.now_us());
    let client = crate::population::http_client(crate::engine::nodes::MAX_IN_FLIGHT)?;
    let faults = crate::cluster::faults::FaultPlan::of(&scenario.phases, start_us);
    let setup = Setup {
        memory: ServerMemory::Metrics(crate::population::http_client(1)?, base.to_string()),
        endpoint: crate::engine::history::Endpoint {
            client: crate::population::http_client(crate::engine::history::MAX_IN_FLIGHT)?,
            base: base.to_string(),
        },
        nodes: Nodes::new(&role.nodes, role.discover, client, faults),
    };
    let part = Part {
        share: role.share,
        dir: out.clone(),
        start_us,
    };
    let mut outcome = simulate(scenario, pop, part, &scenario.phases, setup, false, stop).await;
    outcome.target = TargetInfo {
        url: base.to_string(),
        embedded: false,
        storage: format!("worker {}", role.share),
        durability: None,
    };
    crate::run::finish(opts, scenario, &outcome, false)?;
    PartInfo::new(scenario, role.share, start_us).write(&out)?;
    Ok(crate::error::exit::PASSED)
}

fn worker_exe() -> Result<PathBuf, LoadgenError> {
    match std::env::var_os(crate::embedded::EXE_ENV) {
        Some(p) => Ok(p.into()),
        None => std::env::current_exe().map_err(|e| {
            LoadgenError::unrunnable(format!("cannot find this executable to start workers: {e}"))
        }),
    }
}

/// What the parent hands every worker.
pub struct Plan<'a> {
    /// The population (whole, or a shard's slice), provisioned.
    pub pop: &'a Population,
    /// The users this machine drives (a shard's, or everyone).
    pub share: Share,
    pub workers: u32,
    /// The first phase's start when it is fixed already (a shard's);
    /// `None`: once every worker is ready.
    pub start_us: Option<u64>,
    /// The nodes, in order, and whether devices ask discovery.
    pub nodes: (Vec<String>, bool),
}

/// Parent side: write the slices, start the workers, sample, merge. Calls
/// `on_start` with the run's start once it is fixed (the faults and the
/// node sampler run on it; the sampler keeps `connections` current);
/// returns the merged outcome (the caller judges it) and the start.
pub async fn run_parent(
    opts: &RunOpts,
    base: &str,
    out: &Path,
    plan: Plan<'_>,
    (memory, connections): (ServerMemory, std::sync::Arc<std::sync::atomic::AtomicU64>),
    on_start: impl FnOnce(u64),
    stop: &CancellationToken,
) -> Result<(Outcome, u64), LoadgenError> {
    let work = out.join("workers");
    let n = plan.workers;
    let mut dirs = Vec::new();
    for i in 0..n {
        let dir = worker_dir(&work, i);
        std::fs::create_dir_all(&dir).map_err(|source| LoadgenError::Io {
            path: dir.clone(),
            source,
        })?;
        let _ = std::fs::remove_file(dir.join(READY));
        plan.pop
            .slice(plan.share.split(i, n))
            .save(&dir.join("population.json"))?;
        dirs.push(dir);
    }
    let start_file = work.join("start.json");
    let _ = std::fs::remove_file(&start_file);
    let exe = worker_exe()?;
    let nodes_env = format!("{}|{}", u8::from(plan.nodes.1), plan.nodes.0.join(","));
    let mut children: Vec<Child> = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let mut cmd = Command::new(&exe);
        cmd.arg("run")
            .arg(&opts.scenario)
            .args(["--target", base, "--workers", "1"])
            .arg("--out")
            .arg(dir);
        if let Some(ca) = &opts.ca_file {
            cmd.arg("--ca-file").arg(ca);
        }
        cmd.env(WORKER_ENV, plan.share.split(i as u32, n).to_string())
            .env(POPULATION_ENV, dir.join("population.json"))
            .env(NODES_ENV, &nodes_env)
            .env(START_ENV, &start_file)
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
    let pids: Vec<i32> = children
        .iter()
        .filter_map(|c| c.id())
        .map(|p| p as i32)
        .collect();
    let interrupt = |pids: &[i32]| {
        for &pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGINT,
            );
        }
    };

    // One start for all: when every worker has loaded its slice.
    let start_us = match plan.start_us {
        Some(s) => s,
        None => {
            let deadline = Instant::now() + READY_TIMEOUT;
            while !dirs.iter().all(|d| d.join(READY).exists()) {
                let exited = children
                    .iter_mut()
                    .any(|c| matches!(c.try_wait(), Ok(Some(_))));
                if exited || stop.is_cancelled() || Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            crate::engine::recorder::Clock::new().now_us() + START_MARGIN.as_micros() as u64
        }
    };
    write_start(&start_file, start_us)?;
    on_start(start_us);

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
                interrupt(&pids);
            }
        }
        for (i, w) in waits.iter_mut().enumerate() {
            if statuses[i].is_none() {
                if let Some(r) = futures_util::FutureExt::now_or_never(w.as_mut()) {
                    statuses[i] = Some(r.ok().and_then(|s| s.code()));
                }
            }
        }
        // Every node's, as the node sampler saw them last.
        let connections = connections.load(std::sync::atomic::Ordering::Relaxed);
        let loadgen_rss = pids
            .iter()
            .filter_map(|p| reference_server::metrics::resident_memory_of(&p.to_string()))
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
            // Connections are every node's; the accepted count is the one
            // node scraped here (a cluster's other nodes accept theirs).
            eprintln!("[{:>5.0}s] {n} workers: {connections} connections on the server, {acked:.0} messages accepted at {base}", started.elapsed().as_secs_f64());
            last_print = Instant::now();
        }
    }
    drop(waits);
    drop(stdins);
    for (i, status) in statuses.iter().enumerate() {
        if *status != Some(Some(0)) {
            return Err(LoadgenError::unrunnable(format!(
                "worker {i} failed (exit status {status:?}); its output is in {}",
                dirs[i].display()
            )));
        }
    }

    let mut outcome = merge_dirs(&dirs)?;
    crate::parts::complete(&dirs, plan.pop, &mut outcome)?;
    if !outcome.audit.cross_part_pending {
        // The workers cover every user: nothing is left for a later merge.
        crate::parts::clean(&dirs);
    }
    for dir in &dirs {
        let _ = std::fs::remove_file(dir.join("population.json"));
        let _ = std::fs::remove_file(dir.join(READY));
    }
    let _ = std::fs::remove_file(&start_file);
    outcome.memory = samples;
    if forwarded {
        outcome
            .audit
            .incomplete("interrupted (Ctrl-C): the workers stopped before the phases ended");
    }
    Ok((outcome, start_us))
}

/// The outcomes of run directories merged, each phase's sends summed.
pub fn merge_dirs(dirs: &[PathBuf]) -> Result<Outcome, LoadgenError> {
    let mut merged: Option<Outcome> = None;
    for dir in dirs {
        let (_, o) = crate::report::merge::read_outcome(dir)?;
        match &mut merged {
            None => merged = Some(o),
            Some(m) => {
                for (mine, theirs) in m.phases.iter_mut().zip(&o.phases) {
                    mine.messages_sent += theirs.messages_sent;
                }
                m.merge(&o);
            }
        }
    }
    merged.ok_or_else(|| LoadgenError::unrunnable("no run directory to merge"))
}

fn worker_dir(work: &Path, i: u32) -> PathBuf {
    work.join(format!("worker-{i}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shared start: workers waiting before the parent writes the start
    /// file all read the one absolute time it holds; without one a waiter
    /// gives up at its bound or on Ctrl-C, never starting on its own.
    #[tokio::test]
    async fn every_waiter_gets_the_one_start_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("start.json");
        let stop = CancellationToken::new();
        let waiters: Vec<_> = (0..4)
            .map(|_| {
                let (path, stop) = (path.clone(), stop.clone());
                tokio::spawn(async move { wait_start(&path, Duration::from_secs(10), &stop).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(60)).await;
        write_start(&path, 1_764_560_000_123_456).unwrap();
        for w in waiters {
            assert_eq!(w.await.unwrap(), Some(1_764_560_000_123_456));
        }
        assert!(!path.with_extension("tmp").exists(), "written by rename");

        let none = dir.path().join("never.json");
        assert_eq!(
            wait_start(&none, Duration::from_millis(50), &stop).await,
            None
        );
        stop.cancel();
        assert_eq!(
            wait_start(&none, Duration::from_secs(60), &stop).await,
            None
        );
    }
}
