//! The OpenAPI document served at `GET /openapi.json`.
//!
//! The command routes and their operations come from one declaration
//! (`utoipa_axum::routes!` in [`crate::app`]), so the router and the document cannot
//! drift. What every command shares (its headers, its error answers) is added here once
//! rather than repeated on each handler; the operational endpoints, which live in the
//! shared `event-store::process` module, are described here by hand. The bearer scheme,
//! and the role each operation needs, come from [`crate::access::ACCESS`].

use axum::http::Method;
use event_store::process::auth::Role;
use utoipa::OpenApi;
use utoipa::openapi::path::{HttpMethod, Operation, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, PathItem, Ref, Required, ResponseBuilder};

use crate::access::ACCESS;
use crate::dto::Problem;

/// The name of the bearer-token security scheme in the document.
const BEARER_SCHEME: &str = "bearer";

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

/// Adds the shared headers and error answers to every command operation, and the
/// operational endpoints.
pub fn complete(document: &mut utoipa::openapi::OpenApi) {
    let mut bearer = Http::new(HttpAuthScheme::Bearer);
    bearer.bearer_format = Some("JWT".to_owned());
    document
        .components
        .get_or_insert_with(Default::default)
        .add_security_scheme(BEARER_SCHEME, SecurityScheme::Http(bearer));
    for (path, item) in document.paths.paths.iter_mut() {
        // `If-Match` names an account's version, so only commands on one account take it.
        let on_one_account = path.contains("{id}");
        for (method, operation) in [(Method::POST, &mut item.post), (Method::DELETE, &mut item.delete)] {
            if let Some(operation) = operation {
                add_command_parts(operation, on_one_account);
                if let Some(role) = required_role(&method, path) {
                    add_security(operation, role);
                }
            }
        }
    }
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

/// The role [`ACCESS`] gives an operation; `None` if it is open or unlisted.
fn required_role(method: &Method, path: &str) -> Option<Role> {
    ACCESS
        .iter()
        .find(|access| access.method == method && access.path == path)
        .and_then(|access| access.role)
}

/// The bearer requirement, the role in the description, and the 401 and 403 answers.
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
        operation
            .responses
            .responses
            .insert(status.to_owned(), problem_response(description).into());
    }
}

fn problem_response(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/problem+json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build()
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
            .insert((*status).to_owned(), problem_response(description).into());
    }
}
