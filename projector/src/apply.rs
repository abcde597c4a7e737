//! Applying a contiguous run of events to one projection in one transaction, together
//! with its checkpoint (guarantee 4): lock the checkpoint row, skip what it already
//! covers, fold the rest, write the rows with multi-row statements, advance the
//! checkpoint, announce it, commit. A crash anywhere before the commit leaves nothing
//! behind; after it, the checkpoint says so.

use std::collections::{HashMap, HashSet};

use event_store::{RecordedEvent, trace_context};
use sqlx::{PgConnection, PgPool};
use tracing::instrument;
use uuid::Uuid;

use crate::checkpoint;
use crate::fold::{self, AccountRow, ApplyError, ProjectedEvent, TransactionRow, TransferRow, TransferRows};
use crate::lease::Fence;
use crate::projection::Projection;
use crate::tables;

/// SQLSTATE class 23, integrity constraint violation: a row the read model refuses
/// (a duplicate key, a failed check). Retrying cannot help, so it stops the projection.
const INTEGRITY_VIOLATION_CLASS: &str = "23";

/// Why a batch did not apply.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// An event cannot be applied; everything before it was. Stops the projection.
    #[error("the projection stopped at an event it cannot apply")]
    Apply(#[from] ApplyError),
    /// The table refused a row; the batch is rolled back. Stops the projection.
    #[error("the read model refused a row")]
    Refused(#[source] sqlx::Error),
    /// The database failed; nothing was written. Worth retrying.
    #[error("database error")]
    Database(#[source] sqlx::Error),
    /// The events do not start right after the checkpoint: the caller must read the
    /// missing range first.
    #[error("the batch starts at {first} but the checkpoint is {checkpoint}")]
    Gap { checkpoint: i64, first: i64 },
    /// Another instance holds the projection's lease now ([`crate::lease`]); nothing was
    /// written, and this instance stands by.
    #[error("another instance took over the projection's lease")]
    LeaseLost,
}

impl From<sqlx::Error> for BatchError {
    fn from(error: sqlx::Error) -> Self {
        let refused = error
            .as_database_error()
            .and_then(|error| error.code())
            .is_some_and(|code| code.starts_with(INTEGRITY_VIOLATION_CLASS));
        if refused {
            BatchError::Refused(error)
        } else {
            BatchError::Database(error)
        }
    }
}

impl BatchError {
    /// Whether this error must stop the projection (as opposed to being retried).
    pub fn stops_projection(&self) -> bool {
        matches!(self, BatchError::Apply(_) | BatchError::Refused(_))
    }
}

/// What folding produced and not yet written: changed account rows, new statement rows,
/// new and settled transfer rows, plus what the folds need to read (every row a live
/// batch touches; every account row and every pending transfer row, in a rebuild).
#[derive(Debug, Default)]
pub struct FoldState {
    pub accounts: HashMap<Uuid, AccountRow>,
    pub changed_accounts: HashSet<Uuid>,
    pub balances: HashMap<Uuid, i64>,
    pub transactions: Vec<TransactionRow>,
    pub transfers: TransferRows,
}

impl FoldState {
    /// Folds one event into the projection's state.
    pub fn apply(&mut self, projection: Projection, event: &ProjectedEvent) -> Result<(), ApplyError> {
        match projection {
            Projection::Accounts => {
                if let Some(id) = fold::fold_account(&mut self.accounts, event)? {
                    self.changed_accounts.insert(id);
                }
            }
            Projection::AccountTransactions => {
                fold::fold_transaction(&mut self.balances, event, &mut self.transactions)?;
            }
            Projection::Transfers => fold::fold_transfer(&mut self.transfers, event)?,
        }
        Ok(())
    }

    /// Writes what was folded for `projection` into `table` and forgets it (account rows
    /// stay, to be folded further).
    pub async fn flush(
        &mut self,
        connection: &mut PgConnection,
        projection: Projection,
        table: &str,
    ) -> Result<(), sqlx::Error> {
        match projection {
            Projection::Accounts => {
                let rows: Vec<&AccountRow> = self
                    .changed_accounts
                    .iter()
                    .filter_map(|id| self.accounts.get(id))
                    .collect();
                tables::upsert_accounts(connection, table, &rows).await?;
                self.changed_accounts.clear();
            }
            Projection::AccountTransactions => {
                tables::insert_transactions(connection, table, &self.transactions).await?;
                self.transactions.clear();
            }
            Projection::Transfers => {
                let transfers = &mut self.transfers;
                let rows: Vec<&TransferRow> = transfers
                    .settled
                    .iter()
                    .chain(
                        transfers
                            .changed
                            .iter()
                            .filter_map(|id| transfers.pending.get(id)),
                    )
                    .collect();
                tables::upsert_transfers(connection, table, &rows).await?;
                transfers.settled.clear();
                transfers.changed.clear();
            }
        }
        Ok(())
    }
}

/// Applies `events` (contiguous, in position order) to `projection`, skipping those at
/// or below its checkpoint, and returns the checkpoint after. When an event cannot be
/// applied, the events before it are committed and [`BatchError::Apply`] names it.
/// Writes nothing and answers [`BatchError::LeaseLost`] unless the checkpoint row's
/// lease is still `fence`'s.
///
/// Traces: the batch is an `apply batch` span linked to each event's trace context, and
/// each event gets a `project <event type>` span that continues it, open from the start
/// of the batch to its commit (the event's read-model write). `parents[i]` is the context
/// `events[i]` continues (its NATS message's `traceparent`); an event past the end of
/// `parents` (all of them, for a catch-up from the store) continues its stored metadata's.
#[instrument(name = "apply batch", skip_all, fields(projection = %projection, first = events.first().map(|e| e.position), count = events.len()))]
pub async fn apply_batch(
    pool: &PgPool,
    projection: Projection,
    events: &[RecordedEvent],
    parents: &[Option<String>],
    fence: &Fence,
) -> Result<i64, BatchError> {
    // Closed (and so exported) when the batch is done, committed or not.
    let _projecting = event_spans(projection, events, parents);
    let mut decoded = Vec::with_capacity(events.len());
    let mut undecodable = None;
    for event in events {
        match ProjectedEvent::decode(event) {
            Ok(event) => decoded.push(event),
            Err(error) => {
                undecodable = Some(error);
                break;
            }
        }
    }
    let outcome = match apply_decoded(pool, projection, &decoded, fence).await {
        Ok(checkpoint) => return undecodable.map_or(Ok(checkpoint), |error| Err(error.into())),
        Err(outcome) => outcome,
    };
    match outcome {
        Failure::Fold { index, error } => {
            // Commit the good prefix so the checkpoint stops right before the bad event.
            if index > 0 {
                match apply_decoded(pool, projection, &decoded[..index], fence).await {
                    Ok(_) => {}
                    Err(Failure::Batch(error)) => return Err(error),
                    Err(Failure::Fold { error, .. }) => return Err(error.into()),
                }
            }
            Err(error.into())
        }
        Failure::Batch(error) => Err(error),
    }
}

/// The `project <event type>` span of every event, each a child of the context it
/// continues, and the current (`apply batch`) span linked to all of those contexts. Only
/// while spans are exported; otherwise nothing, at no cost.
fn event_spans(
    projection: Projection,
    events: &[RecordedEvent],
    parents: &[Option<String>],
) -> Vec<tracing::Span> {
    if !trace_context::exporting() {
        return Vec::new();
    }
    let batch = tracing::Span::current();
    events
        .iter()
        .enumerate()
        .map(|(index, event)| {
            let parent = parents
                .get(index)
                .map_or(event.metadata.trace.as_deref(), Option::as_deref);
            trace_context::add_link(&batch, parent);
            let span = tracing::info_span!(
                "project",
                otel.name = format!("project {}", event.event_type).as_str(),
                otel.kind = "consumer",
                projection = %projection,
                position = event.position,
            );
            trace_context::set_parent(&span, parent);
            span
        })
        .collect()
}

enum Failure {
    Fold { index: usize, error: ApplyError },
    Batch(BatchError),
}

impl From<sqlx::Error> for Failure {
    fn from(error: sqlx::Error) -> Self {
        Failure::Batch(error.into())
    }
}

async fn apply_decoded(
    pool: &PgPool,
    projection: Projection,
    events: &[ProjectedEvent],
    fence: &Fence,
) -> Result<i64, Failure> {
    let mut transaction = pool.begin().await?;
    let Some(checkpoint) = checkpoint::lock_fenced(&mut transaction, projection, fence).await? else {
        return Err(Failure::Batch(BatchError::LeaseLost));
    };
    let skipped = events
        .iter()
        .take_while(|event| event.position <= checkpoint)
        .count();
    let fresh = &events[skipped..];
    let Some(first) = fresh.first() else {
        return Ok(checkpoint);
    };
    if first.position != checkpoint + 1 {
        return Err(Failure::Batch(BatchError::Gap {
            checkpoint,
            first: first.position,
        }));
    }
    let touched: Vec<Uuid> = fresh
        .iter()
        .filter_map(fold::account_touched)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let mut state = FoldState::default();
    match projection {
        Projection::Accounts => {
            state.accounts = tables::load_accounts(&mut transaction, projection.table(), &touched).await?;
        }
        Projection::AccountTransactions => {
            state.balances = tables::load_balances(&mut transaction, projection.table(), &touched).await?;
        }
        Projection::Transfers => {
            let settled: Vec<Uuid> = fresh.iter().filter_map(fold::transfer_settled).collect();
            if !settled.is_empty() {
                state.transfers.pending =
                    tables::load_pending_transfers(&mut transaction, projection.table(), &settled).await?;
            }
        }
    }
    for (offset, event) in fresh.iter().enumerate() {
        state.apply(projection, event).map_err(|error| Failure::Fold {
            index: skipped + offset,
            error,
        })?;
    }
    state
        .flush(&mut transaction, projection, projection.table())
        .await?;
    let last = fresh.last().map_or(checkpoint, |event| event.position);
    checkpoint::advance(&mut transaction, projection, last).await?;
    transaction.commit().await?;
    metrics::counter!("projector_events_applied_total", "projection" => projection.name())
        .increment(fresh.len() as u64);
    metrics::counter!("projector_batches_total", "projection" => projection.name()).increment(1);
    metrics::histogram!("projector_batch_events", "projection" => projection.name())
        .record(fresh.len() as f64);
    Ok(last)
}
