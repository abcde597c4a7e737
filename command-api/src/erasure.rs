//! Erasing personal data again: `DELETE /accounts/{id}/personal-data` is idempotent.
//!
//! The first erasure appends `PersonalDataErased` and destroys the account's data key in
//! one transaction (the committer). The domain refuses a second erasure, since there is
//! nothing left to record; over HTTP, though, a DELETE that is repeated (a retry after a
//! lost answer, an operator re-running a list) must succeed with the same effect. So the
//! refusal becomes the first erasure's answer: 200, the position of its
//! `PersonalDataErased`, the account as it is now. The key is destroyed once more on the
//! way: a no-op normally, and it keeps "after a 200, no key exists" true even if a key
//! came back (a `pii_keys` row restored from a backup taken before the erasure).

use axum::response::Response;
use domain::AccountId;
use event_store::{EventStore, StoreError, pii};

use crate::committer::{load_account, status_name};
use crate::dto::AccountCommandResponse;
use crate::error::{ApiError, Result};
use crate::idempotency::StoredResponse;

/// The answer to erasing the personal data of `account_id`, erased before.
pub async fn already_erased(store: &EventStore, account_id: AccountId) -> Result<Response> {
    let unavailable = |error: sqlx::Error| ApiError::Unavailable(StoreError::Database(error));
    pii::destroy_keys(store.pool(), &[account_id.as_uuid()])
        .await
        .map_err(unavailable)?;
    let stream_id = account_id.stream_id();
    let position: Option<i64> = sqlx::query_scalar(
        "SELECT position FROM events WHERE stream_id = $1 AND event_type = $2 ORDER BY position LIMIT 1",
    )
    .bind(&stream_id)
    .bind(domain::event::PERSONAL_DATA_ERASED)
    .fetch_optional(store.pool())
    .await
    .map_err(unavailable)?;
    let account = load_account(store, account_id).await?;
    let (Some(position), Some(account)) = (position, account) else {
        return Err(ApiError::Internal(format!(
            "{stream_id} is erased by its state but holds no PersonalDataErased"
        )));
    };
    let body = AccountCommandResponse {
        stream_id,
        stream_version: account.version,
        position,
        account_id: account_id.as_uuid(),
        balance: account.state.balance.get(),
        status: status_name(&account.state),
    };
    Ok(StoredResponse {
        status: 200,
        body: serde_json::to_value(body).unwrap_or_default(),
        headers: vec![("etag".to_owned(), format!("\"{}\"", account.version))],
    }
    .to_response(false))
}
