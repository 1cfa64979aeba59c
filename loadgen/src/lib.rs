//! chatscale's load generator, as a library: `main.rs` parses the command line
//! and calls [`run::run`] or [`compare::compare`]; tests call them in-process.
//!
//! Map of the modules:
//! - [`cli`]: the command line (`Opts`).
//! - [`error`]: `LoadgenError` and the exit statuses.
//! - [`codes`]: the error codes a run counts (the server's and loadgen's own).
//! - [`units`]: durations, rates and sizes as scenario files write them.
//! - [`catalog`]: every counter and latency metric, declared once.
//! - [`scenario`]: scenario files, parsed and validated before anything starts.
//! - [`run`]: one scenario run, end to end (embedded server, population, phases,
//!   audit, report).
//! - [`embedded`]: the reference server as a child process (the embedded default).
//! - [`tls`]: `https://` targets: the CAs `--ca-file` adds, for HTTP and WebSockets.
//! - [`cluster`]: the embedded server as one node or a cluster (a private
//!   Redis, node faults, per-node sampling).
//! - [`fit`]: whether a scenario fits this machine; `--workers auto`.
//! - [`population`]: accounts, devices, friendships and groups, from the seed.
//! - [`engine`]: the simulation: devices, schedule, recorder, audit, progress.
//! - [`workers`]: `--workers N`: worker processes, each driving a share of the users.
//! - [`shard`]: `--shard I/N`: one machine's part of a run over several.
//! - [`parts`]: a split run's parts put back together exactly (audit, fan-out).
//! - [`outcome`]: what a run measured; merges exactly across workers.
//! - [`thresholds`], [`projection`], [`report`], [`compare`]: judging and
//!   presenting outcomes.
pub mod catalog;
pub mod cli;
pub mod cluster;
pub mod codes;
pub mod compare;
pub mod embedded;
pub mod engine;
pub mod error;
pub mod fit;
pub mod outcome;
pub mod parts;
pub mod population;
pub mod projection;
pub mod report;
pub mod run;
pub mod scenario;
pub mod shard;
pub mod thresholds;
pub mod tls;
pub mod units;
pub mod workers;
