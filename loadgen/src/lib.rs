//! chatscale's load generator, as a library: `main.rs` parses the command line
//! and calls [`run::run`] or [`compare::compare`]; tests call them in-process.
//!
//! Map of the modules:
//! - [`cli`]: the command line (`Opts`).
//! - [`error`]: `LoadgenError` and the exit statuses.
//! - [`units`]: durations, rates and sizes as scenario files write them.
//! - [`catalog`]: every counter and latency metric, declared once.
//! - [`scenario`]: scenario files, parsed and validated before anything starts.
//! - [`run`]: one scenario run, end to end (embedded server, population, phases,
//!   audit, report).
//! - [`embedded`]: the reference server as a child process (the embedded default).
//! - [`population`]: accounts, devices, friendships and groups, from the seed.
//! - [`sim`]: the simulation's shared state: device slots, the acked-message ledger.
//! - [`device`]: one simulated device (a tokio task over one WebSocket at a time).
//! - [`inbox`]: a device's cursor, the messages it holds, its unacked sends.
//! - [`schedule`]: the open-model schedule: phases, ramp, Poisson sends, drops and reads.
//! - [`history`]: history page reads over HTTP, bounded in flight.
//! - [`recorder`]: worker-local latency histograms (per interval), counters, errors.
//! - [`audit`]: the end-of-run check for lost, duplicated and reordered messages.
//! - [`progress`]: live progress on stderr, memory and CPU sampling.
//! - [`workers`]: `--workers N`: worker processes, each driving a share of the users.
//! - [`outcome`]: what a run measured; merges exactly across workers.
//! - [`thresholds`], [`projection`], [`report`], [`compare`]: judging and
//!   presenting outcomes.
pub mod audit;
pub mod catalog;
pub mod cli;
pub mod compare;
pub mod device;
pub mod embedded;
pub mod error;
pub mod history;
pub mod inbox;
pub mod outcome;
pub mod population;
pub mod progress;
pub mod projection;
pub mod recorder;
pub mod report;
pub mod run;
pub mod scenario;
pub mod schedule;
pub mod sim;
pub mod thresholds;
pub mod units;
pub mod workers;
