//! `GET /audit/verify?from=&to=`: recomputes the tamper-evident chain over a range of
//! the log from PostgreSQL and compares it with the stored hashes (API.md,
//! "Tamper-evident log"). The check itself is `event_store::chain::verify`, shared with
//! the `verify-log` command, which runs it against a database URL without this server.
//!
//! It reads the range in chunks of `event_store::chain::CHUNK_EVENTS`, so memory stays
//! bounded whatever the range; time does not, and the request timeout
//! (`HTTP_REQUEST_TIMEOUT_MS`) applies: verify a long log in consecutive ranges (each
//! starts from the stored hash before it), or with `verify-log`.

use axum::Json;
use axum::extract::State;
use event_store::chain::{self, ChainError, Verdict};
use serde::{Deserialize, Serialize};
use tracing::instrument;
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{QueryError, Result};
use crate::params::{self, Params};

#[derive(Deserialize)]
pub struct VerifyParams {
    from: Option<String>,
    to: Option<String>,
}

/// The answer of `GET /audit/verify`: either `ok` true with `from`, `to`, `verified` and
/// `head_hash`, or `ok` false with `first_mismatch` and `reason`.
#[derive(Serialize, ToSchema)]
#[schema(as = ChainVerdict)]
pub struct VerdictSchema {
    /// Whether every event of the range verified.
    pub ok: bool,
    /// The range's first position (when `ok`).
    pub from: Option<i64>,
    /// The range's last position (when `ok`).
    pub to: Option<i64>,
    /// How many events were checked (when `ok`).
    pub verified: Option<i64>,
    /// The hash at `to`, lowercase hex (when `ok`): keep it to detect a later rewrite.
    pub head_hash: Option<String>,
    /// The first position that does not verify (when not `ok`).
    pub first_mismatch: Option<i64>,
    /// Why it does not (when not `ok`).
    pub reason: Option<String>,
}

/// Recomputes the hash chain over `from..=to` and compares it with the stored hashes.
#[utoipa::path(
    get,
    path = "/audit/verify",
    tag = "audit",
    params(
        ("from" = Option<i64>, Query, description = "First position to verify (default 1); the chain starts from the stored hash before it."),
        ("to" = Option<i64>, Query, description = "Last position to verify (default: the head of the log)."),
    ),
    responses(
        (status = 200, description = "The verdict: `ok` true, or the first position that does not verify.", body = VerdictSchema),
        (status = 400, description = "Malformed parameter, or a range outside the log.", content_type = "application/problem+json"),
    )
)]
#[instrument(skip_all)]
pub async fn verify_chain(
    State(state): State<AppState>,
    Params(raw): Params<VerifyParams>,
) -> Result<Json<Verdict>> {
    let from = match raw.from.as_deref() {
        None => 1,
        Some(raw) => match params::position("from", raw)? {
            0 => return Err(QueryError::validation("from", "must be 1 or more")),
            from => from,
        },
    };
    let to = raw
        .to
        .as_deref()
        .map(|raw| params::position("to", raw))
        .transpose()?;
    match chain::verify(&state.pool, from, to).await {
        Ok(verdict) => Ok(Json(verdict)),
        Err(ChainError::Range { parameter, detail }) => Err(QueryError::validation(parameter, detail)),
        Err(ChainError::Store(error)) => Err(QueryError::Store(error)),
    }
}
