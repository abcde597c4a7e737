//! The workload of the fault tests (`tests/crash.rs`, `tests/chaos.rs`): seeded random
//! commands (opens, deposits, withdrawals, transfers among a few dozen accounts, many of
//! them refused) sent by concurrent workers that retry, with the same Idempotency-Key,
//! every command that got no answer or a 5xx, as a careful client does; a record of what
//! the API acknowledged; and the checks that hold after any fault: nothing acknowledged
//! lost, nothing refused written, the JetStream stream holding every position once in
//! order, and read models equal to a fresh rebuild.
//!
//! Every random choice comes from one [`Seed`], printed at the start and again on
//! failure, so a failing run's choices can be repeated (the interleaving of concurrent
//! workers and processes still varies).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use async_nats::jetstream::{self, consumer::pull};
use event_store::relay::POSITION_HEADER;
use futures::StreamExt;
use serde_json::{Value, json};
use service::auth::Role;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::harness::{Binary, System};

/// Accounts the commands pick from: few enough that transfers collide on the same
/// accounts all the time, enough that many run side by side.
pub const ACCOUNTS: usize = 36;
/// Accounts opened (with a deposit) before the load; the rest are opened by the load
/// itself, and commands on them before that are refused with 404.
pub const OPENED_BEFORE_LOAD: usize = 30;
/// What each account opened before the load starts with.
pub const STARTING_DEPOSIT: i64 = 100_000;
/// Concurrent clients: enough to keep the command API's group commit and the relay
/// busy, few enough for a 2-core machine that also runs the processes.
pub const WORKERS: usize = 6;
/// Commands each worker sends at least, so there is load before the first crash.
pub const MIN_COMMANDS_PER_WORKER: usize = 20;
/// Commands each worker sends at most: a bound on a test whose chaos hangs.
pub const MAX_COMMANDS_PER_WORKER: usize = 20_000;
/// How long a command may stay unanswered while its process is down (restarts take a
/// few seconds on a loaded machine), retried with its idempotency key meanwhile.
pub const ANSWER_DEADLINE: Duration = Duration::from_secs(30);
/// Pause between retries of an unanswered command.
pub const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How long the relay and the projections may take to reach the head after the load:
/// a relay round backs off up to 5 s after NATS returns, a restarted projector catches up.
pub const CONVERGENCE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `projector rebuild --all` may take for the few thousand events of a test.
pub const REBUILD_TIMEOUT: Duration = Duration::from_secs(30);
/// The statuses of a refused command that writes nothing: validation, unknown account,
/// account already open or version conflict, business rule.
pub const REFUSALS: [u16; 4] = [400, 404, 409, 422];
/// The read-model tables with the columns that order them (their primary keys).
pub const READ_MODELS: [(&str, &str); 3] = [
    ("accounts", "account_id"),
    ("account_transactions", "account_id, position"),
    ("transfers", "transfer_id"),
];

/// SplitMix64: small, seedable and good enough to pick commands; no dependency.
#[derive(Debug, Clone)]
pub struct Random(u64);

impl Random {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next_u64() % (high - low + 1)
    }

    pub fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(self.between(low, high))
    }

    pub fn amount(&mut self, high: i64) -> i64 {
        self.between(1, high.unsigned_abs()) as i64
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next_u64() % items.len() as u64) as usize]
    }

    pub fn uuid(&mut self) -> Uuid {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        bytes[8..].copy_from_slice(&self.next_u64().to_le_bytes());
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }
}

/// The test's seed: from the environment variable the test names (`CRASH_SEED`,
/// `CHAOS_SEED`), else the clock. Says it again if the test fails.
pub struct Seed {
    value: u64,
    variable: &'static str,
}

impl Seed {
    pub fn choose(test: &str, variable: &'static str) -> Self {
        let seed = std::env::var(variable)
            .ok()
            .and_then(|seed| seed.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |elapsed| elapsed.as_nanos() as u64)
            });
        eprintln!("{test}: seed {seed} ({variable}={seed} repeats its choices)");
        Self {
            value: seed,
            variable,
        }
    }

    /// The seed itself, to print beside a run's figures.
    pub fn value(&self) -> u64 {
        self.value
    }

    /// An independent stream of choices for one purpose.
    pub fn random(&self, purpose: u64) -> Random {
        let mut random = Random(self.value ^ purpose.wrapping_mul(0xD1B5_4A32_D192_ED03));
        random.next_u64();
        random
    }
}

impl Drop for Seed {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "failed with seed {0}: rerun with {1}={0}",
                self.value, self.variable
            );
        }
    }
}

/// One command as the load sends it.
#[derive(Debug, Clone)]
pub enum Command {
    Open {
        account: Uuid,
    },
    Deposit {
        account: Uuid,
        amount: i64,
    },
    Withdraw {
        account: Uuid,
        amount: i64,
    },
    Transfer {
        id: Uuid,
        from: Uuid,
        to: Uuid,
        amount: i64,
    },
}

impl Command {
    /// A random command on `accounts`: many are refused (an account not open yet or
    /// already open, too little money, a transfer to the same account).
    pub fn random(random: &mut Random, accounts: &[Uuid]) -> Self {
        let account = *random.pick(accounts);
        match random.between(0, 99) {
            0..5 => Self::Open { account },
            5..35 => Self::Deposit {
                account,
                amount: random.amount(50_000),
            },
            35..60 => Self::Withdraw {
                account,
                amount: random.amount(60_000),
            },
            _ => Self::Transfer {
                id: random.uuid(),
                from: account,
                to: *random.pick(accounts),
                amount: random.amount(60_000),
            },
        }
    }

    pub fn request(&self) -> (String, Value) {
        match self {
            Self::Open { account } => (
                "/accounts".to_owned(),
                json!({
                    "account_id": account,
                    "owner": { "name": "Crash Test", "email": "crash@example.com" },
                    "currency": "EUR",
                }),
            ),
            Self::Deposit { account, amount } => (
                format!("/accounts/{account}/deposits"),
                json!({ "amount": amount, "reference": "load" }),
            ),
            Self::Withdraw { account, amount } => (
                format!("/accounts/{account}/withdrawals"),
                json!({ "amount": amount, "reference": "load" }),
            ),
            Self::Transfer { id, from, to, amount } => (
                "/transfers".to_owned(),
                json!({
                    "transfer_id": id,
                    "from_account_id": from,
                    "to_account_id": to,
                    "amount": amount,
                    "reference": "load",
                }),
            ),
        }
    }

    /// Events an accepted command appends.
    pub fn events(&self) -> i64 {
        match self {
            Self::Transfer { .. } => 3,
            _ => 1,
        }
    }

    /// What an accepted command does to balances.
    pub fn movements(&self) -> Vec<(Uuid, i64)> {
        match *self {
            Self::Open { account } => vec![(account, 0)],
            Self::Deposit { account, amount } => vec![(account, amount)],
            Self::Withdraw { account, amount } => vec![(account, -amount)],
            Self::Transfer { from, to, amount, .. } => vec![(from, -amount), (to, amount)],
        }
    }
}

/// An accepted command and what its answer said.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub command: Command,
    pub stream_id: String,
    pub stream_version: i64,
    pub position: i64,
}

/// What the command API answered: the accepted commands, and how many were refused with
/// which status.
#[derive(Debug, Default)]
pub struct Record {
    pub accepted: Vec<Accepted>,
    pub refused: BTreeMap<u16, usize>,
    /// Answers that came only after retries, because a process was down.
    pub retried: usize,
    /// Every attempt that got no answer or a 5xx, when and what: what a client saw of
    /// the faults.
    pub disruptions: Vec<Disruption>,
    /// 5xx answers that were not `application/problem+json` (RFC 9457): each one a fault
    /// of whatever answered.
    pub malformed: Vec<String>,
}

/// One attempt a client had to retry.
#[derive(Debug, Clone)]
pub struct Disruption {
    pub at: Instant,
    /// `connection: …` or the 5xx status with its problem type.
    pub what: String,
}

impl Record {
    pub fn note(&mut self, command: Command, status: u16, body: &Value) -> anyhow::Result<()> {
        match status {
            200 | 201 => {
                let stream_id = body["stream_id"].as_str().context("stream_id")?.to_owned();
                let stream_version = body["stream_version"].as_i64().context("stream_version")?;
                let position = body["position"].as_i64().context("position")?;
                self.accepted.push(Accepted {
                    command,
                    stream_id,
                    stream_version,
                    position,
                });
            }
            status if REFUSALS.contains(&status) => *self.refused.entry(status).or_default() += 1,
            status => bail!("{command:?} answered {status}: {body}"),
        }
        Ok(())
    }

    pub fn merge(&mut self, other: Record) {
        self.accepted.extend(other.accepted);
        for (status, count) in other.refused {
            *self.refused.entry(status).or_default() += count;
        }
        self.retried += other.retried;
        self.disruptions.extend(other.disruptions);
        self.malformed.extend(other.malformed);
    }

    pub fn refused_total(&self) -> usize {
        self.refused.values().sum()
    }
}

/// Posts commands as a teller, retrying with the same idempotency key until the command
/// API answers.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base_url: String,
}

/// Whether `response` is an RFC 9457 problem (`application/problem+json`), as every
/// error of eventledger's processes and of the load balancer in front of them must be.
pub fn is_problem(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/problem+json"))
}

/// The query API's `X-Projection-Position` of `response` (API.md: the position its read
/// models had applied when it answered), or -1 when the header is absent or not a number.
pub fn projection_position(response: &reqwest::Response) -> i64 {
    response
        .headers()
        .get("x-projection-position")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
        .unwrap_or(-1)
}

/// The `relay_active` gauge in a command API's `/metrics` exposition: 1 on the instance
/// whose relay holds the lock, 0 on a standby; `None` when the gauge is not exported.
pub fn relay_active(exposition: &str) -> Option<f64> {
    exposition
        .lines()
        .find(|line| line.starts_with("relay_active{"))
        .and_then(|line| line.split_whitespace().last())
        .and_then(|value| value.parse().ok())
}

/// Statuses a careful client retries with the same Idempotency-Key: the server (or the
/// load balancer in front of it) says it could not serve the request now.
const RETRIED_STATUSES: [u16; 3] = [502, 503, 504];

impl Client {
    /// A client of the one command API of `system`.
    pub fn new(system: &System) -> anyhow::Result<Self> {
        Self::to(system.url(Binary::CommandApi, ""))
    }

    /// A client of the command API at `base_url` (`http://host:port`): a load balancer's,
    /// say.
    pub fn to(base_url: String) -> anyhow::Result<Self> {
        let token = System::token("workload", &[Role::Teller])?;
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse()?);
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .default_headers(headers)
                .build()?,
            base_url,
        })
    }

    /// Sends `command` until it gets an answer that is not a 502, 503 or 504: a
    /// connection refused or cut (the process is down) and those statuses are retried
    /// with the same `Idempotency-Key`, so a command that committed before its answer
    /// was lost is answered again, not applied twice. Each retried attempt is recorded
    /// as a [`Disruption`]; a 500 fails at once (no fault excuses one).
    pub async fn send(&self, command: &Command, key: &str, record: &mut Record) -> anyhow::Result<()> {
        let (path, body) = command.request();
        let deadline = tokio::time::Instant::now() + ANSWER_DEADLINE;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let sent = self
                .http
                .post(format!("{}{path}", self.base_url))
                .header("Idempotency-Key", key)
                .json(&body)
                .send()
                .await;
            let answer = match sent {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let problem = is_problem(&response);
                    response.bytes().await.map(|bytes| (status, problem, bytes))
                }
                Err(error) => Err(error),
            };
            let retried = match answer {
                Ok((status, problem, bytes)) => {
                    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                    if status >= 500 && !problem {
                        record
                            .malformed
                            .push(format!("{status} without problem+json to {command:?}: {body}"));
                    }
                    if !RETRIED_STATUSES.contains(&status) {
                        if attempts > 1 {
                            record.retried += 1;
                        }
                        return record.note(command.clone(), status, &body);
                    }
                    format!(
                        "{status} {}",
                        body["type"].as_str().unwrap_or("(no problem type)")
                    )
                }
                Err(error) => format!("connection: {error}"),
            };
            record.disruptions.push(Disruption {
                at: Instant::now(),
                what: retried.clone(),
            });
            if tokio::time::Instant::now() >= deadline {
                bail!("{command:?} unanswered for {ANSWER_DEADLINE:?}; last: {retried}");
            }
            tracing::debug!(retried, key, "no answer; retrying");
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
}

/// The accounts of a test, and the record of opening most of them with a deposit.
pub async fn open_accounts(client: &Client, seed: &Seed) -> anyhow::Result<(Arc<Vec<Uuid>>, Record)> {
    let mut random = seed.random(1);
    let accounts: Vec<Uuid> = (0..ACCOUNTS).map(|_| random.uuid()).collect();
    let mut record = Record::default();
    for (index, &account) in accounts.iter().take(OPENED_BEFORE_LOAD).enumerate() {
        client
            .send(&Command::Open { account }, &format!("open-{index}"), &mut record)
            .await?;
        let deposit = Command::Deposit {
            account,
            amount: STARTING_DEPOSIT,
        };
        client
            .send(&deposit, &format!("deposit-{index}"), &mut record)
            .await?;
    }
    ensure!(
        record.accepted.len() == 2 * OPENED_BEFORE_LOAD,
        "setting up the accounts: {record:?}"
    );
    Ok((Arc::new(accounts), record))
}

/// Workers sending random commands until told to stop.
pub struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<anyhow::Result<Record>>>,
}

impl Load {
    /// [`WORKERS`] workers, each sending its next command as soon as the last is answered.
    pub fn start(client: &Client, accounts: &Arc<Vec<Uuid>>, seed: &Seed) -> Self {
        Self::paced(client, accounts, seed, Duration::ZERO)
    }

    /// [`WORKERS`] workers, each starting a command every `pace` (or as soon as the last
    /// is answered, if that took longer): a steady offered load that a fault slows down
    /// without the load piling up behind it.
    pub fn paced(client: &Client, accounts: &Arc<Vec<Uuid>>, seed: &Seed, pace: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..WORKERS)
            .map(|worker| {
                let client = client.clone();
                let accounts = Arc::clone(accounts);
                let stop = Arc::clone(&stop);
                let mut random = seed.random(100 + worker as u64);
                tokio::spawn(async move {
                    let mut record = Record::default();
                    for sent in 0..MAX_COMMANDS_PER_WORKER {
                        if sent >= MIN_COMMANDS_PER_WORKER && stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let next = tokio::time::Instant::now() + pace;
                        let command = Command::random(&mut random, &accounts);
                        client
                            .send(&command, &format!("load-{worker}-{sent}"), &mut record)
                            .await?;
                        tokio::time::sleep_until(next).await;
                    }
                    Ok(record)
                })
            })
            .collect();
        Self { stop, workers }
    }

    /// Stops the workers after their current command and gathers what they recorded.
    pub async fn finish(self, mut record: Record) -> anyhow::Result<Record> {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            record.merge(worker.await??);
        }
        eprintln!(
            "{} commands accepted, {} refused {:?}, {} answered only after retries ({} retried attempts)",
            record.accepted.len(),
            record.refused_total(),
            record.refused,
            record.retried,
            record.disruptions.len()
        );
        Ok(record)
    }
}

pub async fn connect(system: &System) -> anyhow::Result<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(2)
        .connect(&system.database_url)
        .await?)
}

pub async fn head(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT position FROM event_store_head")
        .fetch_one(pool)
        .await?)
}

/// Polls `reached` until it holds, failing after [`CONVERGENCE_TIMEOUT`] with what it
/// last said.
pub async fn wait_for<F, Fut>(what: &str, mut reached: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Result<(), String>>>,
{
    let deadline = tokio::time::Instant::now() + CONVERGENCE_TIMEOUT;
    loop {
        let last = reached().await?;
        match last {
            Ok(()) => return Ok(()),
            Err(state) if tokio::time::Instant::now() > deadline => {
                bail!("{what} not reached within {CONVERGENCE_TIMEOUT:?}: {state}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Waits until the relay has had JetStream acknowledge `position`.
pub async fn wait_until_relayed(pool: &PgPool, position: i64) -> anyhow::Result<()> {
    wait_for("the relay's checkpoint", || async move {
        let relayed: Option<i64> = sqlx::query_scalar("SELECT max(position) FROM relay_checkpoints")
            .fetch_one(pool)
            .await?;
        Ok(if relayed >= Some(position) {
            Ok(())
        } else {
            Err(format!("relayed {relayed:?}, waiting for {position}"))
        })
    })
    .await
}

/// Waits until every projection's checkpoint is at `head` and live; a stopped
/// projection fails at once.
pub async fn wait_until_projected(pool: &PgPool, head: i64) -> anyhow::Result<()> {
    wait_for("every projection at the head", || async move {
        let rows: Vec<(String, i64, String, Option<String>)> = sqlx::query_as(
            "SELECT projection, position, status, error FROM read_model.projection_checkpoints",
        )
        .fetch_all(pool)
        .await?;
        if let Some((name, _, _, error)) = rows.iter().find(|row| row.2 == "stopped") {
            bail!("projection {name} stopped: {error:?}");
        }
        let done = rows.len() == 3
            && rows
                .iter()
                .all(|(_, position, status, _)| *position == head && status == "live");
        Ok(if done {
            Ok(())
        } else {
            Err(format!("head {head}, checkpoints {rows:?}"))
        })
    })
    .await
}

/// No acknowledged command is lost and no refused one wrote anything: the store holds
/// exactly the events the accepted answers account for, each answer's position holds an
/// event of the stream and version it named, and the read models' balances are the sums
/// of the accepted movements.
pub async fn check_acknowledged(pool: &PgPool, record: &Record, head: i64) -> anyhow::Result<()> {
    ensure!(
        record.refused_total() > 0,
        "the load should include refused commands"
    );
    ensure!(
        record.malformed.is_empty(),
        "5xx answers without problem+json: {:#?}",
        record.malformed
    );
    let expected_events: i64 = record
        .accepted
        .iter()
        .map(|accepted| accepted.command.events())
        .sum();
    assert_eq!(
        head, expected_events,
        "the event store's head against the events of the accepted commands"
    );
    let events: HashMap<i64, (String, i64)> =
        sqlx::query_as::<_, (i64, String, i64)>("SELECT position, stream_id, stream_version FROM events")
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|(position, stream_id, version)| (position, (stream_id, version)))
            .collect();
    assert_eq!(events.len() as i64, head, "one event per position up to the head");
    for accepted in &record.accepted {
        assert_eq!(
            events.get(&accepted.position),
            Some(&(accepted.stream_id.clone(), accepted.stream_version)),
            "the event at the position {accepted:?} was answered with"
        );
    }

    let mut expected: HashMap<Uuid, i64> = HashMap::new();
    let mut legs = 0;
    for accepted in &record.accepted {
        for (account, amount) in accepted.command.movements() {
            *expected.entry(account).or_default() += amount;
            legs += usize::from(amount != 0);
        }
    }
    let balances: HashMap<Uuid, i64> = sqlx::query_as("SELECT account_id, balance FROM read_model.accounts")
        .fetch_all(pool)
        .await?
        .into_iter()
        .collect();
    assert_eq!(balances, expected, "balances against the accepted movements");
    let statement_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM read_model.account_transactions")
        .fetch_one(pool)
        .await?;
    assert_eq!(
        statement_rows, legs as i64,
        "one statement row per accepted movement"
    );
    Ok(())
}

/// The JetStream stream holds every event exactly once and in order: sequence N carries
/// position N for every N up to the head, with the event's id as its `Nats-Msg-Id`; and
/// the projector follows this stream (its durable consumers are on it).
pub async fn check_stream(system: &System, pool: &PgPool, head: i64) -> anyhow::Result<()> {
    wait_until_relayed(pool, head).await?;
    let event_ids = event_ids(pool).await?;

    let client = async_nats::connect(service::nats::server_addrs(&system.nats_url)?).await?;
    let jetstream = jetstream::new(client);
    check_stream_copy(&jetstream, &system.stream_name, head, &event_ids).await
}

/// The position and event id of every stored event: what [`check_stream_copy`] compares
/// the stream with.
pub async fn event_ids(pool: &PgPool) -> anyhow::Result<HashMap<i64, Uuid>> {
    Ok(sqlx::query_as("SELECT position, event_id FROM events")
        .fetch_all(pool)
        .await?
        .into_iter()
        .collect())
}

/// [`check_stream`] of the copy the stream's current leader holds (in a NATS cluster,
/// reads are served by the leader).
pub async fn check_stream_copy(
    jetstream: &jetstream::Context,
    stream_name: &str,
    head: i64,
    event_ids: &HashMap<i64, Uuid>,
) -> anyhow::Result<()> {
    let mut stream = jetstream.get_stream(stream_name).await?;
    let state = stream.info().await?.state.clone();
    assert_eq!(
        (state.messages, state.first_sequence, state.last_sequence),
        (head as u64, 1, head as u64),
        "the stream holds positions 1..={head} and nothing else"
    );
    for projection in ["accounts", "account_transactions", "transfers"] {
        stream
            .consumer_info(format!("projector_{projection}"))
            .await
            .with_context(|| format!("the projector's consumer of {projection} on the system's stream"))?;
    }

    let reader = stream
        .create_consumer(pull::Config {
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ack_policy: jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await?;
    let mut messages = reader.messages().await?;
    let mut seen = HashSet::new();
    for sequence in 1..=head {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .with_context(|| format!("reading sequence {sequence} of the stream"))?
            .context("the stream's messages ended")??;
        let stored_at = message.info().map_err(anyhow::Error::msg)?.stream_sequence;
        let headers = message.headers.as_ref().context("headers")?;
        let position: i64 = headers
            .get(POSITION_HEADER)
            .context("position header")?
            .as_str()
            .parse()?;
        let message_id = Uuid::parse_str(
            headers
                .get(async_nats::header::NATS_MESSAGE_ID)
                .context("Nats-Msg-Id")?
                .as_str(),
        )?;
        assert_eq!(
            (stored_at, position),
            (sequence as u64, sequence),
            "sequence {sequence}"
        );
        assert_eq!(
            Some(&message_id),
            event_ids.get(&position),
            "Nats-Msg-Id at {position}"
        );
        assert!(seen.insert(message_id), "{message_id} stored twice");
    }
    Ok(())
}

/// The read-model tables' rows, in key order, each as its JSON text (every column), and
/// the tables' identities.
pub async fn snapshot(pool: &PgPool) -> anyhow::Result<Vec<(u32, Vec<String>)>> {
    let mut tables = Vec::new();
    for (table, key) in READ_MODELS {
        let identity: i64 = sqlx::query_scalar("SELECT ($1::text)::regclass::oid::int8")
            .bind(format!("read_model.{table}"))
            .fetch_one(pool)
            .await?;
        let rows: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT row_to_json(t)::text FROM read_model.{table} t ORDER BY {key}"
        ))
        .fetch_all(pool)
        .await?;
        tables.push((u32::try_from(identity)?, rows));
    }
    Ok(tables)
}

/// The tables the live projector built equal, row by row and column by column, what a
/// fresh `projector rebuild --all` builds from the event store.
pub async fn check_rebuild_equals_live(system: &System, pool: &PgPool) -> anyhow::Result<()> {
    let live = snapshot(pool).await?;
    let output = system
        .run_to_completion(Binary::Projector, &["rebuild", "--all"], REBUILD_TIMEOUT)
        .await?;
    ensure!(
        output.status.success(),
        "projector rebuild --all: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let rebuilt = snapshot(pool).await?;
    for (((table, _), (live_table, live_rows)), (rebuilt_table, rebuilt_rows)) in
        READ_MODELS.iter().zip(&live).zip(&rebuilt)
    {
        assert_ne!(
            live_table, rebuilt_table,
            "the rebuild swapped in a fresh {table} table"
        );
        assert!(!live_rows.is_empty(), "{table} is empty");
        if let Some(index) = (0..live_rows.len().max(rebuilt_rows.len()))
            .find(|&index| live_rows.get(index) != rebuilt_rows.get(index))
        {
            panic!(
                "{table}: live {} rows, rebuilt {}; first difference at row {index}:\n live:    {:?}\n rebuilt: {:?}",
                live_rows.len(),
                rebuilt_rows.len(),
                live_rows.get(index),
                rebuilt_rows.get(index)
            );
        }
    }
    Ok(())
}

/// Everything a test shows once its load is over.
pub async fn check_everything(system: &System, record: &Record) -> anyhow::Result<()> {
    let pool = connect(system).await?;
    let head = head(&pool).await?;
    wait_until_projected(&pool, head).await?;
    check_acknowledged(&pool, record, head).await?;
    check_stream(system, &pool, head).await?;
    check_rebuild_equals_live(system, &pool).await?;
    pool.close().await;
    Ok(())
}

/// The JetStream stream's state (messages, first and last sequence) and, in a cluster,
/// how many of its replicas other than the leader are current.
pub async fn stream_state(system: &System) -> anyhow::Result<(u64, u64, u64, Option<usize>)> {
    let client = async_nats::connect(service::nats::server_addrs(&system.nats_url)?).await?;
    let mut stream = jetstream::new(client).get_stream(&system.stream_name).await?;
    let info = stream.info().await?;
    let current = info
        .cluster
        .as_ref()
        .map(|cluster| cluster.replicas.iter().filter(|replica| replica.current).count());
    Ok((
        info.state.messages,
        info.state.first_sequence,
        info.state.last_sequence,
        current,
    ))
}

/// Waits until the system's stream, of `replicas` copies, has a leader and every other
/// copy is current (after a node came back, or a leader stepped down).
pub async fn wait_replicas_current(system: &System, replicas: usize) -> anyhow::Result<()> {
    wait_for("a stream leader with every other copy current", || async {
        let (_, _, _, current) = stream_state(system).await?;
        Ok(if current == Some(replicas - 1) {
            Ok(())
        } else {
            Err(format!("current replicas besides the leader: {current:?}"))
        })
    })
    .await
}
