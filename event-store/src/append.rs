//! Appending events: atomically over one or more streams, each with an expected version,
//! and many independent requests in one transaction (group commit).
//!
//! Every append transaction first locks the single `event_store_head` row. That lock
//! serialises appends, which is what makes positions follow commit order with no gaps
//! (guarantee 2), and it makes the version checks exact: no other append can slip in
//! between the check and the insert. The lock is held only for a handful of statements
//! and the commit; group commit amortises it (and the commit's fsync) over many requests.
//!
//! Under the same lock each event gets its hash in the tamper-evident chain
//! ([`crate::chain`]): the lock's own read returns the chain's head, the events' hashes
//! go to `event_hashes` and the new head to the head row in the statement that already
//! inserts the events, so the chain follows the global order at no extra round trip.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Postgres, Transaction};
use tracing::instrument;
use uuid::Uuid;

use crate::chain::{self, ChainHead, Chained};
use crate::envelope::NewEvent;
use crate::error::{AppendError, StoreError};
use crate::read::EventStore;

/// The most events one request may append. A transfer appends three; the bound keeps one
/// careless caller from holding the head lock for long.
pub const MAX_EVENTS_PER_REQUEST: usize = 1_000;

/// The most events one group-commit transaction may append. Past this the head lock is
/// held long enough to add latency to every writer behind it, and statements grow large.
pub const MAX_EVENTS_PER_BATCH: usize = 10_000;

/// What a writer believes a stream's version to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ExpectedVersion {
    /// Append whatever the version.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must be at exactly this version (its last event's `stream_version`).
    Exact(u64),
}

impl ExpectedVersion {
    fn admits(self, actual: u64) -> bool {
        match self {
            Self::Any => true,
            Self::NoStream => actual == 0,
            Self::Exact(expected) => expected == actual,
        }
    }
}

/// Events for one stream within an [`AppendRequest`].
#[derive(Debug, Clone)]
pub struct StreamWrite {
    pub stream_id: String,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
}

/// One all-or-nothing unit: every stream's expected version holds and every event is
/// stored, or nothing is. A transfer is one request over three streams.
#[derive(Debug, Clone)]
pub struct AppendRequest {
    pub writes: Vec<StreamWrite>,
}

impl AppendRequest {
    pub fn single(stream_id: impl Into<String>, expected: ExpectedVersion, events: Vec<NewEvent>) -> Self {
        Self {
            writes: vec![StreamWrite {
                stream_id: stream_id.into(),
                expected,
                events,
            }],
        }
    }

    fn event_count(&self) -> usize {
        self.writes.iter().map(|write| write.events.len()).sum()
    }
}

/// Where one stream stands after an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAppended {
    pub stream_id: String,
    /// The stream's version after the append (its last event's `stream_version`).
    pub version: u64,
    /// The position of the stream's last event in this append.
    pub last_position: i64,
}

/// What a successful request appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendOutcome {
    /// One entry per [`StreamWrite`], in request order.
    pub streams: Vec<StreamAppended>,
    pub first_position: i64,
    /// The position of the request's last event: what a client waits for to read its
    /// own write.
    pub last_position: i64,
    pub recorded_at: DateTime<Utc>,
}

/// Why a request was refused. Nothing of it was written; other requests in the same
/// batch are unaffected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendRejection {
    #[error("stream {stream_id} is at version {actual}, expected {expected:?}")]
    WrongExpectedVersion {
        stream_id: String,
        expected: ExpectedVersion,
        /// 0 when the stream does not exist.
        actual: u64,
    },
    #[error("event {event_id} is already stored")]
    DuplicateEvent { event_id: Uuid },
    #[error("invalid append: {0}")]
    Invalid(&'static str),
}

/// One row of the multi-row insert, gathered column by column for `UNNEST`.
#[derive(Default)]
struct Columns {
    position: Vec<i64>,
    event_id: Vec<Uuid>,
    stream_id: Vec<String>,
    stream_version: Vec<i64>,
    event_type: Vec<String>,
    schema_version: Vec<i32>,
    data: Vec<serde_json::Value>,
    metadata: Vec<serde_json::Value>,
    /// Each event's hash in the chain ([`crate::chain`]).
    hash: Vec<Vec<u8>>,
}

impl EventStore {
    /// Appends one request in its own transaction.
    #[instrument(skip_all, fields(streams = request.writes.len()))]
    pub async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, AppendError> {
        let mut transaction = self.pool().begin().await?;
        let mut outcomes = append_batch_in(&mut transaction, std::slice::from_ref(&request)).await?;
        let outcome = outcomes.pop().ok_or(AppendRejection::Invalid("empty batch"))??;
        transaction.commit().await?;
        Ok(outcome)
    }

    /// Appends many independent requests in one transaction (group commit). Each request
    /// is all or nothing on its own: one that conflicts is rejected and the others are
    /// written. Requests are applied in order, so two requests on one stream chain.
    #[instrument(skip_all, fields(requests = requests.len()))]
    pub async fn append_batch(
        &self,
        requests: &[AppendRequest],
    ) -> Result<Vec<Result<AppendOutcome, AppendRejection>>, StoreError> {
        let mut transaction = self.pool().begin().await?;
        let outcomes = append_batch_in(&mut transaction, requests).await?;
        transaction.commit().await?;
        Ok(outcomes)
    }

    /// Starts a transaction for [`append_batch_in`], for callers that write rows of their
    /// own (idempotency records) atomically with the events.
    pub async fn begin(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        Ok(self.pool().begin().await?)
    }
}

/// Appends `requests` inside the caller's transaction; the caller commits. Takes the head
/// lock, so commit (or roll back) promptly: every other append waits for it.
pub async fn append_batch_in(
    connection: &mut PgConnection,
    requests: &[AppendRequest],
) -> Result<Vec<Result<AppendOutcome, AppendRejection>>, StoreError> {
    let mut verdicts: Vec<Option<AppendRejection>> = requests.iter().map(check_shape).collect();

    let total: usize = requests.iter().map(AppendRequest::event_count).sum();
    if total > MAX_EVENTS_PER_BATCH {
        return Ok(requests
            .iter()
            .map(|_| Err(AppendRejection::Invalid("batch holds too many events")))
            .collect());
    }

    // The head lock: from here to commit no other append runs.
    let (head, mut chain, recorded_at) = chain::lock_head(&mut *connection).await?;
    if chain.position < head {
        // Events written around the append (before the chain, or by a tool's COPY):
        // chain them first, in order, so this append's hashes follow theirs.
        chain = chain::chain_unhashed(&mut *connection, chain, head).await?;
    }

    let (mut versions, mut stored_ids) = current_state(connection, requests).await?;

    let mut columns = Columns::default();
    let mut next_position = head;
    let mut outcomes = Vec::with_capacity(requests.len());
    for (request, verdict) in requests.iter().zip(verdicts.iter_mut()) {
        if let Some(rejection) = verdict.take() {
            outcomes.push(Err(rejection));
            continue;
        }
        if let Err(rejection) = admit(request, &versions, &stored_ids) {
            outcomes.push(Err(rejection));
            continue;
        }
        let first_position = next_position + 1;
        let mut streams = Vec::with_capacity(request.writes.len());
        for write in &request.writes {
            let mut version = versions.get(&write.stream_id).copied().unwrap_or(0);
            for event in &write.events {
                next_position += 1;
                version += 1;
                stored_ids.insert(event.event_id);
                columns.push(
                    next_position,
                    version,
                    &write.stream_id,
                    event,
                    recorded_at,
                    &mut chain,
                )?;
            }
            versions.insert(write.stream_id.clone(), version);
            streams.push(StreamAppended {
                stream_id: write.stream_id.clone(),
                version,
                last_position: next_position,
            });
        }
        outcomes.push(Ok(AppendOutcome {
            streams,
            first_position,
            last_position: next_position,
            recorded_at,
        }));
    }

    if next_position > head {
        write(connection, columns, recorded_at, next_position, chain).await?;
        metrics::counter!("event_store_events_appended_total").increment((next_position - head) as u64);
    }
    Ok(outcomes)
}

/// Rejections that need no database: empty requests, a stream named twice, an event id
/// given twice, too many events.
fn check_shape(request: &AppendRequest) -> Option<AppendRejection> {
    if request.writes.is_empty() || request.writes.iter().any(|write| write.events.is_empty()) {
        return Some(AppendRejection::Invalid(
            "every stream write needs at least one event",
        ));
    }
    if request.event_count() > MAX_EVENTS_PER_REQUEST {
        return Some(AppendRejection::Invalid("request holds too many events"));
    }
    let mut streams = HashSet::new();
    if !request
        .writes
        .iter()
        .all(|write| streams.insert(write.stream_id.as_str()))
    {
        return Some(AppendRejection::Invalid("a stream is named twice in one request"));
    }
    let mut ids = HashSet::new();
    for event in request.writes.iter().flat_map(|write| &write.events) {
        if !ids.insert(event.event_id) {
            return Some(AppendRejection::DuplicateEvent {
                event_id: event.event_id,
            });
        }
    }
    None
}

/// Checks a request against the versions and event ids as they stand under the lock,
/// including what earlier requests of the same batch appended.
fn admit(
    request: &AppendRequest,
    versions: &HashMap<String, u64>,
    stored_ids: &HashSet<Uuid>,
) -> Result<(), AppendRejection> {
    for write in &request.writes {
        let actual = versions.get(&write.stream_id).copied().unwrap_or(0);
        if !write.expected.admits(actual) {
            return Err(AppendRejection::WrongExpectedVersion {
                stream_id: write.stream_id.clone(),
                expected: write.expected,
                actual,
            });
        }
        if let Some(event) = write
            .events
            .iter()
            .find(|event| stored_ids.contains(&event.event_id))
        {
            return Err(AppendRejection::DuplicateEvent {
                event_id: event.event_id,
            });
        }
    }
    Ok(())
}

/// Under the head lock, in one round trip: each named stream's current version (0 for
/// a new stream, one index probe each) and which of the requests' event ids are stored.
async fn current_state(
    connection: &mut PgConnection,
    requests: &[AppendRequest],
) -> Result<(HashMap<String, u64>, HashSet<Uuid>), StoreError> {
    let stream_ids: Vec<&str> = requests
        .iter()
        .flat_map(|request| request.writes.iter().map(|write| write.stream_id.as_str()))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let event_ids: Vec<Uuid> = requests
        .iter()
        .flat_map(|request| request.writes.iter().flat_map(|write| &write.events))
        .map(|event| event.event_id)
        .collect();
    let rows: Vec<(Option<String>, Option<i64>, Option<Uuid>)> = sqlx::query_as(
        "SELECT s.id, (SELECT max(e.stream_version) FROM events e WHERE e.stream_id = s.id), NULL::uuid \
         FROM unnest($1::text[]) AS s(id) \
         UNION ALL \
         SELECT NULL, NULL, event_id FROM events WHERE event_id = ANY($2)",
    )
    .bind(&stream_ids)
    .bind(&event_ids)
    .fetch_all(&mut *connection)
    .await?;
    let mut versions = HashMap::with_capacity(stream_ids.len());
    let mut stored_ids = HashSet::new();
    for row in rows {
        match row {
            (Some(stream_id), version, _) => {
                versions.insert(stream_id, version.map_or(0, |version| version as u64));
            }
            (None, _, Some(event_id)) => {
                stored_ids.insert(event_id);
            }
            (None, _, None) => {}
        }
    }
    Ok((versions, stored_ids))
}

impl Columns {
    fn push(
        &mut self,
        position: i64,
        version: u64,
        stream_id: &str,
        event: &NewEvent,
        recorded_at: DateTime<Utc>,
        chain: &mut ChainHead,
    ) -> Result<(), StoreError> {
        let encode = |error: serde_json::Error| StoreError::Database(sqlx::Error::Encode(error.into()));
        let metadata = serde_json::to_value(&event.metadata).map_err(encode)?;
        // Exactly what is stored, so that a verifier recomputes the same hash from the
        // row (the `jsonb` round trip keeps every value serde_json writes).
        chain.hash = chain::event_hash(
            &chain.hash,
            &Chained {
                position,
                event_id: event.event_id,
                stream_id,
                stream_version: version as i64,
                event_type: &event.event_type,
                schema_version: event.schema_version,
                data: &event.data,
                metadata: &metadata,
                recorded_at,
            },
        )?;
        chain.position = position;
        self.hash.push(chain.hash.to_vec());
        self.position.push(position);
        self.event_id.push(event.event_id);
        self.stream_id.push(stream_id.to_owned());
        self.stream_version.push(version as i64);
        self.event_type.push(event.event_type.clone());
        self.schema_version.push(event.schema_version);
        self.data.push(event.data.clone());
        self.metadata.push(metadata);
        Ok(())
    }
}

/// The whole batch in one statement and one round trip: the multi-row insert, the
/// events' hashes, the new head and the chain's, and the notification (delivered at
/// commit, and only if the transaction commits).
async fn write(
    connection: &mut PgConnection,
    columns: Columns,
    recorded_at: DateTime<Utc>,
    new_head: i64,
    chain: ChainHead,
) -> Result<(), StoreError> {
    sqlx::query(
        "WITH inserted AS ( \
             INSERT INTO events \
                 (position, event_id, stream_id, stream_version, event_type, schema_version, data, metadata, recorded_at) \
             SELECT position, event_id, stream_id, stream_version, event_type, schema_version, data, metadata, $9 \
             FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::bigint[], $5::text[], $6::int[], $7::jsonb[], $8::jsonb[]) \
                 AS t(position, event_id, stream_id, stream_version, event_type, schema_version, data, metadata) \
         ), hashes AS ( \
             INSERT INTO event_hashes (position, hash) SELECT * FROM unnest($1::bigint[], $13::bytea[]) \
         ), head AS ( \
             UPDATE event_store_head SET position = $10, hashed_position = $14, hash = $15 \
         ) \
         SELECT pg_notify($11, $12)",
    )
    .bind(columns.position)
    .bind(columns.event_id)
    .bind(columns.stream_id)
    .bind(columns.stream_version)
    .bind(columns.event_type)
    .bind(columns.schema_version)
    .bind(columns.data)
    .bind(columns.metadata)
    .bind(recorded_at)
    .bind(new_head)
    .bind(crate::APPENDED_CHANNEL)
    .bind(new_head.to_string())
    .bind(columns.hash)
    .bind(chain.position)
    .bind(chain.hash.to_vec())
    .execute(connection)
    .await?;
    Ok(())
}
