//! Every way an admin request can fail, and the one place each becomes an HTTP answer:
//! an `application/problem+json` body (RFC 9457) with a stable `type` per cause
//! (`https://eventledger.dev/problems/<code>`). Database failures are logged here with
//! their cause chain and answered with a generic 503.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use event_store::error_chain;
use serde_json::json;

use crate::projection::UnknownProjection;
use crate::rebuild::RebuildError;

/// The base of every problem `type` URI.
pub const PROBLEM_BASE: &str = "https://eventledger.dev/problems/";

/// Why an admin request was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// 404 `projection-not-found`: the path names no projection.
    #[error(transparent)]
    UnknownProjection(#[from] UnknownProjection),
    /// 409 `rebuild-in-progress`: that projection is being rebuilt already.
    #[error(transparent)]
    RebuildRunning(RebuildError),
    /// 404 `not-found`: no route has this path.
    #[error("no such resource")]
    NotFound,
    /// 405 `method-not-allowed`: the path exists, the method does not (axum adds `Allow`).
    #[error("this method is not allowed here")]
    MethodNotAllowed,
    /// 503 `unavailable`: the database failed.
    #[error("the database is unavailable")]
    Unavailable(#[source] sqlx::Error),
}

impl From<RebuildError> for AdminError {
    fn from(error: RebuildError) -> Self {
        match error {
            RebuildError::Database(error) => AdminError::Unavailable(error),
            other => AdminError::RebuildRunning(other),
        }
    }
}

impl AdminError {
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            AdminError::UnknownProjection(_) => (
                StatusCode::NOT_FOUND,
                "projection-not-found",
                "Projection not found",
            ),
            AdminError::RebuildRunning(_) => {
                (StatusCode::CONFLICT, "rebuild-in-progress", "Rebuild in progress")
            }
            AdminError::NotFound => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            AdminError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            AdminError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Unavailable"),
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let (status, code, title) = self.parts();
        if let AdminError::Unavailable(error) = &self {
            tracing::error!(error = %error_chain(error), "admin request failed");
        }
        let detail = match &self {
            AdminError::Unavailable(_) => "the database is unavailable; retry shortly".to_owned(),
            other => other.to_string(),
        };
        let body = json!({
            "type": format!("{PROBLEM_BASE}{code}"),
            "title": title,
            "status": status.as_u16(),
            "detail": detail,
        });
        let mut response = (status, body.to_string()).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        response
    }
}
