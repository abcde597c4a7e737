//! Every way a query can fail, and the one place each becomes an HTTP answer: an
//! `application/problem+json` body (RFC 9457) with a stable `type` per cause. Internal
//! failures are logged here with their cause chain and answered without it.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use event_store::StoreError;
use serde_json::json;

use crate::progress::PROJECTION_POSITION_HEADER;

/// The base of every problem `type` URI; the last segment names the cause.
pub const PROBLEM_TYPE_BASE: &str = "https://eventledger.dev/problems/";

/// A failed query.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// 400 `validation`: a path or query parameter is malformed or out of range.
    #[error("invalid parameter `{parameter}`: {detail}")]
    Validation { parameter: &'static str, detail: String },
    /// 404 `account-not-found`.
    #[error("account {0} not found")]
    AccountNotFound(uuid::Uuid),
    /// 404 `transfer-not-found`.
    #[error("transfer {0} not found")]
    TransferNotFound(uuid::Uuid),
    /// 404 `stream-not-found`: the log holds no event of this stream.
    #[error("stream {0} not found")]
    StreamNotFound(String),
    /// 404 `route-not-found`: no endpoint at this path.
    #[error("no endpoint at {0}")]
    RouteNotFound(String),
    /// 405 `method-not-allowed`.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 503 `projection-behind` with `Retry-After`: the read model did not reach the
    /// client's `min_position` within `wait_ms`.
    #[error("the read model is at position {position}, not yet at {min_position}")]
    ProjectionBehind {
        min_position: i64,
        position: i64,
        retry_after: Duration,
    },
    /// 503 `too-many-live-tails` with `Retry-After`: every live tail slot is taken.
    #[error("too many live tails are open; try again later")]
    TooManyLiveTails,
    /// 503 `unavailable` with `Retry-After`: the database failed (down, restarting, a
    /// replica that is gone, a connection cut), as the command API and projector answer.
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// 503 `unavailable`: the database failed a statement that answered several requests
    /// at once ([`crate::views::account_reads`]); each of them reports it.
    #[error("database error")]
    SharedDatabase(#[source] std::sync::Arc<sqlx::Error>),
    /// 500 `internal`: the task that reads accounts for requests has stopped (only if it
    /// panicked: it lives as long as the server).
    #[error("the account reader has stopped")]
    ReaderStopped,
    /// 503 `unavailable` when the event store's database failed; 500 `internal` when it
    /// broke an invariant.
    #[error("event store error")]
    Store(#[from] StoreError),
    /// 500 `internal`: an account's sealed owner does not open although its key exists
    /// (tampered data, or a master key that is not the one that wrapped the key).
    #[error("the owner of account {account_id} cannot be opened")]
    Unsealable {
        account_id: uuid::Uuid,
        #[source]
        source: event_store::pii::PiiError,
    },
    /// 500 `internal`: a stored event cannot be decoded or folded: the log is corrupt.
    #[error("stored event at position {position} cannot be folded")]
    Corrupt {
        position: i64,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Handlers' result.
pub type Result<T, E = QueryError> = std::result::Result<T, E>;

impl QueryError {
    /// A 400 for `parameter`.
    pub fn validation(parameter: &'static str, detail: impl Into<String>) -> Self {
        Self::Validation {
            parameter,
            detail: detail.into(),
        }
    }

    /// The HTTP status this failure answers with (the console shows it on a page).
    pub fn status(&self) -> StatusCode {
        self.status_and_code().0
    }

    fn status_and_code(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Self::Validation { .. } => (StatusCode::BAD_REQUEST, "validation", "Invalid request"),
            Self::AccountNotFound(_) => (StatusCode::NOT_FOUND, "account-not-found", "Account not found"),
            Self::TransferNotFound(_) => (StatusCode::NOT_FOUND, "transfer-not-found", "Transfer not found"),
            Self::StreamNotFound(_) => (StatusCode::NOT_FOUND, "stream-not-found", "Stream not found"),
            Self::RouteNotFound(_) => (StatusCode::NOT_FOUND, "route-not-found", "No such endpoint"),
            Self::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            Self::ProjectionBehind { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "projection-behind",
                "Read model not yet at the requested position",
            ),
            Self::TooManyLiveTails => (
                StatusCode::SERVICE_UNAVAILABLE,
                "too-many-live-tails",
                "Too many live tails",
            ),
            Self::Database(_) | Self::SharedDatabase(_) | Self::Store(StoreError::Database(_)) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "The database is unavailable",
            ),
            Self::ReaderStopped | Self::Store(_) | Self::Corrupt { .. } | Self::Unsealable { .. } => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error")
            }
        }
    }
}

impl IntoResponse for QueryError {
    fn into_response(self) -> Response {
        let (status, code, title) = self.status_and_code();
        let detail = if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %event_store::error_chain(&self), "query failed");
            "the server could not answer; the failure is logged".to_owned()
        } else if code == "unavailable" {
            tracing::warn!(error = %event_store::error_chain(&self), "query failed: the database is unavailable");
            "the database could not answer; retry shortly".to_owned()
        } else {
            self.to_string()
        };
        let mut body = json!({
            "type": format!("{PROBLEM_TYPE_BASE}{code}"),
            "title": title,
            "status": status.as_u16(),
            "detail": detail,
        });
        if let Self::Validation { parameter, .. } = &self {
            body["parameter"] = json!(parameter);
        }
        let mut response = (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body.to_string(),
        )
            .into_response();
        let retry_after = match self {
            Self::ProjectionBehind {
                position,
                retry_after,
                ..
            } => {
                body_position(&mut response, position);
                Some(retry_after)
            }
            Self::TooManyLiveTails => Some(crate::consistency::RETRY_AFTER),
            _ if code == "unavailable" => Some(crate::consistency::RETRY_AFTER),
            _ => None,
        };
        if let Some(retry_after) = retry_after {
            let seconds = retry_after.as_secs().max(1);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

fn body_position(response: &mut Response, position: i64) {
    response
        .headers_mut()
        .insert(PROJECTION_POSITION_HEADER, HeaderValue::from(position));
}
