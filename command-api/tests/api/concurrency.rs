//! Many commands at once: group commit keeps money constant, limits hold, and a full
//! queue refuses with 503 instead of growing.

use futures::future::join_all;
use serde_json::json;
use sqlx::PgPool;

use command_api::committer::CommitterSettings;

use crate::helpers::{spawn_app, spawn_app_with};

/// Each account's opening balance.
const OPENING_BALANCE: i64 = 1_000;
/// How far each account may go below zero.
const OVERDRAFT_LIMIT: i64 = 100;

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn hundreds_of_concurrent_transfers_among_few_accounts_keep_money_constant_and_limits_held(
    pool: PgPool,
) {
    let app = spawn_app(pool).await;
    let mut accounts = Vec::new();
    for _ in 0..4 {
        let account = app.open_account(OVERDRAFT_LIMIT).await;
        app.deposit(account, OPENING_BALANCE).await;
        accounts.push(account);
    }
    let total = OPENING_BALANCE * accounts.len() as i64;
    let transfers = (0..400_usize).map(|index| {
        let from = accounts[index % accounts.len()];
        let to = accounts[(index * 7 + 1 + index / accounts.len()) % accounts.len()];
        let to = if to == from {
            accounts[(index + 1) % accounts.len()]
        } else {
            to
        };
        // Amounts large enough that many transfers hit the overdraft limit.
        let amount = 50 + (index as i64 * 37) % 400;
        let app = &app;
        async move {
            app.post(
                "/transfers",
                json!({"from_account_id": from, "to_account_id": to, "amount": amount}),
            )
            .await
        }
    });
    let answers = join_all(transfers).await;
    let accepted = answers.iter().filter(|answer| answer.status == 201).count();
    for answer in &answers {
        assert!(
            answer.status == 201 || (answer.status == 422 && answer.problem() == "insufficient-funds"),
            "{} {}",
            answer.status,
            answer.body
        );
    }
    assert!(accepted > 0);

    let mut sum = 0;
    for account in &accounts {
        let (balance, _) = app.stored_account(*account).await;
        assert!(balance >= -OVERDRAFT_LIMIT, "balance {balance} below the limit");
        sum += balance;
    }
    assert_eq!(sum, total);
    let executed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'TransferExecuted'")
            .fetch_one(&app.pool)
            .await
            .expect("count transfers");
    assert_eq!(executed as usize, accepted);
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn concurrent_deposits_on_one_account_through_two_instances_all_count(pool: PgPool) {
    let first = spawn_app(pool.clone()).await;
    let second = spawn_app(pool).await;
    let account = first.open_account(0).await;
    let deposits = (0..100).map(|index| {
        let app = if index % 2 == 0 { &first } else { &second };
        async move {
            app.post(&format!("/accounts/{account}/deposits"), json!({"amount": 1}))
                .await
        }
    });
    let answers = join_all(deposits).await;
    let accepted = answers.iter().filter(|answer| answer.status == 200).count() as i64;
    for answer in &answers {
        // Heavy cross-instance contention may exhaust the bounded retries: then 409.
        assert!(
            answer.status == 200 || (answer.status == 409 && answer.problem() == "concurrent-modification"),
            "{} {}",
            answer.status,
            answer.body
        );
    }
    assert!(accepted > 0);
    assert_eq!(
        first.stored_account(account).await,
        (accepted, 1 + accepted as u64)
    );
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_full_queue_answers_503_with_retry_after_and_writes_nothing_for_it(pool: PgPool) {
    let app = spawn_app_with(
        pool,
        CommitterSettings {
            queue_capacity: 1,
            max_batch_commands: 1,
            ..CommitterSettings::default()
        },
    )
    .await;
    let account = app.open_account(0).await;
    let deposits = (0..200).map(|_| {
        let app = &app;
        async move {
            app.post(&format!("/accounts/{account}/deposits"), json!({"amount": 1}))
                .await
        }
    });
    let answers = join_all(deposits).await;
    let accepted = answers.iter().filter(|answer| answer.status == 200).count() as i64;
    let overloaded: Vec<_> = answers.iter().filter(|answer| answer.status == 503).collect();
    assert_eq!(accepted + overloaded.len() as i64, 200);
    assert!(
        !overloaded.is_empty(),
        "a queue of one must overflow under 200 requests"
    );
    for answer in overloaded {
        assert_eq!(answer.problem(), "overloaded");
        assert_eq!(answer.header("retry-after"), Some("1"));
    }
    assert_eq!(app.stored_account(account).await, (accepted, 1 + accepted as u64));
}
