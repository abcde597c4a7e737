//! Bulk writes for a rebuild: read-model rows sent with `COPY … FROM STDIN (FORMAT
//! binary)` into tables that have no indexes yet.
//!
//! A rebuild writes every row of every read model once, into tables nobody else reads.
//! Multi-row `INSERT … SELECT unnest(…)` (what live batches use, in [`crate::tables`])
//! still runs the executor per row; `COPY` in PostgreSQL's binary format skips parsing
//! and planning altogether, so PostgreSQL's share of a rebuild is little more than
//! writing heap pages. The encoding is the documented one ("Binary Format" of `COPY`):
//! a fixed header, then per row a field count and each field as a length and its
//! binary send form, then a trailer.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::fold::{AccountRow, TransactionRow, TransferRow};
use crate::projection::SCHEMA;

/// `PGCOPY\n\377\r\n\0`, then flags (no OIDs) and an empty header extension.
const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// PostgreSQL's timestamps count microseconds from 2000-01-01 00:00:00 UTC.
const POSTGRES_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// One `COPY` payload in the binary format, built in memory.
struct BinaryRows {
    buffer: Vec<u8>,
}

impl BinaryRows {
    fn with_capacity(bytes: usize) -> Self {
        let mut buffer = Vec::with_capacity(bytes + HEADER.len());
        buffer.extend_from_slice(HEADER);
        Self { buffer }
    }

    fn row(&mut self, fields: i16) {
        self.buffer.extend_from_slice(&fields.to_be_bytes());
    }

    fn field(&mut self, bytes: &[u8]) {
        // Read-model values are bounded (text fields by the command API's limits), far
        // below the 1 GB a PostgreSQL field can hold; a longer one would be refused by
        // the server, not cut here.
        let length = i32::try_from(bytes.len()).unwrap_or(i32::MAX);
        self.buffer.extend_from_slice(&length.to_be_bytes());
        self.buffer.extend_from_slice(bytes);
    }

    fn null(&mut self) {
        self.buffer.extend_from_slice(&(-1i32).to_be_bytes());
    }

    fn uuid(&mut self, value: Uuid) {
        self.field(value.as_bytes());
    }

    fn optional_uuid(&mut self, value: Option<Uuid>) {
        match value {
            Some(value) => self.uuid(value),
            None => self.null(),
        }
    }

    fn bigint(&mut self, value: i64) {
        self.field(&value.to_be_bytes());
    }

    fn text(&mut self, value: &str) {
        self.field(value.as_bytes());
    }

    fn optional_text(&mut self, value: Option<&str>) {
        match value {
            Some(value) => self.text(value),
            None => self.null(),
        }
    }

    fn timestamptz(&mut self, value: DateTime<Utc>) {
        self.bigint(value.timestamp_micros() - POSTGRES_EPOCH_UNIX_MICROS);
    }

    fn optional_bigint(&mut self, value: Option<i64>) {
        match value {
            Some(value) => self.bigint(value),
            None => self.null(),
        }
    }

    fn optional_timestamptz(&mut self, value: Option<DateTime<Utc>>) {
        match value {
            Some(value) => self.timestamptz(value),
            None => self.null(),
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.buffer.extend_from_slice(&(-1i16).to_be_bytes());
        self.buffer
    }
}

async fn copy_in(
    connection: &mut PgConnection,
    table: &str,
    columns: &str,
    rows: Vec<u8>,
) -> Result<(), sqlx::Error> {
    let mut copy = connection
        .copy_in_raw(&format!(
            "COPY {SCHEMA}.{table} ({columns}) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    copy.send(rows).await?;
    copy.finish().await?;
    Ok(())
}

/// Writes account rows into `table`, which must not hold any of them yet.
pub async fn copy_accounts<'a>(
    connection: &mut PgConnection,
    table: &str,
    rows: impl ExactSizeIterator<Item = &'a AccountRow>,
) -> Result<(), sqlx::Error> {
    if rows.len() == 0 {
        return Ok(());
    }
    let mut out = BinaryRows::with_capacity(rows.len() * 400);
    for row in rows {
        out.row(13);
        out.uuid(row.account_id);
        out.optional_text(row.owner_name.as_deref());
        out.optional_text(row.owner_email.as_deref());
        out.text(&row.currency);
        out.bigint(row.balance);
        out.bigint(row.overdraft_limit);
        out.text(&row.status);
        out.bigint(row.version);
        out.timestamptz(row.opened_at);
        out.timestamptz(row.updated_at);
        out.bigint(row.last_position);
        out.bigint(row.pending_debits);
        out.bigint(row.pending_credits);
    }
    copy_in(
        connection,
        table,
        "account_id, owner_name, owner_email, currency, balance, overdraft_limit, status, version, \
         opened_at, updated_at, last_position, pending_debits, pending_credits",
        out.finish(),
    )
    .await
}

/// Appends statement rows to `table`.
pub async fn copy_transactions(
    connection: &mut PgConnection,
    table: &str,
    rows: &[TransactionRow],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut out = BinaryRows::with_capacity(rows.len() * 140);
    for row in rows {
        out.row(9);
        out.uuid(row.account_id);
        out.bigint(row.position);
        out.text(row.kind);
        out.bigint(row.amount);
        out.bigint(row.balance_after);
        out.optional_text(row.reference.as_deref());
        out.optional_uuid(row.transfer_id);
        out.optional_uuid(row.counterparty_account_id);
        out.timestamptz(row.recorded_at);
    }
    copy_in(
        connection,
        table,
        "account_id, position, kind, amount, balance_after, reference, transfer_id, \
         counterparty_account_id, recorded_at",
        out.finish(),
    )
    .await
}

/// Appends transfer rows to `table`, which must not hold any of them yet.
pub async fn copy_transfers<'a>(
    connection: &mut PgConnection,
    table: &str,
    rows: impl ExactSizeIterator<Item = &'a TransferRow>,
) -> Result<(), sqlx::Error> {
    if rows.len() == 0 {
        return Ok(());
    }
    let mut out = BinaryRows::with_capacity(rows.len() * 170);
    for row in rows {
        out.row(11);
        out.uuid(row.transfer_id);
        out.uuid(row.from_account_id);
        out.uuid(row.to_account_id);
        out.bigint(row.amount);
        out.text(&row.currency);
        out.optional_text(row.reference.as_deref());
        out.timestamptz(row.recorded_at);
        out.bigint(row.position);
        out.text(&row.status);
        out.optional_bigint(row.posted_amount);
        out.optional_timestamptz(row.expires_at);
    }
    copy_in(
        connection,
        table,
        "transfer_id, from_account_id, to_account_id, amount, currency, reference, recorded_at, position, \
         status, posted_amount, expires_at",
        out.finish(),
    )
    .await
}
