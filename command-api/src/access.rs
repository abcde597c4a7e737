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
    // The contract itself is public: clients need it before they hold a token.
    Access {
        method: Method::GET,
        path: "/openapi.json",
        role: None,
    },
];

/// The longest `sub` accepted as an actor, in characters: the bound of
/// `idempotency_keys.actor`, so that no caller's key can fail to store (and with it the
/// group commit its command shares with others).
pub const MAX_ACTOR_CHARS: usize = 255;

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
        if !is_recordable_actor(&principal.subject) {
            return Err(AuthError::InvalidToken);
        }
        Ok(Caller(principal))
    }
}

/// Whether `subject` can be stored as an actor: 1 to [`MAX_ACTOR_CHARS`] characters, none
/// refused by the ledger's text rule (`domain::text::is_refused_char`: PostgreSQL refuses
/// NUL in `text` and `jsonb`, and the audit log must not carry control, format or
/// invisible characters that make two actors look alike). A validly signed token with
/// another `sub` is still not one this service can record, so it is refused as invalid.
pub fn is_recordable_actor(subject: &str) -> bool {
    let chars = subject.chars().count();
    (1..=MAX_ACTOR_CHARS).contains(&chars) && domain::text::first_refused_char(subject).is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_actor_must_be_short_visible_text() {
        assert!(is_recordable_actor("alice@example.com"));
        assert!(is_recordable_actor(&"é".repeat(MAX_ACTOR_CHARS)));
        assert!(!is_recordable_actor(""));
        assert!(!is_recordable_actor(&"a".repeat(MAX_ACTOR_CHARS + 1)));
        assert!(!is_recordable_actor("nul\0inside"));
        assert!(!is_recordable_actor("line\nbreak"));
        for invisible in [
            "alice\u{00AD}",
            "al\u{200B}ice",
            "\u{202E}ecila",
            "alice\u{E000}",
            "a\u{3164}",
        ] {
            assert!(!is_recordable_actor(invisible), "{invisible:?}");
        }
    }
}
