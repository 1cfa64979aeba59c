//! Bulk provisioning: the operator's endpoints that create many accounts (with
//! their device logins), friendships or groups per request.
//!
//! A load test of a million accounts through the one-object API is millions of
//! HTTP requests, each paying its request parsing, routing, an extra lookup
//! and (for a login) a password verification. These endpoints take up to
//! [`MAX_BATCH`] objects per request and run each one through the *same*
//! storage writes and password hashing the one-object endpoints use
//! ([`crate::store::Store::create_user`], `login_device`, `put_token`,
//! `add_friend`, `create_group`; Argon2id at the configured cost, one salt
//! per account), many at once, so the store's round trips overlap.
//!
//! A bulk endpoint is an abuse vector on a public server: a signup flood
//! without rate limits. They exist only when the operator starts the server
//! with `--provisioning-token TOKEN` (otherwise the routes are not mounted:
//! `404 not_found`), and every request must carry that token in the
//! [`HEADER`] header (`403 forbidden` when it is missing or wrong). Per-source
//! and per-username login limits do not apply: the token is the operator's.
//!
//! Each object gets its own result, in request order: what it created, or the
//! `{"error", "message"}` of why not (a taken username, a name twice in one
//! batch, an unknown user, a full group), so one bad object never fails the
//! batch and nothing is stored twice.

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::routing::post;
use axum::{Json, Router};
use futures_util::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};

use crate::auth::{new_token, now_ms};
use crate::chat::App;
use crate::error::ApiError;
use crate::http::JsonBody;
use crate::protocol::{
    has_nul, valid_username, ChannelId, CreateGroupResponse, ErrorBody, ErrorCode, UserId,
    MAX_GROUP_MEMBERS,
};
use crate::store::TokenOwner;

/// The request header that carries the provisioning token.
pub const HEADER: &str = "x-provisioning-token";
/// Most objects (accounts, friendships or groups) one request may hold.
pub const MAX_BATCH: usize = 1000;
/// Most device logins one account of a batch may ask for.
pub const MAX_DEVICES: usize = 16;
/// Objects of one request in the store at once: enough for the store's round
/// trips to overlap, bounded so one request cannot queue thousands.
const IN_FLIGHT: usize = 64;

/// `POST /v1/provision/accounts`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountsRequest {
    pub accounts: Vec<NewAccount>,
}

/// An account to create, and the devices to log in on it (by name, as the
/// `device` of `POST /v1/login`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewAccount {
    pub username: String,
    pub password: String,
    #[serde(default)]
    pub devices: Vec<String>,
}

/// A created account with one login per device asked for, in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedAccount {
    pub user_id: UserId,
    pub devices: Vec<DeviceLogin>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceLogin {
    pub device_id: u64,
    pub token: String,
}

/// `POST /v1/provision/friends`: each pair befriended as `POST /v1/friends` would.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FriendsRequest {
    pub pairs: Vec<(UserId, UserId)>,
}

/// `POST /v1/provision/groups`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupsRequest {
    pub groups: Vec<NewGroup>,
}

/// A group to create: `members[0]` is its creator (as the caller of `POST
/// /v1/groups`), duplicates are dropped.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewGroup {
    pub name: String,
    pub members: Vec<UserId>,
}

/// A friendship made (nothing to say but that it was).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Done {}

/// One object's result: its error, or what it created.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Outcome<T> {
    /// Tried first when reading: an error always has `error` and `message`.
    Failed(ErrorBody),
    Created(T),
}

/// The answer of every bulk endpoint: one result per object, in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchResponse<T> {
    pub results: Vec<Outcome<T>>,
    /// How many objects were created (the results that are not errors).
    pub created: usize,
    /// The chat servers, as login hands them out (accounts only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<String>,
}

impl<T> BatchResponse<T> {
    fn new(results: Vec<Outcome<T>>) -> Self {
        let created = results
            .iter()
            .filter(|r| matches!(r, Outcome::Created(_)))
            .count();
        BatchResponse {
            results,
            created,
            servers: Vec::new(),
        }
    }
}

fn failed<T>(e: ApiError) -> Outcome<T> {
    Outcome::Failed(ErrorBody {
        error: e.code,
        message: e.message,
    })
}

/// The bulk routes; mounted only when the server has a provisioning token.
pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/provision/accounts", post(accounts))
        .route("/v1/provision/friends", post(friends))
        .route("/v1/provision/groups", post(groups))
}

/// A request that carries the operator's provisioning token.
pub struct Operator;

impl FromRequestParts<Arc<App>> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let given = parts.headers.get(HEADER).map(|v| v.as_bytes());
        let ok = match (&app.config.provisioning_token, given) {
            (Some(want), Some(given)) => same(want.as_bytes(), given),
            _ => false,
        };
        if ok {
            Ok(Operator)
        } else {
            Err(app.count(ApiError::forbidden(format!(
                "bulk provisioning needs the server's provisioning token in the {HEADER} header"
            ))))
        }
    }
}

/// Compares in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `413 too_large` naming the limit, for a batch past [`MAX_BATCH`].
fn check_size(app: &App, what: &str, n: usize) -> Result<(), ApiError> {
    if n > MAX_BATCH {
        return Err(app.count(ApiError::new(
            ErrorCode::TooLarge,
            format!("at most {MAX_BATCH} {what} per request (this one has {n}); split the batch"),
        )));
    }
    Ok(())
}

/// Runs `each` over the items, [`IN_FLIGHT`] at once, results in order.
async fn run_all<I, T, F, Fut>(items: Vec<I>, each: F) -> Vec<Outcome<T>>
where
    F: Fn(I) -> Fut,
    Fut: std::future::Future<Output = Outcome<T>>,
{
    stream::iter(items)
        .map(each)
        .buffered(IN_FLIGHT)
        .collect()
        .await
}

/// Why an account of a batch cannot be created, before anything is stored.
fn invalid_account(a: &NewAccount, seen: &mut HashSet<String>) -> Option<ApiError> {
    if !valid_username(&a.username) {
        return Some(ApiError::bad_request(
            "username must be 1-64 characters of A-Z a-z 0-9 _ . -",
        ));
    }
    if a.password.chars().count() < 8 {
        return Some(ApiError::bad_request(
            "password must be at least 8 characters",
        ));
    }
    if a.devices.len() > MAX_DEVICES {
        return Some(ApiError::bad_request(format!(
            "at most {MAX_DEVICES} devices per account"
        )));
    }
    if a.devices.iter().any(|d| has_nul(d)) {
        return Some(ApiError::bad_request("device name holds U+0000"));
    }
    if !seen.insert(a.username.clone()) {
        return Some(ApiError::new(
            ErrorCode::Conflict,
            "username appears earlier in this batch",
        ));
    }
    None
}

async fn accounts(
    State(app): State<Arc<App>>,
    _op: Operator,
    JsonBody(req): JsonBody<AccountsRequest>,
) -> Result<Json<BatchResponse<CreatedAccount>>, ApiError> {
    check_size(&app, "accounts", req.accounts.len())?;
    let mut seen = HashSet::new();
    let checked: Vec<(NewAccount, Option<ApiError>)> = req
        .accounts
        .into_iter()
        .map(|a| {
            let why = invalid_account(&a, &mut seen);
            (a, why)
        })
        .collect();
    // The batch's passwords (each with its own salt) a few per hashing slot:
    // the per-hash hand-off to the blocking pool would cost more than an
    // Argon2id hash at a load test's cost.
    let passwords: Vec<String> = checked
        .iter()
        .filter(|(_, why)| why.is_none())
        .map(|(a, _)| a.password.clone())
        .collect();
    let mut hashes = app
        .hashing
        .hash_all_blocking(passwords)
        .await
        .map_err(|e| app.count(e.into()))?
        .into_iter();
    let jobs: Vec<_> = checked
        .into_iter()
        .map(|(a, why)| match why {
            Some(e) => (a, Err(e)),
            None => {
                let hash = hashes.next().expect("one hash per valid account");
                (a, hash.map_err(ApiError::from))
            }
        })
        .collect();
    let results = run_all(jobs, |(a, hash)| {
        let app = app.clone();
        async move {
            match create_account(&app, a, hash).await {
                Ok(created) => Outcome::Created(created),
                Err(e) => failed(app.count(e)),
            }
        }
    })
    .await;
    let mut response = BatchResponse::new(results);
    response.servers = app.servers();
    Ok(Json(response))
}

/// What `POST /v1/signup` and then one `POST /v1/login` per device store,
/// without verifying the password the same request just set.
async fn create_account(
    app: &App,
    a: NewAccount,
    hash: Result<String, ApiError>,
) -> Result<CreatedAccount, ApiError> {
    let user_id = app.store.create_user(&a.username, &hash?).await?;
    let mut devices = Vec::with_capacity(a.devices.len());
    for name in &a.devices {
        let device_id = app.store.login_device(user_id, Some(name)).await?;
        let token = new_token(now_ms(), app.config.token_ttl);
        app.store
            .put_token(&token, TokenOwner { user_id, device_id })
            .await?;
        devices.push(DeviceLogin { device_id, token });
    }
    Ok(CreatedAccount { user_id, devices })
}

async fn friends(
    State(app): State<Arc<App>>,
    _op: Operator,
    JsonBody(req): JsonBody<FriendsRequest>,
) -> Result<Json<BatchResponse<Done>>, ApiError> {
    check_size(&app, "friendships", req.pairs.len())?;
    let results = run_all(req.pairs, |(a, b)| {
        let app = app.clone();
        async move {
            if a == b {
                return failed(app.count(ApiError::bad_request("a user cannot befriend itself")));
            }
            match app.store.add_friend(a, b).await {
                Ok(()) => Outcome::Created(Done {}),
                Err(e) => failed(app.count(e.into())),
            }
        }
    })
    .await;
    Ok(Json(BatchResponse::new(results)))
}

async fn groups(
    State(app): State<Arc<App>>,
    _op: Operator,
    JsonBody(req): JsonBody<GroupsRequest>,
) -> Result<Json<BatchResponse<CreateGroupResponse>>, ApiError> {
    check_size(&app, "groups", req.groups.len())?;
    let results = run_all(req.groups, |g| {
        let app = app.clone();
        async move {
            if has_nul(&g.name) {
                return failed(app.count(ApiError::bad_request("group name holds U+0000")));
            }
            if g.members.is_empty() {
                return failed(app.count(ApiError::bad_request(
                    "a group needs at least its creator as members[0]",
                )));
            }
            match app
                .store
                .create_group(&g.name, &g.members, MAX_GROUP_MEMBERS)
                .await
            {
                Ok(n) => Outcome::Created(CreateGroupResponse {
                    channel: ChannelId::Group(n).to_string(),
                }),
                Err(e) => failed(app.count(e.into())),
            }
        }
    })
    .await;
    Ok(Json(BatchResponse::new(results)))
}
