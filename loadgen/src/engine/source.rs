//! Where the devices' connections come from: many loopback source addresses,
//! so no run is capped by one address pair's ephemeral ports.
//!
//! One (source address, destination) pair has about 28,000 ephemeral ports
//! here; past that `connect` fails with `EADDRNOTAVAIL`. The whole of
//! 127.0.0.0/8 is local on Linux, so when the target is a loopback address the
//! devices spread over 127.0.0.2, 127.0.0.3, ...: as many addresses as the
//! population needs at `connections_per_source` devices each (default 20,000),
//! device `d` on address `d mod count`. Each socket sets
//! `IP_BIND_ADDRESS_NO_PORT` before binding its source address, so the port is
//! chosen at `connect` time for the exact 4-tuple and ports are shared across
//! destinations. A non-loopback target gets the addresses `[generator]
//! source_addresses` names (the machine's own interfaces), or none: the
//! kernel's choice.
//!
//! Running out of descriptors (`EMFILE`, `ENFILE`) or ports (`EADDRNOTAVAIL`)
//! is the generator's limit, not the server's: [`exhaustion`] names it and what
//! to change, and the run is marked generator-limited instead of counting
//! `connect` errors against the server.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use tokio::net::{TcpSocket, TcpStream};

/// Devices per source address when none is configured.
pub const DEFAULT_PER_SOURCE: usize = 20_000;

/// The source addresses devices bind to (empty: the kernel chooses).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sources {
    pub addrs: Vec<IpAddr>,
}

impl Sources {
    /// `explicit` when given; otherwise, for a loopback IPv4 target, enough of
    /// 127.0.0.2, 127.0.0.3, ... for `devices` at `per_source` each.
    pub fn choose(
        target: SocketAddr,
        explicit: &[IpAddr],
        devices: usize,
        per_source: usize,
    ) -> Sources {
        if !explicit.is_empty() {
            return Sources {
                addrs: explicit.to_vec(),
            };
        }
        match target.ip() {
            IpAddr::V4(ip) if ip.is_loopback() => {
                let count = devices.div_ceil(per_source.max(1)).max(1);
                let addrs = (0..count as u32)
                    .map(|i| IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 2)) + i)))
                    .collect();
                Sources { addrs }
            }
            _ => Sources::default(),
        }
    }

    /// These addresses moved `by` places along 127.0.0.0/8 (IPv4 only): the
    /// processes of a split run on one machine each take their own
    /// addresses, so their connections do not share one address's ports.
    pub fn shifted(self, by: u32) -> Sources {
        let addrs = self
            .addrs
            .into_iter()
            .map(|a| match a {
                IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(u32::from(v4) + by)),
                other => other,
            })
            .collect();
        Sources { addrs }
    }

    /// The source address of device `d`.
    pub fn for_device(&self, d: u32) -> Option<IpAddr> {
        (!self.addrs.is_empty()).then(|| self.addrs[d as usize % self.addrs.len()])
    }
}

/// A TCP connection to `dst`, from `src` when given (port chosen at connect).
pub async fn connect(src: Option<IpAddr>, dst: SocketAddr) -> io::Result<TcpStream> {
    let socket = if dst.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(src) = src {
        nix::sys::socket::setsockopt(
            &socket,
            nix::sys::socket::sockopt::IpBindAddressNoPort,
            &true,
        )
        .map_err(io::Error::from)?;
        socket.bind(SocketAddr::new(src, 0))?;
    }
    let stream = socket.connect(dst).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// When `e` means the generator ran out of descriptors or ports: which, and
/// what to change.
pub fn exhaustion(e: &io::Error, src: Option<IpAddr>) -> Option<String> {
    match e.raw_os_error()? {
        libc::EMFILE | libc::ENFILE => Some(format!(
            "the generator ran out of file descriptors ({e}): this process may open only so many sockets; use more --workers (each holds a share of the devices) or lower the phases' `online`"
        )),
        libc::EADDRNOTAVAIL => Some(format!(
            "the generator ran out of local ports or cannot use its source address {} ({e}): add source addresses ([generator] source_addresses, or a lower connections_per_source for a loopback target) or connect fewer devices",
            src.map_or("(kernel's choice)".to_string(), |a| a.to_string())
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_targets_get_enough_source_addresses() {
        let lo: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let s = Sources::choose(lo, &[], 45_000, 20_000);
        assert_eq!(
            s.addrs,
            ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
                .map(|a| a.parse::<IpAddr>().unwrap())
                .to_vec()
        );
        // Round robin: no address gets more than its share.
        let mut per = [0usize; 3];
        for d in 0..45_000u32 {
            let a = s.for_device(d).unwrap();
            per[s.addrs.iter().position(|x| *x == a).unwrap()] += 1;
        }
        assert!(per.iter().all(|&n| n <= 20_000), "{per:?}");
        // Past 127.0.0.255 the addresses carry on into the next octet.
        let many = Sources::choose(lo, &[], 300 * 10, 10);
        assert_eq!(many.addrs[299], "127.0.1.45".parse::<IpAddr>().unwrap());
        assert_eq!(Sources::choose(lo, &[], 5, 20_000).addrs.len(), 1);
        // Worker 2 of a split run: its own addresses, past the others'.
        let shifted = Sources::choose(lo, &[], 5, 20_000).shifted(4);
        assert_eq!(shifted.addrs, vec!["127.0.0.6".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn other_targets_use_the_configured_addresses_or_none() {
        let remote: SocketAddr = "10.1.2.3:443".parse().unwrap();
        assert_eq!(
            Sources::choose(remote, &[], 50_000, 20_000),
            Sources::default()
        );
        assert_eq!(Sources::default().for_device(3), None);
        let mine: Vec<IpAddr> = vec!["10.0.0.5".parse().unwrap(), "10.0.0.6".parse().unwrap()];
        let s = Sources::choose(remote, &mine, 50_000, 20_000);
        assert_eq!(s.for_device(3), Some(mine[1]));
    }

    #[test]
    fn exhaustion_is_named_and_other_errors_are_not() {
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        assert!(exhaustion(&emfile, None)
            .unwrap()
            .contains("file descriptors"));
        let ports = io::Error::from_raw_os_error(libc::EADDRNOTAVAIL);
        let msg = exhaustion(&ports, "127.0.0.2".parse().ok()).unwrap();
        assert!(
            msg.contains("127.0.0.2") && msg.contains("source_addresses"),
            "{msg}"
        );
        let refused = io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(exhaustion(&refused, None), None);
    }
}
