//! Authentication and authorization of the admin port (API.md, "Security"): the access
//! table covers exactly the routes the router serves, every route is walked with every
//! kind of caller, and running live refuses to start without a key.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request};
use projector::access::ACCESS;
use projector::{AppState, Config, RunError, status};
use serde_json::Value;
use service::Readiness;
use service::auth::{Access, AuthConfig, AuthConfigError, Authenticator, OPS_ACCESS, Role};
use service::testing::{CALLERS, access_entries};
use sqlx::PgPool;
use tower::ServiceExt;

const NATS_URL: &str = "nats://127.0.0.1:4222";

/// The HS256 secret the admin port verifies tokens with in these tests.
const TEST_SECRET: &[u8] = b"projector-test-secret-of-at-least-32-bytes";

/// How long a test waits for the rebuild it started to finish: far above the
/// milliseconds an empty log takes.
const REBUILD_LIMIT: Duration = Duration::from_secs(30);

/// API.md, "Security", written out here apart from [`ACCESS`], so that a wrong entry in
/// the table fails the walk instead of being taken as the expectation.
const EXPECTED: &[(&str, &str, Option<Role>)] = &[
    ("GET", "/projections", Some(Role::Viewer)),
    ("POST", "/projections/{name}/rebuild", Some(Role::Admin)),
    ("GET", "/healthz", None),
    ("GET", "/readyz", None),
    ("GET", "/metrics", None),
];

async fn admin_app(pool: PgPool) -> axum::Router {
    let nats = async_nats::connect(NATS_URL).await.expect("NATS");
    projector::app(AppState::new(
        Readiness { pool, nats },
        Authenticator::hs256(TEST_SECRET),
    ))
}

#[test]
fn the_access_table_covers_exactly_the_routes_the_router_serves_with_the_roles_of_api_md() {
    let table: Vec<&Access> = OPS_ACCESS.iter().chain(ACCESS).collect();
    let listed = access_entries(
        table
            .iter()
            .map(|access| (access.method.as_str(), access.path, access.role)),
    );
    assert_eq!(listed.len(), table.len(), "a route is listed twice");
    assert_eq!(listed, access_entries(EXPECTED.iter().copied()));
    // The admin routes come from the same declaration as their document.
    let (_router, document) = projector::http::routes().split_for_parts();
    let mut routed = BTreeSet::new();
    for (path, item) in &document.paths.paths {
        for (method, operation) in [
            (Method::GET, &item.get),
            (Method::POST, &item.post),
            (Method::PUT, &item.put),
            (Method::PATCH, &item.patch),
            (Method::DELETE, &item.delete),
        ] {
            if operation.is_some() {
                routed.insert((method.to_string(), path.clone()));
            }
        }
    }
    let admin: BTreeSet<(String, String)> = ACCESS
        .iter()
        .map(|access| (access.method.to_string(), access.path.to_owned()))
        .collect();
    assert_eq!(admin, routed);
}

/// Waits until no projection is rebuilding, so the test's database can be dropped.
async fn rebuilds_done(pool: &PgPool) {
    let deadline = tokio::time::Instant::now() + REBUILD_LIMIT;
    loop {
        let statuses = status::read(pool).await.expect("status");
        if statuses.iter().all(|status| status.status != "rebuilding") {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{statuses:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn every_route_answers_every_caller_as_its_role_says(pool: PgPool) {
    let app = admin_app(pool.clone()).await;
    let mut walked = 0;
    for &(method, route, role) in EXPECTED {
        let path = route.replace("{name}", "transfers");
        for caller in CALLERS {
            let mut request = Request::builder().method(method).uri(&path);
            if let Some(token) = caller.token(TEST_SECRET) {
                request = request.header("authorization", format!("Bearer {token}"));
            }
            let response = app
                .clone()
                .oneshot(request.body(Body::empty()).expect("request"))
                .await
                .expect("response");
            let status = response.status().as_u16();
            let content_type = response.headers().get("content-type").cloned();
            let challenge = response.headers().get("www-authenticate").cloned();
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .expect("body");
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let what = format!("{method} {route} as {caller:?}: {status} {body}");
            let allowed = caller.may_call(role);
            if allowed {
                let expected = if method == "POST" { 202 } else { 200 };
                assert_eq!(status, expected, "{what}");
                rebuilds_done(&pool).await;
            } else {
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
                assert_eq!(
                    content_type.as_ref().and_then(|value| value.to_str().ok()),
                    Some("application/problem+json"),
                    "{what}"
                );
                // A refused rebuild started nothing (the lease marks it at once).
                let statuses = status::read(&pool).await.expect("status");
                assert!(
                    statuses.iter().all(|status| status.status != "rebuilding"),
                    "{what}: {statuses:?}"
                );
                if !authenticated {
                    assert_eq!(
                        challenge.as_ref().and_then(|value| value.to_str().ok()),
                        Some("Bearer"),
                        "{what}"
                    );
                }
            }
            walked += 1;
        }
    }
    assert_eq!(walked, EXPECTED.len() * CALLERS.len());
}

#[tokio::test]
async fn running_live_refuses_to_start_without_a_key() {
    use clap::Parser;
    let mut config = Config::try_parse_from(["projector", "--listen", "127.0.0.1:0"]).expect("config");
    // Nothing listens on port 1: were the key not checked first, this would fail otherwise.
    config.common.database_url = "postgres://postgres@127.0.0.1:1/unreachable".to_owned();
    config.auth = AuthConfig {
        auth_jwt_secret: None,
        auth_jwt_public_key: None,
        insecure_development_auth: false,
        ..AuthConfig::default()
    };
    let result = projector::run(config, std::future::pending()).await;
    assert!(
        matches!(result, Err(RunError::Auth(AuthConfigError::NoKey))),
        "{result:?}"
    );
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn the_status_subcommand_serves_nothing_and_needs_no_key(pool: PgPool) {
    use clap::Parser;
    let database = pool
        .connect_options()
        .get_database()
        .expect("a test database")
        .to_owned();
    let mut config = Config::try_parse_from(["projector", "status", "--json"]).expect("config");
    config.common.database_url = format!("postgres://postgres@127.0.0.1:5432/{database}");
    config.auth = AuthConfig {
        auth_jwt_secret: None,
        auth_jwt_public_key: None,
        insecure_development_auth: false,
        ..AuthConfig::default()
    };
    let result = projector::run(config, std::future::pending()).await;
    assert!(result.is_ok(), "{result:?}");
}

#[test]
fn every_admin_route_is_named_in_api_md() {
    let (_router, document) = projector::http::routes().split_for_parts();
    let document = serde_json::to_value(&document).expect("the document serialises");
    let missing = service::testing::routes_missing_from_api_md(&document, &service::testing::api_md());
    assert!(missing.is_empty(), "docs/API.md does not name {missing:?}");
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn head_answers_every_get_route_like_get_and_other_methods_are_405(pool: PgPool) {
    let app = admin_app(pool).await;
    let admin = service::testing::Caller::Holding(Role::Admin)
        .token(TEST_SECRET)
        .expect("admin token");
    let send = |method: Method, path: &str, token: Option<&str>| {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        app.clone().oneshot(request.body(Body::empty()).expect("request"))
    };
    for path in ["/healthz", "/readyz", "/metrics", "/projections"] {
        for token in [Some(admin.as_str()), None] {
            let get = send(Method::GET, path, token).await.expect("GET");
            let head = send(Method::HEAD, path, token).await.expect("HEAD");
            assert_eq!(head.status(), get.status(), "HEAD {path} with {token:?}");
            assert_eq!(
                head.headers().get("content-type"),
                get.headers().get("content-type"),
                "HEAD {path}"
            );
            let body = axum::body::to_bytes(head.into_body(), 1 << 20)
                .await
                .expect("body");
            assert!(body.is_empty(), "HEAD {path} has a body");
        }
        let options = send(Method::OPTIONS, path, Some(admin.as_str()))
            .await
            .expect("OPTIONS");
        assert_eq!(options.status(), 405, "OPTIONS {path}");
        assert_eq!(
            options
                .headers()
                .get("content-type")
                .and_then(|value| value.to_str().ok()),
            Some("application/problem+json"),
            "OPTIONS {path}"
        );
        let allow = options
            .headers()
            .get("allow")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(
            allow.contains("GET") && allow.contains("HEAD"),
            "OPTIONS {path}: {allow:?}"
        );
    }
}
