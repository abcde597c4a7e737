//! Personal data at rest (API.md, "Security"): the owner reaches the event log only
//! sealed under the account's own key, the key is stored in the same transaction as the
//! account's first event (never without it, never overwritten by a failed open), and
//! erasure destroys it together with appending `PersonalDataErased`, admin only and
//! idempotently.

use domain::{SealedOwner, StreamRef};
use serde_json::{Value, json};
use service::auth::Role;
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{Answer, TEST_SUBJECT, TestApp, client_with_token, spawn_app, test_vault, token};

const NAME: &str = "Hypatia Quillfeather";
const EMAIL: &str = "hypatia.quillfeather@example.org";

async fn open(app: &TestApp, account_id: Uuid) -> Answer {
    app.post(
        "/accounts",
        json!({
            "account_id": account_id,
            "owner": {"name": NAME, "email": EMAIL},
            "currency": "EUR",
        }),
    )
    .await
}

async fn erase(app: &TestApp, client: &reqwest::Client, account_id: Uuid) -> Answer {
    app.send(client.delete(app.url(&format!("/accounts/{account_id}/personal-data"))))
        .await
}

async fn stored_owner(pool: &PgPool, account_id: Uuid) -> Value {
    sqlx::query_scalar("SELECT data -> 'owner' FROM events WHERE stream_id = $1 AND stream_version = 1")
        .bind(StreamRef::Account(account_id.into()).stream_id())
        .fetch_one(pool)
        .await
        .expect("AccountOpened")
}

async fn key_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM pii_keys")
        .fetch_one(pool)
        .await
        .expect("count keys")
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn the_owner_is_stored_sealed_and_opens_with_the_key_stored_beside_it(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let account_id = Uuid::now_v7();
    let opened = open(&app, account_id).await;
    assert_eq!(opened.status, 201, "{}", opened.body);

    let (schema_version, data): (i32, String) =
        sqlx::query_as("SELECT schema_version, data::text FROM events WHERE stream_id = $1")
            .bind(format!("account-{account_id}"))
            .fetch_one(&pool)
            .await
            .expect("AccountOpened");
    assert_eq!(schema_version, 3);
    assert!(
        !data.contains(NAME) && !data.contains(EMAIL),
        "plaintext in the log: {data}"
    );
    assert!(
        !opened.body.to_string().contains(NAME),
        "the answer carries no owner"
    );

    let sealed: SealedOwner = serde_json::from_value(stored_owner(&pool, account_id).await).expect("sealed");
    let key = test_vault()
        .load_key(&pool, account_id)
        .await
        .expect("load")
        .expect("the key was stored with the event");
    let owner = key.open_owner(&sealed).expect("opens");
    assert_eq!((owner.name.as_str(), owner.email.as_str()), (NAME, EMAIL));
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_refused_open_stores_no_key_and_leaves_the_first_key_in_place(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let account_id = Uuid::now_v7();
    assert_eq!(open(&app, account_id).await.status, 201);
    // Refused on this instance's cached state, and on a second instance (no cache) by the
    // append itself, after the second instance made and sealed with a key of its own.
    let again = open(&app, account_id).await;
    assert_eq!(again.problem(), "account-already-exists", "{}", again.body);
    let other_instance = spawn_app(pool.clone()).await;
    let elsewhere = open(&other_instance, account_id).await;
    assert_eq!(
        elsewhere.problem(),
        "account-already-exists",
        "{}",
        elsewhere.body
    );
    let invalid = app
        .post(
            "/accounts",
            json!({"owner": {"name": NAME, "email": "not-an-email"}, "currency": "EUR"}),
        )
        .await;
    assert_eq!(invalid.status, 422);

    assert_eq!(key_count(&pool).await, 1, "no key without its event");
    let sealed: SealedOwner = serde_json::from_value(stored_owner(&pool, account_id).await).expect("sealed");
    let key = test_vault()
        .load_key(&pool, account_id)
        .await
        .expect("load")
        .expect("key");
    assert!(
        key.open_owner(&sealed).is_ok(),
        "the first key still opens the first event"
    );
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn erasure_is_admin_only_destroys_the_key_with_the_event_and_is_idempotent(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let account_id = Uuid::now_v7();
    assert_eq!(open(&app, account_id).await.status, 201);

    let teller = client_with_token(&token(TEST_SUBJECT, &[Role::Teller]));
    let refused = erase(&app, &teller, account_id).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(key_count(&pool).await, 1, "a refused erasure destroys nothing");

    let erased = erase(&app, &app.client, account_id).await;
    assert_eq!(erased.status, 200, "{}", erased.body);
    assert_eq!(key_count(&pool).await, 0, "the key is gone");
    let erasures: Vec<i64> = sqlx::query_scalar(
        "SELECT position FROM events WHERE stream_id = $1 AND event_type = 'PersonalDataErased'",
    )
    .bind(format!("account-{account_id}"))
    .fetch_all(&pool)
    .await
    .expect("erasures");
    assert_eq!(
        erasures,
        vec![erased.body["position"].as_i64().expect("position")]
    );

    let again = erase(&app, &app.client, account_id).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body["position"], erased.body["position"]);
    assert_eq!(again.header("etag"), Some("\"2\""));
    assert_eq!(app.event_count().await, 2, "erasing again appends nothing");

    // The sealed owner is still in the log, and nobody can open it any more.
    let sealed: SealedOwner = serde_json::from_value(stored_owner(&pool, account_id).await).expect("sealed");
    assert!(
        test_vault()
            .load_key(&pool, account_id)
            .await
            .expect("load")
            .is_none()
    );
    assert!(!serde_json::to_string(&sealed).expect("json").contains(NAME));
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_closed_account_can_be_erased_and_an_unknown_one_cannot(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let account_id = Uuid::now_v7();
    assert_eq!(open(&app, account_id).await.status, 201);
    let closed = app
        .post(&format!("/accounts/{account_id}/close"), json!({}))
        .await;
    assert_eq!(closed.status, 200, "{}", closed.body);
    let erased = erase(&app, &app.client, account_id).await;
    assert_eq!(
        (erased.status, erased.body["status"].as_str()),
        (200, Some("closed"))
    );
    assert_eq!(key_count(&pool).await, 0);

    let unknown = erase(&app, &app.client, Uuid::now_v7()).await;
    assert_eq!((unknown.status, unknown.problem()), (404, "account-not-found"));
}

#[tokio::test]
async fn run_refuses_to_start_without_a_usable_master_key_outside_development_mode() {
    use clap::Parser;
    use command_api::{Config, RunError};
    use event_store::pii::{PiiConfig, PiiConfigError};
    use service::auth::AuthConfig;

    for (master_key, refused_for_lack) in [(None, true), (Some("c2hvcnQ=".to_owned()), false)] {
        let mut config = Config::try_parse_from(["command-api", "--listen", "127.0.0.1:0"]).expect("config");
        // Nothing listens on port 1: were the key not checked first, this would fail otherwise.
        config.common.database_url = "postgres://postgres@127.0.0.1:1/unreachable".to_owned();
        config.auth = AuthConfig {
            auth_jwt_secret: Some("a-token-secret-of-at-least-32-bytes!".to_owned()),
            auth_jwt_public_key: None,
            insecure_development_auth: false,
            ..AuthConfig::default()
        };
        config.pii = PiiConfig {
            pii_master_key: master_key,
        };
        let result = command_api::run(config, std::future::pending()).await;
        if refused_for_lack {
            assert!(
                matches!(result, Err(RunError::Pii(PiiConfigError::NoKey))),
                "{result:?}"
            );
        } else {
            assert!(
                matches!(result, Err(RunError::Pii(PiiConfigError::BadKey(_)))),
                "{result:?}"
            );
        }
    }
}
