//! The audit log, read straight from `events`: `GET /audit/events` with every filter
//! of API.md, paged by position, and `GET /audit/streams/{stream_id}`.
//!
//! Each filter has an index ending in `position` (migration `20261124000001`), and each
//! page is `WHERE <filters> AND position > $after ORDER BY position LIMIT $n`, so a page
//! is read in position order straight from the chosen index, however deep the cursor.
//! Only the filters a request gives appear in its statement, so the planner sees plain
//! equalities and never a `$1 IS NULL OR ...` it cannot index.
//!
//! `AccountOpened` envelopes show their owner opened while the account's key exists and
//! `null` after erasure, never the stored ciphertext ([`crate::owners`] says why).

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use event_store::{EventStore, RecordedEvent};
use serde::{Deserialize, Serialize};
use sqlx::{Postgres, QueryBuilder};
use tracing::instrument;

use crate::AppState;
use crate::consistency::{Consistency, Projected, read_consistent};
use crate::error::{QueryError, Result};
use crate::owners;
use crate::params::{self, Params, PathText};
use crate::progress::Source;

/// The longest stream id: the `events.stream_id` check allows 200.
pub const MAX_STREAM_ID_CHARS: usize = 200;

/// The longest event type: the `events.event_type` check allows 100.
pub const MAX_EVENT_TYPE_CHARS: usize = 100;

/// The longest actor or correlation id a filter may name: a token's `sub` and an
/// `X-Correlation-Id` are short in practice, and the bound keeps index probes small.
pub const MAX_METADATA_FILTER_CHARS: usize = 255;

/// A page of envelopes in position order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditPage {
    pub items: Vec<RecordedEvent>,
    /// Pass as `after` for the next page; `null` when no later event matched.
    pub next_after: Option<i64>,
}

/// Every envelope of one stream, in version order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamEvents {
    pub items: Vec<RecordedEvent>,
}

#[derive(Deserialize)]
pub struct AuditParams {
    after: Option<String>,
    limit: Option<String>,
    stream_id: Option<String>,
    event_type: Option<String>,
    actor: Option<String>,
    correlation_id: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

/// A validated `GET /audit/events` request.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub after: i64,
    pub limit: i64,
    pub stream_id: Option<String>,
    pub event_type: Option<String>,
    pub actor: Option<String>,
    pub correlation_id: Option<String>,
    /// Inclusive.
    pub since: Option<DateTime<Utc>>,
    /// Exclusive.
    pub until: Option<DateTime<Utc>>,
}

impl AuditFilter {
    fn parse(raw: AuditParams) -> Result<Self> {
        let since = raw
            .since
            .as_deref()
            .map(|raw| params::timestamp("since", raw))
            .transpose()?;
        let until = raw
            .until
            .as_deref()
            .map(|raw| params::timestamp("until", raw))
            .transpose()?;
        if let (Some(since), Some(until)) = (since, until)
            && since > until
        {
            return Err(QueryError::validation("until", "must not be before `since`"));
        }
        let text = |parameter, value: Option<String>, max| {
            value
                .map(|value| params::text_filter(parameter, &value, max))
                .transpose()
        };
        Ok(Self {
            after: raw
                .after
                .as_deref()
                .map(|raw| params::position("after", raw))
                .transpose()?
                .unwrap_or(0),
            limit: params::limit(raw.limit.as_deref())?,
            stream_id: text("stream_id", raw.stream_id, MAX_STREAM_ID_CHARS)?,
            event_type: text("event_type", raw.event_type, MAX_EVENT_TYPE_CHARS)?,
            actor: text("actor", raw.actor, MAX_METADATA_FILTER_CHARS)?,
            correlation_id: text("correlation_id", raw.correlation_id, MAX_METADATA_FILTER_CHARS)?,
            since,
            until,
        })
    }

    /// The page's statement, `up_to` being the head the answer reflects.
    pub fn statement(&self, up_to: i64) -> QueryBuilder<'static, Postgres> {
        self.statement_after("", up_to)
    }

    /// The statement behind `prefix` (`EXPLAIN`, say), so the index test examines
    /// exactly what is served.
    pub fn statement_after(&self, prefix: &str, up_to: i64) -> QueryBuilder<'static, Postgres> {
        let mut query = QueryBuilder::new(prefix.to_owned());
        query.push(
            " SELECT position, event_id, stream_id, stream_version, event_type, schema_version, \
             data, metadata, recorded_at, \
             (SELECT encode(h.hash, 'hex') FROM event_hashes h WHERE h.position = events.position) AS hash \
             FROM events WHERE position > ",
        );
        query.push_bind(self.after);
        query.push(" AND position <= ").push_bind(up_to);
        if let Some(stream_id) = &self.stream_id {
            query.push(" AND stream_id = ").push_bind(stream_id.clone());
        }
        if let Some(event_type) = &self.event_type {
            query.push(" AND event_type = ").push_bind(event_type.clone());
        }
        // Spelled exactly as the expression indexes are, so they match.
        if let Some(actor) = &self.actor {
            query
                .push(" AND (metadata ->> 'actor') = ")
                .push_bind(actor.clone());
        }
        if let Some(correlation_id) = &self.correlation_id {
            query
                .push(" AND (metadata ->> 'correlation_id') = ")
                .push_bind(correlation_id.clone());
        }
        if let Some(since) = self.since {
            query.push(" AND recorded_at >= ").push_bind(since);
        }
        if let Some(until) = self.until {
            query.push(" AND recorded_at < ").push_bind(until);
        }
        // One row more than the page tells whether another page follows.
        query.push(" ORDER BY position LIMIT ").push_bind(self.limit + 1);
        query
    }
}

/// The head of the log, which every audit answer reflects.
pub(crate) async fn head(state: &AppState) -> Result<i64> {
    Ok(sqlx::query_scalar("SELECT position FROM event_store_head")
        .fetch_one(&state.pool)
        .await?)
}

/// Envelopes in position order, filtered.
#[utoipa::path(
    get,
    path = "/audit/events",
    tag = "audit",
    params(
        ("after" = Option<i64>, Query, description = "Only events after this position (`next_after` of the previous page)."),
        ("limit" = Option<i64>, Query, description = "Page size, 1 to 1000 (default 50)."),
        ("stream_id" = Option<String>, Query, description = "`account-<uuid>` or `transfer-<uuid>`."),
        ("event_type" = Option<String>, Query, description = "For example `FundsDeposited`."),
        ("actor" = Option<String>, Query, description = "The `actor` of the events' metadata."),
        ("correlation_id" = Option<String>, Query, description = "The `correlation_id` of the events' metadata."),
        ("since" = Option<String>, Query, description = "RFC 3339; events recorded at or after."),
        ("until" = Option<String>, Query, description = "RFC 3339; events recorded before."),
        ("min_position" = Option<i64>, Query, description = "Wait until the log includes this position."),
        ("wait_ms" = Option<u64>, Query, description = "How long to wait for `min_position` (default 2000, at most 10000)."),
    ),
    responses(
        (status = 200, description = "A page of envelopes.", body = crate::openapi::AuditPageSchema),
        (status = 400, description = "Malformed parameter.", content_type = "application/problem+json"),
        (status = 503, description = "`min_position` not reached within `wait_ms`.", content_type = "application/problem+json"),
    )
)]
pub async fn list_events(
    State(state): State<AppState>,
    Params(raw): Params<AuditParams>,
    consistency: Consistency,
) -> Result<Projected<Json<AuditPage>>> {
    let filter = AuditFilter::parse(raw)?;
    let answer = read_consistent(&state.progress, Source::Events, consistency, || {
        read_page(&state, &filter)
    })
    .await?;
    Ok(Projected {
        position: answer.position,
        body: Json(answer.body),
    })
}

#[instrument(skip_all)]
async fn read_page(state: &AppState, filter: &AuditFilter) -> Result<Projected<AuditPage>> {
    let position = head(state).await?;
    let mut items: Vec<RecordedEvent> = filter
        .statement(position)
        .build_query_as()
        .fetch_all(&state.pool)
        .await?;
    let next_after = if items.len() as i64 > filter.limit {
        items.truncate(filter.limit as usize);
        items.last().map(|last| last.position)
    } else {
        None
    };
    owners::reveal_envelopes(&state.pool, &state.vault, &mut items).await?;
    Ok(Projected {
        position,
        body: AuditPage { items, next_after },
    })
}

/// Every envelope of one stream, in version order.
#[utoipa::path(
    get,
    path = "/audit/streams/{stream_id}",
    tag = "audit",
    params(
        ("stream_id" = String, Path, description = "`account-<uuid>` or `transfer-<uuid>`."),
        ("min_position" = Option<i64>, Query, description = "Wait until the log includes this position."),
        ("wait_ms" = Option<u64>, Query, description = "How long to wait for `min_position` (default 2000, at most 10000)."),
    ),
    responses(
        (status = 200, description = "The stream's envelopes.", body = crate::openapi::StreamEventsSchema),
        (status = 400, description = "Malformed stream id or parameter.", content_type = "application/problem+json"),
        (status = 404, description = "No event in this stream.", content_type = "application/problem+json"),
        (status = 503, description = "`min_position` not reached within `wait_ms`.", content_type = "application/problem+json"),
    )
)]
pub async fn stream_events(
    State(state): State<AppState>,
    PathText(stream_id): PathText,
    consistency: Consistency,
) -> Result<Projected<Json<StreamEvents>>> {
    if stream_id.chars().count() > MAX_STREAM_ID_CHARS || domain::parse_stream_id(&stream_id).is_none() {
        return Err(QueryError::validation(
            "stream_id",
            "must be `account-<uuid>` or `transfer-<uuid>`",
        ));
    }
    let answer = read_consistent(&state.progress, Source::Events, consistency, || {
        read_stream(&state, &stream_id)
    })
    .await?;
    if answer.body.is_empty() {
        return Err(QueryError::StreamNotFound(stream_id));
    }
    Ok(Projected {
        position: answer.position,
        body: Json(StreamEvents { items: answer.body }),
    })
}

async fn read_stream(state: &AppState, stream_id: &str) -> Result<Projected<Vec<RecordedEvent>>> {
    let position = head(state).await?;
    let mut events = EventStore::new(state.pool.clone())
        .read_stream(stream_id, 0)
        .await?;
    // Appends after the head was read are left for the next request, so that the
    // answer is exactly the stream as of `position`.
    events.retain(|event| event.position <= position);
    owners::reveal_envelopes(&state.pool, &state.vault, &mut events).await?;
    Ok(Projected {
        position,
        body: events,
    })
}
