//! The simulated population: accounts, devices, friendships and groups,
//! created on the server before the measured phases.
//!
//! The *shape* (who has how many devices, who befriends whom, who is in which
//! group) is drawn from the scenario's seed alone ([`plan`]), so the same seed
//! gives the same population whatever the server answers. Creating it
//! goes one of two ways, to the same accounts, devices, friendships and
//! groups: through the server's bulk endpoints ([`bulk`]) when it has a
//! provisioning token (the embedded server always does; a running server when
//! the scenario or `--provisioning-token` gives its), many objects per
//! request spread over every node; otherwise ([`provision`]) one request per
//! object kept `concurrency` in flight (signups, then one login per device,
//! then friendships, then groups). The server's password hashing is made cheap
//! for the embedded server. Usernames carry a per-run nonce so a durable
//! server can be loaded twice without name conflicts.

use std::collections::HashSet;
use std::time::Instant;

use futures_util::stream::{self, StreamExt, TryStreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reference_server::protocol::{
    CreateGroupRequest, CreateGroupResponse, LoginRequest, LoginResponse, SignupRequest,
    SignupResponse, UserRef,
};
use serde::{Deserialize, Serialize};

use crate::error::LoadgenError;
use crate::outcome::Provisioning;
use crate::scenario::{Population as PopulationSpec, Scenario};

pub mod bulk;
mod slice;

pub use slice::{Share, Sparse};

/// Every simulated user's password (devices log in again with it).
pub const PASSWORD: &str = "loadgen-password";

/// One simulated user.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct User {
    /// Server user id (0 until provisioned).
    pub id: u64,
    /// Indices into [`Population::devices`].
    pub devices: Vec<u32>,
    /// Indices into [`Population::users`].
    pub friends: Vec<u32>,
    /// Indices into [`Population::groups`].
    pub groups: Vec<u32>,
}

/// One device of a user: a login, hence a token.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Device {
    pub user: u32,
    pub device_id: u64,
    pub token: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Group {
    /// `g:N` once created.
    pub channel: String,
    /// Indices into [`Population::users`]; the first one creates the group.
    pub members: Vec<u32>,
}

/// The population, or a process's slice of it ([`Population::slice`]):
/// users and groups by global index, devices by local index.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Population {
    pub users: Sparse<User>,
    pub devices: Vec<Device>,
    pub groups: Sparse<Group>,
    /// Friendship edges (each once, a < b); empty in a slice.
    #[serde(default)]
    pub friendships: Vec<(u32, u32)>,
    /// In a slice: (user index, server id) of friends of its users that it
    /// does not hold, by index.
    #[serde(default)]
    pub others: Vec<(u32, u64)>,
    /// WebSocket URL handed out by login (service discovery).
    pub ws_url: String,
    /// Every server login listed (more than one: a cluster).
    #[serde(default)]
    pub servers: Vec<String>,
    /// This run's part of the usernames (`lg{nonce}u{index}`).
    #[serde(default)]
    pub nonce: String,
}

/// Draws the population's shape from the seed.
pub fn plan(spec: &PopulationSpec, seed: u64) -> Population {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x706f_7075_6c61_7469);
    let n = spec.users as usize;
    let mut pop = Population::default();
    for u in 0..n {
        let mut roll: f64 = rng.random();
        let mut count = spec.devices.last().map_or(1, |d| d.0);
        for &(k, share) in &spec.devices {
            if roll < share {
                count = k;
                break;
            }
            roll -= share;
        }
        let mut user = User::default();
        for _ in 0..count {
            user.devices.push(pop.devices.len() as u32);
            pop.devices.push(Device {
                user: u as u32,
                ..Device::default()
            });
        }
        pop.users.push(user);
    }
    // Friendships: mean degree `friends`. A ring first (when the mean allows
    // it) so nobody is left without a friend to write to, then random edges.
    let mut edges: HashSet<(u32, u32)> = HashSet::new();
    let wanted = ((spec.friends * n as f64) / 2.0).round() as usize;
    let max_edges = n * (n - 1) / 2;
    let wanted = wanted.min(max_edges);
    if spec.friends >= 2.0 && n > 2 {
        for u in 0..n {
            let v = (u + 1) % n;
            edges.insert((u.min(v) as u32, u.max(v) as u32));
        }
    }
    let mut attempts = 0usize;
    while edges.len() < wanted && attempts < wanted * 20 + 100 {
        attempts += 1;
        let a = rng.random_range(0..n);
        let b = rng.random_range(0..n);
        if a != b {
            edges.insert((a.min(b) as u32, a.max(b) as u32));
        }
    }
    let mut edges: Vec<(u32, u32)> = edges.into_iter().collect();
    edges.sort_unstable();
    for &(a, b) in &edges {
        pop.users[a as usize].friends.push(b);
        pop.users[b as usize].friends.push(a);
    }
    pop.friendships = edges;
    for g in 0..spec.groups as usize {
        let (lo, hi) = spec.group_size;
        let size = rng.random_range(lo..=hi).min(n as u32) as usize;
        let mut members = Vec::with_capacity(size);
        let mut seen = HashSet::new();
        while members.len() < size {
            let u = rng.random_range(0..n) as u32;
            if seen.insert(u) {
                members.push(u);
            }
        }
        for &u in &members {
            pop.users[u as usize].groups.push(g as u32);
        }
        pop.groups.push(Group {
            channel: String::new(),
            members,
        });
    }
    pop
}

impl Population {
    /// Writes the provisioned population (ids, tokens, channels) for worker processes.
    pub fn save(&self, path: &std::path::Path) -> Result<(), LoadgenError> {
        let io = |source| LoadgenError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
        serde_json::to_writer(file, self).map_err(|e| io(e.into()))
    }

    pub fn load(path: &std::path::Path) -> Result<Population, LoadgenError> {
        let io = |source| LoadgenError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::io::BufReader::new(std::fs::File::open(path).map_err(io)?);
        serde_json::from_reader(file).map_err(|e| io(e.into()))
    }
}

/// This run's part of the usernames: the time in ms, in hex.
fn new_nonce() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis()
    )
}

/// Fails unless login handed out a chat server that is a WebSocket URL.
fn check_ws_url(base: &str, pop: &Population) -> Result<(), LoadgenError> {
    if pop.ws_url.is_empty() {
        return Err(LoadgenError::unrunnable(format!(
            "login at {base} handed out no chat server"
        )));
    }
    // Discovery may hand out another host than the target; it must at least
    // be a WebSocket URL (`ws://`, or `wss://` when the server speaks TLS).
    let as_http = pop
        .ws_url
        .replacen("wss://", "https://", 1)
        .replacen("ws://", "http://", 1);
    crate::scenario::check_target_url(&as_http).map_err(|r| {
        LoadgenError::unrunnable(format!(
            "login at {base} handed out the chat server {}: {r}",
            pop.ws_url
        ))
    })
}

fn username(nonce: &str, u: usize) -> String {
    format!("lg{nonce}u{u}")
}

impl Population {
    /// User `u`'s username (devices that must log in again use it).
    pub fn username(&self, u: u32) -> String {
        username(&self.nonce, u as usize)
    }
}

fn http_err(base: &str, what: &str, e: reqwest::Error) -> LoadgenError {
    if e.is_connect() || e.is_timeout() {
        LoadgenError::unrunnable(format!("target {base} unreachable ({what}): {e}"))
    } else {
        LoadgenError::unrunnable(format!("{what} failed against {base}: {e}"))
    }
}

async fn check(
    base: &str,
    what: &str,
    resp: reqwest::Response,
) -> Result<reqwest::Response, LoadgenError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = resp.text().await.unwrap_or_default();
    Err(LoadgenError::unrunnable(format!(
        "{what} against {base} answered {status}: {body}"
    )))
}

/// A client for provisioning: HTTP/1 with a pool as deep as the concurrency.
pub fn http_client(concurrency: usize) -> Result<reqwest::Client, LoadgenError> {
    crate::tls::http_builder()
        .pool_max_idle_per_host(concurrency)
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|e| LoadgenError::unrunnable(format!("HTTP client: {e}")))
}

/// Fails with exit 3 unless the target answers `GET /healthz`.
pub async fn wait_healthy(client: &reqwest::Client, base: &str) -> Result<(), LoadgenError> {
    let resp = client
        .get(format!("{base}/healthz"))
        .send()
        .await
        .map_err(|e| http_err(base, "health check", e))?;
    check(base, "GET /healthz", resp).await.map(|_| ())
}

/// Creates the planned population on the server; fills in ids, tokens and
/// channels; returns how long it took and what was made.
pub async fn provision(
    client: &reqwest::Client,
    base: &str,
    pop: &mut Population,
    concurrency: usize,
) -> Result<Provisioning, LoadgenError> {
    let started = Instant::now();
    let nonce = new_nonce();

    let ids: Vec<u64> = stream::iter(0..pop.users.len())
        .map(|u| {
            let body = SignupRequest {
                username: username(&nonce, u),
                password: PASSWORD.into(),
            };
            async move {
                let resp = client
                    .post(format!("{base}/v1/signup"))
                    .json(&body)
                    .send()
                    .await
                    .map_err(|e| http_err(base, "signup", e))?;
                let r: SignupResponse = check(base, "signup", resp)
                    .await?
                    .json()
                    .await
                    .map_err(|e| http_err(base, "signup", e))?;
                Ok::<u64, LoadgenError>(r.user_id)
            }
        })
        .buffered(concurrency)
        .try_collect()
        .await?;
    for (user, id) in pop.users.iter_mut().zip(ids) {
        user.id = id;
    }

    let logins: Vec<LoginResponse> = stream::iter(0..pop.devices.len())
        .map(|d| {
            let u = pop.devices[d].user as usize;
            let k = pop.users[u]
                .devices
                .iter()
                .position(|&x| x as usize == d)
                .unwrap_or(0);
            let body = LoginRequest {
                username: username(&nonce, u),
                password: PASSWORD.into(),
                device: Some(format!("d{k}")),
            };
            async move {
                let resp = client
                    .post(format!("{base}/v1/login"))
                    .json(&body)
                    .send()
                    .await
                    .map_err(|e| http_err(base, "login", e))?;
                check(base, "login", resp)
                    .await?
                    .json::<LoginResponse>()
                    .await
                    .map_err(|e| http_err(base, "login", e))
            }
        })
        .buffered(concurrency)
        .try_collect()
        .await?;
    pop.nonce = nonce.clone();
    for (dev, login) in pop.devices.iter_mut().zip(logins) {
        if pop.ws_url.is_empty() {
            pop.ws_url = login.servers.first().cloned().unwrap_or_default();
        }
        if login.servers.len() > pop.servers.len() {
            pop.servers = login.servers;
        }
        dev.device_id = login.device_id;
        dev.token = login.token;
    }
    check_ws_url(base, pop)?;
    let accounts_seconds = started.elapsed().as_secs_f64();
    let stage = Instant::now();

    let token_of = |u: u32| {
        pop.devices[pop.users[u as usize].devices[0] as usize]
            .token
            .clone()
    };
    let user_id = |u: u32| pop.user_id(u);
    stream::iter(pop.friendships.iter().copied())
        .map(|(a, b)| {
            let (token, body) = (
                token_of(a),
                UserRef {
                    user_id: user_id(b),
                },
            );
            async move {
                let resp = client
                    .post(format!("{base}/v1/friends"))
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .await
                    .map_err(|e| http_err(base, "befriend", e))?;
                check(base, "POST /v1/friends", resp).await.map(|_| ())
            }
        })
        .buffer_unordered(concurrency)
        .try_collect::<()>()
        .await?;
    let friendships_seconds = stage.elapsed().as_secs_f64();
    let stage = Instant::now();

    let channels: Vec<String> = stream::iter(0..pop.groups.len())
        .map(|g| {
            let members = &pop.groups[g].members;
            let token = token_of(members[0]);
            let body = CreateGroupRequest {
                name: format!("group{g}"),
                members: members[1..].iter().map(|&u| user_id(u)).collect(),
            };
            async move {
                let resp = client
                    .post(format!("{base}/v1/groups"))
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .await
                    .map_err(|e| http_err(base, "create group", e))?;
                let r: CreateGroupResponse = check(base, "POST /v1/groups", resp)
                    .await?
                    .json()
                    .await
                    .map_err(|e| http_err(base, "create group", e))?;
                Ok::<String, LoadgenError>(r.channel)
            }
        })
        .buffered(concurrency)
        .try_collect()
        .await?;
    for (group, channel) in pop.groups.iter_mut().zip(channels) {
        group.channel = channel;
    }

    let p = Provisioning {
        users: pop.users.len() as u64,
        devices: pop.devices.len() as u64,
        friendships: pop.friendships.len() as u64,
        groups: pop.groups.len() as u64,
        seconds: started.elapsed().as_secs_f64(),
        method: "per_object".into(),
        nodes: 1,
        accounts_seconds,
        friendships_seconds,
        groups_seconds: stage.elapsed().as_secs_f64(),
        ..Provisioning::default()
    };
    // One request per object, and the health check before.
    Ok(Provisioning {
        requests: 1 + p.users + p.devices + p.friendships + p.groups,
        ..p
    }
    .with_rates())
}

/// Creates the scenario's population on the server; returns it with the HTTP
/// client that made it (history reads reuse its connection pool).
pub async fn provision_for(
    scenario: &Scenario,
    base: &str,
) -> Result<(Population, Provisioning, reqwest::Client), LoadgenError> {
    let concurrency = scenario.generator.provision_concurrency;
    let client = http_client(concurrency)?;
    wait_healthy(&client, base).await?;
    let mut pop = plan(&scenario.population, scenario.seed);
    eprintln!(
        "creating the population: {} users, {} devices, {} friendships, {} groups",
        pop.users.len(),
        pop.devices.len(),
        pop.friendships.len(),
        pop.groups.len()
    );
    let provisioning = match &scenario.target.provisioning_token {
        Some(token) => {
            let nodes = scenario.target.servers as usize;
            bulk::provision(&client, base, token, &mut pop, nodes).await?
        }
        None => provision(&client, base, &mut pop, concurrency).await?,
    };
    let p = &provisioning;
    eprintln!(
        "population created in {:.1}s ({}: {} requests, {:.0}/s; {} objects, {:.0}/s; over {} node(s)); running {} phase(s) against {base}",
        p.seconds,
        p.method,
        p.requests,
        p.requests_per_second,
        p.objects,
        p.objects_per_second,
        p.nodes,
        scenario.phases.len()
    );
    Ok((pop, provisioning, client))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_plans_the_same_population() {
        let spec = PopulationSpec {
            users: 200,
            devices: vec![(1, 0.5), (2, 0.3), (3, 0.2)],
            friends: 6.0,
            groups: 10,
            group_size: (3, 8),
        };
        let (a, b) = (plan(&spec, 7), plan(&spec, 7));
        assert_eq!(a.friendships, b.friendships);
        assert_eq!(a.devices.len(), b.devices.len());
        assert_eq!(
            a.groups
                .iter()
                .map(|g| g.members.clone())
                .collect::<Vec<_>>(),
            b.groups
                .iter()
                .map(|g| g.members.clone())
                .collect::<Vec<_>>()
        );
        let mean = 2.0 * a.friendships.len() as f64 / 200.0;
        assert!((mean - 6.0).abs() < 0.5, "mean friends {mean}");
        assert!(a.users.iter().all(|u| !u.friends.is_empty()));
        assert!(a.groups.iter().all(|g| (3..=8).contains(&g.members.len())));
    }
}
