//! Every way a command request can fail, and the one place each becomes an HTTP answer:
//! an `application/problem+json` body (RFC 9457) whose `type` is stable per cause
//! (`https://eventledger.dev/problems/<code>`), so clients match on it and never on text.
//!
//! Infrastructure failures are logged here with their cause chain and answered with a
//! generic 503; their details never reach the client.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use domain::{DomainError, ValidationError};
use event_store::{StoreError, error_chain};
use serde_json::{Map, Value, json};

/// The base of every problem `type` URI.
pub const PROBLEM_BASE: &str = "https://eventledger.dev/problems/";

/// How long a client should wait before retrying a 503, in seconds: about the time a
/// full queue takes to drain at the measured commit rate, with room to spare.
pub const RETRY_AFTER_SECONDS: u64 = 1;

/// A result whose error is an [`ApiError`].
pub type Result<T, E = ApiError> = std::result::Result<T, E>;

/// Why a command request was not accepted. Nothing was written for any of them.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 `malformed-json`: the body is not JSON at all.
    #[error("the body is not valid JSON: {0}")]
    MalformedJson(String),
    /// 400 `invalid-body`: JSON, but not the shape of this command (a field missing,
    /// unknown or of the wrong type).
    #[error("the body does not fit this command: {0}")]
    InvalidBody(String),
    /// 400 `invalid-header`: a header the API reads is malformed.
    #[error("header {header}: {message}")]
    InvalidHeader { header: &'static str, message: String },
    /// 413 `payload-too-large`: the body is over the 64 KiB limit.
    #[error("the body is larger than {limit_bytes} bytes")]
    PayloadTooLarge { limit_bytes: usize },
    /// 415 `unsupported-media-type`: a body that is not declared as JSON.
    #[error("the body must be application/json")]
    UnsupportedMediaType,
    /// 422 `validation`: well-formed JSON whose value breaks a rule of that value.
    #[error(transparent)]
    Validation(#[from] ValidationError),
    /// 404, or 422 by cause: the domain refused the command.
    #[error(transparent)]
    Domain(DomainError),
    /// 404 `account-not-found`: a path names an account that does not exist.
    #[error("account {0} not found")]
    AccountNotFound(String),
    /// 404 `transfer-not-found`: a path names a transfer that cannot exist (not a UUID).
    #[error("transfer {0} not found")]
    TransferNotFound(String),
    /// 412 `version-conflict`: `If-Match` or `If-None-Match` does not hold for the
    /// account's current version (`actual`; `None`: the account does not exist).
    #[error("{}", precondition_detail(.expected, .actual))]
    PreconditionFailed {
        expected: Option<u64>,
        actual: Option<u64>,
    },
    /// 409 `concurrent-modification`: other writers kept changing the streams while the
    /// command was retried its bounded number of times.
    #[error("the streams kept changing under the command; retry")]
    ConcurrentModification,
    /// 409 `idempotency-key-in-flight`: the first request with this key is still running.
    #[error("a request with this Idempotency-Key is still in flight")]
    IdempotencyKeyInFlight,
    /// 422 `idempotency-key-reused`: the key was first used for another request.
    #[error("this Idempotency-Key was used for a different request")]
    IdempotencyKeyReused,
    /// 503 `overloaded` with `Retry-After`: the command queue is full.
    #[error("too many commands in flight; retry shortly")]
    Overloaded,
    /// 503 `unavailable` with `Retry-After`: the database failed; whether the command
    /// committed is unknown only if the commit itself failed, which a retry with the same
    /// `Idempotency-Key` resolves.
    #[error("the event store is unavailable")]
    Unavailable(#[source] StoreError),
    /// 503 `unavailable`: the group commit this command was part of failed (logged by
    /// the committer with its cause); nothing of it is known to be written.
    #[error("the event store is unavailable")]
    CommitFailed,
    /// 503 `unavailable`: the committer stopped (the process is shutting down).
    #[error("the command pipeline is shutting down")]
    ShuttingDown,
    /// 404 `not-found`: no route has this path.
    #[error("no resource at this path")]
    RouteNotFound,
    /// 405 `method-not-allowed`: the path exists, the method does not.
    #[error("this method is not allowed here")]
    MethodNotAllowed,
    /// 500 `internal`: a bug (a panic, a broken invariant). Never caused by input alone.
    #[error("internal error: {0}")]
    Internal(String),
}

fn precondition_detail(expected: &Option<u64>, actual: &Option<u64>) -> String {
    let current = match actual {
        Some(version) => format!("the resource (account or transfer) is at version {version}"),
        // Only a new resource (an account being opened, a transfer) has no version: a
        // command on an unknown account is 404 before its preconditions are read.
        None => "the resource is new and has no version to match".to_owned(),
    };
    match expected {
        Some(version) => format!("{current}, not {version}"),
        None => format!("{current}, and the request's If-Match or If-None-Match does not hold"),
    }
}

impl From<DomainError> for ApiError {
    fn from(error: DomainError) -> Self {
        match error {
            DomainError::Validation(validation) => Self::Validation(validation),
            other => Self::Domain(other),
        }
    }
}

impl ApiError {
    /// The HTTP status this error becomes.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MalformedJson(_) | Self::InvalidBody(_) | Self::InvalidHeader { .. } => {
                StatusCode::BAD_REQUEST
            }
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Validation(_) | Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Domain(error) => domain_status(error),
            Self::AccountNotFound(_) | Self::TransferNotFound(_) | Self::RouteNotFound => {
                StatusCode::NOT_FOUND
            }
            Self::PreconditionFailed { .. } => StatusCode::PRECONDITION_FAILED,
            Self::ConcurrentModification | Self::IdempotencyKeyInFlight => StatusCode::CONFLICT,
            Self::Overloaded | Self::Unavailable(_) | Self::CommitFailed | Self::ShuttingDown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable code that ends the problem `type` URI.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MalformedJson(_) => "malformed-json",
            Self::InvalidBody(_) => "invalid-body",
            Self::InvalidHeader { .. } => "invalid-header",
            Self::PayloadTooLarge { .. } => "payload-too-large",
            Self::UnsupportedMediaType => "unsupported-media-type",
            Self::Validation(_) => "validation",
            Self::Domain(error) => error.code(),
            Self::AccountNotFound(_) => "account-not-found",
            Self::TransferNotFound(_) => "transfer-not-found",
            Self::PreconditionFailed { .. } => "version-conflict",
            Self::ConcurrentModification => "concurrent-modification",
            Self::IdempotencyKeyInFlight => "idempotency-key-in-flight",
            Self::IdempotencyKeyReused => "idempotency-key-reused",
            Self::Overloaded => "overloaded",
            Self::Unavailable(_) | Self::CommitFailed | Self::ShuttingDown => "unavailable",
            Self::RouteNotFound => "not-found",
            Self::MethodNotAllowed => "method-not-allowed",
            Self::Internal(_) => "internal",
        }
    }

    /// Whether this refusal is stored under the request's `Idempotency-Key` and replayed
    /// to a retry (API.md, "Idempotency-Key"): only the domain's decisions (404
    /// `account-not-found` and the 422s of its rules), because a retry of the same
    /// command must get the same outcome even after the state has changed (a withdrawal
    /// refused for want of funds must not go through once money arrives). Malformed
    /// requests, auth, 409, 412 and 503 are not: the client may fix them and retry.
    pub fn is_stored_under_key(&self) -> bool {
        match self {
            Self::Domain(error) => !matches!(error, DomainError::AccountStateMismatch { .. }),
            Self::AccountNotFound(_) | Self::TransferNotFound(_) => true,
            _ => false,
        }
    }

    /// The problem document this error answers, as the body [`IntoResponse`] sends.
    pub fn problem_body(&self) -> Value {
        Value::Object(problem_document(
            self.status(),
            self.code(),
            &self.detail(),
            self.extensions(),
        ))
    }

    /// Fields beside `type`, `title`, `status` and `detail` that let a program act
    /// without parsing the detail text.
    fn extensions(&self) -> Map<String, Value> {
        let mut extra = Map::new();
        match self {
            Self::Validation(error) => {
                extra.insert("field".into(), json!(error.field));
            }
            Self::InvalidHeader { header, .. } => {
                extra.insert("header".into(), json!(header));
            }
            Self::PreconditionFailed { expected, actual } => {
                extra.insert("expected_version".into(), json!(expected));
                extra.insert("current_version".into(), json!(actual));
            }
            Self::Domain(DomainError::InsufficientFunds {
                account_id,
                balance,
                pending_debits,
                requested,
                overdraft_limit,
            }) => {
                extra.insert("account_id".into(), json!(account_id));
                extra.insert("balance".into(), json!(balance.get()));
                extra.insert("pending_debits".into(), json!(pending_debits.get()));
                let available = i128::from(balance.get()) - i128::from(pending_debits.get());
                extra.insert("available_balance".into(), json!(available));
                extra.insert("requested".into(), json!(requested.get()));
                extra.insert("overdraft_limit".into(), json!(overdraft_limit.get()));
            }
            Self::Domain(DomainError::AccountNotFound {
                account_id: Some(account_id),
            }) => {
                extra.insert("account_id".into(), json!(account_id));
            }
            Self::Domain(DomainError::AmountExceedsPending {
                transfer_id,
                requested,
                pending,
            }) => {
                extra.insert("transfer_id".into(), json!(transfer_id));
                extra.insert("requested".into(), json!(requested.get()));
                extra.insert("pending".into(), json!(pending.get()));
            }
            Self::Domain(
                DomainError::TransferNotFound { transfer_id }
                | DomainError::TransferNotPending { transfer_id }
                | DomainError::TransferExpired { transfer_id }
                | DomainError::TransferAlreadyExecuted { transfer_id },
            ) => {
                extra.insert("transfer_id".into(), json!(transfer_id));
            }
            // Which account a rule refused, as a member: a transfer names two.
            Self::Domain(
                DomainError::AccountAlreadyExists { account_id }
                | DomainError::AccountFrozen { account_id }
                | DomainError::AccountClosed { account_id }
                | DomainError::AccountAlreadyFrozen { account_id }
                | DomainError::AccountNotFrozen { account_id }
                | DomainError::BalanceOverflow { account_id }
                | DomainError::SameAccount { account_id }
                | DomainError::PersonalDataAlreadyErased { account_id },
            ) => {
                extra.insert("account_id".into(), json!(account_id));
            }
            _ => {}
        }
        extra
    }

    /// What the client is told. Infrastructure and bug details stay in the log.
    fn detail(&self) -> String {
        match self {
            Self::Unavailable(_) | Self::CommitFailed => {
                "the event store is unavailable; retry with the same Idempotency-Key".to_owned()
            }
            Self::Internal(_) => "an internal error occurred".to_owned(),
            other => other.to_string(),
        }
    }
}

/// The status of a domain refusal: an unknown account or transfer is 404, every other broken rule
/// 422 (API.md). A state mismatch is a bug of this service, never the client's doing.
fn domain_status(error: &DomainError) -> StatusCode {
    match error {
        DomainError::AccountNotFound { .. } | DomainError::TransferNotFound { .. } => StatusCode::NOT_FOUND,
        DomainError::AccountStateMismatch { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

/// The RFC 9457 problem document: `type`, `title`, `status`, `detail` and `extensions`.
fn problem_document(
    status: StatusCode,
    code: &str,
    detail: &str,
    extensions: Map<String, Value>,
) -> Map<String, Value> {
    let mut body = Map::new();
    body.insert("type".into(), json!(format!("{PROBLEM_BASE}{code}")));
    body.insert(
        "title".into(),
        json!(status.canonical_reason().unwrap_or("Error")),
    );
    body.insert("status".into(), json!(status.as_u16()));
    body.insert("detail".into(), json!(detail));
    body.extend(extensions);
    body
}

/// A problem document as a response, for errors raised outside [`ApiError`] too.
pub fn problem_response(
    status: StatusCode,
    code: &str,
    detail: &str,
    extensions: Map<String, Value>,
) -> Response {
    let body = problem_document(status, code, detail, extensions);
    let mut response = (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        )],
        Value::Object(body).to_string(),
    )
        .into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
    }
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            Self::Unavailable(source) => {
                tracing::error!(error = %error_chain(source), "event store unavailable");
            }
            Self::Internal(_) | Self::Domain(DomainError::AccountStateMismatch { .. }) => {
                tracing::error!(error = %error_chain(&self), "internal error");
            }
            _ => {}
        }
        metrics::counter!("command_api_errors_total", "type" => self.code()).increment(1);
        problem_response(status, self.code(), &self.detail(), self.extensions())
    }
}
