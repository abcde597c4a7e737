//! What every benchmark needs: a database of its own that it drops afterwards, a timed
//! loop over concurrent workers, and the machine's own limits measured in the same run,
//! so that a figure reads as a fraction of what the machine can do.

use std::time::{Duration, Instant};

use sqlx::Postgres;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgPool, PgPoolOptions};

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
