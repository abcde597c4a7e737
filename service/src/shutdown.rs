//! Stopping on ctrl-c or SIGTERM. Binaries pass [`shutdown_signal`] into their `run`, so
//! tests can pass any other future instead, and call [`flush_traces`] once `run` is done,
//! so the spans of the last requests reach the collector.

use crate::traces::Traces;

/// Completes on the first ctrl-c or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutdown signal received, stopping");
}

/// Exports the spans still queued and stops the trace exporter, waiting at most
/// [`crate::traces::FLUSH_TIMEOUT`]; nothing to do when traces are off. The export blocks
/// a thread, so it runs on the runtime's blocking pool.
pub async fn flush_traces(traces: Traces) {
    if !traces.exporting() {
        return;
    }
    if let Err(error) = tokio::task::spawn_blocking(move || traces.shutdown_blocking()).await {
        tracing::warn!(%error, "flushing the traces failed");
    }
}
