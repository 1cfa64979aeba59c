//! One run split over several processes (workers on this machine, shards on
//! several), put back together exactly.
//!
//! Every process of a split run (a *part*) drives the users of its
//! [`Share`], draws the same global schedule, starts each phase at the same
//! absolute time, and writes an ordinary run directory plus `part.json` (its
//! share, the shared start, the population's shape) and what its merge needs
//! ([`crate::engine::handoff`]): its ledger of acked messages, the pairs of
//! other parts' messages its users' devices got, and the latest arrival of
//! each group message among its devices. Histograms, counters and errors add
//! exactly ([`Outcome::merge`]); two things do not, and [`complete`] redoes
//! them from the parts' files:
//!
//! - **The audit across parts.** Each part counted its own messages for its
//!   own users. The pairs it handed over are counted when some part's ledger
//!   holds their message; a message one part acked is checked against the
//!   inboxes of the members other parts drive (a member whose inbox lacked it
//!   is `lost`). Run on all parts, the counts equal one process's audit.
//! - **`fanout_latency`**, one sample per group message: the latest arrival
//!   across all parts.
//!
//! Parts need not share a disk while they run: the merge reads their
//! directories afterwards (`loadgen merge DIR...` for shards brought together
//! from several machines; the workers' parent for workers).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::handoff::{self, Pending};
use crate::engine::ledger::{self, Entry};
use crate::error::LoadgenError;
use crate::outcome::{new_histogram, AuditExample, Interval, Outcome};
use crate::population::{Population, Share};
use crate::scenario::Scenario;

/// The file that marks a run directory as a part of a split run.
pub const FILE: &str = "part.json";

/// The population's shape, as the scenario declares it: enough to plan it
/// again from the seed (members of each group, devices of each user).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Shape {
    pub users: u64,
    pub devices: Vec<(u32, f64)>,
    pub friends: f64,
    pub groups: u64,
    pub group_size: (u32, u32),
}

/// `part.json`: which part of which run a directory is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartInfo {
    pub share: Share,
    /// When the first phase started, Unix µs (the same in every part).
    pub start_us: u64,
    pub seed: u64,
    pub interval_ms: u64,
    pub shape: Shape,
}

impl PartInfo {
    pub fn new(scenario: &Scenario, share: Share, start_us: u64) -> PartInfo {
        let p = &scenario.population;
        PartInfo {
            share,
            start_us,
            seed: scenario.seed,
            interval_ms: scenario.generator.interval.as_millis().max(1) as u64,
            shape: Shape {
                users: p.users,
                devices: p.devices.clone(),
                friends: p.friends,
                groups: p.groups,
                group_size: p.group_size,
            },
        }
    }

    pub fn write(&self, dir: &Path) -> Result<(), LoadgenError> {
        let path = dir.join(FILE);
        let json = serde_json::to_vec_pretty(self).expect("serializes");
        std::fs::write(&path, json).map_err(|source| LoadgenError::Io { path, source })
    }

    pub fn read(dir: &Path) -> Result<PartInfo, LoadgenError> {
        let path = dir.join(FILE);
        let bytes = std::fs::read(&path).map_err(|source| LoadgenError::Io {
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|e| {
            LoadgenError::invalid(path.display().to_string(), format!("not a part file: {e}"))
        })
    }

    /// The population planned again from the seed (shape only: no ids).
    pub fn plan(&self) -> Population {
        let s = &self.shape;
        crate::population::plan(
            &crate::scenario::Population {
                users: s.users,
                devices: s.devices.clone(),
                friends: s.friends,
                groups: s.groups,
                group_size: s.group_size,
            },
            self.seed,
        )
    }
}

/// The part directories under `dir`: itself when it is a part, else its
/// workers' (`dir/workers/worker-*`) that are; empty for a plain run.
pub fn leaves(dir: &Path) -> Vec<PathBuf> {
    if dir.join(FILE).is_file() {
        return vec![dir.to_path_buf()];
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir.join("workers"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join(FILE).is_file())
        .collect();
    found.sort();
    found
}

/// Completes a merged outcome from its parts: the audit (each part's own
/// counts, plus what only the parts together know) and `fanout_latency`.
/// `shape`: the whole population (provisioned, or planned from the seed).
/// Parts that do not cover every user leave the pairs of the missing users
/// uncounted (a shard's own report); `outcome.audit` then says so.
pub fn complete(
    leaves: &[PathBuf],
    shape: &Population,
    outcome: &mut Outcome,
) -> Result<(), LoadgenError> {
    let mut infos = Vec::new();
    let mut audit = crate::outcome::Audit::default();
    for dir in leaves {
        infos.push(PartInfo::read(dir)?);
        let report = crate::report::json::read(dir)?;
        audit.merge(&report.audit);
    }
    let shares: Vec<Share> = infos.iter().map(|i| i.share).collect();
    let covered = |u: u32| shares.iter().any(|s| s.owns(u));
    let whole = (0..shape.users.len() as u32).all(covered);

    // Every acked message, by the part that acked it.
    let mut ledgers: Vec<Vec<Entry>> = Vec::new();
    for dir in leaves {
        match ledger::read(&dir.join(ledger::FILE)) {
            Ok(entries) => ledgers.push(entries),
            Err(why) => {
                audit.incomplete(format!("a part's ledger: {why}"));
                ledgers.push(Vec::new());
            }
        }
    }
    let mut acked: Vec<(u64, u64)> = ledgers
        .iter()
        .flatten()
        .map(|e| (e.channel, e.id))
        .collect();
    acked.sort_unstable();
    // Pairs handed over: counted when some part acked their message.
    let mut found: Vec<(u64, u64, u32)> = Vec::new();
    // Users whose inbox their part could not read: not checked here either.
    let mut unread: std::collections::HashSet<u32> = Default::default();
    for dir in leaves {
        let pending = match handoff::read_pending(&dir.join(handoff::PENDING)) {
            Ok(p) => p,
            Err(why) => {
                audit.incomplete(format!("a part's pending pairs: {why}"));
                continue;
            }
        };
        for Pending {
            user,
            channel,
            id,
            live,
            recovered,
            undelivered,
            awaiting,
        } in pending
        {
            if channel == handoff::UNREAD {
                unread.insert(user);
                continue;
            }
            if acked.binary_search(&(channel, id)).is_ok() {
                audit.delivered_live += u64::from(live);
                audit.recovered += u64::from(recovered);
                audit.undelivered += u64::from(undelivered);
                audit.awaiting_sync += u64::from(awaiting);
                found.push((channel, id, user));
            }
        }
    }
    found.sort_unstable();
    // Each part's messages against the members other parts drive.
    for (entries, info) in ledgers.iter().zip(&infos) {
        for e in entries {
            for u in crate::engine::audit::members(shape, e) {
                if info.share.owns(u) || !covered(u) || unread.contains(&u) {
                    continue;
                }
                let devices = shape.users[u as usize].devices.len() as u64;
                audit.deliveries_expected += devices;
                if found.binary_search(&(e.channel, e.id, u)).is_err() {
                    audit.lost += devices;
                    if audit.examples.len() < crate::outcome::Audit::MAX_EXAMPLES {
                        audit.examples.push(AuditExample {
                            kind: "lost".into(),
                            channel: format!("channel key {:x} (user index {u})", e.channel),
                            id: e.id,
                            user: 0,
                            device: 0,
                        });
                    }
                }
            }
        }
    }
    // Whatever the parts said alone, this set decides what is left to count.
    audit.cross_part_pending = !whole;
    outcome.audit = audit;
    fanout(leaves, &infos, outcome)
}

/// `fanout_latency` from every part's arrivals: the latest per message.
fn fanout(
    leaves: &[PathBuf],
    infos: &[PartInfo],
    outcome: &mut Outcome,
) -> Result<(), LoadgenError> {
    let mut last: HashMap<(u64, u64), (u64, u64)> = HashMap::new();
    for dir in leaves {
        let arrivals = handoff::read_arrivals(&dir.join(handoff::FANOUT))
            .map_err(|why| LoadgenError::unrunnable(format!("fan-out arrivals: {why}")))?;
        for a in arrivals {
            let e = last
                .entry((a.channel, a.id))
                .or_insert((a.sched_us, a.last_us));
            e.1 = e.1.max(a.last_us);
        }
    }
    let start_ms = infos.first().map_or(0, |i| i.start_us / 1000);
    let interval_ms = infos.first().map_or(1000, |i| i.interval_ms.max(1));
    let mut total = new_histogram();
    let mut intervals: std::collections::BTreeMap<u64, hdrhistogram::Histogram<u64>> =
        Default::default();
    for (sched, at) in last.into_values() {
        let Some(v) = at.checked_sub(sched) else {
            outcome.counters.negative_latency += 1;
            continue;
        };
        let v = v.clamp(1, 3_600_000_000);
        let _ = total.record(v);
        let k = (at / 1000).saturating_sub(start_ms) / interval_ms;
        let _ = intervals.entry(k).or_insert_with(new_histogram).record(v);
    }
    let name = crate::catalog::Metric::FANOUT.name().to_string();
    outcome.histograms.insert(name.clone(), total);
    outcome.intervals.insert(
        name,
        intervals
            .into_iter()
            .map(|(k, histogram)| Interval {
                start_ms: k * interval_ms,
                duration_ms: interval_ms,
                histogram,
            })
            .collect(),
    );
    Ok(())
}

/// Removes what only the merge needed from part directories.
pub fn clean(leaves: &[PathBuf]) {
    for dir in leaves {
        for f in [ledger::FILE, handoff::PENDING, handoff::FANOUT] {
            let _ = std::fs::remove_file(dir.join(f));
        }
    }
}
