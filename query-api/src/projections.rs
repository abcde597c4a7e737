//! `GET /projections`: where each projection stands against the head of the log.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tracing::instrument;
use utoipa::ToSchema;

use crate::AppState;
use crate::consistency::{Consistency, Projected, read_consistent};
use crate::error::Result;
use crate::progress::Source;

/// One projection's progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct ProjectionView {
    pub name: String,
    /// The last position applied.
    pub position: i64,
    /// The position of the latest event in the log.
    pub head: i64,
    /// `head - position`: events still to apply.
    pub lag: i64,
    /// `live`, `rebuilding` or `stopped`.
    pub status: String,
    /// Why a `stopped` projection stopped.
    pub error: Option<String>,
    /// When `position` last moved.
    pub updated_at: DateTime<Utc>,
    /// The projector instance applying it live while its lease is current, else `null`.
    pub holder: Option<String>,
}

/// Every projection, by name.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProjectionList {
    pub items: Vec<ProjectionView>,
}

/// Every projection's position, head, lag and status.
#[utoipa::path(
    get,
    path = "/projections",
    tag = "projections",
    params(
        ("min_position" = Option<i64>, Query, description = "Wait until every read model includes this position."),
        ("wait_ms" = Option<u64>, Query, description = "How long to wait for `min_position` (default 2000, at most 10000)."),
    ),
    responses(
        (status = 200, description = "The projections.", body = ProjectionList),
        (status = 400, description = "Malformed parameter.", content_type = "application/problem+json"),
        (status = 503, description = "`min_position` not reached within `wait_ms`.", content_type = "application/problem+json"),
    )
)]
pub async fn list_projections(
    State(state): State<AppState>,
    consistency: Consistency,
) -> Result<Projected<Json<ProjectionList>>> {
    let answer = read_consistent(&state.progress, Source::ReadModels, consistency, || {
        read_projections(&state)
    })
    .await?;
    Ok(Projected {
        position: answer.position,
        body: Json(answer.body),
    })
}

#[instrument(skip_all)]
async fn read_projections(state: &AppState) -> Result<Projected<ProjectionList>> {
    let items: Vec<ProjectionView> = sqlx::query_as(
        "SELECT projection AS name, checkpoint.position, head.position AS head, \
         head.position - checkpoint.position AS lag, status, error, updated_at, \
         CASE WHEN lease_expires_at > now() THEN lease_holder END AS holder \
         FROM read_model.projection_checkpoints checkpoint CROSS JOIN event_store_head head \
         ORDER BY projection",
    )
    .fetch_all(&state.pool)
    .await?;
    // Like `Source::ReadModels`: the least position of the projections the views read,
    // 0 for one that has not written its first checkpoint.
    let position = ["accounts", "account_transactions", "transfers"]
        .into_iter()
        .map(|name| {
            items
                .iter()
                .find(|item| item.name == name)
                .map_or(0, |item| item.position)
        })
        .min()
        .unwrap_or(0);
    Ok(Projected {
        position,
        body: ProjectionList { items },
    })
}
