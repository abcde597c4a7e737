//! Least privilege: the query API's connections may read but never write.

use sqlx::PgPool;

use crate::helpers::spawn_app;

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_write_through_the_query_pool_is_refused(pool: PgPool) {
    let app = spawn_app(pool).await;
    let reader = &app.state.pool;

    let user: String = sqlx::query_scalar("SELECT current_user")
        .fetch_one(reader)
        .await
        .expect("who am I");
    assert_eq!(user, "eventledger_reader");

    let checkpoint = sqlx::query(
        "INSERT INTO read_model.projection_checkpoints (projection, position) VALUES ('accounts', 1)",
    )
    .execute(reader)
    .await;
    assert!(checkpoint.is_err(), "a read model accepted a write");

    let event = sqlx::query(
        "INSERT INTO events (position, event_id, stream_id, stream_version, event_type, \
         schema_version, data, metadata, recorded_at) VALUES (1, gen_random_uuid(), 'account-x', 1, \
         'AccountOpened', 1, '{}', '{}', now())",
    )
    .execute(reader)
    .await;
    assert!(event.is_err(), "the event log accepted a write");

    // Neither the role's grants nor the session's read-only default may be lifted.
    let writable = sqlx::query("SET default_transaction_read_only = off")
        .execute(reader)
        .await
        .is_ok();
    if writable {
        let again = sqlx::query(
            "INSERT INTO read_model.projection_checkpoints (projection, position) VALUES ('x', 1)",
        )
        .execute(reader)
        .await;
        assert!(again.is_err(), "the role itself may write");
    }

    let reads: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(reader)
        .await
        .expect("a read");
    assert_eq!(reads, 0);
}
