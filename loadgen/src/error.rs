//! `LoadgenError`: why a command could not do its job, and the exit status that
//! says so (scenarios.md: 2 invalid scenario or command line, 3 the run could
//! not be carried out). Threshold failures are not errors: they are a report
//! whose `passed` is false (exit 1).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    /// A scenario field or command-line value is invalid. `path` names it the way
    /// the file does (`phase[1].message_rate`, `population.users`, `--workers`).
    #[error("invalid {path}: {reason}")]
    Invalid { path: String, reason: String },
    /// The run could not be carried out: target unreachable, out of file
    /// descriptors, embedded server failed to start, ...
    #[error("cannot run: {0}")]
    Unrunnable(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl LoadgenError {
    pub fn invalid(path: impl Into<String>, reason: impl Into<String>) -> Self {
        LoadgenError::Invalid {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub fn unrunnable(reason: impl Into<String>) -> Self {
        LoadgenError::Unrunnable(reason.into())
    }

    /// The process exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            LoadgenError::Invalid { .. } => 2,
            LoadgenError::Unrunnable(_) | LoadgenError::Io { .. } => 3,
        }
    }
}

/// Exit statuses of `loadgen run`.
pub mod exit {
    /// Every threshold held.
    pub const PASSED: u8 = 0;
    /// A threshold (or the baseline gate) failed.
    pub const FAILED: u8 = 1;
    /// The scenario or the command line is invalid.
    pub const INVALID: u8 = 2;
    /// The run could not be carried out, or the generator itself was the limit.
    pub const UNRUNNABLE: u8 = 3;
}
