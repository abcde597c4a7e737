//! Sealed owners in answers (API.md, "Security"): opened while the account's key exists,
//! `null` once it is destroyed, in the account view, the list, history and the audit
//! log alike, and never the stored ciphertext.

use domain::AccountId;
use event_store::{ExpectedVersion, pii};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{AccountFixture, deposited, metadata, opened, spawn_app, test_vault};

fn ada() -> Value {
    json!({"name": "Ada Lovelace", "email": "ada@example.com"})
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn the_read_model_holds_ciphertext_and_answers_show_the_owner_until_the_key_is_destroyed(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let account = AccountFixture::new("EUR", "open");
    app.insert_account(&account).await;
    app.set_checkpoint("accounts", 2).await;
    let stored: (String, String) =
        sqlx::query_as("SELECT owner_name, owner_email FROM read_model.accounts WHERE account_id = $1")
            .bind(account.account_id)
            .fetch_one(&pool)
            .await
            .expect("row");
    assert!(stored.0.starts_with(pii::SEALED_PREFIX) && !stored.0.contains("Ada"));
    assert!(stored.1.starts_with(pii::SEALED_PREFIX) && !stored.1.contains("ada@"));

    let shown = app
        .get_json(&format!("/accounts/{}", account.account_id), 200)
        .await;
    assert_eq!(shown["owner"], ada());
    let page = app.get_json("/accounts", 200).await;
    assert_eq!(page["items"][0]["owner"], ada());

    pii::destroy_keys(&pool, &[account.account_id])
        .await
        .expect("destroy");
    let shown = app
        .get_json(&format!("/accounts/{}", account.account_id), 200)
        .await;
    assert!(shown["owner"].is_null(), "{shown}");
    let page = app.get_json("/accounts", 200).await;
    assert!(page["items"][0]["owner"].is_null(), "{page}");
    assert_eq!(page["items"][0]["balance"], 1250, "the rest of the account stays");
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn the_audit_log_and_history_show_the_owner_opened_and_null_once_the_key_is_gone(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let a = AccountId::from(Uuid::now_v7());
    app.append(
        a,
        ExpectedVersion::NoStream,
        vec![opened(a), deposited(a, 10)],
        "alice",
        "c-1",
    )
    .await;
    let stored: Value = sqlx::query_scalar("SELECT data -> 'owner' FROM events WHERE position = 1")
        .fetch_one(&pool)
        .await
        .expect("stored owner");
    assert!(
        !stored.to_string().contains("Ada"),
        "the log holds ciphertext: {stored}"
    );

    let stream = format!("/audit/streams/{}", a.stream_id());
    let history = format!("/accounts/{}/history?at_position=2", a.as_uuid());
    assert_eq!(
        app.get_json(&stream, 200).await["items"][0]["data"]["owner"],
        ada()
    );
    assert_eq!(
        app.get_json("/audit/events", 200).await["items"][0]["data"]["owner"],
        ada()
    );
    assert_eq!(app.get_json(&history, 200).await["owner"], ada());

    pii::destroy_keys(&pool, &[a.as_uuid()]).await.expect("destroy");
    let envelope = &app.get_json(&stream, 200).await["items"][0];
    assert_eq!(envelope["event_type"], "AccountOpened");
    assert_eq!(envelope["schema_version"], 3);
    assert!(envelope["data"]["owner"].is_null(), "{envelope}");
    assert_eq!(
        envelope["data"]["currency"], "EUR",
        "the rest of the envelope stays"
    );
    assert!(app.get_json("/audit/events", 200).await["items"][0]["data"]["owner"].is_null());
    let then = app.get_json(&history, 200).await;
    assert!(then["owner"].is_null(), "not even the past opens: {then}");
    assert_eq!(then["balance"], 10);
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn an_owner_stored_in_plaintext_before_sealing_is_shown_as_null(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let account_id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO events (position, event_id, stream_id, stream_version, event_type, schema_version, \
         data, metadata, recorded_at) VALUES (1, gen_random_uuid(), $1, 1, 'AccountOpened', 2, $2, $3, now())",
    )
    .bind(format!("account-{account_id}"))
    .bind(json!({
        "account_id": account_id,
        "owner": {"name": "Ada Lovelace", "email": "ada@example.com"},
        "currency": "EUR",
        "overdraft_limit": 0,
    }))
    .bind(serde_json::to_value(metadata("t", "c")).expect("metadata"))
    .execute(&pool)
    .await
    .expect("a schema 2 event");
    sqlx::query("UPDATE event_store_head SET position = 1")
        .execute(&pool)
        .await
        .expect("head");

    let stream = app
        .get_json(&format!("/audit/streams/account-{account_id}"), 200)
        .await;
    assert!(stream["items"][0]["data"]["owner"].is_null(), "{stream}");
    let history = app
        .get_json(&format!("/accounts/{account_id}/history?at_position=1"), 200)
        .await;
    assert!(history["owner"].is_null(), "{history}");
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn an_owner_that_does_not_open_with_its_key_is_an_internal_error_not_garbage(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let account = AccountFixture::new("EUR", "open");
    app.insert_account(&account).await;
    // Another account's ciphertext copied into this row: it does not open here.
    let (other_key, _) = test_vault().new_key(Uuid::now_v7()).expect("key");
    let foreign = other_key.seal("Mallory").expect("sealed");
    sqlx::query("UPDATE read_model.accounts SET owner_name = $1 WHERE account_id = $2")
        .bind(&foreign)
        .bind(account.account_id)
        .execute(&pool)
        .await
        .expect("tamper");
    let problem = app
        .get_problem(&format!("/accounts/{}", account.account_id), 500, "internal")
        .await;
    assert!(!problem.to_string().contains("pii:v1"), "{problem}");
}
