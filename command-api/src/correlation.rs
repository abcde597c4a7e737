//! `X-Correlation-Id` (API.md): taken from the client or generated, stored in every
//! event's metadata, and echoed on every answer, errors included. A middleware, so that a
//! request refused before its handler runs still carries the id back.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

use crate::extract::CORRELATION_ID_HEADER;

/// The request's correlation id, put into the request's extensions for the handlers.
#[derive(Debug, Clone)]
pub struct CorrelationId(pub String);

/// A client's correlation id if it is usable (1 to 128 printable ASCII characters),
/// otherwise a new UUIDv7. A malformed one is also refused by the command's own header
/// check (400), and the answer then echoes the generated id.
pub async fn correlate(mut request: Request, next: Next) -> Response {
    let from_client = service::http_observe::client_correlation_id(request.headers()).map(str::to_owned);
    let id = from_client.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    request.extensions_mut().insert(CorrelationId(id.clone()));
    let mut response = next.run(request).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(CORRELATION_ID_HEADER, value);
    }
    response
}
