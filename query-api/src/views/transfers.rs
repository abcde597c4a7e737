//! `GET /transfers/{id}`.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tracing::instrument;
use utoipa::ToSchema;
use uuid::Uuid;

use super::checkpoint_of;
use crate::AppState;
use crate::consistency::{Consistency, Projected, read_consistent};
use crate::error::{QueryError, Result};
use crate::params::{self, PathText};
use crate::progress::Source;

/// One executed transfer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TransferView {
    pub transfer_id: Uuid,
    pub from_account_id: Uuid,
    pub to_account_id: Uuid,
    pub amount: i64,
    pub currency: String,
    pub reference: Option<String>,
    pub recorded_at: DateTime<Utc>,
    /// The position of the transfer's `TransferExecuted` event.
    pub position: i64,
}

#[derive(sqlx::FromRow)]
struct TransferRow {
    checkpoint: i64,
    transfer_id: Option<Uuid>,
    from_account_id: Option<Uuid>,
    to_account_id: Option<Uuid>,
    amount: Option<i64>,
    currency: Option<String>,
    reference: Option<String>,
    recorded_at: Option<DateTime<Utc>>,
    position: Option<i64>,
}

impl TransferRow {
    fn view(self) -> Option<TransferView> {
        Some(TransferView {
            transfer_id: self.transfer_id?,
            from_account_id: self.from_account_id?,
            to_account_id: self.to_account_id?,
            amount: self.amount?,
            currency: self.currency?,
            reference: self.reference,
            recorded_at: self.recorded_at?,
            position: self.position?,
        })
    }
}

/// One transfer.
#[utoipa::path(
    get,
    path = "/transfers/{id}",
    tag = "transfers",
    params(
        ("id" = Uuid, Path, description = "The transfer id."),
        ("min_position" = Option<i64>, Query, description = "Wait until the read model includes this position."),
        ("wait_ms" = Option<u64>, Query, description = "How long to wait for `min_position` (default 2000, at most 10000)."),
    ),
    responses(
        (status = 200, description = "The transfer.", body = TransferView),
        (status = 400, description = "Malformed id or parameter.", content_type = "application/problem+json"),
        (status = 404, description = "No such transfer.", content_type = "application/problem+json"),
        (status = 503, description = "`min_position` not reached within `wait_ms`.", content_type = "application/problem+json"),
    )
)]
pub async fn get_transfer(
    State(state): State<AppState>,
    PathText(id): PathText,
    consistency: Consistency,
) -> Result<Projected<Json<TransferView>>> {
    let transfer_id = params::uuid("id", &id)?;
    let answer = read_consistent(&state.progress, Source::Transfers, consistency, || {
        read_transfer(&state, transfer_id)
    })
    .await?;
    let transfer = answer.body.ok_or(QueryError::TransferNotFound(transfer_id))?;
    Ok(Projected {
        position: answer.position,
        body: Json(transfer),
    })
}

#[instrument(skip_all, fields(transfer_id = %transfer_id))]
async fn read_transfer(state: &AppState, transfer_id: Uuid) -> Result<Projected<Option<TransferView>>> {
    let row: TransferRow = sqlx::query_as(concat!(
        "SELECT checkpoint.position AS checkpoint, transfer_id, from_account_id, to_account_id, \
         amount, currency, reference, recorded_at, transfers.position FROM ",
        checkpoint_of!("transfers"),
        " LEFT JOIN read_model.transfers ON transfer_id = $1"
    ))
    .bind(transfer_id)
    .fetch_one(&state.pool)
    .await?;
    Ok(Projected {
        position: row.checkpoint,
        body: row.view(),
    })
}
