//! The whole cluster under faults (README, "Running as a cluster"): a 3-node NATS
//! JetStream cluster, a PostgreSQL primary with a streaming replica, two instances of
//! every process and nginx in front of both APIs (`scripts/nginx-conf.sh`, as
//! `scripts/cluster.sh` runs it), all real, on this machine.
//!
//! A paced load of commands goes through nginx (the workload of `tests::workload`: each
//! command with an Idempotency-Key, retried on a 5xx or a broken connection as a careful
//! client does), and a reader queries accounts through nginx. Meanwhile, in turn, each of
//! these is killed with SIGKILL and started again: the NATS node that leads the stream,
//! the command-api instance that runs the relay, the projector instance that holds the
//! projections, one query-api instance, and the PostgreSQL replica. Afterwards:
//!
//! - every acknowledged command is stored exactly once and no refused one wrote
//!   anything; money is conserved (balances are the sums of the acknowledged movements)
//!   and no balance is below its limit;
//! - the JetStream stream holds positions 1..=head once each, in order, read from every
//!   node's copy in turn (each node is made the stream's leader and read);
//! - the read models on the primary equal a fresh `projector rebuild --all` row by row,
//!   and the replica's equal the primary's;
//! - no 5xx came without problem+json, and no 500 at all.
//!
//! It prints, per fault, the errors clients saw and the seconds until the service
//! recovered (the stream's new leader taking publishes, the relay running again on the
//! other instance, the projections applied again by the other projector, queries
//! answered again). Every random choice comes from one seed (`CHAOS_SEED=<seed>` repeats
//! them); each wait is bounded. Needs the binaries built, nats-server, PostgreSQL's
//! server programs and nginx (scripts/test.sh provides them all).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use async_nats::jetstream;
use serde_json::Value;
use service::auth::Role;
use tests::cluster::{LocalCluster, QUERY_APIS};
use tests::harness::System;
use tests::workload::{
    Client, Disruption, Load, Random, Seed, check_acknowledged, check_rebuild_equals_live, check_stream_copy,
    event_ids, head, is_problem, open_accounts, snapshot, wait_replicas_current, wait_until_projected,
    wait_until_relayed,
};
use tokio::task::JoinHandle;
use uuid::Uuid;

/// Each of the load's workers starts a command this often: about 60 commands a second
/// in all, a steady load that leaves the 2-core machine room for the faults' recovery.
const COMMAND_PACE: Duration = Duration::from_millis(100);
/// The reader's pace: 20 queries a second.
const QUERY_PACE: Duration = Duration::from_millis(50);
/// The longest a recovery may take before the test gives up: a bound on a hang, not a
/// goal (the lease's 9 s lifetime and a NATS election fit many times over).
const RECOVERY_LIMIT: Duration = Duration::from_secs(60);

/// The faults, in the order the test injects them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    NatsStreamLeader,
    RelayHolder,
    ProjectionHolder,
    QueryApi,
    Replica,
}

impl Fault {
    const ALL: [Fault; 5] = [
        Fault::NatsStreamLeader,
        Fault::RelayHolder,
        Fault::ProjectionHolder,
        Fault::QueryApi,
        Fault::Replica,
    ];

    fn describe(self) -> &'static str {
        match self {
            Self::NatsStreamLeader => "NATS node leading the stream",
            Self::RelayHolder => "command-api running the relay",
            Self::ProjectionHolder => "projector holding the projections",
            Self::QueryApi => "one query-api",
            Self::Replica => "PostgreSQL replica",
        }
    }

    /// What "recovered" means for this fault.
    fn recovery(self) -> &'static str {
        match self {
            Self::NatsStreamLeader => "a new leader took the relay's publishes",
            Self::RelayHolder => "the other instance's relay published",
            Self::ProjectionHolder => "the other projector applied every projection",
            Self::QueryApi => "queries answered through nginx",
            Self::Replica => "queries answered again, from the replica caught up with the primary",
        }
    }
}

/// What one fault did.
struct FaultReport {
    fault: Fault,
    victim: String,
    /// When the process was killed, and when the next fault began (or the load ended):
    /// errors in between are this fault's.
    began: Instant,
    ended: Instant,
    recovered_after: Duration,
}

/// Waits until a query through nginx is answered with 200 and names a projection
/// position of at least `position`.
async fn wait_answering(reader: &Reader, position: i64) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + RECOVERY_LIMIT;
    loop {
        if let Ok((200, at)) = reader.query_once().await
            && at >= position
        {
            return Ok(());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "queries were not answered at position {position} within {RECOVERY_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Kills what `fault` names, waits until the service has recovered, and starts the
/// killed part again.
async fn inject(
    cluster: &mut LocalCluster,
    fault: Fault,
    reader: &Reader,
    random: &mut Random,
) -> anyhow::Result<FaultReport> {
    let began = Instant::now();
    let (victim, recovered_after) = match fault {
        Fault::NatsStreamLeader => {
            let leader = cluster.nats.stream_leader(&cluster.system.stream_name).await?;
            let name = cluster.nats.name(leader).to_owned();
            let killed = Instant::now();
            cluster.nats.node(leader).kill_hard().await?;
            cluster.wait_relaying_past(head(&cluster.primary).await?).await?;
            let recovered = killed.elapsed();
            cluster.nats.node(leader).restart().await?;
            (name, recovered)
        }
        Fault::RelayHolder => {
            let name = cluster.relay_holder().await?;
            let killed = Instant::now();
            cluster.system.instance(&name)?.kill_hard().await?;
            cluster.wait_relaying_past(head(&cluster.primary).await?).await?;
            let recovered = killed.elapsed();
            cluster.system.instance(&name)?.restart().await?;
            (name, recovered)
        }
        Fault::ProjectionHolder => {
            let name = cluster.projection_holder().await?;
            let killed = Instant::now();
            cluster.system.instance(&name)?.kill_hard().await?;
            cluster
                .wait_projecting_past(head(&cluster.primary).await?)
                .await?;
            let recovered = killed.elapsed();
            cluster.system.instance(&name)?.restart().await?;
            (name, recovered)
        }
        Fault::QueryApi => {
            let name = (*random.pick(&QUERY_APIS)).to_owned();
            let killed = Instant::now();
            cluster.system.instance(&name)?.kill_hard().await?;
            wait_answering(reader, 0).await?;
            let recovered = killed.elapsed();
            // Down for a while, so nginx sends queries to it and takes it out.
            tokio::time::sleep(random.millis(1_000, 3_000)).await;
            cluster.system.instance(&name)?.restart().await?;
            (name, recovered)
        }
        Fault::Replica => {
            let killed = Instant::now();
            cluster.postgres.kill_replica().await?;
            tokio::time::sleep(random.millis(1_000, 3_000)).await;
            let down = killed.elapsed();
            cluster.postgres.restart_replica().await?;
            wait_answering(reader, cluster.lowest_checkpoint().await?).await?;
            (
                format!("replica, restarted after {:.1} s", down.as_secs_f64()),
                killed.elapsed(),
            )
        }
    };
    eprintln!(
        "{}: killed {victim}; {} after {:.2} s",
        fault.describe(),
        fault.recovery(),
        recovered_after.as_secs_f64()
    );
    Ok(FaultReport {
        fault,
        victim,
        began,
        ended: Instant::now(),
        recovered_after,
    })
}

/// One query's outcome as a client saw it.
#[derive(Debug, Clone)]
struct QueryOutcome {
    at: Instant,
    /// The status, or 0 when no answer came.
    status: u16,
    /// The problem type or the connection error of a failed query.
    what: String,
}

/// Queries accounts through nginx at [`QUERY_PACE`], as a dashboard would, and keeps
/// every outcome.
#[derive(Clone)]
struct Reader {
    http: reqwest::Client,
    url: String,
    token: String,
    accounts: Arc<Vec<Uuid>>,
    outcomes: Arc<Mutex<Vec<QueryOutcome>>>,
}

impl Reader {
    fn new(queries_url: &str, accounts: Arc<Vec<Uuid>>) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            url: queries_url.to_owned(),
            token: System::token("chaos-reader", &[Role::Viewer])?,
            accounts,
            outcomes: Arc::default(),
        })
    }

    /// `GET /accounts/{id}` of the first account: its status and `X-Projection-Position`.
    async fn query_once(&self) -> anyhow::Result<(u16, i64)> {
        let response = self
            .http
            .get(format!("{}/accounts/{}", self.url, self.accounts[0]))
            .bearer_auth(&self.token)
            .send()
            .await?;
        let position = tests::workload::projection_position(&response);
        Ok((response.status().as_u16(), position))
    }

    fn start(&self, stop: Arc<std::sync::atomic::AtomicBool>, mut random: Random) -> JoinHandle<()> {
        let reader = self.clone();
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let next = tokio::time::Instant::now() + QUERY_PACE;
                let account = *random.pick(&reader.accounts);
                let sent = reader
                    .http
                    .get(format!("{}/accounts/{account}", reader.url))
                    .bearer_auth(&reader.token)
                    .send()
                    .await;
                let outcome = match sent {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let problem = is_problem(&response);
                        let body: Value = response.json().await.unwrap_or(Value::Null);
                        let what = if status >= 500 && !problem {
                            format!("{status} without problem+json: {body}")
                        } else {
                            body["type"].as_str().unwrap_or_default().to_owned()
                        };
                        QueryOutcome {
                            at: Instant::now(),
                            status,
                            what,
                        }
                    }
                    Err(error) => QueryOutcome {
                        at: Instant::now(),
                        status: 0,
                        what: format!("connection: {error}"),
                    },
                };
                reader
                    .outcomes
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(outcome);
                tokio::time::sleep_until(next).await;
            }
        })
    }

    fn outcomes(&self) -> Vec<QueryOutcome> {
        self.outcomes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A query that failed: no answer, or a 5xx.
fn failed(outcome: &QueryOutcome) -> bool {
    outcome.status == 0 || outcome.status >= 500
}

/// The stream's copy on every node: each node is made the stream's leader in turn (by
/// asking the leader to step down until the election picks it) and the stream is read
/// through it.
async fn check_stream_on_every_node(cluster: &LocalCluster, head: i64) -> anyhow::Result<()> {
    let stream_name = cluster.system.stream_name.clone();
    wait_replicas_current(&cluster.system, cluster.nats.len()).await?;
    let event_ids = event_ids(&cluster.primary).await?;
    let client = async_nats::connect(service::nats::server_addrs(&cluster.nats.urls())?).await?;
    let js = jetstream::new(client.clone());
    let mut read = vec![false; cluster.nats.len()];
    for _ in 0..30 {
        let leader = cluster.nats.stream_leader(&stream_name).await?;
        if !read[leader] {
            check_stream_copy(&js, &stream_name, head, &event_ids)
                .await
                .with_context(|| format!("the copy of {}", cluster.nats.name(leader)))?;
            read[leader] = true;
        }
        if read.iter().all(|done| *done) {
            return Ok(());
        }
        let answer = client
            .request(format!("$JS.API.STREAM.LEADER.STEPDOWN.{stream_name}"), "".into())
            .await?;
        let answer: Value = serde_json::from_slice(&answer.payload)?;
        ensure!(answer.get("error").is_none(), "stepping down: {answer}");
        // The election takes a moment; stream_leader asks again until there is one.
        wait_replicas_current(&cluster.system, cluster.nats.len()).await?;
    }
    bail!("could not make every node the stream's leader: read {read:?}")
}

/// The table each fault's figures go in: errors clients saw while it lasted and the
/// seconds to recovery.
fn report(faults: &[FaultReport], commands: &[Disruption], queries: &[QueryOutcome]) -> String {
    let mut table = String::from(
        "| fault | killed | command retries | failed queries | recovered after | recovery means |\n|---|---|---:|---:|---:|---|\n",
    );
    for fault in faults {
        let during = |at: &Instant| *at >= fault.began && *at < fault.ended;
        let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
        for disruption in commands.iter().filter(|d| during(&d.at)) {
            let kind = disruption.what.split([' ', ':']).next().unwrap_or_default();
            *kinds.entry(kind).or_default() += 1;
        }
        let retries: usize = kinds.values().sum();
        let failed_queries = queries
            .iter()
            .filter(|outcome| during(&outcome.at) && failed(outcome))
            .count();
        let _ = writeln!(
            table,
            "| {} | {} | {retries} {kinds:?} | {failed_queries} | {:.2} s | {} |",
            fault.fault.describe(),
            fault.victim,
            fault.recovered_after.as_secs_f64(),
            fault.fault.recovery()
        );
    }
    table
}

#[tokio::test]
async fn the_cluster_survives_losing_each_node_in_turn_under_load() {
    let seed = Seed::choose("chaos", "CHAOS_SEED");
    let mut cluster = LocalCluster::start().await.expect("the cluster");
    let client = Client::to(cluster.nginx.commands_url.clone()).expect("client");
    let (accounts, setup) = open_accounts(&client, &seed).await.expect("accounts");
    let reader = Reader::new(&cluster.nginx.queries_url, Arc::clone(&accounts)).expect("reader");
    let mut chaos = seed.random(2);

    let load = Load::paced(&client, &accounts, &seed, COMMAND_PACE);
    let stop_reading = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reading = reader.start(Arc::clone(&stop_reading), seed.random(3));
    let mut faults: Vec<FaultReport> = Vec::new();
    for fault in Fault::ALL {
        tokio::time::sleep(chaos.millis(1_000, 3_000)).await;
        if let Some(last) = faults.last_mut() {
            last.ended = Instant::now();
        }
        let report = inject(&mut cluster, fault, &reader, &mut chaos)
            .await
            .unwrap_or_else(|error| panic!("{}: {error:#}", fault.describe()));
        faults.push(report);
    }
    tokio::time::sleep(chaos.millis(1_000, 2_000)).await;
    if let Some(last) = faults.last_mut() {
        last.ended = Instant::now();
    }
    let record = load.finish(setup).await.expect("load");
    stop_reading.store(true, std::sync::atomic::Ordering::Relaxed);
    reading.await.expect("reader");
    let queries = reader.outcomes();

    // What clients saw.
    eprintln!(
        "per fault (seed {}):\n{}",
        seed.value(),
        report(&faults, &record.disruptions, &queries)
    );
    let malformed: Vec<&QueryOutcome> = queries
        .iter()
        .filter(|outcome| outcome.what.contains("without problem+json") || outcome.status == 500)
        .collect();
    assert!(malformed.is_empty(), "queries answered badly: {malformed:#?}");
    let answered = queries.iter().filter(|outcome| outcome.status == 200).count();
    assert!(answered > 0, "the reader got answers: {} queries", queries.len());

    // Nothing acknowledged lost, nothing refused written, money conserved.
    let head = head(&cluster.primary).await.expect("head");
    wait_until_projected(&cluster.primary, head)
        .await
        .expect("every projection at the head");
    check_acknowledged(&cluster.primary, &record, head)
        .await
        .expect("every acknowledged command stored once");
    let below_limit: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM read_model.accounts \
         WHERE balance < -overdraft_limit OR balance - pending_debits < -overdraft_limit",
    )
    .fetch_one(&cluster.primary)
    .await
    .expect("balances");
    assert_eq!(below_limit, 0, "no balance or available balance below its limit");

    // The stream, on every node.
    wait_until_relayed(&cluster.primary, head).await.expect("relayed");
    check_stream_on_every_node(&cluster, head)
        .await
        .expect("the stream on every node");

    // The replica's read models equal the primary's, which equal a rebuild.
    cluster.wait_replica_caught_up().await.expect("replica caught up");
    let on_primary = snapshot(&cluster.primary).await.expect("primary's read models");
    let on_replica = snapshot(&cluster.replica).await.expect("replica's read models");
    assert!(
        on_primary == on_replica,
        "the replica's read models differ from the primary's"
    );
    check_rebuild_equals_live(&cluster.system, &cluster.primary)
        .await
        .expect("the primary's read models equal a rebuild");

    assert!(
        cluster.shut_down().await.expect("shut down"),
        "every process stopped cleanly"
    );
}
