//! `command-api`: accepts commands over HTTP, decides them with the domain, appends the
//! events to the event store, and relays committed events to JetStream.
//!
//! # Layout
//!
//! - [`Config`]: flags and environment.
//! - [`run`]: checks the token key and the personal-data master key (no key, no start),
//!   connects, migrates, starts the committer, the relay, the transfer expiry and the
//!   idempotency purge, and serves until shutdown.
//! - [`app`]: the router, for tests to drive directly.
//! - [`access`]: the role each route needs, and the caller handlers record as `actor`.
//! - [`handlers`]: one function per command endpoint of API.md; [`dto`] their bodies;
//!   [`erasure`] answers a repeated erasure.
//! - [`extract`]: body and header parsing into problems; [`correlation`]: the
//!   `X-Correlation-Id` middleware.
//! - [`committer`]: decides against cached state and appends with group commit; [`cache`]
//!   is its bounded account cache.
//! - [`expiry`]: voids pending transfers whose timeout passed, one instance at a time.
//! - [`idempotency`]: `Idempotency-Key` storage, replay and purge.
//! - [`error`]: every failure as an `application/problem+json` answer.
//! - [`openapi`]: the document at `GET /openapi.json`.
//! - [`preconditions`]: `If-Match` and `If-None-Match` against an account's version.

pub mod access;
pub mod cache;
pub mod committer;
pub mod correlation;
pub mod dto;
pub mod erasure;
pub mod error;
pub mod expiry;
pub mod extract;
pub mod handlers;
pub mod idempotency;
pub mod openapi;
pub mod preconditions;

use std::any::Any;
use std::future::Future;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router, middleware};
use event_store::EventStore;
use event_store::pii::{PiiConfig, PiiConfigError, Vault};
use event_store::relay;
use service::auth::{AccessControl, AuthConfig, AuthConfigError, Authenticator, authorize};
use service::{self, CommonConfig, HttpLimits, Readiness, StartupError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::committer::{CommandBus, CommitterSettings};
use crate::error::ApiError;
use crate::extract::MAX_BODY_BYTES;
use crate::idempotency::InFlight;

/// The command API's settings; every flag also reads the environment variable named.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "command-api", version, about = "eventledger command API")]
pub struct Config {
    #[command(flatten)]
    pub common: CommonConfig,

    #[command(flatten)]
    pub auth: AuthConfig,

    #[command(flatten)]
    pub pii: PiiConfig,

    #[command(flatten)]
    pub limits: HttpLimits,

    /// Address to serve HTTP on.
    #[arg(long, env = "COMMAND_API_ADDR", default_value = "127.0.0.1:8081")]
    pub listen: String,

    /// The longest the expiry worker (on the one instance that holds its lock) sleeps
    /// between two looks at the deadlines, in milliseconds. It wakes at the earliest
    /// deadline and when a new one is stored anyway; this only bounds the wait after a
    /// wake-up was lost with a connection.
    #[arg(long, env = "EXPIRY_SWEEP_INTERVAL_MS", default_value_t = 10_000)]
    pub expiry_sweep_interval_ms: u64,
}

/// Why the command API stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the token settings cannot be used")]
    Auth(#[from] AuthConfigError),
    #[error("the personal-data master key cannot be used")]
    Pii(#[from] PiiConfigError),
    #[error("could not start")]
    Startup(#[from] StartupError),
    #[error("could not chain the events stored without a hash")]
    Chain(#[source] event_store::StoreError),
    #[error("the HTTP server failed")]
    Serve(#[source] std::io::Error),
}

/// What every handler shares, behind one `Arc`: axum clones the state for every
/// request, and one reference count is cheaper than a clone of every field (the pool,
/// the NATS client, the committer's queue, the vault). The committer still stops once
/// the last clone is dropped.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The fields of [`AppState`].
pub struct Shared {
    pub readiness: Readiness,
    /// The committer's queue and cache.
    pub commands: CommandBus,
    /// Idempotency keys whose first request is running on this instance.
    pub in_flight: InFlight,
    /// How callers are authenticated, and [`access::ACCESS`], for the router's middleware.
    pub access: AccessControl,
    /// Makes each new account's data key and seals its owner with it.
    pub vault: Vault,
}

impl AppState {
    /// The state over `store`, with a new committer. The committer stops once every clone
    /// of the state is dropped; await the handle to let it answer what was queued.
    pub fn new(
        store: EventStore,
        readiness: Readiness,
        authenticator: Authenticator,
        vault: Vault,
    ) -> (Self, JoinHandle<()>) {
        Self::with_settings(
            store,
            readiness,
            authenticator,
            vault,
            CommitterSettings::default(),
        )
    }

    /// As [`AppState::new`], with other bounds (tests use a tiny queue to see it fill).
    pub fn with_settings(
        store: EventStore,
        readiness: Readiness,
        authenticator: Authenticator,
        vault: Vault,
        settings: CommitterSettings,
    ) -> (Self, JoinHandle<()>) {
        let (commands, committer) = committer::spawn(store, settings);
        (
            Self(Arc::new(Shared {
                readiness,
                commands,
                in_flight: InFlight::default(),
                access: AccessControl {
                    authenticator,
                    table: access::ACCESS,
                },
                vault,
            })),
            committer,
        )
    }
}

/// The command API's routes: the commands of API.md, `GET /openapi.json`, and the
/// operational endpoints, each behind the role [`access::ACCESS`] gives it. The check is
/// a route layer, so it knows the matched route and an unknown path is still a plain 404.
pub fn app(state: AppState) -> Router {
    let readiness = state.readiness.clone();
    let control = state.access.clone();
    let (commands, mut document) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(handlers::open_account))
        .routes(routes!(handlers::deposit))
        .routes(routes!(handlers::withdraw))
        .routes(routes!(handlers::freeze))
        .routes(routes!(handlers::unfreeze))
        .routes(routes!(handlers::close))
        .routes(routes!(handlers::erase_personal_data))
        .routes(routes!(handlers::transfer))
        .routes(routes!(handlers::post_transfer))
        .routes(routes!(handlers::void_transfer))
        .split_for_parts();
    openapi::complete(&mut document);
    let document = Arc::new(openapi::bounded(&document));
    commands
        .with_state(state)
        .route(
            "/openapi.json",
            get(move || {
                let document = document.clone();
                async move { Json(document.as_ref().clone()) }
            }),
        )
        .merge(service::ops_router(readiness))
        .route_layer(middleware::from_fn_with_state(control, authorize))
        .route_layer(middleware::from_fn(service::http_observe::record_route))
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(correlation::correlate))
        .layer(CatchPanicLayer::custom(panic_to_problem))
}

/// A panic is a bug; the client still gets a problem body, never a dropped connection.
fn panic_to_problem(_panic: Box<dyn Any + Send + 'static>) -> Response {
    ApiError::Internal("a handler panicked".to_owned()).into_response()
}

/// Checks the token settings (a process with no key refuses to start, unless told it is
/// a development machine), connects to PostgreSQL (creating and migrating the database,
/// then chaining any event without a hash) and NATS, starts the committer, the relay and the idempotency purge, and serves until
/// `shutdown` completes.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    // First, before any connection: a misconfigured process should fail fast and plainly.
    config.common.check().map_err(StartupError::from)?;
    let authenticator = Authenticator::from_config(&config.auth)?;
    let vault = Vault::from_config(&config.pii, config.auth.insecure_development_auth)?;
    let pool = service::database::connect_and_migrate(
        &config.common.database_url,
        config.common.database_max_connections,
    )
    .await?;
    // Events from before the hash chain (or copied in by a tool) get their hashes now,
    // before the relay publishes them and before the first append (which would chain
    // them under its lock, holding up the commands behind it).
    event_store::chain::backfill(&pool)
        .await
        .map_err(RunError::Chain)?;
    let nats = service::nats::connect(&config.common.nats_url, "command-api").await?;
    let listener = service::serve::bind(&config.listen).await?;
    let store = EventStore::new(pool.clone());

    let stop = CancellationToken::new();
    let relay = tokio::spawn(relay::run(
        store.clone(),
        nats.clone(),
        config.common.relay_config("ledger-events"),
        stop.clone(),
    ));
    let purge = tokio::spawn(idempotency::purge_periodically(pool.clone(), stop.clone()));

    let (state, committer) = AppState::new(
        store,
        Readiness {
            pool: pool.clone(),
            nats,
        },
        authenticator,
        vault,
    );
    // The expiry worker holds a handle to the committer: it stops first, on its own token.
    let stop_expiry = CancellationToken::new();
    let expiry = tokio::spawn(expiry::run(
        pool,
        state.commands.clone(),
        std::time::Duration::from_millis(config.expiry_sweep_interval_ms.max(1)),
        stop_expiry.clone(),
    ));
    // Every command answers within the request timeout: none is exempt.
    let router = service::limits::apply(app(state), &config.limits, &[]);
    let served =
        service::serve::serve_with(listener, router, config.limits.header_read_timeout(), shutdown).await;
    stop_expiry.cancel();
    let _ = expiry.await;
    // The router, the expiry worker and with them every handle to the committer are
    // gone: it answers what is queued and stops. Only then stop the relay, so it
    // publishes those commits too.
    let _ = committer.await;
    stop.cancel();
    let _ = relay.await;
    let _ = purge.await;
    served.map_err(RunError::Serve)
}
