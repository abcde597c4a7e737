//! Voids pending transfers whose `expires_at` has passed (API.md, "Pending transfers").
//!
//! The deadlines live in PostgreSQL (`pending_transfer_deadlines`, kept by a trigger on
//! `events` in the append's own transaction), so they survive restarts and every
//! command-api instance sees the same ones. One instance sweeps at a time: the one that
//! holds a session advisory lock on a dedicated connection (as the relay does); the
//! others try again every [`LEADERSHIP_RETRY`]. A leader whose connection dies loses the
//! lock with it, and another instance takes over.
//!
//! The sweeper sleeps until the earliest deadline it knows of. A new deadline wakes it:
//! the trigger that stores one notifies [`DEADLINES_CHANNEL`] with it, and the sweeper
//! listens on its lock connection, so a transfer pending for one second expires on time
//! whichever instance took it. An idle ledger costs one look every `max_sleep` (a safety
//! net for a notification lost while a connection was down), nothing else.
//!
//! Each sweep reads up to [`SWEEP_BATCH`] due deadlines and voids each through the same
//! path as `POST /transfers/{id}/void` (the [`CommandBus`], so it is decided with the
//! domain's rules and appended with the transfer stream's expected version), as actor
//! [`SYSTEM_ACTOR`] with a new correlation id. A post or void that got there first wins:
//! the expiry then gets `transfer-not-pending` (or a post its `transfer-expired`), and
//! nothing is doubled.

use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::{DomainError, SettleAction, SettleCommand, TransferId};
use event_store::{Metadata, error_chain};
use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::committer::{Command, CommandBus, Executed, Submission};
use crate::error::ApiError;
use crate::preconditions::Preconditions;

/// The `actor` of the events an expiry appends.
pub const SYSTEM_ACTOR: &str = "system";

/// How many due transfers one sweep voids at most: a burst of expiries is worked off
/// over a few sweeps instead of one long one, and the committer batches each sweep.
pub const SWEEP_BATCH: i64 = 256;

/// How often an instance without the lock tries to take it.
pub const LEADERSHIP_RETRY: Duration = Duration::from_secs(3);

/// The advisory lock's name; one sweeper per database.
const LOCK_NAME: &str = "eventledger-transfer-expiry";

/// The channel the deadline trigger (migration `20261130007000`) notifies with each new
/// deadline (RFC 3339), in the transaction that stores it.
pub const DEADLINES_CHANNEL: &str = "eventledger_deadlines";

/// The default of `EXPIRY_SWEEP_INTERVAL_MS`: the longest the sweeper sleeps when it
/// knows of no earlier deadline, as the relay's and the projections' safety-net polls.
pub const DEFAULT_MAX_SLEEP: Duration = Duration::from_secs(10);

/// Runs the expiry worker until `shutdown` is cancelled, sweeping at each deadline (and
/// at least every `max_sleep`) while it holds the lock. Failures are logged and retried;
/// nothing here ends the process.
pub async fn run(pool: PgPool, bus: CommandBus, max_sleep: Duration, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        if let Err(error) = lead(&pool, &bus, max_sleep, &shutdown).await {
            metrics::counter!("command_api_expiry_failures_total").increment(1);
            warn!(error = %error_chain(&error), "transfer expiry failed; trying again");
        }
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = tokio::time::sleep(LEADERSHIP_RETRY) => {}
        }
    }
}

/// One term as the sweeper: take the lock (or return to wait), then sweep until shutdown
/// or until the lock's connection is lost. The lock and the `LISTEN` share one session,
/// on a pool of its own that is closed at the end of the term: a session lock must never
/// go back into the shared pool still held.
async fn lead(
    pool: &PgPool,
    bus: &CommandBus,
    max_sleep: Duration,
    shutdown: &CancellationToken,
) -> Result<(), sqlx::Error> {
    let session = PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with((*pool.connect_options()).clone());
    let result = async {
        let mut leadership = PgListener::connect_with(&session).await?;
        // A lost session is the end of the term, not something to re-establish quietly:
        // a new session would not hold the lock.
        leadership.eager_reconnect(false);
        let acquired: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
            .bind(LOCK_NAME)
            .fetch_one(&mut leadership)
            .await?;
        if !acquired {
            return Ok(());
        }
        leadership.listen(DEADLINES_CHANNEL).await?;
        info!("transfer expiry is active");
        sweep_loop(pool, bus, max_sleep, shutdown, &mut leadership).await
    }
    .await;
    // Waits for the listener's connection to come back, then closes it: the lock goes.
    session.close().await;
    result
}

async fn sweep_loop(
    pool: &PgPool,
    bus: &CommandBus,
    max_sleep: Duration,
    shutdown: &CancellationToken,
    leadership: &mut PgListener,
) -> Result<(), sqlx::Error> {
    while !shutdown.is_cancelled() {
        let now = Utc::now();
        // The earliest deadlines, due or not: the due ones are expired now, the first
        // one not yet due says how long to sleep.
        let earliest: Vec<(uuid::Uuid, DateTime<Utc>)> = sqlx::query_as(
            "SELECT transfer_id, expires_at FROM pending_transfer_deadlines \
             ORDER BY expires_at, transfer_id LIMIT $1",
        )
        .bind(SWEEP_BATCH)
        .fetch_all(pool)
        .await?;
        let next = earliest.iter().map(|(_, at)| *at).find(|at| *at > now);
        let expiries: Vec<_> = earliest
            .iter()
            .filter(|(_, at)| *at <= now)
            .map(|(transfer_id, _)| expire(bus, TransferId::from(*transfer_id), now))
            .collect();
        let full_batch = expiries.len() as i64 == SWEEP_BATCH;
        futures::future::join_all(expiries).await;
        if full_batch {
            // More may be due already.
            continue;
        }
        let wake_at = next.map_or(max_sleep, |next| {
            (next - Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO)
                .min(max_sleep)
        });
        let wake = tokio::time::Instant::now() + wake_at;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep_until(wake) => break,
                notified = leadership.try_recv() => {
                    let Some(notification) = notified? else {
                        warn!("lost the expiry lock's connection; another instance may sweep now");
                        return Ok(());
                    };
                    // Only a deadline earlier than the planned wake changes the plan.
                    let earlier = DateTime::parse_from_rfc3339(notification.payload())
                        .map_or(true, |at| at.with_timezone(&Utc) < next.unwrap_or(DateTime::<Utc>::MAX_UTC));
                    if earlier {
                        break;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Voids one due transfer as the system. Losing to a post or void is an outcome, not a
/// failure; anything else is logged, and the deadline stays for the next sweep.
async fn expire(bus: &CommandBus, transfer_id: TransferId, now: DateTime<Utc>) {
    let command = SettleCommand {
        transfer_id,
        action: SettleAction::Expire,
        now,
    };
    let submission = Submission {
        metadata: Metadata {
            actor: SYSTEM_ACTOR.to_owned(),
            correlation_id: uuid::Uuid::now_v7().to_string(),
            causation_id: Some(uuid::Uuid::now_v7().to_string()),
            command: command.name().to_owned(),
            idempotency_key: None,
            trace: None,
        },
        command: Command::Settle {
            command,
            loaded: None,
            preconditions: Preconditions::default(),
        },
        idempotency: None,
        data_key: None,
    };
    let outcome = match bus.execute(submission).await {
        Ok(Executed::Committed(_) | Executed::AlreadyStored(_)) => "expired",
        Err(ApiError::Domain(
            DomainError::TransferNotPending { .. } | DomainError::TransferExpired { .. },
        )) => "lost",
        Err(error) => {
            warn!(%transfer_id, error = %error_chain(&error), "could not expire a transfer");
            "failed"
        }
    };
    metrics::counter!("command_api_expiries_total", "outcome" => outcome).increment(1);
}
