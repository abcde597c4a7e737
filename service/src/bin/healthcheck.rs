//! `healthcheck`: the container image's `HEALTHCHECK`. Asks `GET /healthz` of the process
//! running beside it and exits 0 when it answers 200, 1 otherwise. It exists so that the
//! runtime image needs no HTTP client of its own (no curl, no shell tools to patch).
//!
//! One image holds all three processes, so the probe does not know which one runs: it
//! reads the same listen settings they do (`COMMAND_API_ADDR`, `QUERY_API_ADDR`,
//! `PROJECTOR_ADDR`, with their defaults) and succeeds if any of those ports answers. A
//! wildcard listen address (`0.0.0.0`, `[::]`) is probed on loopback.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

/// The listen settings of the three processes and their defaults (the same as each
/// binary's `--listen` default).
const LISTEN_SETTINGS: [(&str, &str); 3] = [
    ("COMMAND_API_ADDR", "127.0.0.1:8081"),
    ("QUERY_API_ADDR", "127.0.0.1:8082"),
    ("PROJECTOR_ADDR", "127.0.0.1:8083"),
];

/// How long one probe may take: well inside the image's `HEALTHCHECK --timeout`.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The most of the answer read: the status line is all that is looked at.
const ANSWER_LIMIT_BYTES: u64 = 1024;

fn main() -> ExitCode {
    let healthy = LISTEN_SETTINGS.iter().any(|(variable, default)| {
        let listen = std::env::var(variable).unwrap_or_else(|_| (*default).to_owned());
        probe_target(&listen).is_some_and(|target| answers_ok(target).unwrap_or(false))
    });
    if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The address to probe for a listen setting: the same port, on loopback when the
/// process listens on every interface.
fn probe_target(listen: &str) -> Option<SocketAddr> {
    let mut address = listen.to_socket_addrs().ok()?.next()?;
    if address.ip().is_unspecified() {
        let loopback = match address.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        };
        address.set_ip(loopback);
    }
    Some(address)
}

/// Whether `GET /healthz` at `target` answers with status 200.
fn answers_ok(target: SocketAddr) -> std::io::Result<bool> {
    let mut stream = TcpStream::connect_timeout(&target, PROBE_TIMEOUT)?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT))?;
    stream.set_write_timeout(Some(PROBE_TIMEOUT))?;
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut answer = Vec::new();
    stream.take(ANSWER_LIMIT_BYTES).read_to_end(&mut answer)?;
    Ok(answer.starts_with(b"HTTP/1.1 200 "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_listen_address_is_probed_on_loopback() {
        assert_eq!(
            probe_target("0.0.0.0:8082"),
            Some("127.0.0.1:8082".parse().expect("an address"))
        );
        assert_eq!(
            probe_target("[::]:8083"),
            Some("[::1]:8083".parse().expect("an address"))
        );
    }

    #[test]
    fn a_listen_setting_that_is_not_an_address_is_not_probed() {
        assert_eq!(probe_target("not an address"), None);
    }

    #[test]
    fn a_port_where_nothing_listens_is_not_healthy() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let address = listener.local_addr().expect("its address");
        drop(listener);
        assert!(!answers_ok(address).unwrap_or(false));
    }
}
