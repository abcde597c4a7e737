//! The projector against a real PostgreSQL (a fresh database per test) and the shared
//! NATS server (a JetStream stream and subject prefix of its own per test, deleted at the
//! end): live projection through the real relay, redelivery, gap filling, a poisoned
//! event, rebuild during a stream of commands, and the admin routes.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::HeaderMap;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use domain::{
    Account, AccountCommand, AccountId, Amount, Currency, OverdraftLimit, Owner, PendingTerms, SettleAction,
    SettleCommand, Transfer, TransferCommand, TransferDecision, TransferId, decide_settle, decide_transfer,
};
use event_store::pii::{SEALED_PREFIX, Vault};
use event_store::relay::{self, RelayConfig};
use event_store::{AppendRequest, EventStore, ExpectedVersion, Metadata, NewEvent, StreamWrite};
use projector::lease::{Fence, LeaseConfig, LeaseKeeper};
use projector::live::LiveConfig;
use projector::projection::Projection;
use projector::{AppState, rebuild, status};
use serde_json::Value;
use service::Readiness;
use service::auth::{Authenticator, Role, mint_hs256};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use uuid::Uuid;

/// Connections per test pool: the relay, three live tasks, a rebuild's reader, writer
/// and lease, two command writers, and the test's own queries, with room to spare.
const TEST_POOL_CONNECTIONS: u32 = 20;

/// How long a test waits for the projections to reach the head before it fails: far
/// above the milliseconds this takes, so only a projector that stopped moving fails.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(60);

const NATS_URL: &str = "nats://127.0.0.1:4222";

/// The HS256 secret the admin port verifies tokens with in these tests.
const TEST_SECRET: &[u8] = b"projector-test-secret-of-at-least-32-bytes";

/// The admin router over `pool`, verifying tokens with [`TEST_SECRET`].
fn admin_app(pool: PgPool, nats: async_nats::Client) -> axum::Router {
    projector::app(AppState::new(
        Readiness { pool, nats },
        Authenticator::hs256(TEST_SECRET),
    ))
}

/// A request to the admin port as an admin (the walk of every role is in `access.rs`).
fn as_admin(request: axum::http::request::Builder) -> Request<Body> {
    let token = mint_hs256(
        TEST_SECRET,
        "test-admin",
        &[Role::Admin],
        Duration::from_secs(3600),
    )
    .expect("mint token");
    request
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .expect("request")
}

fn admin_post(path: &str) -> Request<Body> {
    as_admin(Request::post(path))
}

async fn pool(_options: PgPoolOptions, connect: PgConnectOptions) -> PgPool {
    // A pool of its own rather than a child of sqlx's test pool, whose size is capped.
    PgPoolOptions::new()
        .max_connections(TEST_POOL_CONNECTIONS)
        .connect_with(connect)
        .await
        .expect("test database")
}

fn metadata(command: &str) -> Metadata {
    Metadata {
        actor: "projector-test".into(),
        correlation_id: Uuid::now_v7().to_string(),
        causation_id: None,
        command: command.into(),
        idempotency_key: None,
        trace: None,
    }
}

fn new_events(events: impl IntoIterator<Item = domain::EventData>, command: &str) -> Vec<NewEvent> {
    events
        .into_iter()
        .map(|stored| NewEvent::from_domain(stored, metadata(command)))
        .collect()
}

/// Writes valid commands through the domain (decide, then append with expected
/// versions), keeping each account's state and version as the command side would.
struct Ledger {
    store: EventStore,
    accounts: Vec<(AccountId, Account, u64)>,
    /// Pending transfers not yet settled, with the index of each side's account.
    pending: Vec<(Transfer, usize, usize)>,
    /// xorshift state: reproducible and dependency-free.
    random: u64,
}

impl Ledger {
    fn new(store: EventStore, seed: u64) -> Self {
        Self {
            store,
            accounts: Vec::new(),
            pending: Vec::new(),
            random: seed | 1,
        }
    }

    fn next(&mut self, below: u64) -> u64 {
        self.random ^= self.random << 13;
        self.random ^= self.random >> 7;
        self.random ^= self.random << 17;
        self.random % below
    }

    async fn open(&mut self, currency: &str) -> AccountId {
        let id = AccountId::new_v7();
        let vault = Vault::from_base64("dGVzdC1tYXN0ZXIta2V5LTMyLWJ5dGVzLWxvbmchISE=").expect("master key");
        let (key, _) = vault.new_key(id.as_uuid()).expect("data key");
        let owner = Owner::parse("Grace Hopper", "grace@example.com").expect("owner");
        let command = AccountCommand::Open {
            id,
            owner: key.seal_owner(&owner).expect("sealed"),
            currency: Currency::parse(currency).expect("currency"),
            overdraft_limit: OverdraftLimit::new(1_000).expect("limit"),
        };
        self.account_command(None, id, command).await;
        id
    }

    /// Applies `command` to the account at `index` (or opens `id` when `index` is None).
    /// A command the domain refuses is simply not written.
    async fn account_command(&mut self, index: Option<usize>, id: AccountId, command: AccountCommand) {
        let (state, version) = match index {
            Some(index) => (Some(self.accounts[index].1.clone()), self.accounts[index].2),
            None => (None, 0),
        };
        let name = command.name();
        let Ok(events) = Account::decide(state.as_ref(), command) else {
            return;
        };
        let expected = if version == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(version)
        };
        self.store
            .append(AppendRequest::single(
                id.stream_id(),
                expected,
                new_events(events.iter().map(|event| event.to_stored()), name),
            ))
            .await
            .expect("append");
        let mut account = state;
        for event in &events {
            account = Some(Account::evolve(account, event).expect("evolves"));
        }
        let account = account.expect("an account");
        let version = version + events.len() as u64;
        match index {
            Some(index) => self.accounts[index] = (id, account, version),
            None => self.accounts.push((id, account, version)),
        }
    }

    async fn transfer(&mut self, from: usize, to: usize, amount: i64) {
        self.transfer_with(from, to, amount, None).await;
    }

    /// A transfer, pending (with `pending` terms) or not; a pending one is remembered to
    /// be settled later.
    async fn transfer_with(&mut self, from: usize, to: usize, amount: i64, pending: Option<PendingTerms>) {
        let command = TransferCommand {
            id: TransferId::new_v7(),
            from: self.accounts[from].0,
            to: self.accounts[to].0,
            amount: Amount::new(amount).expect("amount"),
            reference: None,
            pending,
        };
        let transfer_id = command.id;
        let Ok(decision) = decide_transfer(
            None,
            Some(&self.accounts[from].1),
            Some(&self.accounts[to].1),
            command,
        ) else {
            return;
        };
        self.append_decision(from, to, transfer_id, ExpectedVersion::NoStream, &decision)
            .await;
        if pending.is_some() {
            let transfer = Transfer::evolve(None, &decision.transfer).expect("a pending transfer");
            self.pending.push((transfer, from, to));
        }
    }

    /// Posts (all or part), voids or expires the pending transfer at `index`.
    async fn settle(&mut self, index: usize) {
        let (transfer, from, to) = self.pending.swap_remove(index);
        let action = match self.next(4) {
            0 => SettleAction::Post { amount: None },
            1 => SettleAction::Post {
                amount: Amount::new(1 + self.next(transfer.amount.get() as u64) as i64).ok(),
            },
            2 => SettleAction::Void { reason: None },
            _ => SettleAction::Expire,
        };
        let command = SettleCommand {
            transfer_id: transfer.id,
            action,
            // Far past any deadline the ledger sets, so an expiry is due.
            now: chrono::Utc::now() + chrono::Duration::days(365),
        };
        let decided = decide_settle(
            Some(&transfer),
            Some(&self.accounts[from].1),
            Some(&self.accounts[to].1),
            command,
        );
        match decided {
            Ok(decision) => {
                self.append_decision(from, to, transfer.id, ExpectedVersion::Exact(1), &decision)
                    .await;
            }
            // A post the rules refuse now (a frozen side, an expired transfer): keep it.
            Err(_) => self.pending.push((transfer, from, to)),
        }
    }

    /// Appends one transfer step's three events with the expected versions, and keeps
    /// the accounts' states.
    async fn append_decision(
        &mut self,
        from: usize,
        to: usize,
        transfer_id: TransferId,
        transfer_expected: ExpectedVersion,
        decision: &TransferDecision,
    ) {
        let writes = vec![
            StreamWrite {
                stream_id: self.accounts[from].0.stream_id(),
                expected: ExpectedVersion::Exact(self.accounts[from].2),
                events: new_events([decision.debit.to_stored()], "transfer"),
            },
            StreamWrite {
                stream_id: self.accounts[to].0.stream_id(),
                expected: ExpectedVersion::Exact(self.accounts[to].2),
                events: new_events([decision.credit.to_stored()], "transfer"),
            },
            StreamWrite {
                stream_id: transfer_id.stream_id(),
                expected: transfer_expected,
                events: new_events([decision.transfer.to_stored()], "transfer"),
            },
        ];
        self.store
            .append(AppendRequest { writes })
            .await
            .expect("append transfer");
        for (index, event) in [(from, &decision.debit), (to, &decision.credit)] {
            let account = Account::evolve(Some(self.accounts[index].1.clone()), event).expect("evolves");
            self.accounts[index].1 = account;
            self.accounts[index].2 += 1;
        }
    }

    /// One random command: mostly money movement, sometimes a new account, a freeze, an
    /// unfreeze, an erasure or a closure.
    async fn random_command(&mut self) {
        if self.accounts.len() < 4 || self.next(20) == 0 {
            let currency = if self.next(4) == 0 { "USD" } else { "EUR" };
            self.open(currency).await;
            return;
        }
        let index = self.next(self.accounts.len() as u64) as usize;
        let id = self.accounts[index].0;
        let amount = Amount::new(1 + self.next(5_000) as i64).expect("amount");
        let command = match self.next(100) {
            0..=34 => AccountCommand::Deposit {
                amount,
                reference: None,
            },
            35..=59 => AccountCommand::Withdraw {
                amount,
                reference: None,
            },
            60..=74 => {
                let to = self.next(self.accounts.len() as u64) as usize;
                if to != index {
                    self.transfer(index, to, amount.get()).await;
                }
                return;
            }
            // More reservations than settlements, so some stay pending for a rebuild.
            75..=85 => {
                let to = self.next(self.accounts.len() as u64) as usize;
                let expires_at = (self.next(2) == 0).then(|| chrono::Utc::now() + chrono::Duration::hours(1));
                if to != index {
                    self.transfer_with(index, to, amount.get(), Some(PendingTerms { expires_at }))
                        .await;
                }
                return;
            }
            86..=89 => {
                if !self.pending.is_empty() {
                    let pending = self.next(self.pending.len() as u64) as usize;
                    self.settle(pending).await;
                }
                return;
            }
            90..=93 => AccountCommand::Freeze { reason: None },
            94..=97 => AccountCommand::Unfreeze { reason: None },
            98 => AccountCommand::ErasePersonalData,
            _ => AccountCommand::Close { reason: None },
        };
        self.account_command(Some(index), id, command).await;
    }
}

/// A relay and the live projector on a stream and prefix of the test's own.
struct Harness {
    pool: PgPool,
    store: EventStore,
    nats: async_nats::Client,
    stream_name: String,
    subject_prefix: String,
    live: LiveConfig,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Harness {
    async fn start(pool: PgPool, with_relay: bool, idle_wait: Duration) -> Self {
        let unique = Uuid::now_v7().simple().to_string();
        let stream_name = format!("TEST_PROJ_{unique}");
        let subject_prefix = format!("testproj.{unique}");
        let nats = async_nats::connect(NATS_URL).await.expect("NATS");
        let jetstream = async_nats::jetstream::new(nats.clone());
        event_store::bus::ensure_stream(&jetstream, &stream_name, &subject_prefix, &Default::default())
            .await
            .expect("stream");
        let store = EventStore::new(pool.clone());
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        if with_relay {
            let mut config = RelayConfig::new(format!("relay-{unique}"));
            config.stream_name = stream_name.clone();
            config.subject_prefix = subject_prefix.clone();
            tasks.push(tokio::spawn(relay::run(
                store.clone(),
                nats.clone(),
                config,
                stop.clone(),
            )));
        }
        let mut live = LiveConfig::new(&stream_name, &subject_prefix);
        live.consumer_prefix = format!("projector_{unique}");
        live.idle_wait = idle_wait;
        let (keeper, leases) =
            LeaseKeeper::new(pool.clone(), &format!("test-{unique}"), LeaseConfig::default());
        tasks.push(tokio::spawn(keeper.run(stop.clone())));
        tasks.push(tokio::spawn(projector::live::run(
            pool.clone(),
            nats.clone(),
            live.clone(),
            leases,
            stop.clone(),
        )));
        Self {
            pool,
            store,
            nats,
            stream_name,
            subject_prefix,
            live,
            stop,
            tasks,
        }
    }

    /// Waits until every live task has created its durable consumer (they start with the
    /// messages published after that).
    async fn consumers_ready(&self) {
        let jetstream = async_nats::jetstream::new(self.nats.clone());
        let stream = jetstream.get_stream(&self.stream_name).await.expect("stream");
        let deadline = tokio::time::Instant::now() + CATCH_UP_LIMIT;
        for projection in Projection::ALL {
            let name = self.live.durable_name(projection);
            while stream
                .get_consumer::<async_nats::jetstream::consumer::pull::Config>(&name)
                .await
                .is_err()
            {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "consumer {name} never appeared"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    fn app(&self) -> axum::Router {
        admin_app(self.pool.clone(), self.nats.clone())
    }

    /// Waits until every projection has applied everything up to the head.
    async fn caught_up(&self) {
        let deadline = tokio::time::Instant::now() + CATCH_UP_LIMIT;
        loop {
            let statuses = status::read(&self.pool).await.expect("status");
            if statuses
                .iter()
                .all(|status| status.lag == 0 && status.status == "live")
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "projections did not catch up: {statuses:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn publish(&self, event: &event_store::RecordedEvent) {
        let jetstream = async_nats::jetstream::new(self.nats.clone());
        let mut headers = HeaderMap::new();
        // A fresh message id, so JetStream's de-duplication does not hide the copy.
        headers.insert("Nats-Msg-Id", Uuid::now_v7().to_string().as_str());
        headers.insert(relay::POSITION_HEADER, event.position.to_string().as_str());
        jetstream
            .publish_with_headers(
                relay::subject_for(&self.subject_prefix, &event.stream_id),
                headers,
                serde_json::to_vec(event).expect("encode").into(),
            )
            .await
            .expect("publish")
            .await
            .expect("ack");
    }

    async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            task.await.expect("task ends cleanly");
        }
        let jetstream = async_nats::jetstream::new(self.nats.clone());
        jetstream
            .delete_stream(&self.stream_name)
            .await
            .expect("delete stream");
    }
}

/// Every row of a read-model table as text, in a stable order.
async fn rows(pool: &PgPool, table: &str) -> Vec<String> {
    sqlx::query_scalar(&format!("SELECT t::text FROM read_model.{table} t ORDER BY 1"))
        .fetch_all(pool)
        .await
        .expect("rows")
}

async fn all_rows(pool: &PgPool) -> HashMap<&'static str, Vec<String>> {
    let mut tables = HashMap::new();
    for projection in Projection::ALL {
        tables.insert(projection.table(), rows(pool, projection.table()).await);
    }
    tables
}

/// The read-model schema's tables, indexes and constraints, named and defined, in a
/// stable order: what a rebuild must leave exactly as the migrations made it.
async fn schema_shape(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT 'table ' || tablename FROM pg_tables WHERE schemaname = 'read_model' \
         UNION ALL SELECT 'index ' || indexname || ': ' || indexdef FROM pg_indexes \
             WHERE schemaname = 'read_model' \
         UNION ALL SELECT 'constraint ' || conname || ' of ' || conrelid::regclass::text || ': ' \
             || pg_get_constraintdef(oid) FROM pg_constraint \
             WHERE connamespace = 'read_model'::regnamespace \
         ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .expect("schema shape")
}

async fn checkpoint(pool: &PgPool, projection: Projection) -> (i64, String, Option<String>) {
    sqlx::query_as(
        "SELECT position, status, error FROM read_model.projection_checkpoints WHERE projection = $1",
    )
    .bind(projection.name())
    .fetch_one(pool)
    .await
    .expect("checkpoint")
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn live_projection_through_the_relay_builds_the_account_statement_and_transfer(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let harness = Harness::start(pool(options, connect).await, true, Duration::from_millis(500)).await;
    let mut ledger = Ledger::new(harness.store.clone(), 7);
    let alice = ledger.open("EUR").await;
    let bob = ledger.open("EUR").await;
    let amount = |minor| Amount::new(minor).expect("amount");
    ledger
        .account_command(
            Some(0),
            alice,
            AccountCommand::Deposit {
                amount: amount(10_000),
                reference: None,
            },
        )
        .await;
    ledger
        .account_command(
            Some(0),
            alice,
            AccountCommand::Withdraw {
                amount: amount(2_500),
                reference: None,
            },
        )
        .await;
    ledger.transfer(0, 1, 3_000).await;
    ledger
        .account_command(Some(1), bob, AccountCommand::Freeze { reason: None })
        .await;
    ledger
        .account_command(Some(1), bob, AccountCommand::ErasePersonalData)
        .await;
    harness.caught_up().await;

    let (balance, version, status, owner): (i64, i64, String, Option<String>) = sqlx::query_as(
        "SELECT balance, version, status, owner_name FROM read_model.accounts WHERE account_id = $1",
    )
    .bind(alice.as_uuid())
    .fetch_one(&harness.pool)
    .await
    .expect("alice");
    assert_eq!((balance, version, status.as_str()), (4_500, 4, "open"));
    assert!(
        owner
            .as_deref()
            .is_some_and(|owner| owner.starts_with(SEALED_PREFIX) && !owner.contains("Grace")),
        "the read model holds the sealed owner, never plaintext: {owner:?}"
    );
    let (balance, version, status, owner): (i64, i64, String, Option<String>) = sqlx::query_as(
        "SELECT balance, version, status, owner_name FROM read_model.accounts WHERE account_id = $1",
    )
    .bind(bob.as_uuid())
    .fetch_one(&harness.pool)
    .await
    .expect("bob");
    assert_eq!(
        (balance, version, status.as_str(), owner),
        (3_000, 4, "frozen", None)
    );

    let statement: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT kind, amount, balance_after FROM read_model.account_transactions WHERE account_id = $1 ORDER BY position",
    )
    .bind(alice.as_uuid())
    .fetch_all(&harness.pool)
    .await
    .expect("statement");
    assert_eq!(
        statement,
        vec![
            ("deposit".to_owned(), 10_000, 10_000),
            ("withdrawal".to_owned(), 2_500, 7_500),
            ("transfer_out".to_owned(), 3_000, 4_500),
        ]
    );
    let transfers: Vec<(Uuid, Uuid, i64, String)> =
        sqlx::query_as("SELECT from_account_id, to_account_id, amount, currency FROM read_model.transfers")
            .fetch_all(&harness.pool)
            .await
            .expect("transfers");
    assert_eq!(
        transfers,
        vec![(alice.as_uuid(), bob.as_uuid(), 3_000, "EUR".to_owned())]
    );
    harness.stop().await;
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn redelivered_and_duplicated_messages_are_not_applied_twice(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let harness = Harness::start(pool(options, connect).await, true, Duration::from_millis(500)).await;
    let mut ledger = Ledger::new(harness.store.clone(), 11);
    for _ in 0..60 {
        ledger.random_command().await;
    }
    harness.caught_up().await;
    let before = all_rows(&harness.pool).await;

    // Every event once more on the stream, as a relay restarting after its duplicate
    // window would publish them, then one more command behind them.
    let events = harness.store.read_all(0, 10_000).await.expect("events");
    for event in &events {
        harness.publish(event).await;
    }
    let id = ledger.accounts[0].0;
    ledger
        .account_command(
            Some(0),
            id,
            AccountCommand::Deposit {
                amount: Amount::new(1).expect("amount"),
                reference: None,
            },
        )
        .await;
    harness.caught_up().await;

    let after = all_rows(&harness.pool).await;
    let new_statement_rows = after["account_transactions"].len() - before["account_transactions"].len();
    assert!(
        new_statement_rows <= 1,
        "only the last deposit may add a statement row"
    );
    assert_eq!(after["transfers"], before["transfers"]);
    rebuild::rebuild(&harness.pool, &Projection::ALL)
        .await
        .expect("rebuild");
    assert_eq!(
        all_rows(&harness.pool).await,
        after,
        "live tables equal a fresh rebuild"
    );
    harness.stop().await;
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_gap_in_the_delivered_positions_is_filled_from_the_event_store(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    // No relay, and a quiet consumer waits long before checking the store on its own:
    // only gap filling can bring the event that never travels.
    let harness = Harness::start(pool(options, connect).await, false, Duration::from_secs(3_600)).await;
    harness.consumers_ready().await;
    let mut ledger = Ledger::new(harness.store.clone(), 3);
    for _ in 0..30 {
        ledger.random_command().await;
    }
    let events = harness.store.read_all(0, 10_000).await.expect("events");
    let withheld = events.len() / 2;
    for (index, event) in events.iter().enumerate() {
        if index != withheld {
            harness.publish(event).await;
        }
    }
    harness.caught_up().await;
    let live = all_rows(&harness.pool).await;
    rebuild::rebuild(&harness.pool, &Projection::ALL)
        .await
        .expect("rebuild");
    assert_eq!(all_rows(&harness.pool).await, live);
    harness.stop().await;
}

/// Appends an event the domain cannot read, as a newer writer or corruption would.
async fn append_poison(pool: &PgPool) -> i64 {
    let mut transaction = pool.begin().await.expect("begin");
    let head: i64 = sqlx::query_scalar("SELECT position FROM event_store_head FOR UPDATE")
        .fetch_one(&mut *transaction)
        .await
        .expect("head");
    let position = head + 1;
    sqlx::query(
        "INSERT INTO events (position, event_id, stream_id, stream_version, event_type, schema_version, data, \
         metadata, recorded_at) VALUES ($1, $2, $3, 1, 'AccountRenamed', 1, '{}', \
         '{\"actor\": \"test\", \"correlation_id\": \"x\", \"command\": \"x\"}', now())",
    )
    .bind(position)
    .bind(Uuid::now_v7())
    .bind(format!("account-{}", Uuid::now_v7()))
    .execute(&mut *transaction)
    .await
    .expect("insert");
    sqlx::query("UPDATE event_store_head SET position = $1")
        .bind(position)
        .execute(&mut *transaction)
        .await
        .expect("head");
    transaction.commit().await.expect("commit");
    position
}

/// The value of the sample named `series` (name and labels, as rendered) in a
/// Prometheus text exposition.
fn gauge(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.trim();
        value.parse().ok()
    })
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn an_event_that_cannot_be_applied_stops_the_projection_and_shows_why(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let harness = Harness::start(pool(options, connect).await, true, Duration::from_millis(500)).await;
    let mut ledger = Ledger::new(harness.store.clone(), 5);
    for _ in 0..20 {
        ledger.random_command().await;
    }
    let poison = append_poison(&harness.pool).await;
    for _ in 0..20 {
        ledger.random_command().await;
    }

    let deadline = tokio::time::Instant::now() + CATCH_UP_LIMIT;
    let answer = loop {
        let response = harness
            .app()
            .oneshot(as_admin(Request::get("/projections")))
            .await
            .expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        let answer: Value = serde_json::from_slice(&body).expect("json");
        let items = answer["items"].as_array().expect("items");
        if items.iter().all(|item| item["status"] == "stopped") {
            break answer;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "projections did not stop: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for item in answer["items"].as_array().expect("items") {
        assert_eq!(item["position"], poison - 1, "{item}");
        assert!(item["lag"].as_i64().expect("lag") > 1, "{item}");
        let error = item["error"].as_str().expect("an error");
        assert!(error.contains(&format!("position {poison}")), "{error}");
    }
    // The gauges say the same when `/metrics` is scraped: they are read at the scrape
    // (no test but this one in this binary reads them, so no other test moves them).
    let response = harness
        .app()
        .oneshot(Request::get("/metrics").body(Body::empty()).expect("request"))
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let body = axum::body::to_bytes(response.into_body(), 1 << 22)
        .await
        .expect("body");
    let metrics = String::from_utf8_lossy(&body);
    for projection in Projection::ALL {
        let name = projection.name();
        assert_eq!(
            gauge(
                &metrics,
                &format!("projector_state{{projection=\"{name}\",state=\"stopped\"}}")
            ),
            Some(1.0),
            "{metrics}"
        );
        assert_eq!(
            gauge(&metrics, &format!("projector_position{{projection=\"{name}\"}}")),
            Some((poison - 1) as f64),
            "{metrics}"
        );
    }
    // It stays stopped; nothing after the poisoned event is applied.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for projection in Projection::ALL {
        let (position, state, _) = checkpoint(&harness.pool, projection).await;
        assert_eq!((position, state.as_str()), (poison - 1, "stopped"));
    }
    harness.stop().await;
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn rebuild_during_a_stream_of_commands_equals_the_live_tables_row_by_row(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let harness = Harness::start(pool(options, connect).await, true, Duration::from_millis(500)).await;
    let shape = schema_shape(&harness.pool).await;
    assert!(
        shape
            .iter()
            .any(|line| line.starts_with("index accounts_currency:"))
    );
    const WRITERS: u64 = 2;
    const COMMANDS_PER_WRITER: usize = 1_500;
    let mut ledgers: Vec<Ledger> = (0..WRITERS)
        .map(|writer| Ledger::new(harness.store.clone(), 1_000 + writer))
        .collect();

    // Phase 1: only live projection, then a rebuild compared with it.
    let mut tasks = Vec::new();
    for mut ledger in ledgers.drain(..) {
        tasks.push(tokio::spawn(async move {
            for _ in 0..COMMANDS_PER_WRITER {
                ledger.random_command().await;
            }
            ledger
        }));
    }
    for task in tasks {
        ledgers.push(task.await.expect("writer"));
    }
    harness.caught_up().await;
    let live = all_rows(&harness.pool).await;
    assert!(live["account_transactions"].len() > 1_000, "the load moved money");
    for status in ["pending", "posted", "voided", "expired"] {
        assert!(
            live["transfers"]
                .iter()
                .any(|row| row.contains(&format!(",{status},"))),
            "the load left a {status} transfer to rebuild"
        );
    }
    rebuild::rebuild(&harness.pool, &Projection::ALL)
        .await
        .expect("rebuild");
    assert_eq!(
        all_rows(&harness.pool).await,
        live,
        "a rebuild equals the live tables"
    );
    assert_eq!(
        schema_shape(&harness.pool).await,
        shape,
        "the rebuilt tables carry the live tables' indexes and constraints, under their names"
    );

    // Phase 2: rebuilds (all at once, and one through the admin port) while commands
    // keep arriving; afterwards live projection went on without a lost or doubled event.
    let mut tasks = Vec::new();
    for mut ledger in ledgers.drain(..) {
        tasks.push(tokio::spawn(async move {
            for _ in 0..COMMANDS_PER_WRITER {
                ledger.random_command().await;
            }
            ledger
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = rebuild::rebuild(&harness.pool, &Projection::ALL)
        .await
        .expect("rebuild under load");
    assert!(report.events > 0);
    let response = harness
        .app()
        .oneshot(admin_post("/projections/account_transactions/rebuild"))
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    for task in tasks {
        task.await.expect("writer");
    }
    harness.caught_up().await;
    let live = all_rows(&harness.pool).await;
    rebuild::rebuild(&harness.pool, &Projection::ALL)
        .await
        .expect("rebuild at rest");
    assert_eq!(
        all_rows(&harness.pool).await,
        live,
        "rebuilt during load, then live, equals a fresh rebuild"
    );
    assert_eq!(
        schema_shape(&harness.pool).await,
        shape,
        "and the schema is still the migrated one"
    );
    harness.stop().await;
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn pending_transfers_project_their_reservations_and_settlements_and_rebuild_the_same(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = pool(options, connect).await;
    let harness = Harness::start(pool, true, Duration::from_secs(10)).await;
    harness.consumers_ready().await;
    let mut ledger = Ledger::new(harness.store.clone(), 7);
    let alice = ledger.open("EUR").await;
    let bob = ledger.open("EUR").await;
    ledger
        .account_command(
            Some(0),
            alice,
            AccountCommand::Deposit {
                amount: Amount::new(1_000).expect("amount"),
                reference: None,
            },
        )
        .await;
    let expires_at = chrono::Utc::now() + chrono::Duration::hours(1);
    for amount in [100, 200, 300, 400] {
        ledger
            .transfer_with(
                0,
                1,
                amount,
                Some(PendingTerms {
                    expires_at: Some(expires_at),
                }),
            )
            .await;
    }
    assert_eq!(ledger.pending.len(), 4);
    let by_amount = |ledger: &Ledger, amount: i64| {
        ledger
            .pending
            .iter()
            .position(|(transfer, ..)| transfer.amount.get() == amount)
            .expect("pending transfer")
    };
    // Decided before the deadline (a post), or after it (a void, an expiry).
    let settle = |ledger: &mut Ledger, index: usize, action: SettleAction| {
        let (transfer, from, to) = ledger.pending.remove(index);
        let now = match action {
            SettleAction::Post { .. } => expires_at - chrono::Duration::seconds(1),
            _ => expires_at + chrono::Duration::seconds(1),
        };
        let decision = decide_settle(
            Some(&transfer),
            Some(&ledger.accounts[from].1),
            Some(&ledger.accounts[to].1),
            SettleCommand {
                transfer_id: transfer.id,
                action,
                now,
            },
        )
        .expect("settles");
        (transfer.id, from, to, decision)
    };
    // 100 is posted in part (40), 200 voided, 300 expired, 400 stays pending.
    let index = by_amount(&ledger, 100);
    let (posted, from, to, decision) = settle(
        &mut ledger,
        index,
        SettleAction::Post {
            amount: Amount::new(40).ok(),
        },
    );
    ledger
        .append_decision(from, to, posted, ExpectedVersion::Exact(1), &decision)
        .await;
    let index = by_amount(&ledger, 200);
    let (voided, from, to, decision) = settle(&mut ledger, index, SettleAction::Void { reason: None });
    ledger
        .append_decision(from, to, voided, ExpectedVersion::Exact(1), &decision)
        .await;
    let index = by_amount(&ledger, 300);
    let (expired, from, to, decision) = settle(&mut ledger, index, SettleAction::Expire);
    ledger
        .append_decision(from, to, expired, ExpectedVersion::Exact(1), &decision)
        .await;
    harness.caught_up().await;

    let accounts: Vec<(Uuid, i64, i64, i64)> = sqlx::query_as(
        "SELECT account_id, balance, pending_debits, pending_credits FROM read_model.accounts ORDER BY opened_at",
    )
    .fetch_all(&harness.pool)
    .await
    .expect("accounts");
    assert_eq!(
        accounts,
        vec![(alice.as_uuid(), 960, 400, 0), (bob.as_uuid(), 40, 0, 400)]
    );
    let statement: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT kind, amount, balance_after FROM read_model.account_transactions WHERE account_id = $1 \
         ORDER BY position",
    )
    .bind(alice.as_uuid())
    .fetch_all(&harness.pool)
    .await
    .expect("statement");
    assert_eq!(
        statement,
        vec![
            ("deposit".to_owned(), 1_000, 1_000),
            ("transfer_out".to_owned(), 40, 960)
        ],
        "the statement shows posted movements only"
    );
    let transfers: Vec<(Uuid, i64, String, Option<i64>, bool)> = sqlx::query_as(
        "SELECT transfer_id, amount, status, posted_amount, expires_at IS NOT NULL FROM read_model.transfers \
         ORDER BY amount",
    )
    .fetch_all(&harness.pool)
    .await
    .expect("transfers");
    assert_eq!(transfers.len(), 4);
    assert_eq!(
        transfers
            .iter()
            .map(|(_, amount, status, posted, expires)| (*amount, status.as_str(), *posted, *expires))
            .collect::<Vec<_>>(),
        vec![
            (100, "posted", Some(40), true),
            (200, "voided", None, true),
            (300, "expired", None, true),
            (400, "pending", None, true),
        ]
    );
    assert_eq!(
        [transfers[0].0, transfers[1].0, transfers[2].0],
        [posted.as_uuid(), voided.as_uuid(), expired.as_uuid()]
    );

    let live = all_rows(&harness.pool).await;
    rebuild::rebuild(&harness.pool, &Projection::ALL)
        .await
        .expect("rebuild");
    assert_eq!(
        all_rows(&harness.pool).await,
        live,
        "a rebuild equals the live tables"
    );
    // The last pending one settles after the rebuild: the live projection goes on from
    // the rebuilt row.
    let index = by_amount(&ledger, 400);
    let (last, from, to, decision) = settle(&mut ledger, index, SettleAction::Void { reason: None });
    ledger
        .append_decision(from, to, last, ExpectedVersion::Exact(1), &decision)
        .await;
    harness.caught_up().await;
    let status: String = sqlx::query_scalar("SELECT status FROM read_model.transfers WHERE transfer_id = $1")
        .bind(last.as_uuid())
        .fetch_one(&harness.pool)
        .await
        .expect("status");
    assert_eq!(status, "voided");
    harness.stop().await;
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn rebuilding_an_unknown_projection_is_a_404_problem_and_a_second_rebuild_a_409(pool: PgPool) {
    let nats = async_nats::connect(NATS_URL).await.expect("NATS");
    let app = admin_app(pool.clone(), nats);
    let response = app
        .clone()
        .oneshot(admin_post("/projections/balances/rebuild"))
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    let problem: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(
        problem["type"],
        "https://eventledger.dev/problems/projection-not-found"
    );

    let lease = rebuild::RebuildLease::acquire(&pool, &[Projection::Transfers])
        .await
        .expect("lease");
    let response = app
        .oneshot(admin_post("/projections/transfers/rebuild"))
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::CONFLICT);
    lease.run(&pool).await.expect("the held rebuild completes");
    let (position, state, _) = checkpoint(&pool, Projection::Transfers).await;
    assert_eq!((position, state.as_str()), (0, "live"));
}

/// Lease timings short enough for a test to watch a lease lapse.
fn quick_leases() -> LeaseConfig {
    LeaseConfig {
        ttl: Duration::from_millis(1_000),
        renew_every: Duration::from_millis(300),
        standby_poll: Duration::from_millis(100),
    }
}

/// Waits until `lease` holds a fence, and returns it.
async fn fence_of(lease: &mut tokio::sync::watch::Receiver<Option<Fence>>) -> Fence {
    tokio::time::timeout(CATCH_UP_LIMIT, lease.wait_for(Option::is_some))
        .await
        .expect("the lease within the limit")
        .expect("the keeper runs")
        .clone()
        .expect("a fence")
}

/// The lease columns of `projection`'s checkpoint row: holder and epoch.
async fn lease_row(pool: &PgPool, projection: Projection) -> (Option<String>, i64) {
    sqlx::query_as(
        "SELECT lease_holder, lease_epoch FROM read_model.projection_checkpoints WHERE projection = $1",
    )
    .bind(projection.name())
    .fetch_one(pool)
    .await
    .expect("lease row")
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn two_keepers_starting_together_hold_each_lease_once_and_hand_over_on_release(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = pool(options, connect).await;
    let (keeper_a, leases_a) = LeaseKeeper::new(pool.clone(), "a", quick_leases());
    let (keeper_b, mut leases_b) = LeaseKeeper::new(pool.clone(), "b", quick_leases());
    let stop_a = CancellationToken::new();
    let stop_b = CancellationToken::new();
    let task_a = tokio::spawn(keeper_a.run(stop_a.clone()));
    let task_b = tokio::spawn(keeper_b.run(stop_b.clone()));
    // Both have ticked several times: whatever the race gave, it has settled.
    tokio::time::sleep(Duration::from_millis(800)).await;
    for projection in Projection::ALL {
        let a = leases_a[&projection].borrow().clone();
        let b = leases_b[&projection].borrow().clone();
        let holder = match (&a, &b) {
            (Some(fence), None) | (None, Some(fence)) => fence.clone(),
            _ => panic!("{projection}: exactly one keeper holds the lease: a {a:?}, b {b:?}"),
        };
        assert_eq!(
            lease_row(&pool, projection).await,
            (Some(holder.holder.to_string()), holder.epoch),
            "{projection}: the row names the holder"
        );
    }

    // A releases what it holds on shutdown; B takes everything at its next poll.
    stop_a.cancel();
    task_a.await.expect("keeper a");
    for projection in Projection::ALL {
        let fence = tokio::time::timeout(
            Duration::from_secs(2),
            fence_of(leases_b.get_mut(&projection).expect("receiver")),
        )
        .await
        .expect("b takes over within a poll or two of the release");
        assert_eq!(&*fence.holder, "b");
        assert!(leases_a[&projection].borrow().is_none());
    }
    stop_b.cancel();
    task_b.await.expect("keeper b");
    for projection in Projection::ALL {
        assert_eq!(lease_row(&pool, projection).await.0, None, "released at shutdown");
    }
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_holder_whose_lease_was_taken_over_writes_nothing(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = pool(options, connect).await;
    let store = EventStore::new(pool.clone());
    let mut ledger = Ledger::new(store.clone(), 11);
    ledger.open("EUR").await;
    ledger.open("EUR").await;
    ledger.transfer(0, 1, 500).await;
    let events = store.read_all(0, 100).await.expect("events");

    let (keeper_a, mut leases_a) = LeaseKeeper::new(pool.clone(), "a", quick_leases());
    let frozen = tokio::spawn(keeper_a.run(CancellationToken::new()));
    let fence_a = fence_of(leases_a.get_mut(&Projection::Accounts).expect("receiver")).await;
    // A stops renewing and never releases, as a frozen process; its lease lapses and B,
    // which started meanwhile, takes it.
    frozen.abort();
    let (keeper_b, mut leases_b) = LeaseKeeper::new(pool.clone(), "b", quick_leases());
    let stop_b = CancellationToken::new();
    let task_b = tokio::spawn(keeper_b.run(stop_b.clone()));
    let fence_b = fence_of(leases_b.get_mut(&Projection::Accounts).expect("receiver")).await;
    assert!(
        fence_b.epoch > fence_a.epoch,
        "a take-over raises the epoch: {fence_a:?} -> {fence_b:?}"
    );

    let refused = projector::apply::apply_batch(&pool, Projection::Accounts, &events, &[], &fence_a).await;
    assert!(
        matches!(refused, Err(projector::apply::BatchError::LeaseLost)),
        "the old holder's batch is refused: {refused:?}"
    );
    assert_eq!(
        checkpoint(&pool, Projection::Accounts).await.0,
        0,
        "nothing moved"
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM read_model.accounts")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(rows, 0, "nothing written");

    let head = events.last().expect("events").position;
    let applied = projector::apply::apply_batch(&pool, Projection::Accounts, &events, &[], &fence_b)
        .await
        .expect("the new holder applies");
    assert_eq!(applied, head);
    assert_eq!(checkpoint(&pool, Projection::Accounts).await.0, head);

    // A restarted process with A's name gets a new epoch, so the old fence stays out.
    let (keeper_a2, mut leases_a2) = LeaseKeeper::new(pool.clone(), "a", quick_leases());
    stop_b.cancel();
    task_b.await.expect("keeper b");
    let stop_a2 = CancellationToken::new();
    let task_a2 = tokio::spawn(keeper_a2.run(stop_a2.clone()));
    let fence_a2 = fence_of(leases_a2.get_mut(&Projection::Accounts).expect("receiver")).await;
    assert!(fence_a2.epoch > fence_b.epoch);
    let refused = projector::apply::apply_batch(&pool, Projection::Accounts, &events, &[], &fence_a).await;
    assert!(matches!(refused, Err(projector::apply::BatchError::LeaseLost)));
    stop_a2.cancel();
    task_a2.await.expect("keeper a2");
}
