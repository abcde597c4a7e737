//! Every way the domain refuses something, as types.
//!
//! Four different failures, kept apart because callers answer them differently:
//! - [`ValidationError`]: a raw value (an amount, an email) is not a valid newtype; the
//!   client sent bad input.
//! - [`DomainError`]: a well-formed command breaks a business rule; the client asked for
//!   something the ledger does not allow. Each cause has a stable [`DomainError::code`]
//!   that the HTTP layer turns into its problem `type`.
//! - [`EvolveError`]: an event cannot follow the state built so far; the stream is
//!   corrupt. Folding stops instead of guessing.
//! - [`DecodeError`]: a stored event cannot be read back (unknown type, a schema version
//!   from the future, data that does not fit).

use crate::ids::{AccountId, TransferId};
use crate::money::{Amount, Balance, Currency, OverdraftLimit};

/// A raw value that does not make a valid domain value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// The field the value was meant for, as the client named it (`amount`, `email`).
    pub field: &'static str,
    /// What is wrong with it, for a human.
    pub message: String,
}

impl ValidationError {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// A command refused because it breaks a rule of the ledger.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// A value in the command is invalid. Commands are built from validated newtypes, so
    /// the domain itself never returns this; it lets callers carry parsing failures in
    /// the same error type.
    #[error(transparent)]
    Validation(#[from] ValidationError),

    /// The command addresses an account that was never opened. `account_id` is `None`
    /// only from [`crate::Account::decide`] on a missing state, where the caller already
    /// knows which account it addressed; a transfer always names the missing side.
    #[error("{}", account_not_found_message(.account_id))]
    AccountNotFound { account_id: Option<AccountId> },

    /// An `Open` command for an account id that is already taken.
    #[error("account {account_id} already exists")]
    AccountAlreadyExists { account_id: AccountId },

    /// A frozen account accepts no money movement, in or out.
    #[error("account {account_id} is frozen")]
    AccountFrozen { account_id: AccountId },

    /// A closed account accepts nothing any more, except erasing its personal data.
    #[error("account {account_id} is closed")]
    AccountClosed { account_id: AccountId },

    /// Freezing an account that is already frozen.
    #[error("account {account_id} is already frozen")]
    AccountAlreadyFrozen { account_id: AccountId },

    /// Unfreezing an account that is not frozen.
    #[error("account {account_id} is not frozen")]
    AccountNotFrozen { account_id: AccountId },

    /// The debit would take the available balance (`balance - pending_debits`) below
    /// `-overdraft_limit`.
    #[error(
        "insufficient funds on account {account_id}: balance {balance}, of it reserved by pending transfers {pending_debits}, requested {requested}, overdraft limit {overdraft_limit}"
    )]
    InsufficientFunds {
        account_id: AccountId,
        balance: Balance,
        /// What pending transfers out of the account reserved (not available).
        pending_debits: Balance,
        requested: Amount,
        overdraft_limit: OverdraftLimit,
    },

    /// An account closes only at balance 0, so no money disappears with it.
    #[error("account {account_id} cannot close with balance {balance}")]
    BalanceNotZero { account_id: AccountId, balance: Balance },

    /// The movement would take the balance past what a balance can hold.
    #[error("balance of account {account_id} would overflow")]
    BalanceOverflow { account_id: AccountId },

    /// A transfer moves money only between accounts of one currency.
    #[error("currency mismatch: from {from}, to {to}")]
    CurrencyMismatch { from: Currency, to: Currency },

    /// A transfer from an account to itself.
    #[error("a transfer needs two different accounts, got {account_id} twice")]
    SameAccount { account_id: AccountId },

    /// A transfer id executes at most once.
    #[error("transfer {transfer_id} already exists: a transfer id is used for one transfer only")]
    TransferAlreadyExecuted { transfer_id: TransferId },

    /// Erasing personal data that is already erased.
    #[error("personal data of account {account_id} is already erased")]
    PersonalDataAlreadyErased { account_id: AccountId },

    /// Posting or voiding a transfer id that has no transfer.
    #[error("transfer {transfer_id} not found")]
    TransferNotFound { transfer_id: TransferId },

    /// Posting or voiding a transfer that is not pending any more (posted, voided, or
    /// executed in one step).
    #[error("transfer {transfer_id} is not pending")]
    TransferNotPending { transfer_id: TransferId },

    /// Posting (or voiding) a pending transfer whose `expires_at` has passed: the system
    /// voids it, or already did.
    #[error("transfer {transfer_id} expired")]
    TransferExpired { transfer_id: TransferId },

    /// Posting more than the pending transfer reserved.
    #[error("transfer {transfer_id}: posting {requested} exceeds the pending amount {pending}")]
    AmountExceedsPending {
        transfer_id: TransferId,
        requested: Amount,
        pending: Amount,
    },

    /// The system's expiry of a transfer whose `expires_at` has not passed (another
    /// instance's clock ahead of this one's).
    #[error("transfer {transfer_id} is not due to expire yet")]
    TransferNotDue { transfer_id: TransferId },

    /// An account with pending transfers (either side) does not close: their money
    /// could neither leave nor arrive.
    #[error(
        "account {account_id} has pending transfers (pending debits {pending_debits}, pending credits {pending_credits})"
    )]
    PendingTransfers {
        account_id: AccountId,
        pending_debits: Balance,
        pending_credits: Balance,
    },

    /// The caller passed the state of another account than the command names. A bug in
    /// the caller, not the client's fault; refused so it cannot write wrong events.
    #[error("state of account {found} was given for account {expected}")]
    AccountStateMismatch { expected: AccountId, found: AccountId },
}

fn account_not_found_message(account_id: &Option<AccountId>) -> String {
    match account_id {
        Some(id) => format!("account {id} not found"),
        None => "account not found".to_owned(),
    }
}

impl DomainError {
    /// A stable kebab-case identifier of the cause, for problem `type` URIs, metrics and
    /// clients. Never change one: clients match on them.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Validation(_) => "validation",
            Self::AccountNotFound { .. } => "account-not-found",
            Self::AccountAlreadyExists { .. } => "account-already-exists",
            Self::AccountFrozen { .. } => "account-frozen",
            Self::AccountClosed { .. } => "account-closed",
            Self::AccountAlreadyFrozen { .. } => "account-already-frozen",
            Self::AccountNotFrozen { .. } => "account-not-frozen",
            Self::InsufficientFunds { .. } => "insufficient-funds",
            Self::BalanceNotZero { .. } => "balance-not-zero",
            Self::BalanceOverflow { .. } => "balance-overflow",
            Self::CurrencyMismatch { .. } => "currency-mismatch",
            Self::SameAccount { .. } => "same-account",
            Self::TransferAlreadyExecuted { .. } => "transfer-already-executed",
            Self::PersonalDataAlreadyErased { .. } => "personal-data-already-erased",
            Self::AccountStateMismatch { .. } => "account-state-mismatch",
            Self::TransferNotFound { .. } => "transfer-not-found",
            Self::TransferNotPending { .. } => "transfer-not-pending",
            Self::TransferExpired { .. } => "transfer-expired",
            Self::AmountExceedsPending { .. } => "amount-exceeds-pending",
            Self::TransferNotDue { .. } => "transfer-not-due",
            Self::PendingTransfers { .. } => "pending-transfers",
        }
    }
}

/// An event that cannot follow the state built so far: the stream is corrupt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvolveError {
    /// An account event other than `AccountOpened` on an account that was never opened.
    #[error("{event_type} on account {account_id}, which was never opened")]
    NotOpened {
        account_id: AccountId,
        event_type: &'static str,
    },

    /// A second `AccountOpened` in one stream.
    #[error("account {account_id} opened twice")]
    AlreadyOpened { account_id: AccountId },

    /// An event of another account in this account's stream.
    #[error("event {event_type} of account {found} in the stream of account {expected}")]
    WrongAccount {
        expected: AccountId,
        found: AccountId,
        event_type: &'static str,
    },

    /// Closed is final: only erasing personal data may follow `AccountClosed`.
    #[error("{event_type} on account {account_id} after it was closed")]
    AfterClose {
        account_id: AccountId,
        event_type: &'static str,
    },

    /// The event's amount does not fit the balance: the stream could not have been
    /// decided by these rules.
    #[error("{event_type} overflows the balance of account {account_id}")]
    BalanceOverflow {
        account_id: AccountId,
        event_type: &'static str,
    },

    /// A second `TransferExecuted` in one transfer stream.
    #[error("transfer {transfer_id} executed twice")]
    TransferAlreadyExecuted { transfer_id: TransferId },

    /// A transfer event that cannot follow the transfer's state (a post or void of a
    /// transfer that is not pending, or one before the transfer began).
    #[error("{event_type} on transfer {transfer_id}, which is not pending")]
    TransferNotPending {
        transfer_id: TransferId,
        event_type: &'static str,
    },

    /// A posted or released amount that the account's pending amounts cannot cover, or a
    /// post larger than its reservation.
    #[error("{event_type} does not fit the pending amounts of account {account_id}")]
    PendingMismatch {
        account_id: AccountId,
        event_type: &'static str,
    },
}

/// A stored event that cannot be read back into a [`crate::LedgerEvent`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// No event of this type exists (a typo, or a type from a newer release).
    #[error("unknown event type {event_type:?}")]
    UnknownEventType { event_type: String },

    /// A schema version this release cannot read: newer than the current one (written
    /// by a newer release) or below 1.
    #[error("{event_type} schema version {schema_version} is not supported (current is {current})")]
    UnsupportedSchemaVersion {
        event_type: String,
        schema_version: i32,
        current: i32,
    },

    /// The data does not fit the event's schema.
    #[error("{event_type} schema version {schema_version} has invalid data: {message}")]
    InvalidData {
        event_type: String,
        schema_version: i32,
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use uuid::Uuid;

    fn account() -> AccountId {
        AccountId::from(Uuid::nil())
    }

    #[test]
    fn every_domain_error_has_a_distinct_kebab_case_code() {
        let id = account();
        let errors = [
            DomainError::Validation(ValidationError::new("amount", "must be positive")),
            DomainError::AccountNotFound { account_id: Some(id) },
            DomainError::AccountAlreadyExists { account_id: id },
            DomainError::AccountFrozen { account_id: id },
            DomainError::AccountClosed { account_id: id },
            DomainError::AccountAlreadyFrozen { account_id: id },
            DomainError::AccountNotFrozen { account_id: id },
            DomainError::InsufficientFunds {
                account_id: id,
                balance: Balance::ZERO,
                pending_debits: Balance::ZERO,
                requested: Amount::MAX,
                overdraft_limit: OverdraftLimit::ZERO,
            },
            DomainError::BalanceNotZero {
                account_id: id,
                balance: Balance::ZERO,
            },
            DomainError::BalanceOverflow { account_id: id },
            DomainError::CurrencyMismatch {
                from: Currency::parse("EUR").expect("EUR is a currency"),
                to: Currency::parse("USD").expect("USD is a currency"),
            },
            DomainError::SameAccount { account_id: id },
            DomainError::TransferAlreadyExecuted {
                transfer_id: TransferId::from(Uuid::nil()),
            },
            DomainError::PersonalDataAlreadyErased { account_id: id },
            DomainError::AccountStateMismatch {
                expected: id,
                found: id,
            },
            DomainError::TransferNotFound {
                transfer_id: TransferId::from(Uuid::nil()),
            },
            DomainError::TransferNotPending {
                transfer_id: TransferId::from(Uuid::nil()),
            },
            DomainError::TransferExpired {
                transfer_id: TransferId::from(Uuid::nil()),
            },
            DomainError::AmountExceedsPending {
                transfer_id: TransferId::from(Uuid::nil()),
                requested: Amount::MAX,
                pending: Amount::MAX,
            },
            DomainError::TransferNotDue {
                transfer_id: TransferId::from(Uuid::nil()),
            },
            DomainError::PendingTransfers {
                account_id: id,
                pending_debits: Balance::ZERO,
                pending_credits: Balance::ZERO,
            },
        ];
        let codes: HashSet<&str> = errors.iter().map(DomainError::code).collect();
        assert_eq!(codes.len(), errors.len());
        for code in codes {
            assert!(
                code.chars().all(|c| c.is_ascii_lowercase() || c == '-'),
                "{code} is not kebab-case"
            );
        }
    }

    #[test]
    fn account_not_found_names_the_account() {
        let error = DomainError::AccountNotFound {
            account_id: Some(account()),
        };
        assert!(error.to_string().contains(&Uuid::nil().to_string()));
    }

    #[test]
    fn validation_error_displays_field_and_message() {
        let error = ValidationError::new("amount", "must be positive");
        assert_eq!(error.to_string(), "amount: must be positive");
    }
}
