//! `spawn_app`: the command API on port 0 against the test's own database, verifying
//! tokens with [`TEST_SECRET`], and a client that sends an admin token by default, with
//! one method per thing the tests do often.

use std::time::Duration;

use command_api::committer::CommitterSettings;
use command_api::{AppState, app};
use event_store::EventStore;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use serde_json::{Value, json};
use service::auth::{Authenticator, Role, mint_hs256};
use service::{self, HttpLimits, Readiness};
use sqlx::PgPool;
use uuid::Uuid;

pub const NATS_URL: &str = "nats://127.0.0.1:4222";

/// The HS256 secret the test apps verify tokens with.
pub const TEST_SECRET: &str = "command-api-test-secret-of-at-least-32-bytes";

/// The `sub` of the token the default client sends; the `actor` of what it causes.
pub const TEST_SUBJECT: &str = "test-admin";

/// How long minted test tokens live: far beyond any test, well short of forever.
const TOKEN_LIFETIME: Duration = Duration::from_secs(60 * 60);

/// A token for `subject` with `roles`, signed with [`TEST_SECRET`].
pub fn token(subject: &str, roles: &[Role]) -> String {
    mint_hs256(TEST_SECRET.as_bytes(), subject, roles, TOKEN_LIFETIME).expect("mint token")
}

/// A client that sends `Authorization: Bearer <token>` on every request.
pub fn client_with_token(token: &str) -> reqwest::Client {
    let mut headers = HeaderMap::new();
    headers.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).expect("token is a header value"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .pool_max_idle_per_host(64)
        .build()
        .expect("client")
}

/// The vault of every test app: a fixed master key, so tests can open what it sealed.
pub fn test_vault() -> event_store::pii::Vault {
    event_store::pii::Vault::from_base64("dGVzdC1tYXN0ZXIta2V5LTMyLWJ5dGVzLWxvbmchISE=").expect("master key")
}

/// One running command API. The relay does not run: these tests look at PostgreSQL.
pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub pool: PgPool,
    server: tokio::task::JoinHandle<()>,
    /// The transfer expiry worker, when the test asked for one.
    expiry: Option<(tokio::task::JoinHandle<()>, tokio_util::sync::CancellationToken)>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.server.abort();
        if let Some((task, stop)) = &self.expiry {
            stop.cancel();
            task.abort();
        }
    }
}

/// A command API over `pool` with the production bounds.
pub async fn spawn_app(pool: PgPool) -> TestApp {
    spawn_app_with(pool, CommitterSettings::default()).await
}

/// A command API over `pool` with the given committer bounds.
pub async fn spawn_app_with(pool: PgPool, settings: CommitterSettings) -> TestApp {
    spawn_app_full(pool, settings, None).await
}

/// A command API over `pool` whose transfer expiry worker sweeps every `interval`.
pub async fn spawn_app_with_expiry(pool: PgPool, interval: Duration) -> TestApp {
    spawn_app_full(pool, CommitterSettings::default(), Some(interval)).await
}

async fn spawn_app_full(pool: PgPool, settings: CommitterSettings, expiry: Option<Duration>) -> TestApp {
    let nats = async_nats::connect(NATS_URL).await.expect("NATS is running");
    let store = EventStore::new(pool.clone());
    let (state, _committer) = AppState::with_settings(
        store,
        Readiness {
            pool: pool.clone(),
            nats,
        },
        Authenticator::hs256(TEST_SECRET.as_bytes()),
        test_vault(),
        settings,
    );
    let expiry = expiry.map(|interval| {
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(command_api::expiry::run(
            pool.clone(),
            state.commands.clone(),
            interval,
            stop.clone(),
        ));
        (task, stop)
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind port 0");
    let address = format!("http://{}", listener.local_addr().expect("local address"));
    // Served as `run` serves it: within the production HTTP limits.
    let limits = HttpLimits::default();
    let router = service::limits::apply(app(state), &limits, &[]);
    let server = tokio::spawn(async move {
        service::serve::serve_with(
            listener,
            router,
            limits.header_read_timeout(),
            std::future::pending(),
        )
        .await
        .expect("serve");
    });
    TestApp {
        address,
        client: client_with_token(&token(TEST_SUBJECT, &[Role::Admin])),
        pool,
        server,
        expiry,
    }
}

/// A status, the headers and the JSON body of an answer.
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// The problem `type` without its base.
    pub fn problem(&self) -> &str {
        self.body["type"]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches("https://eventledger.dev/problems/")
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.expect("request sent");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("body read");
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            body,
        }
    }

    pub async fn post(&self, path: &str, body: Value) -> Answer {
        self.send(self.client.post(self.url(path)).json(&body)).await
    }

    pub async fn post_with(&self, path: &str, body: Value, headers: &[(&str, &str)]) -> Answer {
        let mut request = self.client.post(self.url(path)).json(&body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.send(request).await
    }

    /// Opens an EUR account with `overdraft_limit`, returning its id.
    pub async fn open_account(&self, overdraft_limit: i64) -> Uuid {
        self.open_account_in("EUR", overdraft_limit).await
    }

    pub async fn open_account_in(&self, currency: &str, overdraft_limit: i64) -> Uuid {
        let answer = self
            .post(
                "/accounts",
                json!({
                    "owner": {"name": "Ada Lovelace", "email": "ada@example.com"},
                    "currency": currency,
                    "overdraft_limit": overdraft_limit,
                }),
            )
            .await;
        assert_eq!(answer.status, 201, "{}", answer.body);
        answer.body["account_id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .expect("account_id in answer")
    }

    pub async fn deposit(&self, account: Uuid, amount: i64) -> Answer {
        let answer = self
            .post(
                &format!("/accounts/{account}/deposits"),
                json!({ "amount": amount }),
            )
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer
    }

    /// How many events the store holds.
    pub async fn event_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&self.pool)
            .await
            .expect("count events")
    }

    /// An account's state and version, folded from its stream in PostgreSQL.
    pub async fn stored_state(&self, account: Uuid) -> (domain::Account, u64) {
        let loaded =
            command_api::committer::load_account(&EventStore::new(self.pool.clone()), account.into())
                .await
                .expect("account loads")
                .expect("account exists");
        (loaded.state, loaded.version)
    }

    /// A transfer's state and version, folded from its stream in PostgreSQL.
    pub async fn stored_transfer(&self, transfer: Uuid) -> Option<(domain::Transfer, u64)> {
        command_api::committer::load_transfer(&EventStore::new(self.pool.clone()), transfer.into())
            .await
            .expect("transfer loads")
            .map(|loaded| (loaded.state, loaded.version))
    }

    /// An account's balance and version, folded from its stream in PostgreSQL.
    pub async fn stored_account(&self, account: Uuid) -> (i64, u64) {
        let loaded =
            command_api::committer::load_account(&EventStore::new(self.pool.clone()), account.into())
                .await
                .expect("account loads")
                .expect("account exists");
        (loaded.state.balance.get(), loaded.version)
    }
}
