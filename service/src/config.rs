//! The settings every process shares (API.md, "Processes and configuration"). Each
//! binary flattens [`CommonConfig`] into its own clap struct; a flag wins over the
//! environment variable of the same meaning.

/// Settings shared by `command-api`, `projector` and `query-api`.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonConfig {
    /// PostgreSQL URL. The database is created if missing and migrated on start.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/eventledger"
    )]
    pub database_url: String,

    /// Most connections this process keeps open to PostgreSQL.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 16)]
    pub database_max_connections: u32,

    /// NATS URL of a server with JetStream enabled.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    /// The JetStream stream that carries the events (API.md: `LEDGER_EVENTS`). Tests and
    /// side-by-side deployments give each system its own.
    #[arg(long, env = "EVENTS_STREAM", default_value = event_store::relay::STREAM_NAME)]
    pub events_stream: String,

    /// Subjects are `<prefix>.<stream category>.<uuid>` (API.md: `ledger.events`).
    #[arg(long, env = "EVENTS_SUBJECT_PREFIX", default_value = event_store::relay::SUBJECT_PREFIX)]
    pub events_subject_prefix: String,

    /// Log lines as human-readable text or as one JSON object per line. The level is
    /// taken from `RUST_LOG` (default `info`).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl CommonConfig {
    /// The relay's settings for this process's stream and subject prefix.
    pub fn relay_config(&self, name: impl Into<String>) -> event_store::relay::RelayConfig {
        event_store::relay::RelayConfig {
            stream_name: self.events_stream.clone(),
            subject_prefix: self.events_subject_prefix.clone(),
            ..event_store::relay::RelayConfig::new(name)
        }
    }
}
