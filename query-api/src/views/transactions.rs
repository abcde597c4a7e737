//! `GET /accounts/{id}/transactions?limit=&cursor=`: an account's money movements,
//! newest first, paged by position.

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
use crate::cursor;
use crate::error::{QueryError, Result};
use crate::params::{self, Params, PathText};
use crate::progress::Source;

/// One money movement on an account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TransactionView {
    /// The event's position in the log.
    pub position: i64,
    /// `deposit`, `withdrawal`, `transfer_in` or `transfer_out`.
    pub kind: String,
    pub amount: i64,
    pub balance_after: i64,
    pub reference: Option<String>,
    pub transfer_id: Option<Uuid>,
    pub counterparty_account_id: Option<Uuid>,
    pub recorded_at: DateTime<Utc>,
}

/// A page of transactions, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TransactionPage {
    pub items: Vec<TransactionView>,
    /// Pass as `cursor` for the next (older) page; `null` on the last page.
    pub next_cursor: Option<String>,
}

#[derive(sqlx::FromRow)]
struct TransactionRow {
    checkpoint: i64,
    account_known: bool,
    position: Option<i64>,
    kind: Option<String>,
    amount: Option<i64>,
    balance_after: Option<i64>,
    reference: Option<String>,
    transfer_id: Option<Uuid>,
    counterparty_account_id: Option<Uuid>,
    recorded_at: Option<DateTime<Utc>>,
}

impl TransactionRow {
    fn view(self) -> Option<TransactionView> {
        Some(TransactionView {
            position: self.position?,
            kind: self.kind?,
            amount: self.amount?,
            balance_after: self.balance_after?,
            reference: self.reference,
            transfer_id: self.transfer_id,
            counterparty_account_id: self.counterparty_account_id,
            recorded_at: self.recorded_at?,
        })
    }
}

#[derive(Deserialize)]
pub struct TransactionParams {
    limit: Option<String>,
    cursor: Option<String>,
}

/// An account's transactions, newest first.
#[utoipa::path(
    get,
    path = "/accounts/{id}/transactions",
    tag = "accounts",
    params(
        ("id" = Uuid, Path, description = "The account id."),
        ("limit" = Option<i64>, Query, description = "Page size, 1 to 1000 (default 50)."),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page."),
        ("min_position" = Option<i64>, Query, description = "Wait until the read model includes this position."),
        ("wait_ms" = Option<u64>, Query, description = "How long to wait for `min_position` (default 2000, at most 10000)."),
    ),
    responses(
        (status = 200, description = "A page of transactions.", body = TransactionPage),
        (status = 400, description = "Malformed id, parameter or cursor.", content_type = "application/problem+json"),
        (status = 404, description = "No such account.", content_type = "application/problem+json"),
        (status = 503, description = "`min_position` not reached within `wait_ms`.", content_type = "application/problem+json"),
    )
)]
pub async fn list_transactions(
    State(state): State<AppState>,
    PathText(id): PathText,
    Params(params): Params<TransactionParams>,
    consistency: Consistency,
) -> Result<Projected<Json<TransactionPage>>> {
    let account_id = params::uuid("id", &id)?;
    let limit = params::limit(params.limit.as_deref())?;
    let before = params
        .cursor
        .as_deref()
        .map(cursor::decode_transaction)
        .transpose()?;
    let answer = read_consistent(&state.progress, Source::AccountTransactions, consistency, || {
        read_page(&state, account_id, limit, before)
    })
    .await?;
    let page = answer.body.ok_or(QueryError::AccountNotFound(account_id))?;
    Ok(Projected {
        position: answer.position,
        body: Json(page),
    })
}

/// `None` when the account is unknown to both the statement and the accounts view.
#[instrument(skip_all, fields(account_id = %account_id))]
async fn read_page(
    state: &AppState,
    account_id: Uuid,
    limit: i64,
    before: Option<i64>,
) -> Result<Projected<Option<TransactionPage>>> {
    let rows: Vec<TransactionRow> = sqlx::query_as(concat!(
        "SELECT checkpoint.position AS checkpoint, \
         EXISTS (SELECT 1 FROM read_model.accounts WHERE account_id = $1) AS account_known, \
         page.* FROM ",
        checkpoint_of!("account_transactions"),
        " LEFT JOIN LATERAL (SELECT position, kind, amount, balance_after, reference, transfer_id, \
         counterparty_account_id, recorded_at FROM read_model.account_transactions \
         WHERE account_id = $1 AND position < $2 ORDER BY position DESC LIMIT $3) page ON true \
         ORDER BY page.position DESC"
    ))
    .bind(account_id)
    .bind(before.unwrap_or(i64::MAX))
    // One row more than the page tells whether another page follows.
    .bind(limit + 1)
    .fetch_all(&state.pool)
    .await?;
    let position = rows.first().map_or(0, |row| row.checkpoint);
    let account_known = rows.first().is_some_and(|row| row.account_known);
    let mut items: Vec<TransactionView> = rows.into_iter().filter_map(TransactionRow::view).collect();
    if items.is_empty() && !account_known {
        return Ok(Projected { position, body: None });
    }
    let next_cursor = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last().map(|last| cursor::encode_transaction(last.position))
    } else {
        None
    };
    Ok(Projected {
        position,
        body: Some(TransactionPage { items, next_cursor }),
    })
}
