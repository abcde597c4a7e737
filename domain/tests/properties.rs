//! Properties of the ledger over random command sequences.
//!
//! A few accounts (one in another currency, one never opened) receive random deposits,
//! withdrawals, transfers, freezes, unfreezes, closes and erasures, with amounts from
//! one cent up to the maximum so that overdrafts and overflows are hit. Whatever the
//! sequence, the ledger must add up: each balance is the sum of its accepted movements,
//! no balance goes below its overdraft floor, folding the stored events gives the state
//! kept along the way, and transfers neither create nor destroy money.

use std::collections::HashMap;

use domain::{
    Account, AccountCommand, AccountEvent, AccountId, AccountStatus, Amount, Currency, DomainError,
    LedgerEvent, OverdraftLimit, Reference, SealedOwner, SealedText, Transfer, TransferCommand, TransferId,
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
        let transfer = Transfer::evolve(None, &decision.executed).expect("a new transfer executes");
        self.transfers.insert(id, transfer);
        self.movements[from] -= i128::from(amount.get());
        self.movements[to] += i128::from(amount.get());
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
        // A closed account closed at zero and has not moved since.
        if account.status == AccountStatus::Closed {
            prop_assert!(account.balance.is_zero());
        }
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
        // (4) Total money equals deposits minus withdrawals: transfers conserve it.
        prop_assert_eq!(total, world.deposited - world.withdrawn);
        // The never-opened slot stays empty.
        prop_assert!(world.states[OPENED_ACCOUNTS].is_none());
    }
}
