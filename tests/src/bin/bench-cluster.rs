//! `bench-cluster`: what running as a cluster costs and gives, measured side by side in
//! one run on one machine with one client (`tests::load`, as `loadgen` uses): one
//! instance of each process on one NATS server, then the cluster of `scripts/cluster.sh`
//! (three NATS nodes with the stream on all three, two instances of every process behind
//! nginx, the query APIs reading a streaming replica), both on the same private
//! PostgreSQL primary. For each: deposits/s from closed-loop connections with their
//! p50/p99, the visibility lag (acknowledged → readable through the query API) one
//! deposit at a time, and under paced deposits at half its own closed-loop rate. The
//! machine's limits from the same run sit beside them: PostgreSQL's single-row INSERT
//! commit rate at 16 connections, and JetStream's publish rate into one copy and into
//! three.
//!
//!     cargo build --release --workspace --bins --locked
//!     target/release/bench-cluster --seconds 20
//!
//! Needs nats-server, PostgreSQL's server programs and nginx (scripts/ci-tools.sh
//! unpacks one), as the chaos test does. A benchmark, not a test: it reports figures and
//! fails only if the system does.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use serde_json::{Value, json};
use service::auth::Role;
use tests::bench::{
    BenchDatabase, LatencyRun, jetstream_publish_rate_replicated, machine, plain_insert_commit_rate,
    write_json,
};
use tests::cluster::{LocalCluster, PROJECTORS};
use tests::harness::{Binary, System};
use tests::load::{Api, Scenario, lag_under_load, open_accounts, run_scenario, visibility_lag};
use tests::nats_server::NatsServer;
use tests::pg_replica::PgReplicated;

tests::bench_allocator!();

#[derive(Parser)]
#[command(
    name = "bench-cluster",
    about = "The cluster against one instance of each process"
)]
struct Args {
    /// Seconds each closed-loop and paced run lasts (and each limit's measurement).
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Closed-loop HTTP connections posting deposits.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Accounts the deposits spread over.
    #[arg(long, default_value_t = 1_000)]
    accounts: usize,
    /// Deposits timed one at a time from the answer to their visibility.
    #[arg(long, default_value_t = 200)]
    lag_samples: usize,
    /// Also write the figures as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// What one topology measured.
struct Figures {
    deposits: LatencyRun,
    lag_alone: LatencyRun,
    offered: f64,
    lag_under_load: LatencyRun,
}

async fn measure(api: &Api, args: &Args) -> anyhow::Result<Figures> {
    let accounts = open_accounts(api, args.accounts, "accounts").await?;
    let none = Arc::new(Vec::new());
    let deposits = run_scenario(
        api,
        args.connections,
        args.seconds,
        Scenario::Deposits,
        &accounts,
        &none,
    )
    .await?;
    let lag_alone = visibility_lag(api, &accounts, args.lag_samples).await?;
    // Half this topology's own closed-loop rate, as the efficiency goals define the lag
    // under load: the same share of what each can take, not a rate one of them cannot.
    let offered = deposits.per_second / 2.0;
    let paced = lag_under_load(api, &accounts, offered, args.seconds).await?;
    Ok(Figures {
        deposits,
        lag_alone,
        offered,
        lag_under_load: paced.lag,
    })
}

fn token() -> anyhow::Result<String> {
    System::token("bench-cluster", &[Role::Admin])
}

fn ratio(cluster: f64, single: f64) -> String {
    if single > 0.0 {
        format!("{:.2}", cluster / single)
    } else {
        "n/a".to_owned()
    }
}

fn json_of(figures: &Figures) -> Value {
    json!({
        "deposits_per_second": figures.deposits.per_second,
        "deposit_p50_ms": figures.deposits.millis(0.5),
        "deposit_p99_ms": figures.deposits.millis(0.99),
        "refused": figures.deposits.failures,
        "lag_alone_p50_ms": figures.lag_alone.millis(0.5),
        "lag_alone_p99_ms": figures.lag_alone.millis(0.99),
        "offered_per_second": figures.offered,
        "lag_under_load_p50_ms": figures.lag_under_load.millis(0.5),
        "lag_under_load_p99_ms": figures.lag_under_load.millis(0.99),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let seconds = Duration::from_secs(args.seconds);
    let postgres = PgReplicated::start()
        .await
        .context("the private primary and replica")?;

    // The machine's limits, on the same servers the two topologies use.
    let limits_database = BenchDatabase::create(&postgres.primary_url, 16).await?;
    let insert_commits = plain_insert_commit_rate(&limits_database.pool, 16, seconds).await?;
    limits_database.drop_now().await?;

    // One instance of each process, on a NATS server of its own.
    let nats = NatsServer::start().await.context("a private nats-server")?;
    let nats_client = async_nats::connect(nats.url()).await?;
    let publish_one_copy = jetstream_publish_rate_replicated(&nats_client, 256, seconds, 1).await?;
    drop(nats_client);
    let single_system = System::start_on(&Binary::ALL, &postgres.primary_url, &nats.url())
        .await
        .context("one instance of each process")?;
    let single_api = Api {
        http: Api::client(args.connections)?,
        command: single_system.url(Binary::CommandApi, ""),
        query: single_system.url(Binary::QueryApi, ""),
        projector: single_system.url(Binary::Projector, ""),
        token: token()?,
    };
    eprintln!("one instance of each process");
    let single = measure(&single_api, &args).await?;
    single_system.shut_down().await?;
    drop(nats);

    // The cluster, on the same primary.
    let mut cluster = LocalCluster::start_with(postgres).await.context("the cluster")?;
    let cluster_client = async_nats::connect(service::nats::server_addrs(&cluster.nats.urls())?).await?;
    let publish_three_copies = jetstream_publish_rate_replicated(&cluster_client, 256, seconds, 3).await?;
    drop(cluster_client);
    let cluster_api = Api {
        http: Api::client(args.connections)?,
        command: cluster.nginx.commands_url.clone(),
        query: cluster.nginx.queries_url.clone(),
        projector: cluster.system.instance(PROJECTORS[0])?.url(""),
        token: token()?,
    };
    eprintln!("the cluster");
    let clustered = measure(&cluster_api, &args).await?;
    cluster.shut_down().await?;

    let rows = [
        (
            "deposits/s, closed loop",
            single.deposits.per_second,
            clustered.deposits.per_second,
            0,
        ),
        (
            "deposit p50 (ms)",
            single.deposits.millis(0.5),
            clustered.deposits.millis(0.5),
            2,
        ),
        (
            "deposit p99 (ms)",
            single.deposits.millis(0.99),
            clustered.deposits.millis(0.99),
            2,
        ),
        (
            "visibility lag p50, one deposit at a time (ms)",
            single.lag_alone.millis(0.5),
            clustered.lag_alone.millis(0.5),
            2,
        ),
        (
            "visibility lag p99, one deposit at a time (ms)",
            single.lag_alone.millis(0.99),
            clustered.lag_alone.millis(0.99),
            2,
        ),
        (
            "paced load: deposits/s offered (half its closed-loop rate)",
            single.offered,
            clustered.offered,
            0,
        ),
        (
            "visibility lag p50 under the paced load (ms)",
            single.lag_under_load.millis(0.5),
            clustered.lag_under_load.millis(0.5),
            2,
        ),
        (
            "visibility lag p99 under the paced load (ms)",
            single.lag_under_load.millis(0.99),
            clustered.lag_under_load.millis(0.99),
            2,
        ),
    ];
    let mut table = format!(
        "Machine: {}. {} connections for {} s over {} accounts.\n\n\
         | | one instance of each | cluster | cluster / one |\n|---|---:|---:|---:|\n",
        machine(),
        args.connections,
        args.seconds,
        args.accounts
    );
    for (name, one, many, decimals) in rows {
        table.push_str(&format!(
            "| {name} | {one:.decimals$} | {many:.decimals$} | {} |\n",
            ratio(many, one)
        ));
    }
    table.push_str(&format!(
        "\nLimits in the same run: PostgreSQL single-row INSERT commits at 16 connections {insert_commits:.0}/s; \
         JetStream publishes (256 in flight) into one copy on one server {publish_one_copy:.0}/s, \
         into three copies on the cluster {publish_three_copies:.0}/s. \
         Deposits refused: one instance {}, cluster {}.\n",
        single.deposits.failures, clustered.deposits.failures
    ));
    println!("\n#### The cluster against one instance of each process\n\n{table}");
    if let Some(path) = &args.json {
        write_json(
            path,
            &json!({
                "machine": machine(),
                "limits": {
                    "insert_commits_per_second": insert_commits,
                    "jetstream_publish_one_copy_per_second": publish_one_copy,
                    "jetstream_publish_three_copies_per_second": publish_three_copies,
                },
                "single": json_of(&single),
                "cluster": json_of(&clustered),
            }),
        )?;
    }
    Ok(())
}
