//! Command throughput and latency of the command API over HTTP: deposits spread over
//! many accounts from many concurrent connections, then every deposit to one hot
//! account; commands/s and p50/p99/p999 latency, next to PostgreSQL's plain commit rate
//! and JetStream's publish rate measured in the same run. Prints a Markdown table.
//!
//! It creates a throwaway database and starts a `nats-server` of its own (so that its
//! events never reach the shared server's `LEDGER_EVENTS`), then the release
//! `command-api` binary against both, so the relay runs during the measurement as it
//! does in production. Build both first:
//!
//! `cargo build --release -p command-api -p tests && target/release/bench-commands --seconds 10`

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;
use service::auth::{Role, mint_hs256};
use tests::bench::{
    BenchDatabase, BenchDatabaseArgs, BenchNats, LatencyRun, SERVICE_START_LIMIT, free_port,
    jetstream_publish_rate, machine, plain_insert_commit_rate, rate_with_latency, wait_for_port,
};
use uuid::Uuid;

tests::bench_allocator!();

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    database: BenchDatabaseArgs,
    /// Seconds each measurement runs.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Accounts opened and spread over in the many-accounts scenario.
    #[arg(long, default_value_t = 10_000)]
    accounts: usize,
    /// Concurrent HTTP connections, each sending its next command when the last answered.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// The `nats-server` binary to start a private server with.
    #[arg(long, env = "NATS_SERVER_BIN", default_value = "/usr/sbin/nats-server")]
    nats_server: String,
    /// The `command-api` binary; by default the one beside this benchmark's binary.
    #[arg(long)]
    command_api: Option<PathBuf>,
    /// More arguments for `command-api` (repeat the flag), for example its auth settings.
    #[arg(long = "command-api-arg", allow_hyphen_values = true)]
    command_api_args: Vec<String>,
    /// A bearer token sent with every command. Without it the benchmark gives the
    /// command API a secret of this run's own (`AUTH_JWT_SECRET`) and mints a teller
    /// token for it.
    #[arg(long, env = "BENCH_TOKEN")]
    token: Option<String>,
    /// Also write the figures as JSON here (`scripts/bench.sh` reads them for the goals).
    #[arg(long)]
    json: Option<PathBuf>,
}

/// How long the minted token lives: longer than any run of this benchmark.
const TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// JetStream publishes awaiting their ack at once in the publish baseline: the relay's
/// own default (`RelayConfig::max_in_flight`).
const RELAY_IN_FLIGHT: usize = 256;

/// How many rejected commands are printed in full; the rest are only counted.
const FAILURES_SHOWN: u64 = 3;

/// The `command-api` process, killed when dropped so that a failed run leaves nothing
/// behind.
struct CommandApi {
    base_url: String,
    child: Child,
}

impl CommandApi {
    fn start(
        binary: &PathBuf,
        database_url: &str,
        nats_url: &str,
        jwt_secret: &str,
        extra: &[String],
    ) -> anyhow::Result<Self> {
        let port = free_port()?;
        let child = Command::new(binary)
            .env("AUTH_JWT_SECRET", jwt_secret)
            .env("PII_MASTER_KEY", tests::harness::TEST_PII_MASTER_KEY)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--database-url", database_url, "--nats-url", nats_url])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|error| anyhow::anyhow!("could not start {}: {error}", binary.display()))?;
        let mut api = Self {
            base_url: format!("http://127.0.0.1:{port}"),
            child,
        };
        let started = Instant::now();
        while wait_for_port(port, Duration::from_millis(200)).is_err() {
            if let Some(status) = api.child.try_wait()? {
                anyhow::bail!("command-api exited at start: {status}");
            }
            anyhow::ensure!(
                started.elapsed() < SERVICE_START_LIMIT,
                "command-api did not start"
            );
        }
        Ok(api)
    }
}

impl Drop for CommandApi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends commands and counts the ones the API refused, printing the first few.
#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    base_url: String,
    token: Option<String>,
    failures_seen: Arc<AtomicU64>,
}

impl Client {
    /// POSTs `body` to `path`; `Ok(false)` when the API answered with an error status.
    async fn post(&self, path: &str, body: &serde_json::Value) -> anyhow::Result<bool> {
        let mut request = self.http.post(format!("{}{path}", self.base_url)).json(body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await?;
        let status = response.status();
        if status.is_success() {
            // Read the body so the connection is reused.
            response.bytes().await?;
            return Ok(true);
        }
        let body = response.text().await.unwrap_or_default();
        if self.failures_seen.fetch_add(1, Ordering::Relaxed) < FAILURES_SHOWN {
            eprintln!("POST {path}: {status}: {body}");
        }
        Ok(false)
    }
}

/// Opens `count` accounts from `connections` concurrent connections and returns their ids.
async fn open_accounts(
    client: &Client,
    count: usize,
    connections: usize,
) -> anyhow::Result<(Vec<Uuid>, f64)> {
    let ids: Arc<Vec<Uuid>> = Arc::new((0..count).map(|_| Uuid::now_v7()).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let (client, ids, next) = (client.clone(), ids.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(id) = ids.get(index) else {
                        return anyhow::Ok(());
                    };
                    let body = json!({
                        "account_id": id,
                        "owner": { "name": format!("Bench Owner {index}"), "email": format!("owner{index}@bench.example") },
                        "currency": "EUR",
                    });
                    anyhow::ensure!(client.post("/accounts", &body).await?, "could not open account {index}");
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await??;
    }
    let per_second = count as f64 / started.elapsed().as_secs_f64();
    Ok((ids.to_vec(), per_second))
}

/// Deposits from `connections` connections for `duration`; connection `w` sends its
/// `n`th deposit to account `(w + n × connections) mod accounts`, so with many accounts
/// every account sees a steady share and no two connections collide on one often.
async fn deposits(
    client: &Client,
    accounts: Arc<Vec<Uuid>>,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<LatencyRun> {
    let client = client.clone();
    rate_with_latency(connections, duration, move |worker, call| {
        let client = client.clone();
        let accounts = accounts.clone();
        async move {
            let index = (worker + call as usize * connections) % accounts.len();
            let path = format!("/accounts/{}/deposits", accounts[index]);
            client.post(&path, &json!({ "amount": 100 })).await
        }
    })
    .await
}

/// How far the relay is behind the log right now, in events.
async fn relay_lag(database: &BenchDatabase) -> anyhow::Result<i64> {
    let lag: Option<i64> = sqlx::query_scalar(
        "SELECT h.position - coalesce((SELECT max(position) FROM relay_checkpoints), 0) FROM event_store_head h",
    )
    .fetch_one(&database.pool)
    .await?;
    Ok(lag.unwrap_or(0))
}

/// A deposit run's figures as JSON, with the relay's lag at its end.
fn run_json(run: &LatencyRun, relay_lag: i64) -> serde_json::Value {
    json!({
        "per_second": run.per_second,
        "failures": run.failures,
        "p50_ms": run.millis(0.5),
        "p99_ms": run.millis(0.99),
        "p999_ms": run.millis(0.999),
        "relay_lag_events": relay_lag,
    })
}

fn row(measurement: &str, connections: usize, per_second: f64, run: Option<&LatencyRun>) {
    match run {
        Some(run) => println!(
            "| {measurement} | {connections} | {per_second:.0} | {:.2} | {:.2} | {:.2} | {} |",
            run.millis(0.5),
            run.millis(0.99),
            run.millis(0.999),
            run.failures
        ),
        None => println!("| {measurement} | {connections} | {per_second:.0} | | | | |"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.accounts > 0 && args.connections > 0,
        "need at least one account and connection"
    );
    let duration = Duration::from_secs(args.seconds);
    let command_api = match &args.command_api {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("command-api"),
    };
    anyhow::ensure!(
        command_api.exists(),
        "{} not found: build it with `cargo build --release -p command-api` or pass --command-api",
        command_api.display()
    );

    let database = BenchDatabase::create(&args.database.database_url, 16).await?;
    let nats = BenchNats::start(&args.nats_server)?;
    let nats_client = async_nats::connect(&nats.url).await?;

    println!("Machine: {}", machine());
    println!();
    println!("| measurement | connections | per second | p50 ms | p99 ms | p99.9 ms | failures |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut report = serde_json::Map::new();
    for connections in [1, 16] {
        let commits = plain_insert_commit_rate(&database.pool, connections, duration).await?;
        row("PostgreSQL single-row INSERT commits", connections, commits, None);
        report.insert(format!("postgres_commits_{connections}"), json!(commits));
    }
    for in_flight in [1, RELAY_IN_FLIGHT] {
        let published = jetstream_publish_rate(&nats_client, in_flight, duration).await?;
        row(
            &format!("JetStream publishes, {in_flight} acks in flight"),
            1,
            published,
            None,
        );
        report.insert(
            format!("jetstream_publishes_{in_flight}_in_flight"),
            json!(published),
        );
    }

    // Two UUIDs: 64 random hex digits, above the 32 bytes an HS256 secret needs.
    let jwt_secret = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
    let token = match &args.token {
        Some(token) => token.clone(),
        None => mint_hs256(jwt_secret.as_bytes(), "bench", &[Role::Teller], TOKEN_LIFETIME)?,
    };
    let api = CommandApi::start(
        &command_api,
        &database.url,
        &nats.url,
        &jwt_secret,
        &args.command_api_args,
    )?;
    let client = Client {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(args.connections)
            .timeout(Duration::from_secs(30))
            .build()?,
        base_url: api.base_url.clone(),
        token: Some(token),
        failures_seen: Arc::new(AtomicU64::new(0)),
    };
    let (accounts, opened_per_second) = open_accounts(&client, args.accounts, args.connections).await?;
    row(
        &format!("open account ({} accounts)", args.accounts),
        args.connections,
        opened_per_second,
        None,
    );
    let accounts = Arc::new(accounts);

    let many = deposits(&client, accounts.clone(), args.connections, duration).await?;
    let many_lag = relay_lag(&database).await?;
    row(
        &format!("deposit, spread over {} accounts", args.accounts),
        args.connections,
        many.per_second,
        Some(&many),
    );
    let hot = deposits(&client, Arc::new(vec![accounts[0]]), args.connections, duration).await?;
    let hot_lag = relay_lag(&database).await?;
    row(
        "deposit, one hot account",
        args.connections,
        hot.per_second,
        Some(&hot),
    );

    report.insert("accounts".into(), json!(args.accounts));
    report.insert("connections".into(), json!(args.connections));
    report.insert("open_accounts_per_second".into(), json!(opened_per_second));
    report.insert("deposits_many".into(), run_json(&many, many_lag));
    report.insert("deposits_hot".into(), run_json(&hot, hot_lag));
    if let Some(path) = &args.json {
        tests::bench::write_json(path, &serde_json::Value::Object(report))?;
    }
    println!();
    println!(
        "Relay lag (events committed but not yet acknowledged by JetStream) at the end of each \
         deposit run: {many_lag} (many accounts), {hot_lag} (hot account)."
    );
    println!(
        "Each measurement ran {} s; PostgreSQL and NATS on this machine; the client shares its cores.",
        args.seconds
    );

    drop(api);
    drop(nats_client);
    drop(nats);
    database.drop_now().await?;
    Ok(())
}
