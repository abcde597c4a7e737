//! How far each read model and the log have got, kept current in memory by one
//! PostgreSQL listener per process, so that read-your-writes waits are woken by the
//! projector's progress instead of polling the database.
//!
//! The projector notifies [`PROJECTED_CHANNEL`] with `<projection>:<position>` in the
//! same transaction as each checkpoint update, and every append notifies
//! [`event_store::APPENDED_CHANNEL`] with the new head; a notification is delivered only
//! after its transaction commits, so what this module knows is never ahead of what a
//! query can read. Every (re)connection of the listener reloads the positions from the
//! tables, so a notification lost while disconnected costs nothing but a reload.
//!
//! A streaming replica (`QUERY_API_READER_DATABASE_URL` naming a hot standby) receives
//! no notifications and refuses `LISTEN`. There, [`follow_replica`] reads the replica's
//! own positions instead, but only while someone needs them: every 2 ms while a request
//! waits for `min_position`, every 100 ms while a live tail is open, and not at all
//! otherwise. The positions are the replica's, so a wait ends only once the replica has
//! replayed what it waited for, and an idle query API issues no statement.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use sqlx::postgres::PgListener;
use sqlx::{PgExecutor, PgPool};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The channel the projector notifies in each checkpoint transaction.
pub const PROJECTED_CHANNEL: &str = "eventledger_projected";

/// The header on every query answer: the position of the log that the answer reflects.
pub const PROJECTION_POSITION_HEADER: &str = "x-projection-position";

/// How long the listener waits before reconnecting after PostgreSQL refused or dropped
/// it: long enough not to hammer a restarting server, short enough that waiting
/// requests still see progress within their `wait_ms`.
pub const LISTENER_RETRY_DELAY: Duration = Duration::from_millis(500);

/// What a query reads, and therefore which position it must wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `read_model.accounts` (projection `accounts`).
    Accounts,
    /// `read_model.account_transactions` (projection `account_transactions`).
    AccountTransactions,
    /// `read_model.transfers` (projection `transfers`).
    Transfers,
    /// The `events` table itself (audit, history, live tail): its head.
    Events,
    /// Every read model at once (`GET /projections`): the least of their positions.
    ReadModels,
}

impl Source {
    /// The projection's name in `projection_checkpoints`; `None` for the log itself.
    pub fn projection(self) -> Option<&'static str> {
        match self {
            Source::Accounts => Some("accounts"),
            Source::AccountTransactions => Some("account_transactions"),
            Source::Transfers => Some("transfers"),
            Source::Events | Source::ReadModels => None,
        }
    }

    fn from_projection(name: &str) -> Option<Source> {
        [Source::Accounts, Source::AccountTransactions, Source::Transfers]
            .into_iter()
            .find(|source| source.projection() == Some(name))
    }

    /// The slot of a source that has a position of its own.
    fn slot(self) -> Option<usize> {
        match self {
            Source::Accounts => Some(0),
            Source::AccountTransactions => Some(1),
            Source::Transfers => Some(2),
            Source::Events => Some(3),
            Source::ReadModels => None,
        }
    }
}

/// The last known position of every [`Source`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Positions([i64; 4]);

impl Positions {
    pub fn get(&self, source: Source) -> i64 {
        match source.slot() {
            Some(slot) => self.0[slot],
            None => self.read_models(),
        }
    }

    /// Positions only move forward: a notification older than a reload is ignored.
    fn advance(&mut self, source: Source, position: i64) -> bool {
        let Some(slot) = source.slot() else {
            return false;
        };
        let slot = &mut self.0[slot];
        if position > *slot {
            *slot = position;
            true
        } else {
            false
        }
    }

    /// The least of the read models' positions: what every read model includes.
    pub fn read_models(&self) -> i64 {
        [Source::Accounts, Source::AccountTransactions, Source::Transfers]
            .into_iter()
            .map(|source| self.get(source))
            .min()
            .unwrap_or(0)
    }
}

/// The process's view of the positions; cheap to clone. Fed by [`run_listener`], or on
/// a replica by [`follow_replica`].
#[derive(Debug, Clone)]
pub struct Progress {
    sender: watch::Sender<Positions>,
    demand: Arc<Demand>,
}

/// How often [`follow_replica`] reads the replica's positions while a request waits for
/// `min_position`: the most it adds to such a wait, at one index lookup per interval
/// however many requests wait.
pub const REPLICA_POLL_WHILE_WAITED: Duration = Duration::from_millis(2);

/// How often [`follow_replica`] reads the replica's positions while only live tails are
/// open: a tail's reader sees new events this much later than on the primary.
pub const REPLICA_POLL_WHILE_TAILED: Duration = Duration::from_millis(100);

/// Who is waiting for progress right now, so that [`follow_replica`] reads the replica
/// only while somebody is.
#[derive(Debug, Default)]
struct Demand {
    waiters: AtomicUsize,
    tails: AtomicUsize,
    /// Woken when the first waiter or tail arrives.
    wake: Notify,
}

impl Demand {
    /// How often to read the positions now; `None` when nobody needs them.
    fn interval(&self) -> Option<Duration> {
        if self.waiters.load(Ordering::Acquire) > 0 {
            Some(REPLICA_POLL_WHILE_WAITED)
        } else if self.tails.load(Ordering::Acquire) > 0 {
            Some(REPLICA_POLL_WHILE_TAILED)
        } else {
            None
        }
    }
}

/// Counts a waiter or a live tail as demand for as long as it is held.
#[derive(Debug)]
pub struct DemandGuard {
    demand: Arc<Demand>,
    tail: bool,
}

impl DemandGuard {
    fn counter(&self) -> &AtomicUsize {
        if self.tail {
            &self.demand.tails
        } else {
            &self.demand.waiters
        }
    }
}

impl Drop for DemandGuard {
    fn drop(&mut self) {
        self.counter().fetch_sub(1, Ordering::AcqRel);
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress {
    pub fn new() -> Self {
        Self {
            sender: watch::Sender::new(Positions::default()),
            demand: Arc::default(),
        }
    }

    fn demand(&self, tail: bool) -> DemandGuard {
        let guard = DemandGuard {
            demand: Arc::clone(&self.demand),
            tail,
        };
        guard.counter().fetch_add(1, Ordering::AcqRel);
        // A stored permit if the follower is busy: it reads again before it sleeps.
        self.demand.wake.notify_one();
        guard
    }

    /// Marks a live tail as open until the guard drops, so that on a replica the
    /// positions keep being read for it ([`REPLICA_POLL_WHILE_TAILED`]).
    pub fn tail_demand(&self) -> DemandGuard {
        self.demand(true)
    }

    pub fn current(&self) -> Positions {
        *self.sender.borrow()
    }

    /// A receiver that is told of every change, for the live tail.
    pub fn subscribe(&self) -> watch::Receiver<Positions> {
        self.sender.subscribe()
    }

    fn advance(&self, source: Source, position: i64) {
        self.sender
            .send_if_modified(|positions| positions.advance(source, position));
    }

    fn advance_all(&self, loaded: Positions) {
        self.sender.send_if_modified(|positions| {
            let mut changed = false;
            for source in [
                Source::Accounts,
                Source::AccountTransactions,
                Source::Transfers,
                Source::Events,
            ] {
                changed |= positions.advance(source, loaded.get(source));
            }
            changed
        });
    }

    /// Waits until `source` is known to be at `min_position` or later, or `deadline`
    /// passes; true if it got there.
    pub async fn wait_until(&self, source: Source, min_position: i64, deadline: Instant) -> bool {
        if self.current().get(source) >= min_position {
            return true;
        }
        let _waiting = self.demand(false);
        let mut receiver = self.sender.subscribe();
        let reached = receiver.wait_for(|positions| positions.get(source) >= min_position);
        matches!(tokio::time::timeout_at(deadline, reached).await, Ok(Ok(_)))
    }

    /// Reads every position from the tables, for start-up and after a reconnection;
    /// one statement, so it can run on the listener's own connection.
    pub async fn reload<'c>(&self, executor: impl PgExecutor<'c>) -> Result<(), sqlx::Error> {
        let rows: Vec<(Option<String>, i64)> = sqlx::query_as(
            "SELECT NULL::text, position FROM event_store_head \
             UNION ALL SELECT projection, position FROM read_model.projection_checkpoints",
        )
        .fetch_all(executor)
        .await?;
        let mut loaded = Positions::default();
        for (name, position) in rows {
            let source = match name {
                None => Some(Source::Events),
                Some(name) => Source::from_projection(&name),
            };
            if let Some(source) = source {
                loaded.advance(source, position);
            }
        }
        self.advance_all(loaded);
        Ok(())
    }

    fn apply(&self, channel: &str, payload: &str) {
        let parsed = if channel == PROJECTED_CHANNEL {
            payload.rsplit_once(':').and_then(|(name, position)| {
                Some((Source::from_projection(name)?, position.parse::<i64>().ok()?))
            })
        } else {
            payload
                .parse::<i64>()
                .ok()
                .map(|position| (Source::Events, position))
        };
        match parsed {
            Some((source, position)) => self.advance(source, position),
            None => tracing::debug!(channel, payload, "ignored a notification"),
        }
    }
}

/// Listens on both channels until `stop`, reconnecting (and reloading) whenever the
/// connection is lost. `pool` lends the listener its connection: give it a pool of its
/// own so that it never takes a slot from the requests.
pub async fn run_listener(progress: Progress, pool: PgPool, stop: CancellationToken) {
    loop {
        let listened = tokio::select! {
            () = stop.cancelled() => return,
            result = listen_once(&progress, &pool) => result,
        };
        if let Err(error) = listened {
            tracing::warn!(error = %event_store::error_chain(&error), "position listener lost, reconnecting");
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(LISTENER_RETRY_DELAY) => {}
        }
    }
}

/// On a replica, instead of [`run_listener`]: reads the replica's positions
/// ([`Progress::reload`]) while a request waits or a live tail is open, and sleeps
/// otherwise, until `stop`. `pool` is the reader pool on the replica.
pub async fn follow_replica(progress: Progress, pool: PgPool, stop: CancellationToken) {
    loop {
        let Some(interval) = progress.demand.interval() else {
            tokio::select! {
                () = stop.cancelled() => return,
                () = progress.demand.wake.notified() => continue,
            }
        };
        let pause = match progress.reload(&pool).await {
            Ok(()) => interval,
            Err(error) => {
                tracing::warn!(error = %event_store::error_chain(&error), "could not read the replica's positions");
                LISTENER_RETRY_DELAY
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// One connection's life: LISTEN first, then reload, so nothing committed in between
/// is missed; returns when the connection is lost.
async fn listen_once(progress: &Progress, pool: &PgPool) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener
        .listen_all([PROJECTED_CHANNEL, event_store::APPENDED_CHANNEL])
        .await?;
    progress.reload(&mut listener).await?;
    while let Some(notification) = listener.try_recv().await? {
        progress.apply(notification.channel(), notification.payload());
    }
    Ok(())
}

/// Middleware: gives every query answer `X-Projection-Position`. Handlers set it to the
/// position their own read saw; an answer that read nothing (a 400, say) gets the
/// position every read model has reached.
pub async fn projection_position_header(
    State(progress): State<Progress>,
    request: Request,
    next: Next,
) -> Response {
    let mut response = next.run(request).await;
    if !response.headers().contains_key(PROJECTION_POSITION_HEADER) {
        let position = progress.current().read_models();
        response
            .headers_mut()
            .insert(PROJECTION_POSITION_HEADER, HeaderValue::from(position));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_projection_notification_advances_only_its_projection() {
        let progress = Progress::new();
        progress.apply(PROJECTED_CHANNEL, "account_transactions:42");
        let positions = progress.current();
        assert_eq!(positions.get(Source::AccountTransactions), 42);
        assert_eq!(positions.get(Source::Accounts), 0);
    }

    #[test]
    fn positions_never_move_backwards() {
        let progress = Progress::new();
        progress.apply(event_store::APPENDED_CHANNEL, "10");
        progress.apply(event_store::APPENDED_CHANNEL, "7");
        assert_eq!(progress.current().get(Source::Events), 10);
    }

    #[test]
    fn a_malformed_payload_changes_nothing() {
        let progress = Progress::new();
        progress.apply(PROJECTED_CHANNEL, "accounts:many");
        progress.apply(PROJECTED_CHANNEL, "unknown:5");
        assert_eq!(progress.current(), Positions::default());
    }

    #[tokio::test]
    async fn demand_lasts_exactly_as_long_as_a_wait_or_a_tail() {
        let progress = Progress::new();
        assert_eq!(progress.demand.interval(), None, "nobody waits at first");
        let tail = progress.tail_demand();
        assert_eq!(progress.demand.interval(), Some(REPLICA_POLL_WHILE_TAILED));
        let waiting = {
            let progress = progress.clone();
            tokio::spawn(async move {
                progress
                    .wait_until(Source::Accounts, 5, Instant::now() + Duration::from_secs(5))
                    .await
            })
        };
        while progress.demand.interval() != Some(REPLICA_POLL_WHILE_WAITED) {
            tokio::task::yield_now().await;
        }
        progress.apply(PROJECTED_CHANNEL, "accounts:5");
        assert!(
            waiting.await.expect("waiter"),
            "the wait ends once the position is reached"
        );
        assert_eq!(progress.demand.interval(), Some(REPLICA_POLL_WHILE_TAILED));
        drop(tail);
        assert_eq!(progress.demand.interval(), None);
        assert!(
            progress.wait_until(Source::Accounts, 5, Instant::now()).await,
            "a position already reached needs no demand"
        );
        assert_eq!(progress.demand.interval(), None);
    }
}
