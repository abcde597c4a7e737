//! Binding and serving an axum router until shutdown, the same way in every process.
//!
//! The connection loop is hyper-util's rather than `axum::serve`, because only there can
//! a header read timeout be set: without it a client that sends its headers a byte at a
//! time keeps a connection and a task for as long as it likes ("slowloris").

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use super::StartupError;
use super::limits::DEFAULT_HEADER_READ_TIMEOUT_MS;

/// How long to pause after a failed `accept` (typically too many open files) before
/// trying again, so the loop does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

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
/// finish, with the default header read timeout.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(
        listener,
        router,
        Duration::from_millis(DEFAULT_HEADER_READ_TIMEOUT_MS),
        shutdown,
    )
    .await
}

/// As [`serve`], closing any connection whose request headers take longer than
/// `header_read_timeout` to arrive.
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    header_read_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "listening");
    }
    // HTTP/1.1 only, as axum::serve with axum's default features served before.
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    // Outermost, so the RED metrics count every answer, refusals by the limits included.
    let router = router.layer(axum::middleware::from_fn(super::http_observe::observe));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "could not accept a connection");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let service = TowerToHyperService::new(router.clone());
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
