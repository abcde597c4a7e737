//! The projector's speed: rebuild throughput from a store of `--events` events (default
//! 1,000,000) next to plain `COPY`s measured in the same run, and live projection lag
//! (append acknowledged to visible in the read model) at a fixed command rate through
//! the real relay and JetStream. Prints Markdown tables.
//!
//! `cargo run --release -p tests --bin bench-projector -- --events 1000000 --rate 1000`
//!
//! The store is generated through the domain's stored form (valid account and transfer
//! events with contiguous versions and positions) and loaded with one `COPY` into a
//! throwaway database, which is dropped at the end.

use std::time::{Duration, Instant};

use clap::Parser;
use domain::{
    AccountEvent, AccountId, Amount, Currency, LedgerEvent, OverdraftLimit, Owner, TransferEvent, TransferId,
};
use event_store::relay::{self, RelayConfig};
use event_store::{AppendRequest, EventStore, ExpectedVersion, Metadata, NewEvent};
use hdrhistogram::Histogram;
use projector::live::LiveConfig;
use projector::projection::Projection;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tests::bench::{BenchDatabase, machine};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Parser)]
struct Args {
    /// Server URL; a throwaway database is created beside the one named and dropped after.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
    /// NATS server with JetStream; the benchmark uses a stream of its own and deletes it.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// Events in the generated store.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Accounts the generated events spread over.
    #[arg(long, default_value_t = 50_000)]
    accounts: usize,
    /// Commands per second during the lag measurement (meant as half the command API's
    /// top rate).
    #[arg(long, default_value_t = 1_000)]
    rate: u64,
    /// Seconds the lag measurement runs.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
}

/// Bytes of COPY text sent per message: large enough to amortise the round trip.
const COPY_CHUNK_BYTES: usize = 1 << 20;

/// Concurrent writers during the lag measurement; each paces itself to its share of the rate.
const LAG_WRITERS: u64 = 16;

fn metadata() -> Metadata {
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
fn copy_text(value: &str, out: &mut String) {
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
fn sealed_owner(name: &str, email: &str) -> anyhow::Result<domain::SealedOwner> {
    let vault =
        event_store::pii::Vault::from_config(&event_store::pii::PiiConfig { pii_master_key: None }, true)?;
    let (key, _) = vault.new_key(Uuid::nil())?;
    Ok(key.seal_owner(&Owner::parse(name, email)?)?)
}

/// A valid ledger of `events` events over `accounts` accounts, as COPY text rows of
/// `events`: first every account opens, then deposits, withdrawals within the balance
/// and transfers between accounts of one currency.
fn generate(events: usize, accounts: usize) -> anyhow::Result<(Vec<String>, usize)> {
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
async fn copy_in(pool: &PgPool, statement: &str, text: &[u8]) -> anyhow::Result<f64> {
    let mut connection = pool.acquire().await?;
    let started = Instant::now();
    let mut copy = connection.copy_in_raw(statement).await?;
    for chunk in text.chunks(COPY_CHUNK_BYTES) {
        copy.send(chunk).await?;
    }
    copy.finish().await?;
    Ok(started.elapsed().as_secs_f64())
}

/// A table's rows in COPY text format.
async fn copy_out(pool: &PgPool, table: &str) -> anyhow::Result<Vec<u8>> {
    use futures::TryStreamExt;
    let mut connection = pool.acquire().await?;
    let chunks: Vec<_> = connection
        .copy_out_raw(&format!("COPY read_model.{table} TO STDOUT"))
        .await?
        .try_collect()
        .await?;
    Ok(chunks.concat())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let database = BenchDatabase::create(&args.database_url, 24).await?;
    let outcome = run(&args, &database.pool).await;
    database.drop_now().await?;
    outcome
}

async fn run(args: &Args, pool: &PgPool) -> anyhow::Result<()> {
    println!("Machine: {}", machine());
    println!();

    let started = Instant::now();
    let (rows, events) = generate(args.events, args.accounts)?;
    let generated_seconds = started.elapsed().as_secs_f64();
    let text: Vec<u8> = rows.concat().into_bytes();
    drop(rows);
    let events_copy_seconds = copy_in(
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

    let report = projector::rebuild::rebuild(pool, &Projection::ALL).await?;
    let rebuild_rate = report.events as f64 / report.elapsed_seconds;

    // The same read-model rows, COPYed into empty tables of the same shape.
    let mut read_model_rows = 0u64;
    let mut read_model_copy_seconds = 0.0;
    for projection in Projection::ALL {
        let table = projection.table();
        let text = copy_out(pool, table).await?;
        read_model_rows += text.iter().filter(|byte| **byte == b'\n').count() as u64;
        sqlx::query(&format!(
            "CREATE TABLE read_model.bench_copy_{table} (LIKE read_model.{table} INCLUDING ALL)"
        ))
        .execute(pool)
        .await?;
        read_model_copy_seconds += copy_in(
            pool,
            &format!("COPY read_model.bench_copy_{table} FROM STDIN"),
            &text,
        )
        .await?;
    }

    println!(
        "Store: {events} events over {} accounts (generated in {generated_seconds:.1} s).",
        args.accounts
    );
    println!();
    println!("| measurement | rows | seconds | rows/s | events/s |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| plain COPY of the events into `events` (the store's own indexes) | {events} | {events_copy_seconds:.1} | {:.0} | {:.0} |",
        events as f64 / events_copy_seconds,
        events as f64 / events_copy_seconds
    );
    println!(
        "| plain COPY of the rebuilt read-model rows into empty tables | {read_model_rows} | {read_model_copy_seconds:.1} | {:.0} | {:.0} |",
        read_model_rows as f64 / read_model_copy_seconds,
        events as f64 / read_model_copy_seconds
    );
    println!(
        "| `projector rebuild --all` (read, decode, fold, write, swap) | {read_model_rows} | {:.1} | {:.0} | {rebuild_rate:.0} |",
        report.elapsed_seconds,
        read_model_rows as f64 / report.elapsed_seconds
    );
    println!();

    lag(args, pool).await
}

/// Live lag: appends (a deposit each) at `--rate` through the relay and JetStream to the
/// live projector; for each, the time from the append's commit returning to the
/// `accounts` projection announcing a position at or past it.
async fn lag(args: &Args, pool: &PgPool) -> anyhow::Result<()> {
    let nats = async_nats::connect(&args.nats_url).await?;
    let unique = Uuid::now_v7().simple().to_string();
    let stream_name = format!("BENCH_PROJECTOR_{unique}");
    let subject_prefix = format!("benchprojector.{unique}");
    let store = EventStore::new(pool.clone());
    let stop = CancellationToken::new();
    let mut relay_config = RelayConfig::new(format!("bench-{unique}"));
    relay_config.stream_name = stream_name.clone();
    relay_config.subject_prefix = subject_prefix.clone();
    // The relay starts past the generated store: only the measured appends travel.
    let head = store.head().await?;
    sqlx::query("INSERT INTO relay_checkpoints (relay, position) VALUES ($1, $2)")
        .bind(&relay_config.name)
        .bind(head)
        .execute(pool)
        .await?;
    let relay = tokio::spawn(relay::run(
        store.clone(),
        nats.clone(),
        relay_config,
        stop.clone(),
    ));
    let mut live_config = LiveConfig::new(&stream_name, &subject_prefix);
    live_config.consumer_prefix = format!("bench_{unique}");
    let live = tokio::spawn(projector::live::run(
        pool.clone(),
        nats.clone(),
        live_config,
        stop.clone(),
    ));

    // The highest position the accounts projection has announced.
    let (projected, watcher) = watch::channel(0i64);
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(projector::checkpoint::PROJECTED_CHANNEL).await?;
    let listening = tokio::spawn(async move {
        while let Ok(notification) = listener.recv().await {
            if let Some(position) = notification
                .payload()
                .strip_prefix("accounts:")
                .and_then(|position| position.parse::<i64>().ok())
            {
                projected.send_if_modified(|current| {
                    let moved = position > *current;
                    *current = (*current).max(position);
                    moved
                });
            }
        }
    });

    // One account per writer, opened before the clock starts.
    let mut accounts = Vec::new();
    for _ in 0..LAG_WRITERS {
        let id = AccountId::new_v7();
        let opened = AccountEvent::AccountOpened {
            account_id: id,
            owner: Some(sealed_owner("Lag Bench", "lag@example.com")?),
            currency: Currency::parse("EUR")?,
            overdraft_limit: OverdraftLimit::ZERO,
        };
        store
            .append(AppendRequest::single(
                id.stream_id(),
                ExpectedVersion::NoStream,
                vec![NewEvent::from_domain(opened.to_stored(), metadata())],
            ))
            .await?;
        accounts.push(id);
    }
    let mut waiter = watcher.clone();
    let opened_head = store.head().await?;
    waiter.wait_for(|position| *position >= opened_head).await?;

    let period = Duration::from_secs_f64(LAG_WRITERS as f64 / args.rate as f64);
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    // Each append's wait runs on its own task, so a writer keeps its pace whatever the
    // lag; the waits report their microseconds here.
    let (samples, mut received) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let mut writers = Vec::new();
    for id in accounts {
        let store = store.clone();
        let watcher = watcher.clone();
        let samples = samples.clone();
        writers.push(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            while Instant::now() < deadline {
                ticks.tick().await;
                let deposit = AccountEvent::FundsDeposited {
                    account_id: id,
                    amount: Amount::new(1)?,
                    reference: None,
                };
                let outcome = store
                    .append(AppendRequest::single(
                        id.stream_id(),
                        ExpectedVersion::Any,
                        vec![NewEvent::from_domain(deposit.to_stored(), metadata())],
                    ))
                    .await?;
                let acknowledged = Instant::now();
                let mut watcher = watcher.clone();
                let samples = samples.clone();
                tokio::spawn(async move {
                    if watcher
                        .wait_for(|position| *position >= outcome.last_position)
                        .await
                        .is_ok()
                    {
                        let _ = samples.send(acknowledged.elapsed().as_micros().max(1) as u64);
                    }
                });
            }
            anyhow::Ok(())
        }));
    }
    drop(samples);
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for writer in writers {
        writer.await??;
    }
    while let Some(micros) = received.recv().await {
        histogram.record(micros)?;
    }
    stop.cancel();
    let _ = relay.await;
    let _ = live.await;
    listening.abort();
    let jetstream = async_nats::jetstream::new(nats);
    jetstream.delete_stream(&stream_name).await?;

    let achieved = histogram.len() as f64 / args.seconds as f64;
    let millis = |quantile: f64| histogram.value_at_quantile(quantile) as f64 / 1_000.0;
    println!("Live projection lag, append acknowledged to visible in `read_model.accounts`:");
    println!();
    println!("| target rate | achieved/s | samples | p50 ms | p99 ms | max ms |");
    println!("|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {achieved:.0} | {} | {:.1} | {:.1} | {:.1} |",
        args.rate,
        histogram.len(),
        millis(0.5),
        millis(0.99),
        histogram.max() as f64 / 1_000.0
    );
    Ok(())
}
