//! Signing in to the console, and who each console request comes from.
//!
//! - **Sign-in** is a form `POST /console/session` carrying the bearer token in its body,
//!   never in a URL. The token is verified by the API's own [`Authenticator`], with the
//!   same key, leeway, issuer and audience rules.
//! - **The session is the token itself**, in an `HttpOnly`, `SameSite=Strict` cookie
//!   scoped to `/console`, verified again on every request, so the token's `exp` ends
//!   the session and there is no session table to keep, expire or replicate across
//!   instances. Script on the page cannot read it (`HttpOnly`). `Secure` is set when the
//!   request came over HTTPS (a proxy saying so in `X-Forwarded-Proto`); on plain
//!   `http://127.0.0.1` a browser would drop a `Secure` cookie.
//! - **CSRF**: every state-changing console request is a `POST`, which a browser sends
//!   with the cookie only from the console's own pages (`SameSite=Strict`), and which
//!   must also carry an `Origin` (or, failing that, a `Referer`) naming this host. The
//!   pages answer with `Referrer-Policy: same-origin`, under which a browser sends the
//!   real `Origin` on a same-origin `POST` (with `no-referrer` it sends `Origin: null`).

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use cookie::{Cookie, SameSite};
use service::auth::{AuthError, Principal, Role};

use super::access;
use super::pages::ConsoleError;
use crate::AppState;

/// The session cookie's name.
pub const COOKIE: &str = "eventledger_console";

/// The path the cookie is sent on: only console requests carry it.
pub const COOKIE_PATH: &str = "/console";

/// The longest token accepted at sign-in: a JWT with a few claims is well under 2 KiB,
/// and a cookie over 4 KiB is dropped by browsers.
pub const MAX_TOKEN_BYTES: usize = 3800;

/// The signed-in caller of a console request, put into its extensions by
/// [`authorize`]. Holds the token so that a rebuild can call the projector as this
/// caller; it is never written to a log or a page.
#[derive(Clone)]
pub struct SignedIn {
    pub principal: Principal,
    pub token: String,
}

impl std::fmt::Debug for SignedIn {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SignedIn")
            .field("principal", &self.principal)
            .finish_non_exhaustive()
    }
}

impl SignedIn {
    pub fn may(&self, role: Role) -> bool {
        self.principal.may(role)
    }
}

/// The caller a `token` stands for, by the API's rules.
pub fn verify(state: &AppState, token: &str) -> Result<Principal, AuthError> {
    let mut headers = HeaderMap::new();
    let value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| AuthError::MalformedHeader)?;
    headers.insert(header::AUTHORIZATION, value);
    state.access.authenticator.authenticate(&headers)
}

/// The session token of a request, if its cookie names one.
pub fn session_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|cookie| cookie.name() == COOKIE)
        .map(|cookie| cookie.value().to_owned())
}

/// Whether the request came over HTTPS, as a TLS-terminating proxy in front says.
fn over_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"))
}

/// The `Set-Cookie` value that starts a session holding `token`.
pub fn start_cookie(token: &str, headers: &HeaderMap) -> String {
    Cookie::build((COOKIE, token.to_owned()))
        .path(COOKIE_PATH)
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(over_https(headers))
        .build()
        .to_string()
}

/// The `Set-Cookie` value that ends the session.
pub fn end_cookie(headers: &HeaderMap) -> String {
    let mut cookie = Cookie::build((COOKIE, ""))
        .path(COOKIE_PATH)
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(over_https(headers))
        .build();
    cookie.make_removal();
    cookie.to_string()
}

/// Whether a state-changing request comes from a page of this very host: its `Origin`
/// (or, without one, its `Referer`) must have the request's `Host` as its authority.
/// Neither header, or `Origin: null`, is refused.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|value| value.to_str().ok()) else {
        return false;
    };
    let source = headers
        .get(header::ORIGIN)
        .or_else(|| headers.get(header::REFERER))
        .and_then(|value| value.to_str().ok());
    let Some(source) = source else {
        return false;
    };
    let Some((scheme, rest)) = source.split_once("://") else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return false;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    authority.eq_ignore_ascii_case(host.trim())
}

/// Middleware of every console route: looks the route up in [`access::CONSOLE_ACCESS`],
/// refuses a cross-site `POST`, verifies the session cookie when there is one, sends a
/// caller without a session to the sign-in page, and refuses a role that may not.
pub async fn authorize(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let path = request
        .extensions()
        .get::<MatchedPath>()
        .map(|matched| matched.as_str().to_owned())
        .unwrap_or_else(|| request.uri().path().to_owned());
    let Some(entry) = access::required(request.method(), &path) else {
        return ConsoleError::new(StatusCode::FORBIDDEN, "This console page is open to no role.")
            .into_response();
    };
    if request.method() != Method::GET && request.method() != Method::HEAD && !same_origin(request.headers())
    {
        return ConsoleError::new(
            StatusCode::FORBIDDEN,
            "This form was not sent from a console page of this server, so it was refused.",
        )
        .into_response();
    }
    let signed_in = match session_token(request.headers()) {
        Some(token) => match verify(&state, &token) {
            Ok(principal) => Some(SignedIn { principal, token }),
            // An expired or foreign token is no session: sign in again.
            Err(_) => None,
        },
        None => None,
    };
    match (entry.role, signed_in) {
        (None, signed_in) => {
            if let Some(signed_in) = signed_in {
                request.extensions_mut().insert(signed_in);
            }
            next.run(request).await
        }
        (Some(_), None) => {
            if request.method() == Method::GET || request.method() == Method::HEAD {
                Redirect::to("/console").into_response()
            } else {
                ConsoleError::new(StatusCode::UNAUTHORIZED, "Sign in first.").into_response()
            }
        }
        (Some(role), Some(signed_in)) if !signed_in.may(role) => ConsoleError::new(
            StatusCode::FORBIDDEN,
            format!(
                "This page needs the {} role, which your token does not hold.",
                role.as_str()
            ),
        )
        .with_session(signed_in)
        .into_response(),
        (Some(_), Some(signed_in)) => {
            request.extensions_mut().insert(signed_in);
            next.run(request).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_str(value).expect("header value"));
        }
        headers
    }

    #[test]
    fn a_post_is_same_origin_only_when_origin_or_referer_names_the_host() {
        let host = ("host", "127.0.0.1:8082");
        assert!(same_origin(&headers(&[
            host,
            ("origin", "http://127.0.0.1:8082")
        ])));
        assert!(same_origin(&headers(&[
            host,
            ("referer", "http://127.0.0.1:8082/console/projections")
        ])));
        assert!(!same_origin(&headers(&[host, ("origin", "http://evil.example")])));
        assert!(!same_origin(&headers(&[
            host,
            ("origin", "http://127.0.0.1:8082.evil.example")
        ])));
        assert!(!same_origin(&headers(&[host, ("origin", "null")])));
        assert!(!same_origin(&headers(&[host])));
        // Origin wins over a Referer that would pass.
        assert!(!same_origin(&headers(&[
            host,
            ("origin", "http://evil.example"),
            ("referer", "http://127.0.0.1:8082/console")
        ])));
    }

    #[test]
    fn the_session_cookie_is_http_only_strict_and_secure_only_over_https() {
        let plain = start_cookie("t.o.k", &HeaderMap::new());
        assert!(plain.contains("HttpOnly"), "{plain}");
        assert!(plain.contains("SameSite=Strict"), "{plain}");
        assert!(plain.contains("Path=/console"), "{plain}");
        assert!(!plain.contains("Secure"), "{plain}");
        let behind_tls = start_cookie("t.o.k", &headers(&[("x-forwarded-proto", "https")]));
        assert!(behind_tls.contains("Secure"), "{behind_tls}");
    }

    #[test]
    fn the_session_token_is_read_from_among_other_cookies() {
        let found = session_token(&headers(&[("cookie", "a=1; eventledger_console=abc.def; b=2")]));
        assert_eq!(found.as_deref(), Some("abc.def"));
        assert_eq!(session_token(&headers(&[("cookie", "a=1")])), None);
    }
}
