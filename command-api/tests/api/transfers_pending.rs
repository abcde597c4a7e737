//! Two-phase transfers over HTTP (API.md, "Pending (two-phase) transfers"): reserve,
//! post in part, void, expiry by the worker, the rules around frozen and closing
//! accounts, preconditions and idempotency, and post/void races across two instances.

use std::time::{Duration, Instant};

use domain::TransferStatus;
use futures::future::join_all;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{Answer, TestApp, spawn_app, spawn_app_with_expiry};

/// Reserves `amount` from `from` to `to`, asserting the 201; returns the answer.
async fn reserve(app: &TestApp, from: Uuid, to: Uuid, amount: i64, timeout_seconds: Option<i64>) -> Answer {
    let mut body = json!({"from_account_id": from, "to_account_id": to, "amount": amount, "pending": true});
    if let Some(seconds) = timeout_seconds {
        body["timeout_seconds"] = json!(seconds);
    }
    let answer = app.post("/transfers", body).await;
    assert_eq!(answer.status, 201, "{}", answer.body);
    answer
}

fn transfer_id(answer: &Answer) -> Uuid {
    answer.body["transfer_id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .expect("transfer_id in answer")
}

/// Two EUR accounts, the first holding `balance`.
async fn two_accounts(app: &TestApp, balance: i64) -> (Uuid, Uuid) {
    let from = app.open_account(0).await;
    let to = app.open_account(0).await;
    if balance > 0 {
        app.deposit(from, balance).await;
    }
    (from, to)
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_pending_transfer_reserves_and_a_partial_post_moves_part_and_releases_the_rest(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (from, to) = two_accounts(&app, 100).await;

    let reserved = reserve(&app, from, to, 60, Some(3_600)).await;
    assert_eq!(reserved.body["status"], "pending");
    assert_eq!(reserved.header("etag"), Some("\"1\""));
    let expires_at = reserved.body["expires_at"].as_str().expect("expires_at");
    assert!(
        chrono::DateTime::parse_from_rfc3339(expires_at).is_ok(),
        "{expires_at}"
    );
    assert!(reserved.body.get("posted_amount").is_none(), "{}", reserved.body);
    let id = transfer_id(&reserved);

    let (state, _) = app.stored_state(from).await;
    assert_eq!(
        (
            state.balance.get(),
            state.pending_debits.get(),
            state.available_balance()
        ),
        (100, 60, 40)
    );
    let (state, _) = app.stored_state(to).await;
    assert_eq!((state.balance.get(), state.pending_credits.get()), (0, 60));

    // The overdraft rule holds for the available balance: 41 is too much now, 40 is not.
    let refused = app
        .post(&format!("/accounts/{from}/withdrawals"), json!({"amount": 41}))
        .await;
    assert_eq!((refused.status, refused.problem()), (422, "insufficient-funds"));
    // The refusal says what the rule was checked against.
    assert_eq!(
        (
            refused.body["balance"].as_i64(),
            refused.body["pending_debits"].as_i64(),
            refused.body["available_balance"].as_i64(),
            refused.body["requested"].as_i64(),
        ),
        (Some(100), Some(60), Some(40), Some(41)),
        "{}",
        refused.body
    );
    let refused = app
        .post(
            "/transfers",
            json!({"from_account_id": from, "to_account_id": to, "amount": 41}),
        )
        .await;
    assert_eq!((refused.status, refused.problem()), (422, "insufficient-funds"));

    let too_much = app
        .post(&format!("/transfers/{id}/post"), json!({"amount": 61}))
        .await;
    assert_eq!(
        (too_much.status, too_much.problem()),
        (422, "amount-exceeds-pending")
    );
    assert_eq!(too_much.body["pending"], 60);

    let posted = app
        .post(&format!("/transfers/{id}/post"), json!({"amount": 25}))
        .await;
    assert_eq!(posted.status, 200, "{}", posted.body);
    assert_eq!(posted.body["status"], "posted");
    assert_eq!(posted.body["posted_amount"], 25);
    assert_eq!(posted.header("etag"), Some("\"2\""));
    let (state, _) = app.stored_state(from).await;
    assert_eq!(
        (
            state.balance.get(),
            state.pending_debits.get(),
            state.available_balance()
        ),
        (75, 0, 75)
    );
    let (state, _) = app.stored_state(to).await;
    assert_eq!((state.balance.get(), state.pending_credits.get()), (25, 0));

    for action in ["post", "void"] {
        let again = app.post(&format!("/transfers/{id}/{action}"), json!({})).await;
        assert_eq!(
            (again.status, again.problem()),
            (422, "transfer-not-pending"),
            "{action}"
        );
    }
    let types: Vec<String> =
        sqlx::query_scalar("SELECT event_type FROM events WHERE stream_id = $1 ORDER BY stream_version")
            .bind(format!("transfer-{id}"))
            .fetch_all(&app.pool)
            .await
            .expect("transfer events");
    assert_eq!(types, ["TransferPending", "TransferPosted"]);
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_plain_transfer_answers_posted_and_cannot_be_posted_or_voided(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (from, to) = two_accounts(&app, 100).await;
    let answer = app
        .post(
            "/transfers",
            json!({"from_account_id": from, "to_account_id": to, "amount": 10}),
        )
        .await;
    assert_eq!(answer.status, 201, "{}", answer.body);
    assert_eq!(
        (
            answer.body["status"].clone(),
            answer.body["posted_amount"].clone()
        ),
        (json!("posted"), json!(10))
    );
    let void = app
        .post(&format!("/transfers/{}/void", transfer_id(&answer)), json!({}))
        .await;
    assert_eq!((void.status, void.problem()), (422, "transfer-not-pending"));
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn bad_timeouts_and_unknown_transfers_are_refused(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (from, to) = two_accounts(&app, 100).await;
    for body in [
        json!({"from_account_id": from, "to_account_id": to, "amount": 1, "timeout_seconds": 10}),
        json!({"from_account_id": from, "to_account_id": to, "amount": 1, "pending": false, "timeout_seconds": 10}),
        json!({"from_account_id": from, "to_account_id": to, "amount": 1, "pending": true, "timeout_seconds": 0}),
        json!({"from_account_id": from, "to_account_id": to, "amount": 1, "pending": true, "timeout_seconds": 2_592_001}),
    ] {
        let answer = app.post("/transfers", body.clone()).await;
        assert_eq!((answer.status, answer.problem()), (422, "validation"), "{body}");
        assert_eq!(answer.body["field"], "timeout_seconds");
    }
    let longest = reserve(&app, from, to, 1, Some(2_592_000)).await;
    assert!(longest.body["expires_at"].is_string());

    let unknown = app
        .post(&format!("/transfers/{}/post", Uuid::now_v7()), json!({}))
        .await;
    assert_eq!((unknown.status, unknown.problem()), (404, "transfer-not-found"));
    let not_a_uuid = app.post("/transfers/not-a-uuid/void", json!({})).await;
    assert_eq!(
        (not_a_uuid.status, not_a_uuid.problem()),
        (404, "transfer-not-found")
    );
    let zero = app
        .post(
            &format!("/transfers/{}/post", transfer_id(&longest)),
            json!({"amount": 0}),
        )
        .await;
    assert_eq!((zero.status, zero.problem()), (422, "validation"));
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn frozen_accounts_refuse_a_post_but_not_a_void_and_pending_transfers_block_closing(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (from, to) = two_accounts(&app, 100).await;
    let first = transfer_id(&reserve(&app, from, to, 30, None).await);
    let second = transfer_id(&reserve(&app, from, to, 30, None).await);

    let close = app.post(&format!("/accounts/{to}/close"), json!({})).await;
    assert_eq!((close.status, close.problem()), (422, "pending-transfers"));

    let freeze = app.post(&format!("/accounts/{from}/freeze"), json!({})).await;
    assert_eq!(freeze.status, 200, "{}", freeze.body);
    let post = app.post(&format!("/transfers/{first}/post"), json!({})).await;
    assert_eq!((post.status, post.problem()), (422, "account-frozen"));
    let void = app
        .post(
            &format!("/transfers/{first}/void"),
            json!({"reason": "customer cancelled"}),
        )
        .await;
    assert_eq!(void.status, 200, "{}", void.body);
    assert_eq!(void.body["status"], "voided");
    let void = app.post(&format!("/transfers/{second}/void"), json!({})).await;
    assert_eq!(void.status, 200, "{}", void.body);

    let (state, _) = app.stored_state(from).await;
    assert_eq!((state.balance.get(), state.pending_debits.get()), (100, 0));
    let close = app.post(&format!("/accounts/{to}/close"), json!({})).await;
    assert_eq!(close.status, 200, "{}", close.body);
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn if_match_names_the_transfer_version_and_keys_replay_answers_and_refusals(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (from, to) = two_accounts(&app, 100).await;
    let id = transfer_id(&reserve(&app, from, to, 50, None).await);

    let stale = app
        .post_with(
            &format!("/transfers/{id}/post"),
            json!({}),
            &[("if-match", "\"2\"")],
        )
        .await;
    assert_eq!((stale.status, stale.problem()), (412, "version-conflict"));
    assert_eq!(stale.body["current_version"], 1);

    let headers = [
        ("if-match", "\"1\""),
        ("idempotency-key", "post-1"),
        ("x-correlation-id", "corr-post-1"),
    ];
    let posted = app
        .post_with(&format!("/transfers/{id}/post"), json!({}), &headers)
        .await;
    assert_eq!(posted.status, 200, "{}", posted.body);
    let replayed = app
        .post_with(&format!("/transfers/{id}/post"), json!({}), &headers)
        .await;
    assert_eq!(replayed.status, 200);
    assert_eq!(replayed.body, posted.body);
    assert_eq!(replayed.header("idempotent-replayed"), Some("true"));

    // A refusal is stored under its key and replayed, even once the state moved on.
    let key = [("idempotency-key", "void-1")];
    let refused = app
        .post_with(&format!("/transfers/{id}/void"), json!({}), &key)
        .await;
    assert_eq!((refused.status, refused.problem()), (422, "transfer-not-pending"));
    let again = app
        .post_with(&format!("/transfers/{id}/void"), json!({}), &key)
        .await;
    assert_eq!((again.status, again.problem()), (422, "transfer-not-pending"));
    assert_eq!(again.header("idempotent-replayed"), Some("true"));

    let metadata: Vec<Value> = sqlx::query_scalar(
        "SELECT metadata FROM events WHERE metadata ->> 'correlation_id' = 'corr-post-1' ORDER BY position",
    )
    .fetch_all(&app.pool)
    .await
    .expect("metadata");
    assert_eq!(metadata.len(), 3, "one event per stream");
    for event in &metadata {
        assert_eq!(event["command"], "post_transfer");
        assert_eq!(event["actor"], crate::helpers::TEST_SUBJECT);
        assert_eq!(event["idempotency_key"], "post-1");
    }
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn concurrent_posts_and_voids_over_two_instances_settle_each_transfer_exactly_once(pool: PgPool) {
    const TRANSFERS: usize = 40;
    let first = spawn_app(pool.clone()).await;
    let second = spawn_app(pool).await;
    let accounts = [
        first.open_account(0).await,
        first.open_account(0).await,
        first.open_account(0).await,
    ];
    for account in accounts {
        first.deposit(account, 10_000).await;
    }
    let mut transfers = Vec::new();
    for index in 0..TRANSFERS {
        let from = accounts[index % 3];
        let to = accounts[(index + 1) % 3];
        let amount = 10 + index as i64;
        let id = transfer_id(&reserve(&first, from, to, amount, None).await);
        transfers.push((id, from, to, amount));
    }
    // Each transfer gets a post on one instance and a void on the other, all at once.
    let races = transfers.iter().enumerate().map(|(index, (id, ..))| {
        let (poster, voider) = if index % 2 == 0 {
            (&first, &second)
        } else {
            (&second, &first)
        };
        async move {
            let (post_path, void_path) = (format!("/transfers/{id}/post"), format!("/transfers/{id}/void"));
            let post = poster.post(&post_path, json!({}));
            let void = voider.post(&void_path, json!({}));
            let (post, void) = futures::join!(post, void);
            (post, void)
        }
    });
    let outcomes = join_all(races).await;

    let mut expected = [10_000_i64; 3];
    let mut posted_count = 0;
    for ((id, from, to, amount), (post, void)) in transfers.iter().zip(&outcomes) {
        let wins = [post.status, void.status]
            .iter()
            .filter(|status| **status == 200)
            .count();
        assert_eq!(
            wins, 1,
            "{id}: post {} {} / void {} {}",
            post.status, post.body, void.status, void.body
        );
        let loser = if post.status == 200 { void } else { post };
        assert_eq!(
            (loser.status, loser.problem()),
            (422, "transfer-not-pending"),
            "{}",
            loser.body
        );
        let (state, version) = first.stored_transfer(*id).await.expect("transfer exists");
        assert_eq!(version, 2);
        if post.status == 200 {
            posted_count += 1;
            assert_eq!(state.status, TransferStatus::Posted);
            let slot = |account: &Uuid| accounts.iter().position(|a| a == account).expect("known account");
            expected[slot(from)] -= amount;
            expected[slot(to)] += amount;
        } else {
            assert_eq!(state.status, TransferStatus::Voided);
        }
    }
    eprintln!("post against void: {posted_count} of {TRANSFERS} transfers posted, the rest voided");
    assert!(
        posted_count > 0 && posted_count < TRANSFERS,
        "both sides won some races: {posted_count}"
    );
    for (account, balance) in accounts.iter().zip(expected) {
        let (state, _) = first.stored_state(*account).await;
        assert_eq!(state.balance.get(), balance);
        assert_eq!((state.pending_debits.get(), state.pending_credits.get()), (0, 0));
        assert_eq!(state.available_balance(), balance);
    }
    let settled: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE event_type IN ('TransferPosted', 'TransferVoided')",
    )
    .fetch_one(&first.pool)
    .await
    .expect("count");
    assert_eq!(settled as usize, TRANSFERS);
}

/// Polls the store until the transfer has `status`, for at most `within`.
async fn wait_for_status(app: &TestApp, id: Uuid, status: TransferStatus, within: Duration) {
    let started = Instant::now();
    loop {
        let (state, _) = app.stored_transfer(id).await.expect("transfer exists");
        if state.status == status {
            return;
        }
        assert!(
            started.elapsed() < within,
            "{id} still {:?} after {within:?}",
            state.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn the_system_expires_a_pending_transfer_after_its_timeout(pool: PgPool) {
    // The sweeper's longest sleep is far past the wait below: it must wake by itself at
    // the deadline, which it learns of from the append's notification (it started with
    // no deadline at all).
    let app = spawn_app_with_expiry(pool, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (from, to) = two_accounts(&app, 100).await;
    let expiring = transfer_id(&reserve(&app, from, to, 40, Some(1)).await);
    let lasting = transfer_id(&reserve(&app, from, to, 10, Some(3_600)).await);
    let deadlines: i64 = sqlx::query_scalar("SELECT count(*) FROM pending_transfer_deadlines")
        .fetch_one(&app.pool)
        .await
        .expect("deadlines");
    assert_eq!(deadlines, 2);

    wait_for_status(&app, expiring, TransferStatus::Expired, Duration::from_secs(10)).await;
    let post = app.post(&format!("/transfers/{expiring}/post"), json!({})).await;
    assert_eq!((post.status, post.problem()), (422, "transfer-expired"));
    let void = app.post(&format!("/transfers/{expiring}/void"), json!({})).await;
    assert_eq!((void.status, void.problem()), (422, "transfer-expired"));

    let actors: Vec<(String, String)> = sqlx::query_as(
        "SELECT metadata ->> 'actor', metadata ->> 'command' FROM events \
         WHERE event_type IN ('TransferVoided', 'PendingDebitReleased', 'PendingCreditReleased')",
    )
    .fetch_all(&app.pool)
    .await
    .expect("expiry events");
    assert_eq!(actors.len(), 3);
    assert!(
        actors
            .iter()
            .all(|(actor, command)| actor == "system" && command == "expire_transfer")
    );
    let (state, _) = app.stored_state(from).await;
    assert_eq!((state.balance.get(), state.pending_debits.get()), (100, 10));
    // Only the lasting one's deadline is left; it is still pending.
    let left: Vec<Uuid> = sqlx::query_scalar("SELECT transfer_id FROM pending_transfer_deadlines")
        .fetch_all(&app.pool)
        .await
        .expect("deadlines");
    assert_eq!(left, [lasting]);
    let posted = app.post(&format!("/transfers/{lasting}/post"), json!({})).await;
    assert_eq!(posted.status, 200, "{}", posted.body);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pending_transfer_deadlines")
        .fetch_one(&app.pool)
        .await
        .expect("deadlines");
    assert_eq!(left, 0);
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_post_after_expires_at_is_refused_before_the_sweep_and_the_deadline_survives_a_restart(
    pool: PgPool,
) {
    // No expiry worker: the deadline passes with nobody sweeping.
    let app = spawn_app(pool.clone()).await;
    let (from, to) = two_accounts(&app, 100).await;
    let id = transfer_id(&reserve(&app, from, to, 40, Some(1)).await);
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let post = app.post(&format!("/transfers/{id}/post"), json!({})).await;
    assert_eq!((post.status, post.problem()), (422, "transfer-expired"));
    let (state, _) = app.stored_transfer(id).await.expect("transfer exists");
    assert_eq!(state.status, TransferStatus::Pending);
    drop(app);

    // A new process (two, in fact: one sweeps, the other waits for the lock) finds the
    // deadline in PostgreSQL and expires the transfer once.
    let restarted = spawn_app_with_expiry(pool.clone(), Duration::from_millis(100)).await;
    let other = spawn_app_with_expiry(pool, Duration::from_millis(100)).await;
    wait_for_status(&restarted, id, TransferStatus::Expired, Duration::from_secs(10)).await;
    // One sweeper holds the lock; the other waits (nothing else here takes an advisory
    // lock in this database).
    let sweepers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(&other.pool)
    .await
    .expect("locks");
    assert_eq!(sweepers, 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let voided: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'TransferVoided'")
        .fetch_one(&other.pool)
        .await
        .expect("count");
    assert_eq!(voided, 1);
    let (state, _) = restarted.stored_state(from).await;
    assert_eq!((state.balance.get(), state.pending_debits.get()), (100, 0));
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn posts_racing_the_expiry_settle_each_transfer_once(pool: PgPool) {
    const TRANSFERS: usize = 20;
    let app = spawn_app_with_expiry(pool, Duration::from_millis(20)).await;
    let (from, to) = two_accounts(&app, 10_000).await;
    let mut ids = Vec::new();
    for _ in 0..TRANSFERS {
        ids.push(transfer_id(&reserve(&app, from, to, 100, Some(1)).await));
    }
    // Post each right around its deadline, while the worker expires them.
    tokio::time::sleep(Duration::from_millis(950)).await;
    let posts = ids.iter().map(|id| {
        let app = &app;
        async move { app.post(&format!("/transfers/{id}/post"), json!({})).await }
    });
    let answers = join_all(posts).await;
    let mut posted = 0_i64;
    for (id, answer) in ids.iter().zip(&answers) {
        let settled = if answer.status == 200 {
            posted += 1;
            TransferStatus::Posted
        } else {
            assert_eq!(answer.status, 422, "{}", answer.body);
            assert!(
                ["transfer-expired", "transfer-not-pending"].contains(&answer.problem()),
                "{}",
                answer.body
            );
            TransferStatus::Expired
        };
        wait_for_status(&app, *id, settled, Duration::from_secs(10)).await;
        let (_, version) = app.stored_transfer(*id).await.expect("transfer exists");
        assert_eq!(version, 2, "settled exactly once");
    }
    eprintln!("post against expiry: {posted} of {TRANSFERS} transfers posted, the rest expired");
    let (state, _) = app.stored_state(from).await;
    assert_eq!(
        (state.balance.get(), state.pending_debits.get()),
        (10_000 - 100 * posted, 0)
    );
    let (state, _) = app.stored_state(to).await;
    assert_eq!(
        (state.balance.get(), state.pending_credits.get()),
        (100 * posted, 0)
    );
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_transfer_id_sent_again_is_already_executed_even_when_its_funds_are_spent(pool: PgPool) {
    let app = spawn_app(pool).await;
    for pending in [false, true] {
        let (from, to) = two_accounts(&app, 100).await;
        let id = Uuid::now_v7();
        let body = json!({"transfer_id": id, "from_account_id": from, "to_account_id": to, "amount": 100, "pending": pending});
        let first = app.post("/transfers", body.clone()).await;
        assert_eq!(first.status, 201, "{}", first.body);
        // The first attempt took all the money: the accounts alone would refuse the
        // retry for funds, but the transfer id says why first.
        let again = app.post("/transfers", body).await;
        assert_eq!(
            (again.status, again.problem(), again.body["transfer_id"].as_str()),
            (422, "transfer-already-executed", Some(id.to_string().as_str())),
            "pending {pending}: {}",
            again.body
        );
        let (state, _) = app.stored_state(from).await;
        assert_eq!(state.available_balance(), 0, "nothing moved twice");
    }
}
