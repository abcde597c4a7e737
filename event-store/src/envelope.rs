//! The event envelope: what a writer hands to [`crate::append`] and what every reader
//! gets back. Its JSON form is the contract of API.md ("Events") and is the body of every
//! NATS message, so field names here are public.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Who did what, why, and as part of which request; stored with every event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// The authenticated subject (a token's `sub`), or a fixed name for anonymous use.
    pub actor: String,
    /// Ties together everything one client interaction caused (`X-Correlation-Id`).
    pub correlation_id: String,
    /// What directly caused this event: the request id of the command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    /// The command's name, for example `Deposit`.
    pub command: String,
    /// The client's `Idempotency-Key`, when it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// W3C trace context (`traceparent`) of the request, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

/// An event to append; positions, versions and time are given by the store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Chosen by the writer, so that a retried append is recognised as the same event.
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: i32,
    pub data: serde_json::Value,
    pub metadata: Metadata,
}

impl NewEvent {
    /// Wraps a domain event's stored form with a fresh UUIDv7 id.
    pub fn from_domain(stored: domain::EventData, metadata: Metadata) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            event_type: stored.event_type.to_owned(),
            schema_version: stored.schema_version,
            data: stored.data,
            metadata,
        }
    }
}

/// A committed event with its place in the log: the envelope of API.md.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct RecordedEvent {
    /// Global, gap-free, increasing in commit order.
    pub position: i64,
    pub event_id: Uuid,
    pub stream_id: String,
    /// 1 for a stream's first event, then contiguous.
    pub stream_version: i64,
    pub event_type: String,
    pub schema_version: i32,
    pub data: serde_json::Value,
    #[sqlx(json)]
    pub metadata: Metadata,
    pub recorded_at: DateTime<Utc>,
    /// The event's hash in the tamper-evident chain ([`crate::chain`]), lowercase hex;
    /// `null` only for an event copied into the table by a tool and not yet chained.
    /// Absent from messages published before the chain existed.
    #[serde(default)]
    #[sqlx(default)]
    pub hash: Option<String>,
}

impl RecordedEvent {
    /// Decodes the domain event, upcasting older schema versions.
    pub fn decode(&self) -> Result<domain::LedgerEvent, domain::DecodeError> {
        domain::LedgerEvent::from_stored(&self.event_type, self.schema_version, self.data.clone())
    }
}
