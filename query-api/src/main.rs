//! `query-api`: parses its configuration and runs the server until SIGTERM or ctrl-c.

use std::process::ExitCode;

use clap::Parser;
use service::shutdown::flush_traces;
use service::{shutdown_signal, telemetry};

/// mimalloc rather than the system allocator: see the workspace `Cargo.toml`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let config = query_api::Config::parse();
    let traces = telemetry::init(config.common.log_format, "query-api");
    let code = match query_api::run(config, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %event_store::error_chain(&error), "query-api stopped");
            ExitCode::FAILURE
        }
    };
    flush_traces(traces).await;
    code
}
