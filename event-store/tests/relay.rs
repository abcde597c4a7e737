//! The relay against a real PostgreSQL and a real NATS JetStream (guarantee 3): every
//! committed event reaches the stream exactly once and in position order, through a
//! killed relay, a leader that loses its lock, a checkpoint behind the stream, a stranger
//! writing to the stream, and NATS going away for a while.
//!
//! Each test has its own database (`sqlx::test`), its own JetStream stream and subject
//! prefix, and deletes its stream at the end, so tests run in parallel against the shared
//! NATS. The test that stops NATS starts a private `nats-server` and never touches the
//! shared one.

use std::future::Future;
use std::net::{TcpListener, TcpStream};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream::Stream};
use event_store::relay::{self, RelayConfig};
use event_store::{AppendRequest, EventStore, ExpectedVersion, Metadata, NewEvent, RecordedEvent};
use futures::FutureExt;
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Row};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How long a test waits for the relay to catch up before it fails: far beyond what any
/// of these tests needs (they move a few thousand events), so that only a relay that
/// stopped relaying fails it, never a slow machine.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(60);

/// The wake-up test's poll interval: so long that an event arriving well within it can
/// only have been carried by the append's notification.
const LONG_POLL: Duration = Duration::from_secs(30);

/// How long the wake-up test allows for one event: a third of [`LONG_POLL`].
const WAKE_UP_LIMIT: Duration = Duration::from_secs(10);

fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// A relay configuration with a stream, subject prefix and name of its own, and short
/// retry pauses so that takeovers happen quickly.
fn test_config() -> RelayConfig {
    let id = Uuid::new_v4().simple().to_string();
    RelayConfig {
        stream_name: format!("TEST_RELAY_{id}"),
        subject_prefix: format!("test.{id}"),
        retry_interval: Duration::from_millis(50),
        ..RelayConfig::new(format!("test-{id}"))
    }
}

fn event(n: u64) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "FundsDeposited".into(),
        schema_version: 1,
        data: json!({ "amount": n, "reference": "relay test" }),
        metadata: Metadata {
            actor: "test".into(),
            correlation_id: Uuid::now_v7().to_string(),
            causation_id: None,
            command: "Deposit".into(),
            idempotency_key: None,
            // Every other event carries a trace context, as a request with a
            // `traceparent` header leaves it.
            trace: n
                .is_multiple_of(2)
                .then(|| format!("00-{:032x}-{:016x}-01", n + 1, n + 1)),
        },
    }
}

/// Appends `count` events, one new account stream per event, in one transaction.
async fn append(store: &EventStore, count: u64) {
    let requests: Vec<AppendRequest> = (0..count)
        .map(|n| {
            AppendRequest::single(
                format!("account-{}", Uuid::now_v7()),
                ExpectedVersion::NoStream,
                vec![event(n)],
            )
        })
        .collect();
    for outcome in store.append_batch(&requests).await.expect("append") {
        outcome.expect("accepted");
    }
}

/// Appends small batches until stopped, so that the relay always has work in flight;
/// returns how many events it appended.
fn keep_appending(store: EventStore, stop: Arc<AtomicBool>) -> JoinHandle<u64> {
    tokio::spawn(async move {
        let mut appended = 0;
        while !stop.load(Ordering::Relaxed) {
            append(&store, 25).await;
            appended += 25;
        }
        appended
    })
}

fn spawn_relay(store: &EventStore, client: &async_nats::Client, config: &RelayConfig) -> JoinHandle<()> {
    tokio::spawn(relay::run(
        store.clone(),
        client.clone(),
        config.clone(),
        CancellationToken::new(),
    ))
}

/// Kills a relay the hard way: its task is dropped wherever it is, with publishes in
/// flight, an unsaved checkpoint and its lock connection simply gone.
async fn kill(relay: JoinHandle<()>) {
    relay.abort();
    let _ = relay.await;
}

async fn stream_of(client: &async_nats::Client, config: &RelayConfig) -> Stream {
    event_store::bus::ensure_stream(
        &jetstream::new(client.clone()),
        &config.stream_name,
        &config.subject_prefix,
        &config.stream_limits,
    )
    .await
    .expect("stream")
}

async fn message_count(stream: &mut Stream) -> u64 {
    stream.info().await.expect("stream info").state.messages
}

/// Waits until the stream holds at least `count` messages. A failed look (NATS
/// reconnecting) counts as not yet.
async fn wait_for_messages(stream: &mut Stream, count: u64, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let held = match stream.info().await {
            Ok(info) => info.state.messages,
            Err(_) => 0,
        };
        if held >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the stream holds {held} messages after {limit:?}, expected {count}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every message of the stream, in stream order.
async fn messages(stream: &mut Stream) -> Vec<async_nats::jetstream::message::StreamMessage> {
    let state = stream.info().await.expect("stream info").state.clone();
    let mut messages = Vec::new();
    if state.messages == 0 {
        return messages;
    }
    for sequence in state.first_sequence..=state.last_sequence {
        messages.push(stream.get_raw_message(sequence).await.expect("message"));
    }
    messages
}

fn header<'a>(message: &'a async_nats::jetstream::message::StreamMessage, name: &str) -> &'a str {
    message
        .headers
        .get(name)
        .map(|value| value.as_str())
        .unwrap_or_else(|| panic!("message {} has no {name} header", message.sequence))
}

async fn all_events(store: &EventStore) -> Vec<RecordedEvent> {
    let mut events: Vec<RecordedEvent> = Vec::new();
    loop {
        let after = events.last().map_or(0, |event| event.position);
        let page = store.read_all(after, 10_000).await.expect("read all");
        if page.is_empty() {
            return events;
        }
        events.extend(page);
    }
}

/// The stream holds exactly the committed events, each once, in position order, each
/// on its subject with its id, position, type and trace context headers and the
/// envelope as body.
async fn assert_stream_holds_every_event_once_in_order(
    store: &EventStore,
    stream: &mut Stream,
    config: &RelayConfig,
) {
    let events = all_events(store).await;
    let messages = messages(stream).await;
    let positions: Vec<i64> = messages
        .iter()
        .map(|message| header(message, relay::POSITION_HEADER).parse().expect("position"))
        .collect();
    assert_eq!(
        positions,
        (1..=events.len() as i64).collect::<Vec<_>>(),
        "stream positions are not exactly 1..={}",
        events.len()
    );
    for (message, event) in messages.iter().zip(&events) {
        assert_eq!(
            message.subject.as_str(),
            relay::subject_for(&config.subject_prefix, &event.stream_id)
        );
        assert_eq!(header(message, "Nats-Msg-Id"), event.event_id.to_string());
        assert_eq!(header(message, relay::EVENT_TYPE_HEADER), event.event_type);
        assert_eq!(
            message
                .headers
                .get(relay::TRACEPARENT_HEADER)
                .map(|value| value.as_str()),
            event.metadata.trace.as_deref(),
            "the message carries its event's trace context, and only then"
        );
        let body: RecordedEvent = serde_json::from_slice(&message.payload).expect("envelope");
        assert_eq!(&body, event);
    }
}

/// Runs `body`, then deletes the test's stream whether `body` passed or panicked.
async fn with_stream_cleanup<F: Future<Output = ()>>(
    client: &async_nats::Client,
    config: &RelayConfig,
    body: F,
) {
    let outcome = AssertUnwindSafe(body).catch_unwind().await;
    let _ = jetstream::new(client.clone())
        .delete_stream(&config.stream_name)
        .await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn every_event_reaches_the_stream_once_in_order_and_an_append_wakes_the_relay(pool: PgPool) {
    let store = EventStore::new(pool);
    let client = async_nats::connect(nats_url()).await.expect("nats");
    let config = RelayConfig {
        poll_interval: LONG_POLL,
        batch_size: 100,
        max_in_flight: 16,
        ..test_config()
    };
    with_stream_cleanup(&client, &config, async {
        // More events than one batch and more than are in flight at once.
        append(&store, 350).await;
        let mut stream = stream_of(&client, &config).await;
        let relay = spawn_relay(&store, &client, &config);
        wait_for_messages(&mut stream, 350, CATCH_UP_LIMIT).await;
        assert_stream_holds_every_event_once_in_order(&store, &mut stream, &config).await;

        // The relay is idle now, waiting up to LONG_POLL: only the notification the
        // append sends at commit can bring this event over in time.
        let appended = Instant::now();
        append(&store, 1).await;
        wait_for_messages(&mut stream, 351, WAKE_UP_LIMIT).await;
        assert!(appended.elapsed() < WAKE_UP_LIMIT);
        assert_stream_holds_every_event_once_in_order(&store, &mut stream, &config).await;
        assert_eq!(
            relay::load_checkpoint(&store, &config.name)
                .await
                .expect("checkpoint"),
            351
        );
        kill(relay).await;
    })
    .await;
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_relay_killed_mid_stream_and_restarted_leaves_every_event_once_in_order(pool: PgPool) {
    let store = EventStore::new(pool);
    let client = async_nats::connect(nats_url()).await.expect("nats");
    // Small batches and few publishes in flight, so that a kill lands between acks and
    // checkpoint saves rather than after everything is done.
    let config = RelayConfig {
        batch_size: 50,
        max_in_flight: 8,
        ..test_config()
    };
    with_stream_cleanup(&client, &config, async {
        let mut stream = stream_of(&client, &config).await;
        let stop = Arc::new(AtomicBool::new(false));
        let writer = keep_appending(store.clone(), stop.clone());
        let mut published_at_kill = Vec::new();
        for _ in 0..5 {
            let relay = spawn_relay(&store, &client, &config);
            let before = message_count(&mut stream).await;
            // Wait until this relay is visibly publishing, then kill it.
            wait_for_messages(&mut stream, before + 1, CATCH_UP_LIMIT).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            kill(relay).await;
            published_at_kill.push(message_count(&mut stream).await);
        }
        stop.store(true, Ordering::Relaxed);
        let appended = writer.await.expect("writer");
        assert!(
            published_at_kill.iter().any(|&published| published < appended),
            "every kill came after the relay had finished: {published_at_kill:?} of {appended}"
        );

        let relay = spawn_relay(&store, &client, &config);
        wait_for_messages(&mut stream, appended, CATCH_UP_LIMIT).await;
        // Anything a killed relay still had queued has had its chance to land by now.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_stream_holds_every_event_once_in_order(&store, &mut stream, &config).await;
        kill(relay).await;
    })
    .await;
}

/// Which of the test's relays holds the advisory lock, by the `application_name` of its
/// pool's connections.
async fn lock_holders(pool: &PgPool) -> Vec<String> {
    sqlx::query(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted \
         AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_all(pool)
    .await
    .expect("locks")
    .iter()
    .map(|row| row.get::<String, _>(0))
    .collect()
}

async fn wait_for_leader(pool: &PgPool, not: Option<&str>) -> String {
    let deadline = Instant::now() + CATCH_UP_LIMIT;
    loop {
        let holders = lock_holders(pool).await;
        assert!(
            holders.len() <= 1,
            "more than one relay holds the lock: {holders:?}"
        );
        if let Some(holder) = holders.first()
            && Some(holder.as_str()) != not
        {
            return holder.clone();
        }
        assert!(Instant::now() < deadline, "no relay took the lock");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn of_two_relays_with_one_name_one_publishes_and_the_other_takes_over_when_it_dies(
    pool_options: PgPoolOptions,
    connect_options: PgConnectOptions,
) {
    let connect = |name: &str| {
        pool_options
            .clone()
            .max_connections(4)
            .connect_with(connect_options.clone().application_name(name))
    };
    let observer = connect("observer").await.expect("observer pool");
    let store = EventStore::new(observer.clone());
    let stores = [
        EventStore::new(connect("relay-a").await.expect("pool a")),
        EventStore::new(connect("relay-b").await.expect("pool b")),
    ];
    let client = async_nats::connect(nats_url()).await.expect("nats");
    let config = RelayConfig {
        batch_size: 50,
        max_in_flight: 8,
        ..test_config()
    };
    with_stream_cleanup(&client, &config, async {
        let mut stream = stream_of(&client, &config).await;
        let stop = Arc::new(AtomicBool::new(false));
        let writer = keep_appending(store.clone(), stop.clone());
        let mut relays = [
            Some(spawn_relay(&stores[0], &client, &config)),
            Some(spawn_relay(&stores[1], &client, &config)),
        ];
        let index = |name: &str| usize::from(name == "relay-b");

        // One leader, and it stays the only one while both run.
        let first = wait_for_leader(&observer, None).await;
        for _ in 0..10 {
            assert_eq!(lock_holders(&observer).await, vec![first.clone()]);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // Its lock connection dies while its process lives on: it may still be
        // publishing a batch when the other relay takes over.
        let terminated: bool = sqlx::query_scalar(
            "SELECT pg_terminate_backend(l.pid) FROM pg_locks l \
             WHERE l.locktype = 'advisory' AND l.granted \
             AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .fetch_one(&observer)
        .await
        .expect("terminate");
        assert!(terminated);
        let before = message_count(&mut stream).await;
        wait_for_messages(&mut stream, before + 100, CATCH_UP_LIMIT).await;

        // Now the current leader's process dies; the other must take over and finish.
        let leader = wait_for_leader(&observer, None).await;
        if let Some(relay) = relays[index(&leader)].take() {
            kill(relay).await;
        }
        let successor = wait_for_leader(&observer, Some(&leader)).await;
        assert_ne!(successor, leader);

        stop.store(true, Ordering::Relaxed);
        let appended = writer.await.expect("writer");
        wait_for_messages(&mut stream, appended, CATCH_UP_LIMIT).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_stream_holds_every_event_once_in_order(&store, &mut stream, &config).await;
        for relay in relays.into_iter().flatten() {
            kill(relay).await;
        }
    })
    .await;
}

/// The stream the relay would create, created first with some limits changed.
async fn precreate_stream(
    client: &async_nats::Client,
    config: &RelayConfig,
    change: impl FnOnce(&mut jetstream::stream::Config),
) -> Stream {
    let mut stream_config = jetstream::stream::Config {
        name: config.stream_name.clone(),
        subjects: vec![format!("{}.>", config.subject_prefix)],
        storage: jetstream::stream::StorageType::File,
        duplicate_window: relay::DUPLICATE_WINDOW,
        ..Default::default()
    };
    change(&mut stream_config);
    jetstream::new(client.clone())
        .create_stream(stream_config)
        .await
        .expect("create stream")
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_relay_whose_checkpoint_lags_the_stream_resumes_after_the_streams_last_event(pool: PgPool) {
    let store = EventStore::new(pool);
    let client = async_nats::connect(nats_url()).await.expect("nats");
    let config = test_config();
    with_stream_cleanup(&client, &config, async {
        // A short duplicate window, so that JetStream cannot hide a republished event.
        let mut stream = precreate_stream(&client, &config, |stream| {
            stream.duplicate_window = Duration::from_millis(200);
        })
        .await;
        append(&store, 200).await;
        let relay = spawn_relay(&store, &client, &config);
        wait_for_messages(&mut stream, 200, CATCH_UP_LIMIT).await;
        kill(relay).await;

        // As if the checkpoint's save had failed after JetStream acknowledged everything,
        // and the relay came back after the duplicate window.
        sqlx::query("UPDATE relay_checkpoints SET position = 0 WHERE relay = $1")
            .bind(&config.name)
            .execute(store.pool())
            .await
            .expect("rewind");
        tokio::time::sleep(Duration::from_secs(1)).await;
        append(&store, 10).await;
        let relay = spawn_relay(&store, &client, &config);
        wait_for_messages(&mut stream, 210, CATCH_UP_LIMIT).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_stream_holds_every_event_once_in_order(&store, &mut stream, &config).await;
        assert_eq!(
            relay::load_checkpoint(&store, &config.name)
                .await
                .expect("checkpoint"),
            210
        );
        kill(relay).await;
    })
    .await;
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn an_event_the_stream_refuses_holds_back_every_later_one_until_it_is_taken(pool: PgPool) {
    let store = EventStore::new(pool);
    let client = async_nats::connect(nats_url()).await.expect("nats");
    let config = RelayConfig {
        max_in_flight: 64,
        ..test_config()
    };
    with_stream_cleanup(&client, &config, async {
        // A stream that refuses large messages: event 31 is too large, the events around
        // it are not, and all of them are in flight together.
        let mut stream = precreate_stream(&client, &config, |stream| stream.max_message_size = 4_096).await;
        append(&store, 30).await;
        let large = NewEvent {
            data: json!({ "amount": 1, "reference": "x".repeat(8_192) }),
            ..event(0)
        };
        store
            .append(AppendRequest::single(
                format!("account-{}", Uuid::now_v7()),
                ExpectedVersion::NoStream,
                vec![large],
            ))
            .await
            .expect("append large");
        append(&store, 30).await;
        let relay = spawn_relay(&store, &client, &config);
        wait_for_messages(&mut stream, 30, CATCH_UP_LIMIT).await;
        // The relay keeps failing on event 31 and retrying; nothing after it may be
        // stored meanwhile, or it would precede event 31 in the stream.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(message_count(&mut stream).await, 30);

        let mut stream_config = stream.info().await.expect("info").config.clone();
        stream_config.max_message_size = -1;
        jetstream::new(client.clone())
            .update_stream(stream_config)
            .await
            .expect("lift the limit");
        wait_for_messages(&mut stream, 61, CATCH_UP_LIMIT).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_stream_holds_every_event_once_in_order(&store, &mut stream, &config).await;
        kill(relay).await;
    })
    .await;
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_message_from_someone_else_in_the_stream_does_not_break_the_relays_order(pool: PgPool) {
    let store = EventStore::new(pool);
    let client = async_nats::connect(nats_url()).await.expect("nats");
    let config = test_config();
    with_stream_cleanup(&client, &config, async {
        append(&store, 50).await;
        let mut stream = stream_of(&client, &config).await;
        let relay = spawn_relay(&store, &client, &config);
        wait_for_messages(&mut stream, 50, CATCH_UP_LIMIT).await;

        let stranger = format!("{}.other.stranger", config.subject_prefix);
        jetstream::new(client.clone())
            .publish(stranger.clone(), "not an event".into())
            .await
            .expect("publish")
            .await
            .expect("ack");
        append(&store, 50).await;
        wait_for_messages(&mut stream, 101, CATCH_UP_LIMIT).await;

        let all = messages(&mut stream).await;
        assert_eq!(all.len(), 101);
        assert_eq!(all[50].subject.as_str(), stranger);
        let positions: Vec<i64> = all
            .iter()
            .filter(|message| message.subject.as_str() != stranger)
            .map(|message| header(message, relay::POSITION_HEADER).parse().expect("position"))
            .collect();
        assert_eq!(positions, (1..=100).collect::<Vec<_>>());
        kill(relay).await;
    })
    .await;
}

/// A `nats-server` of this test's own on a free port, with JetStream storing under a
/// directory of its own; killed (and its directory removed) when dropped, whether the
/// test passed or not.
struct PrivateNats {
    port: u16,
    store_dir: PathBuf,
    child: Option<Child>,
}

impl PrivateNats {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("free port")
            .local_addr()
            .expect("address")
            .port();
        let store_dir = std::env::temp_dir().join(format!("relay-test-nats-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&store_dir).expect("store dir");
        let mut server = Self {
            port,
            store_dir,
            child: None,
        };
        server.restart();
        server
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again, on the same port and store) and waits until it accepts
    /// connections.
    fn restart(&mut self) {
        let binary = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|path| std::path::Path::new(path).exists())
            .unwrap_or("nats-server");
        let child = Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(&self.store_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + CATCH_UP_LIMIT;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server as a crash would.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.store_dir);
    }
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn the_relay_catches_up_in_order_after_nats_was_away(pool: PgPool) {
    let store = EventStore::new(pool);
    let mut nats = PrivateNats::start();
    // Connected the way every process connects (`service::nats::connect`): it keeps
    // retrying in the background.
    let client = async_nats::ConnectOptions::new()
        .name("relay-test")
        .retry_on_initial_connect()
        .connect(nats.url())
        .await
        .expect("nats");
    let config = test_config();
    let mut stream = stream_of(&client, &config).await;
    let relay = spawn_relay(&store, &client, &config);

    append(&store, 100).await;
    wait_for_messages(&mut stream, 100, CATCH_UP_LIMIT).await;

    // NATS dies with the relay mid-stream; appends go on, PostgreSQL being the record.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = keep_appending(store.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    nats.stop();
    let head_when_stopped = store.head().await.expect("head");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let appended = 100 + writer.await.expect("appends succeed while NATS is down");
    assert!(store.head().await.expect("head") > head_when_stopped);
    assert_eq!(store.head().await.expect("head"), appended as i64);

    nats.restart();
    wait_for_messages(&mut stream, appended, CATCH_UP_LIMIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_stream_holds_every_event_once_in_order(&store, &mut stream, &config).await;
    kill(relay).await;
    // The private server and its store go with `nats`.
}
