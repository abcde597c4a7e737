//! The hash chain against a real PostgreSQL: appends (single and group commit) chain
//! in position order, events written around the append (before the chain, or COPYed by
//! a tool) are chained by the next append or by `backfill`, hashes are append-only, and
//! the `verify-log` command checks a database by URL, catching a rewrite of the whole
//! chain only against a `head_hash` kept from before.

use std::process::Command;

use event_store::chain::{self, Verdict};
use event_store::{AppendRequest, EventStore, ExpectedVersion, Metadata, NewEvent};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

fn metadata() -> Metadata {
    Metadata {
        actor: "test".into(),
        correlation_id: "correlation-1".into(),
        causation_id: None,
        command: "Test".into(),
        idempotency_key: Some("key-1".into()),
        trace: None,
    }
}

fn event(amount: i64) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "FundsDeposited".into(),
        schema_version: 1,
        data: json!({ "amount": amount, "reference": "naïve – ∑ \"quoted\" \\ 😀", "nested": [1.5, -0.0, null, true] }),
        metadata: metadata(),
    }
}

fn request(count: i64) -> AppendRequest {
    AppendRequest::single(
        format!("account-{}", Uuid::now_v7()),
        ExpectedVersion::NoStream,
        (1..=count)
            .map(|n| event(n * 1_000_000_000_000_000 / 7))
            .collect(),
    )
}

async fn verified(pool: &PgPool) -> Verdict {
    chain::verify(pool, 1, None).await.expect("verify")
}

/// Inserts `count` events straight into `events` after the head, as tools and
/// benchmarks do, and moves the head: no hash is written.
async fn insert_raw(pool: &PgPool, count: i64) {
    let mut transaction = pool.begin().await.expect("begin");
    let head: i64 = sqlx::query_scalar("SELECT position FROM event_store_head FOR UPDATE")
        .fetch_one(&mut *transaction)
        .await
        .expect("head");
    for position in head + 1..=head + count {
        sqlx::query(
            "INSERT INTO events (position, event_id, stream_id, stream_version, event_type, schema_version, \
             data, metadata, recorded_at) VALUES ($1, $2, $3, 1, 'FundsDeposited', 1, $4, $5, now())",
        )
        .bind(position)
        .bind(Uuid::now_v7())
        .bind(format!("account-{}", Uuid::now_v7()))
        .bind(json!({ "amount": position }))
        .bind(json!({ "actor": "copy", "correlation_id": "c", "command": "Copy" }))
        .execute(&mut *transaction)
        .await
        .expect("raw insert");
    }
    sqlx::query("UPDATE event_store_head SET position = $1")
        .bind(head + count)
        .execute(&mut *transaction)
        .await
        .expect("head moved");
    transaction.commit().await.expect("commit");
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn appends_and_group_commits_chain_in_position_order_and_verify(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    store.append(request(3)).await.expect("append");
    let outcomes = store
        .append_batch(&[request(2), request(1), request(4)])
        .await
        .expect("group commit");
    assert!(outcomes.iter().all(Result::is_ok));

    let Verdict::Verified {
        verified, head_hash, ..
    } = verified(&pool).await
    else {
        panic!("a log written by appends verifies");
    };
    assert_eq!(verified, 10);
    let events = store.read_all(0, 100).await.expect("read");
    assert!(
        events
            .iter()
            .all(|event| event.hash.as_ref().is_some_and(|hash| hash.len() == 64))
    );
    assert_eq!(events[9].hash.as_deref(), Some(head_hash.as_str()));
    let (hashed_position, head_row_hash): (i64, Vec<u8>) =
        sqlx::query_as("SELECT hashed_position, hash FROM event_store_head")
            .fetch_one(&pool)
            .await
            .expect("head row");
    assert_eq!(hashed_position, 10);
    assert_eq!(
        chain::to_hex(&head_row_hash.try_into().expect("32 bytes")),
        head_hash
    );
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn events_written_around_the_append_are_chained_by_the_next_append_and_by_backfill(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    store.append(request(2)).await.expect("append");
    insert_raw(&pool, 3).await;
    // Positions 3 to 5 have no hash yet: verification says so at the first of them.
    assert!(matches!(
        verified(&pool).await,
        Verdict::Mismatch {
            first_mismatch: 3,
            ..
        }
    ));

    // The next append chains them first, then itself.
    store.append(request(1)).await.expect("append");
    assert!(matches!(
        verified(&pool).await,
        Verdict::Verified { verified: 6, .. }
    ));

    insert_raw(&pool, 2).await;
    assert_eq!(chain::backfill(&pool).await.expect("backfill"), 2);
    assert_eq!(chain::backfill(&pool).await.expect("backfill again"), 0);
    assert!(matches!(
        verified(&pool).await,
        Verdict::Verified { verified: 8, .. }
    ));
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn the_hash_table_refuses_updates_deletes_and_truncation(pool: PgPool) {
    EventStore::new(pool.clone())
        .append(request(2))
        .await
        .expect("append");
    for statement in [
        "UPDATE event_hashes SET hash = sha256('x')",
        "DELETE FROM event_hashes",
        "TRUNCATE event_hashes",
    ] {
        let error = sqlx::query(statement).execute(&pool).await.expect_err(statement);
        assert!(error.to_string().contains("append-only"), "{statement}: {error}");
    }
}

/// `postgres://user@host:port/database` of the test's own database.
fn database_url(pool: &PgPool) -> String {
    let options = pool.connect_options();
    format!(
        "postgres://{}@{}:{}/{}",
        options.get_username(),
        options.get_host(),
        options.get_port(),
        options.get_database().expect("a database name")
    )
}

fn verify_log(pool: &PgPool, arguments: &[&str]) -> (i32, Value) {
    let output = Command::new(env!("CARGO_BIN_EXE_verify-log"))
        .arg("--database-url")
        .arg(database_url(pool))
        .args(arguments)
        .env_remove("DATABASE_URL")
        .output()
        .expect("verify-log runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let verdict = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
    (output.status.code().unwrap_or(-1), verdict)
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn verify_log_checks_a_database_by_url_and_a_kept_head_hash_catches_a_rewritten_chain(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    store.append(request(3)).await.expect("append");
    store.append(request(3)).await.expect("append");

    let (code, verdict) = verify_log(&pool, &[]);
    assert_eq!(code, 0, "{verdict}");
    assert_eq!(verdict["ok"], true);
    assert_eq!(verdict["verified"], 6);
    // An auditor keeps the head hash of what they verified.
    let kept = verdict["head_hash"].as_str().expect("head hash").to_owned();
    let (code, _) = verify_log(&pool, &["--to", "6", "--expect-head-hash", &kept]);
    assert_eq!(code, 0);
    let (code, _) = verify_log(&pool, &["--to", "6", "--expect-head-hash", &kept.to_uppercase()]);
    assert_eq!(code, 0, "either case");
    // A mistyped hash is a usage error, not a rewritten chain.
    for typo in ["xyz", &kept[1..], &format!("{kept}0")] {
        let (code, verdict) = verify_log(&pool, &["--to", "6", "--expect-head-hash", typo]);
        assert_eq!((code, verdict), (2, Value::Null), "{typo}");
    }

    // Someone with the owner's rights changes event 4 and rewrites every hash from it
    // on, consistently: the chain alone verifies again ...
    let mut transaction = pool.begin().await.expect("begin");
    for statement in [
        "SET LOCAL session_replication_role = replica",
        "UPDATE events SET data = jsonb_set(data, '{amount}', '1') WHERE position = 4",
        "DELETE FROM event_hashes WHERE position >= 4",
        "UPDATE event_store_head SET hashed_position = 3, hash = (SELECT hash FROM event_hashes WHERE position = 3)",
    ] {
        sqlx::query(statement)
            .execute(&mut *transaction)
            .await
            .expect(statement);
    }
    transaction.commit().await.expect("commit");
    let (code, verdict) = verify_log(&pool, &[]);
    assert_eq!(code, 1, "the unchained events are reported: {verdict}");
    assert_eq!(verdict["first_mismatch"], 4);
    chain::backfill(&pool).await.expect("rewrite the chain");
    let (code, verdict) = verify_log(&pool, &[]);
    assert_eq!(code, 0, "{verdict}");

    // ... but not against the head hash kept from before.
    let (code, verdict) = verify_log(&pool, &["--to", "6", "--expect-head-hash", &kept]);
    assert_eq!(code, 1, "{verdict}");
    assert_eq!(verdict["ok"], false);
    assert_ne!(verdict["head_hash"], kept.as_str());

    // A range outside the log cannot be checked: exit 2, nothing on stdout.
    let (code, verdict) = verify_log(&pool, &["--to", "7"]);
    assert_eq!((code, verdict), (2, Value::Null));
}
