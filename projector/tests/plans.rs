//! The plan of the live batch's read of accounts, on a real PostgreSQL: a read by the
//! ids a batch touches must stay a primary-key lookup however the table grew since the
//! statement was first prepared on the connection. By default PostgreSQL switches a
//! prepared statement to a generic plan after five runs and keeps it; made while a
//! fresh read-model table (no statistics yet) held a few hundred rows, that plan was a
//! sequential scan, still used when the table held thousands (`projector::live_pool`).
//! Asserted through the scan counters of the reading transaction
//! (`pg_stat_xact_user_tables`), not by timing.

use projector::live_pool;
use projector::tables;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

/// Rows in the table when the statement is first prepared and run: small enough that a
/// sequential scan is the cheapest plan then (a few pages), as right after a start.
const ROWS_WHEN_PREPARED: i64 = 300;

/// Runs before the table grows: past the five after which PostgreSQL may keep a
/// generic plan.
const EARLY_RUNS: usize = 8;

/// Rows added afterwards, before autovacuum would have analyzed the table.
const ROWS_ADDED: i64 = 10_000;

/// Ids per read, as in a batch of `loadgen --scenario deposits`.
const IDS_PER_READ: i64 = 57;

/// A connection with the live pool's session settings, on the test's database.
async fn live_connection(pool: &PgPool) -> PgConnection {
    let options = live_pool::live_options((*pool.connect_options()).clone(), "plans-test");
    PgConnection::connect_with(&options)
        .await
        .expect("a live connection")
}

async fn insert_accounts(pool: &PgPool, count: i64) {
    sqlx::query(
        "INSERT INTO read_model.accounts (account_id, owner_name, owner_email, currency, balance, \
             overdraft_limit, status, version, opened_at, updated_at, last_position) \
         SELECT gen_random_uuid(), 'Owner ' || g, 'owner' || g || '@example.com', 'EUR', 100, 0, 'open', 1, \
             now(), now(), g FROM generate_series(1, $1) AS g",
    )
    .bind(count)
    .execute(pool)
    .await
    .expect("accounts inserted");
}

fn unknown_ids() -> Vec<Uuid> {
    (0..IDS_PER_READ).map(|_| Uuid::now_v7()).collect()
}

/// Sequential and index scans of `read_model.<table>` counted by this backend and not
/// yet sent to the statistics (earlier transactions' may still be among them: the
/// backend sends its counts at most once a second, and never inside a transaction, so
/// the difference of two readings in one transaction is what happened in between).
async fn scans(connection: &mut PgConnection, table: &str) -> (i64, i64) {
    sqlx::query_as(
        "SELECT seq_scan, coalesce(idx_scan, 0) FROM pg_stat_xact_user_tables \
         WHERE schemaname = 'read_model' AND relname = $1",
    )
    .bind(table)
    .fetch_one(connection)
    .await
    .expect("the transaction's scan counters")
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn the_accounts_read_stays_a_key_lookup_as_the_table_grows(pool: PgPool) {
    // The table as right after a start, whenever autovacuum would get to it: no
    // statistics until the end of the test, whatever the machine's timing.
    sqlx::query("ALTER TABLE read_model.accounts SET (autovacuum_enabled = false)")
        .execute(&pool)
        .await
        .expect("autovacuum off for the test's table");
    let mut connection = live_connection(&pool).await;
    insert_accounts(&pool, ROWS_WHEN_PREPARED).await;
    for _ in 0..EARLY_RUNS {
        tables::load_accounts(&mut connection, "accounts", &unknown_ids())
            .await
            .expect("an early read");
    }
    insert_accounts(&pool, ROWS_ADDED).await;
    let ids: Vec<Uuid> =
        sqlx::query_scalar("SELECT account_id FROM read_model.accounts ORDER BY random() LIMIT $1")
            .bind(IDS_PER_READ)
            .fetch_all(&pool)
            .await
            .expect("ids");

    let mut transaction = connection.begin().await.expect("begin");
    let (sequential_before, index_before) = scans(&mut transaction, "accounts").await;
    let rows = tables::load_accounts(&mut transaction, "accounts", &ids)
        .await
        .expect("the read");
    let (sequential_after, index_after) = scans(&mut transaction, "accounts").await;
    let (sequential, index) = (sequential_after - sequential_before, index_after - index_before);
    transaction.commit().await.expect("commit");
    assert_eq!(rows.len(), ids.len());
    if sequential != 0 {
        // What the planner chose and thought, for whoever reads the failure.
        let plan: Vec<String> = sqlx::query_scalar(
            "EXPLAIN SELECT account_id FROM read_model.accounts WHERE account_id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(&mut connection)
        .await
        .unwrap_or_else(|error| vec![format!("(EXPLAIN failed: {error})")]);
        let statistics: Option<(f32, i32)> = sqlx::query_as(
            "SELECT reltuples, relpages FROM pg_class WHERE oid = 'read_model.accounts'::regclass",
        )
        .fetch_optional(&pool)
        .await
        .unwrap_or_default();
        panic!(
            "the accounts read scanned the whole table ({sequential} sequential scans); \
             pg_class (reltuples, relpages) {statistics:?}; the plan now:\n{}",
            plan.join("\n")
        );
    }
    assert!(index >= 1, "the accounts read used no index");
}
