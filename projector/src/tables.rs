//! Reading and writing the read-model tables, many rows per statement (`UNNEST` of one
//! array per column): a round trip per batch, never per event. Every function takes the
//! table's name, because a rebuild writes the same shapes into fresh tables
//! (`<table>__rebuild`) before it swaps them in. Names come from
//! [`crate::projection::Projection::table`], never from input.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::fold::{AccountRow, TransactionRow, TransferRow};
use crate::projection::SCHEMA;

/// Most rows one multi-row statement writes. PostgreSQL takes arrays of any size, but
/// one statement's arrays are built in memory on both sides; 10,000 rows of these
/// tables is a few megabytes, and past that the round trip no longer dominates.
pub const MAX_ROWS_PER_STATEMENT: usize = 10_000;

/// The current rows of `ids` in the accounts table `table`.
pub async fn load_accounts(
    connection: &mut PgConnection,
    table: &str,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, AccountRow>, sqlx::Error> {
    let rows: Vec<AccountRow> = sqlx::query_as(&format!(
        "SELECT account_id, owner_name, owner_email, currency, balance, overdraft_limit, status, \
         version, opened_at, updated_at, last_position, pending_debits, pending_credits \
         FROM {SCHEMA}.{table} WHERE account_id = ANY($1)"
    ))
    .bind(ids)
    .fetch_all(&mut *connection)
    .await?;
    Ok(rows.into_iter().map(|row| (row.account_id, row)).collect())
}

/// The balance after the latest statement row of each of `ids` that has one.
pub async fn load_balances(
    connection: &mut PgConnection,
    table: &str,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, i64>, sqlx::Error> {
    // One index probe per account on the primary key (account_id, position), newest first.
    let rows: Vec<(Uuid, i64)> = sqlx::query_as(&format!(
        "SELECT a.id, t.balance_after FROM unnest($1::uuid[]) AS a(id) \
         CROSS JOIN LATERAL (SELECT balance_after FROM {SCHEMA}.{table} \
             WHERE account_id = a.id ORDER BY position DESC LIMIT 1) AS t"
    ))
    .bind(ids)
    .fetch_all(&mut *connection)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Inserts or replaces account rows.
pub async fn upsert_accounts(
    connection: &mut PgConnection,
    table: &str,
    rows: &[&AccountRow],
) -> Result<(), sqlx::Error> {
    for chunk in rows.chunks(MAX_ROWS_PER_STATEMENT) {
        let mut account_id = Vec::with_capacity(chunk.len());
        let mut owner_name = Vec::with_capacity(chunk.len());
        let mut owner_email = Vec::with_capacity(chunk.len());
        let mut currency = Vec::with_capacity(chunk.len());
        let mut balance = Vec::with_capacity(chunk.len());
        let mut overdraft_limit = Vec::with_capacity(chunk.len());
        let mut status = Vec::with_capacity(chunk.len());
        let mut version = Vec::with_capacity(chunk.len());
        let mut opened_at: Vec<DateTime<Utc>> = Vec::with_capacity(chunk.len());
        let mut updated_at: Vec<DateTime<Utc>> = Vec::with_capacity(chunk.len());
        let mut last_position = Vec::with_capacity(chunk.len());
        let mut pending_debits = Vec::with_capacity(chunk.len());
        let mut pending_credits = Vec::with_capacity(chunk.len());
        for row in chunk {
            account_id.push(row.account_id);
            owner_name.push(row.owner_name.as_deref());
            owner_email.push(row.owner_email.as_deref());
            currency.push(row.currency.as_str());
            balance.push(row.balance);
            overdraft_limit.push(row.overdraft_limit);
            status.push(row.status.as_str());
            version.push(row.version);
            opened_at.push(row.opened_at);
            updated_at.push(row.updated_at);
            last_position.push(row.last_position);
            pending_debits.push(row.pending_debits);
            pending_credits.push(row.pending_credits);
        }
        sqlx::query(&format!(
            "INSERT INTO {SCHEMA}.{table} (account_id, owner_name, owner_email, currency, balance, \
                 overdraft_limit, status, version, opened_at, updated_at, last_position, pending_debits, \
                 pending_credits) \
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bigint[], \
                 $6::bigint[], $7::text[], $8::bigint[], $9::timestamptz[], $10::timestamptz[], $11::bigint[], \
                 $12::bigint[], $13::bigint[]) \
             ON CONFLICT (account_id) DO UPDATE SET owner_name = EXCLUDED.owner_name, \
                 owner_email = EXCLUDED.owner_email, currency = EXCLUDED.currency, \
                 balance = EXCLUDED.balance, overdraft_limit = EXCLUDED.overdraft_limit, \
                 status = EXCLUDED.status, version = EXCLUDED.version, opened_at = EXCLUDED.opened_at, \
                 updated_at = EXCLUDED.updated_at, last_position = EXCLUDED.last_position, \
                 pending_debits = EXCLUDED.pending_debits, pending_credits = EXCLUDED.pending_credits"
        ))
        .bind(account_id)
        .bind(owner_name)
        .bind(owner_email)
        .bind(currency)
        .bind(balance)
        .bind(overdraft_limit)
        .bind(status)
        .bind(version)
        .bind(opened_at)
        .bind(updated_at)
        .bind(last_position)
        .bind(pending_debits)
        .bind(pending_credits)
        .execute(&mut *connection)
        .await?;
    }
    Ok(())
}

/// Appends statement rows. A row already there is a conflict and an error: the
/// checkpoint is what keeps an event from applying twice, and this would hide a breach.
pub async fn insert_transactions(
    connection: &mut PgConnection,
    table: &str,
    rows: &[TransactionRow],
) -> Result<(), sqlx::Error> {
    for chunk in rows.chunks(MAX_ROWS_PER_STATEMENT) {
        let mut account_id = Vec::with_capacity(chunk.len());
        let mut position = Vec::with_capacity(chunk.len());
        let mut kind = Vec::with_capacity(chunk.len());
        let mut amount = Vec::with_capacity(chunk.len());
        let mut balance_after = Vec::with_capacity(chunk.len());
        let mut reference = Vec::with_capacity(chunk.len());
        let mut transfer_id = Vec::with_capacity(chunk.len());
        let mut counterparty = Vec::with_capacity(chunk.len());
        let mut recorded_at: Vec<DateTime<Utc>> = Vec::with_capacity(chunk.len());
        for row in chunk {
            account_id.push(row.account_id);
            position.push(row.position);
            kind.push(row.kind);
            amount.push(row.amount);
            balance_after.push(row.balance_after);
            reference.push(row.reference.as_deref());
            transfer_id.push(row.transfer_id);
            counterparty.push(row.counterparty_account_id);
            recorded_at.push(row.recorded_at);
        }
        sqlx::query(&format!(
            "INSERT INTO {SCHEMA}.{table} (account_id, position, kind, amount, balance_after, \
                 reference, transfer_id, counterparty_account_id, recorded_at) \
             SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::bigint[], $5::bigint[], \
                 $6::text[], $7::uuid[], $8::uuid[], $9::timestamptz[])"
        ))
        .bind(account_id)
        .bind(position)
        .bind(kind)
        .bind(amount)
        .bind(balance_after)
        .bind(reference)
        .bind(transfer_id)
        .bind(counterparty)
        .bind(recorded_at)
        .execute(&mut *connection)
        .await?;
    }
    Ok(())
}

/// The pending rows among `ids` in the transfers table `table`: what a post or void in
/// the batch settles.
pub async fn load_pending_transfers(
    connection: &mut PgConnection,
    table: &str,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, TransferRow>, sqlx::Error> {
    let rows: Vec<TransferRow> = sqlx::query_as(&format!(
        "SELECT transfer_id, from_account_id, to_account_id, amount, currency, reference, recorded_at, \
         position, status, posted_amount, expires_at FROM {SCHEMA}.{table} \
         WHERE transfer_id = ANY($1) AND status = 'pending'"
    ))
    .bind(ids)
    .fetch_all(&mut *connection)
    .await?;
    Ok(rows.into_iter().map(|row| (row.transfer_id, row)).collect())
}

/// Inserts transfer rows, or replaces them: a pending transfer's row is written again
/// when it is posted, voided or expired (the checkpoint keeps an event from applying
/// twice; the fold refuses a second transfer with one id).
pub async fn upsert_transfers(
    connection: &mut PgConnection,
    table: &str,
    rows: &[&TransferRow],
) -> Result<(), sqlx::Error> {
    for chunk in rows.chunks(MAX_ROWS_PER_STATEMENT) {
        let mut transfer_id = Vec::with_capacity(chunk.len());
        let mut from = Vec::with_capacity(chunk.len());
        let mut to = Vec::with_capacity(chunk.len());
        let mut amount = Vec::with_capacity(chunk.len());
        let mut currency = Vec::with_capacity(chunk.len());
        let mut reference = Vec::with_capacity(chunk.len());
        let mut recorded_at: Vec<DateTime<Utc>> = Vec::with_capacity(chunk.len());
        let mut position = Vec::with_capacity(chunk.len());
        let mut status = Vec::with_capacity(chunk.len());
        let mut posted_amount = Vec::with_capacity(chunk.len());
        let mut expires_at: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(chunk.len());
        for row in chunk {
            transfer_id.push(row.transfer_id);
            from.push(row.from_account_id);
            to.push(row.to_account_id);
            amount.push(row.amount);
            currency.push(row.currency.as_str());
            reference.push(row.reference.as_deref());
            recorded_at.push(row.recorded_at);
            position.push(row.position);
            status.push(row.status.as_str());
            posted_amount.push(row.posted_amount);
            expires_at.push(row.expires_at);
        }
        sqlx::query(&format!(
            "INSERT INTO {SCHEMA}.{table} (transfer_id, from_account_id, to_account_id, amount, \
                 currency, reference, recorded_at, position, status, posted_amount, expires_at) \
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::bigint[], $5::text[], \
                 $6::text[], $7::timestamptz[], $8::bigint[], $9::text[], $10::bigint[], $11::timestamptz[]) \
             ON CONFLICT (transfer_id) DO UPDATE SET status = EXCLUDED.status, \
                 posted_amount = EXCLUDED.posted_amount, expires_at = EXCLUDED.expires_at"
        ))
        .bind(transfer_id)
        .bind(from)
        .bind(to)
        .bind(amount)
        .bind(currency)
        .bind(reference)
        .bind(recorded_at)
        .bind(position)
        .bind(status)
        .bind(posted_amount)
        .bind(expires_at)
        .execute(&mut *connection)
        .await?;
    }
    Ok(())
}
