//! Every command endpoint's success path, and the domain's refusals.

use serde_json::json;
use sqlx::PgPool;

use crate::helpers::spawn_app;

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn opening_an_account_answers_201_with_its_stream_version_position_etag_and_location(pool: PgPool) {
    let app = spawn_app(pool).await;
    let account_id = uuid::Uuid::now_v7();
    let answer = app
        .post(
            "/accounts",
            json!({
                "account_id": account_id,
                "owner": {"name": "Ada Lovelace", "email": "ada@example.com"},
                "currency": "EUR",
            }),
        )
        .await;
    assert_eq!(answer.status, 201, "{}", answer.body);
    assert_eq!(answer.body["stream_id"], format!("account-{account_id}"));
    assert_eq!(answer.body["stream_version"], 1);
    assert_eq!(answer.body["position"], 1);
    assert_eq!(answer.body["balance"], 0);
    assert_eq!(answer.body["status"], "open");
    assert_eq!(answer.header("etag"), Some("\"1\""));
    assert_eq!(
        answer.header("location"),
        Some(format!("/accounts/{account_id}").as_str())
    );
    assert_eq!(app.event_count().await, 1);
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn opening_an_account_twice_is_refused_and_writes_nothing(pool: PgPool) {
    let app = spawn_app(pool).await;
    let body = json!({
        "account_id": uuid::Uuid::now_v7(),
        "owner": {"name": "Ada Lovelace", "email": "ada@example.com"},
        "currency": "EUR",
    });
    assert_eq!(app.post("/accounts", body.clone()).await.status, 201);
    let again = app.post("/accounts", body).await;
    assert_eq!(again.status, 422);
    assert_eq!(again.problem(), "account-already-exists");
    assert_eq!(app.event_count().await, 1);
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn an_account_already_in_the_store_but_not_in_the_cache_is_not_opened_again(pool: PgPool) {
    let first = spawn_app(pool.clone()).await;
    let second = spawn_app(pool).await;
    let account = first.open_account(0).await;
    let again = second
        .post(
            "/accounts",
            json!({
                "account_id": account,
                "owner": {"name": "Ada Lovelace", "email": "ada@example.com"},
                "currency": "EUR",
            }),
        )
        .await;
    assert_eq!(again.status, 422, "{}", again.body);
    assert_eq!(again.problem(), "account-already-exists");
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn deposits_and_withdrawals_answer_the_new_balance_and_version(pool: PgPool) {
    let app = spawn_app(pool).await;
    let account = app.open_account(0).await;
    let deposited = app.deposit(account, 1_250).await;
    assert_eq!(deposited.body["balance"], 1_250);
    assert_eq!(deposited.body["stream_version"], 2);
    assert_eq!(deposited.header("etag"), Some("\"2\""));
    let withdrawn = app
        .post(
            &format!("/accounts/{account}/withdrawals"),
            json!({"amount": 250, "reference": "rent"}),
        )
        .await;
    assert_eq!(withdrawn.status, 200, "{}", withdrawn.body);
    assert_eq!(withdrawn.body["balance"], 1_000);
    assert_eq!(withdrawn.body["stream_version"], 3);
    assert_eq!(withdrawn.body["position"], 3);
    assert_eq!(app.stored_account(account).await, (1_000, 3));
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_withdrawal_below_the_overdraft_limit_is_422_insufficient_funds(pool: PgPool) {
    let app = spawn_app(pool).await;
    let account = app.open_account(100).await;
    let ok = app
        .post(
            &format!("/accounts/{account}/withdrawals"),
            json!({"amount": 100}),
        )
        .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.body["balance"], -100);
    let refused = app
        .post(&format!("/accounts/{account}/withdrawals"), json!({"amount": 1}))
        .await;
    assert_eq!(refused.status, 422);
    assert_eq!(refused.problem(), "insufficient-funds");
    assert_eq!(refused.body["balance"], -100);
    assert_eq!(refused.header("content-type"), Some("application/problem+json"));
    assert_eq!(app.stored_account(account).await, (-100, 2));
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_frozen_account_moves_no_money_until_it_is_unfrozen(pool: PgPool) {
    let app = spawn_app(pool).await;
    let account = app.open_account(0).await;
    // No body at all is fine for the commands whose fields are optional.
    let frozen = app
        .send(app.client.post(app.url(&format!("/accounts/{account}/freeze"))))
        .await;
    assert_eq!(frozen.status, 200, "{}", frozen.body);
    assert_eq!(frozen.body["status"], "frozen");
    let refused = app
        .post(&format!("/accounts/{account}/deposits"), json!({"amount": 5}))
        .await;
    assert_eq!(refused.status, 422);
    assert_eq!(refused.problem(), "account-frozen");
    let again = app
        .post(&format!("/accounts/{account}/freeze"), json!({"reason": "again"}))
        .await;
    assert_eq!(again.problem(), "account-already-frozen");
    let unfrozen = app
        .post(
            &format!("/accounts/{account}/unfreeze"),
            json!({"reason": "cleared"}),
        )
        .await;
    assert_eq!(unfrozen.status, 200);
    assert_eq!(unfrozen.body["status"], "open");
    app.deposit(account, 5).await;
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn an_account_closes_only_at_zero_and_then_accepts_no_money(pool: PgPool) {
    let app = spawn_app(pool).await;
    let account = app.open_account(0).await;
    app.deposit(account, 10).await;
    let refused = app.post(&format!("/accounts/{account}/close"), json!({})).await;
    assert_eq!(refused.status, 422);
    assert_eq!(refused.problem(), "balance-not-zero");
    app.post(&format!("/accounts/{account}/withdrawals"), json!({"amount": 10}))
        .await;
    let closed = app
        .post(&format!("/accounts/{account}/close"), json!({"reason": "moving"}))
        .await;
    assert_eq!(closed.status, 200);
    assert_eq!(closed.body["status"], "closed");
    let deposit = app
        .post(&format!("/accounts/{account}/deposits"), json!({"amount": 1}))
        .await;
    assert_eq!(deposit.problem(), "account-closed");
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn erasing_personal_data_appends_personal_data_erased_once(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let account = app.open_account(0).await;
    let erased = app
        .send(
            app.client
                .delete(app.url(&format!("/accounts/{account}/personal-data"))),
        )
        .await;
    assert_eq!(erased.status, 200, "{}", erased.body);
    assert_eq!(erased.body["stream_version"], 2);
    let event_type: String =
        sqlx::query_scalar("SELECT event_type FROM events WHERE stream_id = $1 AND stream_version = 2")
            .bind(format!("account-{account}"))
            .fetch_one(&pool)
            .await
            .expect("erasure event");
    assert_eq!(event_type, "PersonalDataErased");
    let again = app
        .send(
            app.client
                .delete(app.url(&format!("/accounts/{account}/personal-data"))),
        )
        .await;
    assert_eq!(again.status, 200, "erasure is idempotent: {}", again.body);
    assert_eq!(again.body["position"], erased.body["position"]);
    assert_eq!(again.body["stream_version"], 2);
    assert_eq!(app.event_count().await, 2, "the repeated erasure wrote nothing");
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_transfer_appends_its_three_events_in_one_atomic_write(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let from = app.open_account(0).await;
    let to = app.open_account(0).await;
    app.deposit(from, 500).await;
    let transfer_id = uuid::Uuid::now_v7();
    let answer = app
        .post(
            "/transfers",
            json!({
                "transfer_id": transfer_id,
                "from_account_id": from,
                "to_account_id": to,
                "amount": 200,
                "reference": "lunch",
            }),
        )
        .await;
    assert_eq!(answer.status, 201, "{}", answer.body);
    assert_eq!(answer.body["stream_id"], format!("transfer-{transfer_id}"));
    assert_eq!(answer.body["stream_version"], 1);
    assert_eq!(answer.body["position"], 6);
    assert_eq!(answer.body["currency"], "EUR");
    assert_eq!(answer.body["from_account_version"], 3);
    assert_eq!(
        answer.header("location"),
        Some(format!("/transfers/{transfer_id}").as_str())
    );
    let rows: Vec<(i64, String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT position, event_type, recorded_at FROM events WHERE position > 3 ORDER BY position",
    )
    .fetch_all(&pool)
    .await
    .expect("events");
    let types: Vec<&str> = rows
        .iter()
        .map(|(_, event_type, _)| event_type.as_str())
        .collect();
    assert_eq!(types, ["TransferDebited", "TransferCredited", "TransferExecuted"]);
    assert!(
        rows.iter().all(|row| row.2 == rows[0].2),
        "one append, one recorded_at"
    );
    assert_eq!(app.stored_account(from).await, (300, 3));
    assert_eq!(app.stored_account(to).await, (200, 2));
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_transfer_id_executes_at_most_once(pool: PgPool) {
    let app = spawn_app(pool).await;
    let from = app.open_account(0).await;
    let to = app.open_account(0).await;
    app.deposit(from, 500).await;
    let body = json!({
        "transfer_id": uuid::Uuid::now_v7(),
        "from_account_id": from,
        "to_account_id": to,
        "amount": 100,
    });
    assert_eq!(app.post("/transfers", body.clone()).await.status, 201);
    let again = app.post("/transfers", body).await;
    assert_eq!(again.status, 422, "{}", again.body);
    assert_eq!(again.problem(), "transfer-already-executed");
    assert_eq!(app.stored_account(from).await.0, 400);
    assert_eq!(app.stored_account(to).await.0, 100);
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn transfers_that_break_a_rule_are_refused_and_write_nothing(pool: PgPool) {
    let app = spawn_app(pool).await;
    let from = app.open_account(0).await;
    let to = app.open_account(0).await;
    let dollars = app.open_account_in("USD", 0).await;
    app.deposit(from, 100).await;
    let before = app.event_count().await;
    let transfer = |from: uuid::Uuid, to: uuid::Uuid, amount: i64| json!({"from_account_id": from, "to_account_id": to, "amount": amount});
    let cases = [
        (transfer(from, to, 101), 422, "insufficient-funds"),
        (transfer(from, dollars, 10), 422, "currency-mismatch"),
        (transfer(from, from, 10), 422, "same-account"),
        (transfer(from, uuid::Uuid::now_v7(), 10), 404, "account-not-found"),
        (transfer(uuid::Uuid::now_v7(), to, 10), 404, "account-not-found"),
        (transfer(from, to, 0), 422, "validation"),
    ];
    for (body, status, problem) in cases {
        let answer = app.post("/transfers", body.clone()).await;
        assert_eq!((answer.status, answer.problem()), (status, problem), "{body}");
    }
    assert_eq!(app.event_count().await, before);
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn every_event_carries_the_correlation_id_actor_command_and_idempotency_key(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let account = app.open_account(0).await;
    let answer = app
        .post_with(
            &format!("/accounts/{account}/deposits"),
            json!({"amount": 7}),
            &[("x-correlation-id", "corr-123"), ("idempotency-key", "key-1")],
        )
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-correlation-id"), Some("corr-123"));
    let metadata: serde_json::Value =
        sqlx::query_scalar("SELECT metadata FROM events WHERE stream_version = 2")
            .fetch_one(&pool)
            .await
            .expect("deposit event");
    assert_eq!(metadata["correlation_id"], "corr-123");
    assert_eq!(metadata["actor"], crate::helpers::TEST_SUBJECT);
    assert_eq!(metadata["command"], "deposit");
    assert_eq!(metadata["idempotency_key"], "key-1");
    assert!(metadata["causation_id"].is_string());

    let generated = app
        .post(&format!("/accounts/{account}/deposits"), json!({"amount": 7}))
        .await;
    let echoed = generated.header("x-correlation-id").expect("generated id echoed");
    assert!(uuid::Uuid::parse_str(echoed).is_ok());
    let stored: String =
        sqlx::query_scalar("SELECT metadata ->> 'correlation_id' FROM events WHERE stream_version = 3")
            .fetch_one(&pool)
            .await
            .expect("second deposit");
    assert_eq!(stored, echoed);
}
