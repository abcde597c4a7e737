//! The store's errors, split by who can act on them: an [`AppendRejection`] is the
//! caller's (a conflict or a duplicate, nothing was written), a [`StoreError`] is the
//! infrastructure's (the database failed or an invariant broke).

use crate::append::AppendRejection;

/// The database failed, or what it holds breaks an invariant of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// A reader found position `found` where `expected` had to be: the log has a hole,
    /// which guarantee 2 rules out. Never skipped: whoever reads must stop.
    #[error("event log is not contiguous: expected position {expected}, found {found}")]
    PositionGap { expected: i64, found: i64 },
    /// An envelope has no RFC 8785 form to hash ([`crate::chain`]): only a non-finite
    /// number can cause it, which neither JSON text nor `jsonb` can hold.
    #[error("an envelope has no canonical JSON form")]
    Canonical(#[from] serde_json::Error),
    /// A stream's versions are not 1, 2, 3, ...: the stream is corrupt.
    #[error("stream {stream_id} is not contiguous: expected version {expected}, found {found}")]
    VersionGap {
        stream_id: String,
        expected: i64,
        found: i64,
    },
}

/// Why a single [`crate::EventStore::append`] did not write.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error(transparent)]
    Rejected(#[from] AppendRejection),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for AppendError {
    fn from(error: sqlx::Error) -> Self {
        Self::Store(StoreError::Database(error))
    }
}

/// An error and its causes on one line, for logs.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}
