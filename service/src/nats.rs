//! The NATS connection. A process starts even while NATS is down (commands are safe in
//! PostgreSQL and the relay catches up), so the client retries its first connection in
//! the background and `/readyz` reports NATS until it is reached.

use async_nats::{Client, ConnectOptions};

use super::StartupError;

/// Connects to `url`, naming the connection after the process so that the server's
/// monitoring shows who is who.
pub async fn connect(url: &str, process_name: &str) -> Result<Client, StartupError> {
    Ok(ConnectOptions::new()
        .name(process_name)
        .retry_on_initial_connect()
        .connect(url)
        .await?)
}
