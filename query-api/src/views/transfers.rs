//! `GET /transfers/{id}` and `GET /transfers?account_id=&status=&limit=&cursor=`.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{Postgres, QueryBuilder};
use tracing::instrument;
use utoipa::ToSchema;
use uuid::Uuid;

use super::checkpoint_of;
use crate::AppState;
use crate::consistency::{Consistency, Projected, read_consistent};
use crate::cursor;
use crate::error::{QueryError, Result};
use crate::params::{self, Params, PathText};
use crate::progress::Source;

/// One transfer: executed in one step, or pending and then posted, voided or expired.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TransferView {
    pub transfer_id: Uuid,
    pub from_account_id: Uuid,
    pub to_account_id: Uuid,
    /// What the transfer asked to move (while pending: what it reserves), minor units.
    pub amount: i64,
    pub currency: String,
    pub reference: Option<String>,
    /// When the transfer was executed or reserved.
    pub recorded_at: DateTime<Utc>,
    /// The position of the transfer's first event (`TransferExecuted` or
    /// `TransferPending`): the order of `GET /transfers`.
    pub position: i64,
    /// `pending`, `posted`, `voided` or `expired`.
    pub status: String,
    /// What moved, minor units; `null` while pending and once voided or expired.
    pub posted_amount: Option<i64>,
    /// When a pending transfer expires; `null` without a timeout.
    pub expires_at: Option<DateTime<Utc>>,
}

/// A page of transfers, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TransferPage {
    pub items: Vec<TransferView>,
    /// Pass as `cursor` for the next (older) page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// The transfer columns, in [`TransferRow`]'s order after the checkpoint. A posted row
/// without `posted_amount` (written by a projector from before two-phase transfers, whose
/// rows the migration cannot have filled) moved its whole amount.
macro_rules! transfer_columns {
    () => {
        "transfer_id, from_account_id, to_account_id, amount, currency, reference, recorded_at, \
         transfers.position, status, \
         COALESCE(posted_amount, CASE WHEN status = 'posted' THEN amount END) AS posted_amount, expires_at"
    };
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
    status: Option<String>,
    posted_amount: Option<i64>,
    expires_at: Option<DateTime<Utc>>,
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
            status: self.status?,
            posted_amount: self.posted_amount,
            expires_at: self.expires_at,
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
        "SELECT checkpoint.position AS checkpoint, ",
        transfer_columns!(),
        " FROM ",
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

#[derive(Deserialize)]
pub struct ListParams {
    account_id: Option<String>,
    status: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// What `GET /transfers` was asked for, validated.
struct ListFilter {
    account_id: Option<Uuid>,
    status: Option<String>,
    limit: i64,
    before: Option<i64>,
}

impl ListFilter {
    fn parse(params: ListParams) -> Result<Self> {
        let status = params
            .status
            .map(|status| match status.as_str() {
                "pending" | "posted" | "voided" | "expired" => Ok(status),
                _ => Err(QueryError::validation(
                    "status",
                    "must be pending, posted, voided or expired",
                )),
            })
            .transpose()?;
        Ok(Self {
            account_id: params
                .account_id
                .as_deref()
                .map(|id| params::uuid("account_id", id))
                .transpose()?,
            status,
            limit: params::limit(params.limit.as_deref())?,
            before: params
                .cursor
                .as_deref()
                .map(cursor::decode_transfer)
                .transpose()?,
        })
    }
}

/// Transfers newest first, of one account (either side) and of one status if asked.
#[utoipa::path(
    get,
    path = "/transfers",
    tag = "transfers",
    params(
        ("account_id" = Option<Uuid>, Query, description = "Only transfers from or to this account."),
        ("status" = Option<String>, Query, description = "`pending`, `posted`, `voided` or `expired`."),
        ("limit" = Option<i64>, Query, description = "Page size, 1 to 1000 (default 50)."),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page."),
        ("min_position" = Option<i64>, Query, description = "Wait until the read model includes this position."),
        ("wait_ms" = Option<u64>, Query, description = "How long to wait for `min_position` (default 2000, at most 10000)."),
    ),
    responses(
        (status = 200, description = "A page of transfers.", body = TransferPage),
        (status = 400, description = "Malformed parameter or cursor.", content_type = "application/problem+json"),
        (status = 503, description = "`min_position` not reached within `wait_ms`.", content_type = "application/problem+json"),
    )
)]
pub async fn list_transfers(
    State(state): State<AppState>,
    Params(params): Params<ListParams>,
    consistency: Consistency,
) -> Result<Projected<Json<TransferPage>>> {
    let filter = ListFilter::parse(params)?;
    read_consistent(&state.progress, Source::Transfers, consistency, || {
        read_page(&state, &filter)
    })
    .await
    .map(|answer| Projected {
        position: answer.position,
        body: Json(answer.body),
    })
}

#[instrument(skip_all)]
async fn read_page(state: &AppState, filter: &ListFilter) -> Result<Projected<TransferPage>> {
    let mut query = QueryBuilder::<Postgres>::new(concat!(
        "SELECT checkpoint.position AS checkpoint, page.* FROM ",
        checkpoint_of!("transfers"),
        " LEFT JOIN LATERAL (SELECT ",
        transfer_columns!(),
        " FROM read_model.transfers WHERE transfers.position < "
    ));
    query.push_bind(filter.before.unwrap_or(i64::MAX));
    if let Some(account_id) = filter.account_id {
        // Two index scans, (from_account_id, position) and (to_account_id, position).
        query
            .push(" AND (from_account_id = ")
            .push_bind(account_id)
            .push(" OR to_account_id = ")
            .push_bind(account_id)
            .push(")");
    }
    if let Some(status) = &filter.status {
        query.push(" AND status = ").push_bind(status.clone());
    }
    // One row more than the page tells whether another page follows.
    query
        .push(" ORDER BY transfers.position DESC LIMIT ")
        .push_bind(filter.limit + 1)
        .push(") page ON true ORDER BY page.position DESC");
    let rows: Vec<TransferRow> = query.build_query_as().fetch_all(&state.pool).await?;
    let position = rows.first().map_or(0, |row| row.checkpoint);
    let mut items: Vec<TransferView> = rows.into_iter().filter_map(TransferRow::view).collect();
    let next_cursor = if items.len() as i64 > filter.limit {
        items.truncate(filter.limit as usize);
        items.last().map(|last| cursor::encode_transfer(last.position))
    } else {
        None
    };
    Ok(Projected {
        position,
        body: TransferPage { items, next_cursor },
    })
}
