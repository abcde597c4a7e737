//! The projector's rebuild throughput from a store of `--events` events (default
//! 1,000,000), next to plain `COPY`s measured in the same run. Prints a Markdown table.
//!
//! `cargo run --release -p tests --bin bench-projector -- --events 1000000`
//!
//! Live projection lag is measured where it means something, through the whole system
//! with commands paced at half the command API's top rate: `loadgen` (its "lag under
//! load" rows).
//!
//! The store is generated through the domain's stored form (valid account and transfer
//! events with contiguous versions and positions) and loaded with one `COPY` into a
//! throwaway database, which is dropped at the end.

use clap::Parser;
use projector::projection::Projection;
use sqlx::PgPool;
use tests::bench::{BenchDatabase, BenchDatabaseArgs, machine};
use tests::seed::{self, copy_in};

tests::bench_allocator!();

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    database: BenchDatabaseArgs,
    /// Events in the generated store.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Accounts the generated events spread over.
    #[arg(long, default_value_t = 50_000)]
    accounts: usize,
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
    let database = BenchDatabase::create(&args.database.database_url, 24).await?;
    let outcome = run(&args, &database.pool).await;
    database.drop_now().await?;
    outcome
}

async fn run(args: &Args, pool: &PgPool) -> anyhow::Result<()> {
    println!("Machine: {}", machine());
    println!();

    let seeded = seed::seed_log(pool, args.events, args.accounts).await?;
    let (events, generated_seconds, events_copy_seconds) =
        (seeded.events, seeded.generated_seconds, seeded.copy_seconds);

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
    Ok(())
}
