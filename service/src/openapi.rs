//! What the services' OpenAPI documents say about access, read from their access
//! tables: the bearer scheme, and on every operation that needs a role the requirement,
//! that role in its description, and the 401 and 403 answers. In one place, so that the
//! command and query documents say it alike and a role changed in a table changes the
//! document with it.

use axum::http::Method;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, Response, ResponseBuilder};

use super::auth::{Access, Role};

/// The name of the bearer-token security scheme in the documents.
pub const BEARER_SCHEME: &str = "bearer";

/// The component name of the problem schema, where a document defines one.
pub const PROBLEM_SCHEMA: &str = "Problem";

/// An `application/problem+json` answer, referring to the [`PROBLEM_SCHEMA`] component
/// when `with_schema` (the document defines it).
pub fn problem_response(description: &str, with_schema: bool) -> Response {
    let content = match with_schema {
        true => ContentBuilder::new().schema(Some(Ref::from_schema_name(PROBLEM_SCHEMA))),
        false => ContentBuilder::new(),
    };
    ResponseBuilder::new()
        .description(description)
        .content("application/problem+json", content.build())
        .build()
}

/// Adds the bearer scheme to `document` and, to every operation `access` gives a role,
/// its requirement, the role and the 401 and 403 answers.
pub fn secure(document: &mut OpenApi, access: &[Access]) {
    let mut bearer = Http::new(HttpAuthScheme::Bearer);
    bearer.bearer_format = Some("JWT".to_owned());
    let components = document.components.get_or_insert_with(Default::default);
    components.add_security_scheme(BEARER_SCHEME, SecurityScheme::Http(bearer));
    let with_schema = components.schemas.contains_key(PROBLEM_SCHEMA);
    for (path, item) in document.paths.paths.iter_mut() {
        for (method, operation) in [
            (Method::GET, &mut item.get),
            (Method::POST, &mut item.post),
            (Method::PUT, &mut item.put),
            (Method::PATCH, &mut item.patch),
            (Method::DELETE, &mut item.delete),
        ] {
            let role = access
                .iter()
                .find(|entry| entry.method == method && entry.path == path)
                .and_then(|entry| entry.role);
            if let (Some(operation), Some(role)) = (operation, role) {
                require(operation, role, with_schema);
            }
        }
    }
}

fn require(operation: &mut Operation, role: Role, with_schema: bool) {
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
        operation.responses.responses.insert(
            status.to_owned(),
            problem_response(description, with_schema).into(),
        );
    }
}

/// JSON Schema bounds (`minimum`, `maximum`, `minLength`, `maxLength`) written into a
/// document from the constants the server enforces, so that the document cannot say
/// another number than the code. Each entry is a keyword and its value.
pub type Bounds<'a> = &'a [(&'a str, i64)];

/// Bounds as a list a process declares once: keyword and value, for example
/// `("maximum", 1000)`.
pub type BoundList = Vec<(&'static str, i64)>;

/// Where a bound goes and what it is: two names (a schema and its property, or a
/// parameter's location and its name) and the bounds.
pub type PlacedBounds = Vec<(&'static str, &'static str, BoundList)>;

/// Sets `bounds` on property `property` of the component schema `schema`. Returns
/// whether that property exists (callers' tests assert it does).
pub fn bound_property(
    document: &mut serde_json::Value,
    schema: &str,
    property: &str,
    bounds: Bounds<'_>,
) -> bool {
    let Some(target) = document
        .pointer_mut(&format!("/components/schemas/{schema}/properties/{property}"))
        .and_then(serde_json::Value::as_object_mut)
    else {
        return false;
    };
    for (keyword, value) in bounds {
        target.insert((*keyword).to_owned(), serde_json::Value::from(*value));
    }
    true
}

/// Sets `bounds` on the schema of every parameter named `name` in `location` (`query`,
/// `header`, `path`) of every operation. Returns how many parameters it bounded.
pub fn bound_parameter(
    document: &mut serde_json::Value,
    location: &str,
    name: &str,
    bounds: Bounds<'_>,
) -> usize {
    let mut bounded = 0;
    let Some(paths) = document
        .get_mut("paths")
        .and_then(serde_json::Value::as_object_mut)
    else {
        return 0;
    };
    for item in paths.values_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for operation in item.values_mut() {
            let Some(parameters) = operation
                .get_mut("parameters")
                .and_then(serde_json::Value::as_array_mut)
            else {
                continue;
            };
            for parameter in parameters {
                if parameter["in"] != location || parameter["name"] != name {
                    continue;
                }
                let Some(schema) = parameter
                    .get_mut("schema")
                    .and_then(serde_json::Value::as_object_mut)
                else {
                    continue;
                };
                for (keyword, value) in bounds {
                    schema.insert((*keyword).to_owned(), serde_json::Value::from(*value));
                }
                bounded += 1;
            }
        }
    }
    bounded
}
