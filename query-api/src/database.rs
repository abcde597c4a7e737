//! The query API's own connections: as the read-only role `eventledger_reader`
//! (migration `20261124000400`), never as the owner that migrates.
//!
//! Why a login of its own rather than `SET ROLE` on the owner's connections: a
//! connection opened as the owner can always `RESET ROLE` back to it, so any statement
//! that slipped through could undo the restriction; a connection that logged in as the
//! reader has no more rights to return to. On top of the role's grants, every session
//! starts with `default_transaction_read_only = on`, so even a grant added by mistake
//! would not let a query write.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool};

use service::database::pool_options;

/// The role the query API logs in as.
pub const READER_ROLE: &str = "eventledger_reader";

/// The longest one query may run: every query here is an index lookup or a bounded
/// page, so one that runs longer is stuck, and it must not hold a connection forever.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// The connection options of the reader: `reader_url` when given, otherwise the
/// owner's `database_url` with the user replaced by [`READER_ROLE`] and no password
/// (enough under `trust`; with passwords, pass a `reader_url` that carries one).
pub fn reader_options(database_url: &str, reader_url: Option<&str>) -> Result<PgConnectOptions, sqlx::Error> {
    let options = match reader_url {
        Some(url) => PgConnectOptions::from_str(url)?,
        None => PgConnectOptions::from_str(database_url)?
            .username(READER_ROLE)
            .password(""),
    };
    Ok(restrict(options))
}

/// Makes every session of `options` read-only and bounded in time, with every
/// process's [`service::database::session_settings`].
pub fn restrict(options: PgConnectOptions) -> PgConnectOptions {
    service::database::session_settings(options).options([
        ("default_transaction_read_only", "on".to_owned()),
        (
            "statement_timeout",
            format!("{}ms", STATEMENT_TIMEOUT.as_millis()),
        ),
        ("application_name", "query-api".to_owned()),
    ])
}

/// A pool of at most `max_connections` reader connections, pinged as every pool is
/// ([`pool_options`]).
pub async fn connect_reader(options: PgConnectOptions, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    pool_options(max_connections).connect_with(options).await
}
