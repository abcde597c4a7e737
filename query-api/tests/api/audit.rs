//! The audit log: every filter, position paging, one stream, and their errors.

use domain::AccountId;
use event_store::ExpectedVersion;
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{TestApp, deposited, opened, spawn_app};

fn positions(page: &serde_json::Value) -> Vec<i64> {
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| item["position"].as_i64().expect("position"))
        .collect()
}

/// Positions 1-2 by alice (c-1) on account a, 3-4 by bob (c-2) on account b, 5 by alice
/// (c-3) on a.
async fn seed(app: &TestApp) -> (AccountId, AccountId) {
    let a = AccountId::from(Uuid::now_v7());
    let b = AccountId::from(Uuid::now_v7());
    app.append(
        a,
        ExpectedVersion::NoStream,
        vec![opened(a), deposited(a, 10)],
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
        ExpectedVersion::Exact(2),
        vec![deposited(a, 30)],
        "alice",
        "c-3",
    )
    .await;
    (a, b)
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn audit_events_are_filtered_by_each_filter_in_position_order(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (a, b) = seed(&app).await;

    let all = app.get("/audit/events").await;
    assert_eq!(all.headers()["x-projection-position"], "5");
    let all: serde_json::Value = all.json().await.expect("JSON");
    assert_eq!(positions(&all), vec![1, 2, 3, 4, 5]);
    assert!(all["next_after"].is_null());
    let first = &all["items"][0];
    assert_eq!(first["stream_id"], a.stream_id());
    assert_eq!(first["stream_version"], 1);
    assert_eq!(first["event_type"], "AccountOpened");
    assert!(
        first["schema_version"]
            .as_i64()
            .is_some_and(|version| version >= 1)
    );
    assert_eq!(first["metadata"]["actor"], "alice");
    assert_eq!(first["metadata"]["correlation_id"], "c-1");
    assert!(first["event_id"].is_string() && first["recorded_at"].is_string() && first["data"].is_object());

    let by = |query: String| {
        let app = &app;
        async move { positions(&app.get_json(&format!("/audit/events?{query}"), 200).await) }
    };
    assert_eq!(by(format!("stream_id={}", b.stream_id())).await, vec![3, 4]);
    assert_eq!(by("event_type=FundsDeposited".into()).await, vec![2, 4, 5]);
    assert_eq!(by("actor=alice".into()).await, vec![1, 2, 5]);
    assert_eq!(by("correlation_id=c-2".into()).await, vec![3, 4]);
    assert_eq!(by("actor=alice&event_type=AccountOpened".into()).await, vec![1]);
    assert_eq!(by("actor=nobody".into()).await, Vec::<i64>::new());
    assert_eq!(
        by("since=2000-01-01T00:00:00Z&until=2999-01-01T00:00:00Z".into())
            .await
            .len(),
        5
    );
    assert_eq!(by("until=2000-01-01T00:00:00Z".into()).await, Vec::<i64>::new());
    assert_eq!(
        by("since=2999-01-01T00:00:00%2B02:00".into()).await,
        Vec::<i64>::new()
    );
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn audit_pages_follow_next_after_to_the_end(pool: PgPool) {
    let app = spawn_app(pool).await;
    seed(&app).await;

    let first = app.get_json("/audit/events?limit=2", 200).await;
    assert_eq!(positions(&first), vec![1, 2]);
    assert_eq!(first["next_after"], 2);
    let second = app.get_json("/audit/events?limit=2&after=2", 200).await;
    assert_eq!(positions(&second), vec![3, 4]);
    let last = app.get_json("/audit/events?limit=2&after=4", 200).await;
    assert_eq!(positions(&last), vec![5]);
    assert!(last["next_after"].is_null());
    let by_actor = app.get_json("/audit/events?actor=alice&limit=2", 200).await;
    assert_eq!(positions(&by_actor), vec![1, 2]);
    let rest = app
        .get_json(
            &format!(
                "/audit/events?actor=alice&limit=2&after={}",
                by_actor["next_after"]
            ),
            200,
        )
        .await;
    assert_eq!(positions(&rest), vec![5]);
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn bad_audit_parameters_are_400_problems(pool: PgPool) {
    let app = spawn_app(pool).await;
    for path in [
        "/audit/events?after=-3",
        "/audit/events?after=x",
        "/audit/events?limit=5000",
        "/audit/events?since=yesterday",
        "/audit/events?since=2026-02-01T00:00:00Z&until=2026-01-01T00:00:00Z",
        "/audit/events?actor=",
        "/audit/streams/not-a-stream",
        "/audit/streams/account-42",
        "/audit/events/live?after=soon",
    ] {
        app.get_problem(path, 400, "validation").await;
    }
    let long_actor = "a".repeat(300);
    app.get_problem(&format!("/audit/events?actor={long_actor}"), 400, "validation")
        .await;
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_stream_lists_its_envelopes_in_version_order_and_an_unknown_one_is_404(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (a, _) = seed(&app).await;

    let response = app.get(&format!("/audit/streams/{}", a.stream_id())).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-projection-position"], "5");
    let body: serde_json::Value = response.json().await.expect("JSON");
    let versions: Vec<i64> = body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| item["stream_version"].as_i64().expect("version"))
        .collect();
    assert_eq!(versions, vec![1, 2, 3]);
    assert_eq!(positions(&body), vec![1, 2, 5]);

    app.get_problem(
        &format!("/audit/streams/account-{}", Uuid::now_v7()),
        404,
        "stream-not-found",
    )
    .await;
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn an_audit_read_waits_for_a_position_appended_later(pool: PgPool) {
    let app = spawn_app(pool).await;
    let a = AccountId::from(Uuid::now_v7());
    let waiting = app.get("/audit/events?min_position=1&wait_ms=10000");
    let appending = async {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        app.append(a, ExpectedVersion::NoStream, vec![opened(a)], "alice", "c-1")
            .await;
    };
    let (response, ()) = tokio::join!(waiting, appending);

    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.expect("JSON");
    assert_eq!(positions(&body), vec![1]);
}
