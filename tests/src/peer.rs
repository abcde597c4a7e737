//! The peer: eventledger's deposit and account API built the common way on cqrs-es
//! (`../shared/peers/cqrs-es-ledger`, see its README), the yardstick for the whole
//! system's throughput. It is built from its read-only folder into a target directory
//! outside the checkout, and run against a fresh database of its own on a free port,
//! which is dropped when the [`Peer`] is shut down, so the same client and workload can
//! drive it right after eventledger.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sqlx::Postgres;
use sqlx::migrate::MigrateDatabase;
use tokio::process::{Child, Command};

use crate::bench::{SERVICE_START_LIMIT, free_port};

/// The peer's crate folder inside the peers folder (`PEER_DIR`).
pub const PEER_CRATE: &str = "cqrs-es-ledger";

/// The peers folder when `PEER_DIR` is not given: `../shared/peers` from the repository
/// root, where the peers' README puts it.
pub fn default_peer_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/peers")
}

/// Where the peer is built: `${XDG_CACHE_HOME:-$HOME/.cache}/eventledger/peer-target`,
/// outside the checkout (the peers folder is read-only, and the workspace's own target
/// directory must not hold a second dependency tree).
pub fn target_dir() -> anyhow::Result<PathBuf> {
    let cache = match std::env::var_os("XDG_CACHE_HOME").filter(|value| !value.is_empty()) {
        Some(cache) => PathBuf::from(cache),
        None => PathBuf::from(std::env::var_os("HOME").context("neither XDG_CACHE_HOME nor HOME is set")?)
            .join(".cache"),
    };
    Ok(cache.join("eventledger").join("peer-target"))
}

/// Builds the peer with `cargo build --release --locked` from `peer_dir` into
/// [`target_dir`] and returns its binary. Fails with cargo's own output when the folder
/// is missing or the build fails (the caller reports it and goes on without the peer).
pub async fn build(peer_dir: &Path) -> anyhow::Result<PathBuf> {
    let manifest = peer_dir.join(PEER_CRATE).join("Cargo.toml");
    if !manifest.exists() {
        bail!("the peer is not at {} (set PEER_DIR)", manifest.display());
    }
    let target = target_dir()?;
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
        .args(["build", "--release", "--locked", "--manifest-path"])
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", &target)
        .stdin(Stdio::null())
        .output()
        .await
        .context("running cargo to build the peer")?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
        bail!(
            "building the peer failed ({}):\n{}",
            output.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    let binary = target.join("release").join(PEER_CRATE);
    anyhow::ensure!(
        binary.exists(),
        "cargo built the peer but {} is missing",
        binary.display()
    );
    Ok(binary)
}

/// The running peer: its base URL and the database it created. Killed when dropped;
/// [`Peer::shut_down`] also drops its database.
pub struct Peer {
    pub url: String,
    database_url: String,
    child: Child,
}

/// The peer's own default pool size (`POOL_SIZE`), stated so the report can say it.
pub const PEER_POOL_SIZE: u32 = 16;

impl Peer {
    /// Starts `binary` against `eventledger_peer_<pid>` beside the database `server_url`
    /// names (the peer creates it and its tables at start) on a free loopback port, and
    /// waits until `/healthz` answers.
    pub async fn start(binary: &Path, server_url: &str) -> anyhow::Result<Self> {
        let base = server_url.rsplit_once('/').map_or(server_url, |(base, _)| base);
        let database_url = format!("{base}/eventledger_peer_{}", std::process::id());
        if Postgres::database_exists(&database_url).await? {
            Postgres::force_drop_database(&database_url).await?;
        }
        let port = free_port()?;
        let child = Command::new(binary)
            .env("DATABASE_URL", &database_url)
            .env("ADDR", format!("127.0.0.1:{port}"))
            .env("POOL_SIZE", PEER_POOL_SIZE.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut peer = Self {
            url: format!("http://127.0.0.1:{port}"),
            database_url,
            child,
        };
        let client = reqwest::Client::new();
        let started = Instant::now();
        loop {
            if let Some(status) = peer.child.try_wait()? {
                bail!("the peer exited at start: {status}");
            }
            let healthy = client
                .get(format!("{}/healthz", peer.url))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|response| response.status().is_success());
            if healthy {
                return Ok(peer);
            }
            if started.elapsed() > SERVICE_START_LIMIT {
                bail!("the peer did not answer /healthz within {SERVICE_START_LIMIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process id while it runs, for reading its CPU time.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Stops the peer and drops its database.
    pub async fn shut_down(mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        if Postgres::database_exists(&self.database_url).await? {
            Postgres::force_drop_database(&self.database_url).await?;
        }
        Ok(())
    }
}
