//! Voids pending transfers whose `expires_at` has passed (API.md, "Pending transfers").
//!
//! The deadlines live in PostgreSQL (`pending_transfer_deadlines`, kept by a trigger on
//! `events` in the append's own transaction), so they survive restarts and every
//! command-api instance sees the same ones. One instance sweeps at a time: the one that
//! holds a session advisory lock on a dedicated connection (as the relay does); the
//! others try again every [`LEADERSHIP_RETRY`]. A leader whose connection dies loses the
//! lock with it, and another instance takes over.
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
use sqlx::{Connection, PgConnection, PgPool};
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

/// Runs the expiry worker until `shutdown` is cancelled, sweeping every `interval` while
/// it holds the lock. Failures are logged and retried; nothing here ends the process.
pub async fn run(pool: PgPool, bus: CommandBus, interval: Duration, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        if let Err(error) = lead(&pool, &bus, interval, &shutdown).await {
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
/// or failure. Closing the connection releases the lock.
async fn lead(
    pool: &PgPool,
    bus: &CommandBus,
    interval: Duration,
    shutdown: &CancellationToken,
) -> Result<(), sqlx::Error> {
    let mut leadership = pool.acquire().await?.detach();
    let acquired: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
        .bind(LOCK_NAME)
        .fetch_one(&mut leadership)
        .await?;
    if !acquired {
        return Ok(());
    }
    info!("transfer expiry is active");
    let result = sweep_loop(pool, bus, interval, shutdown, &mut leadership).await;
    let _ = leadership.close().await;
    result
}

async fn sweep_loop(
    pool: &PgPool,
    bus: &CommandBus,
    interval: Duration,
    shutdown: &CancellationToken,
    leadership: &mut PgConnection,
) -> Result<(), sqlx::Error> {
    while !shutdown.is_cancelled() {
        // A sweeper whose lock connection died may have a successor already: stop.
        leadership.ping().await?;
        let now = Utc::now();
        let due: Vec<(uuid::Uuid,)> = sqlx::query_as(
            "SELECT transfer_id FROM pending_transfer_deadlines WHERE expires_at <= $1 \
             ORDER BY expires_at, transfer_id LIMIT $2",
        )
        .bind(now)
        .bind(SWEEP_BATCH)
        .fetch_all(pool)
        .await?;
        let expiries = due
            .into_iter()
            .map(|(transfer_id,)| expire(bus, TransferId::from(transfer_id), now));
        futures::future::join_all(expiries).await;
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = tokio::time::sleep(interval) => {}
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
