//! The relay: publishes every committed event to JetStream, at least once and in
//! position order (guarantee 3).
//!
//! It reads what is committed (never from inside an append transaction, so a crash
//! between commit and publish loses nothing), publishes each event with
//! `Nats-Msg-Id` = event id so that JetStream drops a republished duplicate within its
//! window, keeps up to [`RelayConfig::max_in_flight`] publishes awaiting their acks, and
//! advances its checkpoint in PostgreSQL only past acknowledged events. It is woken by
//! the notification every append sends at commit ([`crate::APPENDED_CHANNEL`]) and polls
//! as a safety net. On any failure it stops, waits, and starts a new round.
//!
//! One relay is active per name: leadership is a PostgreSQL advisory lock held on a
//! connection of its own, so when the leader's process dies its lock goes with the
//! connection and a standby takes over.
//!
//! # Order in the stream, and what consumers may assume
//!
//! Many publishes in flight could let a later event overtake an earlier one: if publish N
//! is lost (it sat in the write buffer of a connection that dropped, or the server
//! refused it) while N+1, sent after it, is stored, a retry stores N after N+1. The relay
//! fences every publish instead. The first publish of a round carries
//! `Nats-Expected-Last-Sequence` (the stream's last sequence when the round began), every
//! later one also `Nats-Expected-Last-Msg-Id` (the event id published just before it), so
//! the server stores an event only directly after its predecessor. Once one publish fails,
//! every later one in flight is refused too, and the round ends.
//!
//! A round starts from the stream's own tail, not blindly from the checkpoint: it reads
//! the stream's last message, checks against PostgreSQL that its `Nats-Msg-Id` is the
//! event at its [`POSITION_HEADER`], and publishes from the next position (from the
//! checkpoint when the stream holds no event of ours). So an acknowledged event whose ack
//! was lost is not published again, a tail the stream lost is published again, and a
//! deposed leader (its lock connection died while it was publishing) cannot interleave
//! with its successor: whichever publish comes second is refused or dropped as a duplicate.
//!
//! Consumers may therefore assume that positions strictly increase along the stream and
//! that no event is stored twice. They may not assume the stream is complete: JetStream
//! can lose acknowledged messages (ARCHITECTURE.md), and a stream recreated empty is
//! refilled from the checkpoint on, not from position 1. A consumer that sees a position
//! more than one past its own checkpoint fills the gap from PostgreSQL, and one that sees
//! a position at or below it skips it (a consumer's redelivery).
//!
//! # NATS going away
//!
//! async-nats 0.51 with `retry_on_initial_connect` hands out a client before it has
//! connected and reconnects for ever in the background, at most 4 s apart. While it is
//! not connected, publishes and requests wait in the client's command queue (2,048
//! commands) and go out when the connection returns; what sat in the old connection's
//! write buffer when it dropped is lost, and its acks never come. Nothing here waits
//! without bound: every publish, ack and JetStream request waits at most
//! [`NATS_TIMEOUT`], the relay publishes only while the client reports itself connected,
//! at most [`RelayConfig::max_in_flight`] publishes are outstanding, and failed rounds
//! back off up to [`MAX_RETRY_INTERVAL`]. A publish queued before the drop and sent late
//! is fenced like any other: stored only directly after its predecessor, else refused.

use std::collections::VecDeque;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::connection::State as ConnectionState;
use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
use bytes::Bytes;
use futures::FutureExt;
use sqlx::postgres::PgListener;
use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, instrument, warn};
use uuid::Uuid;

use crate::bus::{self, StreamLimits};
use crate::envelope::RecordedEvent;
use crate::error::{StoreError, error_chain};
use crate::read::{EventStore, check_contiguous};
use crate::trace_context;

/// The JetStream stream of API.md.
pub const STREAM_NAME: &str = "LEDGER_EVENTS";
/// Subjects are `<prefix>.<stream category>.<uuid>` (API.md).
pub const SUBJECT_PREFIX: &str = "ledger.events";
/// Header carrying the event's global position, so consumers need not parse the body
/// to check order.
pub const POSITION_HEADER: &str = "Ledger-Position";
/// Header carrying the event type, for consumers that filter without decoding.
pub const EVENT_TYPE_HEADER: &str = "Ledger-Event-Type";

/// The header carrying the W3C trace context of the request that caused the event, on
/// messages whose event has one, so that a consumer can continue the request's trace
/// without opening the body (W3C Trace Context): the relay's `publish` span (a child of
/// the metadata's `trace`) when spans are exported, else the metadata's `trace` itself.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// The longest the relay waits on NATS for one thing: handing a publish to the
/// connection, its ack, or a JetStream API request (stream info, last message). An ack
/// on this machine takes well under a millisecond; five seconds is async-nats' own
/// default for acks, long enough for a loaded server and short enough that a lost
/// publish ends its round promptly.
pub const NATS_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest pause between failed rounds. The pause doubles from
/// [`RelayConfig::retry_interval`] while rounds keep failing (NATS or PostgreSQL away),
/// so an outage costs a log line every few seconds rather than several a second; five
/// seconds is about the client's own reconnect pace (at most 4 s between attempts), so
/// the relay resumes within seconds of NATS returning.
pub const MAX_RETRY_INTERVAL: Duration = Duration::from_secs(5);

/// How the relay runs. [`RelayConfig::new`] gives the production values; tests give each
/// relay its own stream and prefix.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Names the checkpoint row and the advisory lock: one active relay per name.
    pub name: String,
    pub stream_name: String,
    pub subject_prefix: String,
    /// The stream's replication and retention, applied when the relay creates or finds it.
    pub stream_limits: StreamLimits,
    /// Events read from PostgreSQL per round; bounds memory and the checkpoint's step.
    pub batch_size: i64,
    /// Publishes awaiting their ack at once. JetStream reaches about 130k msg/s with 256
    /// in flight on this machine against about 10k msg/s awaiting each one
    /// (ARCHITECTURE.md); more buys little and costs memory on both sides.
    pub max_in_flight: usize,
    /// How often to look for new events when no append notification arrives. The
    /// notification is the fast path and is not lost while the listener's connection
    /// lives (a lost connection triggers a read at once), so this is only a safety net,
    /// and each poll is a statement an idle system would issue for nothing.
    pub poll_interval: Duration,
    /// How long to wait before retrying after NATS or PostgreSQL failed (doubling up to
    /// [`MAX_RETRY_INTERVAL`] while failures continue), and how often a standby tries to
    /// become the leader.
    pub retry_interval: Duration,
}

impl RelayConfig {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            stream_name: STREAM_NAME.to_owned(),
            subject_prefix: SUBJECT_PREFIX.to_owned(),
            stream_limits: StreamLimits::default(),
            batch_size: 2_048,
            max_in_flight: 256,
            poll_interval: IDLE_POLL_INTERVAL,
            retry_interval: Duration::from_millis(500),
        }
    }
}

/// The relay's safety-net poll ([`RelayConfig::poll_interval`]): long, because the
/// append notification wakes the relay at every commit; one statement per 10 s keeps an
/// idle system near silent (the README's idle goal: under one statement per second).
pub const IDLE_POLL_INTERVAL: Duration = Duration::from_secs(10);

/// Why one relay round failed; the relay logs it and starts a new round.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("event store failed")]
    Store(#[from] StoreError),
    #[error("database failed")]
    Database(#[from] sqlx::Error),
    #[error("could not create, find or update the JetStream stream")]
    Stream(#[from] jetstream::context::CreateStreamError),
    #[error("could not read the JetStream stream's state")]
    StreamInfo(#[from] jetstream::stream::InfoError),
    #[error("could not read the JetStream stream's last message")]
    LastMessage(#[from] jetstream::stream::RawMessageError),
    #[error("publishing to JetStream failed")]
    Publish(#[from] jetstream::context::PublishError),
    #[error("could not encode an event")]
    Encode(#[from] serde_json::Error),
    #[error("not connected to NATS")]
    NatsUnavailable,
    /// JetStream stored an event at another sequence than the fence allowed: something
    /// else writes to the stream. The next round starts again from the stream's tail.
    #[error("JetStream stored position {position} at sequence {stored}, expected {expected}")]
    OutOfStep {
        position: i64,
        expected: u64,
        stored: u64,
    },
    #[error("lost the relay's advisory lock")]
    LostLeadership,
}

/// The NATS subject of a stream's events: `<prefix>.<category>.<id>`.
pub fn subject_for(prefix: &str, stream_id: &str) -> String {
    let (category, id) = stream_id.split_once('-').unwrap_or(("other", stream_id));
    // Subject tokens may not hold separators or wildcards.
    let clean = |token: &str| -> String {
        token
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    format!("{prefix}.{}.{}", clean(category), clean(id))
}

/// JetStream's de-duplication window; two minutes is the server default. A round starts
/// after the stream's last event, so the relay does not normally publish an event the
/// stream holds; the window covers the rest: a publish sent late after a reconnect and
/// a deposed leader racing its successor, both within seconds.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Runs the relay until `shutdown` is cancelled: waits for leadership, then publishes,
/// recovering from every failure with a new round that starts from the stream's tail.
pub async fn run(
    store: EventStore,
    client: async_nats::Client,
    config: RelayConfig,
    shutdown: CancellationToken,
) {
    let jetstream = jetstream::ContextBuilder::new()
        .timeout(NATS_TIMEOUT)
        .ack_timeout(NATS_TIMEOUT)
        // Our own queue bounds what is in flight; the context's bound only has to cover
        // it, plus the acks of a failed round that are still being drained.
        .max_ack_inflight(config.max_in_flight.max(1) * 2)
        .backpressure_on_inflight(true)
        .build(client.clone());
    // Exported from the start, so a standby reads 0 rather than nothing: the alert and
    // `cluster.sh status` sum the gauge over the instances.
    metrics::gauge!("relay_active", "relay" => config.name.clone()).set(0.0);
    let mut pause = config.retry_interval;
    let mut awaiting_nats = false;
    while !shutdown.is_cancelled() {
        // Not a failed round: at start the client is still connecting, and while it is
        // away this instance should leave the lock to one that reaches NATS.
        if client.connection_state() != ConnectionState::Connected {
            if !awaiting_nats {
                info!(relay = %config.name, "waiting for NATS before taking the relay");
                awaiting_nats = true;
            }
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = tokio::time::sleep(config.retry_interval) => {}
            }
            continue;
        }
        awaiting_nats = false;
        match lead(&store, &client, &jetstream, &config, &shutdown).await {
            Ok(()) => pause = config.retry_interval,
            Err(error) => {
                metrics::counter!("relay_failures_total").increment(1);
                warn!(
                    error = %error_chain(&error),
                    relay = %config.name,
                    retry_in_ms = pause.as_millis() as u64,
                    "relay round failed; starting again from the stream's tail"
                );
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(MAX_RETRY_INTERVAL.max(config.retry_interval));
                continue;
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = tokio::time::sleep(config.retry_interval) => {}
        }
    }
}

/// One term of office: take the lock (or return to wait), then publish until shutdown or
/// failure. The lock is released when `leadership` is dropped or its connection dies.
#[instrument(skip_all, fields(relay = %config.name))]
async fn lead(
    store: &EventStore,
    client: &async_nats::Client,
    jetstream: &jetstream::Context,
    config: &RelayConfig,
    shutdown: &CancellationToken,
) -> Result<(), RelayError> {
    let mut leadership = store.pool().acquire().await?.detach();
    let acquired: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
        .bind(lock_key(&config.name))
        .fetch_one(&mut leadership)
        .await?;
    if !acquired {
        return Ok(());
    }
    info!("relay is active");
    metrics::gauge!("relay_active", "relay" => config.name.clone()).set(1.0);
    let result = publish_loop(store, client, jetstream, config, shutdown, &mut leadership).await;
    metrics::gauge!("relay_active", "relay" => config.name.clone()).set(0.0);
    // Closing the connection releases the advisory lock.
    let _ = leadership.close().await;
    result
}

fn lock_key(name: &str) -> String {
    format!("eventledger-relay:{name}")
}

/// Where a round starts: the last position the stream holds and the sequence it holds it
/// at, with the event id a fence names.
#[derive(Debug, Clone, Copy)]
struct Tail {
    /// The last position published; the round reads from the one after it.
    position: i64,
    /// The stream's last sequence, which the next publish must follow; 0 for a stream
    /// that never held a message (no fence is possible then).
    sequence: u64,
    /// The event published just before, within this round: the next publish names it in
    /// `Nats-Expected-Last-Msg-Id`. `None` at the start of a round, because a restarted
    /// server forgets the last message id while it remembers the last sequence.
    event_id: Option<Uuid>,
}

async fn publish_loop(
    store: &EventStore,
    client: &async_nats::Client,
    jetstream: &jetstream::Context,
    config: &RelayConfig,
    shutdown: &CancellationToken,
    leadership: &mut PgConnection,
) -> Result<(), RelayError> {
    if client.connection_state() != ConnectionState::Connected {
        return Err(RelayError::NatsUnavailable);
    }
    let mut listener = PgListener::connect_with(store.pool()).await?;
    listener.listen(crate::APPENDED_CHANNEL).await?;
    let mut stream = bus::ensure_stream(
        jetstream,
        &config.stream_name,
        &config.subject_prefix,
        &config.stream_limits,
    )
    .await?;
    let checkpoint = load_checkpoint(store, &config.name).await?;
    let mut tail = find_tail(store, &mut stream, checkpoint).await?;
    if tail.position > checkpoint {
        save_checkpoint(store, &config.name, tail.position).await?;
    }

    while !shutdown.is_cancelled() {
        // A leader whose lock connection died may have a successor already: stop.
        leadership.ping().await.map_err(|_| RelayError::LostLeadership)?;
        let events = store.read_all(tail.position, config.batch_size).await?;
        if events.is_empty() {
            tokio::select! {
                () = shutdown.cancelled() => {}
                // `None`: the listener's connection was lost, and with it any
                // notification sent meanwhile; read again now rather than at the poll.
                notification = listener.try_recv() => { notification?; }
                () = tokio::time::sleep(config.poll_interval) => {}
            }
            continue;
        }
        // Asserted again here, where the order matters (guarantee 2, consumed).
        check_contiguous(tail.position, &events)?;
        tail = publish_in_order(client, jetstream, config, tail, &events).await?;
        save_checkpoint(store, &config.name, tail.position).await?;
        // The commits announced while this batch was published are covered by the next
        // read; their notifications would otherwise pile up unread for as long as the
        // relay stays busy.
        drain_notifications(&mut listener)?;
        metrics::counter!("relay_published_total").increment(events.len() as u64);
        metrics::gauge!("relay_position", "relay" => config.name.clone()).set(tail.position as f64);
    }
    Ok(())
}

/// The most notifications dropped after one batch; what remains is dropped after the
/// next one. A bound on one pass, far above the commits one batch's publishing spans.
const MAX_NOTIFICATIONS_DRAINED: usize = 100_000;

/// Drops the notifications already received, without waiting for more. Reading from the
/// listener's socket is cancel-safe in sqlx, so polling once and giving up loses nothing.
fn drain_notifications(listener: &mut PgListener) -> Result<(), sqlx::Error> {
    for _ in 0..MAX_NOTIFICATIONS_DRAINED {
        match listener.try_recv().now_or_never() {
            Some(Ok(Some(_))) => {}
            // Nothing ready, or the connection was lost (the next wait reconnects).
            None | Some(Ok(None)) => return Ok(()),
            Some(Err(error)) => return Err(error),
        }
    }
    Ok(())
}

/// Reads where the stream ends. Its last message, when it is one of ours and PostgreSQL
/// holds the same event at the position it names, is where the round starts; otherwise
/// the round starts from `checkpoint` (the stream is new, was emptied, or its last
/// message is not ours).
#[instrument(skip_all, fields(checkpoint))]
async fn find_tail(
    store: &EventStore,
    stream: &mut jetstream::stream::Stream,
    checkpoint: i64,
) -> Result<Tail, RelayError> {
    let state = stream.info().await?.state.clone();
    let from_checkpoint = Tail {
        position: checkpoint,
        sequence: state.last_sequence,
        event_id: None,
    };
    if state.messages == 0 {
        return Ok(from_checkpoint);
    }
    let last = match stream.get_raw_message(state.last_sequence).await {
        Ok(last) => last,
        // Deleted by hand: the sequence still fences, the position is unknown.
        Err(error) if error.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
            return Ok(from_checkpoint);
        }
        Err(error) => return Err(error.into()),
    };
    let position = last
        .headers
        .get(POSITION_HEADER)
        .and_then(|value| value.as_str().parse::<i64>().ok());
    let event_id = last
        .headers
        .get(async_nats::header::NATS_MESSAGE_ID)
        .and_then(|value| Uuid::parse_str(value.as_str()).ok());
    let (Some(position), Some(event_id)) = (position, event_id) else {
        warn!(
            sequence = last.sequence,
            "the stream's last message is not the relay's; resuming from the checkpoint"
        );
        return Ok(from_checkpoint);
    };
    let stored: Option<Uuid> = sqlx::query_scalar("SELECT event_id FROM events WHERE position = $1")
        .bind(position)
        .fetch_optional(store.pool())
        .await?;
    if stored != Some(event_id) {
        warn!(position, %event_id, "the stream's last message is not the event PostgreSQL holds at its position; resuming from the checkpoint");
        return Ok(from_checkpoint);
    }
    if position < checkpoint {
        warn!(
            position,
            checkpoint, "the stream lost events the relay had published; publishing them again"
        );
    }
    Ok(Tail {
        position,
        sequence: last.sequence,
        event_id: None,
    })
}

/// Publishes `events` (which follow `tail`) in order, each fenced to its predecessor,
/// with up to `max_in_flight` awaiting acks; returns the new tail once every one of them
/// is acknowledged at the sequence the fence expected.
async fn publish_in_order(
    client: &async_nats::Client,
    jetstream: &jetstream::Context,
    config: &RelayConfig,
    mut tail: Tail,
    events: &[RecordedEvent],
) -> Result<Tail, RelayError> {
    // Each in-flight event keeps its `publish` span open until its ack is confirmed.
    let mut in_flight: VecDeque<(i64, u64, PublishAckFuture, tracing::Span)> =
        VecDeque::with_capacity(config.max_in_flight);
    for event in events {
        if in_flight.len() >= config.max_in_flight.max(1)
            && let Some((position, expected, ack, _span)) = in_flight.pop_front()
        {
            confirm(position, expected, ack).await?;
        }
        // Publishing into a connection that is down only queues messages to be sent
        // late; stop instead and start again from the stream's tail.
        if client.connection_state() != ConnectionState::Connected {
            return Err(RelayError::NatsUnavailable);
        }
        let mut headers = HeaderMap::new();
        headers.insert(POSITION_HEADER, event.position.to_string().as_str());
        headers.insert(EVENT_TYPE_HEADER, event.event_type.as_str());
        let span = publish_span(event);
        // The message carries the publish span's context when spans are exported (so the
        // projector's span is its child, in the request's trace), else the stored one.
        if let Some(trace) = trace_context::of_span(&span).or_else(|| event.metadata.trace.clone()) {
            headers.insert(TRACEPARENT_HEADER, trace.as_str());
        }
        let mut message = PublishMessage::build()
            .payload(Bytes::from(serde_json::to_vec(event)?))
            .headers(headers)
            .message_id(event.event_id.to_string());
        if tail.sequence > 0 {
            message = message.expected_last_sequence(tail.sequence);
        }
        if let Some(previous) = tail.event_id {
            message = message.expected_last_message_id(previous.to_string());
        }
        let subject = subject_for(&config.subject_prefix, &event.stream_id);
        let ack = jetstream
            .send_publish(subject, message)
            .instrument(span.clone())
            .await?;
        tail = Tail {
            position: event.position,
            sequence: tail.sequence + 1,
            event_id: Some(event.event_id),
        };
        in_flight.push_back((event.position, tail.sequence, ack, span));
    }
    for (position, expected, ack, _span) in in_flight {
        confirm(position, expected, ack).await?;
    }
    Ok(tail)
}

/// The span of one event's publication, from send to confirmed ack, as a child of the
/// context the event carries (the request that caused it). Only while spans are exported
/// ([`trace_context::exporting`]); otherwise a disabled span that costs nothing.
fn publish_span(event: &RecordedEvent) -> tracing::Span {
    if !trace_context::exporting() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "publish",
        otel.kind = "producer",
        position = event.position,
        event_type = %event.event_type,
    );
    trace_context::set_parent(&span, event.metadata.trace.as_deref());
    span
}

/// Awaits one ack and checks that the event went where the fence said it would.
async fn confirm(position: i64, expected: u64, ack: PublishAckFuture) -> Result<(), RelayError> {
    let ack = ack.await?;
    if ack.sequence != expected {
        return Err(RelayError::OutOfStep {
            position,
            expected,
            stored: ack.sequence,
        });
    }
    Ok(())
}

/// The last position this relay has had acknowledged; 0 when it never ran.
pub async fn load_checkpoint(store: &EventStore, name: &str) -> Result<i64, sqlx::Error> {
    sqlx::query(
        "INSERT INTO relay_checkpoints (relay, position) VALUES ($1, 0) ON CONFLICT (relay) DO NOTHING",
    )
    .bind(name)
    .execute(store.pool())
    .await?;
    sqlx::query_scalar("SELECT position FROM relay_checkpoints WHERE relay = $1")
        .bind(name)
        .fetch_one(store.pool())
        .await
}

async fn save_checkpoint(store: &EventStore, name: &str, position: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE relay_checkpoints SET position = $2, updated_at = now() WHERE relay = $1 AND position < $2",
    )
    .bind(name)
    .bind(position)
    .execute(store.pool())
    .await?;
    Ok(())
}
