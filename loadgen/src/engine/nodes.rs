//! Where a device connects: the one server login named, or, in a cluster, the
//! node discovery names first.
//!
//! A single server is what it was: every device connects to the URL login
//! handed out. In a cluster (an embedded one with `servers > 1`, or a target
//! whose login listed several servers) a device asks `GET /v1/discovery` with
//! its own token before each connection, its first and every one after losing
//! a connection (a node killed, a 1001 close, a refused connect), and connects
//! to the first server listed, passing over the node it just lost or failed on
//! when another is listed (a killed node stays in discovery for up to its
//! registry TTL, and being the least loaded it would come first). Only when
//! the token is refused does it log in again (same device name, so the same
//! device). Discovery is asked on any node known to be up, round robin, and at
//! most [`MAX_IN_FLIGHT`] requests wait at once: a thousand devices failing
//! over together do not open a thousand HTTP connections.
//!
//! The nodes get indices (the embedded cluster's in order, then any new URL
//! discovery names): a device's node index goes into each send's
//! `client_msg_id`, so a receiver tells same-node from cross-node deliveries,
//! and a device that lost its node looks up when that node went down
//! ([`FaultPlan::down_at`]) to time its failover.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::RwLock;
use std::time::Duration;

use reference_server::protocol::{DiscoveryResponse, LoginRequest, LoginResponse};
use tokio::sync::Semaphore;

use crate::cluster::faults::FaultPlan;

/// Discovery (and login) requests waiting on the servers at once.
pub const MAX_IN_FLIGHT: usize = 64;
/// How long one discovery or login request may take.
const TIMEOUT: Duration = Duration::from_secs(3);

/// A node a device may connect to.
#[derive(Debug, Clone)]
pub struct Known {
    /// `ws://HOST:PORT/v1/ws`, as discovery lists it.
    pub ws: String,
    /// Its address, resolved once.
    pub addr: SocketAddr,
}

/// Why discovery gave no node.
#[derive(Debug)]
pub enum Ask {
    /// The token was refused (401): log in again.
    Refused,
    /// No node answered.
    Unreachable(String),
}

/// The nodes of the run, and how devices pick one.
pub struct Nodes {
    table: RwLock<Vec<Known>>,
    /// Ask discovery before connecting (a cluster).
    pub discover: bool,
    client: Option<reqwest::Client>,
    permits: Semaphore,
    next: AtomicUsize,
    /// When nodes went down (failover timing).
    pub faults: FaultPlan,
}

impl Default for Nodes {
    fn default() -> Self {
        Nodes {
            table: RwLock::default(),
            discover: false,
            client: None,
            permits: Semaphore::new(MAX_IN_FLIGHT),
            next: AtomicUsize::new(0),
            faults: FaultPlan::default(),
        }
    }
}

/// `ws://HOST:PORT/v1/ws` -> `http://HOST:PORT` (`wss` -> `https`).
pub fn http_of(ws: &str) -> String {
    let (scheme, rest) = match ws.strip_prefix("wss://") {
        Some(r) => ("https://", r),
        None => ("http://", ws.strip_prefix("ws://").unwrap_or(ws)),
    };
    format!("{scheme}{}", rest.split('/').next().unwrap_or(""))
}

/// `ws://HOST:PORT/PATH` -> its socket address (the first the name resolves to).
pub fn resolve(ws: &str) -> Option<SocketAddr> {
    use std::net::ToSocketAddrs;
    let rest = ws
        .strip_prefix("ws://")
        .or_else(|| ws.strip_prefix("wss://"))
        .unwrap_or(ws);
    rest.split('/').next()?.to_socket_addrs().ok()?.next()
}

impl Nodes {
    /// `nodes` (WebSocket URLs, in node order); `discover`: a cluster.
    pub fn new(
        nodes: &[String],
        discover: bool,
        client: reqwest::Client,
        faults: FaultPlan,
    ) -> Nodes {
        let n = Nodes {
            discover,
            client: Some(client),
            faults,
            ..Nodes::default()
        };
        for ws in nodes {
            n.index_of(ws);
        }
        n
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Known>> {
        self.table.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The index of the node at `ws`, learning it if it is new (`None` if it
    /// does not resolve).
    pub fn index_of(&self, ws: &str) -> Option<u16> {
        if let Some(i) = self.read().iter().position(|k| k.ws == ws) {
            return Some(i as u16);
        }
        let addr = resolve(ws)?;
        let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = table.iter().position(|k| k.ws == ws) {
            return Some(i as u16);
        }
        table.push(Known {
            ws: ws.to_string(),
            addr,
        });
        Some((table.len() - 1) as u16)
    }

    pub fn get(&self, i: u16) -> Option<Known> {
        self.read().get(i as usize).cloned()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Every known node's `http://HOST:PORT`, in node order.
    pub fn http_bases(&self) -> Vec<String> {
        self.read().iter().map(|k| http_of(&k.ws)).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The servers discovery lists for `token`, best first, asked on the known
    /// nodes in turn until one answers.
    pub async fn ask(&self, token: &str) -> Result<Vec<String>, Ask> {
        let client = self
            .client
            .as_ref()
            .ok_or_else(|| Ask::Unreachable("no HTTP client".into()))?;
        let _permit = self.permits.acquire().await;
        let bases: Vec<String> = self.read().iter().map(|k| http_of(&k.ws)).collect();
        let first = self.next.fetch_add(1, Relaxed);
        let mut why = String::from("no node known");
        for k in 0..bases.len() {
            let base = &bases[(first + k) % bases.len()];
            let sent = client
                .get(format!("{base}/v1/discovery"))
                .bearer_auth(token)
                .timeout(TIMEOUT)
                .send()
                .await;
            match sent {
                Ok(r) if r.status() == reqwest::StatusCode::UNAUTHORIZED => {
                    return Err(Ask::Refused)
                }
                Ok(r) if r.status().is_success() => match r.json::<DiscoveryResponse>().await {
                    Ok(d) if !d.servers.is_empty() => return Ok(d.servers),
                    Ok(_) => why = format!("{base} listed no server"),
                    Err(e) => why = format!("{base}: {e}"),
                },
                Ok(r) => why = format!("{base} answered {}", r.status()),
                Err(e) => why = format!("{base}: {e}"),
            }
        }
        Err(Ask::Unreachable(why))
    }

    /// Logs `username` in again as device `device` (the same device): a new token.
    pub async fn login(&self, username: String, device: String) -> Result<String, String> {
        let client = self.client.as_ref().ok_or("no HTTP client")?;
        let _permit = self.permits.acquire().await;
        let bases: Vec<String> = self.read().iter().map(|k| http_of(&k.ws)).collect();
        let body = LoginRequest {
            username,
            password: crate::population::PASSWORD.into(),
            device: Some(device),
        };
        let mut why = String::from("no node known");
        for base in bases {
            let sent = client
                .post(format!("{base}/v1/login"))
                .json(&body)
                .timeout(TIMEOUT)
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => {
                    return r
                        .json::<LoginResponse>()
                        .await
                        .map(|l| l.token)
                        .map_err(|e| e.to_string())
                }
                Ok(r) => why = format!("{base} answered {}", r.status()),
                Err(e) => why = format!("{base}: {e}"),
            }
        }
        Err(why)
    }

    /// The node to connect to from a discovery answer: the first listed,
    /// passing over `avoid` (the node just lost or failed) when another is listed.
    pub fn pick(&self, servers: &[String], avoid: Option<u16>) -> Option<(u16, Known)> {
        let listed: Vec<u16> = servers.iter().filter_map(|s| self.index_of(s)).collect();
        let i = listed
            .iter()
            .copied()
            .find(|&i| Some(i) != avoid)
            .or(listed.first().copied())?;
        Some((i, self.get(i)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_answers_pick_a_node_other_than_the_lost_one() {
        let n = Nodes::default();
        let (a, b) = ("ws://127.0.0.1:9001/v1/ws", "ws://127.0.0.1:9002/v1/ws");
        assert_eq!(n.index_of(a), Some(0));
        assert_eq!(n.index_of(b), Some(1));
        assert_eq!(n.index_of(a), Some(0), "known once");
        let servers = vec![b.to_string(), a.to_string()];
        assert_eq!(n.pick(&servers, None).unwrap().0, 1, "the first listed");
        assert_eq!(n.pick(&servers, Some(1)).unwrap().0, 0, "not the lost one");
        let only = vec![b.to_string()];
        assert_eq!(
            n.pick(&only, Some(1)).unwrap().0,
            1,
            "unless it is the only one"
        );
        // A node discovery names for the first time is learnt.
        let c = "ws://127.0.0.1:9003/v1/ws".to_string();
        assert_eq!(n.pick(&[c], None).unwrap().0, 2);
        assert_eq!(http_of(a), "http://127.0.0.1:9001");
        assert_eq!(http_of("wss://h:443/v1/ws"), "https://h:443");
    }
}
