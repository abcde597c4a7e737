//! `GET /openapi.json` describes exactly the routes the router serves.

use std::collections::BTreeSet;

use serde_json::json;
use sqlx::PgPool;

use crate::helpers::spawn_app;

/// API.md's command table, plus the operational endpoints and the document itself.
const ROUTES: &[(&str, &str)] = &[
    ("post", "/accounts"),
    ("post", "/accounts/{id}/deposits"),
    ("post", "/accounts/{id}/withdrawals"),
    ("post", "/accounts/{id}/freeze"),
    ("post", "/accounts/{id}/unfreeze"),
    ("post", "/accounts/{id}/close"),
    ("delete", "/accounts/{id}/personal-data"),
    ("post", "/transfers"),
    ("post", "/transfers/{id}/post"),
    ("post", "/transfers/{id}/void"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
];

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn the_document_lists_exactly_the_served_routes_and_each_reaches_a_handler(pool: PgPool) {
    let app = spawn_app(pool).await;
    let document = app.send(app.client.get(app.url("/openapi.json"))).await;
    assert_eq!(document.status, 200);
    let mut documented = BTreeSet::new();
    for (path, item) in document.body["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                documented.insert((method.clone(), path.clone()));
            }
        }
    }
    let expected: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(method, path)| ((*method).to_owned(), (*path).to_owned()))
        .collect();
    assert_eq!(documented, expected);

    // Every documented operation is routed: the answer is never the router's own 404/405.
    for (method, path) in &documented {
        let concrete = path.replace("{id}", &uuid::Uuid::now_v7().to_string());
        let request = match method.as_str() {
            "get" => app.client.get(app.url(&concrete)),
            "delete" => app.client.delete(app.url(&concrete)),
            _ => app.client.post(app.url(&concrete)).json(&json!({})),
        };
        let answer = app.send(request).await;
        assert!(
            !["not-found", "method-not-allowed"].contains(&answer.problem()),
            "{method} {path} is documented but not routed: {}",
            answer.body
        );
    }
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn every_command_documents_its_headers_its_body_and_its_problems(pool: PgPool) {
    let app = spawn_app(pool).await;
    let document = app.send(app.client.get(app.url("/openapi.json"))).await;
    let paths = document.body["paths"].as_object().expect("paths");
    for (method, path) in ROUTES.iter().filter(|(method, _)| *method != "get") {
        let operation = &paths[*path][*method];
        let headers: Vec<&str> = operation["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .filter(|parameter| parameter["in"] == "header")
            .filter_map(|parameter| parameter["name"].as_str())
            .collect();
        assert_eq!(
            headers,
            ["Idempotency-Key", "X-Correlation-Id", "If-Match", "If-None-Match"],
            "{path}"
        );
        for status in ["400", "404", "409", "412", "413", "415", "422", "503"] {
            assert!(
                operation["responses"][status]["content"]["application/problem+json"].is_object(),
                "{method} {path} lacks {status}"
            );
        }
        if *method == "post" {
            assert!(operation["requestBody"].is_object(), "{path} lacks its body");
        }
    }
    assert!(document.body["components"]["schemas"]["TransferBody"].is_object());
    assert!(document.body["components"]["schemas"]["Problem"].is_object());
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn every_operation_of_the_document_is_named_in_api_md(pool: PgPool) {
    let app = spawn_app(pool).await;
    let document = app.send(app.client.get(app.url("/openapi.json"))).await;
    let missing = service::testing::routes_missing_from_api_md(&document.body, &service::testing::api_md());
    assert!(missing.is_empty(), "docs/API.md does not name {missing:?}");
}
