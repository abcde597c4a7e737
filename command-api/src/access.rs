//! Who may call each route of the command API (API.md, "Security"): one table, read by
//! the `authorize` middleware of `service::auth` on every request and by the
//! test that walks every route with every role. A route missing here is refused to
//! everyone, so a new command stays closed until it is listed.
//!
//! Also [`Caller`], the extractor that hands a handler the authenticated caller whose
//! `sub` becomes the `actor` of the events it causes and scopes its idempotency keys.

use axum::extract::FromRequestParts;
use axum::http::Method;
use axum::http::request::Parts;
use service::auth::{Access, AuthError, Principal, Role};

/// Every route the command API serves besides the operational ones (`OPS_ACCESS`), and
/// the role it needs. Commands are a teller's work; erasing personal data is an admin's
/// alone, because it cannot be undone. `admin` passes every check.
pub const ACCESS: &[Access] = &[
    Access {
        method: Method::POST,
        path: "/accounts",
        role: Some(Role::Teller),
    },
    Access {
        method: Method::POST,
        path: "/accounts/{id}/deposits",
        role: Some(Role::Teller),
    },
    Access {
        method: Method::POST,
        path: "/accounts/{id}/withdrawals",
        role: Some(Role::Teller),
    },
    Access {
        method: Method::POST,
        path: "/accounts/{id}/freeze",
        role: Some(Role::Teller),
    },
    Access {
        method: Method::POST,
        path: "/accounts/{id}/unfreeze",
        role: Some(Role::Teller),
    },
    Access {
        method: Method::POST,
        path: "/accounts/{id}/close",
        role: Some(Role::Teller),
    },
    Access {
        method: Method::DELETE,
        path: "/accounts/{id}/personal-data",
        role: Some(Role::Admin),
    },
    Access {
        method: Method::POST,
        path: "/transfers",
        role: Some(Role::Teller),
    },
    Access {
        method: Method::POST,
        path: "/transfers/{id}/post",
        role: Some(Role::Teller),
    },
    Access {
        method: Method::POST,
        path: "/transfers/{id}/void",
        role: Some(Role::Teller),
    },
    // The contract itself is public: clients need it before they hold a token.
    Access {
        method: Method::GET,
        path: "/openapi.json",
        role: None,
    },
];

/// Every process refuses a token whose `sub` could not be recorded as an actor
/// (`service::auth`); the command API is where it is recorded.
pub use service::auth::{MAX_ACTOR_CHARS, is_recordable_actor};

/// The authenticated caller of a command, put into the request by the `authorize`
/// middleware. A request without one (a route opened to everyone by mistake) is
/// refused with 401 rather than recorded under a made-up actor.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let principal = parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or(AuthError::MissingToken)?;
        // `authenticate` refused every `sub` that is not a recordable actor.
        debug_assert!(is_recordable_actor(&principal.subject));
        Ok(Caller(principal))
    }
}
