//! The read-model views and their errors.

use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{AccountFixture, spawn_app};

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn an_account_is_answered_with_its_fields_and_its_projection_position(pool: PgPool) {
    let app = spawn_app(pool).await;
    let account = AccountFixture::new("EUR", "open");
    app.insert_account(&account).await;
    app.set_checkpoint("accounts", 7).await;

    let response = app.get(&format!("/accounts/{}", account.account_id)).await;

    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-projection-position"], "7");
    let body: serde_json::Value = response.json().await.expect("JSON");
    assert_eq!(body["account_id"], account.account_id.to_string());
    assert_eq!(body["owner"]["name"], "Ada Lovelace");
    assert_eq!(body["owner"]["email"], "ada@example.com");
    assert_eq!(body["currency"], "EUR");
    assert_eq!(body["balance"], 1250);
    assert_eq!(body["overdraft_limit"], 0);
    assert_eq!(body["status"], "open");
    assert_eq!(body["version"], 2);
    assert!(body["opened_at"].is_string() && body["updated_at"].is_string());
    assert_eq!(body["available_balance"], 1250);
    assert_eq!(
        (body["pending_debits"].clone(), body["pending_credits"].clone()),
        (serde_json::json!(0), serde_json::json!(0))
    );

    sqlx::query(
        "UPDATE read_model.accounts SET pending_debits = 250, pending_credits = 40 WHERE account_id = $1",
    )
    .bind(account.account_id)
    .execute(&app.pool)
    .await
    .expect("pending amounts");
    let body = app
        .get_json(&format!("/accounts/{}", account.account_id), 200)
        .await;
    assert_eq!(body["balance"], 1250, "the posted balance");
    assert_eq!(body["available_balance"], 1000);
    assert_eq!(
        (body["pending_debits"].clone(), body["pending_credits"].clone()),
        (serde_json::json!(250), serde_json::json!(40))
    );
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn concurrent_lookups_read_together_each_get_their_own_account(pool: PgPool) {
    // Lookups that arrive together are read in one statement (views::account_reads):
    // each answer must still be its own account, with the position of the snapshot read,
    // a repeated id answered every time and an unknown one a 404.
    let app = spawn_app(pool).await;
    let mut accounts = Vec::new();
    for index in 0..24 {
        let mut account = AccountFixture::new("EUR", "open");
        account.balance = 1000 + index;
        if index % 3 == 0 {
            account.owner = None;
        }
        app.insert_account(&account).await;
        accounts.push(account);
    }
    app.set_checkpoint("accounts", 11).await;
    let unknown = Uuid::now_v7();
    let mut wanted: Vec<Option<&AccountFixture>> = accounts.iter().map(Some).collect();
    wanted.extend(accounts.iter().take(8).map(Some));
    wanted.extend([None, None]);

    let paths: Vec<String> = wanted
        .iter()
        .map(|account| {
            format!(
                "/accounts/{}",
                account.map_or(unknown, |account| account.account_id)
            )
        })
        .collect();

    let answers = futures::future::join_all(paths.iter().map(|path| app.get(path))).await;

    for (account, response) in wanted.iter().zip(answers) {
        match account {
            Some(account) => {
                assert_eq!(response.status(), 200);
                assert_eq!(response.headers()["x-projection-position"], "11");
                let body: serde_json::Value = response.json().await.expect("JSON");
                assert_eq!(body["account_id"], account.account_id.to_string());
                assert_eq!(body["balance"], account.balance);
                assert_eq!(body["owner"].is_null(), account.owner.is_none(), "{body}");
            }
            None => assert_eq!(response.status(), 404),
        }
    }
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn an_erased_owner_is_null(pool: PgPool) {
    let app = spawn_app(pool).await;
    let mut account = AccountFixture::new("EUR", "closed");
    account.owner = None;
    app.insert_account(&account).await;

    let body = app
        .get_json(&format!("/accounts/{}", account.account_id), 200)
        .await;

    assert!(body["owner"].is_null());
    assert_eq!(body["status"], "closed");
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn an_unknown_account_is_a_404_problem_and_a_malformed_id_a_400(pool: PgPool) {
    let app = spawn_app(pool).await;

    let response = app.get(&format!("/accounts/{}", Uuid::now_v7())).await;
    assert!(response.headers().contains_key("x-projection-position"));
    app.get_problem(&format!("/accounts/{}", Uuid::now_v7()), 404, "account-not-found")
        .await;
    let problem = app.get_problem("/accounts/not-a-uuid", 400, "validation").await;
    assert_eq!(problem["parameter"], "id");
    app.get_problem(
        &format!("/transfers/{}", Uuid::now_v7()),
        404,
        "transfer-not-found",
    )
    .await;
    app.get_problem("/transfers/42", 400, "validation").await;
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn accounts_are_filtered_and_paged_until_the_cursor_runs_out(pool: PgPool) {
    let app = spawn_app(pool).await;
    let mut open_eur = Vec::new();
    for _ in 0..5 {
        let account = AccountFixture::new("EUR", "open");
        app.insert_account(&account).await;
        open_eur.push(account.account_id);
    }
    app.insert_account(&AccountFixture::new("EUR", "frozen")).await;
    app.insert_account(&AccountFixture::new("USD", "open")).await;
    open_eur.sort();

    let mut seen = Vec::new();
    let mut path = "/accounts?status=open&currency=EUR&limit=2".to_owned();
    let mut pages = 0;
    loop {
        let page = app.get_json(&path, 200).await;
        pages += 1;
        for item in page["items"].as_array().expect("items") {
            assert_eq!(item["status"], "open");
            assert_eq!(item["currency"], "EUR");
            seen.push(Uuid::parse_str(item["account_id"].as_str().expect("id")).expect("uuid"));
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/accounts?status=open&currency=EUR&limit=2&cursor={cursor}"),
            None => break,
        }
        assert!(pages < 10, "the cursor never ran out");
    }

    assert_eq!(seen, open_eur);
    assert_eq!(pages, 3);
    let all = app.get_json("/accounts", 200).await;
    assert_eq!(all["items"].as_array().expect("items").len(), 7);
    assert!(all["next_cursor"].is_null());
    let usd = app.get_json("/accounts?currency=USD", 200).await;
    assert_eq!(usd["items"].as_array().expect("items").len(), 1);
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn bad_list_parameters_are_400_problems(pool: PgPool) {
    let app = spawn_app(pool).await;
    for path in [
        "/accounts?limit=1001",
        "/accounts?limit=0",
        "/accounts?limit=many",
        "/accounts?status=sleeping",
        "/accounts?currency=XYZW",
        "/accounts?cursor=garbage!",
        "/accounts?min_position=-1",
        "/accounts?wait_ms=10001",
        "/accounts?wait_ms=soon",
    ] {
        app.get_problem(path, 400, "validation").await;
    }
    // A cursor of another endpoint is not a cursor of this one.
    let transactions_cursor = query_api::cursor::encode_transaction(5);
    app.get_problem(
        &format!("/accounts?cursor={transactions_cursor}"),
        400,
        "validation",
    )
    .await;
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn transactions_are_newest_first_and_paged(pool: PgPool) {
    let app = spawn_app(pool).await;
    let account = AccountFixture::new("EUR", "open");
    app.insert_account(&account).await;
    for position in 1..=5 {
        app.insert_transaction(account.account_id, position, "deposit", 100, position * 100)
            .await;
    }
    app.set_checkpoint("account_transactions", 5).await;

    let response = app
        .get(&format!("/accounts/{}/transactions?limit=3", account.account_id))
        .await;
    assert_eq!(response.headers()["x-projection-position"], "5");
    let first: serde_json::Value = response.json().await.expect("JSON");
    let positions: Vec<i64> = first["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| item["position"].as_i64().expect("position"))
        .collect();
    assert_eq!(positions, vec![5, 4, 3]);
    assert_eq!(first["items"][0]["kind"], "deposit");
    assert_eq!(first["items"][0]["balance_after"], 500);
    assert_eq!(first["items"][0]["reference"], "ref 5");
    let cursor = first["next_cursor"].as_str().expect("a next page");

    let second = app
        .get_json(
            &format!(
                "/accounts/{}/transactions?limit=3&cursor={cursor}",
                account.account_id
            ),
            200,
        )
        .await;
    let positions: Vec<i64> = second["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| item["position"].as_i64().expect("position"))
        .collect();
    assert_eq!(positions, vec![2, 1]);
    assert!(second["next_cursor"].is_null());
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn transactions_of_an_unknown_account_are_a_404_and_of_a_quiet_one_empty(pool: PgPool) {
    let app = spawn_app(pool).await;
    let quiet = AccountFixture::new("EUR", "open");
    app.insert_account(&quiet).await;

    app.get_problem(
        &format!("/accounts/{}/transactions", Uuid::now_v7()),
        404,
        "account-not-found",
    )
    .await;
    let empty = app
        .get_json(&format!("/accounts/{}/transactions", quiet.account_id), 200)
        .await;
    assert_eq!(empty["items"], serde_json::json!([]));
    app.get_problem(
        &format!("/accounts/{}/transactions?cursor=abc", quiet.account_id),
        400,
        "validation",
    )
    .await;
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_transfer_is_answered_with_its_fields(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let (transfer_id, from, to) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    sqlx::query(
        "INSERT INTO read_model.transfers (transfer_id, from_account_id, to_account_id, amount, \
         currency, reference, recorded_at, position) VALUES ($1, $2, $3, 700, 'EUR', 'rent', now(), 12)",
    )
    .bind(transfer_id)
    .bind(from)
    .bind(to)
    .execute(&pool)
    .await
    .expect("transfer row");
    app.set_checkpoint("transfers", 12).await;

    let response = app.get(&format!("/transfers/{transfer_id}")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-projection-position"], "12");
    let body: serde_json::Value = response.json().await.expect("JSON");
    assert_eq!(body["transfer_id"], transfer_id.to_string());
    assert_eq!(body["from_account_id"], from.to_string());
    assert_eq!(body["to_account_id"], to.to_string());
    assert_eq!(body["amount"], 700);
    assert_eq!(body["currency"], "EUR");
    assert_eq!(body["reference"], "rent");
    assert_eq!(body["position"], 12);
    // A transfer from before two-phase transfers reads as posted in full.
    assert_eq!(body["status"], "posted");
    assert_eq!(body["posted_amount"], 700);
    assert_eq!(body["expires_at"], serde_json::Value::Null);
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn transfers_are_listed_newest_first_by_account_and_status(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let (alice, bob, carol) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    // (position, from, to, status, posted_amount, expires_at)
    let rows = [
        (3, alice, bob, "posted", Some(10), false),
        (5, bob, carol, "pending", None, true),
        (7, carol, alice, "voided", None, false),
        (9, alice, carol, "expired", None, true),
        (11, alice, bob, "pending", None, false),
    ];
    let mut ids = Vec::new();
    for (position, from, to, status, posted, expires) in rows {
        let id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO read_model.transfers (transfer_id, from_account_id, to_account_id, amount, currency, \
             reference, recorded_at, position, status, posted_amount, expires_at) \
             VALUES ($1, $2, $3, 10, 'EUR', NULL, now(), $4, $5, $6, CASE WHEN $7 THEN now() END)",
        )
        .bind(id)
        .bind(from)
        .bind(to)
        .bind(position)
        .bind(status)
        .bind(posted)
        .bind(expires)
        .execute(&pool)
        .await
        .expect("transfer row");
        ids.push(id);
    }
    app.set_checkpoint("transfers", 11).await;
    let positions = |page: &serde_json::Value| -> Vec<i64> {
        page["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|item| item["position"].as_i64().expect("position"))
            .collect()
    };

    let all = app.get_json("/transfers", 200).await;
    assert_eq!(positions(&all), [11, 9, 7, 5, 3]);
    assert_eq!(all["items"][0]["status"], "pending");
    assert_eq!(all["items"][4]["posted_amount"], 10);
    assert!(all["items"][1]["expires_at"].is_string());

    let alices = app.get_json(&format!("/transfers?account_id={alice}"), 200).await;
    assert_eq!(positions(&alices), [11, 9, 7, 3], "either side");
    let pending = app
        .get_json(&format!("/transfers?account_id={alice}&status=pending"), 200)
        .await;
    assert_eq!(positions(&pending), [11]);
    assert_eq!(pending["items"][0]["transfer_id"], ids[4].to_string());

    // Keyset pages: two, two, one, then no cursor.
    let first = app.get_json("/transfers?limit=2", 200).await;
    assert_eq!(positions(&first), [11, 9]);
    let cursor = first["next_cursor"].as_str().expect("cursor");
    let second = app
        .get_json(&format!("/transfers?limit=2&cursor={cursor}"), 200)
        .await;
    assert_eq!(positions(&second), [7, 5]);
    let cursor = second["next_cursor"].as_str().expect("cursor");
    let last = app
        .get_json(&format!("/transfers?limit=2&cursor={cursor}"), 200)
        .await;
    assert_eq!(positions(&last), [3]);
    assert_eq!(last["next_cursor"], serde_json::Value::Null);

    for bad in [
        "/transfers?status=done",
        "/transfers?account_id=42",
        "/transfers?limit=0",
        "/transfers?limit=1001",
        "/transfers?cursor=abc",
    ] {
        app.get_problem(bad, 400, "validation").await;
    }
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn projections_report_position_head_and_lag(pool: PgPool) {
    let app = spawn_app(pool).await;
    let account_id = domain::AccountId::from(Uuid::now_v7());
    app.append(
        account_id,
        event_store::ExpectedVersion::NoStream,
        vec![
            crate::helpers::opened(account_id),
            crate::helpers::deposited(account_id, 5),
        ],
        "teller",
        "c-1",
    )
    .await;
    app.set_checkpoint("accounts", 1).await;
    app.set_checkpoint("transfers", 2).await;

    // `account_transactions` is still at 0, so the read models are.
    let response = app.get("/projections").await;
    assert_eq!(response.headers()["x-projection-position"], "0");
    let body: serde_json::Value = response.json().await.expect("JSON");
    let items = body["items"].as_array().expect("items");
    let names: Vec<&str> = items
        .iter()
        .map(|item| item["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, vec!["account_transactions", "accounts", "transfers"]);
    assert_eq!(items[0]["position"], 0);
    assert_eq!(items[0]["lag"], 2);
    assert_eq!(items[1]["position"], 1);
    assert_eq!(items[1]["head"], 2);
    assert_eq!(items[1]["lag"], 1);
    assert_eq!(items[1]["status"], "live");
    assert_eq!(items[2]["lag"], 0);

    app.set_checkpoint("account_transactions", 2).await;
    let response = app.get("/projections").await;
    assert_eq!(response.headers()["x-projection-position"], "1");
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn an_unknown_route_or_method_is_a_problem(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.get_problem("/nothing/here", 404, "route-not-found").await;
    let response = app
        .client
        .post(format!("{}/accounts", app.address))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
}
