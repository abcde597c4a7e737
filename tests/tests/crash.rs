//! Crash safety with the real processes under load: while workers send a stream of
//! commands (opens, deposits, withdrawals, transfers among a few dozen accounts, many of
//! them refused), the projector is killed with SIGKILL and restarted, NATS is stopped and
//! killed and started again, or the command API (and the relay inside it) is killed and
//! restarted; and a client leaves a NATS node that hangs for a live one. Afterwards:
//!
//! - no acknowledged command is lost and no refused one wrote anything: the event store
//!   holds exactly the events the accepted answers account for, each at the position its
//!   answer named;
//! - the JetStream stream holds every event exactly once, in order: sequence N carries
//!   position N for N in 1..=head, with the event's id as `Nats-Msg-Id`;
//! - every projection reaches the head, its balances are the sums of the accepted
//!   movements, and its tables equal, row by row, what a fresh `projector rebuild --all`
//!   makes of the event store.
//!
//! Every random choice (commands, amounts, when to kill) comes from one seed, printed at
//! the start and again on failure; `CRASH_SEED=<seed>` runs the same choices again (the
//! interleaving of concurrent workers and processes still varies). Needs the binaries
//! built (`cargo build --workspace --bins`, as scripts/test.sh does) and nats-server for
//! the private NATS of the NATS test.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{bail, ensure};
use serde_json::Value;
use service::auth::Role;
use sqlx::PgPool;
use tests::harness::{Binary, System};
use tests::nats_cluster::NatsCluster;
use tests::nats_server::NatsServer;
use tests::workload::{
    Client, Load, Seed, check_acknowledged, check_everything, check_rebuild_equals_live, connect, head,
    open_accounts, stream_state, wait_for, wait_replicas_current, wait_until_projected, wait_until_relayed,
};

/// One test at a time: each runs two or three processes and a load on a 2-core machine,
/// and side by side they would measure each other's contention, not recovery.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn killing_the_projector_under_load_loses_nothing_and_matches_a_rebuild() {
    let _one = ONE_AT_A_TIME.lock().await;
    let seed = Seed::choose("projector kill -9", "CRASH_SEED");
    let mut system = System::start(&[Binary::CommandApi, Binary::Projector])
        .await
        .expect("system");
    let client = Client::new(&system).expect("client");
    let (accounts, setup) = open_accounts(&client, &seed).await.expect("accounts");
    let mut chaos = seed.random(2);

    let load = Load::start(&client, &accounts, &seed);
    for _ in 0..4 {
        tokio::time::sleep(chaos.millis(300, 1_500)).await;
        let projector = system.process(Binary::Projector).expect("projector");
        projector.kill_hard().await.expect("kill -9");
        tokio::time::sleep(chaos.millis(0, 500)).await;
        projector.restart().await.expect("restart");
    }
    tokio::time::sleep(chaos.millis(200, 1_000)).await;
    let record = load.finish(setup).await.expect("load");

    check_everything(&system, &record)
        .await
        .expect("after the crashes");
    system.shut_down().await.expect("shut down");
}

#[tokio::test]
async fn stopping_and_killing_nats_under_load_loses_and_duplicates_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let seed = Seed::choose("NATS stop and kill -9", "CRASH_SEED");
    let mut nats = NatsServer::start().await.expect("private nats-server");
    let system = System::start_with_nats(&[Binary::CommandApi, Binary::Projector], &nats.url())
        .await
        .expect("system");
    let client = Client::new(&system).expect("client");
    let (accounts, setup) = open_accounts(&client, &seed).await.expect("accounts");
    let mut chaos = seed.random(2);

    let load = Load::start(&client, &accounts, &seed);
    // A clean stop: the relay sees the connection go.
    tokio::time::sleep(chaos.millis(500, 1_500)).await;
    nats.stop().await.expect("SIGTERM nats-server");
    tokio::time::sleep(chaos.millis(2_000, 4_000)).await;
    nats.restart().await.expect("nats-server again");
    // A hang, then a crash: while the server is frozen the connection looks alive, so
    // the relay, publishing again and kept busy by the load, sends publishes whose acks
    // never come; then the server dies with them in flight and whatever it had not
    // written out.
    let pool = connect(&system).await.expect("database");
    let head_at_restart = head(&pool).await.expect("head");
    wait_until_relayed(&pool, head_at_restart)
        .await
        .expect("the relay resumes");
    tokio::time::sleep(chaos.millis(100, 1_000)).await;
    nats.freeze().await.expect("SIGSTOP nats-server");
    tokio::time::sleep(chaos.millis(1_000, 2_000)).await;
    nats.kill_hard().await.expect("SIGKILL nats-server");
    tokio::time::sleep(chaos.millis(1_000, 3_000)).await;
    nats.restart().await.expect("nats-server again");
    tokio::time::sleep(chaos.millis(500, 1_500)).await;
    let record = load.finish(setup).await.expect("load");

    check_everything(&system, &record)
        .await
        .expect("after the outages");
    system.shut_down().await.expect("shut down");
    drop(nats);
}

#[tokio::test]
async fn killing_the_command_api_and_its_relay_under_load_loses_and_duplicates_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let seed = Seed::choose("command-api kill -9", "CRASH_SEED");
    let mut system = System::start(&[Binary::CommandApi, Binary::Projector])
        .await
        .expect("system");
    let client = Client::new(&system).expect("client");
    let (accounts, setup) = open_accounts(&client, &seed).await.expect("accounts");
    let mut chaos = seed.random(2);

    let load = Load::start(&client, &accounts, &seed);
    for _ in 0..3 {
        tokio::time::sleep(chaos.millis(400, 1_500)).await;
        let command_api = system.process(Binary::CommandApi).expect("command-api");
        command_api.kill_hard().await.expect("kill -9");
        tokio::time::sleep(chaos.millis(0, 300)).await;
        command_api.restart().await.expect("restart");
    }
    tokio::time::sleep(chaos.millis(300, 1_000)).await;
    let record = load.finish(setup).await.expect("load");
    assert!(
        record.retried > 0,
        "some commands were in flight when the process died"
    );

    check_everything(&system, &record)
        .await
        .expect("after the crashes");
    system.shut_down().await.expect("shut down");
}

#[tokio::test]
async fn killing_the_nats_node_that_leads_the_stream_loses_and_duplicates_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let seed = Seed::choose("NATS stream leader kill -9", "CRASH_SEED");
    let mut cluster = NatsCluster::start(3).await.expect("a 3-node NATS cluster");
    let mut system = System::start_with_nats(&[], &cluster.urls())
        .await
        .expect("system");
    for binary in [Binary::CommandApi, Binary::Projector] {
        system
            .add_configured(binary, &[("EVENTS_STREAM_REPLICAS", "3")], None)
            .await
            .expect("process on the cluster");
    }
    let client = Client::new(&system).expect("client");
    let (accounts, setup) = open_accounts(&client, &seed).await.expect("accounts");
    let mut chaos = seed.random(2);

    let load = Load::start(&client, &accounts, &seed);
    let mut leaders = Vec::new();
    for _ in 0..2 {
        tokio::time::sleep(chaos.millis(500, 1_500)).await;
        let leader = cluster
            .stream_leader(&system.stream_name)
            .await
            .expect("the stream's leader");
        leaders.push(cluster.name(leader).to_owned());
        cluster
            .node(leader)
            .kill_hard()
            .await
            .expect("kill -9 the leader");
        // Long enough for the other two to elect a new leader and take publishes.
        tokio::time::sleep(chaos.millis(2_000, 4_000)).await;
        cluster.node(leader).restart().await.expect("the node again");
    }
    tokio::time::sleep(chaos.millis(500, 1_500)).await;
    let record = load.finish(setup).await.expect("load");
    eprintln!("killed the stream's leader, in turn: {leaders:?}");

    check_everything(&system, &record)
        .await
        .expect("after losing the leader twice");
    // Every copy is back: the two replicas other than the leader are current.
    wait_replicas_current(&system, 3)
        .await
        .expect("replicas caught up");
    system.shut_down().await.expect("shut down");
    drop(cluster);
}

#[tokio::test]
async fn a_projector_stopped_for_longer_than_the_streams_retention_catches_up_from_postgresql() {
    let _one = ONE_AT_A_TIME.lock().await;
    let seed = Seed::choose("projector down past the retention window", "CRASH_SEED");
    let nats_url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let mut system = System::start_with_nats(&[], &nats_url).await.expect("system");
    // A one-second window: whatever the projector misses while it is down for longer is
    // gone from the stream by the time it returns.
    for binary in [Binary::CommandApi, Binary::Projector] {
        system
            .add_configured(binary, &[("EVENTS_STREAM_MAX_AGE_SECONDS", "1")], None)
            .await
            .expect("process");
    }
    let client = Client::new(&system).expect("client");
    let (accounts, setup) = open_accounts(&client, &seed).await.expect("accounts");
    let mut chaos = seed.random(2);
    let pool = connect(&system).await.expect("database");

    let load = Load::start(&client, &accounts, &seed);
    tokio::time::sleep(chaos.millis(300, 1_000)).await;
    let projector = system.process(Binary::Projector).expect("projector");
    projector.kill_hard().await.expect("kill -9");
    let stopped_at: i64 = sqlx::query_scalar("SELECT min(position) FROM read_model.projection_checkpoints")
        .fetch_one(&pool)
        .await
        .expect("checkpoints");
    // Wait until the stream has dropped events the projector never saw.
    wait_for(
        "the stream to drop events past the projector's checkpoint",
        || async {
            let (_, first, last, _) = stream_state(&system).await?;
            let relayed_past = i64::try_from(last)? > stopped_at + 1;
            let dropped_past = i64::try_from(first)? > stopped_at + 1 || (first == 0 && last > 0);
            Ok(if relayed_past && dropped_past {
                Ok(())
            } else {
                Err(format!("checkpoint {stopped_at}, stream {first}..={last}"))
            })
        },
    )
    .await
    .expect("retention dropped what the projector missed");
    let projector = system.process(Binary::Projector).expect("projector");
    projector.restart().await.expect("restart");
    tokio::time::sleep(chaos.millis(500, 1_500)).await;
    let record = load.finish(setup).await.expect("load");

    let head = head(&pool).await.expect("head");
    wait_until_projected(&pool, head).await.expect("caught up");
    check_acknowledged(&pool, &record, head)
        .await
        .expect("nothing lost");
    // Published once each, in order: the fenced relay gives position N sequence N, so
    // the last sequence is the head exactly (the earlier messages have aged out).
    wait_until_relayed(&pool, head).await.expect("relayed");
    let (_, _, last, _) = stream_state(&system).await.expect("stream");
    assert_eq!(
        last,
        u64::try_from(head).expect("head"),
        "the stream's last sequence"
    );
    check_rebuild_equals_live(&system, &pool)
        .await
        .expect("live equals a rebuild");
    pool.close().await;
    system.shut_down().await.expect("shut down");
}

/// Records every checkpoint move with the session that made it (the projector sets its
/// `application_name` to its instance id) and the lease the row named at that moment.
/// Moves of one projection are serialised by the row lock, so `seq` is their commit
/// order; a rolled-back batch leaves no record.
const RECORD_CHECKPOINT_COMMITS: &str = "
CREATE TABLE public.checkpoint_commits (
    seq bigserial PRIMARY KEY, projection text NOT NULL, writer text NOT NULL,
    holder text, epoch bigint NOT NULL, from_position bigint NOT NULL, to_position bigint NOT NULL);
CREATE FUNCTION public.record_checkpoint_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.checkpoint_commits (projection, writer, holder, epoch, from_position, to_position)
    VALUES (NEW.projection, current_setting('application_name'), NEW.lease_holder, NEW.lease_epoch,
            OLD.position, NEW.position);
    RETURN NEW;
END $$;
CREATE TRIGGER record_checkpoint_commit AFTER UPDATE OF position ON read_model.projection_checkpoints
    FOR EACH ROW WHEN (NEW.position IS DISTINCT FROM OLD.position)
    EXECUTE FUNCTION public.record_checkpoint_commit();
";

/// The two projector instances of the lease tests, by name (= `PROJECTOR_INSTANCE_ID`).
const PROJECTOR_INSTANCES: [&str; 2] = ["projector-a", "projector-b"];

/// How long a take-over may take at most before the test fails: the lease's lifetime
/// (9 s), a standby poll, and a frozen batch's idle-in-transaction timeout (5 s), with
/// room for a loaded machine. The measured time is printed.
const TAKE_OVER_LIMIT: Duration = Duration::from_secs(30);

/// Starts the command API, installs [`RECORD_CHECKPOINT_COMMITS`], then both projector
/// instances at once.
async fn start_two_projectors() -> anyhow::Result<(System, PgPool)> {
    let mut system = System::start(&[Binary::CommandApi]).await?;
    let pool = connect(&system).await?;
    sqlx::raw_sql(RECORD_CHECKPOINT_COMMITS).execute(&pool).await?;
    let [a, b] = PROJECTOR_INSTANCES;
    system
        .add_instances(
            Binary::Projector,
            &[
                (a, &[("PROJECTOR_INSTANCE_ID", a)]),
                (b, &[("PROJECTOR_INSTANCE_ID", b)]),
            ],
        )
        .await?;
    Ok((system, pool))
}

/// Each projection's current lease holder, by projection (a lapsed lease is no holder).
async fn lease_holders(pool: &PgPool) -> anyhow::Result<BTreeMap<String, Option<String>>> {
    let rows: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT projection, CASE WHEN lease_expires_at > now() THEN lease_holder END \
         FROM read_model.projection_checkpoints",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Waits until `instance` holds every projection's lease; returns how long that took.
async fn wait_until_holder_of_all(pool: &PgPool, instance: &str) -> anyhow::Result<Duration> {
    let started = tokio::time::Instant::now();
    loop {
        let holders = lease_holders(pool).await?;
        if holders.len() == 3 && holders.values().all(|holder| holder.as_deref() == Some(instance)) {
            return Ok(started.elapsed());
        }
        if started.elapsed() > TAKE_OVER_LIMIT {
            bail!("{instance} did not hold every projection within {TAKE_OVER_LIMIT:?}: {holders:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The instance holding the `accounts` lease, once some instance holds it.
async fn current_holder(pool: &PgPool) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + TAKE_OVER_LIMIT;
    loop {
        if let Some(Some(holder)) = lease_holders(pool).await?.remove("accounts") {
            return Ok(holder);
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "no instance took the accounts lease"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// No two appliers, ever: per projection, in commit order, every checkpoint move was made
/// by the instance the row's lease named at that moment, the lease's epoch never went
/// back, and the moves chain without gap or overlap from 0. Returns the instances that
/// applied each projection, in the order they took over.
async fn check_one_applier_at_a_time(pool: &PgPool) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let commits: Vec<(String, String, Option<String>, i64, i64, i64)> = sqlx::query_as(
        "SELECT projection, writer, holder, epoch, from_position, to_position \
         FROM public.checkpoint_commits ORDER BY seq",
    )
    .fetch_all(pool)
    .await?;
    let mut appliers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut last: HashMap<String, (i64, i64)> = HashMap::new();
    for (projection, writer, holder, epoch, from, to) in commits {
        ensure!(
            holder.as_deref() == Some(writer.as_str()),
            "{projection}: {writer} moved the checkpoint {from} -> {to} while the lease named {holder:?} (epoch {epoch})"
        );
        let (last_epoch, last_position) = last.get(&projection).copied().unwrap_or((0, 0));
        ensure!(
            epoch >= last_epoch,
            "{projection}: epoch went back from {last_epoch} to {epoch} ({writer}, {from} -> {to})"
        );
        ensure!(
            from == last_position && to > from,
            "{projection}: {writer} moved the checkpoint {from} -> {to} after {last_position}"
        );
        last.insert(projection.clone(), (epoch, to));
        let order = appliers.entry(projection).or_default();
        if order.last() != Some(&writer) {
            order.push(writer);
        }
    }
    ensure!(appliers.len() == 3, "every projection was applied: {appliers:?}");
    Ok(appliers)
}

#[tokio::test]
async fn two_projectors_starting_together_apply_each_projection_once_and_hand_over_on_shutdown() {
    let _one = ONE_AT_A_TIME.lock().await;
    let seed = Seed::choose("two projectors, start race and hand-over", "CRASH_SEED");
    let (mut system, pool) = start_two_projectors().await.expect("system");
    let client = Client::new(&system).expect("client");
    let (accounts, setup) = open_accounts(&client, &seed).await.expect("accounts");
    let load = Load::start(&client, &accounts, &seed);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let holder = current_holder(&pool).await.expect("a holder");
    let [a, b] = PROJECTOR_INSTANCES;
    let standby = if holder == a { b } else { a };
    // Each projection has exactly one holder (the race may share them out), and either
    // instance's admin port names it, as `projector status` does.
    let holders = lease_holders(&pool).await.expect("holders");
    assert!(
        holders.len() == 3 && holders.values().all(Option::is_some),
        "every projection has a holder: {holders:?}"
    );
    let token = System::token("lease-test", &[Role::Viewer]).expect("token");
    let listed: Value = reqwest::Client::new()
        .get(system.instance(standby).expect("standby").url("/projections"))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET /projections")
        .json()
        .await
        .expect("json");
    for item in listed["items"].as_array().expect("items") {
        let name = item["name"].as_str().expect("name");
        assert_eq!(
            item["holder"].as_str(),
            holders.get(name).and_then(Option::as_deref),
            "GET /projections names {name}'s holder: {listed}"
        );
    }

    // A clean stop releases the leases: the standby takes over at its next poll.
    let clean = system
        .instance(&holder)
        .expect("holder")
        .terminate()
        .await
        .expect("SIGTERM");
    assert!(clean, "{holder} stopped cleanly");
    let handed_over = wait_until_holder_of_all(&pool, standby).await.expect("hand-over");
    eprintln!("{standby} took over every projection {handed_over:?} after {holder} stopped");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let record = load.finish(setup).await.expect("load");

    let head = head(&pool).await.expect("head");
    wait_until_projected(&pool, head).await.expect("projected");
    let appliers = check_one_applier_at_a_time(&pool)
        .await
        .expect("one applier at a time");
    for (projection, order) in &appliers {
        let first_holder = holders.get(projection).cloned().flatten().expect("a holder");
        let expected = if first_holder == standby {
            vec![first_holder]
        } else {
            vec![first_holder, standby.to_owned()]
        };
        assert_eq!(
            order, &expected,
            "{projection} was applied by its first holder, then by the standby only"
        );
    }
    check_everything(&system, &record)
        .await
        .expect("after the hand-over");
    system.shut_down().await.expect("shut down");
}

#[tokio::test]
async fn a_frozen_projector_is_replaced_and_writes_nothing_when_it_resumes() {
    let _one = ONE_AT_A_TIME.lock().await;
    let seed = Seed::choose("frozen projector holder", "CRASH_SEED");
    let (mut system, pool) = start_two_projectors().await.expect("system");
    let client = Client::new(&system).expect("client");
    let (accounts, setup) = open_accounts(&client, &seed).await.expect("accounts");
    let mut chaos = seed.random(3);
    let load = Load::start(&client, &accounts, &seed);
    tokio::time::sleep(chaos.millis(1_000, 2_500)).await;

    let holder = current_holder(&pool).await.expect("a holder");
    let [a, b] = PROJECTOR_INSTANCES;
    let standby = if holder == a { b } else { a };
    // Frozen mid-load, most likely inside a batch transaction with the checkpoint row
    // locked: its connections stay open, it renews nothing.
    system
        .instance(&holder)
        .expect("holder")
        .freeze()
        .await
        .expect("SIGSTOP");
    let took_over = wait_until_holder_of_all(&pool, standby).await.expect("take-over");
    eprintln!("{standby} took over every projection {took_over:?} after {holder} froze");
    tokio::time::sleep(chaos.millis(500, 2_000)).await;
    // Back after the take-over: whatever it had in flight must not land.
    system
        .instance(&holder)
        .expect("holder")
        .thaw()
        .await
        .expect("SIGCONT");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let record = load.finish(setup).await.expect("load");

    let head = head(&pool).await.expect("head");
    wait_until_projected(&pool, head).await.expect("projected");
    let holders = lease_holders(&pool).await.expect("holders");
    assert!(
        holders.values().all(|held| held.as_deref() == Some(standby)),
        "the resumed {holder} stands by: {holders:?}"
    );
    let appliers = check_one_applier_at_a_time(&pool)
        .await
        .expect("one applier at a time");
    for (projection, order) in &appliers {
        assert_eq!(
            order.last().map(String::as_str),
            Some(standby),
            "{projection}: after the take-over only {standby} applied it: {order:?}"
        );
    }
    check_everything(&system, &record)
        .await
        .expect("after the freeze");
    system.shut_down().await.expect("shut down");
}

/// How long a client may take to leave a hung NATS node: three unanswered pings
/// ([`service::nats::PING_INTERVAL`] each) and a reconnection, which may first try the
/// hung node again, with room for a loaded machine. With the client's default ping
/// interval (a minute) it stayed for three minutes.
const LEAVE_HUNG_NODE_LIMIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_client_leaves_a_frozen_nats_node_for_a_live_one() {
    let mut cluster = NatsCluster::start(3).await.expect("a 3-node NATS cluster");
    let client = service::nats::connect(&cluster.urls(), "frozen-node-test")
        .await
        .expect("connect");
    client.flush().await.expect("connected");
    let first = client.server_info().server_name;
    let index = (0..cluster.len())
        .find(|&node| cluster.name(node) == first)
        .expect("the client is on a node of the cluster");
    // Frozen, not killed: its sockets stay open, so only the missing pongs tell.
    cluster.node(index).freeze().await.expect("SIGSTOP the node");
    let frozen = std::time::Instant::now();
    loop {
        let on = client.server_info().server_name;
        if on != first && client.connection_state() == async_nats::connection::State::Connected {
            eprintln!(
                "left the frozen {first} for {on} after {:.1} s",
                frozen.elapsed().as_secs_f64()
            );
            break;
        }
        assert!(
            frozen.elapsed() < LEAVE_HUNG_NODE_LIMIT,
            "still on the frozen {first} after {LEAVE_HUNG_NODE_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::timeout(Duration::from_secs(10), client.flush())
        .await
        .expect("the live node answers")
        .expect("flush");
    cluster
        .node(index)
        .kill_hard()
        .await
        .expect("kill the frozen node");
}
