//! The command line: `loadgen run`, `loadgen compare`, `loadgen merge`, and the hidden
//! `loadgen serve` that runs the reference server in this process (how `run`
//! starts its embedded server as a child process without a second binary to
//! find: it re-executes itself with `serve`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    version,
    about = "chatscale load generator: scenario runs, reports, comparisons"
)]
pub struct Opts {
    #[command(subcommand)]
    pub command: Command,
    /// Show loadgen's own log lines (-v: info, -vv: debug); by default only
    /// warnings and errors. `RUST_LOG` overrides both.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

impl Opts {
    /// The log filter `-v` asks for.
    pub fn log_filter(&self) -> &'static str {
        match self.verbose {
            0 => "warn",
            1 => "info",
            _ => "debug",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a scenario file and write its report.
    Run(RunOpts),
    /// Print reports side by side as a Markdown table, with ratios to the first.
    Compare {
        /// report.json files (or directories holding one).
        #[arg(required = true, num_args = 2..)]
        reports: Vec<PathBuf>,
    },
    /// Merge the run directories of several workers or machines into one report
    /// (histograms merge exactly; thresholds are judged on the merged result).
    Merge {
        /// Run directories (each with report.json and its .hlog files).
        #[arg(required = true, num_args = 1..)]
        dirs: Vec<PathBuf>,
        /// Output directory for the merged report (default: reports/runs/merged-TIMESTAMP/).
        #[arg(long)]
        out: Option<PathBuf>,
        /// A baseline report.json to gate the merged result against.
        #[arg(long)]
        baseline: Option<PathBuf>,
    },
    /// Internal: run the reference server in this process (used by `run`).
    #[command(hide = true)]
    Serve(reference_server::config::Opts),
}

#[derive(Debug, Clone, clap::Args)]
pub struct RunOpts {
    /// The scenario file (TOML).
    pub scenario: PathBuf,
    /// A running server (or cluster entry point), e.g. http://127.0.0.1:8080.
    /// Without it (and without `[target] url`), loadgen starts the server itself.
    #[arg(long)]
    pub target: Option<String>,
    /// Storage of the embedded server, overriding the scenario's `[target] storage`.
    #[arg(long)]
    pub storage: Option<String>,
    /// Output directory (default: reports/runs/NAME-TIMESTAMP/).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Worker processes on this machine: 1 to 64, or `auto` (the default):
    /// as many as the peak device count needs under the descriptor limit.
    /// (In the struct, 0 means `auto`.)
    #[arg(long, default_value = "auto", value_parser = parse_workers)]
    pub workers: u32,
    /// A baseline report.json to gate against.
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// A PEM file of certificate authorities to trust for an https:// target
    /// (beside the public roots), e.g. a staging cluster's own CA.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Drive only shard I of N (users whose index is I modulo N), for one run
    /// spread over several machines; `loadgen merge` combines the shards.
    #[arg(long, value_parser = parse_shard)]
    pub shard: Option<crate::population::Share>,
    /// When the first phase starts, as Unix time in milliseconds: the same on
    /// every shard (default: shard 0 chooses and writes it to --population).
    #[arg(long)]
    pub start_at: Option<u64>,
    /// With --shard: a directory every shard reads. Shard 0 creates the
    /// population and writes each shard's slice (and its start time) there;
    /// the other shards wait for theirs.
    #[arg(long)]
    pub population: Option<PathBuf>,
    /// The target's `--provisioning-token` (overrides `[target]
    /// provisioning_token`): create the population through its bulk
    /// endpoints. Without one, against a running server, one request per object.
    #[arg(long)]
    pub provisioning_token: Option<String>,
}

/// `--workers`: `auto` (0) or 1 to 64.
fn parse_workers(s: &str) -> Result<u32, String> {
    if s == "auto" {
        return Ok(0);
    }
    match s.parse::<u32>() {
        Ok(n) if (1..=64).contains(&n) => Ok(n),
        _ => Err(format!(
            "{s:?}: a number of processes from 1 to 64, or auto"
        )),
    }
}

/// `--shard I/N`.
fn parse_shard(s: &str) -> Result<crate::population::Share, String> {
    crate::population::Share::parse(s)
        .ok_or_else(|| format!("{s:?}: expected I/N with 0 <= I < N (shard 0/4 is the first of 4)"))
}
