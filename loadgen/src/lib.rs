//! chatscale's load generator, as a library: `main.rs` parses the command line
//! and calls [`run::run`] or [`compare::compare`]; tests call them in-process.
//!
//! Map of the modules:
//! - [`cli`]: the command line (`Opts`).
//! - [`error`]: `LoadgenError` and the exit statuses.
//! - [`units`]: durations, rates and sizes as scenario files write them.
//! - [`scenario`]: scenario files, parsed and validated before anything starts.
//! - [`run`]: one scenario run, end to end (embedded server, population, phases,
//!   audit, report).
//! - [`outcome`]: what a run measured; merges exactly across workers.
//! - [`thresholds`], [`projection`], [`report`], [`compare`]: judging and
//!   presenting outcomes.
pub mod cli;
pub mod compare;
pub mod error;
pub mod outcome;
pub mod projection;
pub mod report;
pub mod run;
pub mod scenario;
pub mod thresholds;
pub mod units;
