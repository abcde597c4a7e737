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

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use sqlx::PgPool;
use tests::harness::{Binary, System};
use tests::profile::{PostgresCluster, measure_idle};

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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let url = std::env::var("DATABASE_URL").context("DATABASE_URL: the profiled PostgreSQL's URL")?;
    let pool = PgPool::connect(&url).await?;
    let cluster = PostgresCluster::locate(&pool).await?;
    let system = System::start(&Binary::ALL).await.context("starting the system")?;
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
    if !clean {
        anyhow::bail!("a process did not exit cleanly on SIGTERM");
    }
    Ok(())
}
