//! Who is calling and what they may do (API.md, "Security"), the same in every process.
//!
//! Requests carry `Authorization: Bearer <JWT>`, verified with exactly one configured
//! algorithm: HS256 with `AUTH_JWT_SECRET`, or RS256/EdDSA with `AUTH_JWT_PUBLIC_KEY`.
//! Pinning the algorithm to the key refuses `alg: none` and algorithm confusion (an
//! HS256 token signed with a public RSA key as its secret). `exp` and `sub` are
//! required. Each process declares one table of routes and the role each needs; a route
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

/// Clock skew tolerated on `exp`, between the token's issuer and this process.
pub const EXPIRY_LEEWAY: Duration = Duration::from_secs(30);

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

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    /// Unknown role names are ignored, not fatal: a token may serve other systems too.
    #[serde(default)]
    roles: Vec<String>,
    exp: u64,
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
        match (&config.auth_jwt_secret, &config.auth_jwt_public_key) {
            (Some(_), Some(_)) => Err(AuthConfigError::TwoKeys),
            (Some(secret), None) if secret.len() < MIN_SECRET_BYTES => Err(AuthConfigError::WeakSecret),
            (Some(secret), None) => Ok(Self::hs256(secret.as_bytes())),
            (None, Some(pem)) => Self::public_key(pem.as_bytes()),
            (None, None) if config.insecure_development_auth => {
                tracing::warn!(
                    "INSECURE: --insecure-development-auth is on; tokens are verified with a public \
                     development secret and anyone can mint them. Never run this way in production."
                );
                Ok(Self::hs256(DEVELOPMENT_SECRET.as_bytes()))
            }
            (None, None) => Err(AuthConfigError::NoKey),
        }
    }

    pub fn hs256(secret: &[u8]) -> Self {
        Self::pinned(DecodingKey::from_secret(secret), Algorithm::HS256)
    }

    fn public_key(pem: &[u8]) -> Result<Self, AuthConfigError> {
        if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            return Ok(Self::pinned(key, Algorithm::RS256));
        }
        if let Ok(key) = DecodingKey::from_ed_pem(pem) {
            return Ok(Self::pinned(key, Algorithm::EdDSA));
        }
        Err(AuthConfigError::BadPublicKey)
    }

    fn pinned(key: DecodingKey, algorithm: Algorithm) -> Self {
        let mut validation = Validation::new(algorithm);
        validation.algorithms = vec![algorithm];
        validation.leeway = EXPIRY_LEEWAY.as_secs();
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_exp = true;
        Self {
            key: Arc::new(key),
            validation: Arc::new(validation),
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
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .ok_or(AuthError::MalformedHeader)?;
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
                |error| match error.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                    _ => AuthError::InvalidToken,
                },
            )?;
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
            Self::MissingToken | Self::MalformedHeader | Self::InvalidToken | Self::Expired => {
                StatusCode::UNAUTHORIZED
            }
            Self::Forbidden(_) | Self::Unlisted => StatusCode::FORBIDDEN,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::MissingToken | Self::MalformedHeader | Self::InvalidToken | Self::Expired => "unauthorized",
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
    pub fn required(&self, method: &Method, path: &str) -> Result<Option<Role>, AuthError> {
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
        let none = AuthConfig {
            auth_jwt_secret: None,
            auth_jwt_public_key: None,
            insecure_development_auth: false,
        };
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
}
