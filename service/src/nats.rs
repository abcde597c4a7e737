//! The NATS connection. A process starts even while NATS is down (commands are safe in
//! PostgreSQL and the relay catches up), so the client retries its first connection in
//! the background and `/readyz` reports NATS until it is reached.
//!
//! `NATS_URL` may name several servers, comma-separated (the nodes of a cluster): the
//! client connects to one of them and, when it dies, to another.

use std::time::Duration;

use async_nats::{Client, ConnectOptions, ServerAddr};

use super::StartupError;
use crate::ConfigError;

/// The servers of a `NATS_URL`: one URL or a comma-separated list (spaces around the
/// commas allowed).
///
/// # Errors
///
/// [`ConfigError::NatsUrl`] naming the first entry that is not a NATS URL, or when the
/// list names none.
pub fn server_addrs(urls: &str) -> Result<Vec<ServerAddr>, ConfigError> {
    let addrs = urls
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(|url| {
            url.parse::<ServerAddr>().map_err(|source| ConfigError::NatsUrl {
                url: url.to_owned(),
                reason: source.to_string(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if addrs.is_empty() {
        return Err(ConfigError::NatsUrl {
            url: urls.to_owned(),
            reason: "no server given".to_owned(),
        });
    }
    Ok(addrs)
}

/// How often the client pings its server. Three pings unanswered and it leaves for
/// another server, so a node that hangs (frozen, partitioned, its disk stuck) is left
/// within about three of these; the client's default (a minute) kept the relay and the
/// projector on a hung node for minutes while the rest of the cluster had moved on. One
/// small frame per connection every few seconds, to NATS only.
pub const PING_INTERVAL: Duration = Duration::from_secs(5);

/// Connects to the servers `urls` names, naming the connection after the process so that
/// the server's monitoring shows who is who.
pub async fn connect(urls: &str, process_name: &str) -> Result<Client, StartupError> {
    let addrs = server_addrs(urls)?;
    Ok(ConnectOptions::new()
        .name(process_name)
        .ping_interval(PING_INTERVAL)
        .retry_on_initial_connect()
        .connect(addrs)
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_comma_separated_list_names_every_node() {
        let addrs = server_addrs("nats://a:4222, nats://b:4223,nats://c:4224").expect("three URLs");
        let hosts: Vec<(String, u16)> = addrs
            .iter()
            .map(|addr| (addr.host().to_owned(), addr.port()))
            .collect();
        assert_eq!(
            hosts,
            [
                ("a".to_owned(), 4222),
                ("b".to_owned(), 4223),
                ("c".to_owned(), 4224)
            ]
        );
    }

    #[test]
    fn an_empty_list_or_a_bad_entry_is_refused_by_name() {
        assert!(server_addrs(" , ").is_err());
        let refusal = server_addrs("nats://a:4222,http://[::").expect_err("not a URL");
        assert!(refusal.to_string().contains("http://[::"), "{refusal}");
    }
}
