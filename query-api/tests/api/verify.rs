//! `GET /audit/verify` over real HTTP: a fresh log verifies, every envelope carries its
//! hash, and a superuser who gets past the append-only triggers and changes, deletes or
//! reorders events is caught at exactly the position touched.

use domain::AccountId;
use event_store::ExpectedVersion;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{TestApp, deposited, erased, opened, spawn_app};

/// The hash before position 1.
const GENESIS_HEX: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Positions 1-3 on account a (one deposit of the largest amount the ledger allows,
/// beyond 2^53), 4-5 on account b, 6 on a.
async fn seed(app: &TestApp) -> (AccountId, AccountId) {
    let a = AccountId::from(Uuid::now_v7());
    let b = AccountId::from(Uuid::now_v7());
    app.append(
        a,
        ExpectedVersion::NoStream,
        vec![
            opened(a),
            deposited(a, 10),
            deposited(a, domain::Amount::MAX_MINOR_UNITS),
        ],
        "alice",
        "c-1",
    )
    .await;
    app.append(
        b,
        ExpectedVersion::NoStream,
        vec![opened(b), deposited(b, 20)],
        "bob",
        "c-2",
    )
    .await;
    app.append(
        a,
        ExpectedVersion::Exact(3),
        vec![deposited(a, 30)],
        "alice",
        "c-3",
    )
    .await;
    (a, b)
}

/// Runs `statements` as the database owner with the append-only triggers off, as an
/// operator with the owner's rights can.
async fn tamper(pool: &PgPool, statements: &[&str]) {
    let mut transaction = pool.begin().await.expect("begin");
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *transaction)
        .await
        .expect("triggers off");
    for statement in statements {
        sqlx::query(statement)
            .execute(&mut *transaction)
            .await
            .expect(statement);
    }
    transaction.commit().await.expect("commit");
}

async fn verify(app: &TestApp, query: &str) -> Value {
    app.get_json(&format!("/audit/verify{query}"), 200).await
}

fn assert_mismatch_at(verdict: &Value, position: i64) {
    assert_eq!(verdict["ok"], false, "{verdict}");
    assert_eq!(verdict["first_mismatch"], position, "{verdict}");
    assert!(
        verdict["reason"]
            .as_str()
            .is_some_and(|reason| !reason.is_empty()),
        "{verdict}"
    );
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_fresh_log_verifies_and_every_envelope_carries_the_hash_verify_recomputes(pool: PgPool) {
    let app = spawn_app(pool).await;
    assert_eq!(
        verify(&app, "").await,
        serde_json::json!({"ok": true, "from": 1, "to": 0, "verified": 0, "head_hash": GENESIS_HEX})
    );

    seed(&app).await;
    let whole = verify(&app, "").await;
    let page = app.get_json("/audit/events", 200).await;
    let hashes: Vec<&str> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| item["hash"].as_str().expect("every envelope has a hash"))
        .collect();
    assert_eq!(hashes.len(), 6);
    assert!(hashes.iter().all(|hash| {
        hash.len() == 64
            && hash
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    }));
    assert_eq!(
        whole,
        serde_json::json!({"ok": true, "from": 1, "to": 6, "verified": 6, "head_hash": hashes[5]})
    );

    // A range starts from the stored hash before it and ends in the hash at `to`.
    let middle = verify(&app, "?from=2&to=4").await;
    assert_eq!(
        middle,
        serde_json::json!({"ok": true, "from": 2, "to": 4, "verified": 3, "head_hash": hashes[3]})
    );
    // The stream view carries the same hashes.
    let stream_id = page["items"][0]["stream_id"]
        .as_str()
        .expect("stream id")
        .to_owned();
    let stream = app.get_json(&format!("/audit/streams/{stream_id}"), 200).await;
    assert_eq!(stream["items"][0]["hash"], hashes[0]);
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn changing_one_events_data_is_caught_at_exactly_that_position(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    seed(&app).await;
    tamper(
        &pool,
        &["UPDATE events SET data = jsonb_set(data, '{amount}', '999999999999999999') WHERE position = 3"],
    )
    .await;
    assert_mismatch_at(&verify(&app, "").await, 3);
    // The range before the change still verifies; a range from it on does not.
    assert_eq!(verify(&app, "?to=2").await["ok"], true);
    assert_mismatch_at(&verify(&app, "?from=3").await, 3);
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn changing_one_events_metadata_is_caught_at_exactly_that_position(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    seed(&app).await;
    tamper(
        &pool,
        &["UPDATE events SET metadata = jsonb_set(metadata, '{actor}', '\"mallory\"') WHERE position = 5"],
    )
    .await;
    assert_mismatch_at(&verify(&app, "").await, 5);
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn deleting_one_event_is_caught_at_exactly_that_position(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    seed(&app).await;
    tamper(&pool, &["DELETE FROM events WHERE position = 4"]).await;
    assert_mismatch_at(&verify(&app, "").await, 4);

    // Deleting its hash as well changes nothing: the position is still missing.
    tamper(&pool, &["DELETE FROM event_hashes WHERE position = 4"]).await;
    assert_mismatch_at(&verify(&app, "").await, 4);
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn reordering_two_events_is_caught_at_the_first_of_them(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    seed(&app).await;
    // Swap positions 2 and 5 (three steps: the primary key is checked row by row).
    tamper(
        &pool,
        &[
            "UPDATE events SET position = 1000 WHERE position = 2",
            "UPDATE events SET position = 2 WHERE position = 5",
            "UPDATE events SET position = 5 WHERE position = 1000",
        ],
    )
    .await;
    assert_mismatch_at(&verify(&app, "").await, 2);
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_missing_hash_is_a_mismatch_at_its_position(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    seed(&app).await;
    tamper(&pool, &["DELETE FROM event_hashes WHERE position = 3"]).await;
    assert_mismatch_at(&verify(&app, "").await, 3);
    // A range that starts after it has no hash to start from.
    assert_mismatch_at(&verify(&app, "?from=4").await, 3);
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn erasure_keeps_the_chain_valid(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let (a, _) = seed(&app).await;
    app.append(a, ExpectedVersion::Exact(4), vec![erased(a)], "admin", "c-4")
        .await;
    // Erasure destroys the key; the sealed owner stays in the log as it was hashed.
    sqlx::query("DELETE FROM pii_keys WHERE subject_id = $1")
        .bind(a.as_uuid())
        .execute(&pool)
        .await
        .expect("key destroyed");
    let verdict = verify(&app, "").await;
    assert_eq!(verdict["ok"], true, "{verdict}");
    assert_eq!(verdict["verified"], 7);
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_range_outside_the_log_is_a_400_naming_the_parameter(pool: PgPool) {
    let app = spawn_app(pool).await;
    seed(&app).await;
    for (query, parameter) in [
        ("?from=0", "from"),
        ("?from=-1", "from"),
        ("?from=x", "from"),
        ("?to=7", "to"),
        ("?from=4&to=3", "to"),
        ("?from=8", "from"),
        ("?to=1.5", "to"),
    ] {
        let problem = app
            .get_problem(&format!("/audit/verify{query}"), 400, "validation")
            .await;
        assert_eq!(problem["parameter"], parameter, "{query}: {problem}");
    }
}
