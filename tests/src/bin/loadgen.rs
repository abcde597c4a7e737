//! `loadgen`: drives a running eventledger over HTTP and reports what it sustains.
//!
//! Scenarios: uniform deposits over many accounts, transfers among a few, one hot
//! account, and mixed reads and writes. For each: operations/s, failures, and latency
//! percentiles from an HDR histogram. Then the end-to-end visibility lag (command
//! acknowledged → visible through the query API), once on an otherwise idle system and
//! once under deposits paced at half the rate the deposit scenario reached, and the
//! projector's rebuild rate. The
//! machine's own limits are measured in the same run (PostgreSQL's single-row commit
//! rate, JetStream's publish rate) so that every figure also reads as a fraction of them.
//! Writes a Markdown table and a JSON file.
//!
//! Against a system that is already running (`scripts/run.sh`):
//!     cargo run --release -p tests --bin loadgen
//! Or starting its own, on free ports with a fresh database (`scripts/bench.sh` does
//! this and puts the table into the README):
//!     cargo build --release --workspace --bins && target/release/loadgen --start-system

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use serde_json::{Value, json};
use service::auth::Role;
use tests::bench::{
    BenchDatabase, BenchDatabaseArgs, jetstream_publish_rate, machine, plain_insert_commit_rate, write_json,
};
use tests::harness::{Binary, System};
use tests::load::{
    Api, DEFAULT_LAG_RATE, LAG_READ_EVERY, Scenario, TRANSFER_SEED_AMOUNT, lag_under_load, open_accounts,
    rebuild_rate, row, run_scenario, visibility_lag,
};
use tests::peer::{self, Peer};
use tests::profile::Profiler;

tests::bench_allocator!();

#[derive(Parser)]
#[command(
    name = "loadgen",
    about = "Load generator and benchmark report for eventledger"
)]
struct Args {
    /// Start the three processes on free ports against a fresh database (needs the
    /// binaries built next to this one) instead of using the URLs below.
    #[arg(long)]
    start_system: bool,
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    command_url: String,
    #[arg(long, default_value = "http://127.0.0.1:8082")]
    query_url: String,
    #[arg(long, default_value = "http://127.0.0.1:8083")]
    projector_url: String,
    /// Bearer token sent with every request; it needs the `admin` role (the run posts
    /// commands, reads views and rebuilds projections). With `--start-system` one is
    /// minted for the system started; otherwise `scripts/run.sh` prints one.
    #[arg(long, env = "EVENTLEDGER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Scenarios to run, in order.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Scenario::Deposits, Scenario::Transfers, Scenario::Hot, Scenario::Mixed])]
    scenario: Vec<Scenario>,
    /// Accounts opened for the deposit and mixed scenarios.
    #[arg(long, default_value_t = 10_000)]
    accounts: usize,
    /// Accounts the transfer scenario moves money among.
    #[arg(long, default_value_t = 100)]
    transfer_accounts: usize,
    /// Concurrent HTTP connections per scenario.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Seconds each scenario (and each baseline) runs.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Visibility-lag samples (write, then read it back through the query API).
    #[arg(long, default_value_t = 500)]
    lag_samples: usize,
    /// Deposits per second offered while measuring the lag under load; by default half
    /// the rate the deposit scenario reached (the projector's lag goal, README), or 1,000
    /// when that scenario is not run. 0 skips the measurement.
    #[arg(long)]
    lag_rate: Option<f64>,
    /// Skip the rebuild measurement.
    #[arg(long)]
    no_rebuild: bool,
    #[command(flatten)]
    database: BenchDatabaseArgs,
    /// NATS server for the JetStream publish-rate baseline (a throwaway stream is used).
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// Also report, per scenario, each process's and PostgreSQL's CPU time per operation
    /// and the top statements by total time (`pg_stat_statements`). Needs
    /// `--start-system` and `DATABASE_URL` pointing at the profiled PostgreSQL of
    /// `scripts/pg-profiled.sh` (as `scripts/bench.sh` does), so that the cluster's CPU is
    /// the system's alone.
    #[arg(long, requires = "start_system")]
    profile: bool,
    /// Where `report.md` and `report.json` go.
    #[arg(long, default_value = "bench-results")]
    report_dir: PathBuf,
    /// The peers folder holding `cqrs-es-ledger` (read-only; built into
    /// `${XDG_CACHE_HOME:-$HOME/.cache}/eventledger/peer-target`). After eventledger's
    /// scenarios the peer runs the same deposit scenario through the same client against
    /// a database of its own on the same PostgreSQL; the report gives both rates, p99s
    /// and the ratio. When it cannot be found or built, the report says so.
    #[arg(long, env = "PEER_DIR", default_value_os_t = peer::default_peer_dir())]
    peer_dir: PathBuf,
    /// Skip the peer.
    #[arg(long)]
    no_peer: bool,
}

/// Statements listed per profiled scenario: the few that hold nearly all the time.
const PROFILE_TOP_STATEMENTS: usize = 8;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Built before anything is measured, so that the compiler's work disturbs nothing.
    let peer_binary = if args.no_peer {
        Err("skipped (--no-peer)".to_owned())
    } else {
        eprintln!("building the peer from {}", args.peer_dir.display());
        peer::build(&args.peer_dir)
            .await
            .map_err(|error| format!("{error:#}"))
    };
    if let Err(reason) = &peer_binary {
        eprintln!("the peer will not run: {reason}");
    }
    let system = if args.start_system {
        Some(System::start(&Binary::ALL).await.context("starting the system")?)
    } else {
        None
    };
    let api = Api {
        http: Api::client(args.connections)?,
        command: system
            .as_ref()
            .map_or(args.command_url.clone(), |s| s.url(Binary::CommandApi, "")),
        query: system
            .as_ref()
            .map_or(args.query_url.clone(), |s| s.url(Binary::QueryApi, "")),
        projector: system
            .as_ref()
            .map_or(args.projector_url.clone(), |s| s.url(Binary::Projector, "")),
        token: match (&args.token, &system) {
            (Some(token), _) => token.clone(),
            (None, Some(_)) => System::token("loadgen", &[Role::Admin])?,
            (None, None) => {
                bail!("pass --token (or EVENTLEDGER_TOKEN) with the `admin` role, or --start-system")
            }
        },
    };
    let seconds = Duration::from_secs(args.seconds);

    eprintln!("measuring the machine's limits");
    let baseline_database = BenchDatabase::create(&args.database.database_url, 20).await?;
    let commits_1 = plain_insert_commit_rate(&baseline_database.pool, 1, seconds).await?;
    let commits_16 = plain_insert_commit_rate(&baseline_database.pool, 16, seconds).await?;
    baseline_database.drop_now().await?;
    let nats = async_nats::connect(service::nats::server_addrs(&args.nats_url)?).await?;
    let publish_1 = jetstream_publish_rate(&nats, 1, seconds).await?;
    let publish_256 = jetstream_publish_rate(&nats, 256, seconds).await?;

    let accounts = open_accounts(&api, args.accounts, "accounts").await?;
    let transfer_accounts = open_accounts(&api, args.transfer_accounts.max(2), "transfer accounts").await?;
    for account in transfer_accounts.iter() {
        api.command(
            &format!("/accounts/{account}/deposits"),
            json!({ "amount": TRANSFER_SEED_AMOUNT }),
        )
        .await?
        .context("seeding a transfer account was refused")?;
    }

    let mut markdown = vec![
        format!(
            "Machine: {}. Every scenario: {} connections for {} s.",
            machine(),
            args.connections,
            args.seconds
        ),
        String::new(),
        "| measurement | ops/s | failures | p50 ms | p99 ms | p999 ms | max ms | of the machine's limit |"
            .into(),
        "|---|---:|---:|---:|---:|---:|---:|---|".into(),
        format!("| PostgreSQL single-row INSERT commits, 1 connection | {commits_1:.0} | | | | | | limit |"),
        format!(
            "| PostgreSQL single-row INSERT commits, 16 connections | {commits_16:.0} | | | | | | limit |"
        ),
        format!("| JetStream publish, awaiting each ack | {publish_1:.0} | | | | | | limit |"),
        format!("| JetStream publish, 256 acks in flight | {publish_256:.0} | | | | | | limit |"),
    ];
    let profiler = match (&system, args.profile) {
        (Some(system), true) => Some(Profiler::connect(system, &args.database.database_url).await?),
        _ => None,
    };
    let mut profiles = Vec::new();
    let mut scenarios = Vec::new();
    let mut deposit_rate = None;
    for &scenario in &args.scenario {
        let before = match &profiler {
            Some(profiler) => Some(profiler.start().await?),
            None => None,
        };
        let run = run_scenario(
            &api,
            args.connections,
            args.seconds,
            scenario,
            &accounts,
            &transfer_accounts,
        )
        .await?;
        if let (Some(profiler), Some(before)) = (&profiler, &before) {
            let cost = profiler.finish(before).await?;
            profiles.push((scenario.title(), run.latency_us.len(), cost));
        }
        let (line, mut json) = row(
            scenario.title(),
            &run,
            Some(("PostgreSQL's 16-connection commit rate", commits_16)),
        );
        eprintln!("{line}");
        markdown.push(line);
        json["scenario"] = json!(format!("{scenario:?}").to_lowercase());
        scenarios.push(json);
        if scenario == Scenario::Deposits {
            deposit_rate = Some(run.per_second);
        }
    }
    let lag = visibility_lag(&api, &accounts, args.lag_samples).await?;
    let (line, lag_json) = row("visibility lag: acknowledged → readable (per sample)", &lag, None);
    markdown.push(line);
    let lag_rate = args
        .lag_rate
        .unwrap_or_else(|| deposit_rate.map_or(DEFAULT_LAG_RATE, |rate| rate / 2.0));
    let loaded_lag_json = if lag_rate > 0.0 {
        let loaded = lag_under_load(&api, &accounts, lag_rate, args.seconds).await?;
        let (line, commands_json) = row(
            &format!(
                "deposits paced at {:.0}/s{} ({} missed ticks)",
                loaded.offered_per_second,
                if args.lag_rate.is_none() && deposit_rate.is_some() {
                    ", half the deposit rate"
                } else {
                    ""
                },
                loaded.missed
            ),
            &loaded.commands,
            Some(("PostgreSQL's 16-connection commit rate", commits_16)),
        );
        markdown.push(line);
        let (line, lag_json) = row(
            &format!(
                "visibility lag under that load: acknowledged → readable (1 deposit in {LAG_READ_EVERY})"
            ),
            &loaded.lag,
            None,
        );
        markdown.push(line);
        json!({ "offered_per_second": loaded.offered_per_second, "missed": loaded.missed, "commands": commands_json, "lag": lag_json })
    } else {
        Value::Null
    };
    let rebuild = if args.no_rebuild {
        Value::Null
    } else {
        let (events, seconds) = rebuild_rate(&api).await?;
        markdown.push(format!(
            "| rebuild of every projection: log events/s | {:.0} | | | | | | |",
            events as f64 / seconds
        ));
        json!({ "events": events, "seconds": seconds, "events_per_second": events as f64 / seconds })
    };

    for (title, operations, cost) in &profiles {
        markdown.push(String::new());
        markdown.push(format!(
            "#### Where the time went: {title} ({operations} operations in {:.1} s)\n",
            cost.seconds
        ));
        markdown.push(cost.markdown(Some(*operations), PROFILE_TOP_STATEMENTS));
    }
    // The profiler borrows the system, which is shut down below.
    if let Some(profiler) = profiler {
        profiler.pool.close().await;
    }
    let profiles_json: Vec<Value> = profiles
        .iter()
        .map(|(title, operations, cost)| json!({ "scenario": title, "operations": operations, "cost": cost }))
        .collect();

    // The system is stopped before the peer runs, so the two never share the machine.
    if let Some(system) = system {
        system.shut_down().await?;
    }
    let deposits = scenarios
        .iter()
        .find(|scenario| scenario["scenario"] == "deposits")
        .cloned();
    let peer_json = side_by_side(&args, peer_binary, deposits.as_ref(), &mut markdown).await?;

    let report = json!({
        "machine": machine(),
        "connections": args.connections,
        "seconds": args.seconds,
        "limits": {
            "postgres_commits_per_second_1_connection": commits_1,
            "postgres_commits_per_second_16_connections": commits_16,
            "jetstream_publish_per_second_1_in_flight": publish_1,
            "jetstream_publish_per_second_256_in_flight": publish_256,
        },
        "scenarios": scenarios,
        "visibility_lag": lag_json,
        "visibility_lag_under_load": loaded_lag_json,
        "rebuild": rebuild,
        "profiles": profiles_json,
        "peer": peer_json,
    });
    std::fs::create_dir_all(&args.report_dir)?;
    let table = markdown.join("\n") + "\n";
    std::fs::write(args.report_dir.join("report.md"), &table)?;
    write_json(&args.report_dir.join("report.json"), &report)?;
    println!("{table}");
    Ok(())
}

/// Runs the deposit scenario against the peer, as it ran against eventledger (the same
/// accounts count, connections, seconds and client), and adds both rates, p99s and
/// their ratio to the report. Without a peer binary the report says why.
async fn side_by_side(
    args: &Args,
    peer_binary: Result<PathBuf, String>,
    eventledger: Option<&Value>,
    markdown: &mut Vec<String>,
) -> anyhow::Result<Value> {
    markdown.push(String::new());
    markdown.push("#### The peer side by side: the same deposits through the same client".into());
    markdown.push(String::new());
    let binary = match peer_binary {
        Ok(binary) => binary,
        Err(reason) => {
            markdown.push(format!("The peer did not run: {reason}"));
            return Ok(json!({ "unavailable": reason }));
        }
    };
    let Some(eventledger) = eventledger else {
        markdown.push("The peer did not run: the deposit scenario was not run to compare with.".into());
        return Ok(json!({ "unavailable": "the deposit scenario was not run" }));
    };
    let peer = Peer::start(&binary, &args.database.database_url).await?;
    let measured = async {
        let api = Api {
            http: Api::client(args.connections)?,
            command: peer.url.clone(),
            query: peer.url.clone(),
            projector: peer.url.clone(),
            token: String::new(),
        };
        let accounts = open_accounts(&api, args.accounts, "accounts on the peer").await?;
        let none = Arc::new(Vec::new());
        run_scenario(
            &api,
            args.connections,
            args.seconds,
            Scenario::Deposits,
            &accounts,
            &none,
        )
        .await
    }
    .await;
    peer.shut_down().await?;
    let run = measured?;
    let (line, mut json) = row(
        "peer (cqrs-es 0.5 + postgres-es): deposits over many accounts",
        &run,
        None,
    );
    let ours = eventledger["per_second"].as_f64().unwrap_or(0.0);
    let ratio = if run.per_second > 0.0 {
        ours / run.per_second
    } else {
        0.0
    };
    json["ratio_eventledger_to_peer"] = json!(ratio);
    json["eventledger"] = eventledger.clone();
    markdown.push(format!(
        "{} accounts, {} connections, {} s each; the peer's pool of {} connections on the same PostgreSQL; \
         a refused deposit (the peer's 409 on a concurrent command to one account) counts as a failure.",
        args.accounts,
        args.connections,
        args.seconds,
        peer::PEER_POOL_SIZE
    ));
    markdown.push(String::new());
    markdown.push("| measurement | ops/s | failures | p50 ms | p99 ms | p999 ms | max ms | |".into());
    markdown.push("|---|---:|---:|---:|---:|---:|---:|---|".into());
    markdown.push(format!(
        "| eventledger (whole system): deposits over many accounts | {:.0} | {} | {:.2} | {:.2} | {:.2} | {:.2} | |",
        ours,
        eventledger["failures"],
        eventledger["p50_ms"].as_f64().unwrap_or(0.0),
        eventledger["p99_ms"].as_f64().unwrap_or(0.0),
        eventledger["p999_ms"].as_f64().unwrap_or(0.0),
        eventledger["max_ms"].as_f64().unwrap_or(0.0),
    ));
    markdown.push(line);
    markdown.push(String::new());
    markdown.push(format!("eventledger / peer: {ratio:.2} × the peer's deposits/s."));
    Ok(json)
}
