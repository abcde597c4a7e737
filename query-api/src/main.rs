//! `query-api`: parses its configuration and runs the server until SIGTERM or ctrl-c.

use std::process::ExitCode;

use clap::Parser;
use service::{shutdown_signal, telemetry};

/// mimalloc rather than the system allocator: see the workspace `Cargo.toml`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let config = query_api::Config::parse();
    telemetry::init_logging(config.common.log_format);
    match query_api::run(config, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %event_store::error_chain(&error), "query-api stopped");
            ExitCode::FAILURE
        }
    }
}
