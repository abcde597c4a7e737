//! Where a benchmark's time goes: the CPU time of each eventledger process and of the
//! whole PostgreSQL cluster between two snapshots, and PostgreSQL's own account of its
//! statements (`pg_stat_statements`). Run against the private, profiled PostgreSQL that
//! `scripts/pg-profiled.sh` starts, so the cluster's CPU time is the system's alone.
//!
//! CPU time comes from `/proc/<pid>/stat` (Linux). PostgreSQL's is the postmaster's own
//! and reaped children's time plus that of every live child (backends, WAL writer,
//! checkpointer): a backend that exits between two snapshots is counted through its
//! parent's reaped-children time, so connections opened and closed in between are not lost.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use sqlx::PgPool;

use crate::harness::System;

/// Clock ticks per second of `/proc/<pid>/stat`'s times (`getconf CLK_TCK`); 100 on
/// every Linux this runs on.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// The fields of `/proc/<pid>/stat` after the command name: state is field 3, so the
/// index of field N here is N - 3.
struct ProcStat {
    parent: u32,
    /// utime + stime, in ticks.
    own_ticks: u64,
    /// cutime + cstime: children this process waited for, in ticks.
    reaped_children_ticks: u64,
}

fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: split after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |number: usize| -> Option<u64> { fields.get(number - 3)?.parse().ok() };
    Some(ProcStat {
        parent: u32::try_from(field(4)?).ok()?,
        own_ticks: field(14)? + field(15)?,
        reaped_children_ticks: field(16)? + field(17)?,
    })
}

/// CPU seconds one process has used so far (user + system); 0 once it is gone.
pub fn process_cpu_seconds(pid: u32) -> f64 {
    proc_stat(pid).map_or(0.0, |stat| stat.own_ticks as f64 / CLOCK_TICKS_PER_SECOND)
}

/// The PostgreSQL cluster a pool connects to, located by its postmaster's process id.
#[derive(Debug, Clone, Copy)]
pub struct PostgresCluster {
    postmaster: u32,
}

impl PostgresCluster {
    /// Finds the postmaster through the cluster's data directory; this process must be
    /// able to read `postmaster.pid` there (the same machine).
    pub async fn locate(pool: &PgPool) -> anyhow::Result<Self> {
        let data_directory: String = sqlx::query_scalar("SHOW data_directory").fetch_one(pool).await?;
        let pid_file = PathBuf::from(&data_directory).join("postmaster.pid");
        let text = std::fs::read_to_string(&pid_file)
            .with_context(|| format!("reading {} (is PostgreSQL on this machine?)", pid_file.display()))?;
        let postmaster = text
            .lines()
            .next()
            .and_then(|line| line.trim().parse().ok())
            .context("postmaster.pid does not start with a process id")?;
        Ok(Self { postmaster })
    }

    /// CPU seconds the whole cluster has used so far.
    pub fn cpu_seconds(&self) -> f64 {
        let mut ticks =
            proc_stat(self.postmaster).map_or(0, |stat| stat.own_ticks + stat.reaped_children_ticks);
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|name| name.parse::<u32>().ok())
                else {
                    continue;
                };
                if let Some(stat) = proc_stat(pid)
                    && stat.parent == self.postmaster
                {
                    ticks += stat.own_ticks;
                }
            }
        }
        ticks as f64 / CLOCK_TICKS_PER_SECOND
    }
}

/// One statement's totals in `pg_stat_statements` since the last reset.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct StatementCost {
    /// The normalised text (constants replaced by `$n`), cut to 120 characters.
    pub query: String,
    pub calls: i64,
    /// Execution time summed over every call, in milliseconds.
    pub total_ms: f64,
    pub rows: i64,
    /// Functions JIT-compiled over every call: above 0 means PostgreSQL compiled this
    /// statement at least once.
    pub jit_functions: i64,
    /// Shared buffers found in the cache, over every call.
    pub shared_blks_hit: i64,
    /// Shared buffers read from outside the cache, over every call.
    pub shared_blks_read: i64,
}

impl StatementCost {
    /// Mean execution time per call, in milliseconds.
    pub fn mean_ms(&self) -> f64 {
        self.total_ms / self.calls.max(1) as f64
    }

    /// Rows returned or affected per call.
    pub fn rows_per_call(&self) -> f64 {
        self.rows as f64 / self.calls.max(1) as f64
    }

    /// Shared buffers touched (hit or read) per call: an index lookup touches a handful
    /// whatever the table's size (one per level of the B-tree and one per row), a scan
    /// as many as the table has pages.
    pub fn blocks_per_call(&self) -> f64 {
        (self.shared_blks_hit + self.shared_blks_read) as f64 / self.calls.max(1) as f64
    }
}

/// Empties `pg_stat_statements`, so what follows counts only what comes after.
pub async fn reset_statements(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query("SELECT pg_stat_statements_reset()")
        .execute(pool)
        .await
        .context("pg_stat_statements is missing: run against scripts/pg-profiled.sh's PostgreSQL")?;
    Ok(())
}

/// Every statement run in `database` since the last reset, by total time, highest first.
pub async fn statements(pool: &PgPool, database: &str) -> anyhow::Result<Vec<StatementCost>> {
    Ok(sqlx::query_as(
        "SELECT left(regexp_replace(s.query, '\\s+', ' ', 'g'), 120) AS query, \
                sum(s.calls)::int8 AS calls, sum(s.total_exec_time)::float8 AS total_ms, \
                sum(s.rows)::int8 AS rows, sum(s.jit_functions)::int8 AS jit_functions, \
                sum(s.shared_blks_hit)::int8 AS shared_blks_hit, \
                sum(s.shared_blks_read)::int8 AS shared_blks_read \
         FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid \
         WHERE d.datname = $1 \
         GROUP BY 1 ORDER BY total_ms DESC",
    )
    .bind(database)
    .fetch_all(pool)
    .await?)
}

/// CPU times at one instant: each process of a [`System`] and the PostgreSQL cluster.
#[derive(Debug, Clone)]
pub struct CpuSnapshot {
    at: Instant,
    processes: HashMap<&'static str, f64>,
    postgres: f64,
}

impl CpuSnapshot {
    pub fn take(system: &System, cluster: &PostgresCluster) -> Self {
        Self {
            at: Instant::now(),
            processes: system
                .pids()
                .into_iter()
                .map(|(binary, pid)| (binary.name(), process_cpu_seconds(pid)))
                .collect(),
            postgres: cluster.cpu_seconds(),
        }
    }
}

/// What a stretch of time cost: CPU seconds per process and for PostgreSQL, and the
/// statements run in the system's database.
#[derive(Debug, Clone, Serialize)]
pub struct Cost {
    pub seconds: f64,
    /// CPU seconds of each eventledger process, by binary name, sorted.
    pub processes: Vec<(String, f64)>,
    /// CPU seconds of the whole PostgreSQL cluster.
    pub postgres: f64,
    pub statements: Vec<StatementCost>,
}

impl Cost {
    /// The cost between `before` and now; the statements since the last
    /// [`reset_statements`].
    pub async fn since(
        before: &CpuSnapshot,
        system: &System,
        cluster: &PostgresCluster,
        pool: &PgPool,
    ) -> anyhow::Result<Self> {
        let after = CpuSnapshot::take(system, cluster);
        let seconds = after.at.duration_since(before.at).as_secs_f64();
        if seconds <= 0.0 {
            bail!("no time passed between the two snapshots");
        }
        let mut processes: Vec<(String, f64)> = after
            .processes
            .iter()
            .map(|(name, cpu)| {
                let earlier = before.processes.get(name).copied().unwrap_or(0.0);
                ((*name).to_owned(), (cpu - earlier).max(0.0))
            })
            .collect();
        processes.sort_by(|a, b| a.0.cmp(&b.0));
        let database = system
            .database_url
            .rsplit_once('/')
            .map_or(system.database_url.as_str(), |(_, name)| name);
        Ok(Self {
            seconds,
            processes,
            postgres: (after.postgres - before.postgres).max(0.0),
            statements: statements(pool, database).await?,
        })
    }

    /// Statements executed per second, all of them.
    pub fn statements_per_second(&self) -> f64 {
        self.statements.iter().map(|s| s.calls).sum::<i64>() as f64 / self.seconds
    }

    /// CPU seconds of every process and PostgreSQL together.
    pub fn total_cpu(&self) -> f64 {
        self.postgres + self.processes.iter().map(|(_, cpu)| cpu).sum::<f64>()
    }

    /// Statements that PostgreSQL JIT-compiled at least once.
    pub fn jit_compiled(&self) -> Vec<&StatementCost> {
        self.statements.iter().filter(|s| s.jit_functions > 0).collect()
    }

    /// A Markdown report: CPU as a share of one core (and per operation when
    /// `operations` is given), then the `top` statements by total time.
    pub fn markdown(&self, operations: Option<u64>, top: usize) -> String {
        let per_operation = |cpu: f64| match operations {
            Some(count) if count > 0 => format!("{:.1} µs", cpu * 1e6 / count as f64),
            _ => "–".to_owned(),
        };
        let mut out = format!(
            "| process | CPU, % of one core | CPU per operation |\n|---|---:|---:|\n| PostgreSQL | {:.2} | {} |\n",
            self.postgres * 100.0 / self.seconds,
            per_operation(self.postgres)
        );
        for (name, cpu) in &self.processes {
            out.push_str(&format!(
                "| {name} | {:.2} | {} |\n",
                cpu * 100.0 / self.seconds,
                per_operation(*cpu)
            ));
        }
        out.push_str(&format!(
            "| **all** | {:.2} | {} |\n\nStatements: {:.2}/s; JIT-compiled: {}.\n\n",
            self.total_cpu() * 100.0 / self.seconds,
            per_operation(self.total_cpu()),
            self.statements_per_second(),
            self.jit_compiled().len()
        ));
        out.push_str("| statement | calls | total ms | rows | JIT functions |\n|---|---:|---:|---:|---:|\n");
        for statement in self.statements.iter().take(top) {
            out.push_str(&format!(
                "| `{}` | {} | {:.1} | {} | {} |\n",
                statement.query.replace('|', "\\|"),
                statement.calls,
                statement.total_ms,
                statement.rows,
                statement.jit_functions
            ));
        }
        out
    }
}

/// Waits `duration`, then returns what it cost: the building block of an idle
/// measurement and of a profiled scenario.
pub async fn measure_idle(
    system: &System,
    cluster: &PostgresCluster,
    pool: &PgPool,
    duration: Duration,
) -> anyhow::Result<Cost> {
    reset_statements(pool).await?;
    let before = CpuSnapshot::take(system, cluster);
    tokio::time::sleep(duration).await;
    Cost::since(&before, system, cluster, pool).await
}

/// The profiled PostgreSQL of a system this run started, and the system's processes.
pub struct Profiler<'a> {
    system: &'a System,
    pub pool: sqlx::PgPool,
    cluster: PostgresCluster,
}

impl<'a> Profiler<'a> {
    /// Connects to the profiled PostgreSQL at `database_url` and empties its statement
    /// statistics.
    pub async fn connect(system: &'a System, database_url: &str) -> anyhow::Result<Self> {
        let pool = sqlx::PgPool::connect(database_url).await?;
        let cluster = PostgresCluster::locate(&pool).await?;
        reset_statements(&pool).await?;
        Ok(Self {
            system,
            pool,
            cluster,
        })
    }

    /// Empties the statement statistics and takes the CPU times: the start of a measured
    /// stretch.
    pub async fn start(&self) -> anyhow::Result<CpuSnapshot> {
        reset_statements(&self.pool).await?;
        Ok(CpuSnapshot::take(self.system, &self.cluster))
    }

    /// What the stretch since `before` cost.
    pub async fn finish(&self, before: &CpuSnapshot) -> anyhow::Result<Cost> {
        Cost::since(before, self.system, &self.cluster, &self.pool).await
    }
}
