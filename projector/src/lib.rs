//! `projector`: consumes events from JetStream into the read models.
//!
//! # Layout
//!
//! - [`Config`]: flags and environment.
//! - [`run`]: connects, migrates and serves until shutdown.
//! - [`app`]: the router, for tests to drive directly.

use std::future::Future;

use axum::Router;
use event_store::process::{self, CommonConfig, Readiness, StartupError};

/// The projector's settings; every flag also reads the environment variable named.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "projector", version, about = "eventledger projector")]
pub struct Config {
    #[command(flatten)]
    pub common: CommonConfig,

    /// Address to serve HTTP on.
    #[arg(long, env = "PROJECTOR_ADDR", default_value = "127.0.0.1:8083")]
    pub listen: String,
}

/// Why the projector stopped with an error.
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
    pub readiness: Readiness,
}

/// The projector's routes.
pub fn app(state: AppState) -> Router {
    process::ops_router(state.readiness)
}

/// Connects to PostgreSQL (creating and migrating the database) and NATS, and serves
/// until `shutdown` completes.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let pool = process::database::connect_and_migrate(
        &config.common.database_url,
        config.common.database_max_connections,
    )
    .await?;
    let nats = process::nats::connect(&config.common.nats_url, "projector").await?;
    let listener = process::serve::bind(&config.listen).await?;
    let state = AppState {
        readiness: Readiness { pool, nats },
    };
    process::serve::serve(listener, app(state), shutdown)
        .await
        .map_err(RunError::Serve)
}
