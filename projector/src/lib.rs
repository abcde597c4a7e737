//! `projector`: projects the event log into the read-model tables, live from JetStream,
//! and rebuilds them from the event store on demand.
//!
//! # Layout
//!
//! - [`Config`] and [`Command`]: flags, environment and subcommands (`rebuild`, `status`).
//! - [`run`]: connects, migrates, and runs the chosen command: by default the live
//!   projections with the admin port, until shutdown.
//! - [`app`]: the admin router (`/healthz`, `/readyz`, `/metrics`, `GET /projections`,
//!   `POST /projections/{name}/rebuild`), for tests to drive directly.
//! - [`access`]: the role each admin route needs.
//! - [`projection`]: the named projections and their tables.
//! - [`fold`]: what each event does to each table, with no I/O.
//! - [`tables`]: multi-row reads and writes of the read-model tables.
//! - [`copy_rows`]: binary `COPY` of read-model rows, for rebuilds.
//! - [`checkpoint`]: each projection's checkpoint row, which is also its writer lock.
//! - [`apply`]: one batch, one transaction, checkpoint included.
//! - [`lease`]: which instance applies each projection live; the others stand by.
//! - [`live`]: the JetStream-driven live tasks, gap filling, stopping on bad events.
//! - [`live_pool`]: the live tasks' and the leases' connections and their session settings.
//! - [`rebuild`]: replay into fresh tables and swap them in.
//! - [`status`]: positions, head, lag and state; metrics.
//! - [`http`] and [`error`]: the admin routes and their problem+json errors.

pub mod access;
pub mod apply;
pub mod checkpoint;
pub mod copy_rows;
pub mod error;
pub mod fold;
pub mod http;
pub mod lease;
pub mod live;
pub mod live_pool;
pub mod projection;
pub mod rebuild;
pub mod status;
pub mod tables;

use std::future::Future;
use std::io::Write;

use axum::{Router, middleware};
use service::auth::{AccessControl, AuthConfig, AuthConfigError, Authenticator, authorize};
use service::{self, CommonConfig, Readiness, StartupError};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::projection::{Projection, UnknownProjection};
use crate::rebuild::RebuildError;

/// The projector's settings; every flag also reads the environment variable named.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "projector", version, about = "eventledger projector")]
pub struct Config {
    #[command(flatten)]
    pub common: CommonConfig,

    /// Token verification for the admin port; needed only to run live (the admin port),
    /// not for the `rebuild` and `status` subcommands, which serve nothing.
    #[command(flatten)]
    pub auth: AuthConfig,

    /// Address to serve the admin and metrics port on.
    #[arg(long, env = "PROJECTOR_ADDR", default_value = "127.0.0.1:8083")]
    pub listen: String,

    /// JetStream stream to consume, when it is not the one the relay publishes to
    /// (`EVENTS_STREAM`, shared with the command API).
    #[arg(long, env = "PROJECTOR_STREAM")]
    pub stream_name: Option<String>,

    /// Subject prefix of the messages to consume, when it is not the relay's
    /// (`EVENTS_SUBJECT_PREFIX`).
    #[arg(long, env = "PROJECTOR_SUBJECT_PREFIX")]
    pub subject_prefix: Option<String>,

    /// Durable consumers are named `<prefix>_<projection>`.
    #[arg(long, env = "PROJECTOR_CONSUMER_PREFIX", default_value = "projector")]
    pub consumer_prefix: String,
    /// This instance's name in the projections' leases (`GET /projections` shows the
    /// holder) and its PostgreSQL `application_name`. Default: `<host name>-<pid>`.
    #[arg(long, env = "PROJECTOR_INSTANCE_ID", value_parser = parse_instance_id)]
    pub instance_id: Option<String>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The most bytes of an instance id: PostgreSQL keeps 63 bytes of an `application_name`.
pub const MAX_INSTANCE_ID_BYTES: usize = 63;

/// An instance id is 1 to [`MAX_INSTANCE_ID_BYTES`] printable ASCII characters, so it
/// reads the same in `GET /projections`, the logs and `pg_stat_activity`.
fn parse_instance_id(value: &str) -> Result<String, String> {
    let printable = value.bytes().all(|byte| byte.is_ascii_graphic());
    if value.is_empty() || value.len() > MAX_INSTANCE_ID_BYTES || !printable {
        return Err(format!(
            "must be 1 to {MAX_INSTANCE_ID_BYTES} printable ASCII characters without spaces"
        ));
    }
    Ok(value.to_owned())
}

/// What to do instead of running live.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Replay the event store into fresh tables and swap them in atomically; a running
    /// live projector goes on from where the rebuild ended.
    Rebuild {
        /// The projection to rebuild: accounts, account_transactions or transfers.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        name: Option<String>,
        /// Rebuild every projection in one replay.
        #[arg(long)]
        all: bool,
    },
    /// Print each projection's position, the event store's head, the lag and the state.
    Status {
        /// One JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Why the projector stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the token settings cannot be used")]
    Auth(#[from] AuthConfigError),
    #[error("could not start")]
    Startup(#[from] StartupError),
    #[error("the HTTP server failed")]
    Serve(#[source] std::io::Error),
    #[error(transparent)]
    UnknownProjection(#[from] UnknownProjection),
    #[error("the rebuild failed")]
    Rebuild(#[from] RebuildError),
    #[error("could not read the projections' status")]
    Status(#[source] sqlx::Error),
    #[error("could not write the output")]
    Output(#[from] std::io::Error),
    #[error("could not encode the output")]
    Encode(#[from] serde_json::Error),
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub readiness: Readiness,
    /// How callers are authenticated, and [`access::ACCESS`], for the router's middleware.
    pub access: AccessControl,
}

impl AppState {
    pub fn new(readiness: Readiness, authenticator: Authenticator) -> Self {
        Self {
            readiness,
            access: AccessControl {
                authenticator,
                table: access::ACCESS,
            },
        }
    }
}

/// The projector's routes, each behind the role [`access::ACCESS`] gives it. The check
/// is a route layer, so it knows the matched route and an unknown path is still a 404.
pub fn app(state: AppState) -> Router {
    let pool = state.readiness.pool.clone();
    service::ops_router(state.readiness)
        .merge(http::router(pool.clone()))
        // Inside the access check: only an allowed scrape costs a statement.
        .route_layer(middleware::from_fn_with_state(
            status::ScrapeRefresh::new(pool),
            status::refresh_before_scrape,
        ))
        .route_layer(middleware::from_fn_with_state(state.access, authorize))
        // A problem body like every other refusal, rather than axum's empty 405.
        .method_not_allowed_fallback(|| async { error::AdminError::MethodNotAllowed })
        .route_layer(middleware::from_fn(service::http_observe::record_route))
}

impl Config {
    /// The live tasks' settings from the flags.
    ///
    /// The stream and prefix default to the ones the relay publishes to: a projector
    /// reading another stream than its relay would get nothing from NATS and see events
    /// only through its catch-up from PostgreSQL, half a second late.
    pub fn live(&self) -> live::LiveConfig {
        let stream_name = self.stream_name.as_deref().unwrap_or(&self.common.events_stream);
        let subject_prefix = self
            .subject_prefix
            .as_deref()
            .unwrap_or(&self.common.events_subject_prefix);
        let mut live = live::LiveConfig::new(stream_name, subject_prefix);
        live.consumer_prefix = self.consumer_prefix.clone();
        live.stream_limits = self.common.stream_limits();
        live
    }
}

/// Connects to PostgreSQL (creating and migrating the database) and runs the command:
/// a rebuild or a status report, or by default the live projections and the admin port
/// until `shutdown` completes. Running live checks the token settings first: with no
/// key it refuses to start, unless told it is a development machine.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let Some(command) = config.command.clone() else {
        // First, before any connection: a misconfigured process should fail fast and
        // plainly. The subcommands serve no port, so only running live needs a key.
        let authenticator = Authenticator::from_config(&config.auth)?;
        let pool = connect(&config.common).await?;
        return serve(config, pool, authenticator, shutdown).await;
    };
    let pool = connect(&config.common).await?;
    match command {
        Command::Rebuild { name, all } => {
            let projections = match (&name, all) {
                (_, true) => Projection::ALL.to_vec(),
                (Some(name), false) => vec![name.parse()?],
                (None, false) => Projection::ALL.to_vec(),
            };
            let report = rebuild::rebuild(&pool, &projections).await?;
            writeln!(std::io::stdout().lock(), "{}", serde_json::to_string(&report)?)?;
            Ok(())
        }
        Command::Status { json } => {
            let statuses = status::read(&pool).await.map_err(RunError::Status)?;
            let text = if json {
                serde_json::to_string_pretty(&statuses)? + "\n"
            } else {
                status::render_table(&statuses)
            };
            std::io::stdout().lock().write_all(text.as_bytes())?;
            Ok(())
        }
    }
}

async fn connect(common: &CommonConfig) -> Result<PgPool, StartupError> {
    service::database::connect_and_migrate(&common.database_url, common.database_max_connections).await
}

/// The live pool ([`live_pool`]): the main pool's connection settings with the live
/// sessions' own.
async fn connect_live(common: &CommonConfig, instance: &str) -> Result<PgPool, StartupError> {
    let options = service::database::connect_options(&common.database_url).map_err(StartupError::Database)?;
    live_pool::connect(options, instance)
        .await
        .map_err(StartupError::Database)
}

async fn serve(
    config: Config,
    pool: PgPool,
    authenticator: Authenticator,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let nats = service::nats::connect(&config.common.nats_url, "projector").await?;
    let listener = service::serve::bind(&config.listen).await?;
    if let Err(error) = rebuild::clear_abandoned(&pool).await {
        tracing::warn!(error = %event_store::error_chain(&error), "could not clear abandoned rebuilds");
    }
    let instance = config
        .instance_id
        .clone()
        .unwrap_or_else(lease::default_instance_id);
    let live_pool = connect_live(&config.common, &instance).await?;
    let (keeper, leases) =
        lease::LeaseKeeper::new(live_pool.clone(), &instance, lease::LeaseConfig::default());
    tracing::info!(instance = %instance, "standing by for the projections' leases");
    let stop = CancellationToken::new();
    let live = tokio::spawn(live::run(
        live_pool,
        nats.clone(),
        config.live(),
        leases,
        stop.clone(),
    ));
    let keeping = tokio::spawn(keeper.run(stop.clone()));
    let state = AppState::new(Readiness { pool, nats }, authenticator);
    let served = service::serve::serve(listener, app(state), shutdown).await;
    stop.cancel();
    let _ = live.await;
    // After the live tasks: their last batches commit before the leases are released.
    let _ = keeping.await;
    served.map_err(RunError::Serve)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Config;

    #[test]
    fn the_live_projections_follow_the_stream_the_relay_publishes_to() {
        let config = Config::try_parse_from([
            "projector",
            "--events-stream",
            "E2E_ONE",
            "--events-subject-prefix",
            "e2e.one",
        ])
        .expect("flags");
        let live = config.live();
        assert_eq!(
            (live.stream_name.as_str(), live.subject_prefix.as_str()),
            ("E2E_ONE", "e2e.one")
        );
    }

    #[test]
    fn a_stream_of_its_own_overrides_the_relays() {
        let config = Config::try_parse_from([
            "projector",
            "--events-stream",
            "E2E_ONE",
            "--stream-name",
            "OTHER",
            "--subject-prefix",
            "other",
        ])
        .expect("flags");
        let live = config.live();
        assert_eq!(
            (live.stream_name.as_str(), live.subject_prefix.as_str()),
            ("OTHER", "other")
        );
    }

    #[test]
    fn an_instance_id_is_printable_ascii_that_fits_an_application_name() {
        let parse = |id: &str| {
            Config::try_parse_from(["projector", "--instance-id", id]).map(|config| config.instance_id)
        };
        assert_eq!(
            parse("projector-0").expect("valid"),
            Some("projector-0".to_owned())
        );
        assert_eq!(parse(&"x".repeat(63)).expect("63 bytes"), Some("x".repeat(63)));
        for bad in ["", "two words", "tab\there", "é", &"x".repeat(64)] {
            assert!(parse(bad).is_err(), "{bad:?} is refused");
        }
    }
}
