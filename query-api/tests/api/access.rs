//! Authentication and authorization (API.md, "Security"): the access table covers
//! exactly the routes the router serves, every route is walked with every kind of
//! caller, the document says which operations need which role, and the process refuses
//! to start without a key.

use std::collections::BTreeSet;

use domain::AccountId;
use event_store::ExpectedVersion;
use query_api::access::ACCESS;
use query_api::{Config, RunError};
use serde_json::{Value, json};
use service::auth::{Access, AuthConfig, AuthConfigError, OPS_ACCESS, Role};
use service::testing::{CALLERS, Caller, access_entries};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{AccountFixture, TEST_SECRET, client_with_token, deposited, opened, spawn_app};

fn client_for(caller: Caller) -> reqwest::Client {
    client_with_token(caller.token(TEST_SECRET.as_bytes()).as_deref())
}

/// API.md, "Security", written out here apart from [`ACCESS`], so that a wrong entry in
/// the table fails the walk instead of being taken as the expectation.
const EXPECTED: &[(&str, &str, Option<Role>)] = &[
    ("GET", "/accounts", Some(Role::Viewer)),
    ("GET", "/accounts/{id}", Some(Role::Viewer)),
    ("GET", "/accounts/{id}/transactions", Some(Role::Viewer)),
    ("GET", "/transfers/{id}", Some(Role::Viewer)),
    ("GET", "/transfers", Some(Role::Viewer)),
    ("GET", "/projections", Some(Role::Viewer)),
    ("GET", "/accounts/{id}/history", Some(Role::Auditor)),
    ("GET", "/audit/events", Some(Role::Auditor)),
    ("GET", "/audit/events/live", Some(Role::Auditor)),
    ("GET", "/audit/streams/{stream_id}", Some(Role::Auditor)),
    ("GET", "/audit/verify", Some(Role::Auditor)),
    ("GET", "/openapi.json", None),
    ("GET", "/healthz", None),
    ("GET", "/readyz", None),
    ("GET", "/metrics", None),
];

/// The operations the OpenAPI document lists, as (method, path). The document is built
/// from the same declaration as the router (`query_api::routes`), so this is what the
/// router serves besides `/openapi.json` and the operational routes.
async fn documented_routes(app: &crate::helpers::TestApp) -> BTreeSet<(String, String)> {
    let document = app.get_json("/openapi.json", 200).await;
    let mut routes = BTreeSet::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                routes.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    routes
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn the_access_table_covers_exactly_the_routes_the_router_serves_with_the_roles_of_api_md(pool: PgPool) {
    let app = spawn_app(pool).await;
    let table: Vec<&Access> = OPS_ACCESS.iter().chain(ACCESS).collect();
    let listed = access_entries(
        table
            .iter()
            .map(|access| (access.method.as_str(), access.path, access.role)),
    );
    assert_eq!(listed.len(), table.len(), "a route is listed twice");
    assert_eq!(listed, access_entries(EXPECTED.iter().copied()));
    let queries: BTreeSet<(String, String)> = ACCESS
        .iter()
        .filter(|access| access.path != "/openapi.json")
        .map(|access| (access.method.to_string(), access.path.to_owned()))
        .collect();
    assert_eq!(queries, documented_routes(&app).await);
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn every_route_answers_every_caller_as_its_role_says(pool: PgPool) {
    let app = spawn_app(pool).await;
    // Something to find behind each route, so an allowed call can answer 200.
    let account = AccountId::from(Uuid::now_v7());
    app.append(
        account,
        ExpectedVersion::NoStream,
        vec![opened(account), deposited(account, 10)],
        "teller-1",
        "c-1",
    )
    .await;
    let mut fixture = AccountFixture::new("EUR", "open");
    fixture.account_id = account.as_uuid();
    app.insert_account(&fixture).await;
    // A transfer under the same id, so that `{id}` finds one in `/transfers/{id}` too.
    sqlx::query(
        "INSERT INTO read_model.transfers (transfer_id, from_account_id, to_account_id, amount, \
         currency, reference, recorded_at, position) VALUES ($1, $1, $1, 1, 'EUR', NULL, now(), 1)",
    )
    .bind(account.as_uuid())
    .execute(&app.pool)
    .await
    .expect("transfer row");

    let mut walked = 0;
    for &(method, route, role) in EXPECTED {
        assert_eq!(method, "GET", "the query API only reads");
        let path = route
            .replace("{id}", &account.as_uuid().to_string())
            .replace("{stream_id}", &account.stream_id());
        let path = match route {
            "/accounts/{id}/history" => format!("{path}?at_position=1"),
            "/audit/events/live" => format!("{path}?after=0"),
            _ => path,
        };
        for caller in CALLERS {
            let response = client_for(caller)
                .get(format!("{}{path}", app.address))
                .send()
                .await
                .expect("request sent");
            let status = response.status().as_u16();
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|value| value.to_str().ok())
                    .map(str::to_owned)
            };
            let content_type = header("content-type");
            let challenge = header("www-authenticate");
            let position = header("x-projection-position");
            let what = format!("{method} {route} as {caller:?}: {status}");
            let allowed = caller.may_call(role);
            if allowed {
                // The live tail never ends: its status and headers are the answer.
                assert_eq!(status, 200, "{what}");
                walked += 1;
                continue;
            }
            let body: Value = response.json().await.expect("a problem body");
            let what = format!("{what} {body}");
            let authenticated = caller.is_authenticated();
            let (expected_status, expected_type) = if authenticated {
                (403, "https://eventledger.dev/problems/forbidden")
            } else {
                (401, "https://eventledger.dev/problems/unauthorized")
            };
            assert_eq!(
                (status, body["type"].as_str()),
                (expected_status, Some(expected_type)),
                "{what}"
            );
            assert_eq!(body["status"], expected_status, "{what}");
            assert_eq!(
                content_type.as_deref(),
                Some("application/problem+json"),
                "{what}"
            );
            if !authenticated {
                assert_eq!(challenge.as_deref(), Some("Bearer"), "{what}");
            }
            // A refused caller learns nothing of the log, not even how far it reaches.
            assert_eq!(position, None, "{what}");
            walked += 1;
        }
    }
    assert_eq!(walked, EXPECTED.len() * CALLERS.len());
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn the_document_says_which_operations_need_a_bearer_token_and_which_role(pool: PgPool) {
    let app = spawn_app(pool).await;
    let document = app.get_json("/openapi.json", 200).await;
    let scheme = &document["components"]["securitySchemes"]["bearer"];
    assert_eq!(
        (&scheme["type"], &scheme["scheme"]),
        (&json!("http"), &json!("bearer"))
    );
    for access in ACCESS {
        let operation = &document["paths"][access.path][access.method.as_str().to_lowercase()];
        match access.role {
            Some(role) => {
                assert_eq!(operation["security"], json!([{"bearer": []}]), "{}", access.path);
                let responses = &operation["responses"];
                assert!(responses["401"].is_object() && responses["403"].is_object());
                let description = operation["description"].as_str().unwrap_or_default();
                assert!(
                    description.contains(&format!("`{}`", role.as_str())),
                    "{}: {description}",
                    access.path
                );
            }
            None => assert!(operation.get("security").is_none(), "{}", access.path),
        }
    }
}

#[tokio::test]
async fn run_refuses_to_start_without_a_key() {
    use clap::Parser;
    let mut config = Config::try_parse_from(["query-api", "--listen", "127.0.0.1:0"]).expect("config");
    // Nothing listens on port 1: were the key not checked first, this would fail otherwise.
    config.common.database_url = "postgres://postgres@127.0.0.1:1/unreachable".to_owned();
    config.auth = AuthConfig {
        auth_jwt_secret: None,
        auth_jwt_public_key: None,
        insecure_development_auth: false,
        ..AuthConfig::default()
    };
    let result = query_api::run(config, std::future::pending()).await;
    assert!(
        matches!(result, Err(RunError::Auth(AuthConfigError::NoKey))),
        "{result:?}"
    );
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn run_starts_without_a_key_when_told_it_is_a_development_machine(pool: PgPool) {
    use clap::Parser;
    let database = pool
        .connect_options()
        .get_database()
        .expect("a test database")
        .to_owned();
    let mut config = Config::try_parse_from(["query-api", "--listen", "127.0.0.1:0"]).expect("config");
    config.common.database_url = format!("postgres://postgres@127.0.0.1:5432/{database}");
    config.auth = AuthConfig {
        auth_jwt_secret: None,
        auth_jwt_public_key: None,
        insecure_development_auth: true,
        ..AuthConfig::default()
    };
    // Shut down at once: starting is what is under test.
    let result = query_api::run(config, std::future::ready(())).await;
    assert!(result.is_ok(), "{result:?}");
}
