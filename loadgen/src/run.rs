//! One scenario run, end to end: validate, start (or reach) the server,
//! create the population, run the phases, drain, audit, judge, write the report.
//!
//! Everything that can be checked before load starts is: the scenario and the
//! command line (exit 2), whether the load fits this machine's descriptors,
//! ports and memory ([`crate::fit`]) and the target's health (exit 3). The
//! embedded server, one node or a cluster ([`crate::cluster`]), is stopped on
//! every path out of [`run`] (an explicit SIGTERM on the normal and error
//! paths, `kill_on_drop` and the children's stdin watch otherwise). The first
//! Ctrl-C ends the phases early and still writes the report; the second exits
//! at once.
//!
//! One process is one part: [`crate::engine::simulate`] produces one
//! [`Outcome`] and [`finish`] judges it and writes the report. With several
//! workers the [`crate::workers`] parent starts them and merges their
//! outcomes; with `--shard` this process is one machine's part
//! ([`crate::shard`]), completed later by `loadgen merge`.

use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::cli::RunOpts;
use crate::cluster::faults::FaultPlan;
use crate::cluster::sampler::{self, Nodes as SampledNodes};
use crate::cluster::{EmbeddedCluster, Plan};
use crate::engine::history::Endpoint;
use crate::engine::nodes::Nodes;
use crate::engine::progress::ServerMemory;
use crate::error::{exit, LoadgenError};
use crate::outcome::{Outcome, TargetInfo};
use crate::parts::PartInfo;
use crate::population::Share;
use crate::report::baseline::Baseline;
use crate::report::{self, RunInfo, Verdict};
use crate::scenario::{check_storage, check_target_url, Scenario};
use crate::{engine, fit, population};

/// `loadgen run`: returns the exit status (0 passed, 1 a threshold failed,
/// 3 generator-limited), or the error that stopped the run (2 or 3).
pub async fn run(opts: RunOpts) -> Result<u8, LoadgenError> {
    if let Some(ca) = &opts.ca_file {
        crate::tls::trust_ca_file(ca)?;
    }
    let role = crate::workers::Role::from_env()?;
    let mut scenario = Scenario::load(&opts.scenario)?;
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
        check_storage(storage).map_err(|r| LoadgenError::invalid("--storage", r))?;
    }
    // The bulk provisioning path: the embedded servers get this process's
    // token; a running server only when the scenario or the command names its.
    if target.is_none() {
        scenario.target.provisioning_token = Some(crate::embedded::provisioning_token().into());
    } else if let Some(t) = &opts.provisioning_token {
        scenario.target.provisioning_token = Some(t.clone());
    }
    if let Some(path) = &opts.baseline {
        // Before anything starts: a typo in the path must not cost a run.
        Baseline::load(path)?;
    }
    let stop = CancellationToken::new();
    tokio::spawn(watch_ctrl_c(stop.clone()));
    if let Some(role) = role {
        // A worker process of a multi-process run: the parent made the server
        // and the population; drive this worker's share of the users.
        let base =
            target.ok_or_else(|| LoadgenError::invalid("--target", "a worker needs the target"))?;
        return crate::workers::run_worker(&opts, &scenario, &base, role, &stop).await;
    }
    let share = opts.shard.unwrap_or(Share::WHOLE);
    if opts.shard.is_some() {
        if target.is_none() {
            return Err(LoadgenError::invalid(
                "--shard",
                "shards on several machines drive one running server: give --target (or [target] url)",
            ));
        }
        if opts.population.is_none() {
            return Err(LoadgenError::invalid(
                "--shard",
                "needs --population DIR, a directory every shard reads (shard 0 writes the population there)",
            ));
        }
        if scenario.phases.iter().any(|p| !p.faults.is_empty()) {
            return Err(LoadgenError::invalid(
                "--shard",
                "node faults need the embedded cluster, which shards do not start",
            ));
        }
    }
    let plan = match &target {
        None => Some(Plan::of(&scenario, opts.storage.as_deref())?),
        Some(_) => None,
    };
    let users = (scenario.population.users + u64::from(share.count) - 1 - u64::from(share.index))
        / u64::from(share.count);
    // This machine's peak devices: its share of the scenario's.
    let devices = scenario.peak_devices().div_ceil(u64::from(share.count));
    let limit = fit::descriptor_limit();
    let workers = match opts.workers {
        0 => fit::auto_workers(devices, limit, fit::overhead(&scenario)).ok_or_else(|| {
            LoadgenError::unrunnable(format!(
                "the scenario needs more than {} worker processes for {devices} devices at its peak (one may open {limit} descriptors): split it over several machines (--shard)",
                fit::MAX_WORKERS
            ))
        })?,
        n => n,
    };
    if u64::from(workers) > users.max(1) {
        return Err(LoadgenError::invalid(
            "--workers",
            format!("{workers}: more workers than the {users} users to share among them"),
        ));
    }
    fit::check(
        &scenario,
        &fit::Machine {
            devices,
            workers,
            descriptor_limit: limit,
            ports_per_pair: fit::port_range(),
            destinations: plan.as_ref().map_or(1, |p| u64::from(p.servers)),
            embedded: plan.is_some(),
            memory_available: fit::memory_available(),
        },
    )?;
    if opts.workers == 0 && workers > 1 {
        eprintln!("--workers auto: {workers} worker processes for {devices} devices at the peak");
    }

    let out = out_dir(&opts, &scenario);
    let cluster = match &plan {
        Some(p) => Some(Arc::new(tokio::sync::Mutex::new(
            EmbeddedCluster::start(p, &out).await?,
        ))),
        None => None,
    };
    let ctx = Ctx {
        opts: &opts,
        scenario: &scenario,
        target,
        cluster: cluster.clone(),
        share,
        workers,
        out,
        stop: &stop,
    };
    let result = drive(ctx).await;
    if let Some(c) = cluster {
        c.lock().await.stop().await;
    }
    result
}

/// What one run works with.
struct Ctx<'a> {
    opts: &'a RunOpts,
    scenario: &'a Scenario,
    /// The target's URL (`None`: the embedded server).
    target: Option<String>,
    cluster: Option<Arc<tokio::sync::Mutex<EmbeddedCluster>>>,
    share: Share,
    workers: u32,
    out: PathBuf,
    stop: &'a CancellationToken,
}

/// Provisions (or loads this shard's population), runs the phases in this
/// process or in workers, with the node faults and sampling, and judges.
async fn drive(ctx: Ctx<'_>) -> Result<u8, LoadgenError> {
    let scenario = ctx.scenario;
    let (base, info, memory, live) = match &ctx.cluster {
        Some(c) => {
            let c = c.lock().await;
            let live = c.live.clone();
            let info = TargetInfo {
                url: c.base(),
                embedded: true,
                storage: c.storage_label.clone(),
                durability: c.durability.clone(),
            };
            (
                c.base(),
                info,
                ServerMemory::Nodes(live.clone()),
                Some(live),
            )
        }
        None => {
            let base = ctx.target.clone().unwrap_or_default();
            let info = TargetInfo {
                url: base.clone(),
                embedded: false,
                storage: "unknown (remote target)".into(),
                durability: None,
            };
            let memory = ServerMemory::Metrics(population::http_client(1)?, base.clone());
            (base, info, memory, None)
        }
    };
    let (pop, provisioning, client, fixed_start) = match (&ctx.opts.population, ctx.opts.shard) {
        (Some(dir), Some(share)) => {
            let start_at = ctx.opts.start_at;
            let (pop, prov, start) =
                crate::shard::population(scenario, &base, share, dir, start_at, ctx.stop).await?;
            let client = population::http_client(scenario.generator.provision_concurrency)?;
            (pop, prov, client, Some(start))
        }
        _ => {
            let (pop, prov, client) = population::provision_for(scenario, &base).await?;
            (pop, prov, client, ctx.opts.start_at.map(|ms| ms * 1000))
        }
    };
    // The nodes, in the order every process numbers them.
    let (node_list, discover) = match &live {
        Some(live) => {
            let nodes: Vec<String> = engine::sim::lock(live)
                .nodes
                .iter()
                .map(|n| n.ws.clone())
                .collect();
            let discover = nodes.len() > 1;
            (nodes, discover)
        }
        None if pop.servers.len() > 1 => (pop.servers.clone(), true),
        None => (vec![pop.ws_url.clone()], false),
    };
    if discover {
        eprintln!(
            "devices connect where discovery sends them: {} node(s)",
            node_list.len()
        );
    }
    let sampled = match live.clone() {
        Some(live) => SampledNodes::Embedded(live),
        None => SampledNodes::Discovery {
            base: base.clone(),
            token: pop
                .devices
                .first()
                .map(|d| d.token.clone())
                .unwrap_or_default(),
        },
    };
    let background = Background::new(ctx.cluster.clone(), scenario, sampled);

    let mut outcome = if ctx.workers > 1 {
        let plan = crate::workers::Plan {
            pop: &pop,
            share: ctx.share,
            workers: ctx.workers,
            start_us: fixed_start,
            nodes: (node_list, discover),
        };
        let (mut o, _) = crate::workers::run_parent(
            ctx.opts,
            &base,
            &ctx.out,
            plan,
            (memory, background.connections.clone()),
            |start| background.start(start),
            ctx.stop,
        )
        .await?;
        o.provisioning = provisioning;
        o
    } else {
        let start_us = fixed_start.unwrap_or_else(|| engine::recorder::Clock::new().now_us());
        background.start(start_us);
        let faults = FaultPlan::of(&scenario.phases, start_us);
        let setup = engine::Setup {
            memory,
            endpoint: Endpoint {
                client: client.clone(),
                base: base.clone(),
            },
            nodes: Nodes::new(&node_list, discover, population::http_client(64)?, faults),
        };
        let part = engine::Part {
            share: ctx.share,
            dir: ctx.out.clone(),
            start_us,
        };
        let mut o =
            engine::simulate(scenario, pop, part, &scenario.phases, setup, true, ctx.stop).await;
        o.provisioning = provisioning;
        if !ctx.share.is_whole() {
            // A shard alone: its part files for `loadgen merge`, and its own
            // report with what it can count.
            o.target = info.clone();
            finish(ctx.opts, scenario, &o, false)?;
            PartInfo::new(scenario, ctx.share, start_us).write(&ctx.out)?;
            let shape = PartInfo::read(&ctx.out)?.plan();
            crate::parts::complete(std::slice::from_ref(&ctx.out), &shape, &mut o)?;
        }
        o
    };
    let (sampled, fault_errors) = background.finish().await;
    if !sampled.nodes.is_empty() {
        outcome.nodes = sampled.nodes;
    }
    if let Some(peak) = sampled.peak {
        outcome.peak_connections = peak;
    }
    for e in fault_errors {
        *outcome.errors.entry("node_fault".into()).or_default() += 1;
        tracing::error!("{e}");
    }
    let multi = ctx.workers > 1 || !ctx.share.is_whole() || node_list_len(&ctx.cluster).await > 1;
    if multi && ctx.stop.is_cancelled() {
        outcome.audit.incomplete(
            "interrupted (Ctrl-C): the workers and nodes were stopped before the phases ended",
        );
    }
    outcome.target = info;
    if outcome.audit.cross_part_pending {
        eprintln!(
            "shard {}: the pairs between this shard's users and other shards' are counted by `loadgen merge` over every shard's directory",
            ctx.share
        );
    }
    finish(ctx.opts, scenario, &outcome, true)
}

async fn node_list_len(cluster: &Option<Arc<tokio::sync::Mutex<EmbeddedCluster>>>) -> usize {
    match cluster {
        Some(c) => engine::sim::lock(&c.lock().await.live).nodes.len(),
        None => 0,
    }
}

/// The tasks that run beside the phases in the process that owns the run:
/// the node faults and the per-node sampling, both on the run's start.
struct Background {
    cluster: Option<Arc<tokio::sync::Mutex<EmbeddedCluster>>>,
    phases: Vec<crate::scenario::Phase>,
    nodes: SampledNodes,
    done: CancellationToken,
    tasks: std::sync::Mutex<Option<BackgroundTasks>>,
    /// The server's connections (all nodes) at the latest sample.
    connections: Arc<std::sync::atomic::AtomicU64>,
}

type BackgroundTasks = (
    tokio::task::JoinHandle<sampler::Sampled>,
    Option<tokio::task::JoinHandle<Vec<String>>>,
);

impl Background {
    fn new(
        cluster: Option<Arc<tokio::sync::Mutex<EmbeddedCluster>>>,
        scenario: &Scenario,
        nodes: SampledNodes,
    ) -> Background {
        Background {
            cluster,
            phases: scenario.phases.clone(),
            nodes,
            done: CancellationToken::new(),
            tasks: std::sync::Mutex::new(None),
            connections: Arc::default(),
        }
    }

    /// Starts the sampler and the faults for a run whose first phase starts at `start_us`.
    fn start(&self, start_us: u64) {
        let clock = engine::recorder::Clock::new();
        let started = clock.instant_of(start_us);
        let client = match population::http_client(16) {
            Ok(c) => c,
            Err(_) => return,
        };
        let sampler = tokio::spawn(sampler::run(
            client,
            self.nodes.clone(),
            started,
            self.connections.clone(),
            self.done.clone(),
        ));
        let plan = FaultPlan::of(&self.phases, start_us);
        let faults = match (&self.cluster, plan.is_empty()) {
            (Some(c), false) => Some(tokio::spawn(crate::cluster::faults::run(
                c.clone(),
                plan,
                self.done.clone(),
            ))),
            _ => None,
        };
        *engine::sim::lock(&self.tasks) = Some((sampler, faults));
    }

    /// Stops both; what the sampler found and the faults that failed.
    async fn finish(&self) -> (sampler::Sampled, Vec<String>) {
        self.done.cancel();
        let tasks = engine::sim::lock(&self.tasks).take();
        let Some((sampler, faults)) = tasks else {
            return (sampler::Sampled::default(), Vec::new());
        };
        let sampled = sampler.await.unwrap_or_default();
        let failed = match faults {
            Some(f) => f.await.unwrap_or_default(),
            None => Vec::new(),
        };
        (sampled, failed)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        // An early return: the faults stop with the run.
        self.done.cancel();
    }
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
        // The embedded servers and workers see their stdin close and exit by themselves.
        std::process::exit(130);
    }
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
        // A worker: the parent judges the merged outcome.
        return Ok(exit::PASSED);
    }
    println!("{}", report::summary(&report));
    println!("report: {}", dir.display());
    if report.verdict != Verdict::Passed && report.verdict != Verdict::Failed {
        eprintln!("{}: {}", report.verdict.as_str(), report.verdict_reason);
    }
    Ok(report.verdict.exit_code())
}

/// Where the run writes: `--out`, or a new directory under `reports/runs/`
/// (fixed once per process, so the ledger and the report land together).
pub(crate) fn out_dir(opts: &RunOpts, scenario: &Scenario) -> PathBuf {
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
    let (y, m, d, hh, mm, ss) = crate::units::utc(secs);
    PathBuf::from("reports/runs").join(format!("{name}-{y:04}{m:02}{d:02}-{hh:02}{mm:02}{ss:02}"))
}
