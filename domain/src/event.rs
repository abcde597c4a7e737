//! The events: what happened, kept forever, and their stored form.
//!
//! Events are the ledger's record, so their shape is a contract: every type has a name
//! (`event_type`) and a schema version, and its `data` is the JSON object of the
//! variant's fields, with no tag inside (the type travels beside it in the envelope).
//! [`AccountEvent::to_stored`] writes that form field by field, which makes writing
//! infallible and the format visible here; [`LedgerEvent::from_stored`] reads it back,
//! upcasting older schema versions first (see [`crate::upcast`]).
//!
//! The enums also implement serde as `{"event_type": ..., "data": {...}}` of the current
//! schema, for logs and tests; stored events must go through `from_stored`, which also
//! reads old schema versions.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::DecodeError;
use crate::ids::{AccountId, StreamRef, TransferId};
use crate::money::{Amount, Currency, OverdraftLimit};
use crate::sealed::{SealedOwner, SealedText};
use crate::text::{Reason, Reference};
use crate::upcast;

pub const ACCOUNT_OPENED: &str = "AccountOpened";
pub const FUNDS_DEPOSITED: &str = "FundsDeposited";
pub const FUNDS_WITHDRAWN: &str = "FundsWithdrawn";
pub const TRANSFER_DEBITED: &str = "TransferDebited";
pub const TRANSFER_CREDITED: &str = "TransferCredited";
pub const TRANSFER_EXECUTED: &str = "TransferExecuted";
pub const ACCOUNT_FROZEN: &str = "AccountFrozen";
pub const ACCOUNT_UNFROZEN: &str = "AccountUnfrozen";
pub const ACCOUNT_CLOSED: &str = "AccountClosed";
pub const PERSONAL_DATA_ERASED: &str = "PersonalDataErased";
pub const TRANSFER_DEBIT_RESERVED: &str = "TransferDebitReserved";
pub const TRANSFER_CREDIT_RESERVED: &str = "TransferCreditReserved";
pub const PENDING_DEBIT_POSTED: &str = "PendingDebitPosted";
pub const PENDING_CREDIT_POSTED: &str = "PendingCreditPosted";
pub const PENDING_DEBIT_RELEASED: &str = "PendingDebitReleased";
pub const PENDING_CREDIT_RELEASED: &str = "PendingCreditReleased";
pub const TRANSFER_PENDING: &str = "TransferPending";
pub const TRANSFER_POSTED: &str = "TransferPosted";
pub const TRANSFER_VOIDED: &str = "TransferVoided";

/// Every event type name, as stored in `events.event_type`.
pub const EVENT_TYPES: &[&str] = &[
    ACCOUNT_OPENED,
    FUNDS_DEPOSITED,
    FUNDS_WITHDRAWN,
    TRANSFER_DEBITED,
    TRANSFER_CREDITED,
    TRANSFER_EXECUTED,
    ACCOUNT_FROZEN,
    ACCOUNT_UNFROZEN,
    ACCOUNT_CLOSED,
    PERSONAL_DATA_ERASED,
    TRANSFER_DEBIT_RESERVED,
    TRANSFER_CREDIT_RESERVED,
    PENDING_DEBIT_POSTED,
    PENDING_CREDIT_POSTED,
    PENDING_DEBIT_RELEASED,
    PENDING_CREDIT_RELEASED,
    TRANSFER_PENDING,
    TRANSFER_POSTED,
    TRANSFER_VOIDED,
];

/// The event types stored in transfer streams; every other type is an account event.
pub const TRANSFER_EVENT_TYPES: &[&str] = &[
    TRANSFER_EXECUTED,
    TRANSFER_PENDING,
    TRANSFER_POSTED,
    TRANSFER_VOIDED,
];

/// Something that happened to one account, in the stream `account-<uuid>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event_type", content = "data")]
pub enum AccountEvent {
    /// `owner` is the holder's name and email sealed under the account's own key
    /// (ciphertext only; [`crate::sealed`]). `None` for an event stored before owners
    /// were sealed (see [`crate::upcast`]): such a stream still folds.
    AccountOpened {
        account_id: AccountId,
        owner: Option<SealedOwner>,
        currency: Currency,
        overdraft_limit: OverdraftLimit,
    },
    FundsDeposited {
        account_id: AccountId,
        amount: Amount,
        reference: Option<Reference>,
    },
    FundsWithdrawn {
        account_id: AccountId,
        amount: Amount,
        reference: Option<Reference>,
    },
    /// The outgoing half of a transfer, on the paying account.
    TransferDebited {
        account_id: AccountId,
        transfer_id: TransferId,
        to_account_id: AccountId,
        amount: Amount,
        reference: Option<Reference>,
    },
    /// The incoming half of a transfer, on the receiving account.
    TransferCredited {
        account_id: AccountId,
        transfer_id: TransferId,
        from_account_id: AccountId,
        amount: Amount,
        reference: Option<Reference>,
    },
    AccountFrozen {
        account_id: AccountId,
        reason: Option<Reason>,
    },
    AccountUnfrozen {
        account_id: AccountId,
        reason: Option<Reason>,
    },
    AccountClosed {
        account_id: AccountId,
        reason: Option<Reason>,
    },
    /// The owner's name and email are gone; the account and its money history stay.
    PersonalDataErased { account_id: AccountId },
    /// A pending transfer reserved `amount` on the paying account: the balance is
    /// unchanged, the available balance is `amount` lower until it is posted or released.
    TransferDebitReserved {
        account_id: AccountId,
        transfer_id: TransferId,
        to_account_id: AccountId,
        amount: Amount,
        reference: Option<Reference>,
    },
    /// The receiving side of a pending transfer: `amount` may arrive; the balance is
    /// unchanged until it is posted.
    TransferCreditReserved {
        account_id: AccountId,
        transfer_id: TransferId,
        from_account_id: AccountId,
        amount: Amount,
        reference: Option<Reference>,
    },
    /// A pending transfer was posted: `amount` left the paying account and the whole
    /// `reserved` amount is no longer pending (`reserved - amount` was released).
    PendingDebitPosted {
        account_id: AccountId,
        transfer_id: TransferId,
        to_account_id: AccountId,
        amount: Amount,
        reserved: Amount,
        /// The transfer's reference, for the statement.
        reference: Option<Reference>,
    },
    /// A pending transfer was posted: `amount` arrived and `reserved` is no longer pending.
    PendingCreditPosted {
        account_id: AccountId,
        transfer_id: TransferId,
        from_account_id: AccountId,
        amount: Amount,
        reserved: Amount,
        /// The transfer's reference, for the statement.
        reference: Option<Reference>,
    },
    /// A pending transfer was voided or expired: its `amount` is no longer reserved.
    PendingDebitReleased {
        account_id: AccountId,
        transfer_id: TransferId,
        amount: Amount,
    },
    /// A pending transfer was voided or expired: its `amount` will not arrive.
    PendingCreditReleased {
        account_id: AccountId,
        transfer_id: TransferId,
        amount: Amount,
    },
}

/// Something that happened to a transfer, in the stream `transfer-<uuid>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event_type", content = "data")]
pub enum TransferEvent {
    /// Written in the same atomic append as its debit and credit; its presence is what
    /// makes a transfer id execute at most once.
    TransferExecuted {
        transfer_id: TransferId,
        from_account_id: AccountId,
        to_account_id: AccountId,
        amount: Amount,
        currency: Currency,
        reference: Option<Reference>,
    },
    /// A two-phase transfer reserved `amount` (in the same append as its
    /// `TransferDebitReserved` and `TransferCreditReserved`). `expires_at`: when the
    /// system voids it if it is still pending (RFC 3339, UTC), `None` for never.
    TransferPending {
        transfer_id: TransferId,
        from_account_id: AccountId,
        to_account_id: AccountId,
        amount: Amount,
        currency: Currency,
        reference: Option<Reference>,
        expires_at: Option<DateTime<Utc>>,
    },
    /// The pending transfer moved `posted_amount` (at most its amount; the rest was
    /// released).
    TransferPosted {
        transfer_id: TransferId,
        posted_amount: Amount,
    },
    /// The pending transfer was released whole: by a client (`expired: false`) or by
    /// the system at `expires_at` (`expired: true`).
    TransferVoided {
        transfer_id: TransferId,
        reason: Option<Reason>,
        expired: bool,
    },
}

/// Any event of the ledger, as read from the global log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LedgerEvent {
    Account(AccountEvent),
    Transfer(TransferEvent),
}

/// An event in its stored form: what goes into the `event_type`, `schema_version` and
/// `data` columns and into the NATS envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct EventData {
    pub event_type: &'static str,
    pub schema_version: i32,
    /// The JSON object of the event's fields, without a type tag.
    pub data: Value,
}

/// Writes a value as its stored JSON. Infallible, unlike `serde_json::to_value`, because
/// every stored value is a number, a string, null or an object of those.
trait ToStored {
    fn to_stored(&self) -> Value;
}

impl ToStored for AccountId {
    fn to_stored(&self) -> Value {
        Value::String(self.to_string())
    }
}

impl ToStored for TransferId {
    fn to_stored(&self) -> Value {
        Value::String(self.to_string())
    }
}

impl ToStored for Amount {
    fn to_stored(&self) -> Value {
        Value::from(self.get())
    }
}

impl ToStored for OverdraftLimit {
    fn to_stored(&self) -> Value {
        Value::from(self.get())
    }
}

impl ToStored for Currency {
    fn to_stored(&self) -> Value {
        Value::String(self.as_str().to_owned())
    }
}

impl ToStored for Reference {
    fn to_stored(&self) -> Value {
        Value::String(self.as_str().to_owned())
    }
}

impl ToStored for Reason {
    fn to_stored(&self) -> Value {
        Value::String(self.as_str().to_owned())
    }
}

impl ToStored for SealedText {
    fn to_stored(&self) -> Value {
        Value::String(self.as_str().to_owned())
    }
}

impl ToStored for SealedOwner {
    fn to_stored(&self) -> Value {
        object([("name", self.name.to_stored()), ("email", self.email.to_stored())])
    }
}

impl ToStored for DateTime<Utc> {
    fn to_stored(&self) -> Value {
        // Serde's own form (RFC 3339, `Z`, as many fraction digits as needed), so that
        // reading it back gives the same instant.
        Value::String(self.to_rfc3339_opts(SecondsFormat::AutoSi, true))
    }
}

impl ToStored for bool {
    fn to_stored(&self) -> Value {
        Value::Bool(*self)
    }
}

impl<T: ToStored> ToStored for Option<T> {
    fn to_stored(&self) -> Value {
        self.as_ref().map_or(Value::Null, ToStored::to_stored)
    }
}

fn object<const N: usize>(fields: [(&str, Value); N]) -> Value {
    Value::Object(
        fields
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect::<Map<String, Value>>(),
    )
}

impl AccountEvent {
    /// The event's type name, as stored.
    pub fn event_type(&self) -> &'static str {
        match self {
            AccountEvent::AccountOpened { .. } => ACCOUNT_OPENED,
            AccountEvent::FundsDeposited { .. } => FUNDS_DEPOSITED,
            AccountEvent::FundsWithdrawn { .. } => FUNDS_WITHDRAWN,
            AccountEvent::TransferDebited { .. } => TRANSFER_DEBITED,
            AccountEvent::TransferCredited { .. } => TRANSFER_CREDITED,
            AccountEvent::AccountFrozen { .. } => ACCOUNT_FROZEN,
            AccountEvent::AccountUnfrozen { .. } => ACCOUNT_UNFROZEN,
            AccountEvent::AccountClosed { .. } => ACCOUNT_CLOSED,
            AccountEvent::PersonalDataErased { .. } => PERSONAL_DATA_ERASED,
            AccountEvent::TransferDebitReserved { .. } => TRANSFER_DEBIT_RESERVED,
            AccountEvent::TransferCreditReserved { .. } => TRANSFER_CREDIT_RESERVED,
            AccountEvent::PendingDebitPosted { .. } => PENDING_DEBIT_POSTED,
            AccountEvent::PendingCreditPosted { .. } => PENDING_CREDIT_POSTED,
            AccountEvent::PendingDebitReleased { .. } => PENDING_DEBIT_RELEASED,
            AccountEvent::PendingCreditReleased { .. } => PENDING_CREDIT_RELEASED,
        }
    }

    /// The account whose stream holds this event.
    pub fn account_id(&self) -> AccountId {
        match self {
            AccountEvent::AccountOpened { account_id, .. }
            | AccountEvent::FundsDeposited { account_id, .. }
            | AccountEvent::FundsWithdrawn { account_id, .. }
            | AccountEvent::TransferDebited { account_id, .. }
            | AccountEvent::TransferCredited { account_id, .. }
            | AccountEvent::AccountFrozen { account_id, .. }
            | AccountEvent::AccountUnfrozen { account_id, .. }
            | AccountEvent::AccountClosed { account_id, .. }
            | AccountEvent::PersonalDataErased { account_id }
            | AccountEvent::TransferDebitReserved { account_id, .. }
            | AccountEvent::TransferCreditReserved { account_id, .. }
            | AccountEvent::PendingDebitPosted { account_id, .. }
            | AccountEvent::PendingCreditPosted { account_id, .. }
            | AccountEvent::PendingDebitReleased { account_id, .. }
            | AccountEvent::PendingCreditReleased { account_id, .. } => *account_id,
        }
    }

    /// The id of the stream that holds this event, `account-<uuid>`.
    pub fn stream_id(&self) -> String {
        self.account_id().stream_id()
    }

    /// The stored form, at the current schema version.
    pub fn to_stored(&self) -> EventData {
        let data = match self {
            AccountEvent::AccountOpened {
                account_id,
                owner,
                currency,
                overdraft_limit,
            } => object([
                ("account_id", account_id.to_stored()),
                ("owner", owner.to_stored()),
                ("currency", currency.to_stored()),
                ("overdraft_limit", overdraft_limit.to_stored()),
            ]),
            AccountEvent::FundsDeposited {
                account_id,
                amount,
                reference,
            }
            | AccountEvent::FundsWithdrawn {
                account_id,
                amount,
                reference,
            } => object([
                ("account_id", account_id.to_stored()),
                ("amount", amount.to_stored()),
                ("reference", reference.to_stored()),
            ]),
            AccountEvent::TransferDebited {
                account_id,
                transfer_id,
                to_account_id,
                amount,
                reference,
            }
            | AccountEvent::TransferDebitReserved {
                account_id,
                transfer_id,
                to_account_id,
                amount,
                reference,
            } => object([
                ("account_id", account_id.to_stored()),
                ("transfer_id", transfer_id.to_stored()),
                ("to_account_id", to_account_id.to_stored()),
                ("amount", amount.to_stored()),
                ("reference", reference.to_stored()),
            ]),
            AccountEvent::TransferCredited {
                account_id,
                transfer_id,
                from_account_id,
                amount,
                reference,
            }
            | AccountEvent::TransferCreditReserved {
                account_id,
                transfer_id,
                from_account_id,
                amount,
                reference,
            } => object([
                ("account_id", account_id.to_stored()),
                ("transfer_id", transfer_id.to_stored()),
                ("from_account_id", from_account_id.to_stored()),
                ("amount", amount.to_stored()),
                ("reference", reference.to_stored()),
            ]),
            AccountEvent::AccountFrozen { account_id, reason }
            | AccountEvent::AccountUnfrozen { account_id, reason }
            | AccountEvent::AccountClosed { account_id, reason } => object([
                ("account_id", account_id.to_stored()),
                ("reason", reason.to_stored()),
            ]),
            AccountEvent::PersonalDataErased { account_id } => {
                object([("account_id", account_id.to_stored())])
            }
            AccountEvent::PendingDebitPosted {
                account_id,
                transfer_id,
                to_account_id,
                amount,
                reserved,
                reference,
            } => object([
                ("account_id", account_id.to_stored()),
                ("transfer_id", transfer_id.to_stored()),
                ("to_account_id", to_account_id.to_stored()),
                ("amount", amount.to_stored()),
                ("reserved", reserved.to_stored()),
                ("reference", reference.to_stored()),
            ]),
            AccountEvent::PendingCreditPosted {
                account_id,
                transfer_id,
                from_account_id,
                amount,
                reserved,
                reference,
            } => object([
                ("account_id", account_id.to_stored()),
                ("transfer_id", transfer_id.to_stored()),
                ("from_account_id", from_account_id.to_stored()),
                ("amount", amount.to_stored()),
                ("reserved", reserved.to_stored()),
                ("reference", reference.to_stored()),
            ]),
            AccountEvent::PendingDebitReleased {
                account_id,
                transfer_id,
                amount,
            }
            | AccountEvent::PendingCreditReleased {
                account_id,
                transfer_id,
                amount,
            } => object([
                ("account_id", account_id.to_stored()),
                ("transfer_id", transfer_id.to_stored()),
                ("amount", amount.to_stored()),
            ]),
        };
        stored(self.event_type(), data)
    }
}

impl TransferEvent {
    /// The event's type name, as stored.
    pub fn event_type(&self) -> &'static str {
        match self {
            TransferEvent::TransferExecuted { .. } => TRANSFER_EXECUTED,
            TransferEvent::TransferPending { .. } => TRANSFER_PENDING,
            TransferEvent::TransferPosted { .. } => TRANSFER_POSTED,
            TransferEvent::TransferVoided { .. } => TRANSFER_VOIDED,
        }
    }

    /// The transfer whose stream holds this event.
    pub fn transfer_id(&self) -> TransferId {
        match self {
            TransferEvent::TransferExecuted { transfer_id, .. }
            | TransferEvent::TransferPending { transfer_id, .. }
            | TransferEvent::TransferPosted { transfer_id, .. }
            | TransferEvent::TransferVoided { transfer_id, .. } => *transfer_id,
        }
    }

    /// The id of the stream that holds this event, `transfer-<uuid>`.
    pub fn stream_id(&self) -> String {
        self.transfer_id().stream_id()
    }

    /// The stored form, at the current schema version.
    pub fn to_stored(&self) -> EventData {
        let data = match self {
            TransferEvent::TransferExecuted {
                transfer_id,
                from_account_id,
                to_account_id,
                amount,
                currency,
                reference,
            } => object([
                ("transfer_id", transfer_id.to_stored()),
                ("from_account_id", from_account_id.to_stored()),
                ("to_account_id", to_account_id.to_stored()),
                ("amount", amount.to_stored()),
                ("currency", currency.to_stored()),
                ("reference", reference.to_stored()),
            ]),
            TransferEvent::TransferPending {
                transfer_id,
                from_account_id,
                to_account_id,
                amount,
                currency,
                reference,
                expires_at,
            } => object([
                ("transfer_id", transfer_id.to_stored()),
                ("from_account_id", from_account_id.to_stored()),
                ("to_account_id", to_account_id.to_stored()),
                ("amount", amount.to_stored()),
                ("currency", currency.to_stored()),
                ("reference", reference.to_stored()),
                ("expires_at", expires_at.to_stored()),
            ]),
            TransferEvent::TransferPosted {
                transfer_id,
                posted_amount,
            } => object([
                ("transfer_id", transfer_id.to_stored()),
                ("posted_amount", posted_amount.to_stored()),
            ]),
            TransferEvent::TransferVoided {
                transfer_id,
                reason,
                expired,
            } => object([
                ("transfer_id", transfer_id.to_stored()),
                ("reason", reason.to_stored()),
                ("expired", expired.to_stored()),
            ]),
        };
        stored(self.event_type(), data)
    }
}

/// Pairs data with its type and that type's current schema version.
fn stored(event_type: &'static str, data: Value) -> EventData {
    EventData {
        event_type,
        // Every type in EVENT_TYPES has a current version (tested in upcast); 1 is the
        // first version of any type, never a guess about a later one.
        schema_version: upcast::current_schema_version(event_type).unwrap_or(1),
        data,
    }
}

impl LedgerEvent {
    /// The event's type name, as stored.
    pub fn event_type(&self) -> &'static str {
        match self {
            LedgerEvent::Account(event) => event.event_type(),
            LedgerEvent::Transfer(event) => event.event_type(),
        }
    }

    /// The stream that holds this event.
    pub fn stream(&self) -> StreamRef {
        match self {
            LedgerEvent::Account(event) => StreamRef::Account(event.account_id()),
            LedgerEvent::Transfer(event) => StreamRef::Transfer(event.transfer_id()),
        }
    }

    /// The id of the stream that holds this event.
    pub fn stream_id(&self) -> String {
        self.stream().stream_id()
    }

    /// The stored form, at the current schema version.
    pub fn to_stored(&self) -> EventData {
        match self {
            LedgerEvent::Account(event) => event.to_stored(),
            LedgerEvent::Transfer(event) => event.to_stored(),
        }
    }

    /// Reads a stored event, upcasting an older schema version to the current one first.
    pub fn from_stored(
        event_type: &str,
        schema_version: i32,
        data: Value,
    ) -> Result<LedgerEvent, DecodeError> {
        let invalid = |message: String| DecodeError::InvalidData {
            event_type: event_type.to_owned(),
            schema_version,
            message,
        };
        let data = upcast::upcast(event_type, schema_version, data)?;
        // Serde would also read a struct from a JSON array of its fields; the stored form
        // is an object, and anything else is corruption, not an alternative spelling.
        if !data.is_object() {
            return Err(invalid("data must be a JSON object".to_owned()));
        }
        let tagged = object([
            ("event_type", Value::String(event_type.to_owned())),
            ("data", data),
        ]);
        let event = if TRANSFER_EVENT_TYPES.contains(&event_type) {
            serde_json::from_value(tagged).map(LedgerEvent::Transfer)
        } else {
            serde_json::from_value(tagged).map(LedgerEvent::Account)
        };
        event.map_err(|error| invalid(error.to_string()))
    }
}

impl From<AccountEvent> for LedgerEvent {
    fn from(event: AccountEvent) -> Self {
        LedgerEvent::Account(event)
    }
}

impl From<TransferEvent> for LedgerEvent {
    fn from(event: TransferEvent) -> Self {
        LedgerEvent::Transfer(event)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashSet;
    use uuid::Uuid;

    fn account(n: u128) -> AccountId {
        AccountId::from(Uuid::from_u128(n))
    }

    fn eur() -> Currency {
        Currency::parse("EUR").expect("EUR is a currency")
    }

    fn amount(minor_units: i64) -> Amount {
        Amount::new(minor_units).expect("valid amount")
    }

    /// An owner as the vault would have sealed it (the domain cannot tell the difference).
    pub(crate) fn sealed_owner() -> SealedOwner {
        SealedOwner {
            name: SealedText::parse("pii:v1:c2VhbGVkIG5hbWU=").expect("valid sealed text"),
            email: SealedText::parse("pii:v1:c2VhbGVkIGVtYWls").expect("valid sealed text"),
        }
    }

    /// One event of every type, with optional fields both set and unset.
    pub(crate) fn one_of_every_event() -> Vec<LedgerEvent> {
        let reference = Some(Reference::parse("rent").expect("valid reference"));
        let reason = Some(Reason::parse("fraud check").expect("valid reason"));
        let transfer = TransferId::from(Uuid::from_u128(99));
        vec![
            AccountEvent::AccountOpened {
                account_id: account(1),
                owner: Some(sealed_owner()),
                currency: eur(),
                overdraft_limit: OverdraftLimit::new(500).expect("valid limit"),
            }
            .into(),
            AccountEvent::AccountOpened {
                account_id: account(1),
                owner: None,
                currency: eur(),
                overdraft_limit: OverdraftLimit::ZERO,
            }
            .into(),
            AccountEvent::FundsDeposited {
                account_id: account(1),
                amount: amount(1250),
                reference: reference.clone(),
            }
            .into(),
            AccountEvent::FundsWithdrawn {
                account_id: account(1),
                amount: Amount::MAX,
                reference: None,
            }
            .into(),
            AccountEvent::TransferDebited {
                account_id: account(1),
                transfer_id: transfer,
                to_account_id: account(2),
                amount: amount(7),
                reference: reference.clone(),
            }
            .into(),
            AccountEvent::TransferCredited {
                account_id: account(2),
                transfer_id: transfer,
                from_account_id: account(1),
                amount: amount(7),
                reference: None,
            }
            .into(),
            AccountEvent::AccountFrozen {
                account_id: account(1),
                reason: reason.clone(),
            }
            .into(),
            AccountEvent::AccountUnfrozen {
                account_id: account(1),
                reason: None,
            }
            .into(),
            AccountEvent::AccountClosed {
                account_id: account(1),
                reason,
            }
            .into(),
            AccountEvent::PersonalDataErased {
                account_id: account(1),
            }
            .into(),
            AccountEvent::TransferDebitReserved {
                account_id: account(1),
                transfer_id: transfer,
                to_account_id: account(2),
                amount: amount(9),
                reference: reference.clone(),
            }
            .into(),
            AccountEvent::TransferCreditReserved {
                account_id: account(2),
                transfer_id: transfer,
                from_account_id: account(1),
                amount: amount(9),
                reference: None,
            }
            .into(),
            AccountEvent::PendingDebitPosted {
                account_id: account(1),
                transfer_id: transfer,
                to_account_id: account(2),
                amount: amount(4),
                reserved: amount(9),
                reference: reference.clone(),
            }
            .into(),
            AccountEvent::PendingCreditPosted {
                account_id: account(2),
                transfer_id: transfer,
                from_account_id: account(1),
                amount: amount(4),
                reserved: amount(9),
                reference: None,
            }
            .into(),
            AccountEvent::PendingDebitReleased {
                account_id: account(1),
                transfer_id: transfer,
                amount: amount(9),
            }
            .into(),
            AccountEvent::PendingCreditReleased {
                account_id: account(2),
                transfer_id: transfer,
                amount: amount(9),
            }
            .into(),
            TransferEvent::TransferPending {
                transfer_id: transfer,
                from_account_id: account(1),
                to_account_id: account(2),
                amount: amount(9),
                currency: eur(),
                reference: reference.clone(),
                expires_at: DateTime::parse_from_rfc3339("2026-11-30T18:00:00.123456Z")
                    .ok()
                    .map(|at| at.with_timezone(&Utc)),
            }
            .into(),
            TransferEvent::TransferPending {
                transfer_id: transfer,
                from_account_id: account(1),
                to_account_id: account(2),
                amount: amount(9),
                currency: eur(),
                reference: None,
                expires_at: None,
            }
            .into(),
            TransferEvent::TransferPosted {
                transfer_id: transfer,
                posted_amount: amount(4),
            }
            .into(),
            TransferEvent::TransferVoided {
                transfer_id: transfer,
                reason: Some(Reason::parse("customer cancelled").expect("valid reason")),
                expired: false,
            }
            .into(),
            TransferEvent::TransferVoided {
                transfer_id: transfer,
                reason: None,
                expired: true,
            }
            .into(),
            TransferEvent::TransferExecuted {
                transfer_id: transfer,
                from_account_id: account(1),
                to_account_id: account(2),
                amount: amount(7),
                currency: eur(),
                reference,
            }
            .into(),
        ]
    }

    #[test]
    fn every_event_survives_a_round_trip_through_its_stored_form() {
        for event in one_of_every_event() {
            let stored = event.to_stored();
            let read = LedgerEvent::from_stored(stored.event_type, stored.schema_version, stored.data);
            assert_eq!(read.as_ref(), Ok(&event), "{event:?}");
        }
    }

    #[test]
    fn stored_data_is_the_untagged_fields_serde_writes() {
        for event in one_of_every_event() {
            let stored = event.to_stored();
            let tagged = serde_json::to_value(&event).expect("events serialise");
            assert_eq!(tagged["event_type"], json!(stored.event_type));
            assert_eq!(tagged["data"], stored.data, "{event:?}");
            assert!(stored.data.get("event_type").is_none());
        }
    }

    #[test]
    fn every_event_type_is_listed_once_and_every_listed_type_is_used() {
        let used: HashSet<&str> = one_of_every_event().iter().map(LedgerEvent::event_type).collect();
        let listed: HashSet<&str> = EVENT_TYPES.iter().copied().collect();
        assert_eq!(listed.len(), EVENT_TYPES.len(), "duplicates in EVENT_TYPES");
        assert_eq!(used, listed);
    }

    #[test]
    fn account_opened_is_stored_with_a_nested_sealed_owner_at_schema_3() {
        let stored = one_of_every_event()[0].to_stored();
        assert_eq!(stored.event_type, "AccountOpened");
        assert_eq!(stored.schema_version, 3);
        assert_eq!(
            stored.data,
            json!({
                "account_id": account(1).to_string(),
                "owner": {"name": "pii:v1:c2VhbGVkIG5hbWU=", "email": "pii:v1:c2VhbGVkIGVtYWls"},
                "currency": "EUR",
                "overdraft_limit": 500,
            })
        );
    }

    #[test]
    fn account_opened_with_no_owner_decodes_with_no_owner() {
        let data = json!({
            "account_id": account(1).to_string(),
            "owner": null,
            "currency": "EUR",
            "overdraft_limit": 0,
        });
        let event = LedgerEvent::from_stored(ACCOUNT_OPENED, 3, data);
        assert!(matches!(
            event,
            Ok(LedgerEvent::Account(AccountEvent::AccountOpened {
                owner: None,
                ..
            }))
        ));
    }

    #[test]
    fn account_opened_with_a_plaintext_owner_at_schema_3_is_a_decode_error() {
        let data = json!({
            "account_id": account(1).to_string(),
            "owner": {"name": "Ada Lovelace", "email": "ada@example.com"},
            "currency": "EUR",
            "overdraft_limit": 0,
        });
        assert!(matches!(
            LedgerEvent::from_stored(ACCOUNT_OPENED, 3, data),
            Err(DecodeError::InvalidData { .. })
        ));
    }

    #[test]
    fn events_know_their_stream() {
        for event in one_of_every_event() {
            let stream_id = event.stream_id();
            assert_eq!(crate::parse_stream_id(&stream_id), Some(event.stream()));
        }
        let transfer = one_of_every_event().pop().expect("a transfer event");
        assert_eq!(transfer.stream().category(), "transfer");
    }

    #[test]
    fn unknown_event_type_is_a_decode_error() {
        let error = LedgerEvent::from_stored("AccountRenamed", 1, json!({}));
        assert_eq!(
            error,
            Err(DecodeError::UnknownEventType {
                event_type: "AccountRenamed".to_owned()
            })
        );
    }

    #[test]
    fn future_schema_version_is_a_decode_error() {
        let error = LedgerEvent::from_stored(FUNDS_DEPOSITED, 2, json!({}));
        assert!(matches!(
            error,
            Err(DecodeError::UnsupportedSchemaVersion {
                schema_version: 2,
                current: 1,
                ..
            })
        ));
    }

    #[test]
    fn data_that_does_not_fit_is_a_decode_error() {
        let id = account(1).to_string();
        for (event_type, data) in [
            (FUNDS_DEPOSITED, json!({"account_id": id, "amount": 0})),
            (FUNDS_DEPOSITED, json!({"account_id": id})),
            (FUNDS_DEPOSITED, json!({"account_id": "x", "amount": 5})),
            (FUNDS_DEPOSITED, json!([id, 5, null])),
            (FUNDS_DEPOSITED, json!(null)),
            (ACCOUNT_CLOSED, json!("closed")),
            (TRANSFER_EXECUTED, json!({"transfer_id": id})),
            (
                ACCOUNT_OPENED,
                json!({"account_id": id, "owner": null, "currency": "EUR"}),
            ),
        ] {
            let version = upcast::current_schema_version(event_type).unwrap_or(1);
            let error = LedgerEvent::from_stored(event_type, version, data.clone());
            assert!(
                matches!(error, Err(DecodeError::InvalidData { .. })),
                "{event_type} {data}: {error:?}"
            );
        }
    }
}
