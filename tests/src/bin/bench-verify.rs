//! How fast the tamper-evident chain is verified (and written for events that arrive
//! without a hash) over a log of `--events` events (default 1,000,000). Prints a
//! Markdown table.
//!
//! `cargo build --release -p tests && target/release/bench-verify --events 1000000`
//!
//! The log is generated and COPYed as for `bench-projector` ([`tests::seed`]) into a
//! throwaway database, which is dropped at the end; `event_store::chain::backfill`
//! then chains it (what the command API does at start for events from before the
//! chain), and `event_store::chain::verify` checks it whole, as `GET /audit/verify`
//! and `verify-log` do.

use std::time::Instant;

use clap::Parser;
use event_store::chain::{self, Verdict};
use tests::bench::{BenchDatabase, BenchDatabaseArgs, machine};
use tests::seed;

tests::bench_allocator!();

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    database: BenchDatabaseArgs,
    /// Events in the generated log.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Accounts the generated events spread over.
    #[arg(long, default_value_t = 50_000)]
    accounts: usize,
    /// How many times to verify the whole log (each is one row of the table).
    #[arg(long, default_value_t = 2)]
    runs: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let database = BenchDatabase::create(&args.database.database_url, 4).await?;
    let outcome = run(&args, &database.pool).await;
    database.drop_now().await?;
    outcome
}

async fn run(args: &Args, pool: &sqlx::PgPool) -> anyhow::Result<()> {
    println!("Machine: {}", machine());
    println!();
    let seeded = seed::seed_log(pool, args.events, args.accounts).await?;
    let events = seeded.events as i64;

    let started = Instant::now();
    let chained = chain::backfill(pool).await?;
    let backfill_seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(chained == events, "chained {chained} of {events} events");
    sqlx::query("VACUUM ANALYZE event_hashes").execute(pool).await?;

    println!(
        "Log: {events} events over {} accounts (COPY {:.1} s).",
        args.accounts, seeded.copy_seconds
    );
    println!();
    println!("| measurement | events | seconds | events/s |");
    println!("|---|---:|---:|---:|");
    println!(
        "| plain COPY of the events into `events` (the store's own indexes) | {events} | {:.1} | {:.0} |",
        seeded.copy_seconds,
        events as f64 / seeded.copy_seconds
    );
    println!(
        "| chaining events stored without a hash (`chain::backfill`: read, hash, write) | {events} | {backfill_seconds:.1} | {:.0} |",
        events as f64 / backfill_seconds
    );
    for run in 1..=args.runs {
        let started = Instant::now();
        let verdict = chain::verify(pool, 1, None).await?;
        let seconds = started.elapsed().as_secs_f64();
        let Verdict::Verified { verified, .. } = verdict else {
            anyhow::bail!("the chain did not verify: {verdict:?}");
        };
        anyhow::ensure!(verified == events, "verified {verified} of {events} events");
        println!(
            "| verify the whole log (`chain::verify`, run {run}) | {verified} | {seconds:.1} | {:.0} |",
            verified as f64 / seconds
        );
    }
    Ok(())
}
