//! The query API against HTTP's rules for `HEAD` and other methods, and an OpenAPI
//! document whose bounds are the constants the server enforces.

use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::spawn_app;

/// Every `GET` route but the live tail (a stream that stays open), with a concrete path.
fn get_routes() -> Vec<String> {
    let id = uuid::Uuid::now_v7();
    vec![
        "/healthz".to_owned(),
        "/readyz".to_owned(),
        "/metrics".to_owned(),
        "/openapi.json".to_owned(),
        "/accounts".to_owned(),
        format!("/accounts/{id}"),
        format!("/accounts/{id}/transactions"),
        format!("/accounts/{id}/history?at_position=1"),
        format!("/transfers/{id}"),
        "/audit/events".to_owned(),
        format!("/audit/streams/account-{id}"),
        "/projections".to_owned(),
        "/accounts?limit=0".to_owned(),
    ]
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn head_answers_every_get_route_like_get_with_its_access_rule_and_no_body(pool: PgPool) {
    let app = spawn_app(pool).await;
    let anonymous = reqwest::Client::new();
    for path in get_routes() {
        for (who, client) in [("admin", &app.client), ("anonymous", &anonymous)] {
            let url = format!("{}{path}", app.address);
            let get = client.get(&url).send().await.expect("GET");
            let head = client.head(&url).send().await.expect("HEAD");
            assert_eq!(head.status(), get.status(), "HEAD {path} as {who}");
            for header in ["content-type", "www-authenticate", "x-projection-position"] {
                assert_eq!(
                    head.headers().get(header),
                    get.headers().get(header),
                    "HEAD {path} as {who}: {header}"
                );
            }
            assert!(
                head.bytes().await.expect("body").is_empty(),
                "HEAD {path} has a body"
            );
        }
    }
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn other_methods_are_405_with_an_allow_header(pool: PgPool) {
    let app = spawn_app(pool).await;
    for path in ["/healthz", "/accounts", "/projections", "/openapi.json"] {
        for method in ["OPTIONS", "POST", "PURGE"] {
            let response = app
                .client
                .request(
                    reqwest::Method::from_bytes(method.as_bytes()).expect("method"),
                    format!("{}{path}", app.address),
                )
                .send()
                .await
                .expect("request");
            assert_eq!(response.status(), 405, "{method} {path}");
            let allow = response
                .headers()
                .get("allow")
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            assert!(
                allow.contains("GET") && allow.contains("HEAD"),
                "{method} {path}: {allow:?}"
            );
        }
    }
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn every_bound_in_the_document_is_the_constant_the_server_enforces(pool: PgPool) {
    let app = spawn_app(pool).await;
    let document = app.get_json("/openapi.json", 200).await;
    let mut checked = 0;
    for (location, name, bounds) in query_api::openapi::parameter_bounds() {
        for item in document["paths"].as_object().expect("paths").values() {
            let Some(parameters) = item["get"]["parameters"].as_array() else {
                continue;
            };
            for parameter in parameters
                .iter()
                .filter(|p| p["in"] == location && p["name"] == name)
            {
                for (keyword, value) in &bounds {
                    assert_eq!(
                        parameter["schema"][keyword],
                        Value::from(*value),
                        "{location} {name} {keyword}"
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 20, "only {checked} bounds found in the document");
    let limit = query_api::params::MAX_LIMIT;
    let wait = query_api::consistency::MAX_WAIT_MS;
    // And they are the server's: the bound passes, one past it is 400.
    app.get_json(&format!("/accounts?limit={limit}"), 200).await;
    app.get_problem(&format!("/accounts?limit={}", limit + 1), 400, "validation")
        .await;
    app.get_problem(
        &format!("/accounts?wait_ms={}&min_position=0", wait + 1),
        400,
        "validation",
    )
    .await;
    let long = "a".repeat(query_api::audit::MAX_EVENT_TYPE_CHARS + 1);
    app.get_problem(&format!("/audit/events?event_type={long}"), 400, "validation")
        .await;
}
