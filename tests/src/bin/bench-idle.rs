//! `bench-idle`: what the whole system costs when nobody uses it. Starts the three
//! processes against a fresh database on the profiled PostgreSQL
//! (`scripts/pg-profiled.sh`), lets them settle, then reports over a quiet stretch each
//! process's and PostgreSQL's CPU as a share of one core and the statements issued per
//! second, with the statements themselves. The README's goal: under 1% of one core in
//! total and under one statement per second.
//!
//!     dir=$(mktemp -d); url=$(scripts/pg-profiled.sh start "$dir/pg")
//!     DATABASE_URL=$url target/release/bench-idle --seconds 60
//!     scripts/pg-profiled.sh stop "$dir/pg"

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use serde_json::json;
use sqlx::PgPool;
use tests::bench::{BenchDatabaseArgs, write_json};
use tests::harness::{Binary, System};
use tests::profile::{PostgresCluster, measure_idle};

tests::bench_allocator!();

#[derive(Parser)]
#[command(name = "bench-idle", about = "CPU and statements of the whole system at rest")]
struct Args {
    /// Length of the quiet stretch measured, in seconds.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Time left for start-up work (migrations, first catch-up, pools filling) before
    /// measuring, in seconds.
    #[arg(long, default_value_t = 5)]
    settle_seconds: u64,
    /// The profiled PostgreSQL (`scripts/pg-profiled.sh`); the system's database is
    /// created on it.
    #[command(flatten)]
    database: BenchDatabaseArgs,
    /// Also write the figures as JSON here (`scripts/bench.sh` reads them for the goals).
    #[arg(long)]
    json: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let url = &args.database.database_url;
    let pool = PgPool::connect(url).await?;
    let cluster = PostgresCluster::locate(&pool).await?;
    let nats_url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let system = System::start_on(&Binary::ALL, url, &nats_url)
        .await
        .context("starting the system")?;
    tokio::time::sleep(Duration::from_secs(args.settle_seconds)).await;
    let cost = measure_idle(&system, &cluster, &pool, Duration::from_secs(args.seconds)).await;
    pool.close().await;
    let clean = system.shut_down().await?;
    let cost = cost?;
    println!(
        "\n#### The whole system at rest, {:.0} s ({})\n\n{}",
        cost.seconds,
        tests::bench::machine(),
        cost.markdown(None, 15)
    );
    if let Some(path) = &args.json {
        write_json(
            path,
            &json!({
                "seconds": cost.seconds,
                "cpu_percent_of_one_core": cost.total_cpu() * 100.0 / cost.seconds,
                "postgres_cpu_percent_of_one_core": cost.postgres * 100.0 / cost.seconds,
                "statements_per_second": cost.statements_per_second(),
                "jit_compiled_statements": cost.jit_compiled().len(),
                "cost": cost,
            }),
        )?;
    }
    if !clean {
        anyhow::bail!("a process did not exit cleanly on SIGTERM");
    }
    Ok(())
}
