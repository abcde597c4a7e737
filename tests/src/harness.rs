//! Running the real eventledger binaries for end-to-end tests: each test gets a fresh
//! database, its own JetStream stream and subject prefix, and processes on free ports
//! that it can stop with SIGTERM, kill -9 and start again. Everything a test creates is
//! removed when its [`System`] is dropped or shut down.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use sqlx::Postgres;
use sqlx::migrate::MigrateDatabase;
use tokio::process::{Child, Command};
use uuid::Uuid;

/// The HS256 secret every process of a test system verifies tokens with; tests mint
/// their tokens with it ([`System::token`]).
pub const TEST_AUTH_SECRET: &str = "eventledger-end-to-end-test-secret-0123456789";

/// The master key for personal data that every process of a test system gets (base64 of 32 bytes).
pub const TEST_PII_MASTER_KEY: &str = "ZXZlbnRsZWRnZXItZW5kLXRvLWVuZC1waWkta2V5ISE=";

/// How long a process may take from spawn to answering `/readyz` with 200: migrations
/// and the first NATS connection included, on a loaded 2-core machine.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The three processes of the system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Binary {
    CommandApi,
    QueryApi,
    Projector,
}

impl Binary {
    pub const ALL: [Binary; 3] = [Binary::CommandApi, Binary::QueryApi, Binary::Projector];

    pub fn name(self) -> &'static str {
        match self {
            Self::CommandApi => "command-api",
            Self::QueryApi => "query-api",
            Self::Projector => "projector",
        }
    }

    fn address_variable(self) -> &'static str {
        match self {
            Self::CommandApi => "COMMAND_API_ADDR",
            Self::QueryApi => "QUERY_API_ADDR",
            Self::Projector => "PROJECTOR_ADDR",
        }
    }
}

/// Where cargo put the workspace's binaries: beside the running executable, which is
/// either a test (`target/<profile>/deps/<test>`) or a binary of this crate such as the
/// load generator (`target/<profile>/<binary>`).
pub fn binary_path(binary: Binary) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("the running executable has no directory")?;
    let profile_dir = if dir.file_name().is_some_and(|name| name == "deps") {
        dir.parent().context("target/<profile>/deps has no parent")?
    } else {
        dir
    };
    let path = profile_dir.join(binary.name());
    if !path.exists() {
        bail!(
            "{} is missing: build the binaries first (`cargo build --workspace --bins`, as scripts/test.sh does)",
            path.display()
        );
    }
    Ok(path)
}

/// Sends `signal` (`-TERM`, `-STOP`, ...) to `pid` with kill(1): the crate forbids the
/// unsafe code a libc call needs.
pub async fn send_signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let sent = Command::new("kill")
        .arg(signal)
        .arg(pid.to_string())
        .status()
        .await?;
    if !sent.success() {
        bail!("could not send {signal} to process {pid}");
    }
    Ok(())
}

fn free_address() -> anyhow::Result<String> {
    // The port is released before the process binds it; another process could take it
    // in between, which on a test machine is rare enough to accept.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.to_string())
}

/// One running binary, restartable with the same settings.
pub struct Process {
    pub binary: Binary,
    pub address: String,
    environment: HashMap<String, String>,
    /// Where the process's stderr (its log) goes; the test's own stderr when `None`.
    log_file: Option<PathBuf>,
    child: Option<Child>,
}

impl Process {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// The operating-system process id while it runs, for reading its CPU time.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        self.start()?;
        self.wait_ready().await
    }

    /// Spawns the process without waiting for it to be ready.
    fn start(&mut self) -> anyhow::Result<()> {
        // Logs go to the test's stderr so a failing test shows them, unless the test
        // reads them from a file (appended to, so a restart keeps the earlier lines).
        let stderr = match &self.log_file {
            Some(path) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("opening the log file {}", path.display()))?,
            ),
            None => Stdio::inherit(),
        };
        let child = Command::new(binary_path(self.binary)?)
            .envs(&self.environment)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {}", self.binary.name()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until `/readyz` answers 200, or fails if the process exits first.
    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("{} exited before it was ready: {status}", self.binary.name());
            }
            let ready = client
                .get(self.url("/readyz"))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|response| response.status().is_success());
            if ready {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{} was not ready within {READY_TIMEOUT:?}", self.binary.name());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no chance to clean up, as in a crash or an OOM kill.
    pub async fn kill_hard(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    /// SIGTERM, then waits for the exit; returns whether it exited successfully.
    pub async fn terminate(&mut self) -> anyhow::Result<bool> {
        let Some(mut child) = self.child.take() else {
            return Ok(true);
        };
        let Some(pid) = child.id() else {
            return Ok(child.wait().await?.success());
        };
        send_signal(pid, "-TERM")
            .await
            .with_context(|| format!("stopping {}", self.binary.name()))?;
        let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
            .await
            .with_context(|| format!("{} did not stop after SIGTERM", self.binary.name()))??;
        Ok(status.success())
    }

    /// SIGSTOP: the process stays alive, holding its connections and locks, but runs
    /// nothing, as a process stuck in a long pause or on a frozen machine.
    pub async fn freeze(&self) -> anyhow::Result<()> {
        self.signal("-STOP").await
    }

    /// SIGCONT after [`Process::freeze`].
    pub async fn thaw(&self) -> anyhow::Result<()> {
        self.signal("-CONT").await
    }

    async fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self
            .pid()
            .with_context(|| format!("{} is not running", self.binary.name()))?;
        send_signal(pid, signal)
            .await
            .with_context(|| format!("signalling {}", self.binary.name()))
    }

    /// Starts the process again with the same settings and waits until it is ready.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill_hard().await?;
        self.spawn().await
    }
}

/// A whole system for one test: a fresh database, a JetStream stream and subject prefix
/// of its own, and the three processes.
pub struct System {
    pub database_url: String,
    pub stream_name: String,
    pub subject_prefix: String,
    pub nats_url: String,
    processes: HashMap<Binary, Process>,
    /// Further instances of a binary beside the one in `processes`, by a name of the
    /// test's choosing ([`System::add_instance`]).
    instances: HashMap<String, Process>,
    /// Set once [`System::shut_down`] removed the database and the stream; until then,
    /// dropping the system (a test that panicked, a benchmark that failed) removes them.
    resources_removed: bool,
}

impl System {
    /// Starts every process in `binaries` against a fresh database and stream.
    pub async fn start(binaries: &[Binary]) -> anyhow::Result<Self> {
        let nats_url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
        Self::start_with_nats(binaries, &nats_url).await
    }

    /// [`System::start`] against the NATS server at `nats_url`: a private one
    /// ([`crate::nats_server::NatsServer`]) for a test that stops NATS.
    pub async fn start_with_nats(binaries: &[Binary], nats_url: &str) -> anyhow::Result<Self> {
        let server = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        Self::start_on(binaries, &server, nats_url).await
    }

    /// [`System::start`] with its database on the PostgreSQL server of `server_url` (a
    /// private one such as [`crate::pg_replica::PgReplicated`]'s primary, say) and NATS
    /// at `nats_url`. With no `binaries` nothing runs yet and the database does not
    /// exist: a benchmark creates and fills it, then [`System::add`]s the processes.
    pub async fn start_on(binaries: &[Binary], server_url: &str, nats_url: &str) -> anyhow::Result<Self> {
        let server = server_url;
        let base = server.rsplit_once('/').map_or(server, |(base, _)| base);
        let id = Uuid::now_v7().simple().to_string();
        let database_url = format!("{base}/eventledger_e2e_{id}");
        let mut system = Self {
            database_url,
            stream_name: format!("E2E_{id}"),
            subject_prefix: format!("e2e.{id}"),
            nats_url: nats_url.to_owned(),
            processes: HashMap::new(),
            instances: HashMap::new(),
            resources_removed: false,
        };
        for &binary in binaries {
            system.add(binary).await?;
        }
        Ok(system)
    }

    fn environment(&self) -> HashMap<String, String> {
        [
            ("DATABASE_URL", self.database_url.as_str()),
            ("NATS_URL", self.nats_url.as_str()),
            ("EVENTS_STREAM", self.stream_name.as_str()),
            ("EVENTS_SUBJECT_PREFIX", self.subject_prefix.as_str()),
            ("DATABASE_MAX_CONNECTIONS", "8"),
            ("AUTH_JWT_SECRET", TEST_AUTH_SECRET),
            ("PII_MASTER_KEY", TEST_PII_MASTER_KEY),
            ("RUST_LOG", "warn"),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect()
    }

    /// Starts one more process and waits until it is ready.
    pub async fn add(&mut self, binary: Binary) -> anyhow::Result<()> {
        self.add_configured(binary, &[], None).await
    }

    /// As [`System::add`], with `settings` added to (or replacing) the system's
    /// environment, and the process's log written to `log_file` instead of the test's
    /// stderr.
    pub async fn add_configured(
        &mut self,
        binary: Binary,
        settings: &[(&str, &str)],
        log_file: Option<PathBuf>,
    ) -> anyhow::Result<()> {
        let process = self.spawn_process(binary, settings, log_file).await?;
        self.processes.insert(binary, process);
        Ok(())
    }

    /// Starts further instances of `binary` all at once (so they race as a deployment's
    /// replicas do), each named for [`System::instance`] and with its own settings added
    /// to the system's environment, and waits until every one is ready.
    pub async fn add_instances(
        &mut self,
        binary: Binary,
        instances: &[(&str, &[(&str, &str)])],
    ) -> anyhow::Result<()> {
        let mut started = Vec::new();
        for (name, settings) in instances {
            let mut process = self.process_for(binary, settings, None)?;
            process.start()?;
            started.push((*name, process));
        }
        for (name, mut process) in started {
            process.wait_ready().await?;
            self.instances.insert(name.to_owned(), process);
        }
        Ok(())
    }

    async fn spawn_process(
        &self,
        binary: Binary,
        settings: &[(&str, &str)],
        log_file: Option<PathBuf>,
    ) -> anyhow::Result<Process> {
        let mut process = self.process_for(binary, settings, log_file)?;
        process.spawn().await?;
        Ok(process)
    }

    /// A process of `binary` on a free port with the system's environment and
    /// `settings`, not yet started.
    fn process_for(
        &self,
        binary: Binary,
        settings: &[(&str, &str)],
        log_file: Option<PathBuf>,
    ) -> anyhow::Result<Process> {
        let address = free_address()?;
        let mut environment = self.environment();
        environment.extend(
            settings
                .iter()
                .map(|(key, value)| ((*key).to_owned(), (*value).to_owned())),
        );
        environment.insert(binary.address_variable().to_owned(), address.clone());
        Ok(Process {
            binary,
            address,
            environment,
            log_file,
            child: None,
        })
    }

    /// The instance started as `name` by [`System::add_instance`].
    pub fn instance(&mut self, name: &str) -> anyhow::Result<&mut Process> {
        self.instances
            .get_mut(name)
            .with_context(|| format!("no instance {name} was started"))
    }

    /// Runs `binary` with `arguments` (a subcommand such as `projector rebuild --all`)
    /// against this system, up to `timeout`, and returns its output.
    pub async fn run_to_completion(
        &self,
        binary: Binary,
        arguments: &[&str],
        timeout: Duration,
    ) -> anyhow::Result<std::process::Output> {
        self.run_configured(binary, arguments, &[], timeout).await
    }

    /// [`System::run_to_completion`] with `settings` added to (or replacing) the
    /// system's environment: to see a process refuse a setting at start, say.
    pub async fn run_configured(
        &self,
        binary: Binary,
        arguments: &[&str],
        settings: &[(&str, &str)],
        timeout: Duration,
    ) -> anyhow::Result<std::process::Output> {
        let mut environment = self.environment();
        environment.extend(
            settings
                .iter()
                .map(|(key, value)| ((*key).to_owned(), (*value).to_owned())),
        );
        let output = Command::new(binary_path(binary)?)
            .args(arguments)
            .envs(environment)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        tokio::time::timeout(timeout, output)
            .await
            .with_context(|| {
                format!(
                    "{} {arguments:?} did not finish within {timeout:?}",
                    binary.name()
                )
            })?
            .with_context(|| format!("running {} {arguments:?}", binary.name()))
    }

    /// `binary` with `arguments` and this system's environment, to spawn: for a run the
    /// caller watches while it goes (its memory, say) rather than only awaits.
    pub fn command(&self, binary: Binary, arguments: &[&str]) -> anyhow::Result<Command> {
        let mut command = Command::new(binary_path(binary)?);
        command
            .args(arguments)
            .envs(self.environment())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        Ok(command)
    }

    /// A token for `subject` with `roles`, valid for an hour, that every process accepts.
    pub fn token(subject: &str, roles: &[service::auth::Role]) -> anyhow::Result<String> {
        Ok(service::auth::mint_hs256(
            TEST_AUTH_SECRET.as_bytes(),
            subject,
            roles,
            Duration::from_secs(3600),
        )?)
    }

    pub fn process(&mut self, binary: Binary) -> anyhow::Result<&mut Process> {
        self.processes
            .get_mut(&binary)
            .with_context(|| format!("{} was not started", binary.name()))
    }

    /// The process id of each running process, for reading their CPU time.
    pub fn pids(&self) -> Vec<(Binary, u32)> {
        self.processes
            .iter()
            .filter_map(|(binary, process)| Some((*binary, process.pid()?)))
            .collect()
    }

    pub fn url(&self, binary: Binary, path: &str) -> String {
        self.processes
            .get(&binary)
            .map_or_else(String::new, |process| process.url(path))
    }

    /// Stops every process with SIGTERM (returning whether all exited cleanly), then
    /// removes the database and the stream.
    pub async fn shut_down(mut self) -> anyhow::Result<bool> {
        let mut clean = true;
        for process in self.processes.values_mut().chain(self.instances.values_mut()) {
            clean &= process.terminate().await?;
        }
        remove_resources(&self.database_url, &self.nats_url, &self.stream_name).await?;
        self.resources_removed = true;
        Ok(clean)
    }
}

/// Drops the system's database and deletes its stream.
async fn remove_resources(database_url: &str, nats_url: &str, stream_name: &str) -> anyhow::Result<()> {
    if Postgres::database_exists(database_url).await? {
        Postgres::force_drop_database(database_url).await?;
    }
    let client = async_nats::connect(service::nats::server_addrs(nats_url)?).await?;
    // The stream exists only once the relay ran; a missing one is fine.
    let _ = async_nats::jetstream::new(client)
        .delete_stream(stream_name)
        .await;
    Ok(())
}

/// How long dropping a system that was not shut down waits to remove its resources.
const REMOVE_ON_DROP_LIMIT: Duration = Duration::from_secs(15);

impl Drop for System {
    /// A test that panicked (or a benchmark that failed) never reached
    /// [`System::shut_down`]: its processes are killed and its database and stream
    /// removed here, so that failed runs leave nothing behind either. Drop cannot await,
    /// so the removal runs on a runtime of its own on another thread.
    fn drop(&mut self) {
        if self.resources_removed {
            return;
        }
        // Killed first (`kill_on_drop`), so none is writing while its database goes.
        self.processes.clear();
        self.instances.clear();
        let (database_url, nats_url, stream_name) = (
            self.database_url.clone(),
            self.nats_url.clone(),
            self.stream_name.clone(),
        );
        let removal = std::thread::spawn(move || -> anyhow::Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                tokio::time::timeout(
                    REMOVE_ON_DROP_LIMIT,
                    remove_resources(&database_url, &nats_url, &stream_name),
                )
                .await?
            })
        });
        match removal.join() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                eprintln!("could not remove a dropped test system's database and stream: {error:#}")
            }
            Err(_) => eprintln!("removing a dropped test system's database and stream panicked"),
        }
    }
}
