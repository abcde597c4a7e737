//! A valid ledger generated through the domain's stored form and COPYed straight into
//! `events` of a throwaway database: the store the benchmarks that need a large log
//! (`bench-projector`, `bench-verify`, `bench-growth`) run against. Valid account and transfer events
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

/// Events generated and COPYed at a time by [`seed_log`]: bounds the seeding's memory
/// (about 200 MB of COPY text) whatever the log's size, so a log of 10 million events
/// seeds on a machine that could not hold it as text.
pub const SEED_CHUNK_EVENTS: usize = 250_000;

/// A valid ledger over a fixed set of accounts, generated in order: first every account
/// opens, then deposits, withdrawals within the balance and transfers between accounts
/// of one currency, as COPY text rows of `events` with contiguous positions and versions.
pub struct Generator {
    eur: Currency,
    owner: domain::SealedOwner,
    metadata: String,
    recorded_at: String,
    ids: Vec<AccountId>,
    versions: Vec<i64>,
    balances: Vec<i64>,
    random: u64,
    /// Events written so far: the last position.
    written: usize,
}

impl Generator {
    pub fn new(accounts: usize) -> anyhow::Result<Self> {
        anyhow::ensure!(
            accounts >= 2,
            "a ledger with transfers needs at least two accounts"
        );
        Ok(Self {
            eur: Currency::parse("EUR")?,
            owner: sealed_owner("Bench Owner", "bench@example.com")?,
            metadata: serde_json::to_string(&metadata())?,
            recorded_at: chrono::Utc::now().to_rfc3339(),
            ids: (0..accounts).map(|_| AccountId::new_v7()).collect(),
            versions: vec![0; accounts],
            balances: vec![0; accounts],
            random: 0x9E37_79B9_7F4A_7C15,
            written: 0,
        })
    }

    /// Events written so far (the position of the last one).
    pub fn written(&self) -> usize {
        self.written
    }

    fn next(&mut self, below: u64) -> u64 {
        self.random ^= self.random << 13;
        self.random ^= self.random >> 7;
        self.random ^= self.random << 17;
        self.random % below
    }

    fn push(&mut self, out: &mut String, stream_id: String, version: i64, event: LedgerEvent) {
        let stored = event.to_stored();
        self.written += 1;
        out.push_str(&format!(
            "{}\t{}\t{stream_id}\t{version}\t{}\t{}\t",
            self.written,
            Uuid::now_v7(),
            stored.event_type,
            stored.schema_version
        ));
        copy_text(&stored.data.to_string(), out);
        out.push('\t');
        copy_text(&self.metadata, out);
        out.push('\t');
        out.push_str(&self.recorded_at);
        out.push('\n');
    }

    /// Appends rows to `out` until at least `until` events are written in all (a
    /// transfer writes three at once, so up to two more), opening every account first.
    pub fn fill(&mut self, out: &mut String, until: usize) -> anyhow::Result<()> {
        let accounts = self.ids.len();
        while self.written < accounts {
            let index = self.written;
            let id = self.ids[index];
            self.versions[index] += 1;
            let event = LedgerEvent::Account(AccountEvent::AccountOpened {
                account_id: id,
                owner: Some(self.owner.clone()),
                currency: self.eur,
                overdraft_limit: OverdraftLimit::ZERO,
            });
            self.push(out, id.stream_id(), self.versions[index], event);
        }
        while self.written < until {
            let index = self.next(accounts as u64) as usize;
            let amount = 1 + self.next(10_000) as i64;
            match self.next(10) {
                0..=3 => {
                    self.versions[index] += 1;
                    self.balances[index] += amount;
                    let event = LedgerEvent::Account(AccountEvent::FundsDeposited {
                        account_id: self.ids[index],
                        amount: Amount::new(amount)?,
                        reference: None,
                    });
                    self.push(out, self.ids[index].stream_id(), self.versions[index], event);
                }
                4..=5 if self.balances[index] >= amount => {
                    self.versions[index] += 1;
                    self.balances[index] -= amount;
                    let event = LedgerEvent::Account(AccountEvent::FundsWithdrawn {
                        account_id: self.ids[index],
                        amount: Amount::new(amount)?,
                        reference: None,
                    });
                    self.push(out, self.ids[index].stream_id(), self.versions[index], event);
                }
                _ => {
                    let to = self.next(accounts as u64) as usize;
                    if to == index || self.balances[index] < amount {
                        continue;
                    }
                    let transfer_id = TransferId::new_v7();
                    let amount = Amount::new(amount)?;
                    let (from_id, to_id) = (self.ids[index], self.ids[to]);
                    self.versions[index] += 1;
                    self.balances[index] -= amount.get();
                    let debited = LedgerEvent::Account(AccountEvent::TransferDebited {
                        account_id: from_id,
                        transfer_id,
                        to_account_id: to_id,
                        amount,
                        reference: None,
                    });
                    self.push(out, from_id.stream_id(), self.versions[index], debited);
                    self.versions[to] += 1;
                    self.balances[to] += amount.get();
                    let credited = LedgerEvent::Account(AccountEvent::TransferCredited {
                        account_id: to_id,
                        transfer_id,
                        from_account_id: from_id,
                        amount,
                        reference: None,
                    });
                    self.push(out, to_id.stream_id(), self.versions[to], credited);
                    let executed = LedgerEvent::Transfer(TransferEvent::TransferExecuted {
                        transfer_id,
                        from_account_id: from_id,
                        to_account_id: to_id,
                        amount,
                        currency: self.eur,
                        reference: None,
                    });
                    self.push(out, transfer_id.stream_id(), 1, executed);
                }
            }
        }
        Ok(())
    }
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

/// The `COPY` statement every seeding chunk goes through.
const COPY_EVENTS: &str = "COPY events (position, event_id, stream_id, stream_version, event_type, \
     schema_version, data, metadata, recorded_at) FROM STDIN";

/// Generates about `events` events over `accounts` accounts ([`Generator`]) and COPYs
/// them into `events`, [`SEED_CHUNK_EVENTS`] at a time (one `COPY` each, so memory stays
/// bounded); then moves the head to the last one and `VACUUM ANALYZE`s the table.
pub async fn seed_log(pool: &PgPool, events: usize, accounts: usize) -> anyhow::Result<SeededLog> {
    let mut generator = Generator::new(accounts)?;
    let mut generated_seconds = 0.0;
    let mut copy_seconds = 0.0;
    let mut text = String::new();
    while generator.written() < events {
        text.clear();
        let started = Instant::now();
        generator.fill(&mut text, (generator.written() + SEED_CHUNK_EVENTS).min(events))?;
        generated_seconds += started.elapsed().as_secs_f64();
        copy_seconds += copy_in(pool, COPY_EVENTS, text.as_bytes()).await?;
    }
    drop(text);
    let events = generator.written();
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

/// Makes a seeded log look, to the processes that start on it, like one they wrote
/// themselves, so that they start in seconds whatever its size:
///
/// - the chain's head is moved to the log's head with a placeholder hash, so the command
///   API does not chain millions of events at start (`event_store::chain::backfill`,
///   about 9,000 events/s); the seeded events have no hash, so verifying the chain over
///   them fails, which no benchmark does;
/// - the relay's checkpoint (`relay`, the command API's relay name) is moved to the
///   head, so it publishes only what comes after;
/// - every projection is rebuilt from the log (`projector::rebuild`), which leaves its
///   checkpoint at the head, so the projector starts live.
///
/// Returns the seconds the rebuild took.
pub async fn ready_for_system(pool: &PgPool, relay: &str) -> anyhow::Result<f64> {
    sqlx::query("UPDATE event_store_head SET hashed_position = position, hash = $1")
        .bind(vec![0xA5_u8; 32])
        .execute(pool)
        .await?;
    sqlx::query(
        "INSERT INTO relay_checkpoints (relay, position) SELECT $1, position FROM event_store_head \
         ON CONFLICT (relay) DO UPDATE SET position = excluded.position",
    )
    .bind(relay)
    .execute(pool)
    .await?;
    let report = projector::rebuild::rebuild(pool, &projector::projection::Projection::ALL).await?;
    Ok(report.elapsed_seconds)
}
