//! Shared pieces of eventledger's end-to-end tests, load generator and benchmarks.
//!
//! # Layout
//!
//! - [`bench`]: throwaway benchmark databases and the machine-limit baselines
//!   (PostgreSQL's commit rate) that every benchmark reports its figures against.
//! - [`harness`]: the real binaries on free ports, with a fresh database and stream
//!   per test, for end-to-end tests that stop, kill and restart them.
//! - [`load`]: the load generator's client (scenarios, visibility lag, paced load), shared
//!   by `loadgen`, `bench-growth` and the peer comparison.
//! - [`peer`]: the cqrs-es peer service (`../shared/peers`), built outside the checkout
//!   and run against a database of its own, measured with the same client.
//! - [`goals`]: the README's efficiency goals, each a ratio of two figures measured in
//!   the same run, evaluated from the benchmarks' JSON reports (`bench-report`).
//! - [`nats_server`]: a private NATS server for tests that stop and restart NATS, which
//!   the shared one must never be.
//! - [`pg_replica`]: a private PostgreSQL primary with a streaming replica.
//! - [`nats_cluster`]: a private three-node NATS cluster with JetStream.
//! - [`nginx`]: the cluster's load balancer (`scripts/nginx-conf.sh`) in front of
//!   several instances of the APIs.
//! - [`cluster`]: the whole cluster of `scripts/cluster.sh` (the three above and two
//!   instances of every process), private to a test or benchmark.
//! - [`workload`]: the fault tests' seeded commands, careful retrying client, record of
//!   what was acknowledged, and the checks that must hold after any fault.
//! - [`seed`]: a large valid log COPYed straight into a throwaway database.
//! - [`profile`]: CPU time per process and for PostgreSQL, and PostgreSQL's own
//!   statement statistics, for benchmarks on the profiled PostgreSQL.
//! - `src/bin/bench-growth.rs`: deposits as the log grows (0, 1M, 10M events stored)
//!   and `rebuild --all` of the largest log under load.
//! - `src/bin/bench-report.rs`: the goals table and the whole report from the others' JSON.
//! - `src/bin/bench-idle.rs`: what the whole system costs at rest.
//! - `src/bin/bench-append.rs`: the event store's append throughput.
//! - `src/bin/bench-verify.rs`: how fast the hash chain is written for and verified over
//!   a log of a million events.

pub mod bench;
pub mod cluster;
pub mod goals;
pub mod harness;
pub mod load;
pub mod nats_cluster;
pub mod nats_server;
pub mod nginx;
pub mod peer;
pub mod pg_replica;
pub mod profile;
pub mod seed;
pub mod workload;
