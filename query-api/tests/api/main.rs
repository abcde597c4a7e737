//! The query API over real HTTP: every endpoint's answers and errors, read-your-writes,
//! the audit log's indexes, the live tail, history, least privilege and the OpenAPI
//! description. Each test gets a fresh database (`#[sqlx::test]`) and its own server
//! on port 0.

mod access;
mod audit;
mod conformance;
mod consistency;
mod console;
mod explain;
mod helpers;
mod history;
mod hostile;
mod live;
mod openapi;
mod owners;
mod privilege;
mod verify;
mod views;
