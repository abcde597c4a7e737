//! The OpenAPI document served at `GET /openapi.json`.
//!
//! The command routes and their operations come from one declaration
//! (`utoipa_axum::routes!` in [`crate::app`]), so the router and the document cannot
//! drift. What every command shares (its headers, its error answers) is added here once
//! rather than repeated on each handler; the operational endpoints, which live in the
//! shared `event-store::process` module, are described here by hand. The bearer scheme,
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
    ("404", "The account does not exist"),
    (
        "409",
        "The same Idempotency-Key is in flight, or other writers kept changing the streams",
    ),
    ("412", "If-Match names another version than the account's"),
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

/// Adds the shared headers and error answers to every command operation, the bearer
/// scheme and each operation's role, and the operational endpoints.
pub fn complete(document: &mut utoipa::openapi::OpenApi) {
    for (path, item) in document.paths.paths.iter_mut() {
        // `If-Match` names an account's version, so only commands on one account take it.
        let on_one_account = path.contains("{id}");
        for operation in [&mut item.post, &mut item.delete].into_iter().flatten() {
            add_command_parts(operation, on_one_account);
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

fn add_command_parts(operation: &mut Operation, takes_if_match: bool) {
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
            "\"<stream_version>\" of the account: append only if it is still at that version, else 412",
        ),
    ];
    let parameters = operation.parameters.get_or_insert_with(Vec::new);
    for (name, description) in headers {
        if name == "If-Match" && !takes_if_match {
            continue;
        }
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
        if *status == "412" && !takes_if_match {
            continue;
        }
        operation
            .responses
            .responses
            .insert((*status).to_owned(), problem_response(description, true).into());
    }
}
