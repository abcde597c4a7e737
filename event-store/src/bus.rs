//! The JetStream stream the relay publishes to and the projector reads: its shape, its
//! replication and its retention window, in one place so that whichever process reaches
//! NATS first creates it the same way and a changed setting is applied to it.
//!
//! PostgreSQL is the only record (ARCHITECTURE.md); the stream is a fast way to hand
//! events on, so it keeps a bounded window of them, not the whole ledger. A consumer that
//! falls behind the window (a projector stopped for longer than `max_age`) finds a gap and
//! fills it from PostgreSQL, as it does for any gap, so retention never loses an event.

use std::time::Duration;

use async_nats::jetstream::{self, stream::Config};
use tracing::info;

use crate::relay::{DUPLICATE_WINDOW, RelayError};

/// How long the stream keeps an event by default: a week, enough for a projector or a
/// downstream consumer to be down over a long weekend and still catch up from NATS.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// No bound on bytes, JetStream's `-1`: the default. JetStream reserves a stream's
/// `max_bytes` up front against the server's storage limit (on every replica), so a fixed
/// default would be refused outright on a small volume ("insufficient storage
/// resources") and, on a test server, by the sum of many streams. The age bounds the
/// stream by default; a deployment sets `EVENTS_STREAM_MAX_BYTES` to the volume it gives
/// NATS (compose and the Kubernetes manifests do).
pub const UNBOUNDED_BYTES: i64 = -1;

/// The stream's replication and retention (`EVENTS_STREAM_REPLICAS`,
/// `EVENTS_STREAM_MAX_AGE_SECONDS`, `EVENTS_STREAM_MAX_BYTES`; API.md, "Processes and
/// configuration"). The oldest events are discarded first when either bound is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Copies of the stream in a NATS cluster (1 to 5; JetStream's own bound). The
    /// durable consumers inherit it.
    pub replicas: usize,
    /// How long an event stays in the stream.
    pub max_age: Duration,
    /// The most bytes the stream holds; [`UNBOUNDED_BYTES`] for no bound.
    pub max_bytes: i64,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            replicas: 1,
            max_age: DEFAULT_MAX_AGE,
            max_bytes: UNBOUNDED_BYTES,
        }
    }
}

impl StreamLimits {
    /// JetStream refuses a de-duplication window longer than the stream's `max_age`; a
    /// window never needs to be longer than what the stream keeps anyway.
    fn duplicate_window(&self) -> Duration {
        DUPLICATE_WINDOW.min(self.max_age)
    }

    /// Whether `config` (an existing stream's) already has these limits.
    fn applied_to(&self, config: &Config) -> bool {
        config.num_replicas == self.replicas
            && config.max_age == self.max_age
            && config.max_bytes == self.max_bytes
            && config.duplicate_window == self.duplicate_window()
    }
}

/// Creates the stream if it does not exist (file storage, subjects `<prefix>.>`, these
/// limits), or brings an existing one to these limits; every other setting of an
/// existing stream is left as it is.
///
/// # Errors
///
/// [`RelayError::Stream`] when JetStream refuses the stream or the change (for example
/// more replicas than the cluster has nodes, or replicas on a server that is not
/// clustered); [`RelayError::StreamInfo`] when its settings cannot be read.
pub async fn ensure_stream(
    jetstream: &jetstream::Context,
    stream_name: &str,
    subject_prefix: &str,
    limits: &StreamLimits,
) -> Result<jetstream::stream::Stream, RelayError> {
    let mut stream = jetstream
        .get_or_create_stream(Config {
            name: stream_name.to_owned(),
            subjects: vec![format!("{subject_prefix}.>")],
            storage: jetstream::stream::StorageType::File,
            num_replicas: limits.replicas,
            max_age: limits.max_age,
            max_bytes: limits.max_bytes,
            duplicate_window: limits.duplicate_window(),
            ..Default::default()
        })
        .await?;
    let existing = stream.info().await?.config.clone();
    if !limits.applied_to(&existing) {
        info!(
            stream = stream_name,
            replicas = limits.replicas,
            max_age_seconds = limits.max_age.as_secs(),
            max_bytes = limits.max_bytes,
            "bringing the stream to the configured replicas and retention"
        );
        jetstream
            .update_stream(Config {
                num_replicas: limits.replicas,
                max_age: limits.max_age,
                max_bytes: limits.max_bytes,
                duplicate_window: limits.duplicate_window(),
                ..existing
            })
            .await?;
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_duplicate_window_never_outlasts_what_the_stream_keeps() {
        let short = StreamLimits {
            max_age: Duration::from_secs(1),
            ..StreamLimits::default()
        };
        assert_eq!(short.duplicate_window(), Duration::from_secs(1));
        assert_eq!(StreamLimits::default().duplicate_window(), DUPLICATE_WINDOW);
    }
}
