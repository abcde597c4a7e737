//! Rebuild: replay the event store into fresh tables and swap them in atomically
//! (guarantee 5: a replay, not a migration).
//!
//! 1. Take the projection's rebuild lease (a session advisory lock, so one rebuild per
//!    projection runs across every process) and mark it `rebuilding`.
//! 2. Create `read_model.<table>__rebuild` like the live table (columns, constraints)
//!    but without its indexes, and replay the store into it: a reader task reads and
//!    decodes large ordered chunks straight from PostgreSQL, this task folds them, and a
//!    writer task sends the rows with binary `COPY` ([`crate::copy_rows`]), so the three
//!    overlap. A row stays in memory only as long as its chunk (accounts: until the end).
//! 3. Replay again what arrived meanwhile, then build the live table's indexes on the
//!    fresh one: one sort per index instead of a B-tree insertion per row, which is what
//!    makes a bulk load fast. Then replay, with plain inserts, what arrived during the
//!    index builds, so that little is left for the next step.
//! 4. In one transaction: lock the checkpoint
//!    rows (the live task waits for its next batch), replay up to the live checkpoint
//!    if the live side got further, rename the old table away and the new one in, drop
//!    the old one and set the checkpoint. The query side reads `read_model.<table>` by
//!    name, so it sees the old table until this commits and the new one after.
//!
//! The live task then goes on from the checkpoint the swap left: nothing is lost or
//! applied twice, whatever commands arrived during the rebuild.

use std::time::Instant;

use event_store::StoreError;
use sqlx::pool::PoolConnection;
use sqlx::{Connection, PgConnection, PgPool, Postgres};
use tokio::sync::mpsc;
use tracing::{info, instrument, warn};

use crate::apply::FoldState;
use crate::checkpoint;
use crate::copy_rows;
use crate::fold::{ApplyError, ProjectedEvent};
use crate::fold::{TransactionRow, TransferRow};
use crate::projection::{Projection, SCHEMA};

/// Suffix of the tables a rebuild fills before the swap.
pub const REBUILD_SUFFIX: &str = "__rebuild";
/// Suffix the old table carries for the instant between the two renames.
const OLD_SUFFIX: &str = "__old";

/// Events per chunk read from the store. Large enough that a round trip and an
/// index range scan are amortised over many events, small enough (about 10 MB of rows)
/// that two chunks in flight cost little memory.
pub const REPLAY_CHUNK_EVENTS: i64 = 20_000;

/// Chunks the reader may be ahead of the writer: one being folded, one ready.
const READ_AHEAD_CHUNKS: usize = 2;

/// Chunks of rows the writer may be behind the folding side: one being sent, one ready.
const WRITE_BEHIND_CHUNKS: usize = 2;

/// Memory for each index build (`maintenance_work_mem`), so that sorting the millions
/// of keys of a large read model happens in memory rather than in temporary files.
const INDEX_BUILD_MEMORY: &str = "256MB";

/// Why a rebuild did not complete. Nothing was swapped in; the live tables are as they
/// were and the live projection went on.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("a rebuild of {0} is already running")]
    AlreadyRunning(Projection),
    #[error("an event cannot be applied")]
    Apply(#[from] ApplyError),
    #[error("reading the event store failed")]
    Store(#[from] StoreError),
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("the event store reader stopped unexpectedly")]
    ReaderGone,
    #[error("the writer of the rebuilt rows stopped unexpectedly")]
    WriterGone,
    #[error("cannot rebuild an index defined as {0:?}")]
    IndexDefinition(String),
}

/// What a completed rebuild did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RebuildReport {
    pub projections: Vec<&'static str>,
    /// Events folded into the fresh tables.
    pub events: u64,
    /// The checkpoint the swap set: live projection goes on from here.
    pub position: i64,
    pub elapsed_seconds: f64,
}

/// The right to rebuild some projections: advisory locks held on a connection of its
/// own, released when it closes (or the process dies).
pub struct RebuildLease {
    connection: PgConnection,
    projections: Vec<Projection>,
}

fn lock_key(projection: Projection) -> String {
    format!("eventledger-rebuild:{}", projection.name())
}

impl RebuildLease {
    /// Takes the rebuild lock of every projection named, or none of them.
    pub async fn acquire(pool: &PgPool, projections: &[Projection]) -> Result<Self, RebuildError> {
        let mut projections = projections.to_vec();
        projections.sort_by_key(|projection| Projection::ALL.iter().position(|p| p == projection));
        projections.dedup();
        let mut connection = pool.acquire().await?.detach();
        for projection in &projections {
            let acquired: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                .bind(lock_key(*projection))
                .fetch_one(&mut connection)
                .await?;
            if !acquired {
                // Closing the connection releases the locks taken so far.
                let _ = connection.close().await;
                return Err(RebuildError::AlreadyRunning(*projection));
            }
        }
        for projection in &projections {
            checkpoint::set_status(&mut connection, *projection, "rebuilding").await?;
        }
        Ok(Self {
            connection,
            projections,
        })
    }

    /// Rebuilds and swaps in; on failure drops the half-built tables and puts the state
    /// back to `live`. Releases the lease either way.
    pub async fn run(self, pool: &PgPool) -> Result<RebuildReport, RebuildError> {
        let started = Instant::now();
        let outcome = self.rebuild(pool).await;
        if let Err(error) = &outcome {
            warn!(error = %event_store::error_chain(error), "rebuild failed; the live tables stay");
            if let Err(error) = self.abandon(pool).await {
                warn!(error = %event_store::error_chain(&error), "could not clean up after the failed rebuild");
            }
        }
        let projections = self
            .projections
            .iter()
            .map(|projection| projection.name())
            .collect();
        self.release().await;
        let (events, position) = outcome?;
        let report = RebuildReport {
            projections,
            events,
            position,
            elapsed_seconds: started.elapsed().as_secs_f64(),
        };
        info!(?report, "rebuild swapped in");
        Ok(report)
    }

    /// Unlocks before closing: the server releases a closed session's locks only once
    /// its backend has exited, and the next rebuild may already be asking.
    async fn release(mut self) {
        let _ = sqlx::query("SELECT pg_advisory_unlock_all()")
            .execute(&mut self.connection)
            .await;
        let _ = self.connection.close().await;
    }

    async fn abandon(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let mut connection = pool.acquire().await?;
        for projection in &self.projections {
            sqlx::query(&format!(
                "DROP TABLE IF EXISTS {SCHEMA}.{}{REBUILD_SUFFIX}",
                projection.table()
            ))
            .execute(&mut *connection)
            .await?;
            sqlx::query(
                "UPDATE read_model.projection_checkpoints SET status = 'live' \
                 WHERE projection = $1 AND status = 'rebuilding'",
            )
            .bind(projection.name())
            .execute(&mut *connection)
            .await?;
        }
        Ok(())
    }

    #[instrument(skip_all, fields(projections = ?self.projections))]
    async fn rebuild(&self, pool: &PgPool) -> Result<(u64, i64), RebuildError> {
        let projections = &self.projections;
        let mut connection = pool.acquire().await?;
        for projection in projections {
            let table = projection.table();
            sqlx::query(&format!("DROP TABLE IF EXISTS {SCHEMA}.{table}{REBUILD_SUFFIX}"))
                .execute(&mut *connection)
                .await?;
            sqlx::query(&format!(
                "CREATE TABLE {SCHEMA}.{table}{REBUILD_SUFFIX} \
                 (LIKE {SCHEMA}.{table} INCLUDING ALL EXCLUDING INDEXES)"
            ))
            .execute(&mut *connection)
            .await?;
        }

        let (rows, batches) = mpsc::channel(WRITE_BEHIND_CHUNKS);
        let writer = tokio::spawn(write_batches(connection, batches));
        let mut sink = Sink::Copy(rows);
        let mut state = FoldState::default();
        let mut position = 0;
        let mut events = 0;
        let replayed = async {
            // Twice: the second pass takes what arrived during the first, so the pass
            // under the checkpoint locks below is short.
            for _pass in 0..2 {
                let head = log_head(pool).await?;
                events += replay(pool, &mut sink, &mut state, projections, position, head).await?;
                position = position.max(head);
            }
            Ok::<_, RebuildError>(())
        }
        .await;
        drop(sink);
        // The writer's own failure is the cause when it stopped taking rows.
        let mut connection = writer.await.map_err(|_| RebuildError::WriterGone)??;
        replayed?;
        if projections.contains(&Projection::Accounts) {
            let table = rebuild_table(Projection::Accounts);
            copy_rows::copy_accounts(&mut connection, &table, state.accounts.values()).await?;
            state.changed_accounts.clear();
        }
        if projections.contains(&Projection::Transfers) {
            // Still pending at the end of the replay: written once, and kept in the
            // state, where the catch-up below may still settle them (an upsert then).
            let table = rebuild_table(Projection::Transfers);
            copy_rows::copy_transfers(&mut connection, &table, state.transfers.pending.values()).await?;
            state.transfers.changed.clear();
        }
        for projection in projections {
            index_like_live(&mut connection, *projection).await?;
        }
        drop(connection);

        // What arrived while the indexes were built (tens of seconds for a large log),
        // replayed into the indexed fresh tables before the checkpoint locks are taken:
        // under them, the live projection waits, so only what arrives during this pass
        // is left for that pass.
        let head = log_head(pool).await?;
        if head > position {
            let mut transaction = pool.begin().await?;
            events += catch_up(pool, &mut transaction, &mut state, projections, position, head).await?;
            transaction.commit().await?;
            position = head;
        }

        let mut transaction = pool.begin().await?;
        let mut live = 0;
        for projection in projections {
            live = live.max(checkpoint::lock(&mut transaction, *projection).await?);
        }
        if live > position {
            events += catch_up(pool, &mut transaction, &mut state, projections, position, live).await?;
            position = live;
        }
        for projection in projections {
            swap(&mut transaction, *projection).await?;
            sqlx::query(
                "UPDATE read_model.projection_checkpoints SET position = $2, status = 'live', error = NULL, \
                 updated_at = now() WHERE projection = $1",
            )
            .bind(projection.name())
            .bind(position)
            .execute(&mut *transaction)
            .await?;
            checkpoint::notify(&mut transaction, *projection, position).await?;
        }
        transaction.commit().await?;
        metrics::counter!("projector_rebuilds_total").increment(1);
        Ok((events, position))
    }
}

/// The table a rebuild of `projection` fills before the swap.
fn rebuild_table(projection: Projection) -> String {
    format!("{}{REBUILD_SUFFIX}", projection.table())
}

/// Statement rows and settled transfer rows of one chunk, on their way to the writer
/// (pending transfer rows are held until the replay ends: a later event may settle them).
struct RowBatch {
    transactions: Vec<TransactionRow>,
    transfers: Vec<TransferRow>,
}

/// Where a replay writes the statement and transfer rows it folds.
enum Sink<'c> {
    /// To the writer task, which COPYs them into the fresh tables before they have
    /// indexes.
    Copy(mpsc::Sender<RowBatch>),
    /// Straight into the fresh tables, indexes built, in the caller's transaction: the
    /// catch-ups after the index builds, before and under the checkpoint locks.
    Insert(&'c mut PgConnection),
}

/// The writer task: COPYs each batch as it comes, and hands its connection back when
/// the replay has sent everything.
async fn write_batches(
    mut connection: PoolConnection<Postgres>,
    mut batches: mpsc::Receiver<RowBatch>,
) -> Result<PoolConnection<Postgres>, sqlx::Error> {
    let transactions = rebuild_table(Projection::AccountTransactions);
    let transfers = rebuild_table(Projection::Transfers);
    while let Some(batch) = batches.recv().await {
        copy_rows::copy_transactions(&mut connection, &transactions, &batch.transactions).await?;
        copy_rows::copy_transfers(&mut connection, &transfers, batch.transfers.iter()).await?;
    }
    Ok(connection)
}

/// The live table's indexes: name, definition, and for one behind a constraint (the
/// primary key) the constraint's name and definition.
type IndexDefinition = (String, String, Option<String>, Option<String>);

/// Builds on the fresh table every index the live table has, with the same definition
/// and, once swapped in, the same name; an index behind a constraint as that
/// constraint. Read from the catalog, so that an index a later migration adds to a read
/// model is rebuilt too, and nothing here repeats the migrations. Then gathers the
/// planner's statistics, which the fresh table would otherwise lack until autovacuum.
async fn index_like_live(connection: &mut PgConnection, projection: Projection) -> Result<(), RebuildError> {
    let table = projection.table();
    let fresh = rebuild_table(projection);
    let indexes: Vec<IndexDefinition> = sqlx::query_as(
        "SELECT class.relname::text, pg_get_indexdef(index.indexrelid), constraint_.conname::text, \
             pg_get_constraintdef(constraint_.oid) \
         FROM pg_index index \
         JOIN pg_class class ON class.oid = index.indexrelid \
         LEFT JOIN pg_constraint constraint_ \
             ON constraint_.conindid = index.indexrelid AND constraint_.conrelid = index.indrelid \
         WHERE index.indrelid = to_regclass($1) \
         ORDER BY class.relname",
    )
    .bind(format!("{SCHEMA}.{table}"))
    .fetch_all(&mut *connection)
    .await?;
    let mut transaction = connection.begin().await?;
    sqlx::query(&format!(
        "SET LOCAL maintenance_work_mem = '{INDEX_BUILD_MEMORY}'"
    ))
    .execute(&mut *transaction)
    .await?;
    for (name, definition, constraint, constraint_definition) in indexes {
        let statement = match (constraint, constraint_definition) {
            (Some(constraint), Some(constraint_definition)) => format!(
                "ALTER TABLE {SCHEMA}.{fresh} ADD CONSTRAINT {} {constraint_definition}",
                quote(&format!("{constraint}{REBUILD_SUFFIX}"))
            ),
            _ => {
                let (unique, using) = ["", "UNIQUE "]
                    .into_iter()
                    .find_map(|unique| {
                        definition
                            .strip_prefix(&format!("CREATE {unique}INDEX {name} ON {SCHEMA}.{table} USING "))
                            .map(|using| (unique, using))
                    })
                    .ok_or_else(|| RebuildError::IndexDefinition(definition.clone()))?;
                format!(
                    "CREATE {unique}INDEX {} ON {SCHEMA}.{fresh} USING {using}",
                    quote(&format!("{name}{REBUILD_SUFFIX}"))
                )
            }
        };
        sqlx::query(&statement).execute(&mut *transaction).await?;
    }
    sqlx::query(&format!("ANALYZE {SCHEMA}.{fresh}"))
        .execute(&mut *transaction)
        .await?;
    transaction.commit().await?;
    Ok(())
}

/// Takes the lease and rebuilds: `projector rebuild` and the admin API.
pub async fn rebuild(pool: &PgPool, projections: &[Projection]) -> Result<RebuildReport, RebuildError> {
    RebuildLease::acquire(pool, projections).await?.run(pool).await
}

/// Puts back to `live` any projection left `rebuilding` by a rebuild whose process died
/// (its lease is free, so no rebuild is running).
pub async fn clear_abandoned(pool: &PgPool) -> Result<(), RebuildError> {
    for projection in Projection::ALL {
        match RebuildLease::acquire(pool, &[projection]).await {
            Ok(lease) => {
                let abandoned = lease.abandon(pool).await;
                lease.release().await;
                abandoned?;
            }
            Err(RebuildError::AlreadyRunning(_)) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

async fn flush_accounts(
    connection: &mut PgConnection,
    state: &mut FoldState,
    projections: &[Projection],
) -> Result<(), sqlx::Error> {
    if projections.contains(&Projection::Accounts) {
        state
            .flush(
                connection,
                Projection::Accounts,
                &rebuild_table(Projection::Accounts),
            )
            .await?;
    }
    Ok(())
}

/// The log's head position now.
async fn log_head(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT position FROM event_store_head")
        .fetch_one(pool)
        .await
}

/// Replays `after+1..=until` into the indexed fresh tables with plain inserts, inside
/// `connection`'s transaction, and writes the accounts it changed: the catch-ups after
/// the index builds. Returns the events replayed.
async fn catch_up(
    pool: &PgPool,
    connection: &mut PgConnection,
    state: &mut FoldState,
    projections: &[Projection],
    after: i64,
    until: i64,
) -> Result<u64, RebuildError> {
    let mut sink = Sink::Insert(&mut *connection);
    let events = replay(pool, &mut sink, state, projections, after, until).await?;
    flush_accounts(connection, state, projections).await?;
    Ok(events)
}

/// Renames the rebuilt table in and drops the old one, keeping index names free of the
/// rebuild suffix so that the next rebuild's names do not collide.
async fn swap(connection: &mut PgConnection, projection: Projection) -> Result<(), sqlx::Error> {
    let table = projection.table();
    for statement in [
        format!("ALTER TABLE {SCHEMA}.{table} RENAME TO {table}{OLD_SUFFIX}"),
        format!("ALTER TABLE {SCHEMA}.{table}{REBUILD_SUFFIX} RENAME TO {table}"),
        format!("DROP TABLE {SCHEMA}.{table}{OLD_SUFFIX}"),
    ] {
        sqlx::query(&statement).execute(&mut *connection).await?;
    }
    let indexes: Vec<String> =
        sqlx::query_scalar("SELECT indexname FROM pg_indexes WHERE schemaname = $1 AND tablename = $2")
            .bind(SCHEMA)
            .bind(table)
            .fetch_all(&mut *connection)
            .await?;
    for index in indexes.iter().filter(|index| index.contains(REBUILD_SUFFIX)) {
        let renamed = index.replace(REBUILD_SUFFIX, "");
        let taken: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2)")
                .bind(SCHEMA)
                .bind(&renamed)
                .fetch_one(&mut *connection)
                .await?;
        if !taken {
            sqlx::query(&format!(
                "ALTER INDEX {SCHEMA}.{} RENAME TO {}",
                quote(index),
                quote(&renamed)
            ))
            .execute(&mut *connection)
            .await?;
        }
    }
    Ok(())
}

fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// Folds every event in `(after, until]` into `state` and writes the statement and
/// transfer rows into the rebuild tables through `sink` as it goes (account rows are
/// written once, at the end). Returns the number of events.
async fn replay(
    pool: &PgPool,
    sink: &mut Sink<'_>,
    state: &mut FoldState,
    projections: &[Projection],
    after: i64,
    until: i64,
) -> Result<u64, RebuildError> {
    if until <= after {
        return Ok(0);
    }
    let (sender, mut receiver) = mpsc::channel(READ_AHEAD_CHUNKS);
    let reader = tokio::spawn(read_chunks(pool.clone(), after, until, sender));
    let mut events = 0u64;
    let mut expected = after + 1;
    while let Some(chunk) = receiver.recv().await {
        let chunk = chunk?;
        for event in &chunk {
            // Guarantee 2, asserted where it is consumed.
            if event.position != expected {
                return Err(StoreError::PositionGap {
                    expected,
                    found: event.position,
                }
                .into());
            }
            expected += 1;
            for projection in projections {
                state.apply(*projection, event)?;
            }
        }
        events += chunk.len() as u64;
        match sink {
            Sink::Copy(rows) => {
                let batch = RowBatch {
                    transactions: std::mem::take(&mut state.transactions),
                    transfers: std::mem::take(&mut state.transfers.settled),
                };
                rows.send(batch).await.map_err(|_| RebuildError::WriterGone)?;
            }
            Sink::Insert(connection) => {
                for projection in projections {
                    if *projection != Projection::Accounts {
                        state
                            .flush(connection, *projection, &rebuild_table(*projection))
                            .await?;
                    }
                }
            }
        }
    }
    reader.await.map_err(|_| RebuildError::ReaderGone)?;
    if expected != until + 1 {
        return Err(StoreError::PositionGap {
            expected,
            found: until + 1,
        }
        .into());
    }
    metrics::counter!("projector_rebuild_events_total").increment(events);
    Ok(events)
}

type Chunk = Result<Vec<ProjectedEvent>, RebuildError>;

/// Reads `(after, until]` in keyset chunks and decodes them, one chunk ahead of the
/// folding side. Only the columns the read models need are read (not metadata).
async fn read_chunks(pool: PgPool, after: i64, until: i64, sender: mpsc::Sender<Chunk>) {
    let mut position = after;
    while position < until {
        let chunk = read_chunk(&pool, position, until).await;
        let last = match &chunk {
            Ok(events) => events.last().map(|event| event.position),
            Err(_) => None,
        };
        let failed = chunk.is_err();
        if sender.send(chunk).await.is_err() || failed {
            return;
        }
        match last {
            Some(last) => position = last,
            None => return,
        }
    }
}

type EventColumns = (
    i64,
    i64,
    chrono::DateTime<chrono::Utc>,
    String,
    i32,
    serde_json::Value,
);

async fn read_chunk(pool: &PgPool, after: i64, until: i64) -> Chunk {
    let rows: Vec<EventColumns> = sqlx::query_as(
        "SELECT position, stream_version, recorded_at, event_type, schema_version, data FROM events \
         WHERE position > $1 AND position <= $2 ORDER BY position LIMIT $3",
    )
    .bind(after)
    .bind(until)
    .bind(REPLAY_CHUNK_EVENTS)
    .fetch_all(pool)
    .await
    .map_err(StoreError::from)?;
    let mut events = Vec::with_capacity(rows.len());
    for (position, stream_version, recorded_at, event_type, schema_version, data) in rows {
        events.push(ProjectedEvent::from_parts(
            position,
            stream_version,
            recorded_at,
            &event_type,
            schema_version,
            data,
        )?);
    }
    Ok(events)
}
