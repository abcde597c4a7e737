//! nginx as the cluster's load balancer for tests: the configuration `scripts/cluster.sh`
//! runs (`scripts/nginx-conf.sh` writes it for both), in a temporary directory, on two
//! free ports: one in front of the command APIs, one in front of the query APIs.
//!
//! The nginx binary is `$NGINX` (scripts/ci-tools.sh sets it), else the one on the
//! `PATH` or in `/usr/sbin`, else the one scripts/ci-tools.sh unpacks under
//! `.local/ci-tools/`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::{Child, Command};
use uuid::Uuid;

/// How long nginx may take to answer on both ports.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A running nginx; it stops and its directory goes when this is dropped.
pub struct Nginx {
    dir: PathBuf,
    child: Child,
    /// `http://127.0.0.1:<port>` in front of the command APIs.
    pub commands_url: String,
    /// `http://127.0.0.1:<port>` in front of the query APIs.
    pub queries_url: String,
}

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The nginx to run, or why there is none.
fn nginx_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("NGINX").map(PathBuf::from)
        && path.is_file()
    {
        return Ok(path);
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("nginx"));
    let unpacked = repository().join(".local/ci-tools/root/usr/sbin/nginx");
    on_path
        .chain([unpacked])
        .find(|path| path.is_file())
        .context("nginx is not installed: scripts/ci-tools.sh (sourced by scripts/test.sh) unpacks Debian's")
}

fn free_port() -> anyhow::Result<u16> {
    // Released before nginx binds it; another process could take it in between, which
    // on a test machine is rare enough to accept.
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Nginx {
    /// Starts nginx balancing over `command_apis` and `query_apis` (`host:port` each)
    /// and waits until it accepts connections on both ports.
    pub async fn start(command_apis: &[String], query_apis: &[String]) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("eventledger-nginx-{}", Uuid::now_v7().simple()));
        let (commands_port, queries_port) = (free_port()?, free_port()?);
        let written = Command::new("bash")
            .arg(repository().join("scripts/nginx-conf.sh"))
            .arg(&dir)
            .arg(commands_port.to_string())
            .arg(queries_port.to_string())
            .arg(command_apis.join(" "))
            .arg(query_apis.join(" "))
            .status()
            .await
            .context("running scripts/nginx-conf.sh")?;
        if !written.success() {
            bail!("scripts/nginx-conf.sh failed: {written}");
        }
        let child = Command::new(nginx_binary()?)
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("spawning nginx")?;
        let mut nginx = Self {
            dir,
            child,
            commands_url: format!("http://127.0.0.1:{commands_port}"),
            queries_url: format!("http://127.0.0.1:{queries_port}"),
        };
        nginx.wait_ready(&[commands_port, queries_port]).await?;
        Ok(nginx)
    }

    async fn wait_ready(&mut self, ports: &[u16]) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        for port in ports {
            while tokio::net::TcpStream::connect(("127.0.0.1", *port))
                .await
                .is_err()
            {
                if let Some(status) = self.child.try_wait()? {
                    bail!("nginx exited: {status}; see {}", self.error_log().display());
                }
                if tokio::time::Instant::now() > deadline {
                    bail!("nginx did not listen on {port} within {READY_TIMEOUT:?}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// nginx's error log: which upstreams failed and when.
    pub fn error_log(&self) -> PathBuf {
        self.dir.join("error.log")
    }

    /// The directory nginx runs in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM, so the master stops its worker too: a worker outlives a master that
        // was killed outright, and keeps the ports.
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
            for _ in 0..100 {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
