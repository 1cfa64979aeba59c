//! The phases' node faults, on the run's clock: `kill_node`, `stop_node` and
//! `start_node` happen at the start of their phase, an absolute time every
//! process of the run computes the same way ([`FaultPlan::of`]).
//!
//! The process that owns the embedded cluster applies them ([`run`]); every
//! device, in whatever process, looks up when the node it lost went down
//! ([`FaultPlan::down_at`]) to time its `failover_latency` from the fault's
//! scheduled time to its next `hello` on a live node, with no message between
//! processes.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::EmbeddedCluster;
use crate::scenario::{NodeFault, Phase};

/// A loss this long after its node went down is not that fault's doing.
const WINDOW: Duration = Duration::from_secs(60);

/// Every fault of the run, at its scheduled time (Unix µs), in time order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultPlan {
    pub events: Vec<(u64, NodeFault)>,
}

/// When each phase starts (Unix µs): back to back from `start_us`.
pub fn phase_starts(phases: &[Phase], start_us: u64) -> Vec<u64> {
    let mut at = start_us;
    phases
        .iter()
        .map(|p| {
            let this = at;
            at += p.duration.as_micros() as u64;
            this
        })
        .collect()
}

impl FaultPlan {
    /// The faults of `phases` when the first phase starts at `start_us`.
    pub fn of(phases: &[Phase], start_us: u64) -> FaultPlan {
        let events = phases
            .iter()
            .zip(phase_starts(phases, start_us))
            .flat_map(|(p, at)| p.faults.iter().map(move |&f| (at, f)))
            .collect();
        FaultPlan { events }
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// When node `node` (0-based) went down for a device that lost its
    /// connection to it at `lost_us`: the last kill or stop of that node at or
    /// before the loss, unless the node was started again in between or the
    /// loss came more than a minute later.
    pub fn down_at(&self, node: usize, lost_us: u64) -> Option<u64> {
        let mut down = None;
        for &(at, f) in &self.events {
            if at > lost_us {
                break;
            }
            if f.node() == node {
                down = f.takes_down().then_some(at);
            }
        }
        down.filter(|&at| lost_us - at <= WINDOW.as_micros() as u64)
    }
}

/// Applies the plan's faults to the cluster at their times, until `stop`.
/// Returns the faults that could not be applied (a node that did not start).
pub async fn run(
    cluster: Arc<Mutex<EmbeddedCluster>>,
    plan: FaultPlan,
    stop: CancellationToken,
) -> Vec<String> {
    let mut failed = Vec::new();
    for (at_us, fault) in plan.events {
        let now_us = crate::engine::recorder::Clock::new().now_us();
        let wait = Duration::from_micros(at_us.saturating_sub(now_us));
        tokio::select! {
            _ = stop.cancelled() => return failed,
            _ = tokio::time::sleep(wait) => {}
        }
        if let Err(e) = cluster.lock().await.apply(fault).await {
            tracing::error!(?fault, cause = %e, "node fault");
            failed.push(format!("{fault:?}: {e}"));
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(secs: u64, faults: Vec<NodeFault>) -> Phase {
        Phase {
            name: String::new(),
            duration: Duration::from_secs(secs),
            online: 0,
            message_rate: 0.0,
            disconnect_rate: 0.0,
            history_rate: 0.0,
            faults,
        }
    }

    #[test]
    fn a_loss_is_timed_from_the_fault_that_took_its_node_down() {
        let phases = [
            phase(10, vec![]),
            phase(10, vec![NodeFault::Kill(2)]),
            phase(10, vec![NodeFault::Start(2), NodeFault::Stop(3)]),
        ];
        let s = 1_000_000_000;
        let plan = FaultPlan::of(&phases, s);
        assert_eq!(
            phase_starts(&phases, s),
            vec![s, s + 10_000_000, s + 20_000_000]
        );
        let killed = s + 10_000_000;
        // Node 2 (index 1) lost 5 ms after its kill: timed from the kill.
        assert_eq!(plan.down_at(1, killed + 5_000), Some(killed));
        // Before the kill, or after node 2 is back: not this fault.
        assert_eq!(plan.down_at(1, killed - 1), None);
        assert_eq!(plan.down_at(1, s + 25_000_000), None);
        // Node 1 never went down.
        assert_eq!(plan.down_at(0, killed + 5_000), None);
        // Node 3 stopped at the third phase.
        assert_eq!(plan.down_at(2, s + 20_000_100), Some(s + 20_000_000));
        // A loss long after the fault is something else.
        assert_eq!(plan.down_at(2, s + 200_000_000), None);
    }
}
