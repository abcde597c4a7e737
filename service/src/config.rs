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

    /// NATS servers with JetStream enabled: one URL, or a comma-separated list of the
    /// nodes of a cluster (the client connects to one and moves to another when it dies).
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    /// Copies of the events stream in the NATS cluster, 1 to 5: 3 in a 3-node cluster, so
    /// losing any one node loses no event and the stream keeps a leader. At most the
    /// number of servers `NATS_URL` names.
    #[arg(long, env = "EVENTS_STREAM_REPLICAS", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=5))]
    pub events_stream_replicas: u8,

    /// How long the events stream keeps an event, in seconds (default a week). The stream
    /// is a hand-over, not the record: a consumer stopped for longer catches up from
    /// PostgreSQL.
    #[arg(long, env = "EVENTS_STREAM_MAX_AGE_SECONDS", default_value_t = event_store::bus::DEFAULT_MAX_AGE.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    pub events_stream_max_age_seconds: u64,

    /// The most bytes the events stream keeps, at least 1 MiB; the oldest events go
    /// first. `-1` (the default) is no bound but the age: JetStream reserves this much on
    /// every replica up front, so set it to the volume NATS has.
    #[arg(long, env = "EVENTS_STREAM_MAX_BYTES", default_value_t = event_store::bus::UNBOUNDED_BYTES,
          allow_negative_numbers = true, value_parser = parse_stream_bytes)]
    pub events_stream_max_bytes: i64,

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

/// The smallest `EVENTS_STREAM_MAX_BYTES` accepted: 1 MiB, so that one bound at most a
/// few thousand events is a deliberate choice and not a unit mistake.
pub const MIN_STREAM_BYTES: i64 = 1024 * 1024;

/// `EVENTS_STREAM_MAX_BYTES`: `-1`, or at least [`MIN_STREAM_BYTES`].
fn parse_stream_bytes(value: &str) -> Result<i64, String> {
    let bytes: i64 = value.trim().parse().map_err(|error| format!("{error}"))?;
    if bytes == event_store::bus::UNBOUNDED_BYTES || bytes >= MIN_STREAM_BYTES {
        Ok(bytes)
    } else {
        Err(format!("-1 (no bound) or at least {MIN_STREAM_BYTES} bytes"))
    }
}

/// Settings that each parse but cannot work together; the process refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "EVENTS_STREAM_REPLICAS is {replicas} but NATS_URL names {servers} server(s): a stream \
         cannot have more copies than the cluster has nodes; list every node in NATS_URL, \
         comma-separated, or lower EVENTS_STREAM_REPLICAS"
    )]
    MoreReplicasThanServers { replicas: u8, servers: usize },
    #[error("NATS_URL: {url:?} is not a NATS server URL ({reason}); give one URL or a comma-separated list")]
    NatsUrl { url: String, reason: String },
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
            stream_limits: self.stream_limits(),
            ..event_store::relay::RelayConfig::new(name)
        }
    }

    /// The events stream's replication and retention from the settings.
    pub fn stream_limits(&self) -> event_store::bus::StreamLimits {
        event_store::bus::StreamLimits {
            replicas: usize::from(self.events_stream_replicas),
            max_age: std::time::Duration::from_secs(self.events_stream_max_age_seconds),
            max_bytes: self.events_stream_max_bytes,
        }
    }

    /// How many servers `NATS_URL` names.
    pub fn nats_servers(&self) -> usize {
        self.nats_url
            .split(',')
            .filter(|url| !url.trim().is_empty())
            .count()
    }

    /// Refuses settings that parse one by one but cannot work together.
    ///
    /// # Errors
    ///
    /// [`ConfigError::NatsUrl`] when `NATS_URL` is not a list of NATS URLs, and
    /// [`ConfigError::MoreReplicasThanServers`] when the stream would need more NATS
    /// nodes than it names. (JetStream would refuse such a stream only when it is
    /// first created, long after start, and leave the relay retrying.)
    pub fn check(&self) -> Result<(), ConfigError> {
        crate::nats::server_addrs(&self.nats_url)?;
        let servers = self.nats_servers();
        if usize::from(self.events_stream_replicas) > servers {
            return Err(ConfigError::MoreReplicasThanServers {
                replicas: self.events_stream_replicas,
                servers,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Flags {
        #[command(flatten)]
        common: CommonConfig,
    }

    fn parse(arguments: &[&str]) -> Result<CommonConfig, clap::Error> {
        Flags::try_parse_from(std::iter::once("process").chain(arguments.iter().copied()))
            .map(|flags| flags.common)
    }

    #[test]
    fn the_stream_defaults_to_one_replica_kept_a_week_without_a_byte_bound() {
        let common = parse(&[]).expect("defaults");
        assert_eq!(common.stream_limits(), event_store::bus::StreamLimits::default());
        assert!(common.check().is_ok());
    }

    #[test]
    fn a_list_of_nats_servers_allows_as_many_replicas() {
        let common = parse(&[
            "--nats-url",
            "nats://a:4222,nats://b:4222,nats://c:4222",
            "--events-stream-replicas",
            "3",
        ])
        .expect("flags");
        assert_eq!(common.nats_servers(), 3);
        assert_eq!(common.stream_limits().replicas, 3);
        assert!(common.check().is_ok());
    }

    #[test]
    fn more_replicas_than_servers_is_refused_with_what_to_do() {
        let common = parse(&["--events-stream-replicas", "3"]).expect("flags");
        let refusal = common.check().expect_err("one server cannot hold 3 replicas");
        let message = refusal.to_string();
        assert!(message.contains("EVENTS_STREAM_REPLICAS is 3"), "{message}");
        assert!(message.contains("names 1 server"), "{message}");
    }

    #[test]
    fn replicas_and_retention_out_of_range_are_refused() {
        for arguments in [
            ["--events-stream-replicas", "0"],
            ["--events-stream-replicas", "6"],
            ["--events-stream-max-age-seconds", "0"],
            ["--events-stream-max-bytes", "1000"],
            ["--events-stream-max-bytes", "-2"],
        ] {
            assert!(parse(&arguments).is_err(), "{arguments:?}");
        }
        for (bytes, expected) in [("-1", -1), ("1048576", 1_048_576)] {
            let common = parse(&["--events-stream-max-bytes", bytes]).expect(bytes);
            assert_eq!(common.stream_limits().max_bytes, expected);
        }
    }
}
