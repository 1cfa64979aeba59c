//! The verdict of a run: one word a CI gate can act on, and the exit status
//! that goes with it.
//!
//! Four outcomes, checked in this order because each makes the next
//! meaningless: `incomplete` (the audit could not read every inbox, or Ctrl-C
//! cut the run short: what was measured is not the run the scenario
//! describes), `generator_limited` (loadgen could not keep its own schedule,
//! so the figures describe the generator), `failed` (a threshold or the
//! baseline gate), `passed`. Only `passed` sets `passed: true` and exits 0;
//! `failed` exits 1; the other two exit 3, like a run that could not be
//! carried out.

use serde::{Deserialize, Serialize};

use crate::error::exit;
use crate::outcome::Outcome;
use crate::thresholds::ThresholdRow;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Passed,
    Failed,
    GeneratorLimited,
    /// Also what a report written before verdicts existed reads as: nothing
    /// is claimed for it.
    #[default]
    Incomplete,
}

impl Verdict {
    /// Judges an outcome and its threshold rows (baseline rows included);
    /// returns the verdict and a sentence saying why.
    pub fn judge(rows: &[ThresholdRow], outcome: &Outcome) -> (Verdict, String) {
        if outcome.interrupted {
            return (
                Verdict::Incomplete,
                "the run was interrupted (Ctrl-C) before its phases and drain ended".into(),
            );
        }
        if outcome.audit.incomplete {
            return (
                Verdict::Incomplete,
                format!(
                    "the audit could not check everything ({}): its counts cover only part of the messages",
                    outcome
                        .audit
                        .incomplete_reason
                        .as_deref()
                        .unwrap_or("no reason given")
                ),
            );
        }
        if outcome.generator.limited() {
            return (
                Verdict::GeneratorLimited,
                outcome.generator.limited_reason().unwrap_or_else(|| {
                    "the generator could not keep its schedule: the figures describe the generator, not the server".into()
                }),
            );
        }
        let failed: Vec<&str> = rows
            .iter()
            .filter(|r| !r.passed)
            .map(|r| r.expr.as_str())
            .collect();
        if !failed.is_empty() {
            return (
                Verdict::Failed,
                format!(
                    "{} of {} thresholds failed: {}",
                    failed.len(),
                    rows.len(),
                    failed.join("; ")
                ),
            );
        }
        let reason = match rows.len() {
            0 => "no thresholds: nothing was gated".to_string(),
            1 => "the threshold held".to_string(),
            n => format!("{n} thresholds held"),
        };
        (Verdict::Passed, reason)
    }

    /// The exit status of `loadgen run` and `loadgen merge`.
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Passed => exit::PASSED,
            Verdict::Failed => exit::FAILED,
            Verdict::GeneratorLimited | Verdict::Incomplete => exit::UNRUNNABLE,
        }
    }

    /// The word a person reads first: `PASSED`, `FAILED`, ...
    pub fn headline(self) -> &'static str {
        match self {
            Verdict::Passed => "PASSED",
            Verdict::Failed => "FAILED",
            Verdict::GeneratorLimited => "GENERATOR-LIMITED",
            Verdict::Incomplete => "INCOMPLETE",
        }
    }

    /// The name report.json uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Passed => "passed",
            Verdict::Failed => "failed",
            Verdict::GeneratorLimited => "generator_limited",
            Verdict::Incomplete => "incomplete",
        }
    }
}
