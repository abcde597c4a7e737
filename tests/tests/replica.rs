//! The query API reading a streaming replica (`QUERY_API_READER_DATABASE_URL` naming a
//! hot standby), with the command API and the projector on the primary, all real: a
//! private primary and replica (`scripts/pg-replicated.sh`), the shared NATS.
//!
//! What it shows: read-your-writes stays exact (`min_position=N` answers only once the
//! replica has replayed N, proven by pausing the replica's replay), every answer's
//! `X-Projection-Position` is the replica's own, the audit log never shows a position the
//! replica has not got, an idle query API leaves the replica alone, queries are refused
//! with a 503 problem while the replica is down and answered again once it has caught up,
//! and the command API refuses a replica as its database. It prints the visibility lag
//! through the replica beside a query API on the primary in the same run.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use service::auth::Role;
use sqlx::PgPool;
use tests::harness::{Binary, System};
use tests::pg_replica::PgReplicated;
use uuid::Uuid;

/// Deposits timed from the command's answer to their visibility through each query API.
const LAG_SAMPLES: usize = 100;

struct Api {
    http: reqwest::Client,
    token: String,
}

impl Api {
    fn new() -> Self {
        Self {
            http: reqwest::Client::new(),
            token: System::token("replica-test", &[Role::Admin]).expect("token"),
        }
    }

    async fn post(&self, url: String, body: Value) -> Value {
        let response = self
            .http
            .post(url)
            .bearer_auth(&self.token)
            .header("Idempotency-Key", Uuid::now_v7().to_string())
            .json(&body)
            .send()
            .await
            .expect("command");
        assert!(response.status().is_success(), "{}", response.status());
        response.json().await.expect("json")
    }

    /// Status, `X-Projection-Position` and body of a GET.
    async fn get(&self, url: String) -> (StatusCode, i64, Value) {
        let response = self
            .http
            .get(url)
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("query");
        let status = response.status();
        let position = tests::workload::projection_position(&response);
        (status, position, response.json().await.unwrap_or(Value::Null))
    }
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let index = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

/// Times `LAG_SAMPLES` deposits from the answer to a `min_position` read of the account
/// through the query API at `query_url`.
async fn visibility_lag(
    api: &Api,
    command_url: &str,
    query_url: &str,
    account: &str,
) -> (Duration, Duration) {
    let mut lags = Vec::with_capacity(LAG_SAMPLES);
    for _ in 0..LAG_SAMPLES {
        let answer = api
            .post(
                format!("{command_url}/accounts/{account}/deposits"),
                json!({"amount": 1}),
            )
            .await;
        let position = answer["position"].as_i64().expect("position");
        let acknowledged = Instant::now();
        let (status, seen, _) = api
            .get(format!(
                "{query_url}/accounts/{account}?min_position={position}&wait_ms=5000"
            ))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert!(seen >= position, "read at {seen}, asked for {position}");
        lags.push(acknowledged.elapsed());
    }
    lags.sort();
    (percentile(&lags, 0.5), percentile(&lags, 0.99))
}

/// Commits on the replica's database since the server started: every statement the
/// query API sends there is a transaction of its own.
async fn replica_transactions(replica: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
        .fetch_one(replica)
        .await
        .expect("pg_stat_database")
}

#[tokio::test]
async fn the_query_api_on_a_replica_answers_min_position_only_once_the_replica_has_it() {
    let pair = PgReplicated::start().await.expect("primary and replica");
    let nats = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let mut system = System::start_on(&[Binary::CommandApi, Binary::Projector], &pair.primary_url, &nats)
        .await
        .expect("system");
    let database = system
        .database_url
        .rsplit('/')
        .next()
        .expect("database name")
        .to_owned();
    let replica_reader = PgReplicated::url_of(&pair.replica_url, "eventledger_reader", &database);
    system
        .add_configured(
            Binary::QueryApi,
            &[("QUERY_API_READER_DATABASE_URL", replica_reader.as_str())],
            None,
        )
        .await
        .expect("query API on the replica");
    // A second query API on the primary, for the lag side by side.
    system
        .add_instances(Binary::QueryApi, &[("on-primary", &[])])
        .await
        .expect("query API on the primary");
    let primary_query = system.instance("on-primary").expect("instance").url("");
    let command = system.url(Binary::CommandApi, "");
    let query = system.url(Binary::QueryApi, "");
    let api = Api::new();
    let replica = sqlx::PgPool::connect(&PgReplicated::url_of(&pair.replica_url, "postgres", &database))
        .await
        .expect("replica");

    let account = Uuid::now_v7().to_string();
    api.post(
        format!("{command}/accounts"),
        json!({"account_id": account, "owner": {"name": "Ada", "email": "ada@example.com"}, "currency": "EUR"}),
    )
    .await;
    let deposited = api
        .post(
            format!("{command}/accounts/{account}/deposits"),
            json!({"amount": 500}),
        )
        .await;
    let first = deposited["position"].as_i64().expect("position");
    let (status, seen, body) = api
        .get(format!("{query}/accounts/{account}?min_position={first}"))
        .await;
    assert_eq!(
        (status, body["balance"].as_i64()),
        (StatusCode::OK, Some(500)),
        "{body}"
    );
    assert!(seen >= first);

    // The replica stops replaying: the primary moves on, the replica cannot.
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&replica)
        .await
        .expect("pause");
    let deposited = api
        .post(
            format!("{command}/accounts/{account}/deposits"),
            json!({"amount": 250}),
        )
        .await;
    let second = deposited["position"].as_i64().expect("position");
    let (status, _, body) = api
        .get(format!(
            "{primary_query}/accounts/{account}?min_position={second}"
        ))
        .await;
    assert_eq!(
        (status, body["balance"].as_i64()),
        (StatusCode::OK, Some(750)),
        "the primary has it"
    );
    let (status, _, body) = api
        .get(format!(
            "{query}/accounts/{account}?min_position={second}&wait_ms=300"
        ))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(
        body["type"]
            .as_str()
            .map(|kind| kind.ends_with("projection-behind")),
        Some(true),
        "{body}"
    );
    let (status, seen, body) = api.get(format!("{query}/accounts/{account}")).await;
    assert_eq!(
        (status, body["balance"].as_i64()),
        (StatusCode::OK, Some(500)),
        "{body}"
    );
    assert!(
        seen < second,
        "X-Projection-Position is the replica's own: {seen} < {second}"
    );
    let (status, _, body) = api
        .get(format!("{query}/audit/events?after={}", second - 1))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["items"].as_array().map(Vec::len),
        Some(0),
        "the audit log shows only what the replica has: {body}"
    );
    let (status, _, _) = api
        .get(format!(
            "{query}/audit/events?after={}&min_position={second}&wait_ms=300",
            second - 1
        ))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    // Replay resumes: a waiting read is answered as soon as the replica has the position.
    let waiting = {
        let api = Api::new();
        let url = format!("{query}/accounts/{account}?min_position={second}&wait_ms=5000");
        tokio::spawn(async move { api.get(url).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(&replica)
        .await
        .expect("resume");
    let (status, seen, body) = waiting.await.expect("waiting read");
    assert_eq!(
        (status, body["balance"].as_i64()),
        (StatusCode::OK, Some(750)),
        "{body}"
    );
    assert!(seen >= second);
    let (status, _, body) = api
        .get(format!("{query}/audit/events?after={}", second - 1))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body["items"].as_array().is_some_and(|items| !items.is_empty()),
        "{body}"
    );

    // At rest, nobody waiting: the query API issues nothing to the replica (the two
    // reads of the counter are this test's own).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = replica_transactions(&replica).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = replica_transactions(&replica).await;
    assert!(
        after - before <= 5,
        "an idle query API read the replica {} times in 3 s",
        after - before
    );

    let (primary_p50, primary_p99) = visibility_lag(&api, &command, &primary_query, &account).await;
    let (replica_p50, replica_p99) = visibility_lag(&api, &command, &query, &account).await;
    eprintln!(
        "visibility lag, acknowledged -> readable, {LAG_SAMPLES} sequential deposits: \
         query API on the primary p50 {primary_p50:?} p99 {primary_p99:?}; \
         on the replica p50 {replica_p50:?} p99 {replica_p99:?}"
    );

    // The replica dies: queries are refused with a problem, commands go on; restarted,
    // it catches up by streaming and answers what was committed meanwhile.
    pair.kill_replica().await.expect("kill the replica");
    let (status, _, body) = api.get(format!("{query}/accounts/{account}")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["type"].is_string(), "a problem document: {body}");
    let deposited = api
        .post(
            format!("{command}/accounts/{account}/deposits"),
            json!({"amount": 5}),
        )
        .await;
    let meanwhile = deposited["position"].as_i64().expect("position");
    pair.restart_replica().await.expect("restart the replica");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, seen, _) = api
            .get(format!(
                "{query}/accounts/{account}?min_position={meanwhile}&wait_ms=1000"
            ))
            .await;
        if status == StatusCode::OK {
            assert!(seen >= meanwhile);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted replica never caught up: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The command API refuses the replica as its database, saying why.
    let output = system
        .run_configured(
            Binary::CommandApi,
            &[],
            &[(
                "DATABASE_URL",
                &PgReplicated::url_of(&pair.replica_url, "postgres", &database),
            )],
            Duration::from_secs(30),
        )
        .await
        .expect("command API on the replica");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("read-only standby"), "{stderr}");

    replica.close().await;
    system.shut_down().await.expect("shut down");
}
