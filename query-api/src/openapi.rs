//! `GET /openapi.json`: the OpenAPI 3.1 description of every query endpoint, generated
//! from the handlers' own annotations so it cannot drift from their parameters. The
//! paths come from the router's declaration ([`crate::routes`]); [`complete`] adds the
//! bearer scheme and, from [`crate::access::ACCESS`], the role each operation needs.

use chrono::{DateTime, Utc};
use serde::Serialize;
use service::openapi;
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

use crate::access::ACCESS;

/// The event envelope of API.md ("Events"), as `event_store::RecordedEvent` serialises.
#[derive(Serialize, ToSchema)]
#[schema(as = Envelope)]
pub struct EnvelopeSchema {
    pub position: i64,
    pub event_id: Uuid,
    pub stream_id: String,
    pub stream_version: i64,
    pub event_type: String,
    pub schema_version: i32,
    pub data: serde_json::Value,
    /// `actor`, `correlation_id`, `causation_id`, `command`, `idempotency_key`, `trace`.
    pub metadata: serde_json::Value,
    pub recorded_at: DateTime<Utc>,
    /// The event's hash in the tamper-evident chain (SHA-256, lowercase hex; API.md,
    /// "Tamper-evident log"); `null` only for an event copied in by a tool and not yet
    /// chained.
    pub hash: Option<String>,
}

/// `GET /audit/events`.
#[derive(Serialize, ToSchema)]
#[schema(as = AuditPage)]
pub struct AuditPageSchema {
    pub items: Vec<EnvelopeSchema>,
    /// Pass as `after` for the next page; `null` when no later event matched.
    pub next_after: Option<i64>,
}

/// `GET /audit/streams/{stream_id}`.
#[derive(Serialize, ToSchema)]
#[schema(as = StreamEvents)]
pub struct StreamEventsSchema {
    pub items: Vec<EnvelopeSchema>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "eventledger query API",
        description = "Read models, audit log and history of the eventledger money ledger. \
                       Every answer carries `X-Projection-Position`; errors are `application/problem+json`."
    ),
    components(schemas(
        crate::views::accounts::AccountView,
        crate::views::accounts::OwnerView,
        crate::views::accounts::AccountPage,
        crate::views::transactions::TransactionView,
        crate::views::transactions::TransactionPage,
        crate::views::transfers::TransferView,
        crate::views::transfers::TransferPage,
        crate::history::AccountHistoryView,
        crate::projections::ProjectionView,
        crate::projections::ProjectionList,
        EnvelopeSchema,
        AuditPageSchema,
        StreamEventsSchema,
        crate::verify::VerdictSchema,
    ))
)]
pub struct ApiDoc;

/// Adds the bearer scheme, and to every operation that needs a role: the requirement,
/// the role in its description, and the 401 and 403 answers.
pub fn complete(document: &mut utoipa::openapi::OpenApi) {
    openapi::secure(document, ACCESS);
}

/// Every bound the query API enforces on a parameter, from the constant that enforces it:
/// (location, parameter, JSON Schema keywords).
pub fn parameter_bounds() -> openapi::PlacedBounds {
    use crate::audit::{MAX_EVENT_TYPE_CHARS, MAX_METADATA_FILTER_CHARS, MAX_STREAM_ID_CHARS};
    let chars = |max: usize| vec![("minLength", 1), ("maxLength", max as i64)];
    let position = || vec![("minimum", 0)];
    vec![
        (
            "query",
            "limit",
            vec![("minimum", 1), ("maximum", crate::params::MAX_LIMIT)],
        ),
        (
            "query",
            "wait_ms",
            vec![
                ("minimum", 0),
                ("maximum", crate::consistency::MAX_WAIT_MS as i64),
            ],
        ),
        ("query", "min_position", position()),
        ("query", "after", position()),
        ("query", "from", vec![("minimum", 1)]),
        ("query", "to", position()),
        ("query", "at_position", position()),
        (
            "query",
            "cursor",
            vec![("maxLength", crate::cursor::MAX_CURSOR_CHARS as i64)],
        ),
        ("query", "stream_id", chars(MAX_STREAM_ID_CHARS)),
        (
            "path",
            "stream_id",
            vec![("maxLength", MAX_STREAM_ID_CHARS as i64)],
        ),
        ("query", "event_type", chars(MAX_EVENT_TYPE_CHARS)),
        ("query", "actor", chars(MAX_METADATA_FILTER_CHARS)),
        ("query", "correlation_id", chars(MAX_METADATA_FILTER_CHARS)),
    ]
}

/// The document as served: `document` with [`parameter_bounds`] written in.
pub fn bounded(document: &utoipa::openapi::OpenApi) -> serde_json::Value {
    let mut document = serde_json::to_value(document).unwrap_or_default();
    for (location, name, bounds) in parameter_bounds() {
        openapi::bound_parameter(&mut document, location, name, &bounds);
    }
    document
}
