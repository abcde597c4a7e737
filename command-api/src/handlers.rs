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

use axum::extract::{FromRequestParts, Path};
use axum::http::Method;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use chrono::{SubsecRound, Utc};
use domain::{
    AccountCommand, AccountId, Amount, Currency, DomainError, OverdraftLimit, Owner, PendingTerms, Reason,
    Reference, SettleAction, SettleCommand, TransferCommand, TransferId, ValidationError,
};
use event_store::Metadata;
use event_store::pii::WrappedKey;

use crate::AppState;
use crate::access::Caller;
use crate::committer::{Command, Executed, Submission};
use crate::dto::{
    AccountCommandResponse, MoneyBody, OpenAccountBody, PostTransferBody, ReasonBody, TransferBody,
    TransferResponse,
};
use crate::error::{ApiError, Result};
use crate::extract::{CommandHeaders, JsonBody};
use crate::idempotency::{self, KeyClaim, KeyScope, StoredKey, StoredResponse};

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
    request: CommandRequest,
    JsonBody { value, canonical }: JsonBody<OpenAccountBody>,
) -> Result<Response> {
    let owner = Owner::parse(&value.owner.name, &value.owner.email)?;
    let currency = Currency::parse(&value.currency)?;
    let overdraft_limit = match value.overdraft_limit {
        Some(limit) => OverdraftLimit::new(limit)?,
        None => OverdraftLimit::ZERO,
    };
    let account_id = value.account_id.map_or_else(AccountId::new_v7, AccountId::from);
    let (data_key, wrapped_key) = request
        .state
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
        // The account to open has no version yet: `If-Match` cannot hold, and
        // `If-None-Match: *` asks that it not exist (the preconditions module).
        preconditions: request.headers.preconditions.clone(),
    };
    request.run(command, &canonical, Some(wrapped_key)).await
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
    request: AccountRequest,
    JsonBody { value, canonical }: JsonBody<MoneyBody>,
) -> Result<Response> {
    let command = AccountCommand::Deposit {
        amount: Amount::new(value.amount)?,
        reference: reference(value.reference)?,
    };
    request.run(command, &canonical).await
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
    request: AccountRequest,
    JsonBody { value, canonical }: JsonBody<MoneyBody>,
) -> Result<Response> {
    let command = AccountCommand::Withdraw {
        amount: Amount::new(value.amount)?,
        reference: reference(value.reference)?,
    };
    request.run(command, &canonical).await
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
    request: AccountRequest,
    JsonBody { value, canonical }: JsonBody<ReasonBody>,
) -> Result<Response> {
    let command = AccountCommand::Freeze {
        reason: reason(value.reason)?,
    };
    request.run(command, &canonical).await
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
    request: AccountRequest,
    JsonBody { value, canonical }: JsonBody<ReasonBody>,
) -> Result<Response> {
    let command = AccountCommand::Unfreeze {
        reason: reason(value.reason)?,
    };
    request.run(command, &canonical).await
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
    request: AccountRequest,
    JsonBody { value, canonical }: JsonBody<ReasonBody>,
) -> Result<Response> {
    let command = AccountCommand::Close {
        reason: reason(value.reason)?,
    };
    request.run(command, &canonical).await
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
pub async fn erase_personal_data(request: AccountRequest) -> Result<Response> {
    let (state, account_id) = (request.command.state.clone(), request.account_id);
    match request.run(AccountCommand::ErasePersonalData, b"").await {
        Err(ApiError::Domain(DomainError::PersonalDataAlreadyErased { .. })) => {
            crate::erasure::already_erased(state.commands.store(), account_id).await
        }
        other => other,
    }
}

/// The longest timeout of a pending transfer, in seconds: 30 days (API.md).
pub const MAX_TIMEOUT_SECONDS: i64 = 2_592_000;

/// Move money between two accounts of one currency: three streams, one atomic append.
/// With `"pending": true` the amount is only reserved, until posted, voided or expired.
#[utoipa::path(
    post,
    path = "/transfers",
    tag = "transfers",
    request_body = TransferBody,
    responses((status = 201, description = "The transfer executed (`posted`) or reserved (`pending`)",
               body = TransferResponse,
               headers(("ETag" = String, description = "The transfer stream's version, quoted"),
                       ("Location" = String, description = "Where the transfer can be read"))))
)]
pub async fn transfer(
    request: CommandRequest,
    JsonBody { value, canonical }: JsonBody<TransferBody>,
) -> Result<Response> {
    // A transfer is a new resource: there is no current version an `If-Match` could
    // name (If-None-Match: `*` is what a transfer id guarantees anyway).
    let preconditions = &request.headers.preconditions;
    if preconditions.if_match.is_some() {
        return Err(ApiError::PreconditionFailed {
            expected: preconditions.expected_version(),
            actual: None,
        });
    }
    let pending = pending_terms(value.pending.unwrap_or(false), value.timeout_seconds)?;
    let command = TransferCommand {
        id: value
            .transfer_id
            .map_or_else(TransferId::new_v7, TransferId::from),
        from: AccountId::from(value.from_account_id),
        to: AccountId::from(value.to_account_id),
        amount: Amount::new(value.amount)?,
        reference: reference(value.reference)?,
        pending,
    };
    request.run(Command::Transfer(command), &canonical, None).await
}

/// The pending terms a transfer body asks for: `timeout_seconds` only with `pending`,
/// and within 1 to [`MAX_TIMEOUT_SECONDS`]. The deadline is taken to the microsecond,
/// which is what PostgreSQL keeps of it (the expiry reads it from there).
fn pending_terms(pending: bool, timeout_seconds: Option<i64>) -> Result<Option<PendingTerms>> {
    let invalid = |message: &str| ApiError::Validation(ValidationError::new("timeout_seconds", message));
    match (pending, timeout_seconds) {
        (false, None) => Ok(None),
        (false, Some(_)) => Err(invalid("only a pending transfer has a timeout")),
        (true, None) => Ok(Some(PendingTerms { expires_at: None })),
        (true, Some(seconds)) if !(1..=MAX_TIMEOUT_SECONDS).contains(&seconds) => Err(invalid(&format!(
            "must be between 1 and {MAX_TIMEOUT_SECONDS} seconds"
        ))),
        (true, Some(seconds)) => Ok(Some(PendingTerms {
            expires_at: Some(Utc::now().trunc_subsecs(6) + chrono::Duration::seconds(seconds)),
        })),
    }
}

/// Post a pending transfer: move all of it, or `amount` of it and release the rest.
#[utoipa::path(
    post,
    path = "/transfers/{id}/post",
    tag = "transfers",
    params(("id" = uuid::Uuid, Path, description = "The pending transfer")),
    request_body(content = Option<PostTransferBody>, description = "May be omitted"),
    responses((status = 200, description = "Posted", body = TransferResponse,
               headers(("ETag" = String, description = "The transfer stream's version, quoted"))))
)]
pub async fn post_transfer(
    request: TransferRequest,
    JsonBody { value, canonical }: JsonBody<PostTransferBody>,
) -> Result<Response> {
    let amount = value.amount.map(Amount::new).transpose()?;
    request.run(SettleAction::Post { amount }, &canonical).await
}

/// Void a pending transfer: release all of it.
#[utoipa::path(
    post,
    path = "/transfers/{id}/void",
    tag = "transfers",
    params(("id" = uuid::Uuid, Path, description = "The pending transfer")),
    request_body(content = Option<ReasonBody>, description = "May be omitted"),
    responses((status = 200, description = "Voided", body = TransferResponse,
               headers(("ETag" = String, description = "The transfer stream's version, quoted"))))
)]
pub async fn void_transfer(
    request: TransferRequest,
    JsonBody { value, canonical }: JsonBody<ReasonBody>,
) -> Result<Response> {
    let action = SettleAction::Void {
        reason: reason(value.reason)?,
    };
    request.run(action, &canonical).await
}

/// A command on the transfer its path names (`/transfers/{id}/<action>`). An id that is
/// not a UUID names no transfer: 404.
pub struct TransferRequest {
    command: CommandRequest,
    transfer_id: TransferId,
}

impl FromRequestParts<AppState> for TransferRequest {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> std::result::Result<Self, Response> {
        let mut command = CommandRequest::from_request_parts(parts, state).await?;
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| ApiError::TransferNotFound(rejection.body_text()).into_response())?;
        let uuid = uuid::Uuid::parse_str(&raw)
            .map_err(|_| ApiError::TransferNotFound(raw.clone()).into_response())?;
        // As for accounts: two spellings of one id are one request to the fingerprint.
        let action = command.path.rsplit('/').next().unwrap_or_default().to_owned();
        command.path = format!("/transfers/{uuid}/{action}");
        Ok(Self {
            command,
            transfer_id: TransferId::from(uuid),
        })
    }
}

impl TransferRequest {
    /// Runs the post or void under the client's preconditions, decided at the time the
    /// request arrived: a post at or after the transfer's `expires_at` is refused.
    async fn run(self, action: SettleAction, canonical: &[u8]) -> Result<Response> {
        let transfer_id = self.transfer_id;
        let command = Command::Settle {
            command: SettleCommand {
                transfer_id,
                action,
                now: Utc::now(),
            },
            // Read by the bus before every attempt.
            loaded: None,
            preconditions: self.command.headers.preconditions.clone(),
        };
        self.command.run(command, canonical, None).await
    }
}

fn reference(raw: Option<String>) -> Result<Option<Reference>> {
    Ok(raw.as_deref().map(Reference::parse).transpose()?)
}

fn reason(raw: Option<String>) -> Result<Option<Reason>> {
    Ok(raw.as_deref().map(Reason::parse).transpose()?)
}

/// Everything a command takes from its request but its body: the service, who asks
/// (the token's `sub`), the command headers, and the method and path as addressed,
/// which the idempotency fingerprint covers with the body. The caller is checked first:
/// a request without a valid token learns nothing else.
pub struct CommandRequest {
    state: AppState,
    actor: String,
    headers: CommandHeaders,
    method: Method,
    path: String,
}

impl FromRequestParts<AppState> for CommandRequest {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> std::result::Result<Self, Response> {
        let Caller(caller) = Caller::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let headers = CommandHeaders::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(Self {
            state: state.clone(),
            actor: caller.subject,
            headers,
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
        })
    }
}

/// A command on the account its path names (`/accounts/{id}/<action>`). An id that is
/// not a UUID names no account: 404.
pub struct AccountRequest {
    command: CommandRequest,
    account_id: AccountId,
}

impl FromRequestParts<AppState> for AccountRequest {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> std::result::Result<Self, Response> {
        let mut command = CommandRequest::from_request_parts(parts, state).await?;
        let not_found = |id: String| ApiError::AccountNotFound(id).into_response();
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| not_found(rejection.body_text()))?;
        let uuid = uuid::Uuid::parse_str(&raw).map_err(|_| not_found(raw.clone()))?;
        // The fingerprint names the account by the id it parsed to, so that two
        // spellings of one id are one request.
        let action = command.path.rsplit('/').next().unwrap_or_default().to_owned();
        command.path = format!("/accounts/{uuid}/{action}");
        Ok(Self {
            command,
            account_id: AccountId::from(uuid),
        })
    }
}

impl AccountRequest {
    async fn run(self, command: AccountCommand, canonical: &[u8]) -> Result<Response> {
        let command = Command::Account {
            account_id: self.account_id,
            command,
            preconditions: self.command.headers.preconditions.clone(),
        };
        self.command.run(command, canonical, None).await
    }
}

impl CommandRequest {
    /// Runs `command` for the caller with the idempotency protocol around it. Keys are
    /// scoped per actor: two callers never see each other's answers. `data_key` is the
    /// new account's key, for a command that opens one.
    async fn run(self, command: Command, canonical: &[u8], data_key: Option<WrappedKey>) -> Result<Response> {
        let Self {
            state,
            actor,
            headers,
            method,
            path,
        } = self;
        let metadata = Metadata {
            actor: actor.clone(),
            correlation_id: headers.correlation_id,
            causation_id: Some(uuid::Uuid::now_v7().to_string()),
            command: command.name().to_owned(),
            idempotency_key: headers.idempotency_key.clone(),
            // The request span's context when spans are exported, so the events'
            // spans downstream are in the request's trace; else the client's own.
            trace: event_store::trace_context::current().or(headers.traceparent),
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
            scope: KeyScope { actor, key },
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
        match state.commands.execute(submission).await {
            Ok(Executed::Committed(response)) => Ok(response.to_response(false)),
            Ok(Executed::AlreadyStored(stored)) => replay(&claim, stored),
            Err(refusal) if refusal.is_stored_under_key() => {
                let response = StoredResponse {
                    status: refusal.status().as_u16(),
                    body: refusal.problem_body(),
                    headers: Vec::new(),
                };
                let stored = idempotency::store_refusal(state.commands.pool(), &claim, &response)
                    .await
                    .map_err(ApiError::Unavailable)?;
                // What another instance stored first wins; ours is answered as sent.
                if stored.response == response {
                    Ok(response.to_response(false))
                } else {
                    replay(&claim, stored)
                }
            }
            Err(other) => Err(other),
        }
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
