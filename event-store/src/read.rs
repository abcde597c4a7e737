//! Reading the log: one stream in version order, everything after a position in
//! position order, and the head. Every reader checks contiguity as it goes (positions
//! N, N+1, ...; versions 1, 2, ...), so a broken invariant stops the reader instead of
//! silently skipping an event.

use futures::{Stream, StreamExt, TryStreamExt};
use sqlx::PgPool;
use tracing::instrument;

use crate::envelope::RecordedEvent;
use crate::error::StoreError;

/// The most events one [`EventStore::read_all`] call returns; a bound on one query's
/// memory. Streaming readers use [`EventStore::stream_all`] instead.
pub const MAX_READ_LIMIT: i64 = 10_000;

/// The envelope's columns, as a literal so that every query built on it is `'static`.
macro_rules! select_envelope {
    () => {
        "SELECT position, event_id, stream_id, stream_version, event_type, schema_version, data, \
         metadata, recorded_at, \
         (SELECT encode(h.hash, 'hex') FROM event_hashes h WHERE h.position = events.position) AS hash \
         FROM events"
    };
}

/// The event store over a PostgreSQL pool. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EventStore {
    pool: PgPool,
}

impl EventStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The position of the last committed event; 0 for an empty store.
    pub async fn head(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT position FROM event_store_head")
            .fetch_one(&self.pool)
            .await?)
    }

    /// Every event of one stream after `after_version` (0 for all), in version order.
    #[instrument(skip_all, fields(stream_id = %stream_id))]
    pub async fn read_stream(
        &self,
        stream_id: &str,
        after_version: i64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let events: Vec<RecordedEvent> = sqlx::query_as(concat!(
            select_envelope!(),
            " WHERE stream_id = $1 AND stream_version > $2 ORDER BY stream_version"
        ))
        .bind(stream_id)
        .bind(after_version)
        .fetch_all(&self.pool)
        .await?;
        for (expected, event) in (after_version + 1..).zip(&events) {
            if event.stream_version != expected {
                return Err(StoreError::VersionGap {
                    stream_id: stream_id.to_owned(),
                    expected,
                    found: event.stream_version,
                });
            }
        }
        Ok(events)
    }

    /// Up to `limit` events after `after_position`, in position order, contiguous.
    #[instrument(skip(self))]
    pub async fn read_all(&self, after_position: i64, limit: i64) -> Result<Vec<RecordedEvent>, StoreError> {
        let events: Vec<RecordedEvent> = sqlx::query_as(concat!(
            select_envelope!(),
            " WHERE position > $1 ORDER BY position LIMIT $2"
        ))
        .bind(after_position)
        .bind(limit.clamp(0, MAX_READ_LIMIT))
        .fetch_all(&self.pool)
        .await?;
        check_contiguous(after_position, &events)?;
        Ok(events)
    }

    /// Every event after `after_position` up to `until_position` (inclusive), streamed
    /// row by row from one query: for replays too large to hold in memory.
    pub fn stream_all(
        &self,
        after_position: i64,
        until_position: i64,
    ) -> impl Stream<Item = Result<RecordedEvent, StoreError>> + Send + '_ {
        let mut expected = after_position + 1;
        sqlx::query_as::<_, RecordedEvent>(concat!(
            select_envelope!(),
            " WHERE position > $1 AND position <= $2 ORDER BY position"
        ))
        .bind(after_position)
        .bind(until_position)
        .fetch(&self.pool)
        .map_err(StoreError::from)
        .map(move |row| {
            let event = row?;
            check_contiguous(expected - 1, std::slice::from_ref(&event))?;
            expected += 1;
            Ok(event)
        })
    }
}

/// Asserts that `events` are exactly the positions after `after_position`, in order.
pub fn check_contiguous(after_position: i64, events: &[RecordedEvent]) -> Result<(), StoreError> {
    for (expected, event) in (after_position + 1..).zip(events) {
        if event.position != expected {
            return Err(StoreError::PositionGap {
                expected,
                found: event.position,
            });
        }
    }
    Ok(())
}
