//! A private `nats-server` with JetStream for tests that stop, kill and restart NATS.
//!
//! The machine's shared server (127.0.0.1:4222) serves every other test at once, so a
//! test that takes NATS away runs its own: a free port, a store directory of its own
//! that survives restarts (so JetStream comes back with the streams and consumers it
//! had), and the process and the directory removed when the [`NatsServer`] is dropped.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::{Child, Command};
use uuid::Uuid;

use crate::harness::send_signal;

/// The server binary: `NATS_SERVER_BIN` if set, else where the Debian package puts it.
pub const DEFAULT_BINARY: &str = "/usr/sbin/nats-server";

/// How long the server may take from spawn to answering a JetStream request: a restart
/// recovers the store directory first, which on a loaded 2-core machine takes a moment.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a SIGTERM may take: the server flushes its stores and closes client
/// connections first.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// One private server, restartable on the same port with the same store.
pub struct NatsServer {
    port: u16,
    store_dir: PathBuf,
    /// A configuration file to run with instead of the command-line flags: a node of a
    /// [`crate::nats_cluster::NatsCluster`].
    config_file: Option<PathBuf>,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a server on a free port with an empty store directory and waits until
    /// JetStream answers.
    pub async fn start() -> anyhow::Result<Self> {
        // The port is released before the server binds it; another process could take it
        // in between, which on a test machine is rare enough to accept.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let store_dir = std::env::temp_dir().join(format!("eventledger-nats-{}", Uuid::now_v7().simple()));
        std::fs::create_dir_all(&store_dir)
            .with_context(|| format!("creating the store directory {}", store_dir.display()))?;
        let mut server = Self {
            port,
            store_dir,
            config_file: None,
            child: None,
        };
        server.spawn().await?;
        Ok(server)
    }

    /// A server that will run with `config_file` (which names `port` and a store under
    /// `store_dir`), not started yet: the nodes of a cluster are started together, since
    /// none answers JetStream requests before a majority runs.
    pub(crate) fn configured(port: u16, store_dir: PathBuf, config_file: PathBuf) -> Self {
        Self {
            port,
            store_dir,
            config_file: Some(config_file),
            child: None,
        }
    }

    /// The URL clients connect to; it stays the same across restarts.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Whether the server process is running (as far as this handle knows).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        self.spawn_unready()?;
        self.wait_ready().await
    }

    /// Starts the process without waiting for it to answer.
    pub(crate) fn spawn_unready(&mut self) -> anyhow::Result<()> {
        let binary = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| DEFAULT_BINARY.to_owned());
        let mut command = Command::new(&binary);
        match &self.config_file {
            Some(config_file) => command.arg("-c").arg(config_file),
            None => command
                .arg("-js")
                .arg("-sd")
                .arg(&self.store_dir)
                .arg("-a")
                .arg("127.0.0.1")
                .arg("-p")
                .arg(self.port.to_string()),
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // The server logs every client connecting; a test's output needs none of it.
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {binary}"))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until JetStream answers an account request on the server's port, or fails if
    /// the server exits first.
    pub(crate) async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "nats-server on port {} exited before it was ready: {status}",
                    self.port
                );
            }
            if self.jetstream_answers().await {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "nats-server on port {} was not ready within {READY_TIMEOUT:?}",
                    self.port
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn jetstream_answers(&self) -> bool {
        let connected = tokio::time::timeout(Duration::from_secs(2), async_nats::connect(self.url())).await;
        let Ok(Ok(client)) = connected else {
            return false;
        };
        // Any answer of the JetStream API means JetStream is up (its account report has
        // changed shape across versions, so it is not decoded).
        let answered =
            tokio::time::timeout(Duration::from_secs(2), client.request("$JS.API.INFO", "".into()))
                .await
                .is_ok_and(|answer| answer.is_ok());
        let _ = client.drain().await;
        answered
    }

    /// SIGSTOP: the server stays connected but answers nothing, as a hung or overloaded
    /// one would; clients' requests and publishes wait for answers that do not come.
    /// [`NatsServer::kill_hard`] or [`NatsServer::restart`] ends it.
    pub async fn freeze(&mut self) -> anyhow::Result<()> {
        let pid = self
            .child
            .as_ref()
            .and_then(Child::id)
            .context("nats-server is not running")?;
        send_signal(pid, "-STOP").await
    }

    /// SIGTERM, and waits for the exit: the server shuts down cleanly.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let Some(pid) = child.id() else {
            child.wait().await?;
            return Ok(());
        };
        send_signal(pid, "-TERM").await?;
        tokio::time::timeout(STOP_TIMEOUT, child.wait())
            .await
            .context("nats-server did not stop after SIGTERM")??;
        Ok(())
    }

    /// SIGKILL: the server gets no chance to flush anything, as in a crash.
    pub async fn kill_hard(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    /// Starts the server again on the same port with the same store directory (stopping
    /// it hard first if it runs) and waits until JetStream answers.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill_hard().await?;
        self.spawn().await
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            // `kill_on_drop` would too; this makes sure it is gone before its directory.
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.store_dir);
    }
}
