//! `If-Match` and version conflicts with other writers.

use domain::{AccountEvent, AccountId, Amount, LedgerEvent};
use event_store::{AppendRequest, EventStore, ExpectedVersion, Metadata, NewEvent};
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::spawn_app;

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn if_match_with_the_current_version_appends_and_a_stale_one_is_412_writing_nothing(pool: PgPool) {
    let app = spawn_app(pool).await;
    let account = app.open_account(0).await;
    let path = format!("/accounts/{account}/deposits");
    let ok = app
        .post_with(&path, json!({"amount": 5}), &[("if-match", "\"1\"")])
        .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.header("etag"), Some("\"2\""));
    let stale = app
        .post_with(&path, json!({"amount": 5}), &[("if-match", "\"1\"")])
        .await;
    assert_eq!((stale.status, stale.problem()), (412, "version-conflict"));
    assert_eq!(stale.body["current_version"], 2);
    assert_eq!(stale.body["expected_version"], 1);
    let any = app
        .post_with(&path, json!({"amount": 5}), &[("if-match", "*")])
        .await;
    assert_eq!(any.status, 200);
    assert_eq!(app.stored_account(account).await, (10, 3));
}

/// Appends a deposit straight to the store, as another command-api instance would.
async fn deposit_behind_the_apps_back(pool: &PgPool, account: uuid::Uuid, expected: u64, amount: i64) {
    let event = LedgerEvent::Account(AccountEvent::FundsDeposited {
        account_id: AccountId::from(account),
        amount: Amount::new(amount).expect("valid amount"),
        reference: None,
    });
    let metadata = Metadata {
        actor: "other-instance".to_owned(),
        correlation_id: "test".to_owned(),
        causation_id: None,
        command: "deposit".to_owned(),
        idempotency_key: None,
        trace: None,
    };
    EventStore::new(pool.clone())
        .append(AppendRequest::single(
            format!("account-{account}"),
            ExpectedVersion::Exact(expected),
            vec![NewEvent::from_domain(event.to_stored(), metadata)],
        ))
        .await
        .expect("direct append");
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_write_by_another_instance_is_detected_reloaded_and_retried(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let account = app.open_account(0).await;
    app.deposit(account, 100).await;
    deposit_behind_the_apps_back(&pool, account, 2, 50).await;

    // The cache says version 2; the store is at 3. The command must see the 50.
    let answer = app
        .post(
            &format!("/accounts/{account}/withdrawals"),
            json!({"amount": 150}),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["balance"], 0);
    assert_eq!(answer.body["stream_version"], 4);
    assert_eq!(app.stored_account(account).await, (0, 4));
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn if_match_naming_a_version_only_another_instance_wrote_succeeds(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let account = app.open_account(0).await;
    deposit_behind_the_apps_back(&pool, account, 1, 50).await;
    let answer = app
        .post_with(
            &format!("/accounts/{account}/deposits"),
            json!({"amount": 5}),
            &[("if-match", "\"2\"")],
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["balance"], 55);
    assert_eq!(answer.header("etag"), Some("\"3\""));
}
