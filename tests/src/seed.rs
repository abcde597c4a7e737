//! A valid ledger generated through the domain's stored form and COPYed straight into
//! `events` of a throwaway database: the store the benchmarks that need a large log
//! (`bench-projector`, `bench-verify`) run against. Valid account and transfer events
//! with contiguous versions and positions, owners sealed as the command API seals them,
//! so events have their real size.
//!
//! The rows bypass the append, so they have no hash in the chain yet
//! (`event_store::chain`): whoever needs the chain calls `event_store::chain::backfill`.

use std::time::Instant;

use domain::{
    AccountEvent, AccountId, Amount, Currency, LedgerEvent, OverdraftLimit, Owner, TransferEvent, TransferId,
};
use event_store::Metadata;
use sqlx::PgPool;
use uuid::Uuid;

/// Bytes of COPY text sent per message: large enough to amortise the round trip.
pub const COPY_CHUNK_BYTES: usize = 1 << 20;

pub fn metadata() -> Metadata {
    Metadata {
        actor: "bench".into(),
        correlation_id: Uuid::now_v7().to_string(),
        causation_id: None,
        command: "bench".into(),
        idempotency_key: None,
        trace: None,
    }
}

/// Escapes a value for COPY's text format.
pub fn copy_text(value: &str, out: &mut String) {
    for character in value.chars() {
        match character {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            other => out.push(other),
        }
    }
}

/// An owner sealed as the command API seals one, so events have their real size. Sealed
/// once under one throwaway development key and reused: the projector copies sealed
/// owners without opening them, so whose key it is does not matter here.
pub fn sealed_owner(name: &str, email: &str) -> anyhow::Result<domain::SealedOwner> {
    let vault =
        event_store::pii::Vault::from_config(&event_store::pii::PiiConfig { pii_master_key: None }, true)?;
    let (key, _) = vault.new_key(Uuid::nil())?;
    Ok(key.seal_owner(&Owner::parse(name, email)?)?)
}

/// A valid ledger of `events` events over `accounts` accounts, as COPY text rows of
/// `events`: first every account opens, then deposits, withdrawals within the balance
/// and transfers between accounts of one currency.
pub fn generate(events: usize, accounts: usize) -> anyhow::Result<(Vec<String>, usize)> {
    let eur = Currency::parse("EUR")?;
    let owner = sealed_owner("Bench Owner", "bench@example.com")?;
    let metadata = serde_json::to_string(&metadata())?;
    let recorded_at = chrono::Utc::now().to_rfc3339();
    let ids: Vec<AccountId> = (0..accounts).map(|_| AccountId::new_v7()).collect();
    let mut versions: Vec<i64> = vec![0; accounts];
    let mut balances: Vec<i64> = vec![0; accounts];
    let mut rows = Vec::with_capacity(events + 2);
    let mut random: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = |below: u64| {
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        random % below
    };
    let push = |rows: &mut Vec<String>, stream_id: String, version: i64, event: LedgerEvent| {
        let stored = event.to_stored();
        let mut row = String::with_capacity(400);
        let position = rows.len() + 1;
        row.push_str(&format!(
            "{position}\t{}\t{stream_id}\t{version}\t{}\t{}\t",
            Uuid::now_v7(),
            stored.event_type,
            stored.schema_version
        ));
        copy_text(&stored.data.to_string(), &mut row);
        row.push('\t');
        copy_text(&metadata, &mut row);
        row.push('\t');
        row.push_str(&recorded_at);
        row.push('\n');
        rows.push(row);
    };
    for (index, id) in ids.iter().enumerate() {
        versions[index] += 1;
        push(
            &mut rows,
            id.stream_id(),
            versions[index],
            LedgerEvent::Account(AccountEvent::AccountOpened {
                account_id: *id,
                owner: Some(owner.clone()),
                currency: eur,
                overdraft_limit: OverdraftLimit::ZERO,
            }),
        );
    }
    while rows.len() < events {
        let index = next(accounts as u64) as usize;
        let amount = 1 + next(10_000) as i64;
        match next(10) {
            0..=3 => {
                versions[index] += 1;
                balances[index] += amount;
                push(
                    &mut rows,
                    ids[index].stream_id(),
                    versions[index],
                    LedgerEvent::Account(AccountEvent::FundsDeposited {
                        account_id: ids[index],
                        amount: Amount::new(amount)?,
                        reference: None,
                    }),
                );
            }
            4..=5 if balances[index] >= amount => {
                versions[index] += 1;
                balances[index] -= amount;
                push(
                    &mut rows,
                    ids[index].stream_id(),
                    versions[index],
                    LedgerEvent::Account(AccountEvent::FundsWithdrawn {
                        account_id: ids[index],
                        amount: Amount::new(amount)?,
                        reference: None,
                    }),
                );
            }
            _ => {
                let to = next(accounts as u64) as usize;
                if to == index || balances[index] < amount {
                    continue;
                }
                let transfer_id = TransferId::new_v7();
                let amount = Amount::new(amount)?;
                versions[index] += 1;
                balances[index] -= amount.get();
                push(
                    &mut rows,
                    ids[index].stream_id(),
                    versions[index],
                    LedgerEvent::Account(AccountEvent::TransferDebited {
                        account_id: ids[index],
                        transfer_id,
                        to_account_id: ids[to],
                        amount,
                        reference: None,
                    }),
                );
                versions[to] += 1;
                balances[to] += amount.get();
                push(
                    &mut rows,
                    ids[to].stream_id(),
                    versions[to],
                    LedgerEvent::Account(AccountEvent::TransferCredited {
                        account_id: ids[to],
                        transfer_id,
                        from_account_id: ids[index],
                        amount,
                        reference: None,
                    }),
                );
                push(
                    &mut rows,
                    transfer_id.stream_id(),
                    1,
                    LedgerEvent::Transfer(TransferEvent::TransferExecuted {
                        transfer_id,
                        from_account_id: ids[index],
                        to_account_id: ids[to],
                        amount,
                        currency: eur,
                        reference: None,
                    }),
                );
            }
        }
    }
    let count = rows.len();
    Ok((rows, count))
}

/// COPYs `text` (rows in COPY text format) with `statement`; returns the seconds taken.
pub async fn copy_in(pool: &PgPool, statement: &str, text: &[u8]) -> anyhow::Result<f64> {
    let mut connection = pool.acquire().await?;
    let started = Instant::now();
    let mut copy = connection.copy_in_raw(statement).await?;
    for chunk in text.chunks(COPY_CHUNK_BYTES) {
        copy.send(chunk).await?;
    }
    copy.finish().await?;
    Ok(started.elapsed().as_secs_f64())
}

/// What [`seed_log`] wrote and how long it took.
#[derive(Debug, Clone, Copy)]
pub struct SeededLog {
    /// Events in the log: positions 1 to `events`.
    pub events: usize,
    pub generated_seconds: f64,
    /// The `COPY` into `events` alone.
    pub copy_seconds: f64,
}

/// Generates about `events` events over `accounts` accounts ([`generate`]), COPYs them
/// into `events`, moves the head to the last one and `VACUUM ANALYZE`s the table.
pub async fn seed_log(pool: &PgPool, events: usize, accounts: usize) -> anyhow::Result<SeededLog> {
    let started = Instant::now();
    let (rows, events) = generate(events, accounts)?;
    let generated_seconds = started.elapsed().as_secs_f64();
    let text: Vec<u8> = rows.concat().into_bytes();
    drop(rows);
    let copy_seconds = copy_in(
        pool,
        "COPY events (position, event_id, stream_id, stream_version, event_type, schema_version, data, \
         metadata, recorded_at) FROM STDIN",
        &text,
    )
    .await?;
    drop(text);
    sqlx::query("UPDATE event_store_head SET position = $1")
        .bind(events as i64)
        .execute(pool)
        .await?;
    sqlx::query("VACUUM ANALYZE events").execute(pool).await?;
    Ok(SeededLog {
        events,
        generated_seconds,
        copy_seconds,
    })
}
