//! What every benchmark needs: a database of its own that it drops afterwards, a NATS
//! server of its own, a timed loop over concurrent workers (with or without latency
//! histograms), and the machine's own limits measured in the same run (PostgreSQL's
//! commit rate, JetStream's publish rate), so that a figure reads as a fraction of what
//! the machine can do.

use std::collections::VecDeque;
use std::path::Path;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use sqlx::Postgres;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgPool, PgPoolOptions};

/// The PostgreSQL server a benchmark binary works on, as every one of them takes it:
/// `#[command(flatten)]` it into the binary's arguments.
// Without `about = None`, clap would make this doc comment the whole binary's `--help`
// text when the binary has none of its own.
#[derive(Debug, Clone, clap::Args)]
#[command(about = None, long_about = None)]
pub struct BenchDatabaseArgs {
    /// PostgreSQL server URL; the benchmark creates throwaway databases beside the one
    /// named and drops them afterwards.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub database_url: String,
}

/// Declares mimalloc as the binary's allocator, as the services do (see the workspace
/// `Cargo.toml`): a benchmark's client then costs the shared cores what a service's
/// code would, not glibc's `malloc`. Call once at the top of a benchmark binary.
#[macro_export]
macro_rules! bench_allocator {
    () => {
        /// mimalloc rather than the system allocator: see `tests::bench_allocator!`.
        #[global_allocator]
        static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
    };
}

/// Writes `value` as pretty JSON to `path`, creating its directory: the machine-readable
/// half of a benchmark's report, which `bench-report` reads back.
pub fn write_json(path: &Path, value: &serde_json::Value) -> anyhow::Result<()> {
    if let Some(directory) = path
        .parent()
        .filter(|directory| !directory.as_os_str().is_empty())
    {
        std::fs::create_dir_all(directory)?;
    }
    std::fs::write(path, serde_json::to_string_pretty(value)?)?;
    Ok(())
}

/// A database created for one benchmark run and dropped by [`BenchDatabase::drop_now`].
pub struct BenchDatabase {
    pub url: String,
    pub pool: PgPool,
}

impl BenchDatabase {
    /// Creates `<server_url>/eventledger_bench_<pid>`, migrates it, and connects a pool
    /// of `max_connections`.
    pub async fn create(server_url: &str, max_connections: u32) -> anyhow::Result<Self> {
        let base = server_url.rsplit_once('/').map_or(server_url, |(base, _)| base);
        let url = format!("{base}/eventledger_bench_{}", std::process::id());
        if Postgres::database_exists(&url).await? {
            Postgres::drop_database(&url).await?;
        }
        Postgres::create_database(&url).await?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .connect(&url)
            .await?;
        event_store::MIGRATOR.run(&pool).await?;
        Ok(Self { url, pool })
    }

    pub async fn drop_now(self) -> anyhow::Result<()> {
        self.pool.close().await;
        Postgres::force_drop_database(&self.url).await?;
        Ok(())
    }
}

/// Runs `workers` copies of `work` for `duration`; each call of `work` returns how many
/// units it completed. Returns units per second.
pub async fn rate<F, Fut>(workers: usize, duration: Duration, work: F) -> anyhow::Result<f64>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<u64>> + Send,
{
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..workers)
        .map(|worker| {
            let work = work.clone();
            tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < deadline {
                    done += work(worker).await?;
                }
                anyhow::Ok(done)
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// PostgreSQL's plain commit rate: one single-row INSERT per transaction, from
/// `connections` concurrent connections. The ceiling for any design that commits once
/// per command.
pub async fn plain_insert_commit_rate(
    pool: &PgPool,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS bench_plain_insert (id bigserial PRIMARY KEY, payload jsonb NOT NULL)",
    )
    .execute(pool)
    .await?;
    let pool = pool.clone();
    rate(connections, duration, move |_| {
        let pool = pool.clone();
        async move {
            sqlx::query("INSERT INTO bench_plain_insert (payload) VALUES ('{\"amount\": 1}')")
                .execute(&pool)
                .await?;
            Ok(1)
        }
    })
    .await
}

/// JetStream's publish rate on this server: messages of [`PUBLISH_PAYLOAD_BYTES`] (about
/// one event envelope) published to a throwaway file-backed stream with `in_flight` acks
/// outstanding, for `duration`; the stream is deleted afterwards. The ceiling of the
/// relay, which publishes the same way.
pub async fn jetstream_publish_rate(
    client: &async_nats::Client,
    in_flight: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    jetstream_publish_rate_replicated(client, in_flight, duration, 1).await
}

/// [`jetstream_publish_rate`] into a stream of `replicas` copies (a NATS cluster's, as
/// the relay's stream with `EVENTS_STREAM_REPLICAS`): each publish is acknowledged once
/// a majority of the copies has it.
pub async fn jetstream_publish_rate_replicated(
    client: &async_nats::Client,
    in_flight: usize,
    duration: Duration,
    replicas: usize,
) -> anyhow::Result<f64> {
    let jetstream = async_nats::jetstream::new(client.clone());
    let id = uuid::Uuid::new_v4().simple().to_string();
    let name = format!("BENCH_PUBLISH_{id}");
    let subject = format!("bench.{id}.publish");
    jetstream
        .create_stream(async_nats::jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            storage: async_nats::jetstream::stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        })
        .await?;
    let measured = async {
        let mut pending = VecDeque::with_capacity(in_flight);
        let started = Instant::now();
        let mut acknowledged = 0u64;
        while started.elapsed() < duration {
            if pending.len() >= in_flight.max(1)
                && let Some(ack) = pending.pop_front()
            {
                ack.await?;
                acknowledged += 1;
            }
            let payload: &'static [u8] = &PUBLISH_PAYLOAD;
            pending.push_back(jetstream.publish(subject.clone(), payload.into()).await?);
        }
        for ack in pending {
            ack.await?;
            acknowledged += 1;
        }
        anyhow::Ok(acknowledged as f64 / started.elapsed().as_secs_f64())
    }
    .await;
    jetstream.delete_stream(&name).await?;
    measured
}

/// The size of one benchmark message: about the size of an event envelope as JSON.
pub const PUBLISH_PAYLOAD_BYTES: usize = 400;

static PUBLISH_PAYLOAD: [u8; PUBLISH_PAYLOAD_BYTES] = [b'x'; PUBLISH_PAYLOAD_BYTES];

/// What a timed run with latencies measured: how many units completed per second, how
/// many calls failed, and each successful call's latency in microseconds.
pub struct LatencyRun {
    pub per_second: f64,
    pub failures: u64,
    pub latency_us: Histogram<u64>,
}

impl LatencyRun {
    /// The latency at `quantile` (0.5, 0.99, 0.999) in milliseconds.
    pub fn millis(&self, quantile: f64) -> f64 {
        self.latency_us.value_at_quantile(quantile) as f64 / 1_000.0
    }
}

/// The longest latency a histogram records exactly: a minute, far beyond any request
/// timeout; longer ones are clamped to it rather than dropped.
const MAX_RECORDED_LATENCY_US: u64 = 60_000_000;

/// Runs `workers` concurrent loops of `work` for `duration`, timing every call. A call
/// that returns `Ok(true)` counts as one unit done; `Ok(false)` counts as a failure (a
/// rejected request) and is not timed; `Err` stops the run.
pub async fn rate_with_latency<F, Fut>(
    workers: usize,
    duration: Duration,
    work: F,
) -> anyhow::Result<LatencyRun>
where
    F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<bool>> + Send,
{
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..workers)
        .map(|worker| {
            let work = work.clone();
            tokio::spawn(async move {
                // Three significant figures: 1 µs resolution at 1 ms, 1 ms at 1 s.
                let mut latency_us = Histogram::<u64>::new_with_bounds(1, MAX_RECORDED_LATENCY_US, 3)?;
                let mut failures = 0u64;
                let mut call = 0u64;
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    if work(worker, call).await? {
                        let micros = (sent.elapsed().as_micros() as u64).clamp(1, MAX_RECORDED_LATENCY_US);
                        latency_us.record(micros)?;
                    } else {
                        failures += 1;
                    }
                    call += 1;
                }
                anyhow::Ok((latency_us, failures))
            })
        })
        .collect();
    let mut latency_us = Histogram::<u64>::new_with_bounds(1, MAX_RECORDED_LATENCY_US, 3)?;
    let mut failures = 0;
    for task in tasks {
        let (worker_latency, worker_failures) = task.await??;
        latency_us.add(worker_latency)?;
        failures += worker_failures;
    }
    Ok(LatencyRun {
        per_second: latency_us.len() as f64 / started.elapsed().as_secs_f64(),
        failures,
        latency_us,
    })
}

/// A `nats-server` with JetStream of the benchmark's own, on a free port with its store
/// in a fresh directory, so that benchmark traffic never lands in the shared server's
/// streams (`LEDGER_EVENTS` above all). Killed, and its directory removed, when dropped.
pub struct BenchNats {
    pub url: String,
    store_dir: PathBuf,
    child: Child,
}

impl BenchNats {
    /// Starts `binary` (for example `/usr/sbin/nats-server`) and waits until it accepts
    /// connections.
    pub fn start(binary: &str) -> anyhow::Result<Self> {
        let port = free_port()?;
        let store_dir = std::env::temp_dir().join(format!("eventledger-bench-nats-{}", std::process::id()));
        std::fs::create_dir_all(&store_dir)?;
        let child = Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(&store_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| anyhow::anyhow!("could not start {binary}: {error}"))?;
        let server = Self {
            url: format!("nats://127.0.0.1:{port}"),
            store_dir,
            child,
        };
        wait_for_port(port, SERVICE_START_LIMIT)?;
        Ok(server)
    }
}

impl Drop for BenchNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.store_dir);
    }
}

/// How long a benchmark waits for a service it started to accept connections: generous,
/// because a first start may create and migrate a database.
pub const SERVICE_START_LIMIT: Duration = Duration::from_secs(60);

/// A TCP port nothing listens on right now, for a service the benchmark starts.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until something accepts connections on `127.0.0.1:port`.
pub fn wait_for_port(port: u16, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "nothing listens on port {port} after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A one-line description of this machine for benchmark reports.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, name)| name.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("MemTotal"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    format!("{cores} cores ({cpu}), {memory_gib:.0} GiB")
}
