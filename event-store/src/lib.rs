//! The PostgreSQL event store of eventledger and the relay that carries it to NATS
//! JetStream. How a process runs as a service (configuration, auth, HTTP limits, health,
//! metrics, shutdown) is the `service` crate's.
//!
//! # Layout
//!
//! - [`envelope`]: what is written ([`NewEvent`], [`Metadata`]) and what is read back
//!   ([`RecordedEvent`], the envelope of API.md).
//! - [`append`]: atomic appends over one or more streams with expected versions, one at a
//!   time or many in one transaction (group commit).
//! - [`read`]: a stream in version order, the whole log from a position, the head.
//! - [`chain`]: the tamper-evident hash chain over the log: each event's hash, computed
//!   in the append; chaining events written around it; verification of a range.
//! - [`pii`]: personal data sealed under per-account keys, erased by destroying the key.
//! - [`bus`]: the JetStream stream's shape, replication and retention window.
//! - [`relay`]: publishes committed events to JetStream in position order.
//! - [`subscription`]: the durable JetStream pull consumer that reads what the relay
//!   published, in batches.
//! - [`trace_context`]: the W3C trace context an event carries (metadata, NATS header)
//!   as the parent or link of a span, so one command is one trace end to end.
//!
//! # Guarantees
//!
//! 1. An append is all or nothing, over every stream it names, and every stream's
//!    expected version is checked under the same lock that hands out positions: a
//!    conflict is reported, never merged.
//! 2. Positions are gap-free and follow commit order. One row (`event_store_head`) is
//!    locked and advanced inside every append transaction, so appends are serialised and
//!    a rolled-back append leaves no hole. Readers assert it: [`read`] checks that every
//!    position follows the one before.
//! 3. An event id is stored at most once; a second append of it is rejected.
//! 4. Stream versions are contiguous from 1; [`read::EventStore::read_stream`] asserts it.
//! 5. Every event's hash chains it to the one before, in position order
//!    ([`chain`]); [`chain::verify`] recomputes the chain from the stored events.

pub mod append;
pub mod bus;
pub mod chain;
pub mod envelope;
pub mod error;
pub mod pii;
pub mod read;
pub mod relay;
pub mod subscription;
pub mod trace_context;

pub use append::{AppendOutcome, AppendRejection, AppendRequest, ExpectedVersion, StreamWrite};
pub use envelope::{Metadata, NewEvent, RecordedEvent};
pub use error::{AppendError, StoreError, error_chain};
pub use read::EventStore;

/// Every migration of the workspace's `migrations/` folder: the event store's tables and
/// the read models'. Each binary applies them on start; tests name it in
/// `#[sqlx::test(migrator = "event_store::MIGRATOR")]`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// The PostgreSQL channel on which every append announces its last position, so that
/// the relay and live readers wake at once instead of polling.
pub const APPENDED_CHANNEL: &str = "eventledger_appended";
