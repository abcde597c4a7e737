//! Time travel: `GET /accounts/{id}/history?at_position=N` or `?at_time=<RFC 3339>`
//! folds the account's own events, up to that point, with the domain's
//! `Account::evolve`, the same rules the command side uses. No read model is involved,
//! so the answer is right even while a projection is being rebuilt. The owner is opened
//! with the account's key as it is now: once erased, it is `null` at every point of
//! the past too.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use domain::{Account, AccountStatus, LedgerEvent};
use event_store::RecordedEvent;
use serde::{Deserialize, Serialize};
use tracing::instrument;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::audit::head;
use crate::consistency::{Consistency, Projected, read_consistent};
use crate::error::{QueryError, Result};
use crate::owners;
use crate::params::{self, Params, PathText};
use crate::progress::Source;
use crate::views::accounts::AccountView;

/// The account as it stood at a point of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AccountHistoryView {
    /// The account's fields, as `GET /accounts/{id}` shows them; `owner` is `null` if
    /// personal data had been erased by then.
    #[serde(flatten)]
    pub account: AccountView,
    /// The `at_position` asked for, if any.
    pub at_position: Option<i64>,
    /// The `at_time` asked for, if any.
    pub at_time: Option<DateTime<Utc>>,
    /// The position of the last event folded: the state holds from here until the
    /// account's next event.
    pub last_event_position: i64,
}

#[derive(Deserialize)]
pub struct HistoryParams {
    at_position: Option<String>,
    at_time: Option<String>,
}

/// Up to where the account is folded.
#[derive(Debug, Clone, Copy)]
enum AsOf {
    Position(i64),
    Time(DateTime<Utc>),
}

/// The account as it stood at a position or a time.
#[utoipa::path(
    get,
    path = "/accounts/{id}/history",
    tag = "accounts",
    params(
        ("id" = Uuid, Path, description = "The account id."),
        ("at_position" = Option<i64>, Query, description = "Fold the events up to and including this position (exactly one of `at_position` and `at_time`)."),
        ("at_time" = Option<String>, Query, description = "RFC 3339; fold the events recorded up to and including this time."),
        ("min_position" = Option<i64>, Query, description = "Wait until the log includes this position."),
        ("wait_ms" = Option<u64>, Query, description = "How long to wait for `min_position` (default 2000, at most 10000)."),
    ),
    responses(
        (status = 200, description = "The account then.", body = AccountHistoryView),
        (status = 400, description = "Malformed id or parameter, or not exactly one of `at_position` and `at_time`, or a position beyond the log's head.", content_type = "application/problem+json"),
        (status = 404, description = "The account did not exist then.", content_type = "application/problem+json"),
        (status = 503, description = "`min_position` not reached within `wait_ms`.", content_type = "application/problem+json"),
    )
)]
pub async fn account_history(
    State(state): State<AppState>,
    PathText(id): PathText,
    Params(raw): Params<HistoryParams>,
    consistency: Consistency,
) -> Result<Projected<Json<AccountHistoryView>>> {
    let account_id = params::uuid("id", &id)?;
    let as_of = match (raw.at_position.as_deref(), raw.at_time.as_deref()) {
        (Some(position), None) => AsOf::Position(params::position("at_position", position)?),
        (None, Some(time)) => AsOf::Time(params::timestamp("at_time", time)?),
        _ => {
            return Err(QueryError::validation(
                "at_position",
                "give exactly one of `at_position` and `at_time`",
            ));
        }
    };
    let answer = read_consistent(&state.progress, Source::Events, consistency, || {
        read_history(&state, account_id, as_of)
    })
    .await?;
    let view = answer.body?.ok_or(QueryError::AccountNotFound(account_id))?;
    Ok(Projected {
        position: answer.position,
        body: Json(view),
    })
}

/// The outer result is the database's; the inner one the request's (a position beyond
/// the head is the client's mistake, but only known once the head is read).
#[instrument(skip_all, fields(account_id = %account_id))]
async fn read_history(
    state: &AppState,
    account_id: Uuid,
    as_of: AsOf,
) -> Result<Projected<Result<Option<AccountHistoryView>>>> {
    let position = head(state).await?;
    if let AsOf::Position(at_position) = as_of
        && at_position > position
    {
        return Ok(Projected {
            position,
            body: Err(QueryError::validation(
                "at_position",
                format!("is beyond the log's head, position {position}"),
            )),
        });
    }
    let stream_id = domain::AccountId::from(account_id).stream_id();
    let select = "SELECT position, event_id, stream_id, stream_version, event_type, \
                  schema_version, data, metadata, recorded_at FROM events WHERE stream_id = $1 \
                  AND position <= $2";
    let events: Vec<RecordedEvent> = match as_of {
        AsOf::Position(at_position) => {
            sqlx::query_as(&format!("{select} ORDER BY position"))
                .bind(&stream_id)
                .bind(at_position)
                .fetch_all(&state.pool)
                .await?
        }
        AsOf::Time(at_time) => {
            sqlx::query_as(&format!("{select} AND recorded_at <= $3 ORDER BY position"))
                .bind(&stream_id)
                .bind(position)
                .bind(at_time)
                .fetch_all(&state.pool)
                .await?
        }
    };
    let folded = fold(&events)?;
    let owner = match &folded {
        Some((account, _)) => {
            owners::open_folded(&state.pool, &state.vault, account_id, account.owner.as_ref()).await?
        }
        None => None,
    };
    let view = folded.map(|(account, version)| {
        // `fold` returned Some, so there is a first and a last event.
        let opened_at = events.first().map_or_else(Utc::now, |event| event.recorded_at);
        let (last_position, updated_at) = events
            .last()
            .map_or((0, opened_at), |event| (event.position, event.recorded_at));
        AccountHistoryView {
            account: AccountView {
                account_id,
                owner,
                currency: account.currency.as_str().to_owned(),
                balance: account.balance.get(),
                available_balance: account.available_balance(),
                pending_debits: account.pending_debits.get(),
                pending_credits: account.pending_credits.get(),
                overdraft_limit: account.overdraft_limit.get(),
                status: match account.status {
                    AccountStatus::Open => "open",
                    AccountStatus::Frozen => "frozen",
                    AccountStatus::Closed => "closed",
                }
                .to_owned(),
                version,
                opened_at,
                updated_at,
            },
            at_position: match as_of {
                AsOf::Position(at_position) => Some(at_position),
                AsOf::Time(_) => None,
            },
            at_time: match as_of {
                AsOf::Time(at_time) => Some(at_time),
                AsOf::Position(_) => None,
            },
            last_event_position: last_position,
        }
    });
    Ok(Projected {
        position,
        body: Ok(view),
    })
}

/// Folds an account stream, checking that versions run 1, 2, 3, ...; the state and its
/// version, or `None` for no events.
fn fold(events: &[RecordedEvent]) -> Result<Option<(Account, i64)>> {
    let mut state = None;
    let mut version = 0;
    for event in events {
        if event.stream_version != version + 1 {
            return Err(QueryError::Store(event_store::StoreError::VersionGap {
                stream_id: event.stream_id.clone(),
                expected: version + 1,
                found: event.stream_version,
            }));
        }
        let corrupt = |source: Box<dyn std::error::Error + Send + Sync>| QueryError::Corrupt {
            position: event.position,
            source,
        };
        let account_event = match event.decode().map_err(|error| corrupt(Box::new(error)))? {
            LedgerEvent::Account(account_event) => account_event,
            LedgerEvent::Transfer(_) => {
                return Err(corrupt("a transfer event in an account stream".into()));
            }
        };
        state = Some(Account::evolve(state, &account_event).map_err(|error| corrupt(Box::new(error)))?);
        version = event.stream_version;
    }
    Ok(state.map(|account| (account, version)))
}
