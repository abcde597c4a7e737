//! Read-your-writes (API.md): any GET may carry `min_position=N` and `wait_ms`; the
//! answer waits until the read model it reads includes position N, or gives up with a
//! 503 and `Retry-After`. Waiting is on [`Progress`], woken by the projector's
//! notifications; the database is read once before the wait and once after it, never
//! in a loop.

use std::future::Future;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::HeaderValue;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::time::Instant;

use crate::error::QueryError;
use crate::params::{self, Params};
use crate::progress::{PROJECTION_POSITION_HEADER, Progress, Source};

/// How long a request waits for `min_position` when it names no `wait_ms` (API.md).
pub const DEFAULT_WAIT: Duration = Duration::from_millis(2000);

/// The longest wait a client may ask for (API.md): a request holds a task and a client
/// connection meanwhile, so the bound keeps a burst of waits from piling up.
pub const MAX_WAIT_MS: u64 = 10_000;

/// What a 503 tells the client to wait before trying again: projections usually catch
/// up within a second, and a shorter hint would invite a retry storm.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

#[derive(Deserialize)]
struct RawConsistency {
    min_position: Option<String>,
    wait_ms: Option<String>,
}

/// The `min_position` and `wait_ms` of a request.
#[derive(Debug, Clone, Copy)]
pub struct Consistency {
    pub min_position: Option<i64>,
    pub wait: Duration,
}

impl<S: Send + Sync> FromRequestParts<S> for Consistency {
    type Rejection = QueryError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Params(raw) = Params::<RawConsistency>::from_request_parts(parts, state).await?;
        let min_position = raw
            .min_position
            .as_deref()
            .map(|raw| params::position("min_position", raw))
            .transpose()?;
        let wait = match raw.wait_ms.as_deref() {
            None => DEFAULT_WAIT,
            Some(raw) => raw
                .parse::<u64>()
                .ok()
                .filter(|wait_ms| *wait_ms <= MAX_WAIT_MS)
                .map(Duration::from_millis)
                .ok_or_else(|| {
                    QueryError::validation("wait_ms", format!("must be an integer from 0 to {MAX_WAIT_MS}"))
                })?,
        };
        Ok(Self { min_position, wait })
    }
}

/// An answer and the position of the log it reflects, sent as `X-Projection-Position`.
pub struct Projected<T> {
    pub position: i64,
    pub body: T,
}

impl<T: IntoResponse> IntoResponse for Projected<T> {
    fn into_response(self) -> Response {
        let mut response = self.body.into_response();
        response
            .headers_mut()
            .insert(PROJECTION_POSITION_HEADER, HeaderValue::from(self.position));
        response
    }
}

/// Runs `read` (which answers a value and the position its snapshot saw) once the
/// read model of `source` has reached the client's `min_position`.
///
/// If the process already knows the position is not reached, it waits before reading.
/// If a read still sees an older position (a notification is lost only while the
/// listener reconnects), it waits for the next progress and reads once more. A read
/// that is still behind at the deadline is a 503.
pub async fn read_consistent<T, F, Fut>(
    progress: &Progress,
    source: Source,
    consistency: Consistency,
    read: F,
) -> Result<Projected<T>, QueryError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Projected<T>, QueryError>>,
{
    let Some(min_position) = consistency.min_position else {
        return read().await;
    };
    let deadline = Instant::now() + consistency.wait;
    if progress.current().get(source) < min_position {
        progress.wait_until(source, min_position, deadline).await;
    }
    let answer = read().await?;
    if answer.position >= min_position {
        return Ok(answer);
    }
    let position = if progress.wait_until(source, min_position, deadline).await {
        let answer = read().await?;
        if answer.position >= min_position {
            return Ok(answer);
        }
        answer.position
    } else {
        answer.position
    };
    Err(QueryError::ProjectionBehind {
        min_position,
        position,
        retry_after: RETRY_AFTER,
    })
}
