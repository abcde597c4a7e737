//! What every eventledger process does the same way: read its configuration, create
//! and migrate its database, connect to NATS, log, serve `/healthz`, `/readyz` and
//! `/metrics`, export traces, and stop cleanly on SIGTERM or ctrl-c. One place, so that the three
//! binaries cannot drift apart in how they are operated.

pub mod auth;
pub mod config;
pub mod database;
pub mod http_observe;
pub mod limits;
pub mod metrics_catalog;
pub mod nats;
pub mod openapi;
pub mod ops;
pub mod serve;
pub mod shutdown;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod traces;

pub use config::{CommonConfig, ConfigError, LogFormat};
pub use limits::HttpLimits;
pub use ops::{Readiness, ops_router};
pub use shutdown::shutdown_signal;

/// Why a process could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("could not reach or create the database")]
    Database(#[source] sqlx::Error),
    #[error("could not apply the migrations")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// `DATABASE_URL` names a hot standby, where nothing can be written or migrated.
    #[error(
        "DATABASE_URL names a read-only standby (a streaming replica): it must name the primary; \
         only the query API reads a replica, through QUERY_API_READER_DATABASE_URL"
    )]
    Standby,
    #[error("could not set up the NATS connection")]
    Nats(#[from] async_nats::ConnectError),
    #[error("could not listen on {address}")]
    Listen {
        address: String,
        #[source]
        source: std::io::Error,
    },
}
