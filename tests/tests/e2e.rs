//! End to end, across the real processes: commands go in through `command-api`, travel
//! through PostgreSQL, the relay and JetStream to the `projector`, and come out of
//! `query-api`; the audit log shows who did what; a rebuild gives the same answers; and
//! killing any process loses nothing. Needs the binaries built (scripts/test.sh does).

use std::time::Duration;

use serde_json::{Value, json};
use service::auth::Role;
use sqlx::migrate::MigrateDatabase;
use tests::harness::{Binary, System};

/// The subject of the test's token, and so the actor of every event it causes.
const ACTOR: &str = "e2e-admin";

/// How long a read waits for the projection to include a write (`wait_ms`): generous,
/// since a restarted projector first catches up.
const WAIT_MS: u64 = 10_000;

struct Client {
    http: reqwest::Client,
}

impl Client {
    /// A client that authenticates as an admin called `e2e-admin`, the actor the audit
    /// log must show.
    fn new() -> Self {
        Self::holding(ACTOR, &[Role::Admin])
    }

    /// A client that authenticates as `subject` with `roles`.
    fn holding(subject: &str, roles: &[Role]) -> Self {
        let token = System::token(subject, roles).expect("token");
        Self::with_token(Some(&token))
    }

    /// A client that sends `token`, or no `Authorization` header for `None`.
    fn with_token(token: Option<&str>) -> Self {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token {
            headers.insert(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {token}").parse().expect("header"),
            );
        }
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .default_headers(headers)
                .build()
                .expect("client"),
        }
    }

    async fn post(&self, url: &str, body: Value, correlation_id: &str) -> (u16, Value) {
        let response = self
            .http
            .post(url)
            .header("X-Correlation-Id", correlation_id)
            .json(&body)
            .send()
            .await
            .expect("POST");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, url: &str) -> (u16, Value) {
        let response = self.http.get(url).send().await.expect("GET");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

fn position(answer: &Value) -> i64 {
    answer["position"].as_i64().expect("position in command answer")
}

async fn open_account(system: &System, client: &Client, name: &str, correlation_id: &str) -> (String, i64) {
    let (status, answer) = client
        .post(
            &system.url(Binary::CommandApi, "/accounts"),
            json!({ "owner": { "name": name, "email": format!("{}@example.com", name.to_lowercase()) }, "currency": "EUR" }),
            correlation_id,
        )
        .await;
    assert_eq!(status, 201, "{answer}");
    let id = answer["account_id"].as_str().expect("account_id").to_owned();
    (id, position(&answer))
}

async fn balance_at(system: &System, client: &Client, account_id: &str, min_position: i64) -> i64 {
    let url = system.url(
        Binary::QueryApi,
        &format!("/accounts/{account_id}?min_position={min_position}&wait_ms={WAIT_MS}"),
    );
    let (status, answer) = client.get(&url).await;
    assert_eq!(status, 200, "{answer}");
    answer["balance"].as_i64().expect("balance")
}

#[tokio::test]
async fn every_process_starts_against_a_fresh_database_asks_for_tokens_and_stops_cleanly_on_sigterm() {
    let system = System::start(&Binary::ALL).await.expect("system");
    let client = Client::new();
    for binary in Binary::ALL {
        let (status, _) = client.get(&system.url(binary, "/healthz")).await;
        assert_eq!(status, 200, "{}", binary.name());
    }
    // Every process verifies tokens with the key it was given: without a token, a query
    // and the admin port's status are refused; a viewer may read both but not rebuild.
    let anonymous = Client::with_token(None);
    let viewer = Client::holding("e2e-viewer", &[Role::Viewer]);
    let queries = system.url(Binary::QueryApi, "/accounts");
    let projections = system.url(Binary::Projector, "/projections");
    for url in [&queries, &projections] {
        let (status, problem) = anonymous.get(url).await;
        assert_eq!(status, 401, "{url}: {problem}");
        assert_eq!(problem["type"], "https://eventledger.dev/problems/unauthorized");
        let (status, answer) = viewer.get(url).await;
        assert_eq!(status, 200, "{url}: {answer}");
    }
    let (status, problem) = viewer
        .post(
            &system.url(Binary::Projector, "/projections/accounts/rebuild"),
            json!({}),
            "e2e-viewer-rebuild",
        )
        .await;
    assert_eq!(status, 403, "{problem}");
    let (status, _) = client.get(&system.url(Binary::QueryApi, "/audit/events")).await;
    assert_eq!(status, 200, "an admin passes every check");
    assert!(
        system.shut_down().await.expect("shut down"),
        "every process exits 0 on SIGTERM"
    );
}

#[tokio::test]
async fn a_command_flows_through_to_the_read_models_the_audit_log_and_a_rebuild() {
    let mut system = System::start(&Binary::ALL).await.expect("system");
    let client = Client::new();
    let correlation_id = format!("e2e-{}", uuid::Uuid::now_v7());

    let (alice, _) = open_account(&system, &client, "Alice", &correlation_id).await;
    let (bob, _) = open_account(&system, &client, "Bob", &correlation_id).await;
    let (status, deposit) = client
        .post(
            &system.url(Binary::CommandApi, &format!("/accounts/{alice}/deposits")),
            json!({ "amount": 10_000, "reference": "salary" }),
            &correlation_id,
        )
        .await;
    assert_eq!(status, 200, "{deposit}");
    let (status, transfer) = client
        .post(
            &system.url(Binary::CommandApi, "/transfers"),
            json!({ "from_account_id": alice, "to_account_id": bob, "amount": 2_500, "reference": "rent" }),
            &correlation_id,
        )
        .await;
    assert_eq!(status, 201, "{transfer}");
    let last = position(&transfer);

    assert_eq!(balance_at(&system, &client, &alice, last).await, 7_500);
    assert_eq!(balance_at(&system, &client, &bob, last).await, 2_500);

    // The audit log holds every event of this interaction, in order, with who and why.
    let (status, audit) = client
        .get(&system.url(
            Binary::QueryApi,
            &format!("/audit/events?correlation_id={correlation_id}"),
        ))
        .await;
    assert_eq!(status, 200, "{audit}");
    let items = audit["items"].as_array().expect("items");
    let types: Vec<&str> = items
        .iter()
        .filter_map(|item| item["event_type"].as_str())
        .collect();
    assert_eq!(
        types,
        [
            "AccountOpened",
            "AccountOpened",
            "FundsDeposited",
            "TransferDebited",
            "TransferCredited",
            "TransferExecuted"
        ]
    );
    for item in items {
        assert_eq!(item["metadata"]["correlation_id"], correlation_id.as_str());
        assert_eq!(item["metadata"]["actor"], ACTOR);
    }

    // A rebuild replays the log and gives the same answers.
    let (_, before) = client
        .get(&system.url(Binary::QueryApi, &format!("/accounts/{alice}")))
        .await;
    let (status, rebuilt) = client
        .post(
            &system.url(Binary::Projector, "/projections/accounts/rebuild"),
            json!({}),
            &correlation_id,
        )
        .await;
    assert!((200..300).contains(&status), "{status} {rebuilt}");
    let (_, after) = client
        .get(&system.url(
            Binary::QueryApi,
            &format!("/accounts/{alice}?min_position={last}&wait_ms={WAIT_MS}"),
        ))
        .await;
    assert_eq!(before, after);

    // Kill each process in turn, keep writing, and lose nothing.
    let mut expected_alice = 7_500;
    let mut last = last;
    for binary in Binary::ALL {
        system
            .process(binary)
            .expect("process")
            .restart()
            .await
            .expect("restart");
        let (status, answer) = client
            .post(
                &system.url(Binary::CommandApi, &format!("/accounts/{alice}/deposits")),
                json!({ "amount": 100 }),
                &correlation_id,
            )
            .await;
        assert_eq!(status, 200, "after restarting {}: {answer}", binary.name());
        expected_alice += 100;
        last = position(&answer);
        assert_eq!(
            balance_at(&system, &client, &alice, last).await,
            expected_alice,
            "after {}",
            binary.name()
        );
    }
    assert_eq!(balance_at(&system, &client, &bob, last).await, 2_500);
    system.shut_down().await.expect("shut down");
}

#[tokio::test]
async fn a_pending_transfer_that_times_out_is_expired_by_the_command_api_and_shows_expired_in_the_query_api()
{
    let system = System::start(&Binary::ALL).await.expect("system");
    let client = Client::new();
    let correlation_id = format!("e2e-pending-{}", uuid::Uuid::now_v7());
    let (alice, _) = open_account(&system, &client, "Alice", &correlation_id).await;
    let (bob, _) = open_account(&system, &client, "Bob", &correlation_id).await;
    let (status, deposit) = client
        .post(
            &system.url(Binary::CommandApi, &format!("/accounts/{alice}/deposits")),
            json!({ "amount": 1_000 }),
            &correlation_id,
        )
        .await;
    assert_eq!(status, 200, "{deposit}");
    let (status, pending) = client
        .post(
            &system.url(Binary::CommandApi, "/transfers"),
            json!({ "from_account_id": alice, "to_account_id": bob, "amount": 400, "pending": true, "timeout_seconds": 1 }),
            &correlation_id,
        )
        .await;
    assert_eq!(status, 201, "{pending}");
    assert_eq!(pending["status"], "pending");
    let transfer_id = pending["transfer_id"].as_str().expect("transfer_id").to_owned();
    let (status, account) = client
        .get(&system.url(
            Binary::QueryApi,
            &format!(
                "/accounts/{alice}?min_position={}&wait_ms={WAIT_MS}",
                position(&pending)
            ),
        ))
        .await;
    assert_eq!(status, 200, "{account}");
    assert_eq!(
        (
            account["balance"].as_i64(),
            account["available_balance"].as_i64(),
            account["pending_debits"].as_i64()
        ),
        (Some(1_000), Some(600), Some(400))
    );

    // The command API's expiry worker voids it as `system` at its deadline.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let transfer = loop {
        // Waits until the transfers projection has the pending transfer too (the read
        // above waited for the accounts projection only).
        let (status, transfer) = client
            .get(&system.url(
                Binary::QueryApi,
                &format!(
                    "/transfers/{transfer_id}?min_position={}&wait_ms={WAIT_MS}",
                    position(&pending)
                ),
            ))
            .await;
        assert_eq!(status, 200, "{transfer}");
        if transfer["status"] == "expired" {
            break transfer;
        }
        assert!(std::time::Instant::now() < deadline, "never expired: {transfer}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(transfer["posted_amount"], Value::Null);
    let (status, audit) = client
        .get(&system.url(
            Binary::QueryApi,
            &format!("/audit/streams/transfer-{transfer_id}"),
        ))
        .await;
    assert_eq!(status, 200, "{audit}");
    let steps: Vec<(&str, &str)> = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| {
            (
                item["event_type"].as_str().unwrap_or_default(),
                item["metadata"]["actor"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(steps, [("TransferPending", ACTOR), ("TransferVoided", "system")]);
    let expired_at = audit["items"][1]["position"].as_i64().expect("position");
    let (status, account) = client
        .get(&system.url(
            Binary::QueryApi,
            &format!("/accounts/{alice}?min_position={expired_at}&wait_ms={WAIT_MS}"),
        ))
        .await;
    assert_eq!(status, 200, "{account}");
    assert_eq!(
        (
            account["balance"].as_i64(),
            account["available_balance"].as_i64(),
            account["pending_debits"].as_i64()
        ),
        (Some(1_000), Some(1_000), Some(0))
    );
    let (status, refused) = client
        .post(
            &system.url(Binary::CommandApi, &format!("/transfers/{transfer_id}/post")),
            json!({}),
            &correlation_id,
        )
        .await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(
        refused["type"],
        "https://eventledger.dev/problems/transfer-expired"
    );
    system.shut_down().await.expect("shut down");
}

/// A test that fails before `shut_down` (a panic unwinds through its `System`) leaves
/// no database and no stream behind: dropping the system removes them.
#[tokio::test]
async fn a_system_dropped_without_shutting_down_removes_its_database_and_stream() {
    let system = System::start(&[Binary::CommandApi]).await.expect("system");
    let (database_url, stream_name) = (system.database_url.clone(), system.stream_name.clone());
    let client = async_nats::connect(service::nats::server_addrs(&system.nats_url).expect("NATS_URL"))
        .await
        .expect("NATS");
    let jetstream = async_nats::jetstream::new(client);
    // The relay creates the stream once it runs.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while jetstream.get_stream(&stream_name).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay never created {stream_name}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        sqlx::Postgres::database_exists(&database_url)
            .await
            .expect("PostgreSQL")
    );

    drop(system);

    assert!(
        !sqlx::Postgres::database_exists(&database_url)
            .await
            .expect("PostgreSQL"),
        "the database is left behind"
    );
    assert!(
        jetstream.get_stream(&stream_name).await.is_err(),
        "the stream {stream_name} is left behind"
    );
}
