//! `GET /accounts/{id}` and `GET /accounts?status=&currency=&limit=&cursor=`.
//!
//! The read model holds owners sealed; each statement joins the account's wrapped key
//! (absent once erased), and [`crate::owners`] opens the owner or answers `null`.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{Postgres, QueryBuilder};
use tracing::instrument;
use utoipa::ToSchema;
use uuid::Uuid;

use event_store::pii::Vault;

use super::checkpoint_of;
use crate::AppState;
use crate::consistency::{Consistency, Projected, read_consistent};
use crate::cursor;
use crate::error::{QueryError, Result};
use crate::owners;
use crate::params::{self, Params, PathText};
use crate::progress::Source;

/// The account holder; `null` in an account once personal data is erased.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OwnerView {
    pub name: String,
    pub email: String,
}

/// One account as the read model holds it (API.md `GET /accounts/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AccountView {
    pub account_id: Uuid,
    pub owner: Option<OwnerView>,
    /// ISO 4217 code.
    pub currency: String,
    /// The posted balance, in minor units of the currency.
    pub balance: i64,
    /// `balance - pending_debits`: what withdrawals, transfers and new reservations may
    /// still take, down to `-overdraft_limit`.
    pub available_balance: i64,
    /// What pending transfers out of the account reserved, minor units.
    pub pending_debits: i64,
    /// What pending transfers into the account may bring (not spendable yet), minor units.
    pub pending_credits: i64,
    pub overdraft_limit: i64,
    /// `open`, `frozen` or `closed`.
    pub status: String,
    /// The account stream's version: the `ETag` a command's `If-Match` names.
    pub version: i64,
    pub opened_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A page of accounts.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AccountPage {
    pub items: Vec<AccountView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// The checkpoint joined to at most one account row: every account column may be NULL.
#[derive(Clone, sqlx::FromRow)]
pub(crate) struct AccountRow {
    pub(crate) checkpoint: i64,
    pub(crate) account_id: Option<Uuid>,
    /// Sealed; opened with `wrapped_key`, the account's data key from `pii_keys`.
    owner_name: Option<String>,
    owner_email: Option<String>,
    wrapped_key: Option<Vec<u8>>,
    currency: Option<String>,
    balance: Option<i64>,
    overdraft_limit: Option<i64>,
    status: Option<String>,
    version: Option<i64>,
    opened_at: Option<DateTime<Utc>>,
    updated_at: Option<DateTime<Utc>>,
    pending_debits: Option<i64>,
    pending_credits: Option<i64>,
}

impl AccountRow {
    fn view(self, vault: &Vault) -> Result<Option<AccountView>> {
        let (
            Some(account_id),
            Some(currency),
            Some(balance),
            Some(overdraft_limit),
            Some(status),
            Some(version),
            Some(opened_at),
            Some(updated_at),
            Some(pending_debits),
            Some(pending_credits),
        ) = (
            self.account_id,
            self.currency,
            self.balance,
            self.overdraft_limit,
            self.status,
            self.version,
            self.opened_at,
            self.updated_at,
            self.pending_debits,
            self.pending_credits,
        )
        else {
            return Ok(None);
        };
        let owner = owners::open_columns(
            vault,
            account_id,
            self.wrapped_key.as_deref(),
            self.owner_name.as_deref(),
            self.owner_email.as_deref(),
        )?;
        Ok(Some(AccountView {
            account_id,
            owner,
            currency,
            balance,
            // The projector keeps both within the domain's rules; saturating is only a
            // guard against a corrupt row, never a wrapped number.
            available_balance: balance.saturating_sub(pending_debits),
            pending_debits,
            pending_credits,
            overdraft_limit,
            status,
            version,
            opened_at,
            updated_at,
        }))
    }
}

/// The account columns, in [`AccountRow`]'s order, with the account's wrapped data key
/// (from `LEFT JOIN pii_keys`).
macro_rules! account_columns {
    () => {
        "account_id, owner_name, owner_email, pii_keys.wrapped_key, currency, balance, \
         overdraft_limit, status, version, opened_at, updated_at, pending_debits, pending_credits"
    };
}
pub(crate) use account_columns;

/// One account.
#[utoipa::path(
    get,
    path = "/accounts/{id}",
    tag = "accounts",
    params(
        ("id" = Uuid, Path, description = "The account id."),
        ("min_position" = Option<i64>, Query, description = "Wait until the read model includes this position."),
        ("wait_ms" = Option<u64>, Query, description = "How long to wait for `min_position` (default 2000, at most 10000)."),
    ),
    responses(
        (status = 200, description = "The account.", body = AccountView),
        (status = 400, description = "Malformed id or parameter.", content_type = "application/problem+json"),
        (status = 404, description = "No such account.", content_type = "application/problem+json"),
        (status = 503, description = "`min_position` not reached within `wait_ms`.", content_type = "application/problem+json"),
    )
)]
pub async fn get_account(
    State(state): State<AppState>,
    PathText(id): PathText,
    consistency: Consistency,
) -> Result<Projected<Json<AccountView>>> {
    let account_id = params::uuid("id", &id)?;
    let answer = read_consistent(&state.progress, Source::Accounts, consistency, || {
        read_account(&state, account_id)
    })
    .await?;
    let account = answer.body.ok_or(QueryError::AccountNotFound(account_id))?;
    Ok(Projected {
        position: answer.position,
        body: Json(account),
    })
}

/// One account, read with whatever other lookups are waiting ([`super::account_reads`]).
/// At debug level: a span per lookup is measurable at this endpoint's rate.
#[instrument(level = "debug", skip_all, fields(account_id = %account_id))]
async fn read_account(state: &AppState, account_id: Uuid) -> Result<Projected<Option<AccountView>>> {
    let (checkpoint, row) = state.account_reads.read(account_id).await?;
    Ok(Projected {
        position: checkpoint,
        body: row.map(|row| row.view(&state.vault)).transpose()?.flatten(),
    })
}

#[derive(Deserialize)]
pub struct ListParams {
    status: Option<String>,
    currency: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// What `GET /accounts` was asked for, validated.
struct ListFilter {
    status: Option<String>,
    currency: Option<String>,
    limit: i64,
    after: Option<Uuid>,
}

impl ListFilter {
    fn parse(params: ListParams) -> Result<Self> {
        let status = params
            .status
            .map(|status| match status.as_str() {
                "open" | "frozen" | "closed" => Ok(status),
                _ => Err(QueryError::validation("status", "must be open, frozen or closed")),
            })
            .transpose()?;
        let currency = params
            .currency
            .map(|code| {
                domain::Currency::parse(&code)
                    .map(|currency| currency.as_str().to_owned())
                    .map_err(|_| QueryError::validation("currency", "must be an ISO 4217 code such as EUR"))
            })
            .transpose()?;
        Ok(Self {
            status,
            currency,
            limit: params::limit(params.limit.as_deref())?,
            after: params.cursor.as_deref().map(cursor::decode_account).transpose()?,
        })
    }
}

/// Accounts in id order, filtered by status and currency.
#[utoipa::path(
    get,
    path = "/accounts",
    tag = "accounts",
    params(
        ("status" = Option<String>, Query, description = "`open`, `frozen` or `closed`."),
        ("currency" = Option<String>, Query, description = "ISO 4217 code."),
        ("limit" = Option<i64>, Query, description = "Page size, 1 to 1000 (default 50)."),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page."),
        ("min_position" = Option<i64>, Query, description = "Wait until the read model includes this position."),
        ("wait_ms" = Option<u64>, Query, description = "How long to wait for `min_position` (default 2000, at most 10000)."),
    ),
    responses(
        (status = 200, description = "A page of accounts.", body = AccountPage),
        (status = 400, description = "Malformed parameter or cursor.", content_type = "application/problem+json"),
        (status = 503, description = "`min_position` not reached within `wait_ms`.", content_type = "application/problem+json"),
    )
)]
pub async fn list_accounts(
    State(state): State<AppState>,
    Params(params): Params<ListParams>,
    consistency: Consistency,
) -> Result<Projected<Json<AccountPage>>> {
    let filter = ListFilter::parse(params)?;
    read_consistent(&state.progress, Source::Accounts, consistency, || {
        read_page(&state, &filter)
    })
    .await
    .map(|answer| Projected {
        position: answer.position,
        body: Json(answer.body),
    })
}

#[instrument(skip_all)]
async fn read_page(state: &AppState, filter: &ListFilter) -> Result<Projected<AccountPage>> {
    // Only the filters given appear in the statement, so each combination gets a plan
    // that uses its index (status, currency, account_id) or (currency, account_id).
    let mut query = QueryBuilder::<Postgres>::new(concat!(
        "SELECT checkpoint.position AS checkpoint, page.* FROM ",
        checkpoint_of!("accounts"),
        " LEFT JOIN LATERAL (SELECT ",
        account_columns!(),
        " FROM read_model.accounts LEFT JOIN pii_keys ON pii_keys.subject_id = account_id WHERE true"
    ));
    if let Some(status) = &filter.status {
        query.push(" AND status = ").push_bind(status.clone());
    }
    if let Some(currency) = &filter.currency {
        query.push(" AND currency = ").push_bind(currency.clone());
    }
    if let Some(after) = filter.after {
        query.push(" AND account_id > ").push_bind(after);
    }
    // One row more than the page tells whether another page follows.
    query
        .push(" ORDER BY account_id LIMIT ")
        .push_bind(filter.limit + 1)
        .push(") page ON true ORDER BY page.account_id");
    let rows: Vec<AccountRow> = query.build_query_as().fetch_all(&state.pool).await?;
    let position = rows.first().map_or(0, |row| row.checkpoint);
    let mut items = Vec::with_capacity(rows.len());
    for row in rows {
        items.extend(row.view(&state.vault)?);
    }
    let next_cursor = if items.len() as i64 > filter.limit {
        items.truncate(filter.limit as usize);
        items.last().map(|last| cursor::encode_account(last.account_id))
    } else {
        None
    };
    Ok(Projected {
        position,
        body: AccountPage { items, next_cursor },
    })
}
