//! The OpenAPI document served at `GET /openapi.json`.
//!
//! The command routes and their operations come from one declaration
//! (`utoipa_axum::routes!` in [`crate::app`]), so the router and the document cannot
//! drift. What every command shares (its headers, its error answers) is added here once
//! rather than repeated on each handler; the operational endpoints, which live in
//! `service::ops`, are described here by hand. Every bound the server enforces is
//! written into the served document from the constant that enforces it ([`bounded`]). The bearer scheme,
//! and the role each operation needs, come from [`crate::access::ACCESS`].

use service::openapi::{self, problem_response};
use utoipa::OpenApi;
use utoipa::openapi::path::{HttpMethod, Operation, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{PathItem, Required, ResponseBuilder};

use crate::access::ACCESS;
use crate::dto::Problem;

/// The document's fixed parts; paths are added by the router.
#[derive(OpenApi)]
#[openapi(
    info(title = "eventledger command API", description = "Commands of the eventledger money ledger (API.md)."),
    components(schemas(Problem)),
    tags((name = "accounts", description = "Account commands"), (name = "transfers", description = "Transfers"))
)]
pub struct ApiDoc;

/// Every error a command may answer, with when.
const COMMAND_ERRORS: &[(&str, &str)] = &[
    (
        "400",
        "Malformed JSON, an unknown or mistyped field, or a malformed header",
    ),
    (
        "404",
        "The account (or, on a post or void, the transfer) does not exist",
    ),
    (
        "409",
        "The same Idempotency-Key is in flight, or other writers kept changing the streams",
    ),
    (
        "412",
        "If-Match or If-None-Match does not hold for the account's current version (or its absence)",
    ),
    ("413", "The body is over 64 KiB"),
    ("415", "The body is not application/json"),
    (
        "422",
        "A value or a rule of the ledger is broken, or the Idempotency-Key was used for another request",
    ),
    (
        "503",
        "The command queue is full or the database is unavailable; see Retry-After",
    ),
];

/// Every bound the command API enforces on a body field, from the constant that enforces
/// it: (component schema, property, JSON Schema keywords).
pub fn body_bounds() -> openapi::PlacedBounds {
    use domain::{Amount, Email, OwnerName, Reason, Reference};
    let amount = || vec![("minimum", 1), ("maximum", Amount::MAX_MINOR_UNITS)];
    let text = |max: usize| vec![("minLength", 1), ("maxLength", max as i64)];
    vec![
        ("MoneyBody", "amount", amount()),
        ("TransferBody", "amount", amount()),
        ("PostTransferBody", "amount", amount()),
        (
            "TransferBody",
            "timeout_seconds",
            vec![("minimum", 1), ("maximum", crate::handlers::MAX_TIMEOUT_SECONDS)],
        ),
        (
            "OpenAccountBody",
            "overdraft_limit",
            vec![("minimum", 0), ("maximum", Amount::MAX_MINOR_UNITS)],
        ),
        ("MoneyBody", "reference", text(Reference::MAX_CHARS)),
        ("TransferBody", "reference", text(Reference::MAX_CHARS)),
        ("ReasonBody", "reason", text(Reason::MAX_CHARS)),
        ("OwnerBody", "name", text(OwnerName::MAX_CHARS)),
        ("OwnerBody", "email", text(Email::MAX_CHARS)),
    ]
}

/// Every bound the command API enforces on a header, from its constant.
pub fn header_bounds() -> Vec<(&'static str, openapi::BoundList)> {
    use crate::extract::{MAX_CORRELATION_ID_CHARS, MAX_IDEMPOTENCY_KEY_CHARS};
    use crate::preconditions::MAX_PRECONDITION_BYTES;
    vec![
        (
            "Idempotency-Key",
            vec![("minLength", 1), ("maxLength", MAX_IDEMPOTENCY_KEY_CHARS as i64)],
        ),
        (
            "X-Correlation-Id",
            vec![("minLength", 1), ("maxLength", MAX_CORRELATION_ID_CHARS as i64)],
        ),
        ("If-Match", vec![("maxLength", MAX_PRECONDITION_BYTES as i64)]),
        (
            "If-None-Match",
            vec![("maxLength", MAX_PRECONDITION_BYTES as i64)],
        ),
    ]
}

/// The document as served: `document` with [`body_bounds`] and [`header_bounds`]
/// written in, so that it states exactly what the server enforces.
pub fn bounded(document: &utoipa::openapi::OpenApi) -> serde_json::Value {
    let mut document = serde_json::to_value(document).unwrap_or_default();
    for (schema, property, bounds) in body_bounds() {
        openapi::bound_property(&mut document, schema, property, &bounds);
    }
    for (header, bounds) in header_bounds() {
        openapi::bound_parameter(&mut document, "header", header, &bounds);
    }
    document
}

/// Adds the shared headers and error answers to every command operation, the bearer
/// scheme and each operation's role, and the operational endpoints.
pub fn complete(document: &mut utoipa::openapi::OpenApi) {
    for item in document.paths.paths.values_mut() {
        for operation in [&mut item.post, &mut item.delete].into_iter().flatten() {
            add_command_parts(operation);
        }
    }
    openapi::secure(document, ACCESS);
    for (path, description) in [
        ("/healthz", "The process runs"),
        ("/readyz", "PostgreSQL and NATS answer (503 otherwise)"),
        ("/metrics", "Prometheus metrics, text format"),
        ("/openapi.json", "This document"),
    ] {
        let operation = OperationBuilder::new()
            .tag("operations")
            .summary(Some(description))
            .response("200", ResponseBuilder::new().description(description).build())
            .build();
        document
            .paths
            .paths
            .insert(path.to_owned(), PathItem::new(HttpMethod::Get, operation));
    }
}

fn add_command_parts(operation: &mut Operation) {
    let string = || ObjectBuilder::new().schema_type(Type::String).build();
    let headers = [
        (
            "Idempotency-Key",
            "Up to 255 printable ASCII characters; a retry with the same key and body replays the first answer",
        ),
        (
            "X-Correlation-Id",
            "Carried into every event's metadata; generated if absent and echoed back",
        ),
        (
            "If-Match",
            "`*` or a list of entity-tags \"<stream_version>\": go ahead only if the account (on a post or \
             void: the transfer) exists at one of these versions (weak tags never match), else 412; never \
             holds when opening an account or creating a transfer",
        ),
        (
            "If-None-Match",
            "`*` or a list of entity-tags: go ahead only if the account does not exist (`*`) or is at none \
             of these versions, else 412; `*` on opening an account: 412 if it exists",
        ),
    ];
    let parameters = operation.parameters.get_or_insert_with(Vec::new);
    for (name, description) in headers {
        parameters.push(
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Header)
                .required(Required::False)
                .description(Some(description))
                .schema(Some(string()))
                .build(),
        );
    }
    for (status, description) in COMMAND_ERRORS {
        operation
            .responses
            .responses
            .insert((*status).to_owned(), problem_response(description, true).into());
    }
}
