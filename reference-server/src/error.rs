//! `ApiError`: a protocol error code with a human message. It is what every
//! operation of the service fails with; HTTP handlers turn it into a status and
//! `{"error", "message"}` body, WebSocket sessions into an `error` frame. The
//! code-to-status table lives in [`ErrorCode::http_status`].

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::protocol::{ErrorBody, ErrorCode};
use crate::store::StoreError;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
    pub fn unauthorized() -> Self {
        Self::new(
            ErrorCode::Unauthorized,
            "missing, bad, expired or logged-out token",
        )
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict => ApiError::new(ErrorCode::Conflict, "already exists"),
            StoreError::GroupFull => ApiError::new(
                ErrorCode::GroupFull,
                format!(
                    "a group has at most {} members",
                    crate::protocol::MAX_GROUP_MEMBERS
                ),
            ),
            StoreError::NotFound => ApiError::not_found("unknown user or channel"),
            StoreError::NotMember => ApiError::forbidden("not a member of the channel"),
            StoreError::Overloaded => ApiError::new(
                ErrorCode::Overloaded,
                "storage is backed up; back off and retry",
            ),
            StoreError::Backend(reason) => {
                tracing::error!(cause = %reason, "storage failed");
                ApiError::new(ErrorCode::Internal, "storage failed; retry later")
            }
        }
    }
}

impl From<crate::cluster::ClusterError> for ApiError {
    fn from(e: crate::cluster::ClusterError) -> Self {
        tracing::error!(cause = %e, "cluster failed");
        ApiError::new(
            ErrorCode::Internal,
            "the cluster's Redis is unreachable; retry later",
        )
    }
}

impl From<crate::auth::HashError> for ApiError {
    fn from(e: crate::auth::HashError) -> Self {
        match e {
            crate::auth::HashError::Busy => ApiError::new(
                ErrorCode::Overloaded,
                "every password hashing slot is busy; retry later",
            ),
            crate::auth::HashError::Failed(reason) => ApiError::new(ErrorCode::Internal, reason),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            status,
            Json(ErrorBody {
                error: self.code,
                message: self.message,
            }),
        )
            .into_response()
    }
}
