//! Folding events into read-model rows, with no I/O: the one place that says what each
//! event does to each table. Live batches and rebuilds both fold through here (live over
//! the rows a batch touches, loaded from the table; a rebuild over every row, held in
//! memory), so the two cannot disagree.
//!
//! Every fold checks what it relies on (an account exists before money moves on it,
//! versions follow each other, balances do not overflow) and refuses with an
//! [`ApplyError`] instead of guessing: that error stops the projection (guarantee 4).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use domain::{AccountEvent, LedgerEvent, TransferEvent};
use event_store::RecordedEvent;
use uuid::Uuid;

/// A decoded event with the envelope fields the read models keep.
#[derive(Debug, Clone)]
pub struct ProjectedEvent {
    pub position: i64,
    pub stream_version: i64,
    pub recorded_at: DateTime<Utc>,
    pub event: LedgerEvent,
}

impl ProjectedEvent {
    /// Decodes (and upcasts) a stored event.
    pub fn decode(recorded: &RecordedEvent) -> Result<Self, ApplyError> {
        Self::from_parts(
            recorded.position,
            recorded.stream_version,
            recorded.recorded_at,
            &recorded.event_type,
            recorded.schema_version,
            recorded.data.clone(),
        )
    }

    /// Decodes from the columns of `events`, for readers that skip the full envelope.
    pub fn from_parts(
        position: i64,
        stream_version: i64,
        recorded_at: DateTime<Utc>,
        event_type: &str,
        schema_version: i32,
        data: serde_json::Value,
    ) -> Result<Self, ApplyError> {
        let event = LedgerEvent::from_stored(event_type, schema_version, data)
            .map_err(|source| ApplyError::Decode { position, source })?;
        Ok(Self {
            position,
            stream_version,
            recorded_at,
            event,
        })
    }
}

/// An event that cannot be applied. Never skipped: the projection stops at it.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("the event at position {position} cannot be decoded")]
    Decode {
        position: i64,
        #[source]
        source: domain::DecodeError,
    },
    #[error("the event at position {position} ({event_type}) does not fit the read model: {reason}")]
    Inconsistent {
        position: i64,
        event_type: &'static str,
        reason: String,
    },
}

impl ApplyError {
    /// The position of the event that could not be applied.
    pub fn position(&self) -> i64 {
        match self {
            ApplyError::Decode { position, .. } | ApplyError::Inconsistent { position, .. } => *position,
        }
    }
}

fn inconsistent(event: &ProjectedEvent, reason: impl Into<String>) -> ApplyError {
    ApplyError::Inconsistent {
        position: event.position,
        event_type: event.event.event_type(),
        reason: reason.into(),
    }
}

/// A row of `read_model.accounts`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AccountRow {
    pub account_id: Uuid,
    /// The owner's name and email exactly as the event carries them: sealed under the
    /// account's key, so that no read model (nor a dump of one) ever holds plaintext.
    /// The query API opens them while the key exists. `None` once erased.
    pub owner_name: Option<String>,
    pub owner_email: Option<String>,
    pub currency: String,
    pub balance: i64,
    pub overdraft_limit: i64,
    pub status: String,
    pub version: i64,
    pub opened_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_position: i64,
    /// What pending transfers out of the account reserved, minor units.
    pub pending_debits: i64,
    /// What pending transfers into the account may bring, minor units.
    pub pending_credits: i64,
}

/// A row of `read_model.account_transactions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionRow {
    pub account_id: Uuid,
    pub position: i64,
    pub kind: &'static str,
    pub amount: i64,
    pub balance_after: i64,
    pub reference: Option<String>,
    pub transfer_id: Option<Uuid>,
    pub counterparty_account_id: Option<Uuid>,
    pub recorded_at: DateTime<Utc>,
}

/// A row of `read_model.transfers`. `recorded_at` and `position` are those of the
/// transfer's first event (`TransferExecuted` or `TransferPending`): a post or void
/// changes `status` and `posted_amount` only.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TransferRow {
    pub transfer_id: Uuid,
    pub from_account_id: Uuid,
    pub to_account_id: Uuid,
    pub amount: i64,
    pub currency: String,
    pub reference: Option<String>,
    pub recorded_at: DateTime<Utc>,
    pub position: i64,
    /// `pending`, `posted`, `voided` or `expired`.
    pub status: String,
    /// What moved; `None` while pending and once voided or expired.
    pub posted_amount: Option<i64>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// The transfer rows a projection holds while folding.
#[derive(Debug, Default)]
pub struct TransferRows {
    /// Pending transfers: the only rows a later event changes. A live batch loads the
    /// ones its events settle; a rebuild keeps all of them until it ends.
    pub pending: HashMap<Uuid, TransferRow>,
    /// Ids in `pending` whose row is not written yet.
    pub changed: std::collections::HashSet<Uuid>,
    /// Rows that will not change again (posted, voided, expired), not written yet.
    pub settled: Vec<TransferRow>,
}

/// The account ids whose rows `event` changes in `accounts` or `account_transactions`.
pub fn account_touched(event: &ProjectedEvent) -> Option<Uuid> {
    match &event.event {
        LedgerEvent::Account(account_event) => Some(account_event.account_id().as_uuid()),
        LedgerEvent::Transfer(_) => None,
    }
}

/// Applies `event` to the account rows; returns the account id whose row changed.
/// `accounts` must hold the current row of every account the event names, if it exists.
pub fn fold_account(
    accounts: &mut HashMap<Uuid, AccountRow>,
    event: &ProjectedEvent,
) -> Result<Option<Uuid>, ApplyError> {
    let LedgerEvent::Account(account_event) = &event.event else {
        return Ok(None);
    };
    let account_id = account_event.account_id().as_uuid();
    if let AccountEvent::AccountOpened {
        owner,
        currency,
        overdraft_limit,
        ..
    } = account_event
    {
        if accounts.contains_key(&account_id) {
            return Err(inconsistent(event, "the account is already open"));
        }
        if event.stream_version != 1 {
            return Err(inconsistent(
                event,
                "AccountOpened is not the stream's first event",
            ));
        }
        accounts.insert(
            account_id,
            AccountRow {
                account_id,
                owner_name: owner.as_ref().map(|sealed| sealed.name.as_str().to_owned()),
                owner_email: owner.as_ref().map(|sealed| sealed.email.as_str().to_owned()),
                currency: currency.as_str().to_owned(),
                balance: 0,
                overdraft_limit: overdraft_limit.get(),
                status: "open".to_owned(),
                version: event.stream_version,
                opened_at: event.recorded_at,
                updated_at: event.recorded_at,
                last_position: event.position,
                pending_debits: 0,
                pending_credits: 0,
            },
        );
        return Ok(Some(account_id));
    }
    let Some(row) = accounts.get_mut(&account_id) else {
        return Err(inconsistent(event, "the account was never opened"));
    };
    if event.stream_version != row.version + 1 {
        return Err(inconsistent(
            event,
            format!(
                "stream version {} does not follow {}",
                event.stream_version, row.version
            ),
        ));
    }
    let overflow = || inconsistent(event, "the balance would overflow");
    match account_event {
        AccountEvent::AccountOpened { .. } => {}
        AccountEvent::FundsDeposited { amount, .. } | AccountEvent::TransferCredited { amount, .. } => {
            row.balance = row.balance.checked_add(amount.get()).ok_or_else(overflow)?;
        }
        AccountEvent::FundsWithdrawn { amount, .. } | AccountEvent::TransferDebited { amount, .. } => {
            row.balance = row.balance.checked_sub(amount.get()).ok_or_else(overflow)?;
        }
        AccountEvent::AccountFrozen { .. } => row.status = "frozen".to_owned(),
        AccountEvent::AccountUnfrozen { .. } => row.status = "open".to_owned(),
        AccountEvent::AccountClosed { .. } => row.status = "closed".to_owned(),
        AccountEvent::PersonalDataErased { .. } => {
            row.owner_name = None;
            row.owner_email = None;
        }
        AccountEvent::TransferDebitReserved { amount, .. } => {
            row.pending_debits = row
                .pending_debits
                .checked_add(amount.get())
                .ok_or_else(overflow)?;
        }
        AccountEvent::TransferCreditReserved { amount, .. } => {
            row.pending_credits = row
                .pending_credits
                .checked_add(amount.get())
                .ok_or_else(overflow)?;
        }
        AccountEvent::PendingDebitPosted { amount, reserved, .. } => {
            row.pending_debits = released(event, row.pending_debits, reserved.get())?;
            row.balance = row.balance.checked_sub(amount.get()).ok_or_else(overflow)?;
        }
        AccountEvent::PendingCreditPosted { amount, reserved, .. } => {
            row.pending_credits = released(event, row.pending_credits, reserved.get())?;
            row.balance = row.balance.checked_add(amount.get()).ok_or_else(overflow)?;
        }
        AccountEvent::PendingDebitReleased { amount, .. } => {
            row.pending_debits = released(event, row.pending_debits, amount.get())?;
        }
        AccountEvent::PendingCreditReleased { amount, .. } => {
            row.pending_credits = released(event, row.pending_credits, amount.get())?;
        }
    }
    row.version = event.stream_version;
    row.updated_at = event.recorded_at;
    row.last_position = event.position;
    Ok(Some(account_id))
}

/// A pending amount after `reserved` of it stops being pending; never below zero.
fn released(event: &ProjectedEvent, pending: i64, reserved: i64) -> Result<i64, ApplyError> {
    pending
        .checked_sub(reserved)
        .filter(|after| *after >= 0)
        .ok_or_else(|| inconsistent(event, "more is released than is pending"))
}

/// Applies `event` to the statement: appends a row to `rows` for a money movement.
/// Reservations and releases move no money and have no row; a posted pending transfer
/// is a `transfer_out`/`transfer_in` of the posted amount.
/// `balances` holds the balance after the latest statement row of each account the
/// event names (absent: no row yet, balance 0).
pub fn fold_transaction(
    balances: &mut HashMap<Uuid, i64>,
    event: &ProjectedEvent,
    rows: &mut Vec<TransactionRow>,
) -> Result<(), ApplyError> {
    let LedgerEvent::Account(account_event) = &event.event else {
        return Ok(());
    };
    let (kind, amount, reference, transfer_id, counterparty, credit) = match account_event {
        AccountEvent::FundsDeposited {
            amount, reference, ..
        } => ("deposit", amount, reference, None, None, true),
        AccountEvent::FundsWithdrawn {
            amount, reference, ..
        } => ("withdrawal", amount, reference, None, None, false),
        AccountEvent::TransferCredited {
            amount,
            reference,
            transfer_id,
            from_account_id,
            ..
        } => (
            "transfer_in",
            amount,
            reference,
            Some(transfer_id.as_uuid()),
            Some(from_account_id.as_uuid()),
            true,
        ),
        AccountEvent::PendingCreditPosted {
            amount,
            reference,
            transfer_id,
            from_account_id,
            ..
        } => (
            "transfer_in",
            amount,
            reference,
            Some(transfer_id.as_uuid()),
            Some(from_account_id.as_uuid()),
            true,
        ),
        AccountEvent::TransferDebited {
            amount,
            reference,
            transfer_id,
            to_account_id,
            ..
        } => (
            "transfer_out",
            amount,
            reference,
            Some(transfer_id.as_uuid()),
            Some(to_account_id.as_uuid()),
            false,
        ),
        AccountEvent::PendingDebitPosted {
            amount,
            reference,
            transfer_id,
            to_account_id,
            ..
        } => (
            "transfer_out",
            amount,
            reference,
            Some(transfer_id.as_uuid()),
            Some(to_account_id.as_uuid()),
            false,
        ),
        _ => return Ok(()),
    };
    let account_id = account_event.account_id().as_uuid();
    let balance = balances.entry(account_id).or_insert(0);
    let after = if credit {
        balance.checked_add(amount.get())
    } else {
        balance.checked_sub(amount.get())
    };
    *balance = after.ok_or_else(|| inconsistent(event, "the balance would overflow"))?;
    rows.push(TransactionRow {
        account_id,
        position: event.position,
        kind,
        amount: amount.get(),
        balance_after: *balance,
        reference: reference.as_ref().map(|reference| reference.as_str().to_owned()),
        transfer_id,
        counterparty_account_id: counterparty,
        recorded_at: event.recorded_at,
    });
    Ok(())
}

/// The transfer ids whose pending row `event` settles (a live batch loads those rows).
pub fn transfer_settled(event: &ProjectedEvent) -> Option<Uuid> {
    match &event.event {
        LedgerEvent::Transfer(
            TransferEvent::TransferPosted { transfer_id, .. }
            | TransferEvent::TransferVoided { transfer_id, .. },
        ) => Some(transfer_id.as_uuid()),
        _ => None,
    }
}

/// Applies `event` to the transfer rows: a new row for an executed (posted) or pending
/// transfer; a post or void settles its pending row, which `rows.pending` must hold.
pub fn fold_transfer(rows: &mut TransferRows, event: &ProjectedEvent) -> Result<(), ApplyError> {
    let LedgerEvent::Transfer(transfer_event) = &event.event else {
        return Ok(());
    };
    let row = |transfer_id: &domain::TransferId,
               from: &domain::AccountId,
               to: &domain::AccountId,
               amount: &domain::Amount,
               currency: &domain::Currency,
               reference: &Option<domain::Reference>| TransferRow {
        transfer_id: transfer_id.as_uuid(),
        from_account_id: from.as_uuid(),
        to_account_id: to.as_uuid(),
        amount: amount.get(),
        currency: currency.as_str().to_owned(),
        reference: reference.as_ref().map(|reference| reference.as_str().to_owned()),
        recorded_at: event.recorded_at,
        position: event.position,
        status: "posted".to_owned(),
        posted_amount: Some(amount.get()),
        expires_at: None,
    };
    match transfer_event {
        TransferEvent::TransferExecuted {
            transfer_id,
            from_account_id,
            to_account_id,
            amount,
            currency,
            reference,
        } => {
            rows.settled.push(row(
                transfer_id,
                from_account_id,
                to_account_id,
                amount,
                currency,
                reference,
            ));
        }
        TransferEvent::TransferPending {
            transfer_id,
            from_account_id,
            to_account_id,
            amount,
            currency,
            reference,
            expires_at,
        } => {
            let id = transfer_id.as_uuid();
            if rows.pending.contains_key(&id) {
                return Err(inconsistent(event, "the transfer is already pending"));
            }
            let pending = TransferRow {
                status: "pending".to_owned(),
                posted_amount: None,
                expires_at: *expires_at,
                ..row(
                    transfer_id,
                    from_account_id,
                    to_account_id,
                    amount,
                    currency,
                    reference,
                )
            };
            rows.pending.insert(id, pending);
            rows.changed.insert(id);
        }
        TransferEvent::TransferPosted {
            transfer_id,
            posted_amount,
        } => {
            let mut settled = take_pending(rows, event, transfer_id.as_uuid())?;
            settled.status = "posted".to_owned();
            settled.posted_amount = Some(posted_amount.get());
            rows.settled.push(settled);
        }
        TransferEvent::TransferVoided {
            transfer_id, expired, ..
        } => {
            let mut settled = take_pending(rows, event, transfer_id.as_uuid())?;
            settled.status = if *expired { "expired" } else { "voided" }.to_owned();
            rows.settled.push(settled);
        }
    }
    Ok(())
}

fn take_pending(
    rows: &mut TransferRows,
    event: &ProjectedEvent,
    id: Uuid,
) -> Result<TransferRow, ApplyError> {
    rows.changed.remove(&id);
    rows.pending
        .remove(&id)
        .ok_or_else(|| inconsistent(event, "the transfer is not pending"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::{AccountId, Amount, Currency, OverdraftLimit, SealedOwner, SealedText};

    fn at(position: i64, stream_version: i64, event: AccountEvent) -> ProjectedEvent {
        ProjectedEvent {
            position,
            stream_version,
            recorded_at: DateTime::from_timestamp(1_700_000_000 + position, 0).expect("valid time"),
            event: LedgerEvent::Account(event),
        }
    }

    fn opened(id: AccountId) -> AccountEvent {
        AccountEvent::AccountOpened {
            account_id: id,
            owner: Some(SealedOwner {
                name: SealedText::parse("pii:v1:bmFtZQ==").expect("sealed"),
                email: SealedText::parse("pii:v1:ZW1haWw=").expect("sealed"),
            }),
            currency: Currency::parse("EUR").expect("EUR"),
            overdraft_limit: OverdraftLimit::new(100).expect("valid limit"),
        }
    }

    #[test]
    fn a_deposit_and_a_withdrawal_leave_the_difference_as_balance_and_in_the_statement() {
        let id = AccountId::new_v7();
        let mut accounts = HashMap::new();
        let mut balances = HashMap::new();
        let mut statement = Vec::new();
        let events = [
            at(1, 1, opened(id)),
            at(
                2,
                2,
                AccountEvent::FundsDeposited {
                    account_id: id,
                    amount: Amount::new(500).expect("amount"),
                    reference: None,
                },
            ),
            at(
                3,
                3,
                AccountEvent::FundsWithdrawn {
                    account_id: id,
                    amount: Amount::new(200).expect("amount"),
                    reference: None,
                },
            ),
        ];
        for event in &events {
            fold_account(&mut accounts, event).expect("applies");
            fold_transaction(&mut balances, event, &mut statement).expect("applies");
        }
        let row = &accounts[&id.as_uuid()];
        assert_eq!((row.balance, row.version, row.last_position), (300, 3, 3));
        assert_eq!(
            statement
                .iter()
                .map(|row| (row.kind, row.balance_after))
                .collect::<Vec<_>>(),
            vec![("deposit", 500), ("withdrawal", 300)]
        );
    }

    #[test]
    fn money_moved_on_an_account_never_opened_stops_the_projection() {
        let id = AccountId::new_v7();
        let deposit = at(
            7,
            1,
            AccountEvent::FundsDeposited {
                account_id: id,
                amount: Amount::new(5).expect("amount"),
                reference: None,
            },
        );
        let error = fold_account(&mut HashMap::new(), &deposit).expect_err("refused");
        assert_eq!(error.position(), 7);
    }

    #[test]
    fn a_skipped_stream_version_is_refused() {
        let id = AccountId::new_v7();
        let mut accounts = HashMap::new();
        fold_account(&mut accounts, &at(1, 1, opened(id))).expect("opens");
        let frozen = at(
            2,
            3,
            AccountEvent::AccountFrozen {
                account_id: id,
                reason: None,
            },
        );
        assert!(fold_account(&mut accounts, &frozen).is_err());
    }

    #[test]
    fn erasure_clears_the_sealed_owner_but_keeps_the_balance() {
        let id = AccountId::new_v7();
        let mut accounts = HashMap::new();
        fold_account(&mut accounts, &at(1, 1, opened(id))).expect("opens");
        let row = &accounts[&id.as_uuid()];
        assert_eq!(
            (row.owner_name.as_deref(), row.owner_email.as_deref()),
            (Some("pii:v1:bmFtZQ=="), Some("pii:v1:ZW1haWw=")),
            "the row keeps the ciphertext, never plaintext"
        );
        fold_account(
            &mut accounts,
            &at(2, 2, AccountEvent::PersonalDataErased { account_id: id }),
        )
        .expect("erases");
        let row = &accounts[&id.as_uuid()];
        assert_eq!(
            (row.owner_name.as_deref(), row.owner_email.as_deref()),
            (None, None)
        );
        assert_eq!(row.currency, "EUR");
    }
}
