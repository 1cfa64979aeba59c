//! Will the scenario fit on this machine? Checked before anything is
//! provisioned, each refusal with its arithmetic (exit 3), and how many
//! worker processes `--workers auto` starts.
//!
//! Four limits, all per machine (a shard counts its own share of the users):
//!
//! - **Descriptors**: one socket per connected device at the peak, plus
//!   [`FD_SLACK`], the HTTP pools (provisioning, history, discovery) per
//!   process. `--workers auto` picks the fewest processes under that limit.
//! - **Embedded nodes**: each node is a process under the same descriptor
//!   limit and holds about an even share of the devices ([`NODE_FD_SLACK`]
//!   more for its own connections).
//! - **Ports**: one (source address, destination) pair has the kernel's
//!   ephemeral range of ports (about 28,000 here); the devices' connections
//!   spread over the source addresses and the server's addresses.
//! - **Memory**: the peak devices at the generator's measured cost per
//!   device ([`LOADGEN_BYTES_PER_DEVICE`]), plus the embedded server's per
//!   connection ([`SERVER_BYTES_PER_CONNECTION`]), against the memory the
//!   machine has available.

use crate::error::LoadgenError;
use crate::scenario::Scenario;

/// Descriptors kept aside per process for the audit, logs and the runtime.
pub const FD_SLACK: u64 = 256;
/// Descriptors an embedded node keeps besides its devices' connections
/// (listener, storage and cluster connections, logs).
pub const NODE_FD_SLACK: u64 = 256;
/// Most worker processes on one machine.
pub const MAX_WORKERS: u32 = 64;
/// The generator's resident memory per connected device, with a margin
/// (reports/generator-cost: 6.5-7.3 KiB measured).
pub const LOADGEN_BYTES_PER_DEVICE: u64 = 8 * 1024;
/// The embedded server's per connection, with a margin (docs/scenarios.md:
/// 3.1-4.6 KiB measured at 10,000 devices).
pub const SERVER_BYTES_PER_CONNECTION: u64 = 6 * 1024;

/// The descriptors one process may open (raised to the hard limit).
pub fn descriptor_limit() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024)
}

/// Descriptors a process needs besides its devices' sockets.
pub fn overhead(scenario: &Scenario) -> u64 {
    FD_SLACK
        + scenario.generator.provision_concurrency as u64
        + crate::engine::history::MAX_IN_FLIGHT as u64
        + crate::engine::nodes::MAX_IN_FLIGHT as u64
}

/// `--workers auto`: the fewest processes whose share of `devices` (the
/// peak, on this machine) fits each one's descriptors; `None` past
/// [`MAX_WORKERS`].
pub fn auto_workers(devices: u64, limit: u64, overhead: u64) -> Option<u32> {
    let per = limit.saturating_sub(overhead).max(1);
    let n = devices.div_ceil(per).max(1);
    (n <= MAX_WORKERS as u64).then_some(n as u32)
}

/// The ephemeral ports of one (source, destination) pair.
pub fn port_range() -> u64 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|v| v.parse::<u64>().ok());
            let (lo, hi) = (it.next()??, it.next()??);
            Some(hi.saturating_sub(lo) + 1)
        })
        .unwrap_or(28_232)
}

/// Memory the machine can give (MemAvailable), bytes.
pub fn memory_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = info
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// What a check needs to know about where the run goes.
pub struct Machine {
    /// Devices connected at once at the peak, on this machine.
    pub devices: u64,
    /// Worker processes.
    pub workers: u32,
    pub descriptor_limit: u64,
    pub ports_per_pair: u64,
    /// The server's addresses (nodes) the devices spread over.
    pub destinations: u64,
    /// The embedded server runs here too.
    pub embedded: bool,
    pub memory_available: Option<u64>,
}

/// Refuses (exit 3) a scenario that cannot fit, saying why with the numbers.
pub fn check(scenario: &Scenario, m: &Machine) -> Result<(), LoadgenError> {
    let per_process = m.devices.div_ceil(m.workers.max(1) as u64);
    let need = per_process + overhead(scenario);
    if need > m.descriptor_limit {
        return Err(LoadgenError::unrunnable(format!(
            "the scenario needs up to {need} file descriptors per process ({per_process} connected devices of {} at the peak over {} process(es), plus {} for the HTTP pools and the runtime) but a process may open {}: use more --workers (or --workers auto), lower the phases' `online`, or split the load over several machines (--shard)",
            m.devices,
            m.workers,
            overhead(scenario),
            m.descriptor_limit
        )));
    }
    if m.embedded {
        // Each embedded node is a process with the same descriptor limit:
        // discovery sends a device to the least loaded node, so each holds
        // about an even share.
        let nodes = m.destinations.max(1);
        let per_node = m.devices.div_ceil(nodes);
        if per_node + NODE_FD_SLACK > m.descriptor_limit {
            let per = m.descriptor_limit.saturating_sub(NODE_FD_SLACK).max(1);
            return Err(LoadgenError::unrunnable(format!(
                "the scenario needs {per_node} connections per embedded node ({} devices at the peak over {nodes} node(s)) plus {NODE_FD_SLACK} for the node's storage, cluster and runtime, but a process may open {}: raise [target] servers to at least {}, or lower the phases' `online`",
                m.devices,
                m.descriptor_limit,
                m.devices.div_ceil(per)
            )));
        }
    }
    let g = &scenario.generator;
    let addresses = if g.source_addresses.is_empty() {
        // Loopback: 127.0.0.2, ... at connections_per_source devices each.
        per_process.div_ceil(g.connections_per_source as u64).max(1)
    } else {
        g.source_addresses.len() as u64
    };
    let capacity = addresses * m.ports_per_pair * m.destinations.max(1);
    if per_process > capacity
        || g.connections_per_source as u64 > m.ports_per_pair * m.destinations.max(1)
    {
        return Err(LoadgenError::unrunnable(format!(
            "the scenario needs {per_process} connections per process at its peak, but {addresses} source address(es) x {} ports x {} server address(es) give {capacity}{}: add source addresses ([generator] source_addresses) or lower [generator] connections_per_source to at most {}",
            m.ports_per_pair,
            m.destinations.max(1),
            if g.connections_per_source as u64 > m.ports_per_pair * m.destinations.max(1) {
                format!(
                    " ({} devices per address, more than one address has ports for)",
                    g.connections_per_source
                )
            } else {
                String::new()
            },
            m.ports_per_pair * m.destinations.max(1)
        )));
    }
    if let Some(available) = m.memory_available {
        let server = if m.embedded {
            SERVER_BYTES_PER_CONNECTION
        } else {
            0
        };
        let need = m.devices * (LOADGEN_BYTES_PER_DEVICE + server);
        if need > available {
            return Err(LoadgenError::unrunnable(format!(
                "the scenario needs about {} MiB at its peak ({} devices x ({} KiB of generator{}) per device) but this machine has {} MiB available: lower the phases' `online`, or split the load over several machines (--shard){}",
                need >> 20,
                m.devices,
                LOADGEN_BYTES_PER_DEVICE / 1024,
                if m.embedded {
                    format!(" + {} KiB of embedded server", SERVER_BYTES_PER_CONNECTION / 1024)
                } else {
                    String::new()
                },
                available >> 20,
                if m.embedded { ", with the server on its own machine" } else { "" }
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--workers auto`: the fewest processes under the descriptor limit.
    #[test]
    fn auto_picks_enough_workers_for_the_peak() {
        assert_eq!(auto_workers(100, 20_000, 500), Some(1));
        assert_eq!(auto_workers(19_500, 20_000, 500), Some(1));
        assert_eq!(auto_workers(19_501, 20_000, 500), Some(2));
        assert_eq!(auto_workers(100_000, 20_000, 500), Some(6));
        assert_eq!(auto_workers(0, 20_000, 500), Some(1));
        assert_eq!(auto_workers(10_000_000, 20_000, 500), None, "past 64");
    }

    fn scenario() -> Scenario {
        Scenario::parse(
            "[population]\nusers = 1000\n[[phase]]\nduration = \"1s\"\n",
            "fit",
        )
        .unwrap()
    }

    fn machine(devices: u64) -> Machine {
        Machine {
            devices,
            workers: 1,
            descriptor_limit: 20_000,
            ports_per_pair: 28_232,
            destinations: 1,
            embedded: true,
            memory_available: Some(24 << 30),
        }
    }

    #[test]
    fn what_cannot_fit_is_refused_with_its_arithmetic() {
        let s = scenario();
        assert!(check(&s, &machine(1_000)).is_ok());
        let e = check(&s, &machine(30_000)).unwrap_err().to_string();
        assert!(e.contains("file descriptors") && e.contains("30000"), "{e}");
        let mut m = machine(1_000_000);
        m.workers = 60;
        m.destinations = 60;
        m.memory_available = Some(4 << 30);
        let e = check(&s, &m).unwrap_err().to_string();
        assert!(e.contains("MiB") && e.contains("1000000 devices"), "{e}");
        // One address with more devices than its ports: refused.
        let mut s2 = scenario();
        s2.generator.source_addresses = vec!["127.0.0.2".parse().unwrap()];
        let mut m = machine(40_000);
        m.workers = 3;
        m.memory_available = None;
        // A running server: its nodes are not this machine's to check.
        m.embedded = false;
        assert!(check(&s2, &m).is_ok(), "13,334 per process fit one address");
        s2.generator.connections_per_source = 40_000;
        s2.generator.source_addresses.clear();
        m.workers = 1;
        m.descriptor_limit = 1_000_000;
        let e = check(&s2, &m).unwrap_err().to_string();
        assert!(e.contains("source address") && e.contains("28232"), "{e}");
    }

    /// 100,000 devices need 6 embedded nodes at 20,000 descriptors each:
    /// 5 are refused with the count that fits; a running server is not checked.
    #[test]
    fn embedded_nodes_must_hold_their_share() {
        let s = scenario();
        let mut m = machine(100_000);
        m.workers = 6;
        m.destinations = 5;
        let e = check(&s, &m).unwrap_err().to_string();
        assert!(
            e.contains("20000 connections per embedded node") && e.contains("at least 6"),
            "{e}"
        );
        m.destinations = 6;
        assert!(check(&s, &m).is_ok());
        m.destinations = 1;
        m.embedded = false;
        assert!(check(&s, &m).is_ok());
    }
}
