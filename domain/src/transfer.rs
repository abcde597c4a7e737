//! Moving money between two accounts, decided over three streams at once.
//!
//! A transfer touches the paying account, the receiving account and its own stream
//! `transfer-<uuid>`. It is decided here from all three states and answered with one
//! event per stream, which the event store appends atomically with the expected
//! version of each stream: either all three are written or none.
//!
//! A transfer executes in one step (`TransferExecuted`) or in two: a pending transfer
//! (`TransferPending`) reserves its amount on the paying account, and is later posted
//! (`TransferPosted`, all or part of it moves, the rest is released) or voided
//! (`TransferVoided`, by a client, or by the system once `expires_at` passed). Every
//! step appends one event to each of the three streams, so each account's own state
//! knows its pending amounts, and two steps on one transfer conflict on the transfer
//! stream's version: exactly one of a racing post and void is written.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::account::Account;
use crate::error::{DomainError, EvolveError};
use crate::event::{AccountEvent, LedgerEvent, TransferEvent};
use crate::ids::{AccountId, TransferId};
use crate::money::{Amount, Currency};
use crate::text::{Reason, Reference};

/// Where a transfer is in its life (API.md, `GET /transfers/{id}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransferStatus {
    /// Reserved on the paying account, waiting to be posted or voided.
    Pending,
    /// Money moved: executed in one step, or a pending transfer posted.
    Posted,
    /// Released by a client before anything moved.
    Voided,
    /// Released by the system at `expires_at`.
    Expired,
}

impl TransferStatus {
    /// The status as API.md and the read models spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            TransferStatus::Pending => "pending",
            TransferStatus::Posted => "posted",
            TransferStatus::Voided => "voided",
            TransferStatus::Expired => "expired",
        }
    }
}

/// A transfer, as folded from its stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    pub id: TransferId,
    pub from: AccountId,
    pub to: AccountId,
    /// What the transfer asked to move (and, while pending, reserves).
    pub amount: Amount,
    pub currency: Currency,
    pub reference: Option<Reference>,
    pub status: TransferStatus,
    /// What moved: `amount` for a one-step transfer, the posted part for a posted
    /// pending one, `None` while pending or once voided or expired.
    pub posted_amount: Option<Amount>,
    /// When a pending transfer expires; `None` for never (or a one-step transfer).
    pub expires_at: Option<DateTime<Utc>>,
}

/// A pending transfer's terms: the transfer only reserves, and expires at `expires_at`
/// if it is still pending then (`None`: never).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingTerms {
    pub expires_at: Option<DateTime<Utc>>,
}

/// A request to move `amount` from one account to another, at once or (with `pending`)
/// in two phases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferCommand {
    pub id: TransferId,
    pub from: AccountId,
    pub to: AccountId,
    pub amount: Amount,
    pub reference: Option<Reference>,
    pub pending: Option<PendingTerms>,
}

/// What to do with a pending transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettleAction {
    /// Move `amount` (default: all it reserved) and release the rest.
    Post { amount: Option<Amount> },
    /// Release all of it, at a client's request.
    Void { reason: Option<Reason> },
    /// Release all of it because `expires_at` passed: the system's own void.
    Expire,
}

/// Posting, voiding or expiring the pending transfer `transfer_id`, decided at `now`
/// (the command's clock: a post at or after `expires_at` is refused even before the
/// system voided the transfer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettleCommand {
    pub transfer_id: TransferId,
    pub action: SettleAction,
    pub now: DateTime<Utc>,
}

impl SettleCommand {
    /// A stable snake_case name of the command, for event metadata, logs and metrics.
    pub fn name(&self) -> &'static str {
        match self.action {
            SettleAction::Post { .. } => "post_transfer",
            SettleAction::Void { .. } => "void_transfer",
            SettleAction::Expire => "expire_transfer",
        }
    }
}

/// The three events of an accepted transfer step, one per stream, to append atomically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferDecision {
    /// For the stream of `from`: `TransferDebited`, `TransferDebitReserved`,
    /// `PendingDebitPosted` or `PendingDebitReleased`.
    pub debit: AccountEvent,
    /// For the stream of `to`: the matching credit-side event.
    pub credit: AccountEvent,
    /// For the transfer's own stream: `TransferExecuted`, `TransferPending`,
    /// `TransferPosted` or `TransferVoided`.
    pub transfer: TransferEvent,
}

impl TransferDecision {
    /// The three events in the order they are appended: debit, credit, transfer.
    pub fn into_events(self) -> [LedgerEvent; 3] {
        [
            LedgerEvent::Account(self.debit),
            LedgerEvent::Account(self.credit),
            LedgerEvent::Transfer(self.transfer),
        ]
    }
}

/// Decides a transfer from the states of its three streams.
///
/// `existing` is the transfer's state (`Some` if this id was used already); `from` and
/// `to` are the states of the accounts the command names (`None` if never opened).
/// Without `pending` the money moves at once; with it, the amount is reserved on `from`
/// (checked against its available balance) and promised to `to`.
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
        pending,
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
    let currency = from.currency;
    if let Some(PendingTerms { expires_at }) = pending {
        from.reserve_debit(amount)?;
        to.reserve_credit(amount)?;
        return Ok(TransferDecision {
            debit: AccountEvent::TransferDebitReserved {
                account_id: from_id,
                transfer_id: id,
                to_account_id: to_id,
                amount,
                reference: reference.clone(),
            },
            credit: AccountEvent::TransferCreditReserved {
                account_id: to_id,
                transfer_id: id,
                from_account_id: from_id,
                amount,
                reference: reference.clone(),
            },
            transfer: TransferEvent::TransferPending {
                transfer_id: id,
                from_account_id: from_id,
                to_account_id: to_id,
                amount,
                currency,
                reference,
                expires_at,
            },
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
        transfer: TransferEvent::TransferExecuted {
            transfer_id: id,
            from_account_id: from_id,
            to_account_id: to_id,
            amount,
            currency,
            reference,
        },
    })
}

/// Decides a post, void or expiry of a pending transfer from the states of its three
/// streams; `from` and `to` are the states of the accounts `existing` names.
///
/// Refusals: no transfer, `transfer-not-found`; an expired one (or a post at or after
/// `expires_at`), `transfer-expired`; any other that is not pending,
/// `transfer-not-pending`; a post above the reservation, `amount-exceeds-pending`; a post
/// into or out of a frozen or closed account, `account-frozen`/`account-closed` (a
/// void is always allowed: it moves no money); an expiry before `expires_at`,
/// `transfer-not-due`.
pub fn decide_settle(
    existing: Option<&Transfer>,
    from: Option<&Account>,
    to: Option<&Account>,
    command: SettleCommand,
) -> Result<TransferDecision, DomainError> {
    let SettleCommand {
        transfer_id,
        action,
        now,
    } = command;
    let transfer = existing.ok_or(DomainError::TransferNotFound { transfer_id })?;
    match transfer.status {
        TransferStatus::Pending => {}
        TransferStatus::Expired => return Err(DomainError::TransferExpired { transfer_id }),
        TransferStatus::Posted | TransferStatus::Voided => {
            return Err(DomainError::TransferNotPending { transfer_id });
        }
    }
    let due = transfer.expires_at.is_some_and(|expires_at| expires_at <= now);
    let from = state_of(transfer.from, from)?;
    let to = state_of(transfer.to, to)?;
    let reserved = transfer.amount;
    let release = |reason: Option<Reason>, expired: bool| TransferDecision {
        debit: AccountEvent::PendingDebitReleased {
            account_id: transfer.from,
            transfer_id,
            amount: reserved,
        },
        credit: AccountEvent::PendingCreditReleased {
            account_id: transfer.to,
            transfer_id,
            amount: reserved,
        },
        transfer: TransferEvent::TransferVoided {
            transfer_id,
            reason,
            expired,
        },
    };
    match action {
        SettleAction::Void { reason } => Ok(release(reason, false)),
        SettleAction::Expire if due => Ok(release(None, true)),
        SettleAction::Expire => Err(DomainError::TransferNotDue { transfer_id }),
        SettleAction::Post { .. } if due => Err(DomainError::TransferExpired { transfer_id }),
        SettleAction::Post { amount } => {
            let amount = amount.unwrap_or(reserved);
            if amount > reserved {
                return Err(DomainError::AmountExceedsPending {
                    transfer_id,
                    requested: amount,
                    pending: reserved,
                });
            }
            from.ensure_moves_money()?;
            to.ensure_moves_money()?;
            // The debit fits: the reservation was checked against the available
            // balance. The credit is checked again: deposits since may have filled it.
            to.credit(amount)?;
            Ok(TransferDecision {
                debit: AccountEvent::PendingDebitPosted {
                    account_id: transfer.from,
                    transfer_id,
                    to_account_id: transfer.to,
                    amount,
                    reserved,
                    reference: transfer.reference.clone(),
                },
                credit: AccountEvent::PendingCreditPosted {
                    account_id: transfer.to,
                    transfer_id,
                    from_account_id: transfer.from,
                    amount,
                    reserved,
                    reference: transfer.reference.clone(),
                },
                transfer: TransferEvent::TransferPosted {
                    transfer_id,
                    posted_amount: amount,
                },
            })
        }
    }
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
    /// Applies one event to the transfer's state: a stream starts with
    /// `TransferExecuted` (and holds nothing else) or `TransferPending`, which at most one
    /// `TransferPosted` or `TransferVoided` follows.
    pub fn evolve(state: Option<Transfer>, event: &TransferEvent) -> Result<Transfer, EvolveError> {
        let event_type = event.event_type();
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
                status: TransferStatus::Posted,
                posted_amount: Some(*amount),
                expires_at: None,
            }),
            (
                None,
                TransferEvent::TransferPending {
                    transfer_id,
                    from_account_id,
                    to_account_id,
                    amount,
                    currency,
                    reference,
                    expires_at,
                },
            ) => Ok(Transfer {
                id: *transfer_id,
                from: *from_account_id,
                to: *to_account_id,
                amount: *amount,
                currency: *currency,
                reference: reference.clone(),
                status: TransferStatus::Pending,
                posted_amount: None,
                expires_at: *expires_at,
            }),
            (None, event) => Err(EvolveError::TransferNotPending {
                transfer_id: event.transfer_id(),
                event_type,
            }),
            (
                Some(existing),
                TransferEvent::TransferExecuted { .. } | TransferEvent::TransferPending { .. },
            ) => Err(EvolveError::TransferAlreadyExecuted {
                transfer_id: existing.id,
            }),
            (Some(existing), _) if existing.status != TransferStatus::Pending => {
                Err(EvolveError::TransferNotPending {
                    transfer_id: existing.id,
                    event_type,
                })
            }
            (Some(mut transfer), TransferEvent::TransferPosted { posted_amount, .. }) => {
                if *posted_amount > transfer.amount {
                    return Err(EvolveError::TransferNotPending {
                        transfer_id: transfer.id,
                        event_type,
                    });
                }
                transfer.status = TransferStatus::Posted;
                transfer.posted_amount = Some(*posted_amount);
                Ok(transfer)
            }
            (Some(mut transfer), TransferEvent::TransferVoided { expired, .. }) => {
                transfer.status = if *expired {
                    TransferStatus::Expired
                } else {
                    TransferStatus::Voided
                };
                Ok(transfer)
            }
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
            pending_debits: Balance::ZERO,
            pending_credits: Balance::ZERO,
        }
    }

    fn command(from: u128, to: u128, minor_units: i64) -> TransferCommand {
        TransferCommand {
            id: transfer_id(),
            from: account_id(from),
            to: account_id(to),
            amount: amount(minor_units),
            reference: Some(Reference::parse("rent").expect("valid reference")),
            pending: None,
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
        let transfer = Transfer::evolve(None, &decision.transfer).expect("executes");
        assert_eq!(transfer.from, account_id(1));
        assert_eq!(transfer.to, account_id(2));
        assert_eq!(transfer.amount, amount(60));
        assert_eq!(transfer.currency.as_str(), "EUR");
        assert_eq!(decision.debit.stream_id(), account_id(1).stream_id());
        assert_eq!(decision.credit.stream_id(), account_id(2).stream_id());
        assert_eq!(decision.transfer.stream_id(), transfer_id().stream_id());
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
        let existing = Transfer::evolve(None, &decision.transfer).expect("executes");
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
            Transfer::fold([&decision.transfer, &decision.transfer]),
            Err(EvolveError::TransferAlreadyExecuted {
                transfer_id: transfer_id()
            })
        );
        assert_eq!(
            decision.into_events().map(|e| e.event_type()),
            ["TransferDebited", "TransferCredited", "TransferExecuted"]
        );
    }

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).expect("a valid instant")
    }

    fn pending(from: u128, to: u128, minor_units: i64, expires_at: Option<DateTime<Utc>>) -> TransferCommand {
        TransferCommand {
            pending: Some(PendingTerms { expires_at }),
            ..command(from, to, minor_units)
        }
    }

    fn settle(action: SettleAction, now: DateTime<Utc>) -> SettleCommand {
        SettleCommand {
            transfer_id: transfer_id(),
            action,
            now,
        }
    }

    /// Applies a decision to the three states, as the command side does.
    fn apply(
        decision: &TransferDecision,
        from: Account,
        to: Account,
        transfer: Option<Transfer>,
    ) -> (Account, Account, Transfer) {
        (
            Account::evolve(Some(from), &decision.debit).expect("debit side applies"),
            Account::evolve(Some(to), &decision.credit).expect("credit side applies"),
            Transfer::evolve(transfer, &decision.transfer).expect("transfer applies"),
        )
    }

    fn reserved(expires_at: Option<DateTime<Utc>>) -> (Account, Account, Transfer) {
        let from = account(1, "EUR", 100, 0);
        let to = account(2, "EUR", 5, 0);
        let decision =
            decide_transfer(None, Some(&from), Some(&to), pending(1, 2, 60, expires_at)).expect("reserves");
        apply(&decision, from, to, None)
    }

    #[test]
    fn a_pending_transfer_reserves_on_the_available_balance_only() {
        let (from, to, transfer) = reserved(Some(at(30)));
        assert_eq!((from.balance.get(), from.available_balance()), (100, 40));
        assert_eq!((from.pending_debits.get(), to.pending_credits.get()), (60, 60));
        assert_eq!((to.balance.get(), to.available_balance()), (5, 5));
        assert_eq!(transfer.status, TransferStatus::Pending);
        assert_eq!(transfer.expires_at, Some(at(30)));
        // The reserved money is not available to anything else.
        assert_eq!(
            decide_transfer(
                None,
                Some(&from),
                Some(&to),
                TransferCommand {
                    id: TransferId::from(Uuid::from_u128(78)),
                    ..pending(1, 2, 41, None)
                }
            )
            .err()
            .map(|e| e.code()),
            Some("insufficient-funds")
        );
        assert_eq!(
            Account::decide(
                Some(&from),
                crate::AccountCommand::Withdraw {
                    amount: amount(41),
                    reference: None
                }
            )
            .err()
            .map(|e| e.code()),
            Some("insufficient-funds")
        );
        assert!(
            Account::decide(
                Some(&from),
                crate::AccountCommand::Withdraw {
                    amount: amount(40),
                    reference: None
                }
            )
            .is_ok()
        );
    }

    #[test]
    fn posting_part_moves_it_and_releases_the_rest() {
        let (from, to, transfer) = reserved(None);
        let decision = decide_settle(
            Some(&transfer),
            Some(&from),
            Some(&to),
            settle(
                SettleAction::Post {
                    amount: Some(amount(25)),
                },
                at(0),
            ),
        )
        .expect("posts");
        let (from, to, transfer) = apply(&decision, from, to, Some(transfer));
        assert_eq!(
            (
                from.balance.get(),
                from.pending_debits.get(),
                from.available_balance()
            ),
            (75, 0, 75)
        );
        assert_eq!((to.balance.get(), to.pending_credits.get()), (30, 0));
        assert_eq!(
            (transfer.status, transfer.posted_amount),
            (TransferStatus::Posted, Some(amount(25)))
        );
        assert_eq!(
            decide_settle(
                Some(&transfer),
                Some(&from),
                Some(&to),
                settle(SettleAction::Void { reason: None }, at(0))
            ),
            Err(DomainError::TransferNotPending {
                transfer_id: transfer_id()
            })
        );
    }

    #[test]
    fn posting_more_than_reserved_is_refused() {
        let (from, to, transfer) = reserved(None);
        assert_eq!(
            decide_settle(
                Some(&transfer),
                Some(&from),
                Some(&to),
                settle(
                    SettleAction::Post {
                        amount: Some(amount(61))
                    },
                    at(0)
                )
            )
            .err()
            .map(|e| e.code()),
            Some("amount-exceeds-pending")
        );
    }

    #[test]
    fn voiding_releases_everything_even_on_a_frozen_account() {
        let (from, to, transfer) = reserved(None);
        let from = Account {
            status: AccountStatus::Frozen,
            ..from
        };
        assert_eq!(
            decide_settle(
                Some(&transfer),
                Some(&from),
                Some(&to),
                settle(SettleAction::Post { amount: None }, at(0))
            )
            .err()
            .map(|e| e.code()),
            Some("account-frozen")
        );
        let decision = decide_settle(
            Some(&transfer),
            Some(&from),
            Some(&to),
            settle(SettleAction::Void { reason: None }, at(0)),
        )
        .expect("voids");
        let (from, to, transfer) = apply(&decision, from, to, Some(transfer));
        assert_eq!((from.balance.get(), from.pending_debits.get()), (100, 0));
        assert_eq!((to.balance.get(), to.pending_credits.get()), (5, 0));
        assert_eq!(transfer.status, TransferStatus::Voided);
    }

    #[test]
    fn a_post_at_or_after_expiry_is_refused_and_the_system_expires_it() {
        let (from, to, transfer) = reserved(Some(at(30)));
        let post = |now| {
            decide_settle(
                Some(&transfer),
                Some(&from),
                Some(&to),
                settle(SettleAction::Post { amount: None }, now),
            )
            .err()
            .map(|e| e.code())
        };
        assert_eq!(post(at(29)), None);
        assert_eq!(post(at(30)), Some("transfer-expired"));
        assert_eq!(
            decide_settle(
                Some(&transfer),
                Some(&from),
                Some(&to),
                settle(SettleAction::Expire, at(29))
            )
            .err()
            .map(|e| e.code()),
            Some("transfer-not-due")
        );
        let decision = decide_settle(
            Some(&transfer),
            Some(&from),
            Some(&to),
            settle(SettleAction::Expire, at(31)),
        )
        .expect("expires");
        let (from, to, transfer) = apply(&decision, from, to, Some(transfer));
        assert_eq!(transfer.status, TransferStatus::Expired);
        assert_eq!(from.available_balance(), 100);
        for action in [
            SettleAction::Post { amount: None },
            SettleAction::Void { reason: None },
        ] {
            assert_eq!(
                decide_settle(Some(&transfer), Some(&from), Some(&to), settle(action, at(31)))
                    .err()
                    .map(|e| e.code()),
                Some("transfer-expired")
            );
        }
    }

    #[test]
    fn an_account_with_pending_transfers_does_not_close() {
        let from = account(1, "EUR", 0, 100);
        let to = account(2, "EUR", 0, 0);
        let decision =
            decide_transfer(None, Some(&from), Some(&to), pending(1, 2, 60, None)).expect("reserves");
        let (from, to, _) = apply(&decision, from, to, None);
        for account in [&from, &to] {
            assert_eq!(
                Account::decide(Some(account), crate::AccountCommand::Close { reason: None })
                    .err()
                    .map(|e| e.code()),
                Some("pending-transfers")
            );
        }
    }

    #[test]
    fn settling_an_unknown_or_one_step_transfer_is_refused() {
        let from = account(1, "EUR", 100, 0);
        let to = account(2, "EUR", 0, 0);
        assert_eq!(
            decide_settle(
                None,
                Some(&from),
                Some(&to),
                settle(SettleAction::Void { reason: None }, at(0))
            )
            .err()
            .map(|e| e.code()),
            Some("transfer-not-found")
        );
        let decision = decide_transfer(None, Some(&from), Some(&to), command(1, 2, 10)).expect("transfers");
        let (from, to, transfer) = apply(&decision, from, to, None);
        assert_eq!(
            (transfer.status, transfer.posted_amount),
            (TransferStatus::Posted, Some(amount(10)))
        );
        assert_eq!(
            decide_settle(
                Some(&transfer),
                Some(&from),
                Some(&to),
                settle(SettleAction::Post { amount: None }, at(0))
            )
            .err()
            .map(|e| e.code()),
            Some("transfer-not-pending")
        );
    }
}
