//! Live projection: one task per projection follows its durable JetStream consumer and
//! applies what arrives in batches, each batch in one transaction with the checkpoint,
//! acknowledging the messages only after the commit.
//!
//! PostgreSQL stays the record and JetStream the transport (ARCHITECTURE.md): on start
//! and after every failure a task first catches up from the event store, messages at or
//! below the checkpoint are acknowledged and skipped, a gap (position N+2 after N) is
//! filled from the event store before going on, and when the consumer is quiet the task
//! checks the store's head, so it converges even while NATS is down or has lost
//! messages. An event that cannot be applied stops that projection (its messages stay
//! unacknowledged, the error is in the checkpoint row, the logs and the metrics) until
//! a rebuild or an operator clears the state.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use event_store::bus::StreamLimits;
use event_store::subscription::{Delivery, Subscription, SubscriptionConfig, SubscriptionError};
use event_store::{EventStore, RecordedEvent, StoreError, error_chain, read::check_contiguous};
use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, instrument, warn};

use crate::apply::{self, BatchError};
use crate::checkpoint;
use crate::lease::Fence;
use crate::projection::Projection;

/// How the live tasks run. [`LiveConfig::new`] gives the production values.
#[derive(Debug, Clone)]
pub struct LiveConfig {
    pub stream_name: String,
    pub subject_prefix: String,
    /// The stream's replication and retention, applied if a projector creates it.
    pub stream_limits: StreamLimits,
    /// Durable consumers are named `<consumer_prefix>_<projection>`.
    pub consumer_prefix: String,
    /// Most events per transaction. Large enough that a commit's fsync is shared by many
    /// events, small enough that one transaction holds its locks for milliseconds.
    pub batch_size: usize,
    /// How long a quiet consumer waits before the task checks the store's head itself
    /// ([`IDLE_STORE_CHECK`] in production).
    pub idle_wait: Duration,
    /// Pause after a failure (NATS or PostgreSQL down) before catching up again.
    pub retry_interval: Duration,
    /// How often a stopped projection looks whether it was cleared (by a rebuild).
    pub stopped_poll: Duration,
}

/// Most events per live transaction: a fetch of JetStream's own batch size (256) is
/// below this, a burst after an outage is applied in steps of this size.
pub const LIVE_BATCH_SIZE: usize = 2_000;

/// How long a quiet consumer waits before its task reads the store itself. The check
/// only matters when JetStream lost messages or the relay is behind (NATS down ends the
/// subscription with missed heartbeats, and every failure catches up from the store); events
/// normally arrive through JetStream within milliseconds, and a message arriving ends
/// the wait at once. Every check is a statement per projection, so a short wait made
/// an idle system busy: 10 s keeps all three projections at 0.3 statements/s.
pub const IDLE_STORE_CHECK: Duration = Duration::from_secs(10);

impl LiveConfig {
    pub fn new(stream_name: impl Into<String>, subject_prefix: impl Into<String>) -> Self {
        Self {
            stream_name: stream_name.into(),
            subject_prefix: subject_prefix.into(),
            stream_limits: StreamLimits::default(),
            consumer_prefix: "projector".to_owned(),
            batch_size: LIVE_BATCH_SIZE,
            idle_wait: IDLE_STORE_CHECK,
            retry_interval: Duration::from_millis(500),
            stopped_poll: Duration::from_secs(2),
        }
    }

    /// The durable consumer of one projection.
    pub fn durable_name(&self, projection: Projection) -> String {
        format!("{}_{}", self.consumer_prefix, projection.name())
    }
}

/// Why a live round ended; the task decides whether to stop or retry.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error("reading the event store failed")]
    Store(#[from] StoreError),
    #[error("the JetStream subscription failed")]
    Subscription(#[from] SubscriptionError),
    #[error("database error")]
    Database(#[from] sqlx::Error),
}

/// Runs every projection live until `shutdown` is cancelled: each projection's task
/// applies it while `leases` says this instance holds its lease, and stands by otherwise.
pub async fn run(
    pool: PgPool,
    client: async_nats::Client,
    config: LiveConfig,
    mut leases: HashMap<Projection, watch::Receiver<Option<Fence>>>,
    shutdown: CancellationToken,
) {
    let tasks: Vec<_> = Projection::ALL
        .into_iter()
        .filter_map(|projection| {
            let lease = leases.remove(&projection)?;
            Some(tokio::spawn(run_projection(
                pool.clone(),
                client.clone(),
                config.clone(),
                projection,
                lease,
                shutdown.clone(),
            )))
        })
        .collect();
    for task in tasks {
        if let Err(error) = task.await {
            error!(error = %error, "a live projection task panicked");
        }
    }
}

/// Runs one projection until `shutdown`: stands by until this instance holds the
/// projection's lease, applies it live while it does, and stands by again when it is
/// lost.
pub async fn run_projection(
    pool: PgPool,
    client: async_nats::Client,
    config: LiveConfig,
    projection: Projection,
    mut lease: watch::Receiver<Option<Fence>>,
    shutdown: CancellationToken,
) {
    let store = EventStore::new(pool.clone());
    loop {
        let fence = tokio::select! {
            () = shutdown.cancelled() => return,
            held = lease.wait_for(Option::is_some) => match held {
                Ok(held) => held.clone(),
                // The keeper is gone: the process is shutting down.
                Err(_) => return,
            },
        };
        let Some(fence) = fence else { continue };
        // Ends the applying when the keeper says the lease is no longer this fence.
        let holding = shutdown.child_token();
        let watcher = tokio::spawn(cancel_when_lost(lease.clone(), fence.clone(), holding.clone()));
        apply_while_held(&store, &client, &config, projection, &fence, &holding).await;
        holding.cancel();
        let _ = watcher.await;
        // A batch may see the take-over before the keeper's next tick does: wait for the
        // keeper to agree, rather than trying the same fence again at once.
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = lease.wait_for(|held| held.as_ref() != Some(&fence)) => {}
        }
    }
}

/// Cancels `holding` once `lease` no longer holds `fence` (or its keeper is gone).
async fn cancel_when_lost(
    mut lease: watch::Receiver<Option<Fence>>,
    fence: Fence,
    holding: CancellationToken,
) {
    tokio::select! {
        () = holding.cancelled() => {}
        _ = lease.wait_for(|held| held.as_ref() != Some(&fence)) => holding.cancel(),
    }
}

/// Applies the projection live under `fence` until `holding` is cancelled or a batch
/// finds the lease taken over: retries failures, and waits while the projection is
/// stopped by an event it cannot apply.
async fn apply_while_held(
    store: &EventStore,
    client: &async_nats::Client,
    config: &LiveConfig,
    projection: Projection,
    fence: &Fence,
    holding: &CancellationToken,
) {
    let pool = store.pool();
    while !holding.is_cancelled() {
        let error = match follow(store, client, config, projection, fence, holding).await {
            Ok(()) => return,
            Err(error) => error,
        };
        let chain = error_chain(&error);
        if let LiveError::Batch(BatchError::LeaseLost) = &error {
            warn!(projection = %projection, "another instance took over the projection; standing by");
            return;
        }
        if let LiveError::Batch(batch) = &error
            && batch.stops_projection()
        {
            error!(projection = %projection, error = %chain, "projection stopped: an event cannot be applied");
            metrics::counter!("projector_stops_total", "projection" => projection.name()).increment(1);
            if let Err(error) = mark_stopped(pool, projection, &chain).await {
                warn!(projection = %projection, error = %error_chain(&error), "could not record the stop");
            }
            wait_while_stopped(pool, projection, config, holding).await;
            continue;
        }
        warn!(projection = %projection, error = %chain, "live projection failed; catching up again");
        metrics::counter!("projector_failures_total", "projection" => projection.name()).increment(1);
        tokio::select! {
            () = holding.cancelled() => {}
            () = tokio::time::sleep(config.retry_interval) => {}
        }
    }
}

async fn mark_stopped(pool: &PgPool, projection: Projection, chain: &str) -> Result<(), sqlx::Error> {
    let mut connection = pool.acquire().await?;
    checkpoint::mark_stopped(&mut connection, projection, chain).await
}

/// Waits until the projection's state is no longer `stopped` (a rebuild cleared it) or
/// shutdown.
async fn wait_while_stopped(
    pool: &PgPool,
    projection: Projection,
    config: &LiveConfig,
    shutdown: &CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(config.stopped_poll) => {}
        }
        let status = match pool.acquire().await {
            Ok(mut connection) => checkpoint::status(&mut connection, projection).await,
            Err(error) => Err(error),
        };
        if let Ok(status) = status
            && status.as_deref() != Some("stopped")
        {
            info!(projection = %projection, "projection was cleared; resuming");
            return;
        }
    }
}

/// One round: catch up from the store, subscribe, then apply batches until shutdown or
/// failure.
#[instrument(skip_all, fields(projection = %projection))]
async fn follow(
    store: &EventStore,
    client: &async_nats::Client,
    config: &LiveConfig,
    projection: Projection,
    fence: &Fence,
    shutdown: &CancellationToken,
) -> Result<(), LiveError> {
    let mut checkpoint = checkpoint::position(store.pool(), projection).await?;
    checkpoint = catch_up(store, projection, config, checkpoint, None, fence).await?;
    let mut subscription = Subscription::connect(
        client.clone(),
        &SubscriptionConfig {
            stream_name: config.stream_name.clone(),
            subject_prefix: config.subject_prefix.clone(),
            stream_limits: config.stream_limits,
            durable_name: config.durable_name(projection),
            max_batch: config.batch_size,
        },
    )
    .await?;
    info!(checkpoint, "following JetStream");
    loop {
        let batch = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            batch = subscription.next_batch(config.idle_wait) => batch?,
        };
        if batch.is_empty() {
            // Quiet consumer: whatever NATS did not bring, the store has.
            checkpoint = catch_up(store, projection, config, checkpoint, None, fence).await?;
            continue;
        }
        checkpoint = apply_deliveries(store, projection, config, checkpoint, &batch, fence).await?;
        for delivery in &batch {
            delivery.ack().await?;
        }
    }
}

/// Applies what a batch of messages brings beyond `checkpoint`: the messages' own
/// envelopes when they cover every position up to the highest, else the range read from
/// the store (a gap, or bodies that did not decode).
async fn apply_deliveries(
    store: &EventStore,
    projection: Projection,
    config: &LiveConfig,
    checkpoint: i64,
    batch: &[Delivery],
    fence: &Fence,
) -> Result<i64, LiveError> {
    let unreadable = batch
        .iter()
        .filter(|delivery| delivery.position.is_none())
        .count();
    if unreadable > 0 {
        // Not the relay's messages: nothing of the log is lost by acknowledging them,
        // since the log is read from the store, but say so.
        warn!(projection = %projection, unreadable, "messages without a position on the stream");
    }
    let Some(highest) = batch.iter().filter_map(|delivery| delivery.position).max() else {
        return Ok(checkpoint);
    };
    if highest <= checkpoint {
        metrics::counter!("projector_duplicates_skipped_total", "projection" => projection.name())
            .increment(batch.len() as u64);
        return Ok(checkpoint);
    }
    let fresh: BTreeMap<i64, &Delivery> = batch
        .iter()
        .filter_map(|delivery| delivery.event.as_ref().map(|event| (event.position, delivery)))
        .filter(|(position, _)| *position > checkpoint && *position <= highest)
        .collect();
    let wanted = (highest - checkpoint) as usize;
    if fresh.len() == wanted {
        let (events, parents): (Vec<RecordedEvent>, Vec<Option<String>>) = fresh
            .into_values()
            .filter_map(|delivery| {
                let event = delivery.event.clone()?;
                // The message's context (the relay's publish span) when it has one.
                let parent = delivery
                    .traceparent()
                    .map(str::to_owned)
                    .or_else(|| event.metadata.trace.clone());
                Some((event, parent))
            })
            .unzip();
        // Guarantee 2, asserted where it is consumed.
        check_contiguous(checkpoint, &events)?;
        return Ok(apply::apply_batch(store.pool(), projection, &events, &parents, fence).await?);
    }
    let missing = wanted - fresh.len();
    warn!(projection = %projection, checkpoint, highest, missing, "gap in the delivered positions; filling it from the event store");
    metrics::counter!("projector_gap_events_filled_total", "projection" => projection.name())
        .increment(missing as u64);
    catch_up(store, projection, config, checkpoint, Some(highest), fence).await
}

/// Applies everything after `checkpoint` from the store, up to `until` (inclusive) or to
/// the head, in batches; returns the checkpoint after.
async fn catch_up(
    store: &EventStore,
    projection: Projection,
    config: &LiveConfig,
    mut checkpoint: i64,
    until: Option<i64>,
    fence: &Fence,
) -> Result<i64, LiveError> {
    loop {
        let remaining = until.map_or(i64::MAX, |until| until - checkpoint);
        let limit = remaining.min(config.batch_size as i64);
        if limit <= 0 {
            return Ok(checkpoint);
        }
        let events = store.read_all(checkpoint, limit).await?;
        if events.is_empty() {
            return Ok(checkpoint);
        }
        // Read from the store, not delivered: each event continues its stored context.
        checkpoint = apply::apply_batch(store.pool(), projection, &events, &[], fence).await?;
    }
}
