//! Hostile input over real HTTP: injection text, invalid UTF-8, deep nesting, numbers
//! beyond every integer type, duplicate keys, oversized headers and wrong content types.
//! Each is refused with a 4xx `application/problem+json` and writes nothing; where the
//! text is a legitimate value (SQL in a free-text reference), it is stored as text.

use reqwest::header::HeaderValue;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{Answer, TestApp, spawn_app};

/// Text that breaks a query built by string concatenation.
const INJECTIONS: &[&str] = &[
    "' OR '1'='1",
    "'; DROP TABLE events; --",
    "\"; DELETE FROM events WHERE ''='",
    "1; SELECT pg_sleep(10)--",
    "$1",
    "%' UNION SELECT * FROM pii_keys --",
];

/// Asserts a refusal: `status`, a problem body whose `type` ends in `problem`, and that
/// the store still holds `events` events.
async fn assert_refused(app: &TestApp, answer: &Answer, status: u16, problem: &str, events: i64, what: &str) {
    assert_eq!(
        (answer.status, answer.problem()),
        (status, problem),
        "{what}: {}",
        answer.body
    );
    assert_eq!(
        answer.header("content-type"),
        Some("application/problem+json"),
        "{what}"
    );
    assert_eq!(answer.body["status"], status, "{what}");
    assert!(
        answer.body["detail"]
            .as_str()
            .is_some_and(|detail| !detail.is_empty()),
        "{what}"
    );
    assert_eq!(app.event_count().await, events, "{what} wrote something");
}

async fn post_raw(app: &TestApp, path: &str, content_type: &str, body: impl Into<reqwest::Body>) -> Answer {
    app.send(
        app.client
            .post(app.url(path))
            .header("content-type", content_type)
            .body(body),
    )
    .await
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn injection_text_in_ids_and_coded_fields_is_refused_and_writes_nothing(pool: PgPool) {
    let app = spawn_app(pool).await;
    let account = app.open_account(0).await;
    let other = app.open_account(0).await;
    let events = app.event_count().await;
    for injection in INJECTIONS {
        let escaped: String = url_escape(injection);
        // The account id in the path.
        for action in ["deposits", "withdrawals", "freeze", "unfreeze", "close"] {
            let answer = app
                .post(&format!("/accounts/{escaped}/{action}"), json!({"amount": 5}))
                .await;
            assert!(
                answer.status == 404 || answer.status == 400,
                "{action} {injection}: {}",
                answer.status
            );
            assert_refused(
                &app,
                &answer,
                answer.status,
                answer.problem(),
                events,
                &format!("path {action} {injection}"),
            )
            .await;
        }
        let answer = app
            .send(
                app.client
                    .delete(app.url(&format!("/accounts/{escaped}/personal-data"))),
            )
            .await;
        assert_refused(&app, &answer, 404, "account-not-found", events, injection).await;
        // Ids, currency and email in bodies.
        let owner = json!({"name": "Ada", "email": "ada@example.com"});
        let bodies = [
            (
                "/accounts",
                json!({"account_id": injection, "owner": owner, "currency": "EUR"}),
                400,
                "invalid-body",
            ),
            (
                "/accounts",
                json!({"owner": owner, "currency": injection}),
                422,
                "validation",
            ),
            (
                "/accounts",
                json!({"owner": {"name": "Ada", "email": injection}, "currency": "EUR"}),
                422,
                "validation",
            ),
            (
                "/transfers",
                json!({"from_account_id": injection, "to_account_id": other, "amount": 1}),
                400,
                "invalid-body",
            ),
            (
                "/transfers",
                json!({"transfer_id": injection, "from_account_id": account, "to_account_id": other, "amount": 1}),
                400,
                "invalid-body",
            ),
            (
                &format!("/accounts/{account}/deposits"),
                json!({"amount": injection}),
                400,
                "invalid-body",
            ),
        ];
        for (path, body, status, problem) in bodies {
            let answer = app.post(path, body.clone()).await;
            assert_refused(&app, &answer, status, problem, events, &format!("{path} {body}")).await;
        }
        // A header the API parses.
        let answer = app
            .post_with(
                &format!("/accounts/{account}/deposits"),
                json!({"amount": 5}),
                &[("if-match", injection)],
            )
            .await;
        assert_refused(&app, &answer, 400, "invalid-header", events, injection).await;
    }
    // The table is intact: every event is still there and readable.
    let positions: Vec<i64> = sqlx::query_scalar("SELECT position FROM events ORDER BY position")
        .fetch_all(&app.pool)
        .await
        .expect("events readable");
    assert_eq!(positions, (1..=events).collect::<Vec<_>>());
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn injection_text_in_free_text_fields_is_stored_verbatim_as_text(pool: PgPool) {
    let app = spawn_app(pool).await;
    let account = app.open_account(0).await;
    for (index, injection) in INJECTIONS.iter().enumerate() {
        let answer = app
            .post_with(
                &format!("/accounts/{account}/deposits"),
                json!({"amount": 1, "reference": injection}),
                &[("idempotency-key", injection), ("x-correlation-id", injection)],
            )
            .await;
        assert_eq!(answer.status, 200, "{injection}: {}", answer.body);
        let stored: (Value, Value) = sqlx::query_as(
            "SELECT data, metadata FROM events WHERE event_type = 'FundsDeposited' ORDER BY position DESC LIMIT 1",
        )
        .fetch_one(&app.pool)
        .await
        .expect("deposit stored");
        assert_eq!(stored.0["reference"], *injection);
        assert_eq!(stored.1["idempotency_key"], *injection);
        assert_eq!(stored.1["correlation_id"], *injection);
        // The same key again is a replay: nothing new is written.
        let before = app.event_count().await;
        let replay = app
            .post_with(
                &format!("/accounts/{account}/deposits"),
                json!({"amount": 1, "reference": injection}),
                &[("idempotency-key", injection)],
            )
            .await;
        assert_eq!(replay.status, 200);
        assert_eq!(replay.header("idempotent-replayed"), Some("true"));
        assert_eq!(app.event_count().await, before);
        assert_eq!(
            app.stored_account(account).await.0,
            i64::try_from(index).expect("small") + 1
        );
    }
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn invalid_utf8_in_a_body_or_header_is_400_and_writes_nothing(pool: PgPool) {
    let app = spawn_app(pool).await;
    let account = app.open_account(0).await;
    let events = app.event_count().await;
    let path = format!("/accounts/{account}/deposits");
    for body in [
        &b"{\"amount\": 5, \"reference\": \"\xff\xfe\"}"[..],
        b"{\"amount\": 5, \"reference\": \"\xc3\x28\"}",
        b"\xef\xbb\xbf{\"amount\": 5}",
        b"{\"amount\": 5, \"reference\": \"\\ud800\"}",
        b"{\"am\xffount\": 5}",
    ] {
        let answer = post_raw(&app, &path, "application/json", body.to_vec()).await;
        assert_refused(
            &app,
            &answer,
            400,
            "malformed-json",
            events,
            &String::from_utf8_lossy(body),
        )
        .await;
    }
    let answer = app
        .send(
            app.client
                .post(app.url(&path))
                .json(&json!({"amount": 5}))
                .header(
                    "idempotency-key",
                    HeaderValue::from_bytes(b"key-\xff").expect("obs-text is a valid header value"),
                ),
        )
        .await;
    assert_refused(&app, &answer, 400, "invalid-header", events, "non-ASCII key").await;
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn deeply_nested_json_is_400_and_writes_nothing(pool: PgPool) {
    let app = spawn_app(pool).await;
    let account = app.open_account(0).await;
    let events = app.event_count().await;
    let path = format!("/accounts/{account}/deposits");
    // Past serde_json's depth limit (128): a syntax-level refusal, no stack overflow.
    let deep = format!(
        "{{\"amount\": 5, \"reference\": {}{}}}",
        "[".repeat(20_000),
        "]".repeat(20_000)
    );
    let answer = post_raw(&app, &path, "application/json", deep).await;
    assert_refused(&app, &answer, 400, "malformed-json", events, "20000 deep").await;
    let deep_objects = format!("{}1{}", "{\"a\":".repeat(5_000), "}".repeat(5_000));
    let answer = post_raw(&app, &path, "application/json", deep_objects).await;
    assert_refused(&app, &answer, 400, "malformed-json", events, "5000 deep objects").await;
    // Within the limit, but not the command's shape.
    let shallow = format!(
        "{{\"amount\": 5, \"reference\": {}{}}}",
        "[".repeat(100),
        "]".repeat(100)
    );
    let answer = post_raw(&app, &path, "application/json", shallow).await;
    assert_refused(&app, &answer, 400, "invalid-body", events, "100 deep").await;
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn numbers_beyond_the_integer_types_are_refused_and_write_nothing(pool: PgPool) {
    let app = spawn_app(pool).await;
    let account = app.open_account(0).await;
    let events = app.event_count().await;
    let deposit = format!("/accounts/{account}/deposits");
    let cases: [(&str, String, u16, &str); 12] = [
        (&deposit, r#"{"amount": 1e400}"#.into(), 400, "malformed-json"),
        (&deposit, r#"{"amount": -1e400}"#.into(), 400, "malformed-json"),
        (&deposit, r#"{"amount": 99999999999999999999999999}"#.into(), 400, "invalid-body"),
        (&deposit, r#"{"amount": 18446744073709551616}"#.into(), 400, "invalid-body"),
        (&deposit, r#"{"amount": 9223372036854775808}"#.into(), 400, "invalid-body"),
        (&deposit, r#"{"amount": -9223372036854775809}"#.into(), 400, "invalid-body"),
        (&deposit, r#"{"amount": 9223372036854775807}"#.into(), 422, "validation"),
        (&deposit, r#"{"amount": -0}"#.into(), 400, "invalid-body"),
        (&deposit, r#"{"amount": -0.0}"#.into(), 400, "invalid-body"),
        (&deposit, r#"{"amount": 1.0}"#.into(), 400, "invalid-body"),
        (
            "/accounts",
            r#"{"owner": {"name": "Ada", "email": "ada@example.com"}, "currency": "EUR", "overdraft_limit": 1e308}"#
                .into(),
            400,
            "invalid-body",
        ),
        (
            "/accounts",
            r#"{"owner": {"name": "Ada", "email": "ada@example.com"}, "currency": "EUR", "overdraft_limit": 9223372036854775807}"#
                .into(),
            422,
            "validation",
        ),
    ];
    for (path, body, status, problem) in cases {
        let answer = post_raw(&app, path, "application/json", body.clone()).await;
        assert_refused(&app, &answer, status, problem, events, &body).await;
    }
    // Just past the largest amount the API takes.
    let answer = app
        .post(&deposit, json!({"amount": 1_000_000_000_000_001_i64}))
        .await;
    assert_refused(&app, &answer, 422, "validation", events, "10^15 + 1").await;
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_key_given_twice_is_400_naming_it_and_writes_nothing(pool: PgPool) {
    let app = spawn_app(pool).await;
    let account = app.open_account(0).await;
    let other = app.open_account(0).await;
    let events = app.event_count().await;
    let cases = [
        (
            format!("/accounts/{account}/deposits"),
            r#"{"amount": 1, "amount": 1000000}"#.to_owned(),
            "amount",
        ),
        (
            format!("/accounts/{account}/freeze"),
            r#"{"reason": "a", "reason": "b"}"#.to_owned(),
            "reason",
        ),
        (
            "/accounts".to_owned(),
            r#"{"owner": {"name": "Ada", "email": "ada@example.com", "name": "Eve"}, "currency": "EUR"}"#
                .to_owned(),
            "name",
        ),
        (
            "/transfers".to_owned(),
            format!(
                r#"{{"from_account_id": "{account}", "to_account_id": "{other}", "to_account_id": "{account}", "amount": 1}}"#
            ),
            "to_account_id",
        ),
    ];
    for (path, body, key) in cases {
        let answer = post_raw(&app, &path, "application/json", body.clone()).await;
        assert_refused(&app, &answer, 400, "invalid-body", events, &body).await;
        let detail = answer.body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(&format!("duplicate key \"{key}\"")), "{detail}");
    }
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn overlong_headers_and_idempotency_keys_are_refused_and_write_nothing(pool: PgPool) {
    let app = spawn_app(pool).await;
    let account = app.open_account(0).await;
    let events = app.event_count().await;
    let path = format!("/accounts/{account}/deposits");
    let long_key = "k".repeat(256);
    let huge_key = "k".repeat(8 * 1024);
    let long_correlation = "c".repeat(129);
    let cases: [(&str, &str, &str); 5] = [
        ("idempotency-key", &long_key, "Idempotency-Key"),
        ("idempotency-key", &huge_key, "Idempotency-Key"),
        ("idempotency-key", "", "Idempotency-Key"),
        ("x-correlation-id", &long_correlation, "X-Correlation-Id"),
        ("if-match", &huge_key, "If-Match"),
    ];
    for (name, value, display) in cases {
        let answer = app.post_with(&path, json!({"amount": 5}), &[(name, value)]).await;
        assert_refused(&app, &answer, 400, "invalid-header", events, name).await;
        assert_eq!(answer.body["header"], display);
    }
    // The same header twice is ambiguous, like a duplicate JSON key.
    let answer = app
        .send(
            app.client
                .post(app.url(&path))
                .json(&json!({"amount": 5}))
                .header("idempotency-key", "one")
                .header("idempotency-key", "two"),
        )
        .await;
    assert_refused(&app, &answer, 400, "invalid-header", events, "two keys").await;
    // All headers together past the server's limit: refused before any handler.
    let answer = app
        .send(
            app.client
                .post(app.url(&path))
                .json(&json!({"amount": 5}))
                .header("x-padding", "p".repeat(20 * 1024)),
        )
        .await;
    assert_refused(&app, &answer, 431, "headers-too-large", events, "20 KiB header").await;
    // A token that is no token.
    for token in [INJECTIONS[1].to_owned(), "t".repeat(8 * 1024)] {
        let answer = app
            .send(
                reqwest::Client::new()
                    .post(app.url(&path))
                    .json(&json!({"amount": 5}))
                    .header("authorization", format!("Bearer {token}")),
            )
            .await;
        assert_eq!(answer.status, 401, "{}", answer.body);
        assert_eq!(answer.header("content-type"), Some("application/problem+json"));
        assert_eq!(app.event_count().await, events);
    }
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn bodies_not_declared_as_json_are_415_and_write_nothing(pool: PgPool) {
    let app = spawn_app(pool).await;
    let account = app.open_account(0).await;
    let events = app.event_count().await;
    let path = format!("/accounts/{account}/deposits");
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "application/jsonp",
        "json",
        "",
    ] {
        let answer = post_raw(&app, &path, content_type, r#"{"amount": 5}"#).await;
        assert_refused(&app, &answer, 415, "unsupported-media-type", events, content_type).await;
    }
    // A body with no content type at all.
    let answer = app
        .send(app.client.post(app.url(&path)).body(r#"{"amount": 5}"#))
        .await;
    assert_refused(&app, &answer, 415, "unsupported-media-type", events, "none").await;
    // Declared JSON, but a form.
    let answer = post_raw(&app, &path, "application/json", "amount=5").await;
    assert_refused(&app, &answer, 400, "malformed-json", events, "form as JSON").await;
    // An unknown account id is still looked at only after the body is acceptable.
    let unknown = Uuid::now_v7();
    let answer = post_raw(&app, &format!("/accounts/{unknown}/deposits"), "text/plain", "{}").await;
    assert!((400..500).contains(&answer.status));
    assert_eq!(app.event_count().await, events);
}

/// Percent-encodes everything but unreserved characters, so the text reaches the
/// server as one path segment.
fn url_escape(text: &str) -> String {
    text.bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                (byte as char).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}
