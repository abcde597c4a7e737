//! Authentication and authorization (API.md, "Security"): every route of the router is
//! walked with every kind of caller, the token's `sub` is the events' `actor` and scopes
//! idempotency keys, and the process refuses to start without a key.

use std::collections::BTreeSet;

use command_api::access::{ACCESS, MAX_ACTOR_CHARS};
use command_api::{Config, RunError};
use serde_json::{Value, json};
use service::auth::{Access, AuthConfig, AuthConfigError, OPS_ACCESS, Role};
use service::testing::{CALLERS, Caller, access_entries};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{TestApp, client_with_token, spawn_app, token};

fn client_for(caller: Caller) -> reqwest::Client {
    match caller.token(crate::helpers::TEST_SECRET.as_bytes()) {
        Some(token) => client_with_token(&token),
        None => reqwest::Client::new(),
    }
}

/// A body that the route's handler accepts, so an authorized caller reaches the domain.
fn body_for(path: &str, account: Uuid, other: Uuid) -> Value {
    match path {
        "/accounts" => json!({
            "owner": {"name": "Ada Lovelace", "email": "ada@example.com"},
            "currency": "EUR",
        }),
        "/accounts/{id}/deposits" | "/accounts/{id}/withdrawals" => json!({"amount": 1}),
        "/transfers" => json!({"from_account_id": account, "to_account_id": other, "amount": 1}),
        _ => json!({}),
    }
}

/// The operations the OpenAPI document lists, as (method, path).
async fn documented_routes(app: &TestApp) -> BTreeSet<(String, String)> {
    let document = app.send(app.client.get(app.url("/openapi.json"))).await;
    assert_eq!(document.status, 200);
    let mut routes = BTreeSet::new();
    for (path, item) in document.body["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                routes.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    routes
}

/// API.md, "Security", written out here apart from [`ACCESS`], so that a wrong entry in
/// the table fails the walk instead of being taken as the expectation.
const EXPECTED: &[(&str, &str, Option<Role>)] = &[
    ("POST", "/accounts", Some(Role::Teller)),
    ("POST", "/accounts/{id}/deposits", Some(Role::Teller)),
    ("POST", "/accounts/{id}/withdrawals", Some(Role::Teller)),
    ("POST", "/accounts/{id}/freeze", Some(Role::Teller)),
    ("POST", "/accounts/{id}/unfreeze", Some(Role::Teller)),
    ("POST", "/accounts/{id}/close", Some(Role::Teller)),
    ("DELETE", "/accounts/{id}/personal-data", Some(Role::Admin)),
    ("POST", "/transfers", Some(Role::Teller)),
    ("POST", "/transfers/{id}/post", Some(Role::Teller)),
    ("POST", "/transfers/{id}/void", Some(Role::Teller)),
    ("GET", "/openapi.json", None),
    ("GET", "/healthz", None),
    ("GET", "/readyz", None),
    ("GET", "/metrics", None),
];

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
    // The OpenAPI test shows the document lists exactly the routed operations.
    let routes: BTreeSet<(String, String)> = listed
        .into_iter()
        .map(|(method, path, _)| (method, path))
        .collect();
    assert_eq!(routes, documented_routes(&app).await);
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn every_route_answers_every_caller_as_its_role_says(pool: PgPool) {
    let app = spawn_app(pool).await;
    let mut walked = 0;
    for &(method, route, role) in EXPECTED {
        for caller in CALLERS {
            // Fresh accounts with money for each call, so an allowed command can succeed
            // whatever ran before it (a close needs balance 0: that one answers 422).
            let account = app.open_account(0).await;
            let other = app.open_account(0).await;
            app.deposit(account, 10).await;
            let path = route.replace("{id}", &account.to_string());
            let client = client_for(caller);
            let url = app.url(&path);
            let request = match method {
                "GET" => client.get(url),
                "DELETE" => client.delete(url),
                _ => client.post(url).json(&body_for(route, account, other)),
            };
            let before = app.event_count().await;
            let answer = app.send(request).await;
            let what = format!("{method} {route} as {caller:?}: {}", answer.body);
            let allowed = caller.may_call(role);
            let authenticated = caller.is_authenticated();
            if allowed {
                assert!(
                    ![401, 403].contains(&answer.status) && answer.status < 500,
                    "{what}"
                );
            } else if authenticated {
                assert_eq!((answer.status, answer.problem()), (403, "forbidden"), "{what}");
            } else {
                assert_eq!((answer.status, answer.problem()), (401, "unauthorized"), "{what}");
                assert_eq!(answer.header("www-authenticate"), Some("Bearer"), "{what}");
            }
            if !allowed {
                assert_eq!(
                    answer.header("content-type"),
                    Some("application/problem+json"),
                    "{what}"
                );
                assert_eq!(app.event_count().await, before, "a refused call wrote: {what}");
            }
            walked += 1;
        }
    }
    assert_eq!(walked, EXPECTED.len() * CALLERS.len());
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn the_events_actor_is_the_tokens_subject(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let account = app.open_account(0).await;
    let teller = client_with_token(&token("teller-alice", &[Role::Teller]));
    let answer = app
        .send(
            teller
                .post(app.url(&format!("/accounts/{account}/deposits")))
                .json(&json!({"amount": 7})),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let actors: Vec<String> = sqlx::query_scalar("SELECT metadata ->> 'actor' FROM events ORDER BY position")
        .fetch_all(&pool)
        .await
        .expect("actors");
    assert_eq!(actors, [crate::helpers::TEST_SUBJECT, "teller-alice"]);
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn one_idempotency_key_used_by_two_callers_runs_twice(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let account = app.open_account(0).await;
    let path = app.url(&format!("/accounts/{account}/deposits"));
    for subject in ["teller-alice", "teller-bob", "teller-alice"] {
        let client = client_with_token(&token(subject, &[Role::Teller]));
        let answer = app
            .send(
                client
                    .post(&path)
                    .header("idempotency-key", "shared-key")
                    .json(&json!({"amount": 5})),
            )
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    // Alice's retry replayed her first answer; Bob's deposit was his own.
    assert_eq!(app.stored_account(account).await.0, 10);
    let keys: Vec<String> = sqlx::query_scalar("SELECT actor FROM idempotency_keys ORDER BY actor")
        .fetch_all(&pool)
        .await
        .expect("keys");
    assert_eq!(keys, ["teller-alice", "teller-bob"]);
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_subject_that_cannot_be_recorded_is_refused_and_writes_nothing(pool: PgPool) {
    let app = spawn_app(pool).await;
    let account = app.open_account(0).await;
    let before = app.event_count().await;
    for subject in ["a".repeat(MAX_ACTOR_CHARS + 1), "nul\0byte".to_owned()] {
        let client = client_with_token(&token(&subject, &[Role::Admin]));
        let answer = app
            .send(
                client
                    .post(app.url(&format!("/accounts/{account}/deposits")))
                    .header("idempotency-key", "k")
                    .json(&json!({"amount": 5})),
            )
            .await;
        assert_eq!((answer.status, answer.problem()), (401, "unauthorized"));
    }
    assert_eq!(app.event_count().await, before);
}

#[tokio::test]
async fn run_refuses_to_start_without_a_key() {
    use clap::Parser;
    let mut config = Config::try_parse_from(["command-api", "--listen", "127.0.0.1:0"]).expect("config");
    // Nothing listens on port 1: were the key not checked first, this would fail otherwise.
    config.common.database_url = "postgres://postgres@127.0.0.1:1/unreachable".to_owned();
    config.auth = AuthConfig {
        auth_jwt_secret: None,
        auth_jwt_public_key: None,
        insecure_development_auth: false,
        ..AuthConfig::default()
    };
    let result = command_api::run(config, std::future::pending()).await;
    assert!(
        matches!(result, Err(RunError::Auth(AuthConfigError::NoKey))),
        "{result:?}"
    );
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn the_document_says_which_operations_need_a_bearer_token_and_which_role(pool: PgPool) {
    let app = spawn_app(pool).await;
    let document = app.send(app.client.get(app.url("/openapi.json"))).await.body;
    let scheme = &document["components"]["securitySchemes"]["bearer"];
    assert_eq!(
        (&scheme["type"], &scheme["scheme"]),
        (&json!("http"), &json!("bearer"))
    );
    for &(method, route, role) in EXPECTED {
        let operation = &document["paths"][route][method.to_lowercase()];
        assert!(operation.is_object(), "{method} {route} is documented");
        match role {
            Some(role) => {
                assert_eq!(operation["security"], json!([{"bearer": []}]), "{method} {route}");
                let responses = &operation["responses"];
                assert!(responses["401"].is_object() && responses["403"].is_object());
                let description = operation["description"].as_str().unwrap_or_default();
                assert!(
                    description.contains(&format!("`{}`", role.as_str())),
                    "{method} {route}: {description}"
                );
            }
            None => assert!(operation.get("security").is_none(), "{method} {route}"),
        }
    }
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn run_starts_without_a_key_when_told_it_is_a_development_machine(pool: PgPool) {
    use clap::Parser;
    let database = pool
        .connect_options()
        .get_database()
        .expect("a test database")
        .to_owned();
    let unique = Uuid::now_v7().simple().to_string();
    let mut config = Config::try_parse_from(["command-api", "--listen", "127.0.0.1:0"]).expect("config");
    config.common.database_url = format!("postgres://postgres@127.0.0.1:5432/{database}");
    config.common.nats_url = crate::helpers::NATS_URL.to_owned();
    config.common.events_stream = format!("TEST_{unique}");
    config.common.events_subject_prefix = format!("test.{unique}");
    config.auth = AuthConfig {
        auth_jwt_secret: None,
        auth_jwt_public_key: None,
        insecure_development_auth: true,
        ..AuthConfig::default()
    };
    // Shut down at once: starting is what is under test.
    let result = command_api::run(config, std::future::ready(())).await;

    let nats = async_nats::connect(crate::helpers::NATS_URL).await.expect("NATS");
    let _ = async_nats::jetstream::new(nats)
        .delete_stream(format!("TEST_{unique}"))
        .await;
    assert!(result.is_ok(), "{result:?}");
}
