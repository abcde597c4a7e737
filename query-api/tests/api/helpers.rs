//! `spawn_app` and fixtures: a query API on port 0 over a fresh database, verifying
//! tokens with [`TEST_SECRET`], with a client that sends an admin token by default;
//! read-model rows inserted directly (as the projector would write them), and events
//! appended through the event store from domain events.
//!
//! Owners are sealed as the command API seals them, with [`test_vault`]: a fixture row
//! or an `AccountOpened` event holds ciphertext, and its account's key is stored in
//! `pii_keys` with it, so the query API opens them as it would in production.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::{AccountEvent, AccountId, Amount, Currency, OverdraftLimit, Owner, SealedOwner};
use event_store::pii::{self, Vault, WrappedKey};
use event_store::{AppendOutcome, AppendRequest, EventStore, ExpectedVersion, Metadata, NewEvent};
use query_api::database::{READER_ROLE, restrict};
use query_api::progress::PROJECTED_CHANNEL;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use service::auth::{Authenticator, Role, mint_hs256};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The HS256 secret the test apps verify tokens with.
pub const TEST_SECRET: &str = "query-api-test-secret-of-at-least-32-bytes";

/// How long minted test tokens live: far beyond any test, well short of forever.
const TOKEN_LIFETIME: Duration = Duration::from_secs(60 * 60);

/// How long a test request may take before it fails rather than hangs.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A token for `subject` with `roles`, signed with [`TEST_SECRET`].
pub fn token(subject: &str, roles: &[Role]) -> String {
    mint_hs256(TEST_SECRET.as_bytes(), subject, roles, TOKEN_LIFETIME).expect("mint token")
}

/// A client that sends `Authorization: Bearer <token>` on every request, or no
/// `Authorization` header at all for `None`.
pub fn client_with_token(token: Option<&str>) -> reqwest::Client {
    let mut headers = HeaderMap::new();
    if let Some(token) = token {
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).expect("token is a header value"),
        );
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("HTTP client")
}

/// A query API serving over real HTTP, and the owner's pool to arrange its data.
pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    /// The owner's pool (migrations, fixtures); the app itself runs as the reader.
    pub pool: PgPool,
    /// The app's own state, for tests of what its pool may do.
    pub state: query_api::AppState,
    pub store: EventStore,
    stop: CancellationToken,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub async fn spawn_app(pool: PgPool) -> TestApp {
    let reader = restrict(
        (*pool.connect_options())
            .clone()
            .username(READER_ROLE)
            .password(""),
    );
    let nats_url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let nats = service::nats::connect(&nats_url, "query-api-test")
        .await
        .expect("NATS client");
    let stop = CancellationToken::new();
    let authenticator = Authenticator::hs256(TEST_SECRET.as_bytes());
    let state = query_api::start(reader, 4, nats, authenticator, test_vault(), stop.clone())
        .await
        .expect("query API state");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind port 0");
    let address = format!("http://{}", listener.local_addr().expect("local address"));
    let router = query_api::app(state.clone());
    let stopping = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { stopping.cancelled().await })
            .await
    });
    TestApp {
        address,
        // An admin passes every check: the tests of what each role may do are in `access`.
        client: client_with_token(Some(&token("test-admin", &[Role::Admin]))),
        store: EventStore::new(pool.clone()),
        pool,
        state,
        stop,
    }
}

impl TestApp {
    pub async fn get(&self, path_and_query: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path_and_query}", self.address))
            .send()
            .await
            .expect("request sent")
    }

    /// GET, asserting the status, returning the JSON body.
    pub async fn get_json(&self, path_and_query: &str, status: u16) -> serde_json::Value {
        let response = self.get(path_and_query).await;
        assert_eq!(response.status().as_u16(), status, "GET {path_and_query}");
        response.json().await.expect("JSON body")
    }

    /// GET expecting a problem: asserts status, content type and `type` suffix.
    pub async fn get_problem(&self, path_and_query: &str, status: u16, code: &str) -> serde_json::Value {
        let response = self.get(path_and_query).await;
        assert_eq!(response.status().as_u16(), status, "GET {path_and_query}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "GET {path_and_query}"
        );
        let body: serde_json::Value = response.json().await.expect("problem body");
        assert_eq!(
            body["type"],
            format!("https://eventledger.dev/problems/{code}"),
            "GET {path_and_query}: {body}"
        );
        assert_eq!(body["status"], status);
        body
    }

    /// Moves a projection's checkpoint and notifies, in one transaction, as the
    /// projector does.
    pub async fn set_checkpoint(&self, projection: &str, position: i64) {
        set_checkpoint(&self.pool, projection, position).await;
    }

    pub async fn insert_account(&self, account: &AccountFixture) {
        let sealed = match &account.owner {
            Some((name, email)) => {
                // One key per account, as in production: the one its `AccountOpened`
                // was sealed with, if a test appended that first.
                let vault = test_vault();
                let stored = vault
                    .load_key(&self.pool, account.account_id)
                    .await
                    .expect("load key");
                let key = match stored {
                    Some(key) => key,
                    None => {
                        let (key, wrapped) = vault.new_key(account.account_id).expect("data key");
                        pii::store_keys(&self.pool, &[wrapped]).await.expect("store key");
                        key
                    }
                };
                Some(
                    key.seal_owner(&Owner::parse(name, email).expect("owner"))
                        .expect("sealed"),
                )
            }
            None => None,
        };
        sqlx::query(
            "INSERT INTO read_model.accounts (account_id, owner_name, owner_email, currency, balance, \
             overdraft_limit, status, version, opened_at, updated_at, last_position) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(account.account_id)
        .bind(sealed.as_ref().map(|owner| owner.name.as_str().to_owned()))
        .bind(sealed.as_ref().map(|owner| owner.email.as_str().to_owned()))
        .bind(&account.currency)
        .bind(account.balance)
        .bind(0_i64)
        .bind(&account.status)
        .bind(account.version)
        .bind(account.opened_at)
        .bind(account.opened_at)
        .bind(account.version)
        .execute(&self.pool)
        .await
        .expect("account row");
    }

    pub async fn insert_transaction(
        &self,
        account_id: Uuid,
        position: i64,
        kind: &str,
        amount: i64,
        balance_after: i64,
    ) {
        sqlx::query(
            "INSERT INTO read_model.account_transactions (account_id, position, kind, amount, \
             balance_after, reference, transfer_id, counterparty_account_id, recorded_at) \
             VALUES ($1, $2, $3, $4, $5, $6, NULL, NULL, now())",
        )
        .bind(account_id)
        .bind(position)
        .bind(kind)
        .bind(amount)
        .bind(balance_after)
        .bind(format!("ref {position}"))
        .execute(&self.pool)
        .await
        .expect("transaction row");
    }

    /// Appends account events through the event store as `actor` under `correlation_id`.
    pub async fn append(
        &self,
        account_id: AccountId,
        expected: ExpectedVersion,
        events: Vec<AccountEvent>,
        actor: &str,
        correlation_id: &str,
    ) -> AppendOutcome {
        let new_key = unstored_keys()
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&account_id);
        if let Some(wrapped) = new_key {
            pii::store_keys(&self.pool, &[wrapped]).await.expect("store key");
        }
        let events = events
            .iter()
            .map(|event| NewEvent::from_domain(event.to_stored(), metadata(actor, correlation_id)))
            .collect();
        self.store
            .append(AppendRequest::single(account_id.stream_id(), expected, events))
            .await
            .expect("append")
    }
}

pub async fn set_checkpoint(pool: &PgPool, projection: &str, position: i64) {
    let mut transaction = pool.begin().await.expect("begin");
    sqlx::query(
        "INSERT INTO read_model.projection_checkpoints (projection, position) VALUES ($1, $2) \
         ON CONFLICT (projection) DO UPDATE SET position = EXCLUDED.position, updated_at = now()",
    )
    .bind(projection)
    .bind(position)
    .execute(&mut *transaction)
    .await
    .expect("checkpoint");
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(PROJECTED_CHANNEL)
        .bind(format!("{projection}:{position}"))
        .execute(&mut *transaction)
        .await
        .expect("notify");
    transaction.commit().await.expect("commit");
}

pub fn metadata(actor: &str, correlation_id: &str) -> Metadata {
    Metadata {
        actor: actor.to_owned(),
        correlation_id: correlation_id.to_owned(),
        causation_id: None,
        command: "test".to_owned(),
        idempotency_key: None,
        trace: None,
    }
}

/// A read-model account row.
pub struct AccountFixture {
    pub account_id: Uuid,
    pub owner: Option<(String, String)>,
    pub currency: String,
    pub balance: i64,
    pub status: String,
    pub version: i64,
    pub opened_at: DateTime<Utc>,
}

impl AccountFixture {
    pub fn new(currency: &str, status: &str) -> Self {
        Self {
            account_id: Uuid::now_v7(),
            owner: Some(("Ada Lovelace".to_owned(), "ada@example.com".to_owned())),
            currency: currency.to_owned(),
            balance: 1250,
            status: status.to_owned(),
            version: 2,
            opened_at: Utc::now(),
        }
    }
}

/// The master key of every test app.
pub fn test_vault() -> Vault {
    Vault::from_base64("dGVzdC1tYXN0ZXIta2V5LTMyLWJ5dGVzLWxvbmchISE=").expect("master key")
}

/// Keys made by [`opened`] and not yet stored: [`TestApp::append`] stores an account's
/// key with its events, so `opened` can stay a plain function of the account id.
fn unstored_keys() -> &'static Mutex<HashMap<AccountId, WrappedKey>> {
    static KEYS: std::sync::OnceLock<Mutex<HashMap<AccountId, WrappedKey>>> = std::sync::OnceLock::new();
    KEYS.get_or_init(Mutex::default)
}

/// "Ada Lovelace <ada@example.com>", sealed under a new key for `account_id`.
pub fn sealed_ada(account_id: AccountId) -> SealedOwner {
    let (key, wrapped) = test_vault().new_key(account_id.as_uuid()).expect("data key");
    unstored_keys()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(account_id, wrapped);
    key.seal_owner(&Owner::parse("Ada Lovelace", "ada@example.com").expect("owner"))
        .expect("sealed")
}

pub fn opened(account_id: AccountId) -> AccountEvent {
    AccountEvent::AccountOpened {
        account_id,
        owner: Some(sealed_ada(account_id)),
        currency: Currency::parse("EUR").expect("currency"),
        overdraft_limit: OverdraftLimit::new(0).expect("limit"),
    }
}

pub fn deposited(account_id: AccountId, amount: i64) -> AccountEvent {
    AccountEvent::FundsDeposited {
        account_id,
        amount: Amount::new(amount).expect("amount"),
        reference: None,
    }
}

pub fn erased(account_id: AccountId) -> AccountEvent {
    AccountEvent::PersonalDataErased { account_id }
}
