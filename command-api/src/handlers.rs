//! The command endpoints of API.md: each turns its JSON into a domain command (values
//! that break a rule are 422 `validation` naming the field), hands it to the
//! [`CommandBus`](crate::committer::CommandBus), and answers what was committed.
//!
//! The `Idempotency-Key` protocol is run here, around the bus: claim the key in this
//! instance (409 while taken), replay a stored answer (422 if it was for another body),
//! otherwise submit the key with the command so the committer stores it with the events.
//!
//! Personal data is sealed here, the only place it exists in plaintext: opening an
//! account makes the account's data key in memory, seals the owner with it, and hands
//! the committer the sealed owner and the wrapped key, which it stores in the same
//! transaction as the events (API.md, "Security").

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::Method;
use axum::response::Response;
use domain::{
    AccountCommand, AccountId, Amount, Currency, DomainError, OverdraftLimit, Owner, Reason, Reference,
    TransferCommand, TransferId,
};
use event_store::Metadata;
use event_store::pii::WrappedKey;

use crate::AppState;
use crate::access::Caller;
use crate::committer::{Command, Executed, Submission};
use crate::dto::{
    AccountCommandResponse, MoneyBody, OpenAccountBody, ReasonBody, TransferBody, TransferResponse,
};
use crate::error::{ApiError, Result};
use crate::extract::{CommandHeaders, JsonBody};
use crate::idempotency::{self, KeyClaim, KeyScope, StoredKey};

/// Open an account.
#[utoipa::path(
    post,
    path = "/accounts",
    tag = "accounts",
    request_body = OpenAccountBody,
    responses(
        (status = 201, description = "The account is open", body = AccountCommandResponse,
         headers(("ETag" = String, description = "The account's version, quoted"),
                 ("Location" = String, description = "Where the account can be read")))
    )
)]
pub async fn open_account(
    State(state): State<AppState>,
    Caller(caller): Caller,
    headers: CommandHeaders,
    JsonBody { value, canonical }: JsonBody<OpenAccountBody>,
) -> Result<Response> {
    let owner = Owner::parse(&value.owner.name, &value.owner.email)?;
    let currency = Currency::parse(&value.currency)?;
    let overdraft_limit = match value.overdraft_limit {
        Some(limit) => OverdraftLimit::new(limit)?,
        None => OverdraftLimit::ZERO,
    };
    let account_id = value.account_id.map_or_else(AccountId::new_v7, AccountId::from);
    let (data_key, wrapped_key) = state
        .vault
        .new_key(account_id.as_uuid())
        .map_err(|error| ApiError::Internal(format!("cannot make a data key: {error}")))?;
    let sealed_owner = data_key
        .seal_owner(&owner)
        .map_err(|error| ApiError::Internal(format!("cannot seal the owner: {error}")))?;
    let command = Command::Account {
        account_id,
        command: AccountCommand::Open {
            id: account_id,
            owner: sealed_owner,
            currency,
            overdraft_limit,
        },
        // An account that does not exist has no version to match.
        if_match: None,
    };
    run(
        &state,
        &caller.subject,
        headers,
        Method::POST,
        "/accounts".to_owned(),
        &canonical,
        command,
        Some(wrapped_key),
    )
    .await
}

/// Deposit money.
#[utoipa::path(
    post,
    path = "/accounts/{id}/deposits",
    tag = "accounts",
    params(("id" = uuid::Uuid, Path, description = "The account")),
    request_body = MoneyBody,
    responses((status = 200, description = "Deposited", body = AccountCommandResponse,
               headers(("ETag" = String, description = "The account's version, quoted"))))
)]
pub async fn deposit(
    State(state): State<AppState>,
    Caller(caller): Caller,
    path: Result<Path<String>, PathRejection>,
    headers: CommandHeaders,
    JsonBody { value, canonical }: JsonBody<MoneyBody>,
) -> Result<Response> {
    let (account_id, path) = account_path(path, "deposits")?;
    let command = AccountCommand::Deposit {
        amount: Amount::new(value.amount)?,
        reference: reference(value.reference)?,
    };
    run_account(
        &state,
        &caller.subject,
        headers,
        path,
        &canonical,
        account_id,
        command,
    )
    .await
}

/// Withdraw money.
#[utoipa::path(
    post,
    path = "/accounts/{id}/withdrawals",
    tag = "accounts",
    params(("id" = uuid::Uuid, Path, description = "The account")),
    request_body = MoneyBody,
    responses((status = 200, description = "Withdrawn", body = AccountCommandResponse,
               headers(("ETag" = String, description = "The account's version, quoted"))))
)]
pub async fn withdraw(
    State(state): State<AppState>,
    Caller(caller): Caller,
    path: Result<Path<String>, PathRejection>,
    headers: CommandHeaders,
    JsonBody { value, canonical }: JsonBody<MoneyBody>,
) -> Result<Response> {
    let (account_id, path) = account_path(path, "withdrawals")?;
    let command = AccountCommand::Withdraw {
        amount: Amount::new(value.amount)?,
        reference: reference(value.reference)?,
    };
    run_account(
        &state,
        &caller.subject,
        headers,
        path,
        &canonical,
        account_id,
        command,
    )
    .await
}

/// Freeze an account: no money moves in or out until it is unfrozen.
#[utoipa::path(
    post,
    path = "/accounts/{id}/freeze",
    tag = "accounts",
    params(("id" = uuid::Uuid, Path, description = "The account")),
    request_body(content = Option<ReasonBody>, description = "May be omitted"),
    responses((status = 200, description = "Frozen", body = AccountCommandResponse,
               headers(("ETag" = String, description = "The account's version, quoted"))))
)]
pub async fn freeze(
    State(state): State<AppState>,
    Caller(caller): Caller,
    path: Result<Path<String>, PathRejection>,
    headers: CommandHeaders,
    JsonBody { value, canonical }: JsonBody<ReasonBody>,
) -> Result<Response> {
    let (account_id, path) = account_path(path, "freeze")?;
    let command = AccountCommand::Freeze {
        reason: reason(value.reason)?,
    };
    run_account(
        &state,
        &caller.subject,
        headers,
        path,
        &canonical,
        account_id,
        command,
    )
    .await
}

/// Unfreeze an account.
#[utoipa::path(
    post,
    path = "/accounts/{id}/unfreeze",
    tag = "accounts",
    params(("id" = uuid::Uuid, Path, description = "The account")),
    request_body(content = Option<ReasonBody>, description = "May be omitted"),
    responses((status = 200, description = "Unfrozen", body = AccountCommandResponse,
               headers(("ETag" = String, description = "The account's version, quoted"))))
)]
pub async fn unfreeze(
    State(state): State<AppState>,
    Caller(caller): Caller,
    path: Result<Path<String>, PathRejection>,
    headers: CommandHeaders,
    JsonBody { value, canonical }: JsonBody<ReasonBody>,
) -> Result<Response> {
    let (account_id, path) = account_path(path, "unfreeze")?;
    let command = AccountCommand::Unfreeze {
        reason: reason(value.reason)?,
    };
    run_account(
        &state,
        &caller.subject,
        headers,
        path,
        &canonical,
        account_id,
        command,
    )
    .await
}

/// Close an account; only at balance 0, and for good.
#[utoipa::path(
    post,
    path = "/accounts/{id}/close",
    tag = "accounts",
    params(("id" = uuid::Uuid, Path, description = "The account")),
    request_body(content = Option<ReasonBody>, description = "May be omitted"),
    responses((status = 200, description = "Closed", body = AccountCommandResponse,
               headers(("ETag" = String, description = "The account's version, quoted"))))
)]
pub async fn close(
    State(state): State<AppState>,
    Caller(caller): Caller,
    path: Result<Path<String>, PathRejection>,
    headers: CommandHeaders,
    JsonBody { value, canonical }: JsonBody<ReasonBody>,
) -> Result<Response> {
    let (account_id, path) = account_path(path, "close")?;
    let command = AccountCommand::Close {
        reason: reason(value.reason)?,
    };
    run_account(
        &state,
        &caller.subject,
        headers,
        path,
        &canonical,
        account_id,
        command,
    )
    .await
}

/// Erase the owner's personal data: destroys the account's data key and records
/// `PersonalDataErased`, atomically; the account and its money history stay. Idempotent:
/// erasing again answers 200 with the first erasure's position and writes nothing.
#[utoipa::path(
    delete,
    path = "/accounts/{id}/personal-data",
    tag = "accounts",
    params(("id" = uuid::Uuid, Path, description = "The account")),
    responses((status = 200, description = "Erased (now or before)", body = AccountCommandResponse,
               headers(("ETag" = String, description = "The account's version, quoted"))))
)]
pub async fn erase_personal_data(
    State(state): State<AppState>,
    Caller(caller): Caller,
    path: Result<Path<String>, PathRejection>,
    headers: CommandHeaders,
) -> Result<Response> {
    let (account_id, path) = account_path(path, "personal-data")?;
    let if_match = headers.if_match;
    let command = Command::Account {
        account_id,
        command: AccountCommand::ErasePersonalData,
        if_match,
    };
    let erased = run(
        &state,
        &caller.subject,
        headers,
        Method::DELETE,
        path,
        b"",
        command,
        None,
    )
    .await;
    match erased {
        Err(ApiError::Domain(DomainError::PersonalDataAlreadyErased { .. })) => {
            crate::erasure::already_erased(state.commands.store(), account_id).await
        }
        other => other,
    }
}

/// Move money between two accounts of one currency: three streams, one atomic append.
#[utoipa::path(
    post,
    path = "/transfers",
    tag = "transfers",
    request_body = TransferBody,
    responses((status = 201, description = "The transfer executed", body = TransferResponse,
               headers(("Location" = String, description = "Where the transfer can be read"))))
)]
pub async fn transfer(
    State(state): State<AppState>,
    Caller(caller): Caller,
    headers: CommandHeaders,
    JsonBody { value, canonical }: JsonBody<TransferBody>,
) -> Result<Response> {
    let command = TransferCommand {
        id: value
            .transfer_id
            .map_or_else(TransferId::new_v7, TransferId::from),
        from: AccountId::from(value.from_account_id),
        to: AccountId::from(value.to_account_id),
        amount: Amount::new(value.amount)?,
        reference: reference(value.reference)?,
    };
    run(
        &state,
        &caller.subject,
        headers,
        Method::POST,
        "/transfers".to_owned(),
        &canonical,
        Command::Transfer(command),
        None,
    )
    .await
}

/// The account named by the path, and the path as the client addressed it (for the
/// idempotency fingerprint). An id that is not a UUID names no account: 404.
fn account_path(path: Result<Path<String>, PathRejection>, action: &str) -> Result<(AccountId, String)> {
    let Path(raw) = path.map_err(|rejection| ApiError::AccountNotFound(rejection.body_text()))?;
    let uuid = uuid::Uuid::parse_str(&raw).map_err(|_| ApiError::AccountNotFound(raw.clone()))?;
    Ok((AccountId::from(uuid), format!("/accounts/{uuid}/{action}")))
}

fn reference(raw: Option<String>) -> Result<Option<Reference>> {
    Ok(raw.as_deref().map(Reference::parse).transpose()?)
}

fn reason(raw: Option<String>) -> Result<Option<Reason>> {
    Ok(raw.as_deref().map(Reason::parse).transpose()?)
}

async fn run_account(
    state: &AppState,
    actor: &str,
    headers: CommandHeaders,
    path: String,
    canonical: &[u8],
    account_id: AccountId,
    command: AccountCommand,
) -> Result<Response> {
    let command = Command::Account {
        account_id,
        command,
        if_match: headers.if_match,
    };
    run(
        state,
        actor,
        headers,
        Method::POST,
        path,
        canonical,
        command,
        None,
    )
    .await
}

/// Runs one command for `actor` (the caller's `sub`) with the idempotency protocol
/// around it. Keys are scoped per actor: two callers never see each other's answers.
/// `data_key` is the new account's key, for a command that opens one.
#[allow(clippy::too_many_arguments)]
async fn run(
    state: &AppState,
    actor: &str,
    headers: CommandHeaders,
    method: Method,
    path: String,
    canonical: &[u8],
    command: Command,
    data_key: Option<WrappedKey>,
) -> Result<Response> {
    let metadata = Metadata {
        actor: actor.to_owned(),
        correlation_id: headers.correlation_id,
        causation_id: Some(uuid::Uuid::now_v7().to_string()),
        command: command.name().to_owned(),
        idempotency_key: headers.idempotency_key.clone(),
        trace: headers.traceparent,
    };
    let Some(key) = headers.idempotency_key else {
        return match state
            .commands
            .execute(Submission {
                command,
                metadata,
                idempotency: None,
                data_key,
            })
            .await?
        {
            Executed::Committed(response) => Ok(response.to_response(false)),
            // Only a keyed command can find its key stored.
            Executed::AlreadyStored(stored) => Ok(stored.response.to_response(true)),
        };
    };

    let claim = KeyClaim {
        scope: KeyScope {
            actor: actor.to_owned(),
            key,
        },
        request_hash: idempotency::fingerprint(method.as_str(), &path, canonical),
    };
    let _in_flight = state
        .in_flight
        .claim(&claim.scope)
        .ok_or(ApiError::IdempotencyKeyInFlight)?;
    if let Some(stored) = idempotency::find(state.commands.pool(), &claim.scope)
        .await
        .map_err(ApiError::Unavailable)?
    {
        return replay(&claim, stored);
    }
    let submission = Submission {
        command,
        metadata,
        idempotency: Some(claim.clone()),
        data_key,
    };
    match state.commands.execute(submission).await? {
        Executed::Committed(response) => Ok(response.to_response(false)),
        Executed::AlreadyStored(stored) => replay(&claim, stored),
    }
}

/// The stored answer if the key was first used for this very request, else 422.
fn replay(claim: &KeyClaim, stored: StoredKey) -> Result<Response> {
    if stored.request_hash != claim.request_hash {
        return Err(ApiError::IdempotencyKeyReused);
    }
    metrics::counter!("command_api_idempotent_replays_total").increment(1);
    Ok(stored.response.to_response(true))
}
