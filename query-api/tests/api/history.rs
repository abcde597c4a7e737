//! Time travel: an account folded from its events up to a position or a time.

use domain::AccountId;
use event_store::ExpectedVersion;
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{deposited, erased, opened, spawn_app};

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn history_folds_the_account_up_to_a_position(pool: PgPool) {
    let app = spawn_app(pool).await;
    let a = AccountId::from(Uuid::now_v7());
    let other = AccountId::from(Uuid::now_v7());
    app.append(
        a,
        ExpectedVersion::NoStream,
        vec![opened(a), deposited(a, 100)],
        "t",
        "c",
    )
    .await; // positions 1, 2
    app.append(other, ExpectedVersion::NoStream, vec![opened(other)], "t", "c")
        .await; // 3
    app.append(
        a,
        ExpectedVersion::Exact(2),
        vec![deposited(a, 50), erased(a)],
        "t",
        "c",
    )
    .await; // 4, 5

    let at_three = app
        .get_json(&format!("/accounts/{}/history?at_position=3", a.as_uuid()), 200)
        .await;
    assert_eq!(at_three["account_id"], a.as_uuid().to_string());
    assert_eq!(at_three["balance"], 100);
    assert_eq!(at_three["version"], 2);
    assert_eq!(at_three["status"], "open");
    assert_eq!(at_three["currency"], "EUR");
    assert_eq!(at_three["owner"]["name"], "Ada Lovelace");
    assert_eq!(at_three["at_position"], 3);
    assert_eq!(at_three["last_event_position"], 2);

    let at_four = app
        .get_json(&format!("/accounts/{}/history?at_position=4", a.as_uuid()), 200)
        .await;
    assert_eq!(at_four["balance"], 150);
    assert_eq!(at_four["version"], 3);

    let response = app
        .get(&format!("/accounts/{}/history?at_position=5", a.as_uuid()))
        .await;
    assert_eq!(response.headers()["x-projection-position"], "5");
    let at_five: serde_json::Value = response.json().await.expect("JSON");
    assert!(at_five["owner"].is_null(), "erased by position 5: {at_five}");

    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let at_now = app
        .get_json(
            &format!(
                "/accounts/{}/history?at_time={}",
                a.as_uuid(),
                now.replace('+', "%2B")
            ),
            200,
        )
        .await;
    assert_eq!(at_now["balance"], 150);
    assert_eq!(at_now["version"], 4);
    assert_eq!(at_now["last_event_position"], 5);
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn an_account_before_it_was_opened_is_404(pool: PgPool) {
    let app = spawn_app(pool).await;
    let first = AccountId::from(Uuid::now_v7());
    let later = AccountId::from(Uuid::now_v7());
    app.append(first, ExpectedVersion::NoStream, vec![opened(first)], "t", "c")
        .await;
    app.append(later, ExpectedVersion::NoStream, vec![opened(later)], "t", "c")
        .await;

    app.get_problem(
        &format!("/accounts/{}/history?at_position=1", later.as_uuid()),
        404,
        "account-not-found",
    )
    .await;
    app.get_problem(
        &format!(
            "/accounts/{}/history?at_time=2000-01-01T00:00:00Z",
            first.as_uuid()
        ),
        404,
        "account-not-found",
    )
    .await;
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn history_needs_exactly_one_point_in_time(pool: PgPool) {
    let app = spawn_app(pool).await;
    let a = AccountId::from(Uuid::now_v7());
    app.append(a, ExpectedVersion::NoStream, vec![opened(a)], "t", "c")
        .await;
    let id = a.as_uuid();
    for query in [
        String::new(),
        "?at_position=1&at_time=2026-01-01T00:00:00Z".to_owned(),
        "?at_position=-1".to_owned(),
        "?at_position=99".to_owned(),
        "?at_time=last-tuesday".to_owned(),
    ] {
        app.get_problem(&format!("/accounts/{id}/history{query}"), 400, "validation")
            .await;
    }
    app.get_problem("/accounts/nope/history?at_position=1", 400, "validation")
        .await;
}
