//! Moving money between two accounts, decided over three streams at once.
//!
//! A transfer touches the paying account, the receiving account and its own stream
//! `transfer-<uuid>`. It is decided here from all three states and answered with one
//! event per stream, which the event store appends atomically with the expected
//! version of each stream: either all three are written or none. The transfer stream's
//! single `TransferExecuted` is what makes a transfer id execute at most once.

use serde::{Deserialize, Serialize};

use crate::account::Account;
use crate::error::{DomainError, EvolveError};
use crate::event::{AccountEvent, LedgerEvent, TransferEvent};
use crate::ids::{AccountId, TransferId};
use crate::money::{Amount, Currency};
use crate::text::Reference;

/// An executed transfer, as folded from its stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    pub id: TransferId,
    pub from: AccountId,
    pub to: AccountId,
    pub amount: Amount,
    pub currency: Currency,
    pub reference: Option<Reference>,
}

/// A request to move `amount` from one account to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferCommand {
    pub id: TransferId,
    pub from: AccountId,
    pub to: AccountId,
    pub amount: Amount,
    pub reference: Option<Reference>,
}

/// The three events of an accepted transfer, one per stream, to append atomically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferDecision {
    /// `TransferDebited`, for the stream of `from`.
    pub debit: AccountEvent,
    /// `TransferCredited`, for the stream of `to`.
    pub credit: AccountEvent,
    /// `TransferExecuted`, for the transfer's own stream.
    pub executed: TransferEvent,
}

impl TransferDecision {
    /// The three events in the order they are appended: debit, credit, executed.
    pub fn into_events(self) -> [LedgerEvent; 3] {
        [
            LedgerEvent::Account(self.debit),
            LedgerEvent::Account(self.credit),
            LedgerEvent::Transfer(self.executed),
        ]
    }
}

/// Decides a transfer from the states of its three streams.
///
/// `existing` is the transfer's state (`Some` if this id already executed); `from` and
/// `to` are the states of the accounts the command names (`None` if never opened).
pub fn decide_transfer(
    existing: Option<&Transfer>,
    from: Option<&Account>,
    to: Option<&Account>,
    command: TransferCommand,
) -> Result<TransferDecision, DomainError> {
    let TransferCommand {
        id,
        from: from_id,
        to: to_id,
        amount,
        reference,
    } = command;
    if existing.is_some() {
        return Err(DomainError::TransferAlreadyExecuted { transfer_id: id });
    }
    if from_id == to_id {
        return Err(DomainError::SameAccount { account_id: from_id });
    }
    let from = state_of(from_id, from)?;
    let to = state_of(to_id, to)?;
    // Status before currency: a frozen or closed account is the first thing to fix.
    from.ensure_moves_money()?;
    to.ensure_moves_money()?;
    if from.currency != to.currency {
        return Err(DomainError::CurrencyMismatch {
            from: from.currency,
            to: to.currency,
        });
    }
    from.debit(amount)?;
    to.credit(amount)?;
    Ok(TransferDecision {
        debit: AccountEvent::TransferDebited {
            account_id: from_id,
            transfer_id: id,
            to_account_id: to_id,
            amount,
            reference: reference.clone(),
        },
        credit: AccountEvent::TransferCredited {
            account_id: to_id,
            transfer_id: id,
            from_account_id: from_id,
            amount,
            reference: reference.clone(),
        },
        executed: TransferEvent::TransferExecuted {
            transfer_id: id,
            from_account_id: from_id,
            to_account_id: to_id,
            amount,
            currency: from.currency,
            reference,
        },
    })
}

/// The state of the account `id`, refusing a missing account or another account's state.
fn state_of(id: AccountId, state: Option<&Account>) -> Result<&Account, DomainError> {
    let account = state.ok_or(DomainError::AccountNotFound { account_id: Some(id) })?;
    if account.id != id {
        return Err(DomainError::AccountStateMismatch {
            expected: id,
            found: account.id,
        });
    }
    Ok(account)
}

impl Transfer {
    /// Applies one event to the transfer's state; a transfer stream holds exactly one.
    pub fn evolve(state: Option<Transfer>, event: &TransferEvent) -> Result<Transfer, EvolveError> {
        match (state, event) {
            (
                None,
                TransferEvent::TransferExecuted {
                    transfer_id,
                    from_account_id,
                    to_account_id,
                    amount,
                    currency,
                    reference,
                },
            ) => Ok(Transfer {
                id: *transfer_id,
                from: *from_account_id,
                to: *to_account_id,
                amount: *amount,
                currency: *currency,
                reference: reference.clone(),
            }),
            (Some(existing), _) => Err(EvolveError::TransferAlreadyExecuted {
                transfer_id: existing.id,
            }),
        }
    }

    /// Rebuilds a transfer from its stream; `None` for no events.
    pub fn fold<'a>(
        events: impl IntoIterator<Item = &'a TransferEvent>,
    ) -> Result<Option<Transfer>, EvolveError> {
        let mut state = None;
        for event in events {
            state = Some(Transfer::evolve(state, event)?);
        }
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::AccountStatus;
    use crate::money::{Balance, OverdraftLimit};
    use uuid::Uuid;

    fn account_id(n: u128) -> AccountId {
        AccountId::from(Uuid::from_u128(n))
    }

    fn transfer_id() -> TransferId {
        TransferId::from(Uuid::from_u128(77))
    }

    fn amount(minor_units: i64) -> Amount {
        Amount::new(minor_units).expect("valid amount")
    }

    fn account(n: u128, currency: &str, balance: i64, overdraft: i64) -> Account {
        Account {
            id: account_id(n),
            owner: Some(crate::event::tests::sealed_owner()),
            currency: Currency::parse(currency).expect("valid currency"),
            balance: Balance::new(balance),
            overdraft_limit: OverdraftLimit::new(overdraft).expect("valid limit"),
            status: AccountStatus::Open,
            personal_data_erased: false,
        }
    }

    fn command(from: u128, to: u128, minor_units: i64) -> TransferCommand {
        TransferCommand {
            id: transfer_id(),
            from: account_id(from),
            to: account_id(to),
            amount: amount(minor_units),
            reference: Some(Reference::parse("rent").expect("valid reference")),
        }
    }

    fn refusal(
        from: Option<&Account>,
        to: Option<&Account>,
        command: TransferCommand,
    ) -> Option<&'static str> {
        decide_transfer(None, from, to, command).err().map(|e| e.code())
    }

    #[test]
    fn transfer_debits_one_account_and_credits_the_other() {
        let from = account(1, "EUR", 100, 0);
        let to = account(2, "EUR", 5, 0);
        let decision = decide_transfer(None, Some(&from), Some(&to), command(1, 2, 60)).expect("transfers");
        let from = Account::evolve(Some(from), &decision.debit).expect("debit applies");
        let to = Account::evolve(Some(to), &decision.credit).expect("credit applies");
        assert_eq!(from.balance.get(), 40);
        assert_eq!(to.balance.get(), 65);
        let transfer = Transfer::evolve(None, &decision.executed).expect("executes");
        assert_eq!(transfer.from, account_id(1));
        assert_eq!(transfer.to, account_id(2));
        assert_eq!(transfer.amount, amount(60));
        assert_eq!(transfer.currency.as_str(), "EUR");
        assert_eq!(decision.debit.stream_id(), account_id(1).stream_id());
        assert_eq!(decision.credit.stream_id(), account_id(2).stream_id());
        assert_eq!(decision.executed.stream_id(), transfer_id().stream_id());
    }

    #[test]
    fn transfer_into_the_overdraft_is_accepted_down_to_the_limit() {
        let from = account(1, "EUR", 0, 60);
        let to = account(2, "EUR", 0, 0);
        assert!(decide_transfer(None, Some(&from), Some(&to), command(1, 2, 60)).is_ok());
        assert_eq!(
            refusal(Some(&from), Some(&to), command(1, 2, 61)),
            Some("insufficient-funds")
        );
    }

    #[test]
    fn transfer_id_executes_at_most_once() {
        let from = account(1, "EUR", 100, 0);
        let to = account(2, "EUR", 0, 0);
        let decision = decide_transfer(None, Some(&from), Some(&to), command(1, 2, 10)).expect("transfers");
        let existing = Transfer::evolve(None, &decision.executed).expect("executes");
        assert_eq!(
            decide_transfer(Some(&existing), Some(&from), Some(&to), command(1, 2, 10)),
            Err(DomainError::TransferAlreadyExecuted {
                transfer_id: transfer_id()
            })
        );
    }

    #[test]
    fn transfer_to_the_same_account_is_refused() {
        let from = account(1, "EUR", 100, 0);
        assert_eq!(
            decide_transfer(None, Some(&from), Some(&from), command(1, 1, 10)),
            Err(DomainError::SameAccount {
                account_id: account_id(1)
            })
        );
    }

    #[test]
    fn transfer_names_the_missing_account() {
        let existing = account(1, "EUR", 100, 0);
        assert_eq!(
            decide_transfer(None, None, Some(&existing), command(2, 1, 10)),
            Err(DomainError::AccountNotFound {
                account_id: Some(account_id(2))
            })
        );
        assert_eq!(
            decide_transfer(None, Some(&existing), None, command(1, 3, 10)),
            Err(DomainError::AccountNotFound {
                account_id: Some(account_id(3))
            })
        );
    }

    #[test]
    fn transfer_between_currencies_is_refused() {
        let from = account(1, "EUR", 100, 0);
        let to = account(2, "USD", 0, 0);
        assert_eq!(
            decide_transfer(None, Some(&from), Some(&to), command(1, 2, 10)),
            Err(DomainError::CurrencyMismatch {
                from: from.currency,
                to: to.currency
            })
        );
    }

    #[test]
    fn transfer_from_or_to_a_frozen_account_is_refused() {
        let open = account(1, "EUR", 100, 0);
        let frozen = Account {
            status: AccountStatus::Frozen,
            ..account(2, "EUR", 100, 0)
        };
        assert_eq!(
            decide_transfer(None, Some(&frozen), Some(&open), command(2, 1, 10)),
            Err(DomainError::AccountFrozen {
                account_id: account_id(2)
            })
        );
        assert_eq!(
            decide_transfer(None, Some(&open), Some(&frozen), command(1, 2, 10)),
            Err(DomainError::AccountFrozen {
                account_id: account_id(2)
            })
        );
    }

    #[test]
    fn transfer_from_or_to_a_closed_account_is_refused() {
        let open = account(1, "EUR", 100, 0);
        let closed = Account {
            status: AccountStatus::Closed,
            ..account(2, "EUR", 0, 0)
        };
        assert_eq!(
            refusal(Some(&closed), Some(&open), command(2, 1, 10)),
            Some("account-closed")
        );
        assert_eq!(
            refusal(Some(&open), Some(&closed), command(1, 2, 10)),
            Some("account-closed")
        );
    }

    #[test]
    fn transfer_that_would_overflow_the_receiving_balance_is_refused() {
        let from = account(1, "EUR", 100, 0);
        let to = account(2, "EUR", i64::MAX - 5, 0);
        assert_eq!(
            decide_transfer(None, Some(&from), Some(&to), command(1, 2, 6)),
            Err(DomainError::BalanceOverflow {
                account_id: account_id(2)
            })
        );
    }

    #[test]
    fn transfer_given_the_wrong_accounts_state_is_refused() {
        let from = account(1, "EUR", 100, 0);
        let other = account(3, "EUR", 0, 0);
        assert_eq!(
            refusal(Some(&from), Some(&other), command(1, 2, 10)),
            Some("account-state-mismatch")
        );
    }

    #[test]
    fn a_second_transfer_executed_in_one_stream_is_a_corrupt_stream() {
        let from = account(1, "EUR", 100, 0);
        let to = account(2, "EUR", 0, 0);
        let decision = decide_transfer(None, Some(&from), Some(&to), command(1, 2, 10)).expect("transfers");
        assert_eq!(
            Transfer::fold([&decision.executed, &decision.executed]),
            Err(EvolveError::TransferAlreadyExecuted {
                transfer_id: transfer_id()
            })
        );
        assert_eq!(
            decision.into_events().map(|e| e.event_type()),
            ["TransferDebited", "TransferCredited", "TransferExecuted"]
        );
    }
}
