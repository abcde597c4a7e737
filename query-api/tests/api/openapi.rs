//! The OpenAPI description matches the routes: every documented operation is routed,
//! and every query route of API.md is documented.

use std::collections::BTreeSet;

use sqlx::PgPool;

use crate::helpers::spawn_app;

/// The query routes of API.md, plus the live tail.
const ROUTES: &[&str] = &[
    "/accounts",
    "/accounts/{id}",
    "/accounts/{id}/transactions",
    "/accounts/{id}/history",
    "/transfers/{id}",
    "/transfers",
    "/audit/events",
    "/audit/events/live",
    "/audit/streams/{stream_id}",
    "/audit/verify",
    "/projections",
];

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn every_documented_operation_is_routed_and_every_route_documented(pool: PgPool) {
    let app = spawn_app(pool).await;
    let document = app.get_json("/openapi.json", 200).await;
    assert!(document["openapi"].as_str().expect("version").starts_with("3."));
    let paths = document["paths"].as_object().expect("paths");

    let documented: BTreeSet<&str> = paths.keys().map(String::as_str).collect();
    let routed: BTreeSet<&str> = ROUTES.iter().copied().collect();
    assert_eq!(documented, routed);

    for (path, operations) in paths {
        let operations = operations.as_object().expect("operations");
        assert_eq!(
            operations
                .keys()
                .filter(|method| *method != "parameters")
                .collect::<Vec<_>>(),
            vec!["get"],
            "{path}"
        );
        // Substitute the path parameters, ask the server, and require that the router
        // knew the route (a 404 here may only be a domain 404, never `route-not-found`).
        let concrete = path
            .replace("{id}", "00000000-0000-0000-0000-000000000001")
            .replace("{stream_id}", "account-00000000-0000-0000-0000-000000000001");
        let concrete = if path == "/audit/events/live" {
            // A live tail never ends; a malformed `after` answers at once and still
            // proves the route exists.
            format!("{concrete}?after=x")
        } else {
            concrete
        };
        let response = app.get(&concrete).await;
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        assert_ne!(
            body["type"], "https://eventledger.dev/problems/route-not-found",
            "{path} is documented but not routed"
        );
        assert_ne!(status, 405, "{path} is documented as GET but not routed for GET");
        let documented_statuses = operations["get"]["responses"].as_object().expect("responses");
        assert!(
            documented_statuses.contains_key(&status.to_string()),
            "{path} answered {status}, which its description does not list"
        );
    }
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn every_operation_of_the_document_is_named_in_api_md(pool: PgPool) {
    let app = spawn_app(pool).await;
    let document = app.get_json("/openapi.json", 200).await;
    let missing = service::testing::routes_missing_from_api_md(&document, &service::testing::api_md());
    assert!(missing.is_empty(), "docs/API.md does not name {missing:?}");
}
