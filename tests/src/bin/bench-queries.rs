//! Query API throughput and latency over real HTTP: `GET /accounts/{id}` over 100,000
//! accounts with sealed owners, as fast as it answers and offered at a fixed rate
//! (`--rate`, 20,000/s, or `--rate-fraction` of the rate it reached), and audit queries
//! by actor and by correlation id over 1,000,000 events. Beside them, the same
//! PostgreSQL's own read rate: `pgbench -S` (one primary-key SELECT per transaction)
//! with 16 clients on a scratch database, the yardstick of the query API's goal.
//! The query API runs in this process, as the read-only role, against a throwaway
//! database; requests go through the loopback interface. Prints a Markdown table.
//!
//! `cargo run --release -p tests --bin bench-queries -- --seconds 10`

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use hdrhistogram::Histogram;
use reqwest::header::{AUTHORIZATION, HOST, HeaderMap, HeaderValue};
use serde_json::{Value, json};
use service::auth::{Authenticator, Role, mint_hs256};
use sqlx::Postgres;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::PgConnectOptions;
use tests::bench::{BenchDatabase, BenchDatabaseArgs, machine};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

tests::bench_allocator!();

/// Events in the log (likewise).
const EVENTS: i64 = 1_000_000;

/// Events per seeding statement: bounds one statement's memory and WAL burst.
const EVENTS_PER_INSERT: i64 = 100_000;

/// Distinct actors: 1,000 events each, so an actor query has deep pages to page through.
const ACTORS: i64 = 1_000;

/// Events per correlation id: one command's worth (a transfer writes three).
const EVENTS_PER_CORRELATION: i64 = 4;

/// The HS256 secret the embedded query API verifies the benchmark's token with: every
/// request is authenticated as in production, so the figures include verifying it.
const BENCH_AUTH_SECRET: &str = "bench-queries-secret-of-at-least-32-bytes";

/// The longest a request may take before it counts as failed (1 minute, in µs): the
/// histogram's upper bound.
const MAX_LATENCY_US: u64 = 60_000_000;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    database: BenchDatabaseArgs,
    /// Seconds each measurement runs.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent HTTP connections for `GET /accounts/{id}`.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Concurrent HTTP connections for the audit queries.
    #[arg(long, default_value_t = 8)]
    audit_connections: usize,
    /// The query API's pool size (its `DATABASE_MAX_CONNECTIONS`).
    #[arg(long, default_value_t = 16)]
    pool_size: u32,
    /// The HTTP client: `hyper` (default), one HTTP/1.1 connection per worker driven
    /// directly, or `reqwest` with its pool. Client and server share two cores, so the
    /// client's own cost is taken from the server: the leaner one leaves it more.
    #[arg(long, value_enum, default_value_t = ClientKind::Hyper)]
    client: ClientKind,
    /// Leave the owners unsealed and without keys, so that they answer `null` without
    /// opening anything. By default every owner is sealed under a key of its own, as the
    /// command API stores it, so that every account answer unwraps a key and opens a name
    /// and an email.
    #[arg(long)]
    owners_without_keys: bool,
    /// The rate `GET /accounts/{id}` is also offered at, open loop, over the same
    /// connections: the goal (README) is a p99 at this rate, which the closed loop at full
    /// speed does not measure (there every request queues behind the others). 0 skips it.
    #[arg(long, default_value_t = 20_000.0)]
    rate: f64,
    /// Measure only `GET /accounts/{id}`, without seeding the log: a quicker loop while
    /// working on that path. The published figures are of a full run.
    #[arg(long)]
    accounts_only: bool,
    /// Accounts in the read model (the goal in the README's "Query API": 100,000).
    #[arg(long, default_value_t = 100_000)]
    accounts: i64,
    /// Offer `GET /accounts/{id}` at this fraction of the rate the closed loop reached,
    /// instead of `--rate`: the goal's "p99 at 0.8 × that rate".
    #[arg(long)]
    rate_fraction: Option<f64>,
    /// The `pgbench` binary for PostgreSQL's own read rate (`pgbench -S`).
    #[arg(long, env = "PGBENCH", default_value = "/usr/lib/postgresql/15/bin/pgbench")]
    pgbench: PathBuf,
    /// `pgbench -i` scale of the scratch database (100,000 rows each).
    #[arg(long, default_value_t = 10)]
    pgbench_scale: u32,
    /// `pgbench -S` clients.
    #[arg(long, default_value_t = 16)]
    pgbench_clients: u32,
    /// Skip `pgbench -S`.
    #[arg(long)]
    no_pgbench: bool,
    /// Also write the figures as JSON here (`scripts/bench.sh` reads them for the goals).
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ClientKind {
    Hyper,
    Reqwest,
}

/// One worker's way to send GETs: each worker owns its connection either way.
enum Worker {
    Reqwest {
        client: reqwest::Client,
        base: String,
    },
    Hyper {
        sender: hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
        authorization: HeaderValue,
    },
}

impl Worker {
    async fn connect(
        kind: ClientKind,
        client: &reqwest::Client,
        address: SocketAddr,
        authorization: &HeaderValue,
    ) -> anyhow::Result<Self> {
        Ok(match kind {
            ClientKind::Reqwest => Worker::Reqwest {
                client: client.clone(),
                base: format!("http://{address}"),
            },
            ClientKind::Hyper => {
                let stream = tokio::net::TcpStream::connect(address).await?;
                stream.set_nodelay(true)?;
                let (sender, connection) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
                tokio::spawn(connection);
                Worker::Hyper {
                    sender,
                    authorization: authorization.clone(),
                }
            }
        })
    }

    /// GETs `path`; whether it answered 2xx with its whole body.
    async fn get(&mut self, path: &str) -> bool {
        match self {
            Worker::Reqwest { client, base } => match client.get(format!("{base}{path}")).send().await {
                Ok(response) => {
                    let ok = response.status().is_success();
                    response.bytes().await.is_ok() && ok
                }
                Err(_) => false,
            },
            Worker::Hyper {
                sender,
                authorization,
            } => {
                let Ok(request) = hyper::Request::get(path)
                    .header(HOST, "127.0.0.1")
                    .header(AUTHORIZATION, authorization.clone())
                    .body(http_body_util::Empty::new())
                else {
                    return false;
                };
                if sender.ready().await.is_err() {
                    return false;
                }
                match sender.send_request(request).await {
                    Ok(response) => {
                        let ok = response.status().is_success();
                        http_body_util::BodyExt::collect(response.into_body())
                            .await
                            .is_ok()
                            && ok
                    }
                    Err(_) => false,
                }
            }
        }
    }
}

/// A small deterministic generator, so runs ask for the same spread of keys.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

/// What every worker of a measurement connects with.
struct Client {
    kind: ClientKind,
    reqwest: reqwest::Client,
    address: SocketAddr,
    authorization: HeaderValue,
}

struct Measured {
    requests_per_second: f64,
    histogram: Histogram<u64>,
    failures: u64,
}

/// How the workers of a measurement send.
#[derive(Clone, Copy)]
enum Load {
    /// Each worker sends its next request as soon as the last is answered.
    ClosedLoop,
    /// Together the workers offer this many requests per second, each on a fixed
    /// schedule of its own whatever the answers take. A request's latency counts from
    /// the moment it was due, so one that waited for its connection counts that wait
    /// (no coordinated omission); it includes the timer's lateness too, up to 1 ms.
    Paced(f64),
}

/// Runs `connections` workers for `duration`, each asking for the path `next_path`
/// gives it, and records every request's latency.
async fn measure(
    client: &Client,
    connections: usize,
    duration: Duration,
    load: Load,
    next_path: Arc<dyn Fn(&mut XorShift) -> String + Send + Sync>,
) -> anyhow::Result<Measured> {
    let started = Instant::now();
    let deadline = started + duration;
    let mut connected = Vec::with_capacity(connections);
    for _ in 0..connections {
        connected.push(
            Worker::connect(
                client.kind,
                &client.reqwest,
                client.address,
                &client.authorization,
            )
            .await?,
        );
    }
    let workers: Vec<_> = connected
        .into_iter()
        .enumerate()
        .map(|(worker, mut connection)| {
            let next_path = next_path.clone();
            tokio::spawn(async move {
                let mut random = XorShift(0x9E37_79B9_7F4A_7C15 ^ (worker as u64 + 1));
                let mut histogram = Histogram::<u64>::new_with_max(MAX_LATENCY_US, 3)?;
                let mut failures = 0u64;
                let mut schedule = match load {
                    Load::ClosedLoop => None,
                    Load::Paced(rate) => {
                        let period = Duration::from_secs_f64(connections as f64 / rate);
                        // Staggered, so the workers' requests spread over each period.
                        let first =
                            tokio::time::Instant::now() + period.mul_f64(worker as f64 / connections as f64);
                        let mut ticks = tokio::time::interval_at(first, period);
                        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                        Some(ticks)
                    }
                };
                while Instant::now() < deadline {
                    let path = next_path(&mut random);
                    let sent = match &mut schedule {
                        None => Instant::now(),
                        Some(ticks) => ticks.tick().await.into_std(),
                    };
                    if sent >= deadline {
                        break;
                    }
                    let ok = connection.get(&path).await;
                    let micros = sent.elapsed().as_micros() as u64;
                    histogram.saturating_record(micros.min(MAX_LATENCY_US));
                    if !ok {
                        failures += 1;
                    }
                }
                anyhow::Ok((histogram, failures))
            })
        })
        .collect();
    let mut histogram = Histogram::<u64>::new_with_max(MAX_LATENCY_US, 3)?;
    let mut failures = 0;
    for worker in workers {
        let (part, failed) = worker.await??;
        histogram.add(part)?;
        failures += failed;
    }
    Ok(Measured {
        requests_per_second: histogram.len() as f64 / started.elapsed().as_secs_f64(),
        histogram,
        failures,
    })
}

/// One measurement's figures as JSON.
fn measured_json(measured: &Measured) -> Value {
    let ms = |quantile: f64| measured.histogram.value_at_quantile(quantile) as f64 / 1000.0;
    json!({
        "per_second": measured.requests_per_second,
        "failures": measured.failures,
        "p50_ms": ms(0.5),
        "p99_ms": ms(0.99),
        "p999_ms": ms(0.999),
        "max_ms": measured.histogram.max() as f64 / 1000.0,
    })
}

/// PostgreSQL's own read rate on the server of `server_url`: `pgbench -S` (one
/// primary-key SELECT per transaction) from `clients` clients for `seconds`, on a
/// scratch database initialised with `pgbench -i -s scale` and dropped after.
/// Returns transactions per second.
async fn pgbench_select_rate(
    pgbench: &Path,
    server_url: &str,
    scale: u32,
    clients: u32,
    seconds: u64,
) -> anyhow::Result<f64> {
    let options: PgConnectOptions = server_url.parse()?;
    let base = server_url.rsplit_once('/').map_or(server_url, |(base, _)| base);
    let name = format!("eventledger_pgbench_{}", std::process::id());
    let url = format!("{base}/{name}");
    if Postgres::database_exists(&url).await? {
        Postgres::force_drop_database(&url).await?;
    }
    Postgres::create_database(&url).await?;
    let connection = [
        "-h".to_owned(),
        options.get_host().to_owned(),
        "-p".to_owned(),
        options.get_port().to_string(),
        "-U".to_owned(),
        options.get_username().to_owned(),
    ];
    let run = async {
        let init = tokio::process::Command::new(pgbench)
            .args(["-i", "-q", "-s", &scale.to_string()])
            .args(&connection)
            .arg(&name)
            .output()
            .await
            .with_context(|| format!("running {}", pgbench.display()))?;
        anyhow::ensure!(
            init.status.success(),
            "pgbench -i failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let threads = clients.min(std::thread::available_parallelism().map_or(1, |n| n.get() as u32));
        let output = tokio::process::Command::new(pgbench)
            .args(["-S", "-n", "-c", &clients.to_string(), "-j", &threads.to_string()])
            .args(["-T", &seconds.to_string()])
            .args(&connection)
            .arg(&name)
            .output()
            .await?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        anyhow::ensure!(
            output.status.success(),
            "pgbench -S failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
            .lines()
            .find_map(|line| line.strip_prefix("tps = "))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|tps| tps.parse::<f64>().ok())
            .with_context(|| format!("no `tps = ` line in pgbench's output: {stdout}"))
    }
    .await;
    Postgres::force_drop_database(&url).await?;
    run
}

fn row(name: &str, connections: usize, measured: &Measured) {
    let ms = |quantile: f64| measured.histogram.value_at_quantile(quantile) as f64 / 1000.0;
    println!(
        "| {name} | {connections} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
        measured.requests_per_second,
        ms(0.5),
        ms(0.99),
        ms(0.999),
        measured.histogram.max() as f64 / 1000.0,
        measured.failures,
    );
}

async fn seed(database: &BenchDatabase, accounts: i64, events: i64) -> anyhow::Result<Vec<Uuid>> {
    let started = Instant::now();
    sqlx::query(
        "INSERT INTO read_model.accounts (account_id, owner_name, owner_email, currency, balance, \
         overdraft_limit, status, version, opened_at, updated_at, last_position) \
         SELECT md5(g::text)::uuid, 'Owner ' || g, 'owner' || g || '@example.com', \
                CASE WHEN g % 3 = 0 THEN 'USD' ELSE 'EUR' END, g * 10, 0, 'open', 2, now(), now(), g \
         FROM generate_series(1, $1) AS g",
    )
    .bind(accounts)
    .execute(&database.pool)
    .await?;
    let mut first = 1;
    while first <= events {
        let last = (first + EVENTS_PER_INSERT - 1).min(events);
        sqlx::query(
            "INSERT INTO events (position, event_id, stream_id, stream_version, event_type, \
             schema_version, data, metadata, recorded_at) \
             SELECT g, gen_random_uuid(), 'account-' || md5((g % $3)::text)::uuid, g / $3 + 1, \
                    'FundsDeposited', 1, jsonb_build_object('amount', g, 'reference', 'bench'), \
                    jsonb_build_object('actor', 'actor-' || (g % $4), \
                                       'correlation_id', 'corr-' || (g / $5), 'command', 'deposit'), \
                    timestamptz '2026-01-01 00:00:00+00' + g * interval '10 milliseconds' \
             FROM generate_series($1::bigint, $2::bigint) AS g",
        )
        .bind(first)
        .bind(last)
        .bind(accounts)
        .bind(ACTORS)
        .bind(EVENTS_PER_CORRELATION)
        .execute(&database.pool)
        .await?;
        first = last + 1;
    }
    sqlx::query("UPDATE event_store_head SET position = $1")
        .bind(events)
        .execute(&database.pool)
        .await?;
    sqlx::query("UPDATE read_model.projection_checkpoints SET position = $1")
        .bind(events)
        .execute(&database.pool)
        .await?;
    let ids: Vec<Uuid> = sqlx::query_scalar("SELECT account_id FROM read_model.accounts")
        .fetch_all(&database.pool)
        .await?;
    eprintln!(
        "seeded {accounts} accounts and {events} events in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(ids)
}

/// Owners sealed per statement while seeding: bounds one statement's arrays.
const OWNERS_PER_UPDATE: usize = 10_000;

/// Gives every account of `ids` a data key in `pii_keys` and its owner sealed under it.
async fn seal_owners(
    database: &BenchDatabase,
    vault: &event_store::pii::Vault,
    ids: &[Uuid],
) -> anyhow::Result<()> {
    let started = Instant::now();
    for chunk in ids.chunks(OWNERS_PER_UPDATE) {
        let mut keys = Vec::with_capacity(chunk.len());
        let mut names = Vec::with_capacity(chunk.len());
        let mut emails = Vec::with_capacity(chunk.len());
        for (index, id) in chunk.iter().enumerate() {
            let (key, wrapped) = vault.new_key(*id)?;
            names.push(key.seal(&format!("Owner {index}"))?);
            emails.push(key.seal(&format!("owner{index}@example.com"))?);
            keys.push(wrapped);
        }
        event_store::pii::store_keys(&database.pool, &keys).await?;
        sqlx::query(
            "UPDATE read_model.accounts SET owner_name = owner.name, owner_email = owner.email \
             FROM unnest($1::uuid[], $2::text[], $3::text[]) AS owner(id, name, email) \
             WHERE account_id = owner.id",
        )
        .bind(chunk)
        .bind(&names)
        .bind(&emails)
        .execute(&database.pool)
        .await?;
    }
    eprintln!(
        "sealed {} owners in {:.1} s",
        ids.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Leaves the seeded database as a long-running one would be: vacuumed, analysed, and
/// with the seeding's dirty pages written out. Without the `CHECKPOINT`, the gigabyte of
/// WAL that seeding writes sets off a checkpoint that runs through the measurements,
/// writing the seeding's pages beside the reads being measured.
async fn settle(database: &BenchDatabase) -> anyhow::Result<()> {
    sqlx::query("VACUUM ANALYZE").execute(&database.pool).await?;
    sqlx::query("CHECKPOINT").execute(&database.pool).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let duration = Duration::from_secs(args.seconds);
    let database = BenchDatabase::create(&args.database.database_url, 4).await?;
    let events = if args.accounts_only { 0 } else { EVENTS };
    let ids = Arc::new(seed(&database, args.accounts, events).await?);
    // The public development key: what it seals is as costly to open as under any other.
    let vault =
        event_store::pii::Vault::from_config(&event_store::pii::PiiConfig { pii_master_key: None }, true)?;
    if !args.owners_without_keys {
        seal_owners(&database, &vault, &ids).await?;
    }
    settle(&database).await?;
    // PostgreSQL's own rate first, before the query API's pools connect.
    let pgbench_tps = if args.no_pgbench {
        None
    } else {
        eprintln!("pgbench -S with {} clients", args.pgbench_clients);
        Some(
            pgbench_select_rate(
                &args.pgbench,
                &args.database.database_url,
                args.pgbench_scale,
                args.pgbench_clients,
                args.seconds,
            )
            .await?,
        )
    };
    let mut report = serde_json::Map::new();
    report.insert("accounts".into(), json!(args.accounts));
    report.insert("events".into(), json!(events));
    report.insert("connections".into(), json!(args.connections));
    report.insert("pgbench_select_tps".into(), json!(pgbench_tps));
    report.insert("pgbench_clients".into(), json!(args.pgbench_clients));
    report.insert("pgbench_scale".into(), json!(args.pgbench_scale));

    let reader = query_api::database::reader_options(&database.url, None)?;
    let nats = service::nats::connect("nats://127.0.0.1:4222", "bench-queries").await?;
    let stop = CancellationToken::new();
    let authenticator = Authenticator::hs256(BENCH_AUTH_SECRET.as_bytes());
    let state = query_api::start(reader, args.pool_size, nats, authenticator, vault, stop.clone()).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let stopping = stop.clone();
    let server = tokio::spawn(query_api::serve(listener, state, async move {
        stopping.cancelled().await;
    }));
    // The least roles the measured requests need: views and the audit log.
    let token = mint_hs256(
        BENCH_AUTH_SECRET.as_bytes(),
        "bench-queries",
        &[Role::Viewer, Role::Auditor],
        Duration::from_secs(24 * 60 * 60),
    )?;
    let authorization = HeaderValue::from_str(&format!("Bearer {token}"))?;
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, authorization.clone());
    let client = Client {
        kind: args.client,
        reqwest: reqwest::Client::builder()
            .default_headers(headers)
            .pool_max_idle_per_host(args.connections)
            .build()?,
        address,
        authorization,
    };

    println!("Machine: {}", machine());
    println!();
    println!(
        "{} accounts in the read model, {events} events in the log ({} actors, {EVENTS_PER_CORRELATION} events per correlation id); {} s per row; query API pool of {}; {} client; owners {}.",
        args.accounts,
        ACTORS,
        args.seconds,
        args.pool_size,
        match args.client {
            ClientKind::Hyper => "hyper",
            ClientKind::Reqwest => "reqwest",
        },
        if args.owners_without_keys {
            "without keys, answered null"
        } else {
            "sealed, each answer opens one"
        }
    );
    println!();
    println!("| request | connections | requests/s | p50 ms | p99 ms | p99.9 ms | max ms | failed |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    if let Some(tps) = pgbench_tps {
        println!(
            "| `pgbench -S` (PostgreSQL alone: a primary-key SELECT per transaction, scale {}) | {} | {tps:.0} | | | | | |",
            args.pgbench_scale, args.pgbench_clients
        );
    }

    let accounts = ids.clone();
    let by_id_path: Arc<dyn Fn(&mut XorShift) -> String + Send + Sync> = Arc::new(move |random| {
        let id = accounts[random.below(accounts.len() as u64) as usize];
        format!("/accounts/{id}")
    });
    let by_id = measure(
        &client,
        args.connections,
        duration,
        Load::ClosedLoop,
        by_id_path.clone(),
    )
    .await?;
    row(
        "`GET /accounts/{id}`, as fast as answered",
        args.connections,
        &by_id,
    );
    report.insert("accounts_closed_loop".into(), measured_json(&by_id));
    let rate = match args.rate_fraction {
        Some(fraction) => fraction * by_id.requests_per_second,
        None => args.rate,
    };
    // The goal's rate, then half of it: where p99 stands with more headroom shows
    // whether the goal's p99 is queueing near saturation or a cost every request pays.
    let offered = [
        ("accounts_paced", rate, 1.0),
        ("accounts_paced_half", rate / 2.0, 0.5),
    ];
    for (key, rate, share) in offered {
        if rate <= 0.0 {
            continue;
        }
        let paced = measure(
            &client,
            args.connections,
            duration,
            Load::Paced(rate),
            by_id_path.clone(),
        )
        .await?;
        let why = args.rate_fraction.map_or(String::new(), |fraction| {
            format!(", {} × the rate above", fraction * share)
        });
        row(
            &format!("`GET /accounts/{{id}}` offered at {rate:.0}/s{why}"),
            args.connections,
            &paced,
        );
        let mut paced_json = measured_json(&paced);
        paced_json["offered_per_second"] = json!(rate);
        report.insert(key.into(), paced_json);
    }
    if !args.accounts_only {
        audit(&args, &client, duration, &mut report).await?;
    }
    stop.cancel();
    server.await??;
    database.drop_now().await?;
    if let Some(path) = &args.json {
        tests::bench::write_json(path, &Value::Object(report))?;
    }
    Ok(())
}

/// The audit queries over the seeded log: by actor, paged, and by correlation id.
async fn audit(
    args: &Args,
    client: &Client,
    duration: Duration,
    report: &mut serde_json::Map<String, Value>,
) -> anyhow::Result<()> {
    let by_actor = measure(
        client,
        args.audit_connections,
        duration,
        Load::ClosedLoop,
        Arc::new(|random| {
            let actor = random.below(ACTORS as u64);
            let after = random.below(EVENTS as u64);
            format!("/audit/events?actor=actor-{actor}&after={after}&limit=50")
        }),
    )
    .await?;
    row(
        "`GET /audit/events?actor=…&after=…` (50 per page)",
        args.audit_connections,
        &by_actor,
    );

    let by_correlation = measure(
        client,
        args.audit_connections,
        duration,
        Load::ClosedLoop,
        Arc::new(|random| {
            let correlation = random.below((EVENTS / EVENTS_PER_CORRELATION) as u64);
            format!("/audit/events?correlation_id=corr-{correlation}")
        }),
    )
    .await?;
    row(
        "`GET /audit/events?correlation_id=…`",
        args.audit_connections,
        &by_correlation,
    );
    report.insert("audit_by_actor".into(), measured_json(&by_actor));
    report.insert("audit_by_correlation".into(), measured_json(&by_correlation));
    Ok(())
}
