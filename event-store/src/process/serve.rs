//! Binding and serving an axum router until shutdown, the same way in every process.

use std::future::Future;

use axum::Router;
use tokio::net::TcpListener;

use super::StartupError;

/// Binds `address` (`host:port`; port 0 picks a free one, as tests do).
pub async fn bind(address: &str) -> Result<TcpListener, StartupError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| StartupError::Listen {
            address: address.to_owned(),
            source,
        })
}

/// Serves `router` on `listener` until `shutdown` completes, then lets in-flight requests
/// finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "listening");
    }
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
