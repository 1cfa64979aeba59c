//! Creating the population through the server's bulk endpoints
//! (`/v1/provision/...`, on when the server has a `--provisioning-token`).
//!
//! One request per object costs a million-account run about 4.5 million HTTP
//! requests, each with its parsing, routing, a username lookup and (for a
//! login) a password verification: 16 minutes on this 2-core machine. Here
//! each request carries up to [`MAX_BATCH`] accounts (each with its device
//! logins), friendships or groups, and the server runs every object through
//! the same storage writes and password hashing as the one-object endpoints.
//! The first batch goes to the target; every account batch's answer lists the
//! chat servers (discovery), and the batches are spread over all those known
//! when each is sent, so every node's cores and store connections work (a node
//! that has just started may list only itself at first: the list grows as the
//! nodes see each other).
//!
//! What gets created is exactly what [`super::provision`] creates one object
//! at a time (the same usernames, device names, friendships, group members
//! and creators, in the same order of ids per stage); only the requests differ.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use futures_util::stream::{self, StreamExt, TryStreamExt};
use reference_server::protocol::{CreateGroupResponse, UserId};
use reference_server::provision::{
    AccountsRequest, BatchResponse, CreatedAccount, Done, FriendsRequest, GroupsRequest,
    NewAccount, NewGroup, Outcome, HEADER, MAX_BATCH,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{check, http_err, username, Population, PASSWORD};
use crate::error::LoadgenError;
use crate::outcome::Provisioning;

/// Batches in flight per server node: one being parsed or answered while
/// others wait on the store.
const PER_NODE: usize = 4;

/// Sends batches to the nodes; counts requests.
struct Sender<'a> {
    client: &'a reqwest::Client,
    token: &'a str,
    /// `http://HOST:PORT` of every node known; batch `i` goes to
    /// `bases[i % len]` of the list when it is sent.
    bases: std::sync::Mutex<Vec<String>>,
    /// Batches in flight.
    in_flight: usize,
    requests: AtomicU64,
}

impl Sender<'_> {
    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        base: &str,
        what: &str,
        path: &str,
        body: &B,
    ) -> Result<BatchResponse<T>, LoadgenError> {
        self.requests.fetch_add(1, Relaxed);
        let resp = self
            .client
            .post(format!("{base}{path}"))
            .header(HEADER, self.token)
            .json(body)
            .send()
            .await
            .map_err(|e| http_err(base, what, e))?;
        if resp.status() == reqwest::StatusCode::FORBIDDEN {
            return Err(LoadgenError::unrunnable(format!(
                "{what} against {base} was refused (403): the provisioning token is not the server's --provisioning-token"
            )));
        }
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Err(LoadgenError::unrunnable(format!(
                "{what}: {base} has no bulk provisioning endpoints (404): start it with --provisioning-token, or leave the token out to create the population one request per object"
            )));
        }
        check(base, what, resp)
            .await?
            .json()
            .await
            .map_err(|e| http_err(base, what, e))
    }

    /// Posts every batch, spread over the nodes, [`PER_NODE`] per node in
    /// flight; answers in batch order.
    /// Batches are made as they are sent: the whole population's requests
    /// are never in memory at once.
    async fn all<B: Serialize, T: DeserializeOwned>(
        &self,
        what: &str,
        path: &str,
        batches: impl Iterator<Item = B>,
    ) -> Result<Vec<BatchResponse<T>>, LoadgenError> {
        let this = self;
        stream::iter(batches.enumerate())
            .map(|(i, batch)| async move {
                let base = this.base(i);
                let answer: BatchResponse<T> = this.post(&base, what, path, &batch).await?;
                this.learn(&answer.servers);
                Ok(answer)
            })
            .buffered(this.in_flight)
            .try_collect()
            .await
    }

    fn base(&self, i: usize) -> String {
        let bases = self.bases.lock().expect("not poisoned");
        bases[i % bases.len()].clone()
    }

    /// Spreads the next batches over the servers an answer lists, when it
    /// knows more than the list so far.
    fn learn(&self, servers: &[String]) {
        let mut bases = self.bases.lock().expect("not poisoned");
        if servers.len() > bases.len() {
            *bases = servers
                .iter()
                .map(|ws| crate::engine::nodes::http_of(ws))
                .collect();
        }
    }

    fn nodes(&self) -> usize {
        self.bases.lock().expect("not poisoned").len()
    }
}

/// The created objects of a batch's answer, or the first one's error.
fn created<T>(
    what: &str,
    name: impl Fn(usize) -> String,
    resp: BatchResponse<T>,
    expected: usize,
) -> Result<Vec<T>, LoadgenError> {
    if resp.results.len() != expected {
        return Err(LoadgenError::unrunnable(format!(
            "{what}: {} results for a batch of {expected}",
            resp.results.len()
        )));
    }
    resp.results
        .into_iter()
        .enumerate()
        .map(|(i, r)| match r {
            Outcome::Created(t) => Ok(t),
            Outcome::Failed(e) => Err(LoadgenError::unrunnable(format!(
                "{what} of {} failed: {}: {}",
                name(i),
                e.error.as_str(),
                e.message
            ))),
        })
        .collect()
}

/// Creates the planned population through the bulk endpoints of `base` and
/// the nodes it lists; fills in ids, tokens and channels.
/// `nodes`: how many server nodes the run expects (batches in flight are
/// [`PER_NODE`] per node; 1 when unknown).
pub async fn provision(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    pop: &mut Population,
    nodes: usize,
) -> Result<Provisioning, LoadgenError> {
    let started = Instant::now();
    let nonce = super::new_nonce();
    let sender = Sender {
        client,
        token,
        bases: std::sync::Mutex::new(vec![base.to_string()]),
        in_flight: PER_NODE * nodes.max(1),
        // The health check before.
        requests: AtomicU64::new(1),
    };

    // Accounts with their devices ("d0", "d1", ... as the one-by-one logins
    // name them), in batches of consecutive users.
    let users = pop.users.len();
    let counts: Vec<usize> = pop.users.iter().map(|u| u.devices.len()).collect();
    let account = |u: usize| NewAccount {
        username: username(&nonce, u),
        password: PASSWORD.into(),
        devices: (0..counts[u]).map(|k| format!("d{k}")).collect(),
    };
    let batch_of = |start: usize| AccountsRequest {
        accounts: (start..(start + MAX_BATCH).min(users))
            .map(account)
            .collect(),
    };
    let mut answers: Vec<BatchResponse<CreatedAccount>> = Vec::new();
    if users > 0 {
        // The first batch alone: its answer names the nodes to spread over.
        let first: BatchResponse<CreatedAccount> = sender
            .post(base, "bulk signup", "/v1/provision/accounts", &batch_of(0))
            .await?;
        sender.learn(&first.servers);
        answers.push(first);
        let rest = (MAX_BATCH..users).step_by(MAX_BATCH).map(batch_of);
        answers.extend(
            sender
                .all("bulk signup", "/v1/provision/accounts", rest)
                .await?,
        );
    }
    pop.nonce = nonce.clone();
    for (b, resp) in answers.into_iter().enumerate() {
        // The longest list of servers is the whole cluster (as one by one).
        if resp.servers.len() > pop.servers.len() || pop.ws_url.is_empty() {
            pop.ws_url = resp.servers.first().cloned().unwrap_or_default();
            pop.servers.clone_from(&resp.servers);
        }
        let start = b * MAX_BATCH;
        let n = (users - start).min(MAX_BATCH);
        let made = created("signup", |i| username(&nonce, start + i), resp, n)?;
        for (i, acct) in made.into_iter().enumerate() {
            let user = &mut pop.users[start + i];
            user.id = acct.user_id;
            if acct.devices.len() != user.devices.len() {
                return Err(LoadgenError::unrunnable(format!(
                    "bulk signup of {}: {} device logins for {} devices",
                    username(&nonce, start + i),
                    acct.devices.len(),
                    user.devices.len()
                )));
            }
            let devices = user.devices.clone();
            for (d, login) in devices.into_iter().zip(acct.devices) {
                let dev = &mut pop.devices[d as usize];
                dev.device_id = login.device_id;
                dev.token = login.token;
            }
        }
    }
    super::check_ws_url(base, pop)?;
    let accounts_seconds = started.elapsed().as_secs_f64();

    let stage = Instant::now();
    let id = |u: u32| -> UserId { pop.user_id(u) };
    let friend_batches = pop.friendships.chunks(MAX_BATCH).map(|c| FriendsRequest {
        pairs: c.iter().map(|&(a, b)| (id(a), id(b))).collect(),
    });
    let answers: Vec<BatchResponse<Done>> = sender
        .all("bulk befriend", "/v1/provision/friends", friend_batches)
        .await?;
    for (resp, pairs) in answers.into_iter().zip(pop.friendships.chunks(MAX_BATCH)) {
        let n = pairs.len();
        created(
            "befriend",
            |i| format!("users {} and {}", id(pairs[i].0), id(pairs[i].1)),
            resp,
            n,
        )?;
    }
    let friendships_seconds = stage.elapsed().as_secs_f64();

    let stage = Instant::now();
    let groups = pop.groups.len();
    let group_batches = (0..groups).step_by(MAX_BATCH).map(|start| GroupsRequest {
        groups: (start..(start + MAX_BATCH).min(groups))
            .map(|g| NewGroup {
                name: format!("group{g}"),
                members: pop.groups[g].members.iter().map(|&u| id(u)).collect(),
            })
            .collect(),
    });
    let answers: Vec<BatchResponse<CreateGroupResponse>> = sender
        .all("bulk create group", "/v1/provision/groups", group_batches)
        .await?;
    for (b, resp) in answers.into_iter().enumerate() {
        let start = b * MAX_BATCH;
        let n = (groups - start).min(MAX_BATCH);
        let made = created("create group", |i| format!("group{}", start + i), resp, n)?;
        for (i, g) in made.into_iter().enumerate() {
            pop.groups[start + i].channel = g.channel;
        }
    }
    let groups_seconds = stage.elapsed().as_secs_f64();

    Ok(Provisioning {
        users: users as u64,
        devices: pop.devices.len() as u64,
        friendships: pop.friendships.len() as u64,
        groups: groups as u64,
        seconds: started.elapsed().as_secs_f64(),
        method: "bulk".into(),
        requests: sender.requests.load(Relaxed),
        nodes: sender.nodes() as u64,
        accounts_seconds,
        friendships_seconds,
        groups_seconds,
        ..Provisioning::default()
    }
    .with_rates())
}
