//! Bad input: each gets its problem type and status, never a 500, and writes nothing.

use serde_json::json;
use sqlx::PgPool;

use crate::helpers::spawn_app;

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn malformed_or_misshapen_json_is_400_and_writes_nothing(pool: PgPool) {
    let app = spawn_app(pool).await;
    let account = app.open_account(0).await;
    let path = format!("/accounts/{account}/deposits");
    let cases: [(&str, &str); 6] = [
        ("{\"amount\": ", "malformed-json"),
        ("not json", "malformed-json"),
        ("{\"amount\": 5, \"colour\": \"red\"}", "invalid-body"),
        ("{\"amount\": \"five\"}", "invalid-body"),
        ("{}", "invalid-body"),
        ("[5]", "invalid-body"),
    ];
    for (body, problem) in cases {
        let answer = app
            .send(
                app.client
                    .post(app.url(&path))
                    .header("content-type", "application/json")
                    .body(body),
            )
            .await;
        assert_eq!((answer.status, answer.problem()), (400, problem), "{body}");
        assert_eq!(answer.header("content-type"), Some("application/problem+json"));
        assert_eq!(answer.body["status"], 400);
        assert!(answer.body["detail"].is_string());
    }
    assert_eq!(app.event_count().await, 1);
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn well_formed_values_that_break_a_rule_are_422_validation_naming_the_field(pool: PgPool) {
    let app = spawn_app(pool).await;
    let account = app.open_account(0).await;
    let owner = json!({"name": "Ada", "email": "ada@example.com"});
    let cases = [
        (
            format!("/accounts/{account}/deposits"),
            json!({"amount": -5}),
            "amount",
        ),
        (
            format!("/accounts/{account}/deposits"),
            json!({"amount": 1_000_000_000_000_000_001_i64}),
            "amount",
        ),
        (
            format!("/accounts/{account}/withdrawals"),
            json!({"amount": 0}),
            "amount",
        ),
        (
            "/accounts".to_owned(),
            json!({"owner": owner, "currency": "XYZ"}),
            "currency",
        ),
        (
            "/accounts".to_owned(),
            json!({"owner": owner, "currency": "eur"}),
            "currency",
        ),
        (
            "/accounts".to_owned(),
            json!({"owner": {"name": "Ada", "email": "not-an-email"}, "currency": "EUR"}),
            "owner.email",
        ),
        (
            "/accounts".to_owned(),
            json!({"owner": owner, "currency": "EUR", "overdraft_limit": -1}),
            "overdraft_limit",
        ),
        (
            format!("/accounts/{account}/deposits"),
            json!({"amount": 5, "reference": "x".repeat(141)}),
            "reference",
        ),
    ];
    for (path, body, field) in cases {
        let answer = app.post(&path, body.clone()).await;
        assert_eq!((answer.status, answer.problem()), (422, "validation"), "{body}");
        assert_eq!(answer.body["field"], field, "{body}");
    }
    assert_eq!(app.event_count().await, 1);
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_body_over_64_kib_is_413(pool: PgPool) {
    let app = spawn_app(pool).await;
    let account = app.open_account(0).await;
    let big = format!("{{\"amount\": 5, \"reference\": \"{}\"}}", "x".repeat(70 * 1024));
    let answer = app
        .send(
            app.client
                .post(app.url(&format!("/accounts/{account}/deposits")))
                .header("content-type", "application/json")
                .body(big),
        )
        .await;
    assert_eq!((answer.status, answer.problem()), (413, "payload-too-large"));
    assert_eq!(app.event_count().await, 1);
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_body_that_is_not_declared_json_is_415(pool: PgPool) {
    let app = spawn_app(pool).await;
    let account = app.open_account(0).await;
    let path = format!("/accounts/{account}/deposits");
    let text = app
        .send(
            app.client
                .post(app.url(&path))
                .header("content-type", "text/plain")
                .body("{\"amount\": 5}"),
        )
        .await;
    assert_eq!((text.status, text.problem()), (415, "unsupported-media-type"));
    let undeclared = app
        .send(app.client.post(app.url(&path)).body("{\"amount\": 5}"))
        .await;
    assert_eq!(
        (undeclared.status, undeclared.problem()),
        (415, "unsupported-media-type")
    );
    assert_eq!(app.event_count().await, 1);
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn an_unknown_account_is_404_whether_or_not_its_id_is_a_uuid(pool: PgPool) {
    let app = spawn_app(pool).await;
    for path in [
        format!("/accounts/{}/deposits", uuid::Uuid::now_v7()),
        "/accounts/not-a-uuid/deposits".to_owned(),
    ] {
        let answer = app.post(&path, json!({"amount": 5})).await;
        assert_eq!(
            (answer.status, answer.problem()),
            (404, "account-not-found"),
            "{path}"
        );
    }
    let erase = app
        .send(
            app.client
                .delete(app.url(&format!("/accounts/{}/personal-data", uuid::Uuid::now_v7()))),
        )
        .await;
    assert_eq!((erase.status, erase.problem()), (404, "account-not-found"));
    assert_eq!(app.event_count().await, 0);
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn unknown_routes_are_404_and_wrong_methods_405_as_problems(pool: PgPool) {
    let app = spawn_app(pool).await;
    let missing = app.post("/nowhere", json!({})).await;
    assert_eq!((missing.status, missing.problem()), (404, "not-found"));
    let wrong = app.send(app.client.get(app.url("/transfers"))).await;
    assert_eq!((wrong.status, wrong.problem()), (405, "method-not-allowed"));
    assert_eq!(wrong.header("content-type"), Some("application/problem+json"));
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn malformed_command_headers_are_400_invalid_header(pool: PgPool) {
    let app = spawn_app(pool).await;
    let account = app.open_account(0).await;
    let path = format!("/accounts/{account}/deposits");
    let long_key = "k".repeat(256);
    let cases: [(&str, &str, &str); 4] = [
        ("idempotency-key", long_key.as_str(), "Idempotency-Key"),
        ("idempotency-key", "", "Idempotency-Key"),
        ("if-match", "3", "If-Match"),
        ("x-correlation-id", "", "X-Correlation-Id"),
    ];
    for (name, value, header) in cases {
        let answer = app.post_with(&path, json!({"amount": 5}), &[(name, value)]).await;
        assert_eq!(
            (answer.status, answer.problem()),
            (400, "invalid-header"),
            "{name}: {value}"
        );
        assert_eq!(answer.body["header"], header);
    }
    assert_eq!(app.event_count().await, 1);
}
