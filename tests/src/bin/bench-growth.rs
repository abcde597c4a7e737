//! `bench-growth`: what a deposit costs as the log grows. For each size of `--sizes`
//! (0, 1 million and 10 million events by default) a fresh database is seeded with a
//! valid log of that many events (`tests::seed`, COPY), the whole system starts on it,
//! and `loadgen`'s deposit scenario runs through `loadgen`'s client: deposits/s and
//! latency, and with `--profile` PostgreSQL's own account of every statement (mean time,
//! rows and shared buffers per call), which shows whether a per-command statement stays
//! an index lookup or grows with the log.
//!
//! On the largest log it then runs `projector rebuild --all` (a process of its own, as
//! an operator would) while deposits are offered open loop at half the rate the empty
//! log reached, and reports the rebuild's events/s, its peak resident memory, and the
//! live visibility lag meanwhile; then, at rest, the reference: the same read-model rows
//! COPYed into bare tables and the same indexes built.
//!
//! Run on the profiled PostgreSQL (`scripts/bench.sh` does):
//!
//!     dir=$(mktemp -d); url=$(scripts/pg-profiled.sh start "$dir/pg")
//!     DATABASE_URL=$url target/release/bench-growth --profile --sizes 0,1000000,10000000
//!     scripts/pg-profiled.sh stop "$dir/pg"

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use serde_json::{Value, json};
use service::auth::Role;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgConnection, PgPool, Postgres};
use tests::bench::{BenchDatabaseArgs, machine, write_json};
use tests::harness::{Binary, System};
use tests::load::{Api, LagUnderLoad, Scenario, lag_until, open_accounts, run_scenario};
use tests::profile::{Cost, Profiler};
use tests::seed;

tests::bench_allocator!();

#[derive(Parser)]
#[command(
    name = "bench-growth",
    about = "Deposits as the log grows, and rebuild of the largest log under load"
)]
struct Args {
    #[command(flatten)]
    database: BenchDatabaseArgs,
    /// Events stored before each measurement, comma-separated; the largest is also rebuilt.
    #[arg(long, value_delimiter = ',', default_values_t = [0, 1_000_000, 10_000_000])]
    sizes: Vec<usize>,
    /// Accounts the seeded events spread over.
    #[arg(long, default_value_t = 50_000)]
    seed_accounts: usize,
    /// Accounts opened through the API and deposited to (as `loadgen`'s deposit scenario).
    #[arg(long, default_value_t = 10_000)]
    accounts: usize,
    /// Concurrent HTTP connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Seconds each deposit measurement runs.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Deposits per second offered during the rebuild; by default half the rate the
    /// smallest log reached (the goal's "half the whole-system rate").
    #[arg(long)]
    lag_rate: Option<f64>,
    /// Skip the rebuild of the largest log.
    #[arg(long)]
    no_rebuild: bool,
    /// Report PostgreSQL's statements per size (`pg_stat_statements`: needs the profiled
    /// PostgreSQL of `scripts/pg-profiled.sh`).
    #[arg(long)]
    profile: bool,
    /// Statements listed per size, by total time.
    #[arg(long, default_value_t = 8)]
    top_statements: usize,
    /// Where the JSON report goes (the Markdown goes to stdout).
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The command API's relay name: its checkpoint is moved to the seeded head.
const RELAY_NAME: &str = "ledger-events";

/// How often the rebuild process's memory is sampled while it runs.
const MEMORY_SAMPLE_INTERVAL: Duration = Duration::from_millis(50);

/// Memory for each index build of the reference, as the rebuild gives its own
/// (`projector::rebuild`'s `INDEX_BUILD_MEMORY`), so that both sort in memory.
const REFERENCE_INDEX_MEMORY: &str = "256MB";

/// What one size measured.
struct SizeRun {
    events: usize,
    seed_seconds: f64,
    deposits: tests::bench::LatencyRun,
    cost: Option<Cost>,
    rebuild: Option<RebuildRun>,
}

/// `projector rebuild --all` under paced deposits, and the reference at rest.
struct RebuildRun {
    events: i64,
    seconds: f64,
    peak_rss_kib: u64,
    succeeded: bool,
    load: LagUnderLoad,
    reference_rows: u64,
    reference_seconds: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut sizes = args.sizes.clone();
    sizes.sort_unstable();
    sizes.dedup();
    let largest = sizes.last().copied().unwrap_or(0);
    let mut runs = Vec::new();
    for &size in &sizes {
        let lag_rate = args.lag_rate.or_else(|| {
            runs.first()
                .map(|first: &SizeRun| first.deposits.per_second / 2.0)
        });
        let rebuild = (size == largest && !args.no_rebuild).then_some(lag_rate.unwrap_or(0.0));
        eprintln!("log of {size} events");
        runs.push(
            measure(&args, size, rebuild)
                .await
                .with_context(|| format!("the log of {size} events"))?,
        );
    }
    let (markdown, report) = report(&args, &runs);
    println!("{markdown}");
    if let Some(path) = &args.json {
        write_json(path, &report)?;
    }
    Ok(())
}

/// Seeds a fresh system's database with `size` events, starts the system, measures the
/// deposits, and with `rebuild` (the deposits/s to offer meanwhile; 0 = half this
/// size's own rate) rebuilds every projection under that load.
async fn measure(args: &Args, size: usize, rebuild: Option<f64>) -> anyhow::Result<SizeRun> {
    // The harness's environment, database and stream names, without processes yet: the
    // database is seeded before they start.
    let nats_url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let server = &args.database.database_url;
    let mut system = System::start_on(&[], server, &nats_url).await?;
    Postgres::create_database(&system.database_url).await?;
    // The rebuild's reader, folder and writer each hold a connection per projection.
    let pool = PgPoolOptions::new()
        .max_connections(24)
        .connect(&system.database_url)
        .await?;
    let outcome = measure_on(args, size, rebuild, &mut system, &pool).await;
    pool.close().await;
    system.shut_down().await?;
    outcome
}

async fn measure_on(
    args: &Args,
    size: usize,
    rebuild: Option<f64>,
    system: &mut System,
    pool: &PgPool,
) -> anyhow::Result<SizeRun> {
    event_store::MIGRATOR.run(pool).await?;
    let started = Instant::now();
    let events = if size > 0 {
        let seeded = seed::seed_log(pool, size, args.seed_accounts).await?;
        eprintln!(
            "  seeded {} events: generated in {:.1} s, COPYed in {:.1} s",
            seeded.events, seeded.generated_seconds, seeded.copy_seconds
        );
        let rebuilt = seed::ready_for_system(pool, RELAY_NAME).await?;
        eprintln!("  projections built in {rebuilt:.1} s");
        seeded.events
    } else {
        0
    };
    // What seeding wrote is flushed now, not by a checkpoint during the measurement.
    sqlx::query("CHECKPOINT").execute(pool).await?;
    let seed_seconds = started.elapsed().as_secs_f64();
    for binary in Binary::ALL {
        system.add(binary).await?;
    }
    let api = Api {
        http: Api::client(args.connections)?,
        command: system.url(Binary::CommandApi, ""),
        query: system.url(Binary::QueryApi, ""),
        projector: system.url(Binary::Projector, ""),
        token: System::token("bench-growth", &[Role::Admin])?,
    };
    let accounts = open_accounts(&api, args.accounts, "accounts").await?;
    let profiler = if args.profile {
        Some(Profiler::connect(system, &args.database.database_url).await?)
    } else {
        None
    };
    let before = match &profiler {
        Some(profiler) => Some(profiler.start().await?),
        None => None,
    };
    let none = Arc::new(Vec::new());
    let deposits = run_scenario(
        &api,
        args.connections,
        args.seconds,
        Scenario::Deposits,
        &accounts,
        &none,
    )
    .await?;
    let cost = match (&profiler, &before) {
        (Some(profiler), Some(before)) => Some(profiler.finish(before).await?),
        _ => None,
    };
    if let Some(profiler) = profiler {
        profiler.pool.close().await;
    }
    eprintln!(
        "  deposits: {:.0}/s, p99 {:.2} ms",
        deposits.per_second,
        deposits.millis(0.99)
    );
    let rebuild = match rebuild {
        Some(rate) => {
            let rate = if rate > 0.0 {
                rate
            } else {
                deposits.per_second / 2.0
            };
            Some(rebuild_under_load(system, &api, &accounts, rate, pool).await?)
        }
        None => None,
    };
    Ok(SizeRun {
        events,
        seed_seconds,
        deposits,
        cost,
        rebuild,
    })
}

/// The peak resident memory (`VmHWM`) of process `pid` so far, in KiB; 0 once it is gone.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmHWM:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or(0)
}

/// Runs `projector rebuild --all` while deposits are offered at `rate`, sampling the
/// rebuild process's peak memory, then measures the reference at rest.
async fn rebuild_under_load(
    system: &System,
    api: &Api,
    accounts: &Arc<Vec<String>>,
    rate: f64,
    pool: &PgPool,
) -> anyhow::Result<RebuildRun> {
    let events: i64 = sqlx::query_scalar("SELECT position FROM event_store_head")
        .fetch_one(pool)
        .await?;
    eprintln!("  rebuild --all of {events} events under {rate:.0} deposits/s");
    let mut child = system
        .command(Binary::Projector, &["rebuild", "--all"])?
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("starting projector rebuild --all")?;
    let pid = child.id().context("the rebuild exited at once")?;
    let started = Instant::now();
    let (done, finished) = tokio::sync::oneshot::channel::<()>();
    let watcher = tokio::spawn(async move {
        let mut peak = 0;
        let status = loop {
            peak = peak.max(peak_rss_kib(pid));
            if let Some(status) = child.try_wait()? {
                break status;
            }
            tokio::time::sleep(MEMORY_SAMPLE_INTERVAL).await;
        };
        let seconds = started.elapsed().as_secs_f64();
        let _ = done.send(());
        anyhow::Ok((status, peak, seconds))
    });
    let load = lag_until(api, accounts, rate, async {
        let _ = finished.await;
    })
    .await?;
    let (status, peak_rss_kib, seconds) = watcher.await??;
    eprintln!("  rebuilt in {seconds:.1} s ({status}); reference COPY and index builds");
    let (reference_rows, reference_seconds) = copy_reference(pool).await?;
    Ok(RebuildRun {
        events,
        seconds,
        peak_rss_kib,
        succeeded: status.success(),
        load,
        reference_rows,
        reference_seconds,
    })
}

/// The reference for the rebuild: every read-model table's rows COPYed (text format)
/// into a bare table of the same columns and constraints, then the live table's indexes
/// built on it, on one connection with the rebuild's index memory. Returns the rows and
/// the seconds of the COPYs and index builds (not of reading the rows out); the tables
/// are dropped after.
async fn copy_reference(pool: &PgPool) -> anyhow::Result<(u64, f64)> {
    use futures::TryStreamExt;
    let mut connection = pool.acquire().await?;
    sqlx::query(&format!("SET maintenance_work_mem = '{REFERENCE_INDEX_MEMORY}'"))
        .execute(&mut *connection)
        .await?;
    let mut rows = 0u64;
    let mut seconds = 0.0;
    for projection in projector::projection::Projection::ALL {
        let table = projection.table();
        let text: Vec<u8> = connection
            .copy_out_raw(&format!("COPY read_model.{table} TO STDOUT"))
            .await?
            .try_collect::<Vec<_>>()
            .await?
            .concat();
        rows += text.iter().filter(|byte| **byte == b'\n').count() as u64;
        let copy = format!("bench_copy_{table}");
        sqlx::query(&format!(
            "CREATE TABLE read_model.{copy} (LIKE read_model.{table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
        ))
        .execute(&mut *connection)
        .await?;
        let indexes: Vec<(String, String)> = sqlx::query_as(
            "SELECT indexname::text, indexdef FROM pg_indexes WHERE schemaname = 'read_model' AND tablename = $1",
        )
        .bind(table)
        .fetch_all(&mut *connection)
        .await?;
        let started = Instant::now();
        copy_in(
            &mut connection,
            &format!("COPY read_model.{copy} FROM STDIN"),
            &text,
        )
        .await?;
        drop(text);
        for (name, definition) in &indexes {
            let using = definition
                .find(" USING ")
                .with_context(|| format!("index {name} has no USING clause: {definition}"))?;
            let unique = if definition.starts_with("CREATE UNIQUE") {
                "UNIQUE "
            } else {
                ""
            };
            sqlx::query(&format!(
                "CREATE {unique}INDEX bench_copy_{name} ON read_model.{copy}{}",
                &definition[using..]
            ))
            .execute(&mut *connection)
            .await?;
        }
        seconds += started.elapsed().as_secs_f64();
        sqlx::query(&format!("DROP TABLE read_model.{copy}"))
            .execute(&mut *connection)
            .await?;
    }
    Ok((rows, seconds))
}

/// COPYs `text` with `statement` on `connection`, in 1 MiB messages.
async fn copy_in(connection: &mut PgConnection, statement: &str, text: &[u8]) -> anyhow::Result<()> {
    let mut copy = connection.copy_in_raw(statement).await?;
    for chunk in text.chunks(seed::COPY_CHUNK_BYTES) {
        copy.send(chunk).await?;
    }
    copy.finish().await?;
    Ok(())
}

/// One table of the statements that took the most time with the largest log, each
/// beside its figures with every smaller log: mean time, rows and shared buffers per
/// call. A statement that stays an index lookup keeps its buffers per call (B-tree
/// levels and rows) as the log grows tenfold; a scan's would grow with it.
fn statements_across_sizes(runs: &[SizeRun], top: usize) -> String {
    let profiled: Vec<(usize, &Cost)> = runs
        .iter()
        .filter_map(|run| run.cost.as_ref().map(|cost| (run.events, cost)))
        .collect();
    let Some((_, largest)) = profiled.last() else {
        return String::new();
    };
    let sizes = profiled
        .iter()
        .map(|(events, _)| events.to_string())
        .collect::<Vec<_>>()
        .join(" / ");
    let mut out = format!(
        "\n#### Statements during the deposits, by total time with the largest log (top {top}); \
         each cell: events stored {sizes}\n\n\
         | statement | calls | mean ms | rows/call | shared blocks/call |\n|---|---:|---:|---:|---:|\n"
    );
    for statement in largest.statements.iter().take(top) {
        let cells = |figure: &dyn Fn(&tests::profile::StatementCost) -> String| {
            profiled
                .iter()
                .map(|(_, cost)| {
                    cost.statements
                        .iter()
                        .find(|other| other.query == statement.query)
                        .map_or("–".to_owned(), figure)
                })
                .collect::<Vec<_>>()
                .join(" / ")
        };
        out.push_str(&format!(
            "| `{}` | {} | {} | {} | {} |\n",
            statement.query.replace('|', "\\|"),
            cells(&|s| s.calls.to_string()),
            cells(&|s| format!("{:.3}", s.mean_ms())),
            cells(&|s| format!("{:.2}", s.rows_per_call())),
            cells(&|s| format!("{:.1}", s.blocks_per_call())),
        ));
    }
    out
}

/// The Markdown report and its JSON twin.
fn report(args: &Args, runs: &[SizeRun]) -> (String, Value) {
    let base = runs.first().map_or(0.0, |run| run.deposits.per_second);
    let mut out = format!(
        "Machine: {}. Deposits from {} connections for {} s over {} accounts opened through the API; \
         the seeded log spreads over {} accounts of its own.\n\n\
         | events stored | deposits/s | failures | p50 ms | p99 ms | p99.9 ms | of the rate with the smallest log |\n\
         |---:|---:|---:|---:|---:|---:|---:|\n",
        machine(),
        args.connections,
        args.seconds,
        args.accounts,
        args.seed_accounts
    );
    let mut sizes_json = Vec::new();
    for run in runs {
        let ratio = if base > 0.0 {
            run.deposits.per_second / base
        } else {
            0.0
        };
        out.push_str(&format!(
            "| {} | {:.0} | {} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
            run.events,
            run.deposits.per_second,
            run.deposits.failures,
            run.deposits.millis(0.5),
            run.deposits.millis(0.99),
            run.deposits.millis(0.999),
            ratio
        ));
        sizes_json.push(json!({
            "events": run.events,
            "seed_seconds": run.seed_seconds,
            "per_second": run.deposits.per_second,
            "failures": run.deposits.failures,
            "p50_ms": run.deposits.millis(0.5),
            "p99_ms": run.deposits.millis(0.99),
            "p999_ms": run.deposits.millis(0.999),
            "ratio_to_smallest": ratio,
            "statements": run.cost.as_ref().map(|cost| {
                cost.statements.iter().take(args.top_statements).map(|statement| json!({
                    "query": statement.query,
                    "calls": statement.calls,
                    "mean_ms": statement.mean_ms(),
                    "rows_per_call": statement.rows_per_call(),
                    "blocks_per_call": statement.blocks_per_call(),
                })).collect::<Vec<_>>()
            }),
        }));
    }
    out.push_str(&statements_across_sizes(runs, args.top_statements));
    let rebuild_json = runs
        .iter()
        .find_map(|run| run.rebuild.as_ref().map(|rebuild| (run.events, rebuild)));
    let rebuild_json = match rebuild_json {
        Some((stored, rebuild)) => {
            let rate = rebuild.events as f64 / rebuild.seconds;
            let reference_rate = rebuild.events as f64 / rebuild.reference_seconds.max(f64::EPSILON);
            let lag = &rebuild.load.lag;
            out.push_str(&format!(
                "\n#### `projector rebuild --all` of the log of {stored} seeded events ({} by then) under load\n\n\
                 | measurement | seconds | log events/s | peak RSS MiB | p50 ms | p99 ms | max ms |\n\
                 |---|---:|---:|---:|---:|---:|---:|\n\
                 | `projector rebuild --all`{} | {:.1} | {rate:.0} | {:.0} | | | |\n\
                 | reference at rest: COPY of the {} read-model rows into bare tables + the same indexes | {:.1} | {reference_rate:.0} | | | | |\n\
                 | deposits offered meanwhile at {:.0}/s, answered {:.0}/s ({} not sent: too many in flight) | | | | {:.2} | {:.2} | {:.2} |\n\
                 | live visibility lag meanwhile (1 deposit in {}; {} not visible in time) | | | | {:.2} | {:.2} | {:.2} |\n",
                rebuild.events,
                if rebuild.succeeded { "" } else { " (FAILED)" },
                rebuild.seconds,
                rebuild.peak_rss_kib as f64 / 1024.0,
                rebuild.reference_rows,
                rebuild.reference_seconds,
                rebuild.load.offered_per_second,
                rebuild.load.commands.per_second,
                rebuild.load.missed,
                rebuild.load.commands.millis(0.5),
                rebuild.load.commands.millis(0.99),
                rebuild.load.commands.latency_us.max() as f64 / 1000.0,
                tests::load::LAG_READ_EVERY,
                lag.failures,
                lag.millis(0.5),
                lag.millis(0.99),
                lag.latency_us.max() as f64 / 1000.0,
            ));
            json!({
                "events": rebuild.events,
                "seconds": rebuild.seconds,
                "events_per_second": rate,
                "succeeded": rebuild.succeeded,
                "peak_rss_mib": rebuild.peak_rss_kib as f64 / 1024.0,
                "reference_rows": rebuild.reference_rows,
                "reference_seconds": rebuild.reference_seconds,
                "reference_events_per_second": reference_rate,
                "offered_per_second": rebuild.load.offered_per_second,
                "missed": rebuild.load.missed,
                "commands_per_second": rebuild.load.commands.per_second,
                "commands_p99_ms": rebuild.load.commands.millis(0.99),
                "lag_p50_ms": lag.millis(0.5),
                "lag_p99_ms": lag.millis(0.99),
                "lag_samples": lag.latency_us.len(),
                "lag_unseen": lag.failures,
            })
        }
        None => Value::Null,
    };
    let report = json!({
        "machine": machine(),
        "connections": args.connections,
        "seconds": args.seconds,
        "accounts": args.accounts,
        "seed_accounts": args.seed_accounts,
        "sizes": sizes_json,
        "rebuild": rebuild_json,
    });
    (out, report)
}
