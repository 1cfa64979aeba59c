//! `--shard I/N`: one run spread over several machines, each driving the
//! users whose index is I modulo N against one running server (or cluster).
//!
//! Every shard runs the same scenario with the same seed and starts the first
//! phase at the same absolute time, so together they issue exactly the
//! schedule one generator would. They meet in one directory every shard can
//! read (`--population DIR`: a shared volume; docs/distributed.md):
//!
//! - shard 0 creates the population on the server and writes each shard's
//!   slice there (`shard-I-of-N.json`: its users' ids, tokens, groups), and
//!   the start: `--start-at UNIX_MS` when given, else its own choice a little
//!   after the slices are written (`start.json`, also in its run directory's
//!   `part.json`);
//! - every other shard waits for its slice and the start, then runs.
//!
//! Each shard writes an ordinary run directory with its part of the audit;
//! `loadgen merge` reads them all and completes the audit across shards and
//! the fan-out ([`crate::parts`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::error::LoadgenError;
use crate::outcome::Provisioning;
use crate::population::{Population, Share};
use crate::scenario::Scenario;

/// How long a shard waits for shard 0's population.
const WAIT: Duration = Duration::from_secs(1800);
/// Between shard 0 writing the slices and its chosen start.
const MARGIN: Duration = Duration::from_secs(10);

fn slice_path(dir: &Path, share: Share) -> PathBuf {
    dir.join(format!("shard-{}-of-{}.json", share.index, share.count))
}

/// This shard's slice of the population, how long creating it took (shard 0),
/// and the run's start (Unix µs).
pub async fn population(
    scenario: &Scenario,
    base: &str,
    share: Share,
    dir: &Path,
    start_at_ms: Option<u64>,
    stop: &CancellationToken,
) -> Result<(Population, Provisioning, u64), LoadgenError> {
    let start_file = dir.join("start.json");
    if share.index == 0 {
        if start_file.exists() {
            return Err(LoadgenError::invalid(
                "--population",
                format!(
                    "{} already holds a run's population (start.json): give each run a directory of its own",
                    dir.display()
                ),
            ));
        }
        std::fs::create_dir_all(dir).map_err(|source| LoadgenError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let (pop, provisioning, _) = crate::population::provision_for(scenario, base).await?;
        for i in 0..share.count {
            let s = Share {
                index: i,
                count: share.count,
            };
            let path = slice_path(dir, s);
            let tmp = path.with_extension("tmp");
            pop.slice(s).save(&tmp)?;
            std::fs::rename(&tmp, &path).map_err(|source| LoadgenError::Io { path, source })?;
        }
        let start_us = match start_at_ms {
            Some(ms) => ms * 1000,
            None => crate::engine::recorder::Clock::new().now_us() + MARGIN.as_micros() as u64,
        };
        crate::workers::write_start(&start_file, start_us)?;
        eprintln!(
            "shard {share}: population written to {}; the first phase starts at {} (Unix ms)",
            dir.display(),
            start_us / 1000
        );
        let slice = pop.slice(share);
        return Ok((slice, provisioning, start_us));
    }
    let path = slice_path(dir, share);
    eprintln!(
        "shard {share}: waiting for shard 0's population in {}",
        dir.display()
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    while !path.exists() || (start_at_ms.is_none() && !start_file.exists()) {
        if stop.is_cancelled() {
            return Err(LoadgenError::unrunnable(
                "interrupted while waiting for shard 0's population",
            ));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(LoadgenError::unrunnable(format!(
                "shard 0 wrote no population to {} within {WAIT:?}",
                dir.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let start_us = match start_at_ms {
        Some(ms) => ms * 1000,
        None => crate::workers::wait_start(&start_file, Duration::from_secs(10), stop)
            .await
            .ok_or_else(|| {
                LoadgenError::unrunnable(format!("cannot read {}", start_file.display()))
            })?,
    };
    let pop = Population::load(&path)?;
    Ok((pop, Provisioning::default(), start_us))
}
