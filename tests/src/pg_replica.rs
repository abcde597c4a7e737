//! A private PostgreSQL primary with a hot-standby replica kept by streaming replication,
//! for tests of the query API reading a replica and of the replica's loss: started by
//! `scripts/pg-replicated.sh` (the same script `scripts/cluster.sh` runs), with its data
//! in a temporary directory that is removed when the pair is dropped.

use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{Context, bail};
use uuid::Uuid;

/// The script that starts, stops and restarts the pair.
fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/pg-replicated.sh")
}

fn run(arguments: &[&str]) -> anyhow::Result<String> {
    let output = std::process::Command::new("bash")
        .arg(script())
        .args(arguments)
        .stdin(Stdio::null())
        .output()
        .context("running scripts/pg-replicated.sh")?;
    if !output.status.success() {
        bail!(
            "scripts/pg-replicated.sh {arguments:?}: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// A running primary and replica; both stop and their data goes when this is dropped.
pub struct PgReplicated {
    dir: PathBuf,
    /// `postgres://postgres@127.0.0.1:<port>/postgres` of the primary.
    pub primary_url: String,
    /// The same of the replica, which follows the primary and refuses writes.
    pub replica_url: String,
}

impl PgReplicated {
    /// Creates the primary, copies it into the replica with `pg_basebackup` and starts
    /// both (a few seconds).
    pub async fn start() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("eventledger-pg-replicated-{}", Uuid::now_v7().simple()));
        let path = dir.to_string_lossy().into_owned();
        let printed = tokio::task::spawn_blocking(move || run(&["start", &path])).await??;
        let Some((primary_url, replica_url)) = printed.split_once(' ') else {
            bail!("scripts/pg-replicated.sh printed {printed:?}, not two URLs");
        };
        Ok(Self {
            primary_url: primary_url.to_owned(),
            replica_url: replica_url.to_owned(),
            dir,
        })
    }

    /// `url` (one of the two servers' URLs) with `user` and `database` instead.
    pub fn url_of(url: &str, user: &str, database: &str) -> String {
        let host = url
            .trim_start_matches("postgres://")
            .split_once('@')
            .and_then(|(_, rest)| rest.split_once('/'))
            .map_or("127.0.0.1", |(host, _)| host);
        format!("postgres://{user}@{host}/{database}")
    }

    /// Stops the replica at once, as a crash would.
    pub async fn kill_replica(&self) -> anyhow::Result<()> {
        let path = self.dir.to_string_lossy().into_owned();
        tokio::task::spawn_blocking(move || run(&["stop-replica", &path])).await??;
        Ok(())
    }

    /// Starts the replica again; it catches up from the primary by itself.
    pub async fn restart_replica(&self) -> anyhow::Result<()> {
        let path = self.dir.to_string_lossy().into_owned();
        tokio::task::spawn_blocking(move || run(&["start-replica", &path])).await??;
        Ok(())
    }
}

impl Drop for PgReplicated {
    fn drop(&mut self) {
        let path = self.dir.to_string_lossy().into_owned();
        if let Err(error) = run(&["stop", &path]) {
            eprintln!("could not stop the private PostgreSQL pair in {path}: {error:#}");
        }
    }
}
