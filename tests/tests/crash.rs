//! Crash safety with the real processes under load: while workers send a stream of
//! commands (opens, deposits, withdrawals, transfers among a few dozen accounts, many of
//! them refused), the projector is killed with SIGKILL and restarted, NATS is stopped and
//! killed and started again, or the command API (and the relay inside it) is killed and
//! restarted. Afterwards:
//!
//! - no acknowledged command is lost and no refused one wrote anything: the event store
//!   holds exactly the events the accepted answers account for, each at the position its
//!   answer named;
//! - the JetStream stream holds every event exactly once, in order: sequence N carries
//!   position N for N in 1..=head, with the event's id as `Nats-Msg-Id`;
//! - every projection reaches the head, its balances are the sums of the accepted
//!   movements, and its tables equal, row by row, what a fresh `projector rebuild --all`
//!   makes of the event store.
//!
//! Every random choice (commands, amounts, when to kill) comes from one seed, printed at
//! the start and again on failure; `CRASH_SEED=<seed>` runs the same choices again (the
//! interleaving of concurrent workers and processes still varies). Needs the binaries
//! built (`cargo build --workspace --bins`, as scripts/test.sh does) and nats-server for
//! the private NATS of the NATS test.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use async_nats::jetstream::{self, consumer::pull};
use event_store::relay::POSITION_HEADER;
use futures::StreamExt;
use serde_json::{Value, json};
use service::auth::Role;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tests::harness::{Binary, System};
use tests::nats_cluster::NatsCluster;
use tests::nats_server::NatsServer;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// Accounts the commands pick from: few enough that transfers collide on the same
/// accounts all the time, enough that many run side by side.
const ACCOUNTS: usize = 36;
/// Accounts opened (with a deposit) before the load; the rest are opened by the load
/// itself, and commands on them before that are refused with 404.
const OPENED_BEFORE_LOAD: usize = 30;
/// What each account opened before the load starts with.
const STARTING_DEPOSIT: i64 = 100_000;
/// Concurrent clients: enough to keep the command API's group commit and the relay
/// busy, few enough for a 2-core machine that also runs the processes.
const WORKERS: usize = 6;
/// Commands each worker sends at least, so there is load before the first crash.
const MIN_COMMANDS_PER_WORKER: usize = 20;
/// Commands each worker sends at most: a bound on a test whose chaos hangs.
const MAX_COMMANDS_PER_WORKER: usize = 20_000;
/// How long a command may stay unanswered while its process is down (restarts take a
/// few seconds on a loaded machine), retried with its idempotency key meanwhile.
const ANSWER_DEADLINE: Duration = Duration::from_secs(30);
/// Pause between retries of an unanswered command.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How long the relay and the projections may take to reach the head after the load:
/// a relay round backs off up to 5 s after NATS returns, a restarted projector catches up.
const CONVERGENCE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `projector rebuild --all` may take for the few thousand events of a test.
const REBUILD_TIMEOUT: Duration = Duration::from_secs(30);
/// The statuses of a refused command that writes nothing: validation, unknown account,
/// account already open or version conflict, business rule.
const REFUSALS: [u16; 4] = [400, 404, 409, 422];
/// The read-model tables with the columns that order them (their primary keys).
const READ_MODELS: [(&str, &str); 3] = [
    ("accounts", "account_id"),
    ("account_transactions", "account_id, position"),
    ("transfers", "transfer_id"),
];

/// One test at a time: each runs two or three processes and a load on a 2-core machine,
/// and side by side they would measure each other's contention, not recovery.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// SplitMix64: small, seedable and good enough to pick commands; no dependency.
#[derive(Debug, Clone)]
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `low..=high`.
    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }

    fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(self.between(low, high))
    }

    fn amount(&mut self, high: i64) -> i64 {
        self.between(1, high.unsigned_abs()) as i64
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }

    fn uuid(&mut self) -> Uuid {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.next().to_le_bytes());
        bytes[8..].copy_from_slice(&self.next().to_le_bytes());
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }
}

/// The test's seed: from `CRASH_SEED`, else the clock. Says it again if the test fails.
struct Seed(u64);

impl Seed {
    fn choose(test: &str) -> Self {
        let seed = std::env::var("CRASH_SEED")
            .ok()
            .and_then(|seed| seed.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |elapsed| elapsed.as_nanos() as u64)
            });
        eprintln!("{test}: seed {seed} (CRASH_SEED={seed} repeats its choices)");
        Self(seed)
    }

    /// An independent stream of choices for one purpose.
    fn random(&self, purpose: u64) -> Random {
        let mut random = Random(self.0 ^ purpose.wrapping_mul(0xD1B5_4A32_D192_ED03));
        random.next();
        random
    }
}

impl Drop for Seed {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("failed with seed {0}: rerun with CRASH_SEED={0}", self.0);
        }
    }
}

/// One command as the load sends it.
#[derive(Debug, Clone)]
enum Command {
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
    fn random(random: &mut Random, accounts: &[Uuid]) -> Self {
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

    fn request(&self) -> (String, Value) {
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
    fn events(&self) -> i64 {
        match self {
            Self::Transfer { .. } => 3,
            _ => 1,
        }
    }

    /// What an accepted command does to balances.
    fn movements(&self) -> Vec<(Uuid, i64)> {
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
struct Accepted {
    command: Command,
    stream_id: String,
    stream_version: i64,
    position: i64,
}

/// What the command API answered: the accepted commands, and how many were refused with
/// which status.
#[derive(Debug, Default)]
struct Record {
    accepted: Vec<Accepted>,
    refused: BTreeMap<u16, usize>,
    /// Answers that came only after retries, because the process was down.
    retried: usize,
}

impl Record {
    fn note(&mut self, command: Command, status: u16, body: &Value) -> anyhow::Result<()> {
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

    fn merge(&mut self, other: Record) {
        self.accepted.extend(other.accepted);
        for (status, count) in other.refused {
            *self.refused.entry(status).or_default() += count;
        }
        self.retried += other.retried;
    }

    fn refused_total(&self) -> usize {
        self.refused.values().sum()
    }
}

/// Posts commands as a teller, retrying with the same idempotency key until the command
/// API answers.
#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    base_url: String,
}

impl Client {
    fn new(system: &System) -> anyhow::Result<Self> {
        let token = System::token("crash-test", &[Role::Teller])?;
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse()?);
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .default_headers(headers)
                .build()?,
            base_url: system.url(Binary::CommandApi, ""),
        })
    }

    /// Sends `command` until it gets an answer: a connection refused or cut (the process
    /// is down) is retried with the same `Idempotency-Key`, so a command that committed
    /// before its answer was lost is answered again, not applied twice.
    async fn send(&self, command: &Command, key: &str, record: &mut Record) -> anyhow::Result<()> {
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
                    response.bytes().await.map(|bytes| (status, bytes))
                }
                Err(error) => Err(error),
            };
            match answer {
                Ok((status, bytes)) => {
                    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                    if attempts > 1 {
                        record.retried += 1;
                    }
                    return record.note(command.clone(), status, &body);
                }
                Err(error) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(%error, key, "no answer; retrying");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(error) => {
                    return Err(error)
                        .with_context(|| format!("{command:?} unanswered for {ANSWER_DEADLINE:?}"));
                }
            }
        }
    }
}

/// The accounts of a test, and the record of opening most of them with a deposit.
async fn open_accounts(client: &Client, seed: &Seed) -> anyhow::Result<(Arc<Vec<Uuid>>, Record)> {
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
struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<anyhow::Result<Record>>>,
}

impl Load {
    fn start(client: &Client, accounts: &Arc<Vec<Uuid>>, seed: &Seed) -> Self {
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
                        let command = Command::random(&mut random, &accounts);
                        client
                            .send(&command, &format!("load-{worker}-{sent}"), &mut record)
                            .await?;
                    }
                    Ok(record)
                })
            })
            .collect();
        Self { stop, workers }
    }

    /// Stops the workers after their current command and gathers what they recorded.
    async fn finish(self, mut record: Record) -> anyhow::Result<Record> {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            record.merge(worker.await??);
        }
        eprintln!(
            "{} commands accepted, {} refused {:?}, {} answered only after retries",
            record.accepted.len(),
            record.refused_total(),
            record.refused,
            record.retried
        );
        Ok(record)
    }
}

async fn connect(system: &System) -> anyhow::Result<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(2)
        .connect(&system.database_url)
        .await?)
}

async fn head(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT position FROM event_store_head")
        .fetch_one(pool)
        .await?)
}

/// Polls `reached` until it holds, failing after [`CONVERGENCE_TIMEOUT`] with what it
/// last said.
async fn wait_for<F, Fut>(what: &str, mut reached: F) -> anyhow::Result<()>
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
async fn wait_until_relayed(pool: &PgPool, position: i64) -> anyhow::Result<()> {
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
async fn wait_until_projected(pool: &PgPool, head: i64) -> anyhow::Result<()> {
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
async fn check_acknowledged(pool: &PgPool, record: &Record, head: i64) -> anyhow::Result<()> {
    ensure!(
        record.refused_total() > 0,
        "the load should include refused commands"
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
async fn check_stream(system: &System, pool: &PgPool, head: i64) -> anyhow::Result<()> {
    wait_until_relayed(pool, head).await?;
    let event_ids: HashMap<i64, Uuid> = sqlx::query_as("SELECT position, event_id FROM events")
        .fetch_all(pool)
        .await?
        .into_iter()
        .collect();

    let client = async_nats::connect(service::nats::server_addrs(&system.nats_url)?).await?;
    let jetstream = jetstream::new(client);
    let mut stream = jetstream.get_stream(&system.stream_name).await?;
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
async fn snapshot(pool: &PgPool) -> anyhow::Result<Vec<(u32, Vec<String>)>> {
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
async fn check_rebuild_equals_live(system: &System, pool: &PgPool) -> anyhow::Result<()> {
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
async fn check_everything(system: &System, record: &Record) -> anyhow::Result<()> {
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
async fn stream_state(system: &System) -> anyhow::Result<(u64, u64, u64, Option<usize>)> {
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

#[tokio::test]
async fn killing_the_projector_under_load_loses_nothing_and_matches_a_rebuild() {
    let _one = ONE_AT_A_TIME.lock().await;
    let seed = Seed::choose("projector kill -9");
    let mut system = System::start(&[Binary::CommandApi, Binary::Projector])
        .await
        .expect("system");
    let client = Client::new(&system).expect("client");
    let (accounts, setup) = open_accounts(&client, &seed).await.expect("accounts");
    let mut chaos = seed.random(2);

    let load = Load::start(&client, &accounts, &seed);
    for _ in 0..4 {
        tokio::time::sleep(chaos.millis(300, 1_500)).await;
        let projector = system.process(Binary::Projector).expect("projector");
        projector.kill_hard().await.expect("kill -9");
        tokio::time::sleep(chaos.millis(0, 500)).await;
        projector.restart().await.expect("restart");
    }
    tokio::time::sleep(chaos.millis(200, 1_000)).await;
    let record = load.finish(setup).await.expect("load");

    check_everything(&system, &record)
        .await
        .expect("after the crashes");
    system.shut_down().await.expect("shut down");
}

#[tokio::test]
async fn stopping_and_killing_nats_under_load_loses_and_duplicates_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let seed = Seed::choose("NATS stop and kill -9");
    let mut nats = NatsServer::start().await.expect("private nats-server");
    let system = System::start_with_nats(&[Binary::CommandApi, Binary::Projector], &nats.url())
        .await
        .expect("system");
    let client = Client::new(&system).expect("client");
    let (accounts, setup) = open_accounts(&client, &seed).await.expect("accounts");
    let mut chaos = seed.random(2);

    let load = Load::start(&client, &accounts, &seed);
    // A clean stop: the relay sees the connection go.
    tokio::time::sleep(chaos.millis(500, 1_500)).await;
    nats.stop().await.expect("SIGTERM nats-server");
    tokio::time::sleep(chaos.millis(2_000, 4_000)).await;
    nats.restart().await.expect("nats-server again");
    // A hang, then a crash: while the server is frozen the connection looks alive, so
    // the relay, publishing again and kept busy by the load, sends publishes whose acks
    // never come; then the server dies with them in flight and whatever it had not
    // written out.
    let pool = connect(&system).await.expect("database");
    let head_at_restart = head(&pool).await.expect("head");
    wait_until_relayed(&pool, head_at_restart)
        .await
        .expect("the relay resumes");
    tokio::time::sleep(chaos.millis(100, 1_000)).await;
    nats.freeze().await.expect("SIGSTOP nats-server");
    tokio::time::sleep(chaos.millis(1_000, 2_000)).await;
    nats.kill_hard().await.expect("SIGKILL nats-server");
    tokio::time::sleep(chaos.millis(1_000, 3_000)).await;
    nats.restart().await.expect("nats-server again");
    tokio::time::sleep(chaos.millis(500, 1_500)).await;
    let record = load.finish(setup).await.expect("load");

    check_everything(&system, &record)
        .await
        .expect("after the outages");
    system.shut_down().await.expect("shut down");
    drop(nats);
}

#[tokio::test]
async fn killing_the_command_api_and_its_relay_under_load_loses_and_duplicates_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let seed = Seed::choose("command-api kill -9");
    let mut system = System::start(&[Binary::CommandApi, Binary::Projector])
        .await
        .expect("system");
    let client = Client::new(&system).expect("client");
    let (accounts, setup) = open_accounts(&client, &seed).await.expect("accounts");
    let mut chaos = seed.random(2);

    let load = Load::start(&client, &accounts, &seed);
    for _ in 0..3 {
        tokio::time::sleep(chaos.millis(400, 1_500)).await;
        let command_api = system.process(Binary::CommandApi).expect("command-api");
        command_api.kill_hard().await.expect("kill -9");
        tokio::time::sleep(chaos.millis(0, 300)).await;
        command_api.restart().await.expect("restart");
    }
    tokio::time::sleep(chaos.millis(300, 1_000)).await;
    let record = load.finish(setup).await.expect("load");
    assert!(
        record.retried > 0,
        "some commands were in flight when the process died"
    );

    check_everything(&system, &record)
        .await
        .expect("after the crashes");
    system.shut_down().await.expect("shut down");
}

#[tokio::test]
async fn killing_the_nats_node_that_leads_the_stream_loses_and_duplicates_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let seed = Seed::choose("NATS stream leader kill -9");
    let mut cluster = NatsCluster::start(3).await.expect("a 3-node NATS cluster");
    let mut system = System::start_with_nats(&[], &cluster.urls())
        .await
        .expect("system");
    for binary in [Binary::CommandApi, Binary::Projector] {
        system
            .add_configured(binary, &[("EVENTS_STREAM_REPLICAS", "3")], None)
            .await
            .expect("process on the cluster");
    }
    let client = Client::new(&system).expect("client");
    let (accounts, setup) = open_accounts(&client, &seed).await.expect("accounts");
    let mut chaos = seed.random(2);

    let load = Load::start(&client, &accounts, &seed);
    let mut leaders = Vec::new();
    for _ in 0..2 {
        tokio::time::sleep(chaos.millis(500, 1_500)).await;
        let leader = cluster
            .stream_leader(&system.stream_name)
            .await
            .expect("the stream's leader");
        leaders.push(cluster.name(leader).to_owned());
        cluster
            .node(leader)
            .kill_hard()
            .await
            .expect("kill -9 the leader");
        // Long enough for the other two to elect a new leader and take publishes.
        tokio::time::sleep(chaos.millis(2_000, 4_000)).await;
        cluster.node(leader).restart().await.expect("the node again");
    }
    tokio::time::sleep(chaos.millis(500, 1_500)).await;
    let record = load.finish(setup).await.expect("load");
    eprintln!("killed the stream's leader, in turn: {leaders:?}");

    check_everything(&system, &record)
        .await
        .expect("after losing the leader twice");
    // Every copy is back: the two replicas other than the leader are current.
    wait_for("every replica of the stream current", || async {
        let (_, _, _, current) = stream_state(&system).await?;
        Ok(if current == Some(2) {
            Ok(())
        } else {
            Err(format!("current replicas besides the leader: {current:?}"))
        })
    })
    .await
    .expect("replicas caught up");
    system.shut_down().await.expect("shut down");
    drop(cluster);
}

#[tokio::test]
async fn a_projector_stopped_for_longer_than_the_streams_retention_catches_up_from_postgresql() {
    let _one = ONE_AT_A_TIME.lock().await;
    let seed = Seed::choose("projector down past the retention window");
    let nats_url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let mut system = System::start_with_nats(&[], &nats_url).await.expect("system");
    // A one-second window: whatever the projector misses while it is down for longer is
    // gone from the stream by the time it returns.
    for binary in [Binary::CommandApi, Binary::Projector] {
        system
            .add_configured(binary, &[("EVENTS_STREAM_MAX_AGE_SECONDS", "1")], None)
            .await
            .expect("process");
    }
    let client = Client::new(&system).expect("client");
    let (accounts, setup) = open_accounts(&client, &seed).await.expect("accounts");
    let mut chaos = seed.random(2);
    let pool = connect(&system).await.expect("database");

    let load = Load::start(&client, &accounts, &seed);
    tokio::time::sleep(chaos.millis(300, 1_000)).await;
    let projector = system.process(Binary::Projector).expect("projector");
    projector.kill_hard().await.expect("kill -9");
    let stopped_at: i64 = sqlx::query_scalar("SELECT min(position) FROM read_model.projection_checkpoints")
        .fetch_one(&pool)
        .await
        .expect("checkpoints");
    // Wait until the stream has dropped events the projector never saw.
    wait_for(
        "the stream to drop events past the projector's checkpoint",
        || async {
            let (_, first, last, _) = stream_state(&system).await?;
            let relayed_past = i64::try_from(last)? > stopped_at + 1;
            let dropped_past = i64::try_from(first)? > stopped_at + 1 || (first == 0 && last > 0);
            Ok(if relayed_past && dropped_past {
                Ok(())
            } else {
                Err(format!("checkpoint {stopped_at}, stream {first}..={last}"))
            })
        },
    )
    .await
    .expect("retention dropped what the projector missed");
    let projector = system.process(Binary::Projector).expect("projector");
    projector.restart().await.expect("restart");
    tokio::time::sleep(chaos.millis(500, 1_500)).await;
    let record = load.finish(setup).await.expect("load");

    let head = head(&pool).await.expect("head");
    wait_until_projected(&pool, head).await.expect("caught up");
    check_acknowledged(&pool, &record, head)
        .await
        .expect("nothing lost");
    // Published once each, in order: the fenced relay gives position N sequence N, so
    // the last sequence is the head exactly (the earlier messages have aged out).
    wait_until_relayed(&pool, head).await.expect("relayed");
    let (_, _, last, _) = stream_state(&system).await.expect("stream");
    assert_eq!(
        last,
        u64::try_from(head).expect("head"),
        "the stream's last sequence"
    );
    check_rebuild_equals_live(&system, &pool)
        .await
        .expect("live equals a rebuild");
    pool.close().await;
    system.shut_down().await.expect("shut down");
}

/// Records every checkpoint move with the session that made it (the projector sets its
/// `application_name` to its instance id) and the lease the row named at that moment.
/// Moves of one projection are serialised by the row lock, so `seq` is their commit
/// order; a rolled-back batch leaves no record.
const RECORD_CHECKPOINT_COMMITS: &str = "
CREATE TABLE public.checkpoint_commits (
    seq bigserial PRIMARY KEY, projection text NOT NULL, writer text NOT NULL,
    holder text, epoch bigint NOT NULL, from_position bigint NOT NULL, to_position bigint NOT NULL);
CREATE FUNCTION public.record_checkpoint_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.checkpoint_commits (projection, writer, holder, epoch, from_position, to_position)
    VALUES (NEW.projection, current_setting('application_name'), NEW.lease_holder, NEW.lease_epoch,
            OLD.position, NEW.position);
    RETURN NEW;
END $$;
CREATE TRIGGER record_checkpoint_commit AFTER UPDATE OF position ON read_model.projection_checkpoints
    FOR EACH ROW WHEN (NEW.position IS DISTINCT FROM OLD.position)
    EXECUTE FUNCTION public.record_checkpoint_commit();
";

/// The two projector instances of the lease tests, by name (= `PROJECTOR_INSTANCE_ID`).
const PROJECTOR_INSTANCES: [&str; 2] = ["projector-a", "projector-b"];

/// How long a take-over may take at most before the test fails: the lease's lifetime
/// (9 s), a standby poll, and a frozen batch's idle-in-transaction timeout (5 s), with
/// room for a loaded machine. The measured time is printed.
const TAKE_OVER_LIMIT: Duration = Duration::from_secs(30);

/// Starts the command API, installs [`RECORD_CHECKPOINT_COMMITS`], then both projector
/// instances at once.
async fn start_two_projectors() -> anyhow::Result<(System, PgPool)> {
    let mut system = System::start(&[Binary::CommandApi]).await?;
    let pool = connect(&system).await?;
    sqlx::raw_sql(RECORD_CHECKPOINT_COMMITS).execute(&pool).await?;
    let [a, b] = PROJECTOR_INSTANCES;
    system
        .add_instances(
            Binary::Projector,
            &[
                (a, &[("PROJECTOR_INSTANCE_ID", a)]),
                (b, &[("PROJECTOR_INSTANCE_ID", b)]),
            ],
        )
        .await?;
    Ok((system, pool))
}

/// Each projection's current lease holder, by projection (a lapsed lease is no holder).
async fn lease_holders(pool: &PgPool) -> anyhow::Result<BTreeMap<String, Option<String>>> {
    let rows: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT projection, CASE WHEN lease_expires_at > now() THEN lease_holder END \
         FROM read_model.projection_checkpoints",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Waits until `instance` holds every projection's lease; returns how long that took.
async fn wait_until_holder_of_all(pool: &PgPool, instance: &str) -> anyhow::Result<Duration> {
    let started = tokio::time::Instant::now();
    loop {
        let holders = lease_holders(pool).await?;
        if holders.len() == 3 && holders.values().all(|holder| holder.as_deref() == Some(instance)) {
            return Ok(started.elapsed());
        }
        if started.elapsed() > TAKE_OVER_LIMIT {
            bail!("{instance} did not hold every projection within {TAKE_OVER_LIMIT:?}: {holders:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The instance holding the `accounts` lease, once some instance holds it.
async fn current_holder(pool: &PgPool) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + TAKE_OVER_LIMIT;
    loop {
        if let Some(Some(holder)) = lease_holders(pool).await?.remove("accounts") {
            return Ok(holder);
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "no instance took the accounts lease"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// No two appliers, ever: per projection, in commit order, every checkpoint move was made
/// by the instance the row's lease named at that moment, the lease's epoch never went
/// back, and the moves chain without gap or overlap from 0. Returns the instances that
/// applied each projection, in the order they took over.
async fn check_one_applier_at_a_time(pool: &PgPool) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let commits: Vec<(String, String, Option<String>, i64, i64, i64)> = sqlx::query_as(
        "SELECT projection, writer, holder, epoch, from_position, to_position \
         FROM public.checkpoint_commits ORDER BY seq",
    )
    .fetch_all(pool)
    .await?;
    let mut appliers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut last: HashMap<String, (i64, i64)> = HashMap::new();
    for (projection, writer, holder, epoch, from, to) in commits {
        ensure!(
            holder.as_deref() == Some(writer.as_str()),
            "{projection}: {writer} moved the checkpoint {from} -> {to} while the lease named {holder:?} (epoch {epoch})"
        );
        let (last_epoch, last_position) = last.get(&projection).copied().unwrap_or((0, 0));
        ensure!(
            epoch >= last_epoch,
            "{projection}: epoch went back from {last_epoch} to {epoch} ({writer}, {from} -> {to})"
        );
        ensure!(
            from == last_position && to > from,
            "{projection}: {writer} moved the checkpoint {from} -> {to} after {last_position}"
        );
        last.insert(projection.clone(), (epoch, to));
        let order = appliers.entry(projection).or_default();
        if order.last() != Some(&writer) {
            order.push(writer);
        }
    }
    ensure!(appliers.len() == 3, "every projection was applied: {appliers:?}");
    Ok(appliers)
}

#[tokio::test]
async fn two_projectors_starting_together_apply_each_projection_once_and_hand_over_on_shutdown() {
    let _one = ONE_AT_A_TIME.lock().await;
    let seed = Seed::choose("two projectors, start race and hand-over");
    let (mut system, pool) = start_two_projectors().await.expect("system");
    let client = Client::new(&system).expect("client");
    let (accounts, setup) = open_accounts(&client, &seed).await.expect("accounts");
    let load = Load::start(&client, &accounts, &seed);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let holder = current_holder(&pool).await.expect("a holder");
    let [a, b] = PROJECTOR_INSTANCES;
    let standby = if holder == a { b } else { a };
    // Each projection has exactly one holder (the race may share them out), and either
    // instance's admin port names it, as `projector status` does.
    let holders = lease_holders(&pool).await.expect("holders");
    assert!(
        holders.len() == 3 && holders.values().all(Option::is_some),
        "every projection has a holder: {holders:?}"
    );
    let token = System::token("lease-test", &[Role::Viewer]).expect("token");
    let listed: Value = reqwest::Client::new()
        .get(system.instance(standby).expect("standby").url("/projections"))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET /projections")
        .json()
        .await
        .expect("json");
    for item in listed["items"].as_array().expect("items") {
        let name = item["name"].as_str().expect("name");
        assert_eq!(
            item["holder"].as_str(),
            holders.get(name).and_then(Option::as_deref),
            "GET /projections names {name}'s holder: {listed}"
        );
    }

    // A clean stop releases the leases: the standby takes over at its next poll.
    let clean = system
        .instance(&holder)
        .expect("holder")
        .terminate()
        .await
        .expect("SIGTERM");
    assert!(clean, "{holder} stopped cleanly");
    let handed_over = wait_until_holder_of_all(&pool, standby).await.expect("hand-over");
    eprintln!("{standby} took over every projection {handed_over:?} after {holder} stopped");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let record = load.finish(setup).await.expect("load");

    let head = head(&pool).await.expect("head");
    wait_until_projected(&pool, head).await.expect("projected");
    let appliers = check_one_applier_at_a_time(&pool)
        .await
        .expect("one applier at a time");
    for (projection, order) in &appliers {
        let first_holder = holders.get(projection).cloned().flatten().expect("a holder");
        let expected = if first_holder == standby {
            vec![first_holder]
        } else {
            vec![first_holder, standby.to_owned()]
        };
        assert_eq!(
            order, &expected,
            "{projection} was applied by its first holder, then by the standby only"
        );
    }
    check_everything(&system, &record)
        .await
        .expect("after the hand-over");
    system.shut_down().await.expect("shut down");
}

#[tokio::test]
async fn a_frozen_projector_is_replaced_and_writes_nothing_when_it_resumes() {
    let _one = ONE_AT_A_TIME.lock().await;
    let seed = Seed::choose("frozen projector holder");
    let (mut system, pool) = start_two_projectors().await.expect("system");
    let client = Client::new(&system).expect("client");
    let (accounts, setup) = open_accounts(&client, &seed).await.expect("accounts");
    let mut chaos = seed.random(3);
    let load = Load::start(&client, &accounts, &seed);
    tokio::time::sleep(chaos.millis(1_000, 2_500)).await;

    let holder = current_holder(&pool).await.expect("a holder");
    let [a, b] = PROJECTOR_INSTANCES;
    let standby = if holder == a { b } else { a };
    // Frozen mid-load, most likely inside a batch transaction with the checkpoint row
    // locked: its connections stay open, it renews nothing.
    system
        .instance(&holder)
        .expect("holder")
        .freeze()
        .await
        .expect("SIGSTOP");
    let took_over = wait_until_holder_of_all(&pool, standby).await.expect("take-over");
    eprintln!("{standby} took over every projection {took_over:?} after {holder} froze");
    tokio::time::sleep(chaos.millis(500, 2_000)).await;
    // Back after the take-over: whatever it had in flight must not land.
    system
        .instance(&holder)
        .expect("holder")
        .thaw()
        .await
        .expect("SIGCONT");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let record = load.finish(setup).await.expect("load");

    let head = head(&pool).await.expect("head");
    wait_until_projected(&pool, head).await.expect("projected");
    let holders = lease_holders(&pool).await.expect("holders");
    assert!(
        holders.values().all(|held| held.as_deref() == Some(standby)),
        "the resumed {holder} stands by: {holders:?}"
    );
    let appliers = check_one_applier_at_a_time(&pool)
        .await
        .expect("one applier at a time");
    for (projection, order) in &appliers {
        assert_eq!(
            order.last().map(String::as_str),
            Some(standby),
            "{projection}: after the take-over only {standby} applied it: {order:?}"
        );
    }
    check_everything(&system, &record)
        .await
        .expect("after the freeze");
    system.shut_down().await.expect("shut down");
}
