//! Read-your-writes: `min_position` waits for the projector's notification, and a
//! position not reached in time is a 503 with `Retry-After`.

use std::time::Duration;

use sqlx::PgPool;

use crate::helpers::{AccountFixture, set_checkpoint, spawn_app};

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_request_waits_for_min_position_and_answers_once_the_projector_notifies(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let account = AccountFixture::new("EUR", "open");
    app.set_checkpoint("accounts", 3).await;

    // The projector applies the account (position 4) a little later, in one transaction
    // with its checkpoint and the notification.
    let projector = {
        let pool = pool.clone();
        let account_id = account.account_id;
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let fixture = AccountFixture {
                account_id,
                ..AccountFixture::new("EUR", "open")
            };
            sqlx::query(
                "INSERT INTO read_model.accounts (account_id, owner_name, owner_email, currency, \
                 balance, overdraft_limit, status, version, opened_at, updated_at, last_position) \
                 VALUES ($1, 'Ada Lovelace', 'ada@example.com', 'EUR', 0, 0, 'open', 1, now(), now(), 4)",
            )
            .bind(fixture.account_id)
            .execute(&pool)
            .await
            .expect("row");
            set_checkpoint(&pool, "accounts", 4).await;
        })
    };

    let response = app
        .get(&format!(
            "/accounts/{}?min_position=4&wait_ms=10000",
            account.account_id
        ))
        .await;

    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-projection-position"], "4");
    projector.await.expect("projector task");
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_position_not_reached_in_time_is_a_503_with_retry_after(pool: PgPool) {
    let app = spawn_app(pool).await;
    let account = AccountFixture::new("EUR", "open");
    app.insert_account(&account).await;
    app.set_checkpoint("accounts", 3).await;

    let response = app
        .get(&format!(
            "/accounts/{}?min_position=9&wait_ms=100",
            account.account_id
        ))
        .await;

    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(response.headers()["x-projection-position"], "3");
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let body: serde_json::Value = response.json().await.expect("problem");
    assert_eq!(body["type"], "https://eventledger.dev/problems/projection-behind");
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_position_already_reached_answers_at_once(pool: PgPool) {
    let app = spawn_app(pool).await;
    let account = AccountFixture::new("EUR", "open");
    app.insert_account(&account).await;
    app.set_checkpoint("accounts", 10).await;

    let response = app
        .get(&format!(
            "/accounts/{}?min_position=10&wait_ms=0",
            account.account_id
        ))
        .await;

    assert_eq!(response.status(), 200);
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn each_view_waits_for_its_own_projection(pool: PgPool) {
    let app = spawn_app(pool).await;
    let account = AccountFixture::new("EUR", "open");
    app.insert_account(&account).await;
    app.set_checkpoint("accounts", 10).await;
    app.set_checkpoint("account_transactions", 2).await;

    let response = app
        .get(&format!(
            "/accounts/{}/transactions?min_position=10&wait_ms=50",
            account.account_id
        ))
        .await;

    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["x-projection-position"], "2");
}
