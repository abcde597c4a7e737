//! A private NATS cluster with JetStream for tests of what survives the loss of a node:
//! three (or more) `nats-server` processes on loopback, each with its own client and
//! route ports, server name and store directory, routed to one another.
//!
//! Every node is a [`NatsServer`] run from a configuration file, so a test kills and
//! restarts one node as it would a lone server; the others keep the cluster's quorum,
//! and the restarted node catches up from them.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use uuid::Uuid;

use crate::nats_server::NatsServer;

/// How long the cluster may take from spawn until its JetStream has a meta leader.
pub const QUORUM_TIMEOUT: Duration = Duration::from_secs(30);

/// A running cluster; every node stops and its store is removed when it is dropped.
pub struct NatsCluster {
    nodes: Vec<NatsServer>,
    names: Vec<String>,
    base_dir: PathBuf,
}

impl NatsCluster {
    /// Starts `size` nodes (3 for a cluster that survives one loss) and waits until
    /// JetStream answers account requests through them, which needs a meta leader.
    pub async fn start(size: usize) -> anyhow::Result<Self> {
        let id = Uuid::now_v7().simple().to_string();
        let base_dir = std::env::temp_dir().join(format!("eventledger-nats-cluster-{id}"));
        // Ports are released before the servers bind them; another process could take one
        // in between, which on a test machine is rare enough to accept.
        let mut ports = Vec::with_capacity(size * 2);
        let mut listeners = Vec::with_capacity(size * 2);
        for _ in 0..size * 2 {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            ports.push(listener.local_addr()?.port());
            listeners.push(listener);
        }
        drop(listeners);
        let (client_ports, route_ports) = ports.split_at(size);
        let names: Vec<String> = (1..=size).map(|node| format!("n{node}")).collect();
        let mut nodes = Vec::with_capacity(size);
        for (index, name) in names.iter().enumerate() {
            let store_dir = base_dir.join(name);
            std::fs::create_dir_all(&store_dir)
                .with_context(|| format!("creating the store directory {}", store_dir.display()))?;
            let routes: Vec<String> = route_ports
                .iter()
                .enumerate()
                .filter(|(other, _)| *other != index)
                .map(|(_, port)| format!("\"nats-route://127.0.0.1:{port}\""))
                .collect();
            let config = format!(
                "server_name: {name}\n\
                 listen: 127.0.0.1:{client}\n\
                 jetstream {{ store_dir: \"{store}\" }}\n\
                 cluster {{\n  name: eventledger-test-{id}\n  listen: 127.0.0.1:{route}\n  routes: [{routes}]\n}}\n",
                client = client_ports[index],
                store = store_dir.display(),
                route = route_ports[index],
                routes = routes.join(", "),
            );
            let config_file = store_dir.join("nats.conf");
            std::fs::write(&config_file, config)
                .with_context(|| format!("writing {}", config_file.display()))?;
            nodes.push(NatsServer::configured(
                client_ports[index],
                store_dir,
                config_file,
            ));
        }
        let mut cluster = Self {
            nodes,
            names,
            base_dir,
        };
        for node in &mut cluster.nodes {
            node.spawn_unready()?;
        }
        for node in &mut cluster.nodes {
            node.wait_ready().await?;
        }
        cluster.wait_for_quorum().await?;
        Ok(cluster)
    }

    async fn wait_for_quorum(&self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + QUORUM_TIMEOUT;
        loop {
            // The account report is not decoded (its shape changed across server
            // versions): an answer without an `error` means a meta leader answered.
            let answered = async {
                let client = async_nats::connect(service::nats::server_addrs(&self.urls())?).await?;
                let answer = client.request("$JS.API.INFO", "".into()).await?;
                let report: serde_json::Value = serde_json::from_slice(&answer.payload)?;
                anyhow::Ok(report.get("error").is_none())
            };
            if matches!(
                tokio::time::timeout(Duration::from_secs(3), answered).await,
                Ok(Ok(true))
            ) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the NATS cluster had no JetStream meta leader within {QUORUM_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every node's client URL, comma-separated: what `NATS_URL` takes.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// How many nodes the cluster has.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cluster has no node (never, once started).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The node at `index` (0-based), to kill or restart.
    pub fn node(&mut self, index: usize) -> &mut NatsServer {
        &mut self.nodes[index]
    }

    /// The server name of the node at `index` (`n1`, `n2`, …).
    pub fn name(&self, index: usize) -> &str {
        &self.names[index]
    }

    /// The index of the node that leads `stream` now. Asks again for up to
    /// [`QUORUM_TIMEOUT`] while the cluster is electing one (after a node died or came
    /// back, requests time out or name no leader for a few seconds).
    pub async fn stream_leader(&self, stream: &str) -> anyhow::Result<usize> {
        let deadline = tokio::time::Instant::now() + QUORUM_TIMEOUT;
        loop {
            match self.ask_stream_leader(stream).await {
                Ok(index) => return Ok(index),
                Err(error) if tokio::time::Instant::now() > deadline => {
                    return Err(error.context(format!("no leader of {stream} within {QUORUM_TIMEOUT:?}")));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }

    async fn ask_stream_leader(&self, stream: &str) -> anyhow::Result<usize> {
        let client = async_nats::connect(service::nats::server_addrs(&self.urls())?).await?;
        let mut stream = async_nats::jetstream::new(client).get_stream(stream).await?;
        let info = stream.info().await?;
        let leader = info
            .cluster
            .as_ref()
            .and_then(|cluster| cluster.leader.clone())
            .context("the stream has no leader")?;
        self.names
            .iter()
            .position(|name| *name == leader)
            .with_context(|| format!("the leader {leader} is not a node of this cluster"))
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        // Each node stops and removes its own store first.
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.base_dir);
    }
}
