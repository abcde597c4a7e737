//! The cluster of `scripts/cluster.sh`, private to one test or benchmark: a 3-node NATS
//! JetStream cluster, a PostgreSQL primary with a streaming replica, two instances of
//! every process (the query APIs reading the replica) and nginx in front of both APIs
//! with the script's own configuration (`scripts/nginx-conf.sh`). Everything it starts
//! stops, and its data goes, when it is dropped or shut down.

use std::time::Duration;

use anyhow::{Context, bail};
use sqlx::PgPool;

use crate::harness::{Binary, System};
use crate::nats_cluster::NatsCluster;
use crate::nginx::Nginx;
use crate::pg_replica::PgReplicated;
use crate::workload::{CONVERGENCE_TIMEOUT, relay_active, wait_for, wait_until_relayed};

/// The instances of each process, by the names [`System::instance`] takes (the
/// projectors' are also their `PROJECTOR_INSTANCE_ID`).
pub const COMMAND_APIS: [&str; 2] = ["command-api-1", "command-api-2"];
pub const PROJECTORS: [&str; 2] = ["projector-1", "projector-2"];
pub const QUERY_APIS: [&str; 2] = ["query-api-1", "query-api-2"];

/// `EVENTS_STREAM_REPLICAS` in the cluster: one copy of the stream on every node.
pub const STREAM_REPLICAS: &str = "3";

/// A running cluster.
pub struct LocalCluster {
    pub nats: NatsCluster,
    pub postgres: PgReplicated,
    /// The database, stream and process instances (named as in [`COMMAND_APIS`] etc.).
    pub system: System,
    pub nginx: Nginx,
    /// The caller's own connections (as `postgres`) to the database on each server.
    pub primary: PgPool,
    pub replica: PgPool,
}

/// Connects to `url`, trying again for up to [`CONVERGENCE_TIMEOUT`]: a server that was
/// just started, or a database that has not reached the replica yet.
pub async fn connect_with_retry(url: &str) -> anyhow::Result<PgPool> {
    let deadline = tokio::time::Instant::now() + CONVERGENCE_TIMEOUT;
    loop {
        match sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(url)
            .await
        {
            Ok(pool) => return Ok(pool),
            Err(error) if tokio::time::Instant::now() > deadline => {
                return Err(error).with_context(|| format!("connecting for {CONVERGENCE_TIMEOUT:?}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

impl LocalCluster {
    /// Starts everything, in the order `scripts/cluster.sh` does, and waits until each
    /// part is ready.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(PgReplicated::start().await?).await
    }

    /// [`LocalCluster::start`] on a primary and replica that already run (a benchmark
    /// that measures one instance of each process on the same PostgreSQL first).
    pub async fn start_with(postgres: PgReplicated) -> anyhow::Result<Self> {
        let nats = NatsCluster::start(3).await?;
        let mut system = System::start_on(&[], &postgres.primary_url, &nats.urls()).await?;
        let replicas = ("EVENTS_STREAM_REPLICAS", STREAM_REPLICAS);
        // One at a time: the first creates and migrates the database.
        for name in COMMAND_APIS {
            system
                .add_instances(Binary::CommandApi, &[(name, &[replicas])])
                .await?;
        }
        let [p1, p2] = PROJECTORS;
        system
            .add_instances(
                Binary::Projector,
                &[
                    (p1, &[replicas, ("PROJECTOR_INSTANCE_ID", p1)]),
                    (p2, &[replicas, ("PROJECTOR_INSTANCE_ID", p2)]),
                ],
            )
            .await?;
        let database = system
            .database_url
            .rsplit('/')
            .next()
            .context("database name")?
            .to_owned();
        let primary = connect_with_retry(&system.database_url).await?;
        let replica = connect_with_retry(&PgReplicated::url_of(
            &postgres.replica_url,
            "postgres",
            &database,
        ))
        .await?;
        wait_for("the replica's copy of the read models", || async {
            Ok(
                match sqlx::query("SELECT 1 FROM read_model.projection_checkpoints LIMIT 1")
                    .fetch_optional(&replica)
                    .await
                {
                    Ok(Some(_)) => Ok(()),
                    Ok(None) => Err("no checkpoints yet".to_owned()),
                    Err(error) => Err(error.to_string()),
                },
            )
        })
        .await?;
        let reader_url = PgReplicated::url_of(&postgres.replica_url, "eventledger_reader", &database);
        let [q1, q2] = QUERY_APIS;
        let reads = ("QUERY_API_READER_DATABASE_URL", reader_url.as_str());
        system
            .add_instances(Binary::QueryApi, &[(q1, &[reads]), (q2, &[reads])])
            .await?;
        let mut addresses = |names: [&str; 2]| -> anyhow::Result<Vec<String>> {
            names
                .iter()
                .map(|name| Ok(system.instance(name)?.address.clone()))
                .collect()
        };
        let (command_apis, query_apis) = (addresses(COMMAND_APIS)?, addresses(QUERY_APIS)?);
        let nginx = Nginx::start(&command_apis, &query_apis).await?;
        Ok(Self {
            nats,
            postgres,
            system,
            nginx,
            primary,
            replica,
        })
    }

    /// The command-api instance whose relay runs now (its `relay_active` gauge is 1).
    /// Every instance must export the gauge, the standbys as 0: an error names one that
    /// does not.
    pub async fn relay_holder(&mut self) -> anyhow::Result<String> {
        let http = reqwest::Client::new();
        let mut holder = None;
        for name in COMMAND_APIS {
            let metrics = http
                .get(self.system.instance(name)?.url("/metrics"))
                .timeout(Duration::from_secs(2))
                .send()
                .await?
                .text()
                .await?;
            match relay_active(&metrics) {
                Some(1.0) => holder = Some(name.to_owned()),
                Some(_) => {}
                None => bail!("{name} exports no relay_active gauge"),
            }
        }
        holder.ok_or_else(|| anyhow::anyhow!("no command-api instance runs the relay"))
    }

    /// The projector instance that holds the `accounts` projection's lease now.
    pub async fn projection_holder(&self) -> anyhow::Result<String> {
        let holder: Option<String> = sqlx::query_scalar(
            "SELECT lease_holder FROM read_model.projection_checkpoints \
             WHERE projection = 'accounts' AND lease_expires_at > now()",
        )
        .fetch_optional(&self.primary)
        .await?
        .flatten();
        holder.context("nobody holds the accounts projection")
    }

    /// The lowest position any projection has applied, on the primary.
    pub async fn lowest_checkpoint(&self) -> anyhow::Result<i64> {
        let lowest: Option<i64> =
            sqlx::query_scalar("SELECT min(position) FROM read_model.projection_checkpoints")
                .fetch_one(&self.primary)
                .await?;
        Ok(lowest.unwrap_or(0))
    }

    /// Waits until the relay has had JetStream acknowledge an event committed after
    /// `position`: a relay runs and the stream takes publishes.
    pub async fn wait_relaying_past(&self, position: i64) -> anyhow::Result<()> {
        wait_until_relayed(&self.primary, position + 1).await
    }

    /// Waits until every projection has applied an event committed after `position`.
    pub async fn wait_projecting_past(&self, position: i64) -> anyhow::Result<()> {
        wait_for("every projection past the position", || async {
            let lowest = self.lowest_checkpoint().await?;
            Ok(if lowest > position {
                Ok(())
            } else {
                Err(format!("lowest checkpoint {lowest}, waiting past {position}"))
            })
        })
        .await
    }

    /// Waits until the replica has replayed everything the primary had written when
    /// asked.
    pub async fn wait_replica_caught_up(&self) -> anyhow::Result<()> {
        let target: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
            .fetch_one(&self.primary)
            .await?;
        wait_for("the replica replaying the primary's WAL", || async {
            let behind: bool = sqlx::query_scalar("SELECT pg_last_wal_replay_lsn() < $1::pg_lsn")
                .bind(&target)
                .fetch_one(&self.replica)
                .await?;
            Ok(if behind {
                Err(format!("replay before {target}"))
            } else {
                Ok(())
            })
        })
        .await
    }

    /// Stops the processes with SIGTERM (returning whether all exited cleanly), then
    /// nginx, the servers and their data.
    pub async fn shut_down(self) -> anyhow::Result<bool> {
        let Self {
            nats,
            postgres,
            system,
            nginx,
            primary,
            replica,
        } = self;
        primary.close().await;
        replica.close().await;
        drop(nginx);
        let clean = system.shut_down().await?;
        drop(postgres);
        drop(nats);
        Ok(clean)
    }
}
