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
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use service::auth::Role;
use tests::bench::{
    BenchDatabase, LatencyRun, jetstream_publish_rate, machine, plain_insert_commit_rate, rate_with_latency,
};
use tests::harness::{Binary, System};
use tests::profile::{Cost, CpuSnapshot, PostgresCluster, reset_statements};

/// mimalloc rather than the system allocator: see the workspace `Cargo.toml`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// PostgreSQL server for the commit-rate baseline (a throwaway database is created).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Deposits spread uniformly over `--accounts` accounts.
    Deposits,
    /// Transfers between random pairs of `--transfer-accounts` accounts.
    Transfers,
    /// Every deposit to one account.
    Hot,
    /// 80% `GET /accounts/{id}` on the query API, 20% deposits.
    Mixed,
}

impl Scenario {
    fn title(self) -> &'static str {
        match self {
            Self::Deposits => "deposits over many accounts",
            Self::Transfers => "transfers among a few accounts",
            Self::Hot => "deposits to one hot account",
            Self::Mixed => "mixed: 80% reads, 20% deposits",
        }
    }
}

/// Money each transfer account starts with: enough that a run of one-cent transfers
/// never runs dry, so every failure counted is a real one.
const TRANSFER_SEED_AMOUNT: i64 = 1_000_000_000;

/// Accounts opened at once while setting up: enough to keep the command API's group
/// commit busy without queueing past its bound.
const SETUP_CONCURRENCY: usize = 64;

/// Longest a visibility-lag read waits for the projection, in milliseconds (API.md's cap).
const LAG_WAIT_MS: u64 = 10_000;

/// Deposits per second offered for the lag under load when the deposit scenario did not
/// run to say what half the top rate is.
const DEFAULT_LAG_RATE: f64 = 1_000.0;

/// Commands in flight at most while pacing: more means the system no longer keeps up
/// with the offered rate, and further ticks are counted as missed instead of piling up.
const PACED_MAX_IN_FLIGHT: usize = 512;

/// One paced deposit in this many is read back through the query API to time its lag;
/// the rest only load the system, so the reads add a fraction of the load, not double it.
const LAG_READ_EVERY: u64 = 4;

/// How often the pacer wakes to send the deposits due since its last wake.
const PACER_TICK: Duration = Duration::from_millis(5);

#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    command: String,
    query: String,
    projector: String,
    /// Sent with every request: every route but the operational ones needs one.
    token: String,
}

impl Api {
    fn request(&self, method: reqwest::Method, url: String) -> reqwest::RequestBuilder {
        self.http.request(method, url).bearer_auth(&self.token)
    }

    /// POSTs a command; `Ok(Some(answer))` on 2xx, `Ok(None)` on a 4xx/5xx answer.
    async fn command(&self, path: &str, body: Value) -> anyhow::Result<Option<Value>> {
        let response = self
            .request(reqwest::Method::POST, format!("{}{path}", self.command))
            .json(&body)
            .send()
            .await?;
        if response.status().is_success() {
            Ok(Some(response.json().await?))
        } else {
            Ok(None)
        }
    }

    async fn open_account(&self) -> anyhow::Result<String> {
        let answer = self
            .command(
                "/accounts",
                json!({ "owner": { "name": "Load Generator", "email": "load@example.com" }, "currency": "EUR" }),
            )
            .await?
            .context("opening an account was refused")?;
        Ok(answer["account_id"]
            .as_str()
            .context("answer without account_id")?
            .to_owned())
    }
}

/// A small, fast, deterministic mixer: which account a call touches. Not for security.
fn pick(worker: usize, call: u64, modulo: usize) -> usize {
    let mut x =
        (worker as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ call.wrapping_add(0x632B_E59B_D9B4_E019);
    x ^= x >> 33;
    x = x.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    x ^= x >> 33;
    (x % modulo.max(1) as u64) as usize
}

fn progress(message: String, seconds: u64) -> ProgressBar {
    let bar = ProgressBar::new(seconds);
    bar.set_style(
        ProgressStyle::with_template("{msg:40} [{bar:30}] {pos}/{len}s")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(message);
    let ticker = bar.clone();
    tokio::spawn(async move {
        while !ticker.is_finished() && ticker.position() < ticker.length().unwrap_or(0) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            ticker.inc(1);
        }
    });
    bar
}

async fn open_accounts(api: &Api, count: usize, label: &str) -> anyhow::Result<Arc<Vec<String>>> {
    let bar = ProgressBar::new(count as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg:40} [{bar:30}] {pos}/{len}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(format!("opening {label}"));
    let mut ids = Vec::with_capacity(count);
    for chunk_start in (0..count).step_by(SETUP_CONCURRENCY) {
        let chunk = (chunk_start..count.min(chunk_start + SETUP_CONCURRENCY)).map(|_| {
            let api = api.clone();
            tokio::spawn(async move { api.open_account().await })
        });
        for task in chunk.collect::<Vec<_>>() {
            ids.push(task.await??);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok(Arc::new(ids))
}

async fn run_scenario(
    api: &Api,
    args: &Args,
    scenario: Scenario,
    accounts: &Arc<Vec<String>>,
    transfer_accounts: &Arc<Vec<String>>,
) -> anyhow::Result<LatencyRun> {
    let bar = progress(scenario.title().to_owned(), args.seconds);
    let (api, accounts, transfer_accounts) = (api.clone(), accounts.clone(), transfer_accounts.clone());
    let run = rate_with_latency(args.connections, Duration::from_secs(args.seconds), move |worker, call| {
        let (api, accounts, transfer_accounts) = (api.clone(), accounts.clone(), transfer_accounts.clone());
        async move {
            let deposit = |account: &str| (format!("/accounts/{account}/deposits"), json!({ "amount": 1 + (call % 100) as i64 }));
            let done = match scenario {
                Scenario::Deposits => {
                    let (path, body) = deposit(&accounts[pick(worker, call, accounts.len())]);
                    api.command(&path, body).await?.is_some()
                }
                Scenario::Hot => {
                    let (path, body) = deposit(&accounts[0]);
                    api.command(&path, body).await?.is_some()
                }
                Scenario::Transfers => {
                    let from = pick(worker, call, transfer_accounts.len());
                    let to = (from + 1 + pick(worker, call ^ 0xABCD, transfer_accounts.len() - 1)) % transfer_accounts.len();
                    let body = json!({ "from_account_id": transfer_accounts[from], "to_account_id": transfer_accounts[to], "amount": 1 });
                    api.command("/transfers", body).await?.is_some()
                }
                Scenario::Mixed => {
                    let account = &accounts[pick(worker, call, accounts.len())];
                    if call % 5 == 0 {
                        let (path, body) = deposit(account);
                        api.command(&path, body).await?.is_some()
                    } else {
                        let url = format!("{}/accounts/{account}", api.query);
                        api.request(reqwest::Method::GET, url).send().await?.status().is_success()
                    }
                }
            };
            Ok(done)
        }
    })
    .await;
    bar.finish_and_clear();
    run
}

/// Write, then read the write back through the query API with `min_position`: the time
/// from the command's answer to the read's answer is the visibility lag.
async fn visibility_lag(
    api: &Api,
    accounts: &Arc<Vec<String>>,
    samples: usize,
) -> anyhow::Result<LatencyRun> {
    let bar = ProgressBar::new(samples as u64);
    bar.set_message("visibility lag");
    let mut latency_us = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut failures = 0;
    let started = Instant::now();
    for sample in 0..samples {
        let account = &accounts[pick(7, sample as u64, accounts.len())];
        let Some(answer) = api
            .command(&format!("/accounts/{account}/deposits"), json!({ "amount": 1 }))
            .await?
        else {
            failures += 1;
            continue;
        };
        let acknowledged = Instant::now();
        let position = answer["position"].as_i64().context("answer without position")?;
        let url = format!(
            "{}/accounts/{account}?min_position={position}&wait_ms={LAG_WAIT_MS}",
            api.query
        );
        if api
            .request(reqwest::Method::GET, url)
            .send()
            .await?
            .status()
            .is_success()
        {
            latency_us.record((acknowledged.elapsed().as_micros() as u64).max(1))?;
        } else {
            failures += 1;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(LatencyRun {
        per_second: latency_us.len() as f64 / started.elapsed().as_secs_f64(),
        failures,
        latency_us,
    })
}

/// What the paced deposits measured: the commands themselves and their visibility lag.
struct LagUnderLoad {
    offered_per_second: f64,
    commands: LatencyRun,
    lag: LatencyRun,
    /// Ticks that found [`PACED_MAX_IN_FLIGHT`] commands still unanswered.
    missed: u64,
}

/// One paced deposit's outcome: the command's latency, and for one in
/// [`LAG_READ_EVERY`] the time from its answer to the query API showing it.
enum PacedOutcome {
    Refused,
    Answered { command_us: u64, read_back: ReadBack },
}

/// Whether a paced deposit was read back through the query API, and what that saw.
enum ReadBack {
    NotAsked,
    /// Readable this many µs after the command's answer.
    Visible {
        lag_us: u64,
    },
    /// Not readable within [`LAG_WAIT_MS`], or the read failed.
    Unseen,
}

/// Offers deposits at `rate` per second over `accounts` for `seconds`, open loop (a slow
/// answer does not slow the offer), and reads one in [`LAG_READ_EVERY`] back through the
/// query API with `min_position`: the lag a client sees while the system is busy.
async fn lag_under_load(
    api: &Api,
    accounts: &Arc<Vec<String>>,
    rate: f64,
    seconds: u64,
) -> anyhow::Result<LagUnderLoad> {
    let bar = progress(format!("lag under {rate:.0} deposits/s"), seconds);
    let in_flight = Arc::new(Semaphore::new(PACED_MAX_IN_FLIGHT));
    let mut tasks = JoinSet::new();
    let mut ticks = tokio::time::interval(PACER_TICK);
    let started = Instant::now();
    let duration = Duration::from_secs(seconds);
    let mut sent: u64 = 0;
    let mut missed: u64 = 0;
    while started.elapsed() < duration {
        ticks.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        while sent < due {
            sent += 1;
            let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                missed += 1;
                continue;
            };
            let (api, account) = (api.clone(), accounts[pick(11, sent, accounts.len())].clone());
            let reads_back = sent.is_multiple_of(LAG_READ_EVERY);
            tasks.spawn(async move {
                let _permit = permit;
                let asked = Instant::now();
                let answer = api
                    .command(&format!("/accounts/{account}/deposits"), json!({ "amount": 1 }))
                    .await;
                let acknowledged = Instant::now();
                let position = match &answer {
                    Ok(Some(answer)) => answer["position"].as_i64(),
                    _ => None,
                };
                let Some(position) = position else {
                    return PacedOutcome::Refused;
                };
                let command_us = (acknowledged - asked).as_micros() as u64;
                if !reads_back {
                    return PacedOutcome::Answered {
                        command_us,
                        read_back: ReadBack::NotAsked,
                    };
                }
                let url = format!(
                    "{}/accounts/{account}?min_position={position}&wait_ms={LAG_WAIT_MS}",
                    api.query
                );
                let visible = api
                    .request(reqwest::Method::GET, url)
                    .send()
                    .await
                    .is_ok_and(|response| response.status().is_success());
                let read_back = if visible {
                    ReadBack::Visible {
                        lag_us: acknowledged.elapsed().as_micros() as u64,
                    }
                } else {
                    ReadBack::Unseen
                };
                PacedOutcome::Answered {
                    command_us,
                    read_back,
                }
            });
        }
    }
    let offered_seconds = started.elapsed().as_secs_f64();
    let mut commands = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut lag = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut refused, mut unseen) = (0, 0);
    while let Some(outcome) = tasks.join_next().await {
        match outcome? {
            PacedOutcome::Refused => refused += 1,
            PacedOutcome::Answered {
                command_us,
                read_back,
            } => {
                commands.saturating_record(command_us.max(1));
                match read_back {
                    ReadBack::Visible { lag_us } => lag.saturating_record(lag_us.max(1)),
                    ReadBack::Unseen => unseen += 1,
                    ReadBack::NotAsked => {}
                }
            }
        }
    }
    let answered_seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    Ok(LagUnderLoad {
        offered_per_second: sent as f64 / offered_seconds,
        commands: LatencyRun {
            per_second: commands.len() as f64 / answered_seconds,
            failures: refused,
            latency_us: commands,
        },
        lag: LatencyRun {
            per_second: lag.len() as f64 / answered_seconds,
            failures: unseen,
            latency_us: lag,
        },
        missed,
    })
}

/// Asks the projector to rebuild every projection and waits until each is live again at
/// or past the head it started from; returns (events in the log, seconds for all).
async fn rebuild_rate(api: &Api) -> anyhow::Result<(i64, f64)> {
    let projections: Value = api
        .request(reqwest::Method::GET, format!("{}/projections", api.projector))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let items = projections
        .get("items")
        .or(Some(&projections))
        .and_then(Value::as_array)
        .context("GET /projections did not list projections")?
        .clone();
    let head = items
        .iter()
        .filter_map(|item| item["head"].as_i64())
        .max()
        .unwrap_or(0);
    let started = Instant::now();
    for item in &items {
        let name = item["name"].as_str().context("projection without a name")?;
        let response = api
            .request(
                reqwest::Method::POST,
                format!("{}/projections/{name}/rebuild", api.projector),
            )
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("rebuild of {name} answered {}", response.status());
        }
    }
    loop {
        let now: Value = api
            .request(reqwest::Method::GET, format!("{}/projections", api.projector))
            .send()
            .await?
            .json()
            .await?;
        let list = now
            .get("items")
            .or(Some(&now))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let done = list
            .iter()
            .all(|item| item["status"] == "live" && item["position"].as_i64().unwrap_or(0) >= head);
        if done {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("rebuild did not finish within ten minutes");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((head, started.elapsed().as_secs_f64()))
}

fn row(name: &str, run: &LatencyRun, limit: Option<(&str, f64)>) -> (String, Value) {
    let share = limit.map_or(String::from("–"), |(label, value)| {
        format!("{:.0}% of {label}", run.per_second / value * 100.0)
    });
    let markdown = format!(
        "| {name} | {:.0} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {share} |",
        run.per_second,
        run.failures,
        run.millis(0.5),
        run.millis(0.99),
        run.millis(0.999),
        run.latency_us.max() as f64 / 1000.0,
    );
    let json = json!({
        "name": name, "per_second": run.per_second, "failures": run.failures,
        "p50_ms": run.millis(0.5), "p99_ms": run.millis(0.99), "p999_ms": run.millis(0.999),
        "max_ms": run.latency_us.max() as f64 / 1000.0,
    });
    (markdown, json)
}

/// Statements listed per profiled scenario: the few that hold nearly all the time.
const PROFILE_TOP_STATEMENTS: usize = 8;

/// The profiled PostgreSQL of a system this run started, and the system's processes.
struct Profiler<'a> {
    system: &'a System,
    pool: sqlx::PgPool,
    cluster: PostgresCluster,
}

impl<'a> Profiler<'a> {
    async fn connect(system: &'a System, database_url: &str) -> anyhow::Result<Self> {
        let pool = sqlx::PgPool::connect(database_url).await?;
        let cluster = PostgresCluster::locate(&pool).await?;
        reset_statements(&pool).await?;
        Ok(Self {
            system,
            pool,
            cluster,
        })
    }

    async fn start(&self) -> anyhow::Result<CpuSnapshot> {
        reset_statements(&self.pool).await?;
        Ok(CpuSnapshot::take(self.system, &self.cluster))
    }

    async fn finish(&self, before: &CpuSnapshot) -> anyhow::Result<Cost> {
        Cost::since(before, self.system, &self.cluster, &self.pool).await
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let system = if args.start_system {
        Some(System::start(&Binary::ALL).await.context("starting the system")?)
    } else {
        None
    };
    let api = Api {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(args.connections)
            .timeout(Duration::from_secs(30))
            .build()?,
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
    let baseline_database = BenchDatabase::create(&args.database_url, 20).await?;
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
        (Some(system), true) => Some(Profiler::connect(system, &args.database_url).await?),
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
        let run = run_scenario(&api, &args, scenario, &accounts, &transfer_accounts).await?;
        if let (Some(profiler), Some(before)) = (&profiler, &before) {
            let cost = profiler.finish(before).await?;
            profiles.push((scenario.title(), run.latency_us.len(), cost));
        }
        let (line, json) = row(
            scenario.title(),
            &run,
            Some(("PostgreSQL's 16-connection commit rate", commits_16)),
        );
        eprintln!("{line}");
        markdown.push(line);
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
    });
    std::fs::create_dir_all(&args.report_dir)?;
    let table = markdown.join("\n") + "\n";
    std::fs::write(args.report_dir.join("report.md"), &table)?;
    std::fs::write(
        args.report_dir.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    println!("{table}");
    if let Some(system) = system {
        system.shut_down().await?;
    }
    Ok(())
}
