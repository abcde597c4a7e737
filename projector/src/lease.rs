//! The live-applier lease: with several projector instances, each projection is applied
//! live by exactly one of them at a time, and the others stand by to take over.
//!
//! The lease is three columns of the projection's checkpoint row (holder, epoch, expiry;
//! migration `20261130008000_projection_leases.sql`). One [`LeaseKeeper`] per process
//! takes and renews the leases of every projection in one statement per tick, on the
//! database's clock, so an idle holder costs one statement every
//! [`LeaseConfig::renew_every`] and the instances' clocks never need to agree.
//!
//! Why it cannot give two appliers at once, even for a moment:
//! - Every live batch locks the checkpoint row (`SELECT ... FOR UPDATE`) and commits only
//!   if the row still names this instance's [`Fence`] (holder and epoch). The epoch rises
//!   with every change of holder, so a holder that was frozen or cut off from PostgreSQL
//!   and comes back after another took over is refused at its next batch.
//! - A take-over is an `UPDATE` of that same row, so it waits for a batch in flight to
//!   commit or roll back; the new holder's first batch then reads the checkpoint the old
//!   one left. Batches of two instances never interleave.
//! - A holder frozen inside a batch transaction would keep the row locked forever; the
//!   live connections run with `idle_in_transaction_session_timeout`
//!   ([`LIVE_IDLE_IN_TRANSACTION_TIMEOUT`]), so PostgreSQL ends that transaction and the
//!   take-over proceeds.
//!
//! A standby also never pulls from the projection's durable JetStream consumer: only the
//! holder subscribes, so messages are not split between instances.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use event_store::error_chain;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::projection::Projection;

/// How long a lease lasts after its last renewal unless renewed: the longest a dead
/// holder keeps a projection from being applied (plus one standby poll).
pub const LEASE_TTL: Duration = Duration::from_secs(9);

/// How often a holder renews its leases: a third of [`LEASE_TTL`], so two renewals can
/// fail (a slow statement, a reconnect) before the lease lapses. Every 3 s (0.33
/// statements/s) keeps a whole system at rest under one statement a second with the
/// relay's and the projections' safety-net reads (issue 15's idle goal).
pub const RENEW_EVERY: Duration = Duration::from_secs(3);

/// How often an instance that does not hold every lease tries to take the free or lapsed
/// ones.
pub const STANDBY_POLL: Duration = Duration::from_secs(1);

/// `idle_in_transaction_session_timeout` of the live connections: a batch transaction
/// is open for milliseconds, so one idle this long belongs to a frozen or partitioned
/// holder; PostgreSQL ends it and releases the checkpoint row for the take-over.
pub const LIVE_IDLE_IN_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(5);

/// The timings of a [`LeaseKeeper`]; [`LeaseConfig::default`] gives the constants above,
/// tests shorten them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseConfig {
    pub ttl: Duration,
    pub renew_every: Duration,
    pub standby_poll: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            ttl: LEASE_TTL,
            renew_every: RENEW_EVERY,
            standby_poll: STANDBY_POLL,
        }
    }
}

/// What a batch proves it still holds: the lease's holder and epoch as they were taken.
/// Only a batch whose fence matches the checkpoint row commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub holder: Arc<str>,
    pub epoch: i64,
}

/// The default instance id: the host name (the pod's name in Kubernetes, the container's
/// in Compose) and the process id, so instances on one host differ too.
pub fn default_instance_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|host| !host.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|host| host.trim().to_owned())
        })
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| "projector".to_owned());
    format!("{host}-{}", std::process::id())
}

/// Takes, renews and finally releases this instance's leases, and tells each
/// projection's live task whether it holds its lease now.
pub struct LeaseKeeper {
    pool: PgPool,
    instance: Arc<str>,
    config: LeaseConfig,
    held: HashMap<Projection, watch::Sender<Option<Fence>>>,
}

impl LeaseKeeper {
    /// A keeper for `instance` over every projection, and a receiver per projection
    /// that holds the [`Fence`] while this instance holds the lease and `None` otherwise.
    pub fn new(
        pool: PgPool,
        instance: &str,
        config: LeaseConfig,
    ) -> (Self, HashMap<Projection, watch::Receiver<Option<Fence>>>) {
        let mut held = HashMap::new();
        let mut receivers = HashMap::new();
        for projection in Projection::ALL {
            let (sender, receiver) = watch::channel(None);
            held.insert(projection, sender);
            receivers.insert(projection, receiver);
        }
        let keeper = Self {
            pool,
            instance: Arc::from(instance),
            config,
            held,
        };
        (keeper, receivers)
    }

    /// Ticks until `shutdown`, then releases what it holds, so a standby takes over at
    /// its next poll instead of after the lease lapses.
    pub async fn run(self, shutdown: CancellationToken) {
        if let Err(error) = self.ensure_rows().await {
            warn!(error = %error_chain(&error), "could not create missing checkpoint rows; their leases cannot be taken");
        }
        // Until when each lease is surely ours: the lease's lifetime counted from before
        // the statement that renewed it was sent.
        let mut valid_until: HashMap<Projection, Instant> = HashMap::new();
        loop {
            let sent = Instant::now();
            match self.tick().await {
                Ok(taken) => {
                    for projection in Projection::ALL {
                        match taken.get(&projection) {
                            Some(&epoch) => {
                                valid_until.insert(projection, sent + self.config.ttl);
                                self.set(projection, Some(epoch));
                            }
                            None => {
                                valid_until.remove(&projection);
                                self.set(projection, None);
                            }
                        }
                    }
                }
                Err(error) => {
                    warn!(error = %error_chain(&error), "could not renew the projection leases");
                    // Keep applying while the lease is surely still ours (every batch is
                    // fenced anyway); past that, another instance may hold it.
                    let now = Instant::now();
                    for projection in Projection::ALL {
                        if valid_until.get(&projection).is_some_and(|until| *until <= now) {
                            valid_until.remove(&projection);
                            self.set(projection, None);
                        }
                    }
                }
            }
            let all_held = Projection::ALL
                .iter()
                .all(|projection| self.fence(*projection).is_some());
            let wait = if all_held {
                self.config.renew_every
            } else {
                self.config.standby_poll
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
        }
        self.release().await;
    }

    /// The checkpoint rows the leases live on; the migration seeds them, this only
    /// matters for a table emptied by hand.
    async fn ensure_rows(&self) -> Result<(), sqlx::Error> {
        let names: Vec<&str> = Projection::ALL
            .iter()
            .map(|projection| projection.name())
            .collect();
        sqlx::query(
            "INSERT INTO read_model.projection_checkpoints (projection, position) \
             SELECT name, 0 FROM unnest($1::text[]) AS name ON CONFLICT (projection) DO NOTHING",
        )
        .bind(&names)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    fn fence(&self, projection: Projection) -> Option<Fence> {
        self.held
            .get(&projection)
            .and_then(|sender| sender.borrow().clone())
    }

    fn set(&self, projection: Projection, epoch: Option<i64>) {
        self.publish(projection, epoch, true);
    }

    /// Tells the live task whether it holds the lease; `warn_on_loss` is false when the
    /// keeper gives the lease up itself, at shutdown.
    fn publish(&self, projection: Projection, epoch: Option<i64>, warn_on_loss: bool) {
        let Some(sender) = self.held.get(&projection) else {
            return;
        };
        let fence = epoch.map(|epoch| Fence {
            holder: Arc::clone(&self.instance),
            epoch,
        });
        sender.send_if_modified(|current| {
            if *current == fence {
                return false;
            }
            match (&*current, &fence) {
                (_, Some(fence)) => {
                    info!(projection = %projection, epoch = fence.epoch, "took the projection's lease; applying it live")
                }
                (Some(_), None) if warn_on_loss => {
                    warn!(projection = %projection, "lost the projection's lease; standing by")
                }
                (Some(_), None) => {}
                (None, None) => {}
            }
            metrics::gauge!("projector_lease_held", "projection" => projection.name())
                .set(if fence.is_some() { 1.0 } else { 0.0 });
            *current = fence.clone();
            true
        });
    }

    /// One statement: renews the leases this instance holds (same holder, same epoch)
    /// and takes those that are free or lapsed (a new epoch). Returns the epoch of every
    /// lease held after it.
    async fn tick(&self) -> Result<HashMap<Projection, i64>, sqlx::Error> {
        let (names, known): (Vec<&str>, Vec<i64>) = Projection::ALL
            .iter()
            .map(|projection| {
                // -1: no epoch known, so a lease with this holder's name (a restarted
                // process with the same id) is taken anew, with a new epoch.
                let epoch = self.fence(*projection).map_or(-1, |fence| fence.epoch);
                (projection.name(), epoch)
            })
            .unzip();
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "UPDATE read_model.projection_checkpoints c \
             SET lease_holder = $1, \
                 lease_epoch = CASE WHEN c.lease_holder = $1 AND c.lease_epoch = k.epoch \
                                    THEN c.lease_epoch ELSE c.lease_epoch + 1 END, \
                 lease_expires_at = now() + make_interval(secs => $2) \
             FROM unnest($3::text[], $4::bigint[]) AS k(projection, epoch) \
             WHERE c.projection = k.projection \
               AND ((c.lease_holder = $1 AND c.lease_epoch = k.epoch) \
                    OR c.lease_holder IS NULL OR c.lease_expires_at < now()) \
             RETURNING c.projection, c.lease_epoch",
        )
        .bind(&*self.instance)
        .bind(self.config.ttl.as_secs_f64())
        .bind(&names)
        .bind(&known)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(name, epoch)| Some((name.parse().ok()?, epoch)))
            .collect())
    }

    async fn release(&self) {
        let (names, epochs): (Vec<&str>, Vec<i64>) = Projection::ALL
            .iter()
            .filter_map(|projection| Some((projection.name(), self.fence(*projection)?.epoch)))
            .unzip();
        for projection in Projection::ALL {
            self.publish(projection, None, false);
        }
        if names.is_empty() {
            return;
        }
        let released = sqlx::query(
            "UPDATE read_model.projection_checkpoints c \
             SET lease_holder = NULL, lease_expires_at = NULL \
             FROM unnest($2::text[], $3::bigint[]) AS k(projection, epoch) \
             WHERE c.projection = k.projection AND c.lease_holder = $1 AND c.lease_epoch = k.epoch",
        )
        .bind(&*self.instance)
        .bind(&names)
        .bind(&epochs)
        .execute(&self.pool)
        .await;
        match released {
            Ok(_) => info!("released the projection leases"),
            Err(error) => {
                warn!(error = %error_chain(&error), "could not release the projection leases; they lapse on their own")
            }
        }
    }
}
