//! Test support for the three services' access tests (cargo feature `testing`, enabled
//! only as a dev-dependency, so no release build carries token forgery): the kinds of
//! caller every route is walked with, the token each one sends, forged ones included,
//! and what each may do. One definition, so the three walks cannot drift apart.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::json;

use crate::auth::{Role, mint_hs256};

/// Every kind of caller a route may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    NoToken,
    /// Signed with the right secret, but past its `exp` by more than the leeway.
    Expired,
    /// An admin token signed with a secret that is not the verifier's.
    WrongSecret,
    /// An unsigned admin token (`alg: none`) that would be valid for an hour.
    AlgNone,
    /// A valid token holding one role.
    Holding(Role),
}

/// The callers of a route walk: four that must be refused as unauthenticated, one per role.
pub const CALLERS: [Caller; 8] = [
    Caller::NoToken,
    Caller::Expired,
    Caller::WrongSecret,
    Caller::AlgNone,
    Caller::Holding(Role::Teller),
    Caller::Holding(Role::Viewer),
    Caller::Holding(Role::Auditor),
    Caller::Holding(Role::Admin),
];

/// How long the valid and forged tokens claim to live.
const LIFETIME: Duration = Duration::from_secs(3600);

fn now_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

impl Caller {
    /// The bearer token this caller sends to a service that verifies HS256 with
    /// `secret`; `None` for [`Caller::NoToken`]. A role holder's subject is
    /// `<role>-1`.
    pub fn token(self, secret: &[u8]) -> Option<String> {
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let minted = match self {
            Caller::NoToken => return None,
            Caller::Expired => jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                &json!({"sub": "late", "roles": ["admin"], "exp": now_seconds() - LIFETIME.as_secs()}),
                &jsonwebtoken::EncodingKey::from_secret(secret),
            )
            .ok(),
            Caller::WrongSecret => mint_hs256(
                b"not-the-secret-the-app-verifies-with!!",
                "mallory",
                &[Role::Admin],
                LIFETIME,
            )
            .ok(),
            Caller::AlgNone => Some(format!(
                "{}.{}.",
                engine.encode(r#"{"alg":"none","typ":"JWT"}"#),
                engine.encode(
                    json!({"sub": "mallory", "roles": ["admin"], "exp": now_seconds() + LIFETIME.as_secs()})
                        .to_string()
                )
            )),
            Caller::Holding(role) => {
                mint_hs256(secret, &format!("{}-1", role.as_str()), &[role], LIFETIME).ok()
            }
        };
        // Minting fails only on a secret shorter than the verifier accepts: a broken test.
        Some(minted.unwrap_or_else(|| panic!("cannot mint the token of {self:?}")))
    }

    /// Whether this caller may call a route that needs `role` (`None`: open to all).
    /// Admin may call everything.
    pub fn may_call(self, role: Option<Role>) -> bool {
        match (role, self) {
            (None, _) => true,
            (Some(_), Caller::Holding(Role::Admin)) => true,
            (Some(needed), Caller::Holding(held)) => needed == held,
            (Some(_), _) => false,
        }
    }

    /// Whether the token is valid, so a refusal is 403 rather than 401.
    pub fn is_authenticated(self) -> bool {
        matches!(self, Caller::Holding(_))
    }
}

/// (method, path, role name) of access entries, for comparing an access table with the
/// expectation written out in a test, as sets.
pub fn access_entries<'a>(
    items: impl Iterator<Item = (&'a str, &'a str, Option<Role>)>,
) -> BTreeSet<(String, String, Option<&'static str>)> {
    items
        .map(|(method, path, role)| (method.to_owned(), path.to_owned(), role.map(Role::as_str)))
        .collect()
}

/// The contract every process's routes must appear in: `docs/API.md` at the workspace root.
pub fn api_md() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/API.md");
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
}

/// The operations of an OpenAPI document (`paths` as JSON) that `docs/API.md` does not
/// name, as `METHOD /path`. API.md names an operation as `` `METHOD /path` `` in its
/// tables and text, optionally followed by a query string (`` `GET /accounts?limit=` ``).
pub fn routes_missing_from_api_md(document: &serde_json::Value, api_md: &str) -> Vec<String> {
    let mut missing = Vec::new();
    let Some(paths) = document["paths"].as_object() else {
        return vec!["the document has no paths".to_owned()];
    };
    for (path, item) in paths {
        let Some(item) = item.as_object() else { continue };
        for method in item.keys() {
            if !["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                continue;
            }
            let named = format!("`{} {path}", method.to_ascii_uppercase());
            let found = api_md
                .match_indices(&named)
                .any(|(at, _)| matches!(api_md[at + named.len()..].chars().next(), Some('`' | '?' | ' ')));
            if !found {
                missing.push(format!("{} {path}", method.to_ascii_uppercase()));
            }
        }
    }
    missing
}
