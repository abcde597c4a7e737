//! `query-api`: serves the read models, the audit log and account history, read-only.
//!
//! # Layout
//!
//! - [`Config`]: flags and environment.
//! - [`run`]: checks the token key (no key, no start), migrates as the owner, then
//!   connects as the read-only role and serves until shutdown.
//! - [`app`]: the router, for tests to drive directly.
//! - [`access`]: the role each route needs.
//! - [`database`]: the reader's connections (least privilege).
//! - [`progress`]: each read model's and the log's position, kept current by one
//!   LISTEN connection; [`consistency`] waits on it for `min_position`.
//! - [`views`]: accounts, transactions, transfers (read models).
//! - [`audit`], [`live`]: the audit log, paged and as a live SSE tail.
//! - [`history`]: an account folded from its events up to a position or time.
//! - [`verify`]: `GET /audit/verify`, the tamper-evident chain recomputed over a range.
//! - [`owners`]: opens sealed owners for answers, `null` once erased.
//! - [`projections`]: `GET /projections`.
//! - [`params`], [`cursor`]: parsing parameters and opaque cursors into 400s.
//! - [`error`]: every failure as `application/problem+json`.
//! - [`openapi`]: `GET /openapi.json`.
//! - [`console`]: the web console under `/console` (HTML, session sign-in).

pub mod access;
pub mod audit;
pub mod consistency;
pub mod console;
pub mod cursor;
pub mod database;
pub mod error;
pub mod history;
pub mod live;
pub mod openapi;
pub mod owners;
pub mod params;
pub mod progress;
pub mod projections;
pub mod verify;
pub mod views;

use std::future::Future;
use std::sync::Arc;

use axum::http::Uri;
use axum::routing::get;
use axum::{Json, Router, middleware};
use event_store::pii::{PiiConfig, PiiConfigError, Vault};
use service::auth::{AccessControl, AuthConfig, AuthConfigError, Authenticator, authorize};
use service::{self, CommonConfig, HttpLimits, Readiness, StartupError};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::QueryError;
use crate::live::LiveTails;
use crate::progress::Progress;

/// The query-api's settings; every flag also reads the environment variable named.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "query-api", version, about = "eventledger query-api")]
pub struct Config {
    #[command(flatten)]
    pub common: CommonConfig,

    #[command(flatten)]
    pub auth: AuthConfig,

    #[command(flatten)]
    pub pii: PiiConfig,

    /// Address to serve HTTP on.
    #[arg(long, env = "QUERY_API_ADDR", default_value = "127.0.0.1:8082")]
    pub listen: String,

    #[command(flatten)]
    pub limits: HttpLimits,

    /// Most live tails (`GET /audit/events/live`) open at once; past it a new one is 503.
    /// They are exempt from the request timeout, so this is their bound.
    #[arg(long, env = "QUERY_API_MAX_LIVE_TAILS", default_value_t = live::MAX_LIVE_TAILS,
          value_parser = service::limits::parse_positive)]
    pub max_live_tails: usize,

    /// The projector's admin API (`http://127.0.0.1:8083`), which the console's rebuild
    /// button calls with the signed-in admin's token; without it the button is not shown.
    #[arg(long, env = "PROJECTOR_URL")]
    pub projector_url: Option<String>,

    /// PostgreSQL URL the queries run with: a role that may only read. Defaults to
    /// `--database-url` with the user `eventledger_reader` and no password (enough
    /// under trust authentication); give one with a password otherwise. It may name a
    /// streaming replica (a hot standby): every read then goes there, and
    /// `min_position` waits until the replica has replayed the position.
    #[arg(long, env = "QUERY_API_READER_DATABASE_URL")]
    pub reader_database_url: Option<String>,
}

/// Why the query-api stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the token settings cannot be used")]
    Auth(#[from] AuthConfigError),
    #[error("the personal-data master key cannot be used")]
    Pii(#[from] PiiConfigError),
    #[error("could not start")]
    Startup(#[from] StartupError),
    #[error("could not connect as the read-only role")]
    Reader(#[source] sqlx::Error),
    #[error("the projector's URL cannot be used")]
    Projector(#[source] reqwest::Error),
    #[error("the HTTP server failed")]
    Serve(#[source] std::io::Error),
}

/// What every handler shares, behind one `Arc`.
///
/// Why not the fields themselves: axum clones the state for every request, and a clone
/// of every field (pools, the NATS client, the vault, the token) and its drop took about
/// 4% of the CPU of a `GET /accounts/{id}`. One reference count costs next to nothing.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }

    /// The same state with another bound on live tails.
    pub fn with_live_tails(self, live_tails: LiveTails) -> Self {
        Self::new(Shared {
            live_tails,
            ..Arc::unwrap_or_clone(self.0)
        })
    }

    /// The same state with the console's link to the projector's admin API.
    pub fn with_projector(self, projector: Option<console::projector::ProjectorLink>) -> Self {
        Self::new(Shared {
            projector,
            ..Arc::unwrap_or_clone(self.0)
        })
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The fields of [`AppState`].
#[derive(Clone)]
pub struct Shared {
    /// Connections as the read-only role; every query runs on these.
    pub pool: PgPool,
    /// `GET /accounts/{id}` lookups, read in batches on `pool`.
    pub account_reads: views::account_reads::AccountReads,
    /// Positions of the read models and the log, for read-your-writes.
    pub progress: Progress,
    /// The bound on open live tails.
    pub live_tails: LiveTails,
    /// Cancelled when the process stops, so that live tails end.
    pub stop: CancellationToken,
    pub readiness: Readiness,
    /// Opens the sealed owners of accounts, audit envelopes and history.
    pub vault: Vault,
    /// How callers are authenticated, and [`access::ACCESS`], for the router's middleware.
    pub access: AccessControl,
    /// The projector's admin API, for the console's rebuild button; `None` hides it.
    pub projector: Option<console::projector::ProjectorLink>,
}

/// The query routes and their OpenAPI document, from one declaration each (the
/// handler's `#[utoipa::path]`), so that the router, the document and, through the test
/// comparing the document with [`access::ACCESS`], the access table cannot drift.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(views::accounts::list_accounts))
        .routes(routes!(views::accounts::get_account))
        .routes(routes!(views::transactions::list_transactions))
        .routes(routes!(history::account_history))
        .routes(routes!(views::transfers::get_transfer))
        .routes(routes!(views::transfers::list_transfers))
        .routes(routes!(audit::list_events))
        .routes(routes!(live::live_events))
        .routes(routes!(audit::stream_events))
        .routes(routes!(verify::verify_chain))
        .routes(routes!(projections::list_projections))
}

/// The query-api's routes, each behind the role [`access::ACCESS`] gives it. The check
/// is the outermost route layer, so it knows the matched route, an unknown path is
/// still a plain 404, and a refused caller learns nothing, not even the position header.
pub fn app(state: AppState) -> Router {
    let control = state.access.clone();
    let (queries, mut document) = routes().split_for_parts();
    openapi::complete(&mut document);
    let document = Arc::new(openapi::bounded(&document));
    let queries = queries
        .route_layer(middleware::from_fn_with_state(
            state.progress.clone(),
            progress::projection_position_header,
        ))
        .with_state(state.clone());
    Router::new()
        .merge(queries)
        .route(
            "/openapi.json",
            get(move || {
                let document = document.clone();
                async move { Json(document.as_ref().clone()) }
            }),
        )
        .merge(service::ops_router(state.readiness.clone()))
        .route_layer(middleware::from_fn_with_state(control, authorize))
        .route_layer(middleware::from_fn(service::http_observe::record_route))
        // After the API's `authorize`: the console checks its own session and table.
        .merge(console::router(state.clone()))
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

async fn route_not_found(uri: Uri) -> QueryError {
    QueryError::RouteNotFound(uri.path().to_owned())
}

async fn method_not_allowed() -> QueryError {
    QueryError::MethodNotAllowed
}

/// Everything [`app`] needs once the database is migrated: the reader pool, the
/// position listener running on a connection of its own until `stop`, and the access
/// table with `authenticator`.
pub async fn start(
    reader_options: sqlx::postgres::PgConnectOptions,
    max_connections: u32,
    nats: async_nats::Client,
    authenticator: Authenticator,
    vault: Vault,
    stop: CancellationToken,
) -> Result<AppState, sqlx::Error> {
    let pool = database::connect_reader(reader_options.clone(), max_connections).await?;
    let progress = Progress::new();
    progress.reload(&pool).await?;
    if service::database::is_standby(&pool).await? {
        // No notification reaches a replica: read its own positions while asked to.
        tracing::info!("reading a streaming replica: positions are read from it while requests wait");
        tokio::spawn(progress::follow_replica(
            progress.clone(),
            pool.clone(),
            stop.clone(),
        ));
    } else {
        // The listener keeps its connection for good: a pool of its own, so it never
        // takes a slot from the requests.
        let listener_pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(service::database::ACQUIRE_TIMEOUT)
            .connect_lazy_with(reader_options);
        tokio::spawn(progress::run_listener(
            progress.clone(),
            listener_pool,
            stop.clone(),
        ));
    }
    Ok(AppState::new(Shared {
        readiness: Readiness {
            pool: pool.clone(),
            nats,
        },
        account_reads: views::account_reads::AccountReads::start(pool.clone()),
        pool,
        progress,
        live_tails: LiveTails::default(),
        stop,
        vault,
        access: AccessControl {
            authenticator,
            table: access::ACCESS,
        },
        projector: None,
    }))
}

/// Checks the token settings (a process with no key refuses to start, unless told it is
/// a development machine), connects to PostgreSQL (creating and migrating the database
/// as its owner) and NATS, then serves as the read-only role until `shutdown` completes.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    // First, before any connection: a misconfigured process should fail fast and plainly.
    let authenticator = Authenticator::from_config(&config.auth)?;
    let vault = Vault::from_config(&config.pii, config.auth.insecure_development_auth)?;
    // Migrations need the owner; nothing else in this process does.
    let owner = service::database::connect_and_migrate(&config.common.database_url, 1).await?;
    owner.close().await;
    let reader_options =
        database::reader_options(&config.common.database_url, config.reader_database_url.as_deref())
            .map_err(RunError::Reader)?;
    let nats = service::nats::connect(&config.common.nats_url, "query-api").await?;
    let listener = service::serve::bind(&config.listen).await?;
    let stop = CancellationToken::new();
    let state = start(
        reader_options,
        config.common.database_max_connections,
        nats,
        authenticator,
        vault,
        stop.clone(),
    )
    .await
    .map_err(RunError::Reader)?;
    let stopping = stop.clone();
    let shutdown = async move {
        shutdown.await;
        stopping.cancel();
    };
    let projector = config
        .projector_url
        .as_deref()
        .map(console::projector::ProjectorLink::new)
        .transpose()
        .map_err(RunError::Projector)?;
    let state = state
        .with_live_tails(LiveTails::new(config.max_live_tails))
        .with_projector(projector);
    let served = serve_limited(listener, state, &config.limits, shutdown).await;
    stop.cancel();
    served.map_err(RunError::Serve)
}

/// Paths answered with a long-lived stream, exempt from the request timeout (bounded by
/// `--max-live-tails` instead).
pub const UNTIMED_PATHS: &[&str] = &["/audit/events/live", console::LIVE_PATH];

/// Serves [`app`] on `listener` until `shutdown`, within `limits`.
pub async fn serve_limited(
    listener: tokio::net::TcpListener,
    state: AppState,
    limits: &HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = service::limits::apply(app(state), limits, UNTIMED_PATHS);
    service::serve::serve_with(listener, router, limits.header_read_timeout(), shutdown).await
}

/// Serves [`app`] on `listener` until `shutdown`, for embedding (the benchmark).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    service::serve::serve(listener, app(state), shutdown).await
}
