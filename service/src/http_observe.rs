//! What every HTTP request leaves behind for operators: the RED metrics
//! (`http_requests_total` by route, method and status; `http_request_duration_seconds`
//! by route and method) and a `request` span that every log line of the request sits in.
//!
//! Two layers, because the route template is only known after routing and the answer
//! (a 503 from load shedding, a 404 for an unknown path) only outside every other layer:
//! [`observe`] wraps the whole router and records; [`record_route`] is a route layer
//! that tells it which template matched. A request no route matched is `route="unmatched"`,
//! so scanners probing random paths cannot create a series per path.
//!
//! The `request` span continues the client's W3C `traceparent` when it sent a valid one
//! (an invalid one is ignored, as W3C Trace Context says), so an exported trace starts at
//! the client; its exported name is `<method> <route>` (OpenTelemetry's HTTP server span
//! convention), set once the route is known.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use event_store::relay::TRACEPARENT_HEADER;
use event_store::trace_context;
use tracing::Instrument;

/// The route label of a request that matched no route.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// The header that carries the correlation id in and out (API.md).
pub const CORRELATION_ID_HEADER: &str = "x-correlation-id";

/// The longest `X-Correlation-Id` accepted: a UUID is 36, a W3C trace id 32; 128 leaves
/// room for other schemes while keeping every event's metadata small.
pub const MAX_CORRELATION_ID_CHARS: usize = 128;

/// Where [`record_route`] leaves the matched template for [`observe`].
#[derive(Clone, Default)]
struct RouteSlot(Arc<OnceLock<String>>);

/// The outermost layer: times the request, runs it inside a `request` span, and counts
/// its answer. Wrap the whole router with it (`router.layer(from_fn(observe))`).
pub async fn observe(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let slot = RouteSlot::default();
    request.extensions_mut().insert(slot.clone());
    let correlation_id = client_correlation_id(request.headers()).map(str::to_owned);
    let span = tracing::info_span!(
        "request",
        method = %method,
        route = tracing::field::Empty,
        correlation_id = correlation_id.as_deref().unwrap_or(""),
        otel.kind = "server",
        http.response.status_code = tracing::field::Empty,
    );
    let traceparent = request
        .headers()
        .get(TRACEPARENT_HEADER)
        .and_then(|value| value.to_str().ok());
    trace_context::set_parent(&span, traceparent);
    let response = next.run(request).instrument(span.clone()).await;
    let route = slot.0.get().map_or(UNMATCHED_ROUTE, String::as_str).to_owned();
    span.record("route", route.as_str());
    let status = response.status().as_u16().to_string();
    if trace_context::exporting() {
        trace_context::rename(&span, format!("{method} {route}"));
        span.record("http.response.status_code", response.status().as_u16());
    }
    span.in_scope(|| {
        tracing::debug!(
            status = %status,
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "answered"
        );
    });
    metrics::counter!(
        "http_requests_total",
        "route" => route.clone(),
        "method" => method.clone(),
        "status" => status
    )
    .increment(1);
    metrics::histogram!("http_request_duration_seconds", "route" => route, "method" => method)
        .record(started.elapsed().as_secs_f64());
    response
}

/// A route layer (`router.route_layer(from_fn(record_route))`): hands the matched
/// route template to [`observe`].
pub async fn record_route(request: Request, next: Next) -> Response {
    if let (Some(path), Some(slot)) = (
        request.extensions().get::<MatchedPath>(),
        request.extensions().get::<RouteSlot>(),
    ) {
        let _first_wins = slot.0.set(path.as_str().to_owned());
    }
    next.run(request).await
}

/// The client's correlation id, when it is one the API accepts (printable ASCII, 1 to
/// [`MAX_CORRELATION_ID_CHARS`] characters). Anything else is left out of the logs
/// rather than copied into them; the command API answers it with a generated id.
pub fn client_correlation_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(CORRELATION_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .filter(|value| {
            !value.is_empty()
                && value.len() <= MAX_CORRELATION_ID_CHARS
                && value.bytes().all(|byte| (0x20..=0x7e).contains(&byte))
        })
}
