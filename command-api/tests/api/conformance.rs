//! The command API against HTTP, JWT and Unicode rules, as a careful client checks them:
//! `HEAD` answers like `GET`, the bearer scheme in any case, the registered claims of a
//! token, `If-Match`/`If-None-Match` as entity-tag lists (also when opening an account),
//! which refusals an `Idempotency-Key` replays, the text rule on every stored field and
//! header, and an OpenAPI document whose bounds are the code's constants.

use std::time::{SystemTime, UNIX_EPOCH};

use domain::{Amount, Email, OwnerName, Reason, Reference};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{Answer, TEST_SECRET, TestApp, spawn_app};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn signed(claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(TEST_SECRET.as_bytes()),
    )
    .expect("encode")
}

async fn deposit_with_authorization(app: &TestApp, account: uuid::Uuid, authorization: &str) -> Answer {
    app.send(
        reqwest::Client::new()
            .post(app.url(&format!("/accounts/{account}/deposits")))
            .header("authorization", authorization)
            .json(&json!({"amount": 1})),
    )
    .await
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn head_answers_every_get_route_like_get_without_a_body_and_other_methods_get_405(pool: PgPool) {
    let app = spawn_app(pool).await;
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        let get = reqwest::Client::new()
            .get(app.url(path))
            .send()
            .await
            .expect("GET");
        let head = reqwest::Client::new()
            .head(app.url(path))
            .send()
            .await
            .expect("HEAD");
        assert_eq!(head.status(), get.status(), "HEAD {path}");
        assert_eq!(
            head.headers().get("content-type"),
            get.headers().get("content-type"),
            "HEAD {path}"
        );
        assert!(
            head.bytes().await.expect("body").is_empty(),
            "HEAD {path} has a body"
        );
        for method in ["OPTIONS", "PATCH", "PURGE"] {
            let answer = app
                .send(reqwest::Client::new().request(
                    reqwest::Method::from_bytes(method.as_bytes()).expect("method"),
                    app.url(path),
                ))
                .await;
            assert_eq!(
                (answer.status, answer.problem()),
                (405, "method-not-allowed"),
                "{method} {path}"
            );
            let allow = answer.header("allow").unwrap_or_default().to_owned();
            assert!(
                allow.contains("GET") && allow.contains("HEAD"),
                "{method} {path}: Allow {allow:?}"
            );
        }
    }
    // A command route: HEAD is not among its methods.
    let answer = app.send(reqwest::Client::new().head(app.url("/transfers"))).await;
    assert_eq!(answer.status, 405);
    assert_eq!(answer.header("allow"), Some("POST"));
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn the_bearer_scheme_is_case_insensitive_and_other_shapes_are_401(pool: PgPool) {
    let app = spawn_app(pool).await;
    let account = app.open_account(0).await;
    let token = crate::helpers::token("teller-case", &[service::auth::Role::Teller]);
    for scheme in ["bearer", "BEARER", "bEaReR"] {
        let answer = deposit_with_authorization(&app, account, &format!("{scheme} {token}")).await;
        assert_eq!(answer.status, 200, "{scheme}: {}", answer.body);
    }
    let written = app.event_count().await;
    for value in [
        format!("Basic {token}"),
        "Bearer".to_owned(),
        format!("Bearer {token} x"),
    ] {
        let answer = deposit_with_authorization(&app, account, &value).await;
        assert_eq!(
            (answer.status, answer.problem()),
            (401, "unauthorized"),
            "{value}"
        );
        assert_eq!(answer.header("www-authenticate"), Some("Bearer"));
    }
    assert_eq!(app.event_count().await, written);
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn tokens_not_yet_valid_or_issued_in_the_future_write_nothing(pool: PgPool) {
    let app = spawn_app(pool).await;
    let account = app.open_account(0).await;
    let written = app.event_count().await;
    for claims in [
        json!({"sub": "early", "roles": ["teller"], "nbf": now() + 3600, "exp": now() + 7200}),
        json!({"sub": "early", "roles": ["teller"], "iat": now() + 3600, "exp": now() + 7200}),
        json!({"sub": "early", "roles": ["teller"], "exp": (now() + 7200).to_string()}),
        json!({"sub": "early", "roles": ["teller"], "exp": now() + 7200, "aud": "somewhere-else"}),
    ] {
        let answer =
            deposit_with_authorization(&app, account, &format!("Bearer {}", signed(claims.clone()))).await;
        assert_eq!(
            (answer.status, answer.problem()),
            (401, "unauthorized"),
            "{claims}"
        );
    }
    let fractional = json!({"sub": "fraction", "roles": ["teller"], "exp": now() as f64 + 600.5, "nbf": now() as f64 - 0.5});
    let answer = deposit_with_authorization(&app, account, &format!("Bearer {}", signed(fractional))).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(app.event_count().await, written + 1);
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn if_match_is_a_list_of_entity_tags_and_if_none_match_is_honoured(pool: PgPool) {
    let app = spawn_app(pool).await;
    let account = app.open_account(0).await;
    app.deposit(account, 10).await;
    let path = format!("/accounts/{account}/deposits");
    // At version 2.
    let listed = app
        .post_with(&path, json!({"amount": 1}), &[("if-match", "\"999\", \"2\"")])
        .await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert_eq!(listed.header("etag"), Some("\"3\""));
    let written = app.event_count().await;
    for refused in ["\"999\", \"2\"", "W/\"3\"", "\"abc\"", "W/\"3\", \"4\""] {
        let answer = app
            .post_with(&path, json!({"amount": 1}), &[("if-match", refused)])
            .await;
        assert_eq!(
            (answer.status, answer.problem()),
            (412, "version-conflict"),
            "If-Match {refused}"
        );
        assert_eq!(answer.body["current_version"], 3);
    }
    for malformed in ["3", "\"3", "*, \"3\""] {
        let answer = app
            .post_with(&path, json!({"amount": 1}), &[("if-match", malformed)])
            .await;
        assert_eq!(
            (answer.status, answer.problem()),
            (400, "invalid-header"),
            "If-Match {malformed}"
        );
    }
    // Two lines of one list header are one list.
    let split = app
        .send(
            app.client
                .post(app.url(&path))
                .json(&json!({"amount": 1}))
                .header("if-match", "\"1\"")
                .header("if-match", "\"3\""),
        )
        .await;
    assert_eq!(split.status, 200, "{}", split.body);
    // If-None-Match: weak comparison; `*` refuses an existing account.
    for refused in ["*", "\"4\"", "W/\"4\"", "\"1\", \"4\""] {
        let answer = app
            .post_with(&path, json!({"amount": 1}), &[("if-none-match", refused)])
            .await;
        assert_eq!(
            (answer.status, answer.problem()),
            (412, "version-conflict"),
            "If-None-Match {refused}"
        );
    }
    let other = app
        .post_with(&path, json!({"amount": 1}), &[("if-none-match", "\"1\"")])
        .await;
    assert_eq!(other.status, 200, "{}", other.body);
    assert_eq!(app.event_count().await, written + 2);
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn opening_an_account_under_if_match_is_412_and_if_none_match_star_refuses_an_existing_one(
    pool: PgPool,
) {
    let app = spawn_app(pool).await;
    let body = |id: uuid::Uuid| json!({"account_id": id, "owner": {"name": "Ada", "email": "ada@example.com"}, "currency": "EUR"});
    let written = app.event_count().await;
    let new = uuid::Uuid::now_v7();
    for if_match in ["\"5\"", "*", "\"0\""] {
        let answer = app
            .post_with("/accounts", body(new), &[("if-match", if_match)])
            .await;
        assert_eq!(
            (answer.status, answer.problem()),
            (412, "version-conflict"),
            "If-Match {if_match}"
        );
        assert_eq!(answer.body["current_version"], Value::Null);
    }
    assert_eq!(app.event_count().await, written);
    let opened = app
        .post_with("/accounts", body(new), &[("if-none-match", "*")])
        .await;
    assert_eq!(opened.status, 201, "{}", opened.body);
    let again = app
        .post_with("/accounts", body(new), &[("if-none-match", "*")])
        .await;
    assert_eq!((again.status, again.problem()), (412, "version-conflict"));
    // Without the header, opening twice is the domain's refusal.
    let twice = app.post("/accounts", body(new)).await;
    assert_eq!((twice.status, twice.problem()), (422, "account-already-exists"));
    // A transfer is new and never changes: If-Match cannot hold.
    let other = app.open_account(0).await;
    let transfer = app
        .post_with(
            "/transfers",
            json!({"from_account_id": new, "to_account_id": other, "amount": 1}),
            &[("if-match", "*")],
        )
        .await;
    assert_eq!((transfer.status, transfer.problem()), (412, "version-conflict"));
    assert_eq!(app.event_count().await, written + 2);
}

/// Sends `body` to `path` with `key` and returns the answer.
async fn keyed(app: &TestApp, path: &str, body: Value, key: &str) -> Answer {
    app.post_with(path, body, &[("idempotency-key", key)]).await
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_refusal_of_the_domain_is_replayed_under_its_key_even_after_the_state_changed(pool: PgPool) {
    let app = spawn_app(pool).await;
    let account = app.open_account(0).await;
    let path = format!("/accounts/{account}/withdrawals");
    let first = keyed(&app, &path, json!({"amount": 500}), "K").await;
    assert_eq!((first.status, first.problem()), (422, "insufficient-funds"));
    assert_eq!(first.header("idempotent-replayed"), None);
    app.deposit(account, 1000).await;
    let written = app.event_count().await;
    let retry = keyed(&app, &path, json!({"amount": 500}), "K").await;
    assert_eq!(retry.status, 422, "{}", retry.body);
    assert_eq!(retry.body, first.body);
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(retry.header("content-type"), Some("application/problem+json"));
    assert_eq!(app.event_count().await, written);
    assert_eq!(app.stored_account(account).await.0, 1000);
    // The same key with another body is still 422 `idempotency-key-reused`.
    let other = keyed(&app, &path, json!({"amount": 5}), "K").await;
    assert_eq!((other.status, other.problem()), (422, "idempotency-key-reused"));
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn the_replay_table_of_api_md_holds_row_by_row(pool: PgPool) {
    let app = spawn_app(pool).await;
    let account = app.open_account(0).await;
    let deposits = format!("/accounts/{account}/deposits");
    let unknown = format!("/accounts/{}/deposits", uuid::Uuid::now_v7());

    // 2xx: stored and replayed.
    let success = keyed(&app, &deposits, json!({"amount": 7}), "row-2xx").await;
    assert_eq!(success.status, 200);
    let replay = keyed(&app, &deposits, json!({"amount": 7}), "row-2xx").await;
    assert_eq!(
        (replay.status, replay.header("idempotent-replayed")),
        (200, Some("true"))
    );
    assert_eq!(replay.body, success.body);

    // 404 of the domain (an unknown account): stored and replayed.
    let missing = keyed(&app, &unknown, json!({"amount": 7}), "row-404").await;
    assert_eq!((missing.status, missing.problem()), (404, "account-not-found"));
    let replay = keyed(&app, &unknown, json!({"amount": 7}), "row-404").await;
    assert_eq!(
        (replay.status, replay.header("idempotent-replayed")),
        (404, Some("true"))
    );

    // 422 of a rule of the domain: stored and replayed (freeze twice).
    let freeze = format!("/accounts/{account}/freeze");
    assert_eq!(keyed(&app, &freeze, json!({}), "row-freeze-1").await.status, 200);
    let twice = keyed(&app, &freeze, json!({}), "row-422").await;
    assert_eq!((twice.status, twice.problem()), (422, "account-already-frozen"));
    assert_eq!(
        keyed(
            &app,
            &format!("/accounts/{account}/unfreeze"),
            json!({}),
            "row-unfreeze"
        )
        .await
        .status,
        200
    );
    let replay = keyed(&app, &freeze, json!({}), "row-422").await;
    assert_eq!(
        (replay.status, replay.header("idempotent-replayed")),
        (422, Some("true"))
    );

    // Not stored, so the client can fix the request and retry with the same key:
    // 400 malformed, 422 `validation`, 412 precondition, 401 without a token.
    let malformed = app
        .send(
            app.client
                .post(app.url(&deposits))
                .header("idempotency-key", "row-400")
                .header("content-type", "application/json")
                .body("{"),
        )
        .await;
    assert_eq!(malformed.status, 400);
    assert_eq!(
        keyed(&app, &deposits, json!({"amount": 1}), "row-400")
            .await
            .status,
        200
    );

    let invalid = keyed(&app, &deposits, json!({"amount": 0}), "row-validation").await;
    assert_eq!((invalid.status, invalid.problem()), (422, "validation"));
    assert_eq!(
        keyed(&app, &deposits, json!({"amount": 1}), "row-validation")
            .await
            .status,
        200
    );

    let stale = app
        .post_with(
            &deposits,
            json!({"amount": 1}),
            &[("idempotency-key", "row-412"), ("if-match", "\"1\"")],
        )
        .await;
    assert_eq!(stale.status, 412);
    let fixed = keyed(&app, &deposits, json!({"amount": 1}), "row-412").await;
    assert_eq!((fixed.status, fixed.header("idempotent-replayed")), (200, None));

    let anonymous = app
        .send(
            reqwest::Client::new()
                .post(app.url(&deposits))
                .header("idempotency-key", "row-401")
                .json(&json!({"amount": 1})),
        )
        .await;
    assert_eq!(anonymous.status, 401);
    let authenticated = keyed(&app, &deposits, json!({"amount": 1}), "row-401").await;
    assert_eq!(
        (authenticated.status, authenticated.header("idempotent-replayed")),
        (200, None)
    );

    // What is stored: one row per stored answer, refusals without a position.
    let rows: Vec<(String, i16, Option<i64>)> = sqlx::query_as(
        "SELECT idempotency_key, response_status, position FROM idempotency_keys ORDER BY idempotency_key",
    )
    .fetch_all(&app.pool)
    .await
    .expect("keys");
    let refusals: Vec<&(String, i16, Option<i64>)> = rows.iter().filter(|row| row.2.is_none()).collect();
    assert_eq!(
        refusals
            .iter()
            .map(|row| (row.0.as_str(), row.1))
            .collect::<Vec<_>>(),
        [("row-404", 404), ("row-422", 422)]
    );
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn invisible_and_unassigned_characters_are_refused_in_every_free_text_field(pool: PgPool) {
    let app = spawn_app(pool).await;
    let account = app.open_account(0).await;
    let other = app.open_account(0).await;
    let written = app.event_count().await;
    for invisible in [
        "\u{00AD}", "\u{2063}", "\u{200B}", "\u{202E}", "\u{E000}", "\u{0378}", "\u{2028}", "\u{3164}",
        "\u{FE0F}",
    ] {
        let text = format!("rent{invisible}march");
        let cases = [
            (
                "/accounts".to_owned(),
                json!({"owner": {"name": text, "email": "ada@example.com"}, "currency": "EUR"}),
                "owner.name",
            ),
            (
                "/accounts".to_owned(),
                json!({"owner": {"name": "Ada", "email": format!("ada{invisible}@example.com")}, "currency": "EUR"}),
                "owner.email",
            ),
            (
                format!("/accounts/{account}/deposits"),
                json!({"amount": 1, "reference": text}),
                "reference",
            ),
            (
                format!("/accounts/{account}/withdrawals"),
                json!({"amount": 1, "reference": text}),
                "reference",
            ),
            (
                "/transfers".to_owned(),
                json!({"from_account_id": account, "to_account_id": other, "amount": 1, "reference": text}),
                "reference",
            ),
            (
                format!("/accounts/{account}/freeze"),
                json!({"reason": text}),
                "reason",
            ),
            (
                format!("/accounts/{account}/close"),
                json!({"reason": text}),
                "reason",
            ),
        ];
        for (path, body, field) in cases {
            let answer = app.post(&path, body).await;
            assert_eq!(
                (answer.status, answer.problem(), answer.body["field"].as_str()),
                (422, "validation", Some(field)),
                "{path} {invisible:?}"
            );
        }
    }
    // Stored headers: only printable ASCII (a subset of what the text rule allows).
    for (name, value) in [
        ("idempotency-key", "key\twith-tab"),
        ("x-correlation-id", "id\twith-tab"),
    ] {
        let answer = app
            .post_with(
                &format!("/accounts/{account}/deposits"),
                json!({"amount": 1}),
                &[(name, value)],
            )
            .await;
        assert_eq!(
            (answer.status, answer.problem()),
            (400, "invalid-header"),
            "{name}"
        );
    }
    // A token whose `sub` holds an invisible character is not a recordable actor.
    let token = crate::helpers::token("teller\u{00AD}", &[service::auth::Role::Teller]);
    let answer = deposit_with_authorization(&app, account, &format!("Bearer {token}")).await;
    assert_eq!((answer.status, answer.problem()), (401, "unauthorized"));
    assert_eq!(app.event_count().await, written);
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn every_bound_in_the_document_is_the_constant_the_server_enforces(pool: PgPool) {
    let app = spawn_app(pool).await;
    let document = app.send(app.client.get(app.url("/openapi.json"))).await.body;
    let schemas = &document["components"]["schemas"];
    let amount = |schema: &str| &schemas[schema]["properties"]["amount"];
    for schema in ["MoneyBody", "TransferBody"] {
        assert_eq!(amount(schema)["minimum"], 1, "{schema}");
        assert_eq!(amount(schema)["maximum"], Amount::MAX_MINOR_UNITS, "{schema}");
        assert_eq!(
            schemas[schema]["properties"]["reference"]["maxLength"],
            Reference::MAX_CHARS
        );
    }
    assert_eq!(
        schemas["OpenAccountBody"]["properties"]["overdraft_limit"]["maximum"],
        Amount::MAX_MINOR_UNITS
    );
    assert_eq!(
        schemas["ReasonBody"]["properties"]["reason"]["maxLength"],
        Reason::MAX_CHARS
    );
    assert_eq!(
        schemas["OwnerBody"]["properties"]["name"]["maxLength"],
        OwnerName::MAX_CHARS
    );
    assert_eq!(
        schemas["OwnerBody"]["properties"]["email"]["maxLength"],
        Email::MAX_CHARS
    );
    // Every bound the code declares landed in the document.
    for (schema, property, bounds) in command_api::openapi::body_bounds() {
        for (keyword, value) in bounds {
            assert_eq!(
                schemas[schema]["properties"][property][keyword], value,
                "{schema}.{property}.{keyword}"
            );
        }
    }
    let mut seen = 0;
    for item in document["paths"].as_object().expect("paths").values() {
        for parameter in item["post"]["parameters"].as_array().into_iter().flatten() {
            if parameter["name"] == "Idempotency-Key" {
                assert_eq!(
                    parameter["schema"]["maxLength"],
                    command_api::extract::MAX_IDEMPOTENCY_KEY_CHARS
                );
                seen += 1;
            }
            if parameter["name"] == "X-Correlation-Id" {
                assert_eq!(
                    parameter["schema"]["maxLength"],
                    command_api::extract::MAX_CORRELATION_ID_CHARS
                );
            }
        }
    }
    assert!(seen >= 7, "Idempotency-Key documented on {seen} commands");
    // And the server enforces exactly those: the maximum passes, one more is refused.
    let account = app.open_account(0).await;
    let path = format!("/accounts/{account}/deposits");
    assert_eq!(
        app.post(&path, json!({"amount": Amount::MAX_MINOR_UNITS}))
            .await
            .status,
        200
    );
    let over = app
        .post(&path, json!({"amount": Amount::MAX_MINOR_UNITS + 1}))
        .await;
    assert_eq!((over.status, over.problem()), (422, "validation"));
}
