//! The web console (issue 17): auditors read the log and operators watch projections
//! without curl and JSON. Served by the query API under `/console`, HTML rendered on the
//! server, a little script only where a page updates live, every asset compiled in.
//!
//! # Layout
//!
//! - [`access`]: the role each console route needs (a session, not a bearer header).
//! - [`session`]: sign-in with a bearer token, the `HttpOnly` session cookie, CSRF.
//! - [`pages`]: the pages, reading through the query API's own handlers.
//! - [`render`]: the templates (minijinja, autoescaped), compiled in.
//! - [`chart`]: the balance chart as inline SVG. [`format`]: amounts and times.
//! - [`assets`]: the stylesheet and script, compiled in.
//! - [`projector`]: the rebuild button's call to the projector's admin API.
//!
//! Every console answer carries the headers of [`security_headers`].

pub mod access;
pub mod assets;
pub mod chart;
pub mod format;
pub mod pages;
pub mod projector;
pub mod render;
pub mod session;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{any, get, post};

use crate::AppState;

/// The path of the console's live tail, exempt from the request timeout like the API's.
pub const LIVE_PATH: &str = "/console/audit/live";

/// The console's Content-Security-Policy: scripts, styles, images and connections only
/// from the query API itself, no inline script or style, no plugins, no framing, forms
/// only to itself.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The console's routes, each behind [`session::authorize`] and with
/// [`security_headers`] on every answer, redirects and errors included.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/console", get(pages::index))
        .route("/console/session", post(pages::sign_in))
        .route("/console/session/end", post(pages::sign_out))
        .route("/console/assets/{file}", get(assets::serve))
        .route("/console/accounts", get(pages::accounts))
        .route("/console/accounts/{id}", get(pages::account))
        .route("/console/transfers/{id}", get(pages::transfer))
        .route("/console/audit", get(pages::audit))
        .route(LIVE_PATH, get(pages::audit_live))
        .route("/console/projections", get(pages::projections))
        .route("/console/projections/status", get(pages::projections_status))
        .route("/console/projections/{name}/rebuild", post(pages::rebuild))
        .route("/console/log/verify", get(pages::verify_log))
        // Any other path under /console is a console page that does not exist: an HTML
        // 404 with the console's headers, not the API's problem document.
        .route("/console/{*rest}", any(pages::not_found))
        .route_layer(middleware::from_fn_with_state(state.clone(), session::authorize))
        .route_layer(middleware::from_fn(service::http_observe::record_route))
        .layer(middleware::from_fn(security_headers))
        .with_state(state)
}

/// Adds the console's security headers: the CSP, no MIME sniffing, the referrer only
/// to this origin (which keeps `Origin` on same-origin `POST`s, see [`session`]), no
/// framing, and no caching of pages (they show account data); assets keep their own
/// `Cache-Control`.
pub async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}
