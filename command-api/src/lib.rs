//! `command-api`: accepts commands over HTTP, decides them with the domain, appends the
//! events to the event store, and relays committed events to JetStream.
//!
//! # Layout
//!
//! - [`Config`]: flags and environment.
//! - [`run`]: connects, migrates, starts the relay and serves until shutdown.
//! - [`app`]: the router, for tests to drive directly.

use std::future::Future;

use axum::Router;
use event_store::EventStore;
use event_store::process::{self, CommonConfig, Readiness, StartupError};
use event_store::relay::{self, RelayConfig};
use tokio_util::sync::CancellationToken;

/// The command API's settings; every flag also reads the environment variable named.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "command-api", version, about = "eventledger command API")]
pub struct Config {
    #[command(flatten)]
    pub common: CommonConfig,

    /// Address to serve HTTP on.
    #[arg(long, env = "COMMAND_API_ADDR", default_value = "127.0.0.1:8081")]
    pub listen: String,
}

/// Why the command API stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("could not start")]
    Startup(#[from] StartupError),
    #[error("the HTTP server failed")]
    Serve(#[source] std::io::Error),
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: EventStore,
    pub readiness: Readiness,
}

/// The command API's routes.
pub fn app(state: AppState) -> Router {
    process::ops_router(state.readiness.clone())
}

/// Connects to PostgreSQL (creating and migrating the database) and NATS, starts the
/// relay, and serves until `shutdown` completes.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let pool = process::database::connect_and_migrate(
        &config.common.database_url,
        config.common.database_max_connections,
    )
    .await?;
    let nats = process::nats::connect(&config.common.nats_url, "command-api").await?;
    let listener = process::serve::bind(&config.listen).await?;
    let store = EventStore::new(pool.clone());

    let stop = CancellationToken::new();
    let relay = tokio::spawn(relay::run(
        store.clone(),
        nats.clone(),
        RelayConfig::new("ledger-events"),
        stop.clone(),
    ));

    let state = AppState {
        store,
        readiness: Readiness { pool, nats },
    };
    let served = process::serve::serve(listener, app(state), shutdown).await;
    stop.cancel();
    let _ = relay.await;
    served.map_err(RunError::Serve)
}
