//! Bounds on what one client can make an HTTP server hold: how long a request may run,
//! how many run at once, and how large its headers may be. Without them one slow or
//! greedy client ties up tasks, database connections and memory that every other
//! client needs.
//!
//! - [`HttpLimits`]: the settings, as flags and environment variables.
//! - [`apply`]: the middleware, around a whole router. A request over the time limit is
//!   answered 503 `timeout`; one arriving while every slot is taken is shed at once with
//!   503 `overloaded` (both with `Retry-After`); headers over [`MAX_HEADER_BYTES`] are
//!   431 `headers-too-large`. All three as `application/problem+json`.
//! - The header read timeout (slow headers, "slowloris") is enforced by the connection
//!   loop in [`super::serve`], before a request exists.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::Semaphore;

/// The base of every problem `type` URI (the same as the APIs' own problems).
pub const PROBLEM_BASE: &str = "https://eventledger.dev/problems/";

/// Default `--request-timeout-ms`: above the longest wait a client may ask for
/// (`wait_ms` of read-your-writes is at most 10 s), with room for the query itself.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 15_000;

/// Default `--max-concurrent-requests`: far more than the database pool can serve at once
/// (16 connections), so a burst queues on the pool rather than being shed, yet a bounded
/// number of tasks and buffered bodies (at most 64 KiB each) per process.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 512;

/// Default `--header-read-timeout-ms`: a client on any real network sends its headers in
/// well under a second; one that trickles them in keeps a connection for at most this.
pub const DEFAULT_HEADER_READ_TIMEOUT_MS: u64 = 5_000;

/// The most header bytes (names and values) one request may carry. A bearer token is
/// under 1 KiB and every header the APIs read is bounded far below this; the rest is
/// room for proxies. Larger is refused before any handler reads it.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// How long a shed or timed-out client should wait before retrying, in seconds.
pub const RETRY_AFTER_SECONDS: u64 = 1;

/// Paths never shed by the concurrency limit: liveness and metrics must answer exactly
/// when the process is busiest. (`/readyz` is limited: an overloaded instance that says
/// it is not ready is telling the truth.)
const UNLIMITED_PATHS: &[&str] = &["/healthz", "/metrics"];

/// The HTTP bounds of a server; every flag also reads the environment variable named.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct HttpLimits {
    /// Longest time a request may take, from its headers read to its answer, in
    /// milliseconds; past it the client gets a 503. Long-lived streams are exempt.
    #[arg(long, env = "HTTP_REQUEST_TIMEOUT_MS", default_value_t = DEFAULT_REQUEST_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_ms: u64,

    /// Most requests handled at once; past it a request is answered 503 at once.
    #[arg(long, env = "HTTP_MAX_CONCURRENT_REQUESTS", default_value_t = DEFAULT_MAX_CONCURRENT_REQUESTS,
          value_parser = parse_positive)]
    pub max_concurrent_requests: usize,

    /// Longest time a client may take to send a request's headers, in milliseconds;
    /// past it the connection is closed.
    #[arg(long, env = "HTTP_HEADER_READ_TIMEOUT_MS", default_value_t = DEFAULT_HEADER_READ_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout_ms: u64,
}

/// A count flag that must be at least 1 (a limit of 0 would refuse everything).
pub fn parse_positive(raw: &str) -> Result<usize, String> {
    match raw.parse::<usize>() {
        Ok(value) if value > 0 => Ok(value),
        _ => Err("must be a positive integer".to_owned()),
    }
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
            max_concurrent_requests: DEFAULT_MAX_CONCURRENT_REQUESTS,
            header_read_timeout_ms: DEFAULT_HEADER_READ_TIMEOUT_MS,
        }
    }
}

impl HttpLimits {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }
}

/// What the middleware shares across every route of one router.
#[derive(Clone)]
struct Enforcer {
    slots: Arc<Semaphore>,
    timeout: Duration,
    /// Paths whose answer is a long-lived stream: the handler returns at once and the
    /// stream bounds itself (the live tail has its own cap on open tails), so a request
    /// timeout would only cut healthy streams.
    untimed: &'static [&'static str],
}

/// `router` with `limits` enforced on every request, except the request timeout on
/// `untimed` paths (matched exactly).
pub fn apply(router: Router, limits: &HttpLimits, untimed: &'static [&'static str]) -> Router {
    let enforcer = Enforcer {
        slots: Arc::new(Semaphore::new(limits.max_concurrent_requests)),
        timeout: limits.request_timeout(),
        untimed,
    };
    router.layer(middleware::from_fn_with_state(enforcer, enforce))
}

async fn enforce(State(enforcer): State<Enforcer>, request: Request, next: Next) -> Response {
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        metrics::counter!("http_requests_refused_total", "reason" => "headers-too-large").increment(1);
        return problem(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers-too-large",
            &format!(
                "the request's headers are {header_bytes} bytes; at most {MAX_HEADER_BYTES} are accepted"
            ),
        );
    }
    let path = request.uri().path();
    let _slot = if UNLIMITED_PATHS.contains(&path) {
        None
    } else {
        match enforcer.slots.clone().try_acquire_owned() {
            Ok(slot) => Some(slot),
            Err(_) => {
                metrics::counter!("http_requests_refused_total", "reason" => "overloaded").increment(1);
                return problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    "too many requests are in progress; retry shortly",
                );
            }
        }
    };
    if enforcer.untimed.contains(&path) {
        return next.run(request).await;
    }
    match tokio::time::timeout(enforcer.timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            metrics::counter!("http_requests_refused_total", "reason" => "timeout").increment(1);
            tracing::warn!(timeout_ms = enforcer.timeout.as_millis(), "request timed out");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                &format!(
                    "the request took longer than {} ms and was cut; a command may still have taken \
                     effect: retry with the same Idempotency-Key",
                    enforcer.timeout.as_millis()
                ),
            )
        }
    }
}

/// An RFC 9457 problem answer; 503s carry `Retry-After`.
fn problem(status: StatusCode, code: &str, detail: &str) -> Response {
    let body = json!({
        "type": format!("{PROBLEM_BASE}{code}"),
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    let mut response = (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
    }
    response
}
