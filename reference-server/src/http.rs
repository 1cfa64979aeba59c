//! The HTTP API (the stateless service of the design) and the WebSocket upgrade.
//!
//! Every error answer, including a body that is not JSON or lacks a field, is
//! `{"error": CODE, "message": TEXT}` with the code's status: the extractors here
//! ([`Auth`], [`JsonBody`]) reject with [`ApiError`] rather than axum's plain-text
//! rejections.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{
    ConnectInfo, FromRequest, FromRequestParts, Path, Query, Request, State, WebSocketUpgrade,
};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;

use crate::auth::{new_token, now_ms};
use crate::chat::App;
use crate::error::ApiError;
use crate::protocol::{
    has_nul, valid_username, ChannelId, CreateGroupRequest, CreateGroupResponse, DiscoveryResponse,
    ErrorCode, Friend, FriendsResponse, LoginRequest, LoginResponse, PresenceEntry,
    PresenceResponse, SignupRequest, SignupResponse, Status, UserId, UserRef,
    HISTORY_DEFAULT_LIMIT, HISTORY_MAX_LIMIT, MAX_GROUP_MEMBERS,
};
use crate::store::TokenOwner;

type AppState = State<Arc<App>>;

pub fn router(app: Arc<App>) -> Router {
    // The bulk endpoints exist only when the operator gave a token.
    let provisioning = match app.config.provisioning_token {
        Some(_) => crate::provision::routes(),
        None => Router::new(),
    };
    Router::new()
        .route("/", get(crate::web::chat_page))
        .route("/v1/signup", post(signup))
        .route("/v1/login", post(login))
        .route("/v1/logout", post(logout))
        .route("/v1/discovery", get(discovery))
        .route("/v1/friends", post(add_friend).get(friends))
        .route("/v1/groups", post(create_group))
        .route("/v1/groups/{channel}/members", post(add_member))
        .route(
            "/v1/groups/{channel}/members/{user_id}",
            delete(remove_member),
        )
        .route("/v1/channels/{channel}/messages", get(history))
        .route("/v1/presence", get(presence))
        .route("/v1/ws", get(crate::session::upgrade))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .merge(provisioning)
        .fallback(|| async { ApiError::not_found("no such route") })
        .with_state(app)
}

/// The authenticated device of a request: `Authorization: Bearer TOKEN`, or
/// `?token=TOKEN` (browsers cannot set headers on a WebSocket upgrade).
pub struct Auth {
    pub owner: TokenOwner,
    pub token: String,
}

impl FromRequestParts<Arc<App>> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let from_header = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(|t| t.trim().to_string());
        let from_query = || {
            parts.uri.query().and_then(|q| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix("token=").map(str::to_string))
            })
        };
        let token = from_header
            .or_else(from_query)
            .ok_or_else(|| app.count(ApiError::unauthorized()))?;
        let owner = app.authenticate(&token).await.map_err(|e| app.count(e))?;
        Ok(Auth { owner, token })
    }
}

/// A JSON body; anything that is not the expected JSON is `400 bad_request`
/// naming what is wrong (whatever the `Content-Type`).
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<App>> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, app: &Arc<App>) -> Result<Self, ApiError> {
        let bytes = axum::body::Bytes::from_request(req, app)
            .await
            .map_err(|e| app.count(ApiError::bad_request(format!("unreadable body: {e}"))))?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| app.count(ApiError::bad_request(format!("invalid JSON body: {e}"))))
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The source address of a request, when the server was started with it (tests
/// that drive the router without a socket have none).
pub struct Source(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Source {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Source(
            parts
                .extensions
                .get::<ConnectInfo<crate::server::PeerAddr>>()
                .map(|c| c.0 .0.ip()),
        ))
    }
}

/// Spends one login/signup attempt of the source address and of the username:
/// `rate_limited` when either budget is spent.
fn auth_attempt(app: &App, source: &Source, username: &str) -> ApiResult<()> {
    let by_addr = source.0.is_none_or(|ip| app.limits.auth_by_addr.allow(&ip));
    if !by_addr || !app.limits.auth_by_name.allow(&username.to_string()) {
        return Err(app.count(ApiError::new(
            ErrorCode::RateLimited,
            "too many logins or signups from this address or for this username; retry later",
        )));
    }
    Ok(())
}

async fn signup(
    State(app): AppState,
    source: Source,
    JsonBody(req): JsonBody<SignupRequest>,
) -> ApiResult<(StatusCode, Json<SignupResponse>)> {
    auth_attempt(&app, &source, &req.username)?;
    if !valid_username(&req.username) {
        return Err(app.count(ApiError::bad_request(
            "username must be 1-64 characters of A-Z a-z 0-9 _ . -",
        )));
    }
    if req.password.chars().count() < 8 {
        return Err(app.count(ApiError::bad_request(
            "password must be at least 8 characters",
        )));
    }
    // Cheap pre-check so a taken name does not cost a hash; the store's own
    // uniqueness check below is what makes it race-free.
    if app.store.user_by_name(&req.username).await?.is_some() {
        return Err(app.count(ApiError::new(ErrorCode::Conflict, "username is taken")));
    }
    let hash = app
        .hashing
        .hash_blocking(req.password)
        .await
        .map_err(|e| app.count(e.into()))?;
    let user_id = app
        .store
        .create_user(&req.username, &hash)
        .await
        .map_err(|e| app.count(e.into()))?;
    Ok((StatusCode::CREATED, Json(SignupResponse { user_id })))
}

async fn login(
    State(app): AppState,
    source: Source,
    JsonBody(req): JsonBody<LoginRequest>,
) -> ApiResult<Json<LoginResponse>> {
    auth_attempt(&app, &source, &req.username)?;
    let user = app.store.user_by_name(&req.username).await?;
    // Verify against a real hash even for unknown names would hide which names
    // exist; we answer the same 401 either way and skip the cost for unknown ones.
    let Some(user) = user else {
        return Err(app.count(ApiError::unauthorized()));
    };
    if req.device.as_deref().is_some_and(has_nul) {
        return Err(app.count(ApiError::bad_request("device name holds U+0000")));
    }
    if !app
        .hashing
        .verify_blocking(req.password, user.password_hash)
        .await
        .map_err(|e| app.count(e.into()))?
    {
        return Err(app.count(ApiError::unauthorized()));
    }
    let device_id = app
        .store
        .login_device(user.id, req.device.as_deref())
        .await?;
    let token = new_token(now_ms(), app.config.token_ttl);
    app.store
        .put_token(
            &token,
            TokenOwner {
                user_id: user.id,
                device_id,
            },
        )
        .await?;
    Ok(Json(LoginResponse {
        token,
        user_id: user.id,
        device_id,
        servers: app.servers(),
    }))
}

async fn logout(State(app): AppState, auth: Auth) -> ApiResult<StatusCode> {
    app.logout(&auth.token, auth.owner).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn discovery(State(app): AppState, _auth: Auth) -> Json<DiscoveryResponse> {
    Json(DiscoveryResponse {
        servers: app.servers(),
    })
}

async fn add_friend(
    State(app): AppState,
    auth: Auth,
    JsonBody(req): JsonBody<UserRef>,
) -> ApiResult<StatusCode> {
    if req.user_id == auth.owner.user_id {
        return Err(app.count(ApiError::bad_request("a user cannot befriend itself")));
    }
    app.store
        .add_friend(auth.owner.user_id, req.user_id)
        .await
        .map_err(|e| app.count(e.into()))?;
    Ok(StatusCode::NO_CONTENT)
}

async fn friends(State(app): AppState, auth: Auth) -> ApiResult<Json<FriendsResponse>> {
    let ids = app.store.friends(auth.owner.user_id).await?;
    let users = app.store.users(&ids).await?;
    let ids: Vec<UserId> = users.iter().map(|u| u.id).collect();
    let statuses = app.statuses(&ids).await;
    let friends = users
        .into_iter()
        .zip(statuses)
        .map(|(u, (status, seen))| Friend {
            user_id: u.id,
            username: u.username,
            status,
            last_active_at: seen.or(u.last_active_at),
        })
        .collect();
    Ok(Json(FriendsResponse { friends }))
}

async fn create_group(
    State(app): AppState,
    auth: Auth,
    JsonBody(req): JsonBody<CreateGroupRequest>,
) -> ApiResult<(StatusCode, Json<CreateGroupResponse>)> {
    if has_nul(&req.name) {
        return Err(app.count(ApiError::bad_request("group name holds U+0000")));
    }
    let mut members = vec![auth.owner.user_id];
    for m in req.members {
        if !members.contains(&m) {
            members.push(m);
        }
    }
    let group = app
        .store
        .create_group(&req.name, &members, MAX_GROUP_MEMBERS)
        .await
        .map_err(|e| app.count(e.into()))?;
    let channel = ChannelId::Group(group).to_string();
    Ok((StatusCode::CREATED, Json(CreateGroupResponse { channel })))
}

/// The group number of a `g:N` channel the caller is a member of.
async fn member_group(app: &App, channel: &str, user: UserId) -> ApiResult<u64> {
    let Some(ChannelId::Group(n)) = ChannelId::parse(channel) else {
        return Err(ApiError::not_found(format!("no group {channel:?}")));
    };
    app.members(channel, user).await?;
    Ok(n)
}

async fn add_member(
    State(app): AppState,
    auth: Auth,
    Path(channel): Path<String>,
    JsonBody(req): JsonBody<UserRef>,
) -> ApiResult<StatusCode> {
    let group = member_group(&app, &channel, auth.owner.user_id)
        .await
        .map_err(|e| app.count(e))?;
    app.store
        .add_member(group, req.user_id, MAX_GROUP_MEMBERS)
        .await
        .map_err(|e| app.count(e.into()))?;
    Ok(StatusCode::NO_CONTENT)
}

async fn remove_member(
    State(app): AppState,
    auth: Auth,
    Path((channel, user)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let user: UserId = user
        .parse()
        .map_err(|_| app.count(ApiError::bad_request("user_id must be an integer")))?;
    let group = member_group(&app, &channel, auth.owner.user_id)
        .await
        .map_err(|e| app.count(e))?;
    app.store
        .remove_member(group, user)
        .await
        .map_err(|e| app.count(e.into()))?;
    Ok(StatusCode::NO_CONTENT)
}

fn int_param(q: &HashMap<String, String>, name: &str) -> ApiResult<Option<u64>> {
    q.get(name)
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                ApiError::bad_request(format!("{name} must be a non-negative integer"))
            })
        })
        .transpose()
}

async fn history(
    State(app): AppState,
    auth: Auth,
    Path(channel): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let (after, before, limit) = (|| {
        Ok((
            int_param(&q, "after")?,
            int_param(&q, "before")?,
            int_param(&q, "limit")?,
        ))
    })()
    .map_err(|e| app.count(e))?;
    let limit = limit.map_or(HISTORY_DEFAULT_LIMIT, |l| {
        (l as usize).clamp(1, HISTORY_MAX_LIMIT)
    });
    app.members(&channel, auth.owner.user_id)
        .await
        .map_err(|e| app.count(e))?;
    let page = app.history(&channel, after, before, limit).await?;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        page.history_json(),
    )
        .into_response())
}

async fn presence(
    State(app): AppState,
    _auth: Auth,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<PresenceResponse>> {
    let ids: Vec<UserId> = q
        .get("users")
        .map(String::as_str)
        .unwrap_or("")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|_| {
            app.count(ApiError::bad_request(
                "users must be a comma-separated list of user ids",
            ))
        })?;
    if ids.len() > 1000 {
        return Err(app.count(ApiError::bad_request("at most 1000 users per query")));
    }
    let users = app.store.users(&ids).await?;
    let ids: Vec<UserId> = users.iter().map(|u| u.id).collect();
    let statuses = app.statuses(&ids).await;
    let presence = users
        .into_iter()
        .zip(statuses)
        .map(|(u, (status, seen))| {
            let last_active_at = if status == Status::Online {
                seen
            } else {
                u.last_active_at
            };
            PresenceEntry {
                user_id: u.id,
                status,
                last_active_at,
            }
        })
        .collect();
    Ok(Json(PresenceResponse { presence }))
}

async fn healthz(State(app): AppState) -> Response {
    if app.shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    } else {
        (StatusCode::OK, "ok\n").into_response()
    }
}

async fn metrics(State(app): AppState) -> Response {
    let mut body = app.metrics.render(&crate::metrics::Scrape {
        node: &app.config.node_id,
        devices_online: app.hub.devices_online(),
        users_online: app.presence.online_users(),
        max_connections: app.max_connections,
        storage: app.store.kind(),
        durability: &app.store.durability(),
        storage_counters: app.store.counters(),
    });
    if let Some(cluster) = &app.cluster {
        cluster.render_metrics(&app.config.node_id, &mut body);
    }
    (
        [(
            header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        body,
    )
        .into_response()
}

/// Upgrade handler input, re-exported for `session`.
pub type Upgrade = WebSocketUpgrade;
