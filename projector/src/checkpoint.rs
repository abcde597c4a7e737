//! The checkpoint rows of `read_model.projection_checkpoints`: where each projection
//! stands and whether it is healthy.
//!
//! The row is also the projection's writer lock. Every live batch and every rebuild
//! swap locks it (`SELECT ... FOR UPDATE`) first and reads the position under that lock,
//! so two writers of one projection (a live task and a rebuild) take turns and each sees
//! where the other left off. The row also carries the projection's live-applier lease
//! ([`crate::lease`]), checked under that same lock.

use sqlx::PgConnection;

use crate::lease::Fence;
use crate::projection::Projection;

/// The PostgreSQL channel on which every committed batch announces
/// `<projection>:<position>`, so that the query API's read-your-writes waits wake at
/// once. The query API listens on exactly this name and payload.
pub const PROJECTED_CHANNEL: &str = "eventledger_projected";

/// The most characters of an error kept in the checkpoint row; a cause chain is a line,
/// and a bound keeps a pathological one from bloating every status answer.
pub const MAX_ERROR_CHARS: usize = 2_000;

/// Locks the projection's checkpoint row until the transaction ends and returns its
/// position, creating the row if it is missing.
pub async fn lock(connection: &mut PgConnection, projection: Projection) -> Result<i64, sqlx::Error> {
    sqlx::query(
        "INSERT INTO read_model.projection_checkpoints (projection, position) VALUES ($1, 0) \
         ON CONFLICT (projection) DO NOTHING",
    )
    .bind(projection.name())
    .execute(&mut *connection)
    .await?;
    sqlx::query_scalar(
        "SELECT position FROM read_model.projection_checkpoints WHERE projection = $1 FOR UPDATE",
    )
    .bind(projection.name())
    .fetch_one(&mut *connection)
    .await
}

/// Locks the projection's checkpoint row until the transaction ends, as [`lock`] does,
/// and returns its position only if the row's lease is still `fence`'s (same holder,
/// same epoch); `None` when another instance took the lease over, so the batch must not
/// write. One statement: the live path's only addition for the lease.
pub async fn lock_fenced(
    connection: &mut PgConnection,
    projection: Projection,
    fence: &Fence,
) -> Result<Option<i64>, sqlx::Error> {
    let row: Option<(i64, bool)> = sqlx::query_as(
        "SELECT position, lease_holder IS NOT DISTINCT FROM $2 AND lease_epoch = $3 \
         FROM read_model.projection_checkpoints WHERE projection = $1 FOR UPDATE",
    )
    .bind(projection.name())
    .bind(&*fence.holder)
    .bind(fence.epoch)
    .fetch_optional(connection)
    .await?;
    Ok(row.and_then(|(position, held)| held.then_some(position)))
}

/// Moves the checkpoint to `position` (in the caller's transaction, with the rows it
/// wrote), clears any error, and announces the position at commit. A running rebuild
/// keeps its `rebuilding` state: the live task goes on writing the old tables meanwhile.
pub async fn advance(
    connection: &mut PgConnection,
    projection: Projection,
    position: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE read_model.projection_checkpoints SET position = $2, updated_at = now(), error = NULL, \
         status = CASE WHEN status = 'rebuilding' THEN status ELSE 'live' END WHERE projection = $1",
    )
    .bind(projection.name())
    .bind(position)
    .execute(&mut *connection)
    .await?;
    notify(connection, projection, position).await
}

/// Announces `position` on [`PROJECTED_CHANNEL`]; delivered only if the transaction commits.
pub async fn notify(
    connection: &mut PgConnection,
    projection: Projection,
    position: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(PROJECTED_CHANNEL)
        .bind(format!("{}:{position}", projection.name()))
        .execute(&mut *connection)
        .await?;
    Ok(())
}

/// Records that the projection stopped at an event it could not apply.
pub async fn mark_stopped(
    connection: &mut PgConnection,
    projection: Projection,
    error: &str,
) -> Result<(), sqlx::Error> {
    let error: String = error.chars().take(MAX_ERROR_CHARS).collect();
    sqlx::query(
        "UPDATE read_model.projection_checkpoints SET status = 'stopped', error = $2, updated_at = now() \
         WHERE projection = $1",
    )
    .bind(projection.name())
    .bind(error)
    .execute(connection)
    .await?;
    Ok(())
}

/// Sets the state column (`live` or `rebuilding`) without moving the position.
pub async fn set_status(
    connection: &mut PgConnection,
    projection: Projection,
    status: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE read_model.projection_checkpoints SET status = $2 WHERE projection = $1")
        .bind(projection.name())
        .bind(status)
        .execute(connection)
        .await?;
    Ok(())
}

/// The state column: `live`, `rebuilding` or `stopped`.
pub async fn status(
    connection: &mut PgConnection,
    projection: Projection,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT status FROM read_model.projection_checkpoints WHERE projection = $1")
        .bind(projection.name())
        .fetch_optional(connection)
        .await
}

/// The committed position, without locking.
pub async fn position(pool: &sqlx::PgPool, projection: Projection) -> Result<i64, sqlx::Error> {
    let position: Option<i64> =
        sqlx::query_scalar("SELECT position FROM read_model.projection_checkpoints WHERE projection = $1")
            .bind(projection.name())
            .fetch_optional(pool)
            .await?;
    Ok(position.unwrap_or(0))
}
