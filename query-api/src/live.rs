//! The live tail: `GET /audit/events/live?after=N` streams every envelope after
//! position N as Server-Sent Events, and then each new one as it commits. Each event's
//! SSE `id` is its position, so a client that reconnects with `Last-Event-ID` resumes
//! exactly after the last envelope it received.
//!
//! Between batches the stream sleeps on [`crate::progress::Progress`], woken by the
//! append notifications (`event_store::APPENDED_CHANNEL`); it holds no database
//! connection while it waits.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use event_store::pii::Vault;
use event_store::{EventStore, RecordedEvent};
use futures::Stream;
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::AppState;
use crate::error::{QueryError, Result};
use crate::params::{self, Params};
use crate::progress::{DemandGuard, PROJECTION_POSITION_HEADER, Positions, Source};

/// The most envelopes read per query while catching up: large enough that a reader far
/// behind catches up in few queries, small enough to bound one query's memory.
pub const LIVE_BATCH: i64 = 500;

/// The most live tails served at once by default (`--max-live-tails`). Each costs a task
/// and a query per wake-up; past this a new one gets a 503 rather than slowing down every
/// tail already open.
pub const MAX_LIVE_TAILS: usize = 256;

/// How often an idle tail sends an SSE comment, so proxies and clients do not time
/// out a quiet connection.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(15);

/// Bounds the number of open tails; shared by every request of a process.
#[derive(Clone)]
pub struct LiveTails(Arc<Semaphore>);

impl LiveTails {
    /// At most `max` tails open at once.
    pub fn new(max: usize) -> Self {
        Self(Arc::new(Semaphore::new(max)))
    }
}

impl Default for LiveTails {
    fn default() -> Self {
        Self::new(MAX_LIVE_TAILS)
    }
}

#[derive(Deserialize)]
pub struct LiveParams {
    after: Option<String>,
}

/// Streams envelopes as they commit.
#[utoipa::path(
    get,
    path = "/audit/events/live",
    tag = "audit",
    params(
        ("after" = Option<i64>, Query, description = "Start after this position (default 0: the whole log, then live)."),
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this position; wins over `after`."),
    ),
    responses(
        (status = 200, description = "`text/event-stream`: one event per envelope, `id` = position, `data` = the envelope as JSON.", content_type = "text/event-stream"),
        (status = 400, description = "Malformed `after` or `Last-Event-ID`.", content_type = "application/problem+json"),
        (status = 503, description = "Too many live tails are open.", content_type = "application/problem+json"),
    )
)]
pub async fn live_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    Params(raw): Params<LiveParams>,
) -> Result<Response> {
    let resume = headers
        .get("last-event-id")
        .map(|value| {
            value
                .to_str()
                .map_err(|_| QueryError::validation("Last-Event-ID", "must be a position"))
                .and_then(|text| params::position("Last-Event-ID", text.trim()))
        })
        .transpose()?;
    let after = match resume {
        Some(position) => position,
        None => raw
            .after
            .as_deref()
            .map(|raw| params::position("after", raw))
            .transpose()?
            .unwrap_or(0),
    };
    let permit = state
        .live_tails
        .0
        .clone()
        .try_acquire_owned()
        .map_err(|_| QueryError::TooManyLiveTails)?;
    let head = state.progress.current().get(Source::Events);
    let tail = Tail {
        store: EventStore::new(state.pool.clone()),
        after,
        buffered: VecDeque::new(),
        positions: state.progress.subscribe(),
        _demand: state.progress.tail_demand(),
        stop: state.stop.clone(),
        vault: state.vault.clone(),
        _permit: permit,
    };
    let mut response = Sse::new(tail.into_stream())
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE_INTERVAL))
        .into_response();
    response
        .headers_mut()
        .insert(PROJECTION_POSITION_HEADER, HeaderValue::from(head));
    Ok(response)
}

/// One client's tail: where it is, and what was read but not yet sent.
struct Tail {
    store: EventStore,
    after: i64,
    buffered: VecDeque<RecordedEvent>,
    positions: watch::Receiver<Positions>,
    /// Keeps a replica's positions being read while the tail is open.
    _demand: DemandGuard,
    /// The process is stopping: end the stream so graceful shutdown is not held up.
    stop: CancellationToken,
    /// Opens owners in `AccountOpened` envelopes, as the audit log does.
    vault: Vault,
    /// Held for as long as the stream lives.
    _permit: OwnedSemaphorePermit,
}

impl Tail {
    fn into_stream(self) -> impl Stream<Item = Result<Event, Infallible>> + Send {
        futures::stream::unfold(self, |mut tail| async move {
            let event = tail.next().await?;
            Some((Ok(event), tail))
        })
    }

    /// The next SSE event, or `None` to end the stream (shutdown, or a failed read: the
    /// client reconnects with `Last-Event-ID` and loses nothing).
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(envelope) = self.buffered.pop_front() {
                self.after = envelope.position;
                return match Event::default()
                    .id(envelope.position.to_string())
                    .json_data(&envelope)
                {
                    Ok(event) => Some(event),
                    Err(error) => {
                        tracing::error!(%error, position = envelope.position, "cannot encode an envelope");
                        None
                    }
                };
            }
            let read = tokio::select! {
                () = self.stop.cancelled() => return None,
                read = self.store.read_all(self.after, LIVE_BATCH) => read,
            };
            match read {
                Ok(events) if events.is_empty() => {
                    let after = self.after;
                    tokio::select! {
                        () = self.stop.cancelled() => return None,
                        changed = self.positions.wait_for(|positions| positions.get(Source::Events) > after) => {
                            changed.ok()?;
                        }
                    }
                }
                Ok(mut events) => {
                    let revealed =
                        crate::owners::reveal_envelopes(self.store.pool(), &self.vault, &mut events).await;
                    if let Err(error) = revealed {
                        tracing::error!(error = %event_store::error_chain(&error), "live tail cannot open an owner, closing it");
                        return None;
                    }
                    self.buffered.extend(events);
                }
                Err(error) => {
                    tracing::warn!(error = %event_store::error_chain(&error), "live tail read failed, closing it");
                    return None;
                }
            }
        }
    }
}
