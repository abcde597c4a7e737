//! Connecting to PostgreSQL the way every process must: create the database when it is
//! missing, then apply every migration, before serving anything.

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, Postgres};

use super::StartupError;

/// How long a request waits for a free pooled connection before it fails; long enough
/// to ride out a burst, short enough that a client sees an error rather than a hang.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// A pooled connection idle for longer than this is pinged before a query gets it; one
/// used more recently is handed out as it is. sqlx pings on every acquire by default,
/// a whole round trip to PostgreSQL that doubled the cost of a one-row lookup. A
/// connection in steady use has just proved itself, so only one that sat idle, long
/// enough for PostgreSQL to have restarted or a firewall to have dropped it, is worth
/// testing first. A connection that fails anyway fails its query with an error the
/// caller already handles (a 503 or a retry), as it could fail right after a ping.
pub const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// The options of every pool of every process: at most `max_connections`, the
/// [`ACQUIRE_TIMEOUT`], and a ping only for connections idle [`PING_IF_IDLE_FOR`].
pub fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .test_before_acquire(false)
        .before_acquire(|connection, metadata| {
            Box::pin(async move {
                if metadata.idle_for >= PING_IF_IDLE_FOR {
                    connection.ping().await?;
                }
                Ok(true)
            })
        })
}

/// The session settings every eventledger connection starts with, sent in the startup
/// packet (no statement of their own, and a pooled connection cannot lose them).
///
/// `jit = off`: every statement eventledger runs is a short index lookup or a bounded
/// batch, where compiling the plan costs far more than it saves (a few milliseconds
/// against microseconds). PostgreSQL decides to compile from the planner's cost
/// estimate, and a table with no statistics yet (a fresh read model, a just-swapped
/// rebuild table) can be estimated at millions: the projector's status query was once
/// compiled on every run, a third of a core. Turning it off per session keeps the rest
/// of the server's settings untouched.
pub fn session_settings(options: PgConnectOptions) -> PgConnectOptions {
    options.options([("jit", "off")])
}

/// The connection options for `url` with the [`session_settings`].
pub fn connect_options(url: &str) -> Result<PgConnectOptions, sqlx::Error> {
    Ok(session_settings(PgConnectOptions::from_str(url)?))
}

/// PostgreSQL's SQLSTATE for "database already exists": another process created it
/// between our check and our create, which is what we wanted.
const DUPLICATE_DATABASE: &str = "42P04";

/// Creates the database if missing, connects a pool (with the [`session_settings`]) and
/// applies the migrations. A standby is refused ([`StartupError::Standby`]) before any
/// migration, with a message that says what to do instead of PostgreSQL's own.
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
    let pool = pool_options(max_connections)
        .connect_with(connect_options(url).map_err(StartupError::Database)?)
        .await
        .map_err(StartupError::Database)?;
    if is_standby(&pool).await.map_err(StartupError::Database)? {
        return Err(StartupError::Standby);
    }
    event_store::MIGRATOR.run(&pool).await?;
    Ok(pool)
}

/// Whether the server is a hot standby (in recovery, following a primary): it serves
/// reads but refuses every write, `LISTEN` included.
pub async fn is_standby<'c>(executor: impl sqlx::PgExecutor<'c>) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(executor)
        .await
}
