//! Properties of the ledger over random command sequences.
//!
//! A few accounts (one in another currency, one never opened) receive random deposits,
//! withdrawals, transfers, freezes, unfreezes, closes and erasures, with amounts from
//! one cent up to the maximum so that overdrafts and overflows are hit. Whatever the
//! sequence, the ledger must add up: each balance is the sum of its accepted movements,
//! no balance goes below its overdraft floor, folding the stored events gives the state
//! kept along the way, and transfers neither create nor destroy money.
//!
//! Pending transfers join in: they reserve, and are posted (in full or in part), voided
//! or expired at a random time. Reservations count as well: no available balance goes
//! below its floor, what the accounts hold as pending debits and credits is what the
//! pending transfers reserved, and each transfer stream folds to the state kept.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use domain::{
    Account, AccountCommand, AccountEvent, AccountId, AccountStatus, Amount, Currency, DomainError,
    LedgerEvent, OverdraftLimit, PendingTerms, Reference, SealedOwner, SealedText, SettleAction,
    SettleCommand, Transfer, TransferCommand, TransferEvent, TransferId, TransferStatus, decide_settle,
    decide_transfer,
};
use proptest::prelude::*;
use uuid::Uuid;

/// Accounts opened at the start: enough for transfers between several pairs, few enough
/// that random commands hit the same account often.
const OPENED_ACCOUNTS: usize = 4;

/// Account slots commands pick from: the opened accounts plus one never opened, so
/// "account not found" is exercised too.
const ACCOUNT_SLOTS: usize = OPENED_ACCOUNTS + 1;

/// Distinct transfer ids commands pick from: small, so ids repeat and "at most once" is
/// exercised.
const TRANSFER_ID_SLOTS: u128 = 8;

/// The longest command sequence: long enough to freeze, unfreeze, overdraw and close
/// within one run, short enough that 256 cases run in well under a second.
const MAX_COMMANDS: usize = 60;

/// The slot of the account opened in another currency, for currency mismatches.
const OTHER_CURRENCY_SLOT: usize = OPENED_ACCOUNTS - 1;

#[derive(Debug, Clone)]
enum Op {
    Deposit(usize, Amount),
    Withdraw(usize, Amount),
    Transfer {
        from: usize,
        to: usize,
        amount: Amount,
        id: u128,
    },
    /// A pending transfer expiring `expires_in` ticks from now (`None`: never).
    Pending {
        from: usize,
        to: usize,
        amount: Amount,
        id: u128,
        expires_in: Option<i64>,
    },
    Post {
        id: u128,
        amount: Option<Amount>,
    },
    Void(u128),
    Expire(u128),
    /// The clock moves on by this many ticks.
    Tick(i64),
    Freeze(usize),
    Unfreeze(usize),
    Close(usize),
    Erase(usize),
}

fn amount() -> impl Strategy<Value = Amount> {
    // Mostly small amounts, so balances move around zero and the overdraft; sometimes the
    // maximum or any valid amount, so overflow and huge overdrafts are reached.
    prop_oneof![
        8 => 1..=1_000_i64,
        1 => Just(Amount::MAX_MINOR_UNITS),
        1 => 1..=Amount::MAX_MINOR_UNITS,
    ]
    .prop_map(|minor_units| Amount::new(minor_units).expect("strategy gives valid amounts"))
}

fn overdraft_limit() -> impl Strategy<Value = OverdraftLimit> {
    prop_oneof![
        3 => Just(0_i64),
        3 => 1..=2_000_i64,
        1 => Just(Amount::MAX_MINOR_UNITS),
    ]
    .prop_map(|minor_units| OverdraftLimit::new(minor_units).expect("strategy gives valid limits"))
}

fn op() -> impl Strategy<Value = Op> {
    let slot = || 0..ACCOUNT_SLOTS;
    prop_oneof![
        4 => (slot(), amount()).prop_map(|(i, a)| Op::Deposit(i, a)),
        4 => (slot(), amount()).prop_map(|(i, a)| Op::Withdraw(i, a)),
        6 => (slot(), slot(), amount(), 0..TRANSFER_ID_SLOTS)
            .prop_map(|(from, to, amount, id)| Op::Transfer { from, to, amount, id }),
        4 => (slot(), slot(), amount(), 0..TRANSFER_ID_SLOTS, proptest::option::of(1..20_i64))
            .prop_map(|(from, to, amount, id, expires_in)| Op::Pending { from, to, amount, id, expires_in }),
        3 => (0..TRANSFER_ID_SLOTS, proptest::option::of(amount()))
            .prop_map(|(id, amount)| Op::Post { id, amount }),
        2 => (0..TRANSFER_ID_SLOTS).prop_map(Op::Void),
        2 => (0..TRANSFER_ID_SLOTS).prop_map(Op::Expire),
        2 => (1..10_i64).prop_map(Op::Tick),
        1 => slot().prop_map(Op::Freeze),
        1 => slot().prop_map(Op::Unfreeze),
        1 => slot().prop_map(Op::Close),
        1 => slot().prop_map(Op::Erase),
    ]
}

fn account_id(slot: usize) -> AccountId {
    AccountId::from(Uuid::from_u128(slot as u128 + 1))
}

/// The ledger as the command side keeps it, plus what the properties compare against.
struct World {
    /// The state kept along the way, updated by evolving each accepted event.
    states: Vec<Option<Account>>,
    /// Every event appended to each account's stream.
    streams: Vec<Vec<AccountEvent>>,
    transfers: HashMap<TransferId, Transfer>,
    /// Every event appended to each transfer's stream.
    transfer_streams: HashMap<TransferId, Vec<TransferEvent>>,
    /// The clock commands are decided at, in ticks (seconds) from an arbitrary start.
    now: i64,
    /// Per account: deposits and incoming transfers minus withdrawals and outgoing ones,
    /// from the accepted commands (not from the events), in i128 so it cannot overflow.
    movements: Vec<i128>,
    deposited: i128,
    withdrawn: i128,
}

impl World {
    fn open(limits: &[OverdraftLimit]) -> World {
        let mut world = World {
            states: vec![None; ACCOUNT_SLOTS],
            streams: vec![Vec::new(); ACCOUNT_SLOTS],
            transfers: HashMap::new(),
            transfer_streams: HashMap::new(),
            now: 0,
            movements: vec![0; ACCOUNT_SLOTS],
            deposited: 0,
            withdrawn: 0,
        };
        for (slot, limit) in limits.iter().enumerate() {
            let currency = if slot == OTHER_CURRENCY_SLOT { "USD" } else { "EUR" };
            let command = AccountCommand::Open {
                id: account_id(slot),
                owner: SealedOwner {
                    name: SealedText::parse("pii:v1:bmFtZQ==").expect("sealed"),
                    email: SealedText::parse("pii:v1:ZW1haWw=").expect("sealed"),
                },
                currency: Currency::parse(currency).expect("valid currency"),
                overdraft_limit: *limit,
            };
            let events = Account::decide(None, command).expect("a new account opens");
            world.append(slot, &events);
        }
        world
    }

    fn append(&mut self, slot: usize, events: &[AccountEvent]) {
        for event in events {
            let state = self.states[slot].take();
            self.states[slot] = Some(Account::evolve(state, event).expect("decided events always evolve"));
            self.streams[slot].push(event.clone());
        }
    }

    fn account_command(&mut self, slot: usize, command: AccountCommand) {
        let movement = match &command {
            AccountCommand::Deposit { amount, .. } => i128::from(amount.get()),
            AccountCommand::Withdraw { amount, .. } => -i128::from(amount.get()),
            _ => 0,
        };
        let Ok(events) = Account::decide(self.states[slot].as_ref(), command) else {
            return;
        };
        self.append(slot, &events);
        self.movements[slot] += movement;
        match movement.signum() {
            1 => self.deposited += movement,
            -1 => self.withdrawn -= movement,
            _ => {}
        }
    }

    fn transfer(&mut self, from: usize, to: usize, amount: Amount, id: u128) {
        let id = TransferId::from(Uuid::from_u128(id));
        let command = TransferCommand {
            id,
            from: account_id(from),
            to: account_id(to),
            amount,
            reference: Some(Reference::parse("property").expect("valid reference")),
            pending: None,
        };
        let decision = decide_transfer(
            self.transfers.get(&id),
            self.states[from].as_ref(),
            self.states[to].as_ref(),
            command,
        );
        let decision = match decision {
            Ok(decision) => decision,
            Err(error) => {
                check_transfer_refusal(&error, self, from, to, id);
                return;
            }
        };
        self.append(from, std::slice::from_ref(&decision.debit));
        self.append(to, std::slice::from_ref(&decision.credit));
        self.append_transfer(id, decision.transfer);
        self.movements[from] -= i128::from(amount.get());
        self.movements[to] += i128::from(amount.get());
    }

    fn clock(&self) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + self.now, 0).expect("a valid instant")
    }

    fn append_transfer(&mut self, id: TransferId, event: TransferEvent) {
        let state = self.transfers.remove(&id);
        let transfer = Transfer::evolve(state, &event).expect("decided transfer events always evolve");
        self.transfers.insert(id, transfer);
        self.transfer_streams.entry(id).or_default().push(event);
    }

    fn pending(&mut self, from: usize, to: usize, amount: Amount, id: u128, expires_in: Option<i64>) {
        let id = TransferId::from(Uuid::from_u128(id));
        let expires_at = expires_in.map(|ticks| {
            DateTime::from_timestamp(1_800_000_000 + self.now + ticks, 0).expect("a valid instant")
        });
        let command = TransferCommand {
            id,
            from: account_id(from),
            to: account_id(to),
            amount,
            reference: None,
            pending: Some(PendingTerms { expires_at }),
        };
        let decided = decide_transfer(
            self.transfers.get(&id),
            self.states[from].as_ref(),
            self.states[to].as_ref(),
            command,
        );
        match decided {
            Ok(decision) => {
                self.append(from, std::slice::from_ref(&decision.debit));
                self.append(to, std::slice::from_ref(&decision.credit));
                self.append_transfer(id, decision.transfer);
            }
            Err(error) => check_transfer_refusal(&error, self, from, to, id),
        }
    }

    fn settle(&mut self, id: u128, action: SettleAction) {
        let id = TransferId::from(Uuid::from_u128(id));
        let existing = self.transfers.get(&id).cloned();
        let slots = existing.as_ref().map(|transfer| {
            let slot = |account: AccountId| (0..ACCOUNT_SLOTS).find(|slot| account_id(*slot) == account);
            (slot(transfer.from), slot(transfer.to))
        });
        let (from, to) = match slots {
            Some((Some(from), Some(to))) => (Some(from), Some(to)),
            _ => (None, None),
        };
        let command = SettleCommand {
            transfer_id: id,
            action,
            now: self.clock(),
        };
        let decided = decide_settle(
            existing.as_ref(),
            from.and_then(|slot| self.states[slot].as_ref()),
            to.and_then(|slot| self.states[slot].as_ref()),
            command,
        );
        let decision = match decided {
            Ok(decision) => decision,
            Err(error) => {
                match (&error, &existing) {
                    (DomainError::TransferNotFound { .. }, None) => {}
                    (DomainError::TransferNotFound { .. }, Some(_)) => panic!("{error}: but it exists"),
                    (DomainError::TransferNotPending { .. }, Some(transfer)) => {
                        assert!(matches!(
                            transfer.status,
                            TransferStatus::Posted | TransferStatus::Voided
                        ));
                    }
                    (DomainError::TransferExpired { .. }, Some(transfer)) => assert!(
                        transfer.status == TransferStatus::Expired
                            || transfer.expires_at.is_some_and(|at| at <= self.clock())
                    ),
                    _ => {}
                }
                return;
            }
        };
        let (Some(from), Some(to)) = (from, to) else {
            panic!("a settled transfer names accounts of the world");
        };
        if let AccountEvent::PendingDebitPosted { amount, .. } = &decision.debit {
            self.movements[from] -= i128::from(amount.get());
            self.movements[to] += i128::from(amount.get());
        }
        self.append(from, std::slice::from_ref(&decision.debit));
        self.append(to, std::slice::from_ref(&decision.credit));
        self.append_transfer(id, decision.transfer);
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Deposit(slot, amount) => self.account_command(
                slot,
                AccountCommand::Deposit {
                    amount,
                    reference: None,
                },
            ),
            Op::Withdraw(slot, amount) => self.account_command(
                slot,
                AccountCommand::Withdraw {
                    amount,
                    reference: None,
                },
            ),
            Op::Transfer { from, to, amount, id } => self.transfer(from, to, amount, id),
            Op::Pending {
                from,
                to,
                amount,
                id,
                expires_in,
            } => self.pending(from, to, amount, id, expires_in),
            Op::Post { id, amount } => self.settle(id, SettleAction::Post { amount }),
            Op::Void(id) => self.settle(id, SettleAction::Void { reason: None }),
            Op::Expire(id) => self.settle(id, SettleAction::Expire),
            Op::Tick(ticks) => self.now += ticks,
            Op::Freeze(slot) => self.account_command(slot, AccountCommand::Freeze { reason: None }),
            Op::Unfreeze(slot) => self.account_command(slot, AccountCommand::Unfreeze { reason: None }),
            Op::Close(slot) => self.account_command(slot, AccountCommand::Close { reason: None }),
            Op::Erase(slot) => self.account_command(slot, AccountCommand::ErasePersonalData),
        }
    }
}

/// A refused transfer must be refused for a reason that holds.
fn check_transfer_refusal(error: &DomainError, world: &World, from: usize, to: usize, id: TransferId) {
    match error {
        DomainError::TransferAlreadyExecuted { .. } => {
            assert!(world.transfers.contains_key(&id));
        }
        DomainError::SameAccount { .. } => assert_eq!(from, to),
        DomainError::AccountNotFound { account_id: named } => {
            let missing = [from, to]
                .into_iter()
                .find(|slot| world.states[*slot].is_none())
                .map(account_id);
            assert_eq!(*named, missing);
        }
        DomainError::CurrencyMismatch { from, to } => assert_ne!(from, to),
        _ => {}
    }
}

/// Invariants that hold after every command.
fn check_invariants(world: &World) -> Result<(), TestCaseError> {
    for account in world.states.iter().flatten() {
        // (2) No balance is ever below its overdraft floor.
        prop_assert!(
            account.balance >= account.overdraft_limit.floor(),
            "balance {} below -{}",
            account.balance,
            account.overdraft_limit
        );
        // Nor is any available balance: reservations can always be posted.
        prop_assert!(
            i128::from(account.available_balance()) >= i128::from(account.overdraft_limit.floor().get()),
            "available balance {} below -{}",
            account.available_balance(),
            account.overdraft_limit
        );
        prop_assert!(account.pending_debits.get() >= 0 && account.pending_credits.get() >= 0);
        // A closed account closed at zero and has not moved since.
        if account.status == AccountStatus::Closed {
            prop_assert!(account.balance.is_zero());
            prop_assert!(account.pending_debits.is_zero() && account.pending_credits.is_zero());
        }
    }
    // What the accounts hold as pending is exactly what the pending transfers reserved.
    for slot in 0..ACCOUNT_SLOTS {
        let Some(account) = &world.states[slot] else {
            continue;
        };
        let reserved = |side: fn(&Transfer) -> AccountId| -> i128 {
            world
                .transfers
                .values()
                .filter(|t| t.status == TransferStatus::Pending && side(t) == account.id)
                .map(|t| i128::from(t.amount.get()))
                .sum()
        };
        prop_assert_eq!(i128::from(account.pending_debits.get()), reserved(|t| t.from));
        prop_assert_eq!(i128::from(account.pending_credits.get()), reserved(|t| t.to));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_ledger_adds_up_whatever_the_commands(
        limits in proptest::collection::vec(overdraft_limit(), OPENED_ACCOUNTS),
        ops in proptest::collection::vec(op(), 0..MAX_COMMANDS),
    ) {
        let mut world = World::open(&limits);
        check_invariants(&world)?;
        for op in ops {
            world.apply(op);
            check_invariants(&world)?;
        }

        let mut total = 0_i128;
        for slot in 0..ACCOUNT_SLOTS {
            let kept = &world.states[slot];
            // (1) Each balance is the sum of its accepted movements.
            let balance = kept.as_ref().map_or(0, |a| i128::from(a.balance.get()));
            prop_assert_eq!(balance, world.movements[slot]);
            total += balance;
            // (3) Folding the emitted events from scratch gives the state kept along the way.
            let folded = Account::fold(&world.streams[slot]);
            prop_assert_eq!(folded.as_ref(), Ok(kept));
            // The same holds after a trip through the stored form.
            let mut reread = Vec::new();
            for event in &world.streams[slot] {
                let stored = event.to_stored();
                match LedgerEvent::from_stored(stored.event_type, stored.schema_version, stored.data) {
                    Ok(LedgerEvent::Account(event)) => reread.push(event),
                    other => prop_assert!(false, "stored event did not read back: {:?}", other),
                }
            }
            prop_assert_eq!(Account::fold(&reread), Ok(kept.clone()));
        }
        // (4) Total money equals deposits minus withdrawals: transfers conserve it, and
        // so do reservations (all money reserved is promised to exactly one account).
        prop_assert_eq!(total, world.deposited - world.withdrawn);
        let pending_out: i128 = world.states.iter().flatten().map(|a| i128::from(a.pending_debits.get())).sum();
        let pending_in: i128 = world.states.iter().flatten().map(|a| i128::from(a.pending_credits.get())).sum();
        prop_assert_eq!(pending_out, pending_in);
        // (5) Every transfer stream, also through its stored form, folds to the state kept.
        for (id, stream) in &world.transfer_streams {
            prop_assert_eq!(Transfer::fold(stream), Ok(world.transfers.get(id).cloned()));
            let mut reread = Vec::new();
            for event in stream {
                let stored = event.to_stored();
                match LedgerEvent::from_stored(stored.event_type, stored.schema_version, stored.data) {
                    Ok(LedgerEvent::Transfer(event)) => reread.push(event),
                    other => prop_assert!(false, "stored event did not read back: {:?}", other),
                }
            }
            prop_assert_eq!(Transfer::fold(&reread), Ok(world.transfers.get(id).cloned()));
        }
        // The never-opened slot stays empty.
        prop_assert!(world.states[OPENED_ACCOUNTS].is_none());
    }
}
