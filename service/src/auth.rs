//! Who is calling and what they may do (API.md, "Security"), the same in every process.
//!
//! Requests carry `Authorization: Bearer <JWT>`, verified with exactly one configured
//! algorithm: HS256 with `AUTH_JWT_SECRET`, or RS256/EdDSA with `AUTH_JWT_PUBLIC_KEY`.
//! Pinning the algorithm to the key refuses `alg: none` and algorithm confusion (an
//! HS256 token signed with a public RSA key as its secret). `exp` and `sub` are
//! required; the registered claims are checked as RFC 7519 §4.1 and RFC 8725 §3 ask:
//! `exp` and `nbf` by the `jsonwebtoken` crate's validation, with a named clock-skew
//! leeway ([`AuthConfig::auth_jwt_leeway_seconds`]); `iat` must not lie in the future;
//! `iss` and `aud` are checked when a deployment configures them, and a token naming an
//! audience is refused by a process that has none (RFC 7519 §4.1.3). NumericDate values
//! are JSON numbers, fractions allowed. The scheme name `Bearer` is matched without
//! regard to case (RFC 9110 §11.1). Each process declares one table of routes and the role each needs; a route
//! missing from the table is refused, so a new route is closed until someone opens it.
//!
//! A process with no key refuses to start, unless given `--insecure-development-auth`,
//! which verifies against a fixed, public development secret and says so loudly.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The HS256 secret of `--insecure-development-auth`. Public by design: it only ever
/// guards a developer's own machine, and its use is logged as a warning at start.
pub const DEVELOPMENT_SECRET: &str = "eventledger-development-secret-never-use-in-production";

/// Clock skew tolerated by default on `exp`, `nbf` and `iat`, between the token's issuer
/// and this process (`AUTH_JWT_LEEWAY_SECONDS`).
pub const DEFAULT_LEEWAY_SECONDS: u64 = 30;

/// The largest leeway a process accepts: RFC 8725 asks for a few minutes at most; more
/// would keep an expired token usable for long.
pub const MAX_LEEWAY_SECONDS: u64 = 300;

/// The roles of API.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Posts commands.
    Teller,
    /// Reads accounts and transfers.
    Viewer,
    /// Reads the audit log and account history.
    Auditor,
    /// Everything, including erasure and rebuilds.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Teller => "teller",
            Self::Viewer => "viewer",
            Self::Auditor => "auditor",
            Self::Admin => "admin",
        }
    }
}

/// The authenticated caller, put into each request's extensions for handlers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's `sub`; recorded as the `actor` of every event it causes.
    pub subject: String,
    pub roles: Vec<Role>,
}

impl Principal {
    /// Whether this caller may do what needs `role`; `admin` may do everything.
    pub fn may(&self, role: Role) -> bool {
        self.roles
            .iter()
            .any(|held| *held == role || *held == Role::Admin)
    }
}

/// The claims of a minted token.
#[derive(Debug, Serialize)]
struct Claims {
    sub: String,
    roles: Vec<String>,
    exp: u64,
}

/// The claims this service reads from a verified token; `exp`, `nbf`, `iss` and `aud`
/// are checked by the validation before this is read.
#[derive(Debug, Deserialize)]
struct VerifiedClaims {
    sub: String,
    /// Unknown role names are ignored, not fatal: a token may serve other systems too.
    #[serde(default)]
    roles: Vec<String>,
    /// A NumericDate (RFC 7519 §2): seconds since the epoch, fractions allowed. A value
    /// that is not a number makes the token invalid.
    #[serde(default)]
    iat: Option<f64>,
}

/// Settings for authentication, flattened into each binary's config.
#[derive(Debug, Clone, clap::Args)]
pub struct AuthConfig {
    /// HS256 secret for verifying tokens.
    #[arg(long, env = "AUTH_JWT_SECRET", hide_env_values = true)]
    pub auth_jwt_secret: Option<String>,

    /// PEM public key (RSA for RS256, Ed25519 for EdDSA) for verifying tokens.
    #[arg(long, env = "AUTH_JWT_PUBLIC_KEY")]
    pub auth_jwt_public_key: Option<String>,

    /// Verify tokens against a fixed, public development secret when no key is set.
    /// Never in production: anyone can mint tokens for it.
    #[arg(long, env = "EVENTLEDGER_INSECURE_DEVELOPMENT_AUTH")]
    pub insecure_development_auth: bool,

    /// Seconds of clock skew tolerated on `exp`, `nbf` and `iat`; at most 300.
    #[arg(long, env = "AUTH_JWT_LEEWAY_SECONDS", default_value_t = DEFAULT_LEEWAY_SECONDS)]
    pub auth_jwt_leeway_seconds: u64,

    /// When set, a token's `iss` must equal it (and is required).
    #[arg(long, env = "AUTH_JWT_ISSUER")]
    pub auth_jwt_issuer: Option<String>,

    /// When set, a token's `aud` must name it (and is required); when not, a token that
    /// names any audience is refused, as RFC 7519 §4.1.3 asks.
    #[arg(long, env = "AUTH_JWT_AUDIENCE")]
    pub auth_jwt_audience: Option<String>,
}

impl Default for AuthConfig {
    /// No key, the default leeway, no issuer or audience.
    fn default() -> Self {
        Self {
            auth_jwt_secret: None,
            auth_jwt_public_key: None,
            insecure_development_auth: false,
            auth_jwt_leeway_seconds: DEFAULT_LEEWAY_SECONDS,
            auth_jwt_issuer: None,
            auth_jwt_audience: None,
        }
    }
}

/// The registered-claim rules of [`AuthConfig`], apart from the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRules {
    /// Seconds of clock skew tolerated on `exp`, `nbf` and `iat`.
    pub leeway_seconds: u64,
    /// The required `iss`, if any.
    pub issuer: Option<String>,
    /// The audience this process is, if any.
    pub audience: Option<String>,
}

impl Default for ClaimRules {
    fn default() -> Self {
        Self {
            leeway_seconds: DEFAULT_LEEWAY_SECONDS,
            issuer: None,
            audience: None,
        }
    }
}

/// Why the authentication settings cannot be used; the process refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error(
        "no token key configured: set AUTH_JWT_SECRET or AUTH_JWT_PUBLIC_KEY, \
         or pass --insecure-development-auth on a development machine"
    )]
    NoKey,
    #[error("set only one of AUTH_JWT_SECRET and AUTH_JWT_PUBLIC_KEY")]
    TwoKeys,
    #[error("AUTH_JWT_SECRET is shorter than {MIN_SECRET_BYTES} bytes")]
    WeakSecret,
    #[error("AUTH_JWT_PUBLIC_KEY is neither an RSA nor an Ed25519 PEM public key")]
    BadPublicKey,
    #[error("AUTH_JWT_LEEWAY_SECONDS is over {MAX_LEEWAY_SECONDS}")]
    LeewayTooLong,
}

/// An HS256 secret shorter than SHA-256's output gives less security than the algorithm.
pub const MIN_SECRET_BYTES: usize = 32;

/// Verifies bearer tokens with one pinned algorithm and key.
///
/// Cheap to clone (key and rules are shared): the router's middleware state is cloned
/// for every request, and copying the key and the validation rules (a few heap
/// allocations) each time was measurable on the query API's busiest route.
#[derive(Clone)]
pub struct Authenticator {
    key: Arc<DecodingKey>,
    validation: Arc<Validation>,
    /// Seconds of clock skew tolerated on `iat`, which the validation does not check.
    leeway_seconds: u64,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Authenticator")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    pub fn from_config(config: &AuthConfig) -> Result<Self, AuthConfigError> {
        if config.auth_jwt_leeway_seconds > MAX_LEEWAY_SECONDS {
            return Err(AuthConfigError::LeewayTooLong);
        }
        let rules = ClaimRules {
            leeway_seconds: config.auth_jwt_leeway_seconds,
            issuer: config.auth_jwt_issuer.clone(),
            audience: config.auth_jwt_audience.clone(),
        };
        match (&config.auth_jwt_secret, &config.auth_jwt_public_key) {
            (Some(_), Some(_)) => Err(AuthConfigError::TwoKeys),
            (Some(secret), None) if secret.len() < MIN_SECRET_BYTES => Err(AuthConfigError::WeakSecret),
            (Some(secret), None) => Ok(Self::hs256_with(secret.as_bytes(), &rules)),
            (None, Some(pem)) => Self::public_key(pem.as_bytes(), &rules),
            (None, None) if config.insecure_development_auth => {
                tracing::warn!(
                    "INSECURE: --insecure-development-auth is on; tokens are verified with a public \
                     development secret and anyone can mint them. Never run this way in production."
                );
                Ok(Self::hs256_with(DEVELOPMENT_SECRET.as_bytes(), &rules))
            }
            (None, None) => Err(AuthConfigError::NoKey),
        }
    }

    /// HS256 with `secret` and the default [`ClaimRules`].
    pub fn hs256(secret: &[u8]) -> Self {
        Self::hs256_with(secret, &ClaimRules::default())
    }

    /// HS256 with `secret` and `rules`.
    pub fn hs256_with(secret: &[u8], rules: &ClaimRules) -> Self {
        Self::pinned(DecodingKey::from_secret(secret), Algorithm::HS256, rules)
    }

    fn public_key(pem: &[u8], rules: &ClaimRules) -> Result<Self, AuthConfigError> {
        if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            return Ok(Self::pinned(key, Algorithm::RS256, rules));
        }
        if let Ok(key) = DecodingKey::from_ed_pem(pem) {
            return Ok(Self::pinned(key, Algorithm::EdDSA, rules));
        }
        Err(AuthConfigError::BadPublicKey)
    }

    fn pinned(key: DecodingKey, algorithm: Algorithm, rules: &ClaimRules) -> Self {
        let mut validation = Validation::new(algorithm);
        validation.algorithms = vec![algorithm];
        validation.leeway = rules.leeway_seconds;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if let Some(issuer) = &rules.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        // With no audience configured the validation still refuses a token that names
        // one; with one, `aud` is required and must name it.
        validation.validate_aud = true;
        if let Some(audience) = &rules.audience {
            validation.set_audience(&[audience]);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        Self {
            key: Arc::new(key),
            validation: Arc::new(validation),
            leeway_seconds: rules.leeway_seconds,
        }
    }

    /// The caller of a request with these headers.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, AuthError> {
        let value = headers
            .get(header::AUTHORIZATION)
            .ok_or(AuthError::MissingToken)?;
        let token = value
            .to_str()
            .ok()
            .and_then(bearer_token)
            .ok_or(AuthError::MalformedHeader)?;
        let data =
            jsonwebtoken::decode::<VerifiedClaims>(token, &self.key, &self.validation).map_err(|error| {
                match error.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                    jsonwebtoken::errors::ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                    _ => AuthError::InvalidToken,
                }
            })?;
        // RFC 7519 §4.1.6 leaves `iat` to the application; one in the future (beyond the
        // skew) was not issued by a sane clock, so the token is not trusted.
        if let Some(issued_at) = data.claims.iat {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
            if !issued_at.is_finite() || issued_at > (now.as_secs() + self.leeway_seconds) as f64 {
                return Err(AuthError::InvalidToken);
            }
        }
        if !is_recordable_actor(&data.claims.sub) {
            return Err(AuthError::InvalidToken);
        }
        let roles = data
            .claims
            .roles
            .iter()
            .filter_map(|role| serde_json::from_value(serde_json::Value::String(role.clone())).ok())
            .collect();
        Ok(Principal {
            subject: data.claims.sub,
            roles,
        })
    }
}

/// The longest `sub` accepted, in characters: the bound of `idempotency_keys.actor`, so
/// that no caller's key can fail to store (and with it the group commit its command
/// shares with others).
pub const MAX_ACTOR_CHARS: usize = 255;

/// Whether `subject` can be stored as an actor: 1 to [`MAX_ACTOR_CHARS`] characters, none
/// refused by the ledger's text rule (`domain::text::first_refused_char`: PostgreSQL
/// refuses NUL in `text` and `jsonb`, and the audit log must not carry control, format or
/// invisible characters that make two actors look alike). Every process refuses a
/// validly signed token with another `sub` as invalid (API.md, "Security"), not only the
/// command API that records it: a caller is the same caller, or none, everywhere.
pub fn is_recordable_actor(subject: &str) -> bool {
    let chars = subject.chars().count();
    (1..=MAX_ACTOR_CHARS).contains(&chars) && domain::text::first_refused_char(subject).is_none()
}

/// The token of an `Authorization` value `<scheme> <token68>` whose scheme is `Bearer`
/// in any case (RFC 9110 §11.1, RFC 6750 §2.1); spaces around the token are tolerated,
/// spaces inside it (a second word) are not.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim_start().split_once([' ', '\t'])?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim_matches([' ', '\t']);
    (!token.is_empty() && !token.contains([' ', '\t'])).then_some(token)
}

/// Mints an HS256 token; for development and tests (the `mint-token` command).
pub fn mint_hs256(
    secret: &[u8],
    subject: &str,
    roles: &[Role],
    lifetime: Duration,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let claims = Claims {
        sub: subject.to_owned(),
        roles: roles.iter().map(|role| role.as_str().to_owned()).collect(),
        exp: (now + lifetime).as_secs(),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
}

/// Why a request was refused before reaching its handler.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// 401: no `Authorization` header.
    #[error("this request needs an `Authorization: Bearer <token>` header")]
    MissingToken,
    /// 401: the header is not `Bearer <token>`.
    #[error("the Authorization header must be `Bearer <token>`")]
    MalformedHeader,
    /// 401: bad signature, wrong algorithm, missing claims, or not a JWT at all.
    #[error("the token is not valid for this service")]
    InvalidToken,
    /// 401: past its `exp`.
    #[error("the token has expired")]
    Expired,
    /// 401: before its `nbf`.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// 403: authenticated, but the role is missing.
    #[error("this needs the `{}` role", .0.as_str())]
    Forbidden(Role),
    /// 403: the route is in no access table, so nobody may call it.
    #[error("this route is not open to any role")]
    Unlisted,
}

impl AuthError {
    fn status(&self) -> StatusCode {
        match self {
            Self::MissingToken
            | Self::MalformedHeader
            | Self::InvalidToken
            | Self::Expired
            | Self::NotYetValid => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) | Self::Unlisted => StatusCode::FORBIDDEN,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::MissingToken
            | Self::MalformedHeader
            | Self::InvalidToken
            | Self::Expired
            | Self::NotYetValid => "unauthorized",
            Self::Forbidden(_) | Self::Unlisted => "forbidden",
        }
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = serde_json::json!({
            "type": format!("https://eventledger.dev/problems/{}", self.code()),
            "title": status.canonical_reason().unwrap_or("Unauthorized"),
            "status": status.as_u16(),
            "detail": self.to_string(),
        });
        let mut response = (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body.to_string(),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// Who may call a route: `None` means anyone, without a token.
#[derive(Debug, Clone)]
pub struct Access {
    pub method: Method,
    /// The route's path as registered in the router (`/accounts/{id}`).
    pub path: &'static str,
    pub role: Option<Role>,
}

/// The operational routes every process serves without a token.
pub const OPS_ACCESS: [Access; 3] = [
    Access {
        method: Method::GET,
        path: "/healthz",
        role: None,
    },
    Access {
        method: Method::GET,
        path: "/readyz",
        role: None,
    },
    Access {
        method: Method::GET,
        path: "/metrics",
        role: None,
    },
];

/// A process's access table and its authenticator, for [`authorize`].
#[derive(Debug, Clone)]
pub struct AccessControl {
    pub authenticator: Authenticator,
    pub table: &'static [Access],
}

impl AccessControl {
    /// The role a request needs: `Ok(None)` for open routes, `Err` for unlisted ones.
    /// `HEAD` is a `GET` without the body (RFC 9110 §9.3.2), so it needs what `GET` needs.
    pub fn required(&self, method: &Method, path: &str) -> Result<Option<Role>, AuthError> {
        let method = if method == Method::HEAD {
            &Method::GET
        } else {
            method
        };
        OPS_ACCESS
            .iter()
            .chain(self.table)
            .find(|access| access.method == method && access.path == path)
            .map(|access| access.role)
            .ok_or(AuthError::Unlisted)
    }
}

/// Middleware (`axum::middleware::from_fn_with_state`, applied with `route_layer` so
/// unknown paths still 404): authenticates the caller, checks the route's role, and puts
/// the [`Principal`] into the request's extensions.
pub async fn authorize(State(control): State<AccessControl>, mut request: Request, next: Next) -> Response {
    let path = request
        .extensions()
        .get::<MatchedPath>()
        .map(|matched| matched.as_str().to_owned())
        .unwrap_or_else(|| request.uri().path().to_owned());
    let role = match control.required(request.method(), &path) {
        Ok(role) => role,
        Err(error) => return error.into_response(),
    };
    if let Some(role) = role {
        let principal = match control.authenticator.authenticate(request.headers()) {
            Ok(principal) => principal,
            Err(error) => return error.into_response(),
        };
        if !principal.may(role) {
            return AuthError::Forbidden(role).into_response();
        }
        request.extensions_mut().insert(principal);
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"a-test-secret-that-is-long-enough-for-hs256";

    fn headers(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            format!("Bearer {token}").parse().expect("header"),
        );
        headers
    }

    fn unsigned(claims: &str, alg: &str) -> String {
        use base64::Engine;
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            engine.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#)),
            engine.encode(claims)
        )
    }

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

    #[test]
    fn a_validly_signed_token_whose_sub_is_no_recordable_actor_is_refused() {
        // The same Authenticator serves all three processes, so none accepts it.
        for subject in ["zw\u{200B}sp", "bell\u{7}", "", &"a".repeat(MAX_ACTOR_CHARS + 1)] {
            let token = mint_hs256(SECRET, subject, &[Role::Admin], Duration::from_secs(60)).expect("mint");
            let refusal = Authenticator::hs256(SECRET).authenticate(&headers(&token));
            assert!(
                matches!(refusal, Err(AuthError::InvalidToken)),
                "{subject:?}: {refusal:?}"
            );
        }
    }

    #[test]
    fn a_valid_token_gives_its_subject_and_known_roles() {
        let token = mint_hs256(
            SECRET,
            "alice",
            &[Role::Teller, Role::Viewer],
            Duration::from_secs(60),
        )
        .expect("mint");
        let principal = Authenticator::hs256(SECRET)
            .authenticate(&headers(&token))
            .expect("valid");
        assert_eq!(principal.subject, "alice");
        assert!(principal.may(Role::Teller) && principal.may(Role::Viewer));
        assert!(!principal.may(Role::Auditor) && !principal.may(Role::Admin));
    }

    #[test]
    fn an_admin_may_do_everything() {
        let admin = Principal {
            subject: "root".into(),
            roles: vec![Role::Admin],
        };
        assert!(
            [Role::Teller, Role::Viewer, Role::Auditor, Role::Admin]
                .iter()
                .all(|role| admin.may(*role))
        );
    }

    #[test]
    fn a_token_signed_with_another_secret_is_refused() {
        let token = mint_hs256(
            b"another-secret-of-at-least-32-bytes!!",
            "mallory",
            &[Role::Admin],
            Duration::from_secs(60),
        )
        .expect("mint");
        assert_eq!(
            Authenticator::hs256(SECRET).authenticate(&headers(&token)),
            Err(AuthError::InvalidToken)
        );
    }

    #[test]
    fn an_expired_token_is_refused_beyond_the_leeway() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let claims = Claims {
            sub: "alice".into(),
            roles: vec!["admin".into()],
            exp: now - 120,
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .expect("encode");
        assert_eq!(
            Authenticator::hs256(SECRET).authenticate(&headers(&token)),
            Err(AuthError::Expired)
        );
    }

    #[test]
    fn a_token_without_exp_or_with_alg_none_is_refused() {
        let authenticator = Authenticator::hs256(SECRET);
        let none = unsigned(r#"{"sub":"mallory","roles":["admin"],"exp":99999999999}"#, "none");
        assert_eq!(
            authenticator.authenticate(&headers(&none)),
            Err(AuthError::InvalidToken)
        );
        #[derive(Serialize)]
        struct NoExpiry {
            sub: &'static str,
            roles: Vec<&'static str>,
        }
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &NoExpiry {
                sub: "alice",
                roles: vec!["admin"],
            },
            &EncodingKey::from_secret(SECRET),
        )
        .expect("encode");
        assert_eq!(
            authenticator.authenticate(&headers(&token)),
            Err(AuthError::InvalidToken)
        );
    }

    #[test]
    fn a_token_of_another_algorithm_is_refused() {
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &Claims {
                sub: "alice".into(),
                roles: vec![],
                exp: u64::MAX / 2,
            },
            &EncodingKey::from_secret(SECRET),
        )
        .expect("encode");
        assert_eq!(
            Authenticator::hs256(SECRET).authenticate(&headers(&token)),
            Err(AuthError::InvalidToken)
        );
    }

    #[test]
    fn missing_and_malformed_headers_are_told_apart() {
        let authenticator = Authenticator::hs256(SECRET);
        assert_eq!(
            authenticator.authenticate(&HeaderMap::new()),
            Err(AuthError::MissingToken)
        );
        let mut basic = HeaderMap::new();
        basic.insert(
            header::AUTHORIZATION,
            "Basic YWxpY2U6c2VjcmV0".parse().expect("header"),
        );
        assert_eq!(
            authenticator.authenticate(&basic),
            Err(AuthError::MalformedHeader)
        );
        assert_eq!(
            authenticator.authenticate(&headers("not.a.jwt")),
            Err(AuthError::InvalidToken)
        );
    }

    #[test]
    fn a_process_without_a_key_refuses_to_start_unless_told_it_is_development() {
        let none = AuthConfig::default();
        assert!(matches!(
            Authenticator::from_config(&none),
            Err(AuthConfigError::NoKey)
        ));
        let weak = AuthConfig {
            auth_jwt_secret: Some("short".into()),
            ..none.clone()
        };
        assert!(matches!(
            Authenticator::from_config(&weak),
            Err(AuthConfigError::WeakSecret)
        ));
        let development = AuthConfig {
            insecure_development_auth: true,
            ..none
        };
        let authenticator = Authenticator::from_config(&development).expect("development");
        let token = mint_hs256(
            DEVELOPMENT_SECRET.as_bytes(),
            "dev",
            &[Role::Admin],
            Duration::from_secs(60),
        )
        .expect("mint");
        assert!(authenticator.authenticate(&headers(&token)).is_ok());
    }

    #[test]
    fn an_unlisted_route_is_refused_and_ops_routes_are_open() {
        let control = AccessControl {
            authenticator: Authenticator::hs256(SECRET),
            table: &[],
        };
        assert_eq!(control.required(&Method::GET, "/healthz"), Ok(None));
        assert_eq!(
            control.required(&Method::POST, "/healthz"),
            Err(AuthError::Unlisted)
        );
        assert_eq!(
            control.required(&Method::GET, "/secret"),
            Err(AuthError::Unlisted)
        );
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs()
    }

    fn signed(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .expect("encode")
    }

    fn authorization(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, value.parse().expect("header"));
        headers
    }

    #[test]
    fn the_bearer_scheme_is_matched_in_any_case_and_other_schemes_and_shapes_are_malformed() {
        let authenticator = Authenticator::hs256(SECRET);
        let token = mint_hs256(SECRET, "alice", &[Role::Admin], Duration::from_secs(60)).expect("mint");
        for value in [
            format!("Bearer {token}"),
            format!("bearer {token}"),
            format!("BEARER {token}"),
            format!("bEaReR {token}"),
            format!("Bearer   {token}"),
            format!("Bearer\t{token}"),
            format!(" Bearer {token} "),
        ] {
            assert!(
                authenticator.authenticate(&authorization(&value)).is_ok(),
                "{value:?} should be accepted"
            );
        }
        for value in [
            format!("Basic {token}"),
            format!("Bearers {token}"),
            format!("Bearer{token}"),
            "Bearer".to_owned(),
            "Bearer    ".to_owned(),
            format!("Bearer {token} extra"),
            format!("Token {token}"),
        ] {
            assert_eq!(
                authenticator.authenticate(&authorization(&value)),
                Err(AuthError::MalformedHeader),
                "{value:?}"
            );
        }
    }

    #[test]
    fn a_token_before_its_nbf_is_refused_and_within_the_leeway_accepted() {
        let authenticator = Authenticator::hs256(SECRET);
        let early = signed(
            serde_json::json!({"sub": "a", "roles": ["admin"], "nbf": now() + 3600, "exp": now() + 7200}),
        );
        assert_eq!(
            authenticator.authenticate(&headers(&early)),
            Err(AuthError::NotYetValid)
        );
        let skewed = signed(serde_json::json!({"sub": "a", "nbf": now() + 10, "exp": now() + 7200}));
        assert!(authenticator.authenticate(&headers(&skewed)).is_ok());
    }

    #[test]
    fn a_token_issued_in_the_future_is_refused() {
        let authenticator = Authenticator::hs256(SECRET);
        let future = signed(serde_json::json!({"sub": "a", "iat": now() + 3600, "exp": now() + 7200}));
        assert_eq!(
            authenticator.authenticate(&headers(&future)),
            Err(AuthError::InvalidToken)
        );
        let past = signed(serde_json::json!({"sub": "a", "iat": now() - 10, "exp": now() + 7200}));
        assert!(authenticator.authenticate(&headers(&past)).is_ok());
    }

    #[test]
    fn numeric_dates_are_json_numbers_fractions_allowed_and_anything_else_is_refused() {
        let authenticator = Authenticator::hs256(SECRET);
        let fraction =
            signed(serde_json::json!({"sub": "a", "exp": now() as f64 + 600.5, "iat": now() as f64 - 0.25}));
        assert!(authenticator.authenticate(&headers(&fraction)).is_ok());
        for claims in [
            serde_json::json!({"sub": "a", "exp": (now() + 600).to_string()}),
            serde_json::json!({"sub": "a", "exp": -1}),
            serde_json::json!({"sub": "a", "exp": null}),
            serde_json::json!({"sub": "a", "exp": now() + 600, "nbf": "soon"}),
            serde_json::json!({"sub": "a", "exp": now() + 600, "iat": "yesterday"}),
        ] {
            let token = signed(claims.clone());
            assert!(authenticator.authenticate(&headers(&token)).is_err(), "{claims}");
        }
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let rules = ClaimRules {
            issuer: Some("https://issuer.example".into()),
            audience: Some("eventledger".into()),
            ..ClaimRules::default()
        };
        let strict = Authenticator::hs256_with(SECRET, &rules);
        let exp = now() + 600;
        let good = signed(
            serde_json::json!({"sub": "a", "exp": exp, "iss": "https://issuer.example", "aud": ["other", "eventledger"]}),
        );
        assert!(strict.authenticate(&headers(&good)).is_ok());
        for claims in [
            serde_json::json!({"sub": "a", "exp": exp, "aud": "eventledger"}),
            serde_json::json!({"sub": "a", "exp": exp, "iss": "https://issuer.example"}),
            serde_json::json!({"sub": "a", "exp": exp, "iss": "https://evil.example", "aud": "eventledger"}),
            serde_json::json!({"sub": "a", "exp": exp, "iss": "https://issuer.example", "aud": "other"}),
        ] {
            let token = signed(claims.clone());
            assert_eq!(
                strict.authenticate(&headers(&token)),
                Err(AuthError::InvalidToken),
                "{claims}"
            );
        }
        // Without a configured audience, a token meant for some audience is not for us.
        let lax = Authenticator::hs256(SECRET);
        let aimed = signed(serde_json::json!({"sub": "a", "exp": exp, "aud": "elsewhere"}));
        assert_eq!(lax.authenticate(&headers(&aimed)), Err(AuthError::InvalidToken));
    }

    #[test]
    fn a_leeway_over_the_maximum_refuses_to_start() {
        let config = AuthConfig {
            auth_jwt_secret: Some(String::from_utf8(SECRET.to_vec()).expect("utf-8")),
            auth_jwt_leeway_seconds: MAX_LEEWAY_SECONDS + 1,
            ..AuthConfig::default()
        };
        assert!(matches!(
            Authenticator::from_config(&config),
            Err(AuthConfigError::LeewayTooLong)
        ));
    }

    #[test]
    fn head_needs_what_get_needs() {
        const TABLE: &[Access] = &[Access {
            method: Method::GET,
            path: "/accounts/{id}",
            role: Some(Role::Viewer),
        }];
        let control = AccessControl {
            authenticator: Authenticator::hs256(SECRET),
            table: TABLE,
        };
        assert_eq!(control.required(&Method::HEAD, "/healthz"), Ok(None));
        assert_eq!(
            control.required(&Method::HEAD, "/accounts/{id}"),
            Ok(Some(Role::Viewer))
        );
        assert_eq!(
            control.required(&Method::OPTIONS, "/healthz"),
            Err(AuthError::Unlisted)
        );
    }
}
