//! The account aggregate: the rules one account enforces on its own.
//!
//! `decide` checks a command against the current state and answers with the events that
//! record it (or why not); `evolve` applies one event to a state; `fold` rebuilds a state
//! from a whole stream. Deciding never changes state and evolving never refuses a rule,
//! only an impossible stream: what was decided and stored is a fact, even if a rule
//! changed since.
//!
//! The rules (API.md): no debit takes the available balance (the balance minus what
//! pending transfers reserved) below `-overdraft_limit`; frozen and closed accounts
//! accept no money movement; an account closes only at balance 0 and with no pending
//! transfer on either side; closed is final (only personal-data erasure may follow).

use serde::{Deserialize, Serialize};

use crate::error::{DomainError, EvolveError};
use crate::event::AccountEvent;
use crate::ids::AccountId;
use crate::money::{Amount, Balance, Currency, OverdraftLimit};
use crate::sealed::SealedOwner;
use crate::text::{Reason, Reference};

/// Where an account is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountStatus {
    /// Accepts every command.
    Open,
    /// Accepts no money movement until unfrozen (for an investigation, say).
    Frozen,
    /// Accepts nothing but erasing personal data, forever.
    Closed,
}

/// An account's state, as folded from its events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub id: AccountId,
    /// The holder, sealed; `None` once personal data was erased, or if the account was
    /// opened before owners were sealed (its plaintext is not carried forward).
    pub owner: Option<SealedOwner>,
    pub currency: Currency,
    pub balance: Balance,
    pub overdraft_limit: OverdraftLimit,
    pub status: AccountStatus,
    /// Whether `PersonalDataErased` was recorded. Kept apart from `owner`, which may be
    /// `None` for other reasons (an old account), so that erasing such an account is
    /// still recorded once, and erasing an erased one is refused.
    pub personal_data_erased: bool,
    /// What pending transfers out of this account reserved, in minor units (never
    /// negative): the balance stays, the available balance is this much lower.
    #[serde(default)]
    pub pending_debits: Balance,
    /// What pending transfers into this account may bring, in minor units (never
    /// negative); not spendable until posted.
    #[serde(default)]
    pub pending_credits: Balance,
}

/// What a client may ask of one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountCommand {
    Open {
        id: AccountId,
        /// Sealed by the caller with the new account's own key.
        owner: SealedOwner,
        currency: Currency,
        overdraft_limit: OverdraftLimit,
    },
    Deposit {
        amount: Amount,
        reference: Option<Reference>,
    },
    Withdraw {
        amount: Amount,
        reference: Option<Reference>,
    },
    Freeze {
        reason: Option<Reason>,
    },
    Unfreeze {
        reason: Option<Reason>,
    },
    Close {
        reason: Option<Reason>,
    },
    ErasePersonalData,
}

impl AccountCommand {
    /// A stable snake_case name of the command, for event metadata, logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            AccountCommand::Open { .. } => "open_account",
            AccountCommand::Deposit { .. } => "deposit",
            AccountCommand::Withdraw { .. } => "withdraw",
            AccountCommand::Freeze { .. } => "freeze_account",
            AccountCommand::Unfreeze { .. } => "unfreeze_account",
            AccountCommand::Close { .. } => "close_account",
            AccountCommand::ErasePersonalData => "erase_personal_data",
        }
    }
}

impl Account {
    /// Decides what `command` does to the account in `state`.
    ///
    /// `state` is None for an account that was never opened. On success the events are
    /// to be appended to this account's stream, in order; nothing has changed yet.
    pub fn decide(
        state: Option<&Account>,
        command: AccountCommand,
    ) -> Result<Vec<AccountEvent>, DomainError> {
        let (account, command) = match (state, command) {
            (
                None,
                AccountCommand::Open {
                    id,
                    owner,
                    currency,
                    overdraft_limit,
                },
            ) => {
                return Ok(vec![AccountEvent::AccountOpened {
                    account_id: id,
                    owner: Some(owner),
                    currency,
                    overdraft_limit,
                }]);
            }
            // The caller addressed the account and knows its id; this function does not.
            (None, _) => return Err(DomainError::AccountNotFound { account_id: None }),
            (Some(account), command) => (account, command),
        };
        let account_id = account.id;
        let event = match command {
            AccountCommand::Open { .. } => {
                return Err(DomainError::AccountAlreadyExists { account_id });
            }
            AccountCommand::Deposit { amount, reference } => {
                account.credit(amount)?;
                AccountEvent::FundsDeposited {
                    account_id,
                    amount,
                    reference,
                }
            }
            AccountCommand::Withdraw { amount, reference } => {
                account.debit(amount)?;
                AccountEvent::FundsWithdrawn {
                    account_id,
                    amount,
                    reference,
                }
            }
            AccountCommand::Freeze { reason } => match account.status {
                AccountStatus::Open => AccountEvent::AccountFrozen { account_id, reason },
                AccountStatus::Frozen => {
                    return Err(DomainError::AccountAlreadyFrozen { account_id });
                }
                AccountStatus::Closed => return Err(DomainError::AccountClosed { account_id }),
            },
            AccountCommand::Unfreeze { reason } => match account.status {
                AccountStatus::Frozen => AccountEvent::AccountUnfrozen { account_id, reason },
                AccountStatus::Open => return Err(DomainError::AccountNotFrozen { account_id }),
                AccountStatus::Closed => return Err(DomainError::AccountClosed { account_id }),
            },
            AccountCommand::Close { reason } => {
                // A frozen account may close: closing moves no money, and at balance 0
                // there is nothing left for the freeze to protect.
                if account.status == AccountStatus::Closed {
                    return Err(DomainError::AccountClosed { account_id });
                }
                if !account.pending_debits.is_zero() || !account.pending_credits.is_zero() {
                    return Err(DomainError::PendingTransfers {
                        account_id,
                        pending_debits: account.pending_debits,
                        pending_credits: account.pending_credits,
                    });
                }
                if !account.balance.is_zero() {
                    return Err(DomainError::BalanceNotZero {
                        account_id,
                        balance: account.balance,
                    });
                }
                AccountEvent::AccountClosed { account_id, reason }
            }
            // Allowed on closed accounts too: erasure after closing is the usual case.
            AccountCommand::ErasePersonalData => {
                if account.personal_data_erased {
                    return Err(DomainError::PersonalDataAlreadyErased { account_id });
                }
                AccountEvent::PersonalDataErased { account_id }
            }
        };
        Ok(vec![event])
    }

    /// Checks that `amount` may come into this account, giving the new balance.
    pub(crate) fn credit(&self, amount: Amount) -> Result<Balance, DomainError> {
        self.ensure_moves_money()?;
        self.balance
            .checked_add(amount)
            .ok_or(DomainError::BalanceOverflow { account_id: self.id })
    }

    /// Checks that `amount` may leave this account, giving the new balance. What
    /// pending transfers reserved is not available: the rule holds for the available
    /// balance, so a reservation can always be posted.
    pub(crate) fn debit(&self, amount: Amount) -> Result<Balance, DomainError> {
        self.ensure_available(amount)?;
        // Cannot fail once the available balance allows it (the balance is at least the
        // available balance); checked all the same.
        self.balance
            .checked_sub(amount)
            .ok_or(DomainError::InsufficientFunds {
                account_id: self.id,
                balance: self.balance,
                pending_debits: self.pending_debits,
                requested: amount,
                overdraft_limit: self.overdraft_limit,
            })
    }

    /// Checks that a pending transfer may reserve `amount` on this account, giving the
    /// new pending debits.
    pub(crate) fn reserve_debit(&self, amount: Amount) -> Result<Balance, DomainError> {
        self.ensure_available(amount)?;
        self.pending_debits
            .checked_add(amount)
            .ok_or(DomainError::BalanceOverflow { account_id: self.id })
    }

    /// Checks that a pending transfer may promise `amount` to this account: it must be
    /// able to receive it and, once everything pending arrives, the balance must fit.
    pub(crate) fn reserve_credit(&self, amount: Amount) -> Result<Balance, DomainError> {
        self.ensure_moves_money()?;
        let overflow = DomainError::BalanceOverflow { account_id: self.id };
        let pending = self.pending_credits.checked_add(amount).ok_or(overflow.clone())?;
        let ceiling = i128::from(self.balance.get()) + i128::from(pending.get());
        if ceiling > i128::from(i64::MAX) {
            return Err(overflow);
        }
        Ok(pending)
    }

    /// The balance minus what pending transfers out of the account reserved: what a
    /// withdrawal, transfer or new reservation may still take down to the overdraft floor.
    /// Saturates at the `i64` range, which a ledger that kept its rules never reaches.
    pub fn available_balance(&self) -> i64 {
        let available = i128::from(self.balance.get()) - i128::from(self.pending_debits.get());
        i64::try_from(available).unwrap_or(if available < 0 { i64::MIN } else { i64::MAX })
    }

    /// The overdraft rule, on the available balance: `amount` may leave or be reserved.
    fn ensure_available(&self, amount: Amount) -> Result<(), DomainError> {
        self.ensure_moves_money()?;
        // In i128: balance, pending and amount are each within i64, so this cannot wrap.
        let after =
            i128::from(self.balance.get()) - i128::from(self.pending_debits.get()) - i128::from(amount.get());
        if after < i128::from(self.overdraft_limit.floor().get()) {
            return Err(DomainError::InsufficientFunds {
                account_id: self.id,
                balance: self.balance,
                pending_debits: self.pending_debits,
                requested: amount,
                overdraft_limit: self.overdraft_limit,
            });
        }
        Ok(())
    }

    /// Frozen and closed accounts accept no money movement, in or out.
    pub(crate) fn ensure_moves_money(&self) -> Result<(), DomainError> {
        let account_id = self.id;
        match self.status {
            AccountStatus::Open => Ok(()),
            AccountStatus::Frozen => Err(DomainError::AccountFrozen { account_id }),
            AccountStatus::Closed => Err(DomainError::AccountClosed { account_id }),
        }
    }

    /// Applies one event to the state; `state` is None before the account was opened.
    ///
    /// Refuses only streams that cannot be: an event before `AccountOpened`, a second
    /// `AccountOpened`, another account's event, anything but erasure after
    /// `AccountClosed`, a balance that would overflow.
    pub fn evolve(state: Option<Account>, event: &AccountEvent) -> Result<Account, EvolveError> {
        let event_type = event.event_type();
        let mut account = match (state, event) {
            (
                None,
                AccountEvent::AccountOpened {
                    account_id,
                    owner,
                    currency,
                    overdraft_limit,
                },
            ) => {
                return Ok(Account {
                    id: *account_id,
                    owner: owner.clone(),
                    currency: *currency,
                    balance: Balance::ZERO,
                    overdraft_limit: *overdraft_limit,
                    status: AccountStatus::Open,
                    personal_data_erased: false,
                    pending_debits: Balance::ZERO,
                    pending_credits: Balance::ZERO,
                });
            }
            (None, event) => {
                return Err(EvolveError::NotOpened {
                    account_id: event.account_id(),
                    event_type,
                });
            }
            (Some(account), _) => account,
        };
        let account_id = account.id;
        if event.account_id() != account_id {
            return Err(EvolveError::WrongAccount {
                expected: account_id,
                found: event.account_id(),
                event_type,
            });
        }
        let closed_is_final = account.status == AccountStatus::Closed
            && !matches!(event, AccountEvent::PersonalDataErased { .. });
        if closed_is_final {
            return Err(EvolveError::AfterClose {
                account_id,
                event_type,
            });
        }
        let overflow = || EvolveError::BalanceOverflow {
            account_id,
            event_type,
        };
        match event {
            AccountEvent::AccountOpened { .. } => {
                return Err(EvolveError::AlreadyOpened { account_id });
            }
            AccountEvent::FundsDeposited { amount, .. } | AccountEvent::TransferCredited { amount, .. } => {
                account.balance = account.balance.checked_add(*amount).ok_or_else(overflow)?;
            }
            AccountEvent::FundsWithdrawn { amount, .. } | AccountEvent::TransferDebited { amount, .. } => {
                account.balance = account.balance.checked_sub(*amount).ok_or_else(overflow)?;
            }
            AccountEvent::AccountFrozen { .. } => account.status = AccountStatus::Frozen,
            AccountEvent::AccountUnfrozen { .. } => account.status = AccountStatus::Open,
            AccountEvent::AccountClosed { .. } => account.status = AccountStatus::Closed,
            AccountEvent::PersonalDataErased { .. } => {
                account.owner = None;
                account.personal_data_erased = true;
            }
            AccountEvent::TransferDebitReserved { amount, .. } => {
                account.pending_debits = account.pending_debits.checked_add(*amount).ok_or_else(overflow)?;
            }
            AccountEvent::TransferCreditReserved { amount, .. } => {
                account.pending_credits = account
                    .pending_credits
                    .checked_add(*amount)
                    .ok_or_else(overflow)?;
            }
            AccountEvent::PendingDebitPosted { amount, reserved, .. } => {
                account.pending_debits =
                    release(account.pending_debits, *amount, *reserved, account_id, event_type)?;
                account.balance = account.balance.checked_sub(*amount).ok_or_else(overflow)?;
            }
            AccountEvent::PendingCreditPosted { amount, reserved, .. } => {
                account.pending_credits = release(
                    account.pending_credits,
                    *amount,
                    *reserved,
                    account_id,
                    event_type,
                )?;
                account.balance = account.balance.checked_add(*amount).ok_or_else(overflow)?;
            }
            AccountEvent::PendingDebitReleased { amount, .. } => {
                account.pending_debits =
                    release(account.pending_debits, *amount, *amount, account_id, event_type)?;
            }
            AccountEvent::PendingCreditReleased { amount, .. } => {
                account.pending_credits =
                    release(account.pending_credits, *amount, *amount, account_id, event_type)?;
            }
        }
        Ok(account)
    }

    /// Rebuilds an account from its stream, oldest event first; `None` for no events.
    pub fn fold<'a>(
        events: impl IntoIterator<Item = &'a AccountEvent>,
    ) -> Result<Option<Account>, EvolveError> {
        let mut state = None;
        for event in events {
            state = Some(Account::evolve(state, event)?);
        }
        Ok(state)
    }
}

/// The pending amount after `reserved` stops being pending, of which `posted` moved:
/// refuses a post above its reservation or a release of more than is pending.
fn release(
    pending: Balance,
    posted: Amount,
    reserved: Amount,
    account_id: AccountId,
    event_type: &'static str,
) -> Result<Balance, EvolveError> {
    let mismatch = || EvolveError::PendingMismatch {
        account_id,
        event_type,
    };
    if posted > reserved {
        return Err(mismatch());
    }
    let after = pending.checked_sub(reserved).ok_or_else(mismatch)?;
    if after < Balance::ZERO {
        return Err(mismatch());
    }
    Ok(after)
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn id() -> AccountId {
        AccountId::from(Uuid::from_u128(1))
    }

    fn amount(minor_units: i64) -> Amount {
        Amount::new(minor_units).expect("valid amount")
    }

    fn open_command(overdraft: i64) -> AccountCommand {
        AccountCommand::Open {
            id: id(),
            owner: crate::event::tests::sealed_owner(),
            currency: Currency::parse("EUR").expect("EUR is a currency"),
            overdraft_limit: OverdraftLimit::new(overdraft).expect("valid limit"),
        }
    }

    /// Decides `command` on `state` and applies the events, as the command side does.
    fn run(state: Option<Account>, command: AccountCommand) -> Result<Account, DomainError> {
        let events = Account::decide(state.as_ref(), command)?;
        let mut state = state;
        for event in &events {
            state = Some(Account::evolve(state, event).expect("decided events evolve"));
        }
        Ok(state.expect("a decided command leaves an account"))
    }

    fn open_account(overdraft: i64, balance: i64) -> Account {
        let account = run(None, open_command(overdraft)).expect("opens");
        if balance > 0 {
            return run(Some(account), deposit(balance)).expect("deposits");
        }
        account
    }

    fn deposit(minor_units: i64) -> AccountCommand {
        AccountCommand::Deposit {
            amount: amount(minor_units),
            reference: None,
        }
    }

    fn withdraw(minor_units: i64) -> AccountCommand {
        AccountCommand::Withdraw {
            amount: amount(minor_units),
            reference: None,
        }
    }

    fn freeze() -> AccountCommand {
        AccountCommand::Freeze { reason: None }
    }

    fn unfreeze() -> AccountCommand {
        AccountCommand::Unfreeze { reason: None }
    }

    fn close() -> AccountCommand {
        AccountCommand::Close { reason: None }
    }

    fn with_status(status: AccountStatus, balance: i64) -> Account {
        Account {
            status,
            ..open_account(0, balance)
        }
    }

    fn refusal(state: &Account, command: AccountCommand) -> Option<&'static str> {
        Account::decide(Some(state), command).err().map(|e| e.code())
    }

    #[test]
    fn opening_a_new_account_records_owner_currency_and_limit() {
        let account = open_account(500, 0);
        assert_eq!(account.id, id());
        assert_eq!(account.balance, Balance::ZERO);
        assert_eq!(account.overdraft_limit.get(), 500);
        assert_eq!(account.status, AccountStatus::Open);
        assert_eq!(account.owner, Some(crate::event::tests::sealed_owner()));
        assert!(!account.personal_data_erased);
    }

    #[test]
    fn opening_an_existing_account_is_refused() {
        assert_eq!(
            Account::decide(Some(&open_account(0, 0)), open_command(0)),
            Err(DomainError::AccountAlreadyExists { account_id: id() })
        );
    }

    #[test]
    fn any_command_on_a_never_opened_account_is_account_not_found() {
        for command in [
            deposit(1),
            withdraw(1),
            freeze(),
            unfreeze(),
            close(),
            AccountCommand::ErasePersonalData,
        ] {
            assert_eq!(
                Account::decide(None, command).map_err(|e| e.code()),
                Err("account-not-found")
            );
        }
    }

    #[test]
    fn deposit_adds_to_the_balance() {
        let account = run(Some(open_account(0, 100)), deposit(50)).expect("deposits");
        assert_eq!(account.balance.get(), 150);
    }

    #[test]
    fn deposit_that_would_overflow_the_balance_is_refused() {
        let account = Account {
            balance: Balance::new(i64::MAX - 10),
            ..open_account(0, 0)
        };
        assert_eq!(
            Account::decide(Some(&account), deposit(11)),
            Err(DomainError::BalanceOverflow { account_id: id() })
        );
        assert!(Account::decide(Some(&account), deposit(10)).is_ok());
    }

    #[test]
    fn withdrawal_within_the_balance_is_accepted() {
        let account = run(Some(open_account(0, 100)), withdraw(100)).expect("withdraws");
        assert_eq!(account.balance, Balance::ZERO);
    }

    #[test]
    fn withdrawal_down_to_the_overdraft_limit_is_accepted() {
        let account = run(Some(open_account(50, 100)), withdraw(150)).expect("withdraws");
        assert_eq!(account.balance.get(), -50);
    }

    #[test]
    fn withdrawal_below_the_overdraft_limit_is_refused() {
        let account = open_account(50, 100);
        assert_eq!(
            Account::decide(Some(&account), withdraw(151)),
            Err(DomainError::InsufficientFunds {
                account_id: id(),
                balance: Balance::new(100),
                pending_debits: Balance::ZERO,
                requested: amount(151),
                overdraft_limit: OverdraftLimit::new(50).expect("valid limit"),
            })
        );
    }

    #[test]
    fn withdrawal_without_an_overdraft_cannot_go_below_zero() {
        assert_eq!(
            refusal(&open_account(0, 0), withdraw(1)),
            Some("insufficient-funds")
        );
    }

    #[test]
    fn withdrawal_of_the_maximum_at_the_lowest_balance_is_refused_not_overflowed() {
        let account = Account {
            balance: Balance::new(i64::MIN + 1),
            ..open_account(0, 0)
        };
        assert_eq!(
            refusal(&account, withdraw(Amount::MAX_MINOR_UNITS)),
            Some("insufficient-funds")
        );
    }

    #[test]
    fn frozen_account_accepts_no_deposit_or_withdrawal() {
        let account = with_status(AccountStatus::Frozen, 100);
        assert_eq!(refusal(&account, deposit(1)), Some("account-frozen"));
        assert_eq!(refusal(&account, withdraw(1)), Some("account-frozen"));
    }

    #[test]
    fn closed_account_accepts_no_deposit_or_withdrawal() {
        let account = with_status(AccountStatus::Closed, 0);
        assert_eq!(refusal(&account, deposit(1)), Some("account-closed"));
        assert_eq!(refusal(&account, withdraw(1)), Some("account-closed"));
    }

    #[test]
    fn freezing_then_unfreezing_restores_money_movement() {
        let frozen = run(Some(open_account(0, 100)), freeze()).expect("freezes");
        assert_eq!(frozen.status, AccountStatus::Frozen);
        let open = run(Some(frozen), unfreeze()).expect("unfreezes");
        assert_eq!(open.status, AccountStatus::Open);
        assert!(Account::decide(Some(&open), withdraw(100)).is_ok());
    }

    #[test]
    fn freezing_a_frozen_account_is_refused() {
        assert_eq!(
            refusal(&with_status(AccountStatus::Frozen, 0), freeze()),
            Some("account-already-frozen")
        );
    }

    #[test]
    fn freezing_a_closed_account_is_refused() {
        assert_eq!(
            refusal(&with_status(AccountStatus::Closed, 0), freeze()),
            Some("account-closed")
        );
    }

    #[test]
    fn unfreezing_an_account_that_is_not_frozen_is_refused() {
        assert_eq!(
            refusal(&open_account(0, 0), unfreeze()),
            Some("account-not-frozen")
        );
        assert_eq!(
            refusal(&with_status(AccountStatus::Closed, 0), unfreeze()),
            Some("account-closed")
        );
    }

    #[test]
    fn account_closes_at_balance_zero() {
        let closed = run(Some(open_account(0, 0)), close()).expect("closes");
        assert_eq!(closed.status, AccountStatus::Closed);
    }

    #[test]
    fn frozen_account_closes_at_balance_zero() {
        let closed = run(Some(with_status(AccountStatus::Frozen, 0)), close()).expect("closes");
        assert_eq!(closed.status, AccountStatus::Closed);
    }

    #[test]
    fn account_with_money_does_not_close() {
        assert_eq!(
            Account::decide(Some(&open_account(0, 100)), close()),
            Err(DomainError::BalanceNotZero {
                account_id: id(),
                balance: Balance::new(100),
            })
        );
    }

    #[test]
    fn overdrawn_account_does_not_close() {
        let overdrawn = run(Some(open_account(100, 0)), withdraw(1)).expect("withdraws");
        assert_eq!(refusal(&overdrawn, close()), Some("balance-not-zero"));
    }

    #[test]
    fn closing_a_closed_account_is_refused() {
        assert_eq!(
            refusal(&with_status(AccountStatus::Closed, 0), close()),
            Some("account-closed")
        );
    }

    #[test]
    fn erasing_personal_data_removes_the_owner() {
        let erased = run(Some(open_account(0, 0)), AccountCommand::ErasePersonalData).expect("erases");
        assert_eq!(erased.owner, None);
    }

    #[test]
    fn erasing_personal_data_of_a_closed_account_is_allowed() {
        let closed = with_status(AccountStatus::Closed, 0);
        let erased = run(Some(closed), AccountCommand::ErasePersonalData).expect("erases");
        assert_eq!(erased.owner, None);
        assert_eq!(erased.status, AccountStatus::Closed);
    }

    #[test]
    fn erasing_personal_data_twice_is_refused() {
        let erased = run(Some(open_account(0, 0)), AccountCommand::ErasePersonalData).expect("erases");
        assert_eq!(
            refusal(&erased, AccountCommand::ErasePersonalData),
            Some("personal-data-already-erased")
        );
    }

    #[test]
    fn an_account_opened_without_a_sealed_owner_can_still_be_erased_once() {
        let legacy = Account {
            owner: None,
            ..open_account(0, 0)
        };
        let erased = run(Some(legacy), AccountCommand::ErasePersonalData).expect("erasure is recorded");
        assert!(erased.personal_data_erased);
        assert_eq!(
            refusal(&erased, AccountCommand::ErasePersonalData),
            Some("personal-data-already-erased")
        );
    }

    #[test]
    fn erasing_personal_data_of_a_frozen_account_is_allowed() {
        let frozen = with_status(AccountStatus::Frozen, 100);
        let erased = run(Some(frozen), AccountCommand::ErasePersonalData).expect("erases");
        assert_eq!((erased.owner, erased.status), (None, AccountStatus::Frozen));
        assert_eq!(erased.balance.get(), 100);
    }

    #[test]
    fn every_command_has_a_distinct_name() {
        let names: std::collections::HashSet<&str> = [
            open_command(0),
            deposit(1),
            withdraw(1),
            freeze(),
            unfreeze(),
            close(),
            AccountCommand::ErasePersonalData,
        ]
        .iter()
        .map(AccountCommand::name)
        .collect();
        assert_eq!(names.len(), 7);
    }

    #[test]
    fn status_serialises_in_lowercase() {
        for (status, text) in [
            (AccountStatus::Open, "open"),
            (AccountStatus::Frozen, "frozen"),
            (AccountStatus::Closed, "closed"),
        ] {
            assert_eq!(serde_json::to_value(status).ok(), Some(serde_json::json!(text)));
        }
    }

    fn opened_event() -> AccountEvent {
        Account::decide(None, open_command(0)).expect("opens").remove(0)
    }

    #[test]
    fn folding_no_events_gives_no_account() {
        assert_eq!(Account::fold([]), Ok(None));
    }

    #[test]
    fn folding_a_stream_gives_the_final_state() {
        let events = [
            opened_event(),
            AccountEvent::FundsDeposited {
                account_id: id(),
                amount: amount(100),
                reference: None,
            },
            AccountEvent::FundsWithdrawn {
                account_id: id(),
                amount: amount(30),
                reference: None,
            },
            AccountEvent::AccountFrozen {
                account_id: id(),
                reason: None,
            },
        ];
        let account = Account::fold(&events).expect("folds").expect("opened");
        assert_eq!(account.balance.get(), 70);
        assert_eq!(account.status, AccountStatus::Frozen);
    }

    #[test]
    fn a_deposit_before_the_account_was_opened_is_a_corrupt_stream() {
        let deposit = AccountEvent::FundsDeposited {
            account_id: id(),
            amount: amount(1),
            reference: None,
        };
        assert_eq!(
            Account::evolve(None, &deposit),
            Err(EvolveError::NotOpened {
                account_id: id(),
                event_type: "FundsDeposited"
            })
        );
    }

    #[test]
    fn a_second_account_opened_is_a_corrupt_stream() {
        let events = [opened_event(), opened_event()];
        assert_eq!(
            Account::fold(&events),
            Err(EvolveError::AlreadyOpened { account_id: id() })
        );
    }

    #[test]
    fn another_accounts_event_is_a_corrupt_stream() {
        let other = AccountId::from(Uuid::from_u128(2));
        let events = [
            opened_event(),
            AccountEvent::AccountFrozen {
                account_id: other,
                reason: None,
            },
        ];
        assert!(matches!(
            Account::fold(&events),
            Err(EvolveError::WrongAccount { found, .. }) if found == other
        ));
    }

    #[test]
    fn anything_but_erasure_after_closing_is_a_corrupt_stream() {
        let closed = AccountEvent::AccountClosed {
            account_id: id(),
            reason: None,
        };
        let unfrozen = AccountEvent::AccountUnfrozen {
            account_id: id(),
            reason: None,
        };
        let erased = AccountEvent::PersonalDataErased { account_id: id() };
        assert!(Account::fold([&opened_event(), &closed, &erased]).is_ok());
        assert!(matches!(
            Account::fold([&opened_event(), &closed, &unfrozen]),
            Err(EvolveError::AfterClose { .. })
        ));
    }

    #[test]
    fn an_overflowing_event_is_a_corrupt_stream_not_a_panic() {
        let state = Account {
            balance: Balance::new(i64::MAX),
            ..open_account(0, 0)
        };
        let deposit = AccountEvent::FundsDeposited {
            account_id: id(),
            amount: amount(1),
            reference: None,
        };
        assert!(matches!(
            Account::evolve(Some(state), &deposit),
            Err(EvolveError::BalanceOverflow { .. })
        ));
    }

    #[test]
    fn an_account_opened_with_an_unreadable_owner_folds() {
        let opened = AccountEvent::AccountOpened {
            account_id: id(),
            owner: None,
            currency: Currency::parse("EUR").expect("EUR is a currency"),
            overdraft_limit: OverdraftLimit::ZERO,
        };
        let account = Account::fold([&opened]).expect("folds").expect("opened");
        assert_eq!(account.owner, None);
    }
}
