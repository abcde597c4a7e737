//! The JSON bodies of the command endpoints (API.md, "Commands"), as they travel: plain
//! strings and integers, checked into domain newtypes by [`crate::handlers`]. Unknown
//! fields are refused (400), so a misspelt optional field is never silently ignored.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// The account holder.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OwnerBody {
    /// 1 to 200 characters.
    pub name: String,
    /// An email address, at most 254 characters.
    pub email: String,
}

/// `POST /accounts`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenAccountBody {
    /// Chosen by the client, or a UUIDv7 picked by the server.
    pub account_id: Option<Uuid>,
    pub owner: OwnerBody,
    /// ISO 4217 alphabetic code, upper case, for example `EUR`.
    pub currency: String,
    /// How far below zero the balance may go, in minor units; default 0.
    pub overdraft_limit: Option<i64>,
}

/// `POST /accounts/{id}/deposits` and `/withdrawals`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoneyBody {
    /// Minor units, > 0 and <= 10^15 (`domain::Amount::MAX_MINOR_UNITS`).
    pub amount: i64,
    /// Free text for the statement, at most 140 characters.
    pub reference: Option<String>,
}

/// `POST /transfers`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferBody {
    /// Chosen by the client (a transfer id executes at most once), or a UUIDv7.
    pub transfer_id: Option<Uuid>,
    pub from_account_id: Uuid,
    pub to_account_id: Uuid,
    /// Minor units, > 0 and <= 10^15 (`domain::Amount::MAX_MINOR_UNITS`).
    pub amount: i64,
    /// Free text for both statements, at most 140 characters.
    pub reference: Option<String>,
    /// `true`: only reserve `amount` on the paying account (its available balance drops,
    /// its balance stays) until the transfer is posted or voided. Default `false`.
    pub pending: Option<bool>,
    /// Only with `pending`: seconds, 1 to 2,592,000 (30 days), after which the system
    /// voids the transfer if it is still pending (status `expired`). Default: never.
    pub timeout_seconds: Option<i64>,
}

/// `POST /transfers/{id}/post`; the body may be omitted.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostTransferBody {
    /// Minor units to move, at most the reserved amount; default all of it. The rest is
    /// released.
    pub amount: Option<i64>,
}

/// `POST /accounts/{id}/freeze`, `/unfreeze` and `/close`; the body may be omitted.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReasonBody {
    /// Why, for the audit log; at most 500 characters.
    pub reason: Option<String>,
}

/// The answer to every account command.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
pub struct AccountCommandResponse {
    /// `account-<uuid>`.
    pub stream_id: String,
    /// The account's version after the command; also sent as `ETag`.
    pub stream_version: u64,
    /// The global position of the command's last event: wait for it with `min_position`.
    pub position: i64,
    pub account_id: Uuid,
    /// The balance after the command, in minor units.
    pub balance: i64,
    /// `open`, `frozen` or `closed`.
    pub status: String,
}

/// The answer to `POST /transfers` and to posting or voiding a transfer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
pub struct TransferResponse {
    /// `transfer-<uuid>`.
    pub stream_id: String,
    /// The transfer stream's version after the command (1 when created, 2 once posted or
    /// voided); also sent as `ETag`, for `If-Match` on a post or void.
    pub stream_version: u64,
    /// The global position of the transfer's last event.
    pub position: i64,
    pub transfer_id: Uuid,
    pub from_account_id: Uuid,
    pub to_account_id: Uuid,
    pub amount: i64,
    pub currency: String,
    /// The paying account's version after the transfer, for a later `If-Match`.
    pub from_account_version: u64,
    /// The receiving account's version after the transfer.
    pub to_account_version: u64,
    /// `pending`, `posted`, `voided` or `expired`.
    pub status: String,
    /// What moved, in minor units: `amount` for a one-step transfer, the posted part of a
    /// posted pending one; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub posted_amount: Option<i64>,
    /// When a pending transfer expires (RFC 3339, UTC); absent without a timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// An instant as every answer writes it: RFC 3339, UTC, with `Z` and as many fraction
/// digits as it has.
pub fn rfc3339(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// An RFC 9457 problem, as every error is answered.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct Problem {
    /// `https://eventledger.dev/problems/<code>`, stable per cause.
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
}
