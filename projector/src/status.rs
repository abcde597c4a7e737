//! Where each projection stands: its position, the event store's head, the lag in
//! events and in seconds, and its state. The same figures for `projector status`,
//! `GET /projections` and the Prometheus metrics.
//!
//! Computed on demand, never on a timer: `GET /projections` and `projector status` read
//! them when asked, and the gauges are set just before each `/metrics` scrape
//! ([`refresh_before_scrape`]). An idle projector then issues no statement for its
//! status, and a scrape every 15 s costs one index lookup per projection every 15 s,
//! where a refresh every second used to cost a statement a second.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use chrono::{DateTime, Utc};
use event_store::error_chain;
use serde::Serialize;
use sqlx::PgPool;

/// One projection's status.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct ProjectionStatus {
    pub name: String,
    /// The last position applied.
    pub position: i64,
    /// The event store's last position.
    pub head: i64,
    /// Events committed but not yet applied.
    pub lag: i64,
    /// How long the oldest event not yet applied has been waiting; 0 when caught up.
    pub lag_seconds: f64,
    /// `live`, `rebuilding` or `stopped`.
    pub status: String,
    /// Why the projection stopped, when it did.
    pub error: Option<String>,
    /// When the checkpoint row last changed.
    pub updated_at: DateTime<Utc>,
    /// The projector instance that applies it live (`PROJECTOR_INSTANCE_ID`), while its
    /// lease is current; `None` when no instance holds it (none running, or a holder
    /// died and its lease lapsed).
    pub holder: Option<String>,
    /// When the holder's lease lapses unless renewed.
    pub lease_expires_at: Option<DateTime<Utc>>,
}

/// Every projection's status, read in one statement (one snapshot).
pub async fn read(pool: &PgPool) -> Result<Vec<ProjectionStatus>, sqlx::Error> {
    sqlx::query_as(
        "SELECT c.projection AS name, c.position, h.position AS head, \
             GREATEST(h.position - c.position, 0) AS lag, \
             COALESCE(EXTRACT(EPOCH FROM now() - ( \
                 SELECT e.recorded_at FROM events e WHERE e.position = c.position + 1)), 0)::float8 \
                 AS lag_seconds, \
             c.status, c.error, c.updated_at, \
             CASE WHEN c.lease_expires_at > now() THEN c.lease_holder END AS holder, \
             CASE WHEN c.lease_expires_at > now() THEN c.lease_expires_at END AS lease_expires_at \
         FROM read_model.projection_checkpoints c CROSS JOIN event_store_head h \
         ORDER BY c.projection",
    )
    .fetch_all(pool)
    .await
}

/// The least time between two status reads for `/metrics`: scrapes closer together
/// (several Prometheus servers, or anyone, since `/metrics` needs no token) share one
/// read, so no scrape rate can make the projector issue more than one status statement
/// a second.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// What [`refresh_before_scrape`] needs: the pool and when it last read.
#[derive(Clone)]
pub struct ScrapeRefresh {
    pool: PgPool,
    last_read: Arc<Mutex<Option<Instant>>>,
}

impl ScrapeRefresh {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            last_read: Arc::new(Mutex::new(None)),
        }
    }

    /// Whether a read is due, marking it taken when it is: one caller per interval.
    fn take_turn(&self) -> bool {
        let now = Instant::now();
        // A poisoned lock only means another scrape panicked mid-check; the instant it
        // guards is still a valid instant.
        let mut last = self.last_read.lock().unwrap_or_else(PoisonError::into_inner);
        let due = last.is_none_or(|previous| now.duration_since(previous) >= MIN_REFRESH_INTERVAL);
        if due {
            *last = Some(now);
        }
        due
    }
}

/// Middleware: before `/metrics` renders, sets the status gauges from one fresh
/// [`read`] (at most one per [`MIN_REFRESH_INTERVAL`]). Every other request passes
/// untouched. A failed read leaves the previous figures (the scrape still answers with
/// every other metric) and is logged.
pub async fn refresh_before_scrape(
    State(refresh): State<ScrapeRefresh>,
    request: Request,
    next: Next,
) -> Response {
    if request.uri().path() == "/metrics" && refresh.take_turn() {
        match read(&refresh.pool).await {
            Ok(statuses) => publish_metrics(&statuses),
            Err(error) => tracing::warn!(
                error = %error_chain(&error),
                "could not read the projections' status for /metrics"
            ),
        }
    }
    next.run(request).await
}

/// The states a projection can be in, for the one-hot state gauge.
const STATES: [&str; 3] = ["live", "rebuilding", "stopped"];

/// Sets the Prometheus gauges from `statuses`.
pub fn publish_metrics(statuses: &[ProjectionStatus]) {
    for status in statuses {
        let name = status.name.clone();
        metrics::gauge!("projector_position", "projection" => name.clone()).set(status.position as f64);
        metrics::gauge!("projector_head").set(status.head as f64);
        metrics::gauge!("projector_lag_events", "projection" => name.clone()).set(status.lag as f64);
        metrics::gauge!("projector_lag_seconds", "projection" => name.clone()).set(status.lag_seconds);
        for state in STATES {
            let value = if status.status == state { 1.0 } else { 0.0 };
            metrics::gauge!("projector_state", "projection" => name.clone(), "state" => state).set(value);
        }
    }
}

/// A fixed-width table for `projector status`.
pub fn render_table(statuses: &[ProjectionStatus]) -> String {
    let mut out = format!(
        "{:<22} {:>12} {:>12} {:>10} {:>10}  {:<10} {:<24} {}\n",
        "projection", "position", "head", "lag", "lag_s", "state", "holder", "error"
    );
    for status in statuses {
        out.push_str(&format!(
            "{:<22} {:>12} {:>12} {:>10} {:>10.3}  {:<10} {:<24} {}\n",
            status.name,
            status.position,
            status.head,
            status.lag,
            status.lag_seconds,
            status.status,
            status.holder.as_deref().unwrap_or("-"),
            status.error.as_deref().unwrap_or("")
        ));
    }
    out
}
