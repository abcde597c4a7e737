//! The command API over real HTTP against a real PostgreSQL (a fresh database per test)
//! and NATS (for readiness): every endpoint's success and error paths, idempotency,
//! `If-Match`, concurrency, and the OpenAPI document.
//!
//! Run with `DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres`.

mod access;
mod commands;
mod concurrency;
mod conformance;
mod errors;
mod helpers;
mod hostile;
mod idempotency;
mod openapi;
mod pii;
mod preconditions;
mod transfers_pending;
