//! Connecting to PostgreSQL the way every process must: create the database when it is
//! missing, then apply every migration, before serving anything.

use std::time::Duration;

use sqlx::Postgres;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgPool, PgPoolOptions};

use super::StartupError;

/// How long a request waits for a free pooled connection before it fails; long enough
/// to ride out a burst, short enough that a client sees an error rather than a hang.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// PostgreSQL's SQLSTATE for "database already exists": another process created it
/// between our check and our create, which is what we wanted.
const DUPLICATE_DATABASE: &str = "42P04";

/// Creates the database if missing, connects a pool and applies the migrations.
/// Migrations take an advisory lock, so processes starting together do not collide.
pub async fn connect_and_migrate(url: &str, max_connections: u32) -> Result<PgPool, StartupError> {
    let exists = Postgres::database_exists(url)
        .await
        .map_err(StartupError::Database)?;
    if !exists && let Err(error) = Postgres::create_database(url).await {
        let raced = error
            .as_database_error()
            .and_then(|error| error.code())
            .is_some_and(|code| code == DUPLICATE_DATABASE);
        if !raced {
            return Err(StartupError::Database(error));
        }
    }
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect(url)
        .await
        .map_err(StartupError::Database)?;
    crate::MIGRATOR.run(&pool).await?;
    Ok(pool)
}
