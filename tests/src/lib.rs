//! Shared pieces of eventledger's end-to-end tests, load generator and benchmarks.
//!
//! # Layout
//!
//! - [`bench`]: throwaway benchmark databases and the machine-limit baselines
//!   (PostgreSQL's commit rate) that every benchmark reports its figures against.
//! - `src/bin/bench-append.rs`: the event store's append throughput.

pub mod bench;
