//! `GET /openapi.json`: the OpenAPI 3.1 description of every query endpoint, generated
//! from the handlers' own annotations so it cannot drift from their parameters. The
//! paths come from the router's declaration ([`crate::routes`]); [`complete`] adds the
//! bearer scheme and, from [`crate::access::ACCESS`], the role each operation needs.

use axum::http::Method;
use chrono::{DateTime, Utc};
use event_store::process::auth::Role;
use serde::Serialize;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, ResponseBuilder};
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

use crate::access::ACCESS;

/// The name of the bearer-token security scheme in the document.
const BEARER_SCHEME: &str = "bearer";

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
        crate::history::AccountHistoryView,
        crate::projections::ProjectionView,
        crate::projections::ProjectionList,
        EnvelopeSchema,
        AuditPageSchema,
        StreamEventsSchema,
    ))
)]
pub struct ApiDoc;

/// Adds the bearer scheme, and to every operation that needs a role: the requirement,
/// the role in its description, and the 401 and 403 answers.
pub fn complete(document: &mut utoipa::openapi::OpenApi) {
    let mut bearer = Http::new(HttpAuthScheme::Bearer);
    bearer.bearer_format = Some("JWT".to_owned());
    document
        .components
        .get_or_insert_with(Default::default)
        .add_security_scheme(BEARER_SCHEME, SecurityScheme::Http(bearer));
    for (path, item) in document.paths.paths.iter_mut() {
        if let Some(operation) = &mut item.get
            && let Some(role) = required_role(&Method::GET, path)
        {
            add_security(operation, role);
        }
    }
}

/// The role [`ACCESS`] gives an operation; `None` if it is open or unlisted.
fn required_role(method: &Method, path: &str) -> Option<Role> {
    ACCESS
        .iter()
        .find(|access| access.method == method && access.path == path)
        .and_then(|access| access.role)
}

fn add_security(operation: &mut Operation, role: Role) {
    operation.security = Some(vec![SecurityRequirement::new(
        BEARER_SCHEME,
        Vec::<String>::new(),
    )]);
    let needs = match role {
        Role::Admin => "Needs the `admin` role.".to_owned(),
        other => format!("Needs the `{}` role (or `admin`).", other.as_str()),
    };
    operation.description = Some(match operation.description.take() {
        Some(description) => format!("{description}\n\n{needs}"),
        None => needs,
    });
    for (status, description) in [
        (
            "401",
            "No bearer token, or one that is invalid or expired (WWW-Authenticate: Bearer)",
        ),
        (
            "403",
            "The token's roles do not include the one this operation needs",
        ),
    ] {
        let response = ResponseBuilder::new()
            .description(description)
            .content("application/problem+json", ContentBuilder::new().build())
            .build();
        operation
            .responses
            .responses
            .insert(status.to_owned(), response.into());
    }
}
