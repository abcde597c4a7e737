//! Group reads for `GET /accounts/{id}`: the lookups that arrive while others are being
//! read go to PostgreSQL together, as one statement, the read side's counterpart of the
//! command side's group commit.
//!
//! Why: a lookup is one indexed row, so nearly all of its cost is the round trip
//! around it (the pool, the protocol, PostgreSQL waking up and planning, the sockets),
//! and on a two-core machine that PostgreSQL shares with the server that cost is the
//! bottleneck. One statement for many ids pays it once for all of them.
//!
//! Why it changes nothing a client can see:
//!
//! - A lookup joins a batch only before the batch's statement is sent, so the snapshot it
//!   is answered from is taken after the request arrived: never older than a statement
//!   of its own would have seen. Read-your-writes ([`crate::consistency`]) still checks
//!   each answer's position against its own `min_position`, and reads again if needed.
//! - One statement reads the checkpoint and the rows from one snapshot, so every answer
//!   of a batch carries the position of the very snapshot it was read from, as before.
//! - The wrapped key is joined in the same statement: once erased, no row of any batch
//!   can carry it, and the owner is `null`.
//! - Owners are opened by each request's own task ([`super::accounts`]), not here.
//!
//! At low load a lookup finds no batch in flight and goes alone at once; batches form
//! only while every read slot is busy, which is exactly when waiting costs nothing extra.

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc, oneshot};
use uuid::Uuid;

use super::accounts::{AccountRow, account_columns};
use super::checkpoint_of;
use crate::error::{QueryError, Result};

/// Most ids in one statement: bounds a statement's size and a batch's rows. More than
/// the requests that can wait at once on a few read slots at the default concurrency.
pub const MAX_BATCH: usize = 128;

/// Statements in flight at once. Measured with `bench-queries` on two cores shared with
/// PostgreSQL: 1 or 2 slots gave about 15,000 lookups/s at 8 batched per statement, 4
/// slots 8,000/s, 8 slots 6,600/s: more slots split the lookups into smaller batches,
/// and every statement costs PostgreSQL about 200 µs of CPU whatever its size. Two
/// keep a lookup from waiting behind one slow statement, and leave the rest of the pool
/// to every other query.
pub const READ_SLOTS: usize = 2;

/// Lookups queued before a batch takes them: more than the HTTP limit lets in at once
/// (`HTTP_MAX_CONCURRENT_REQUESTS`, 512), so the queue bounds memory, not clients.
pub const MAX_QUEUED: usize = 1024;

/// What a lookup gets back: the checkpoint of the snapshot read, and the row if the
/// account exists. The error is shared by every lookup of the failed batch.
type Answer = std::result::Result<(i64, Option<AccountRow>), Arc<sqlx::Error>>;

struct Lookup {
    account_id: Uuid,
    reply: oneshot::Sender<Answer>,
}

/// The handle requests read accounts through; cheap to clone. The task that batches
/// them ends once every handle is dropped.
#[derive(Clone)]
pub struct AccountReads {
    lookups: mpsc::Sender<Lookup>,
}

impl AccountReads {
    /// Starts batching lookups onto `pool`.
    pub fn start(pool: PgPool) -> Self {
        let (lookups, queue) = mpsc::channel(MAX_QUEUED);
        tokio::spawn(collect(pool, queue));
        Self { lookups }
    }

    /// The account (if it exists) and the accounts checkpoint of the snapshot it was read
    /// from.
    pub(crate) async fn read(&self, account_id: Uuid) -> Result<(i64, Option<AccountRow>)> {
        let (reply, answer) = oneshot::channel();
        self.lookups
            .send(Lookup { account_id, reply })
            .await
            .map_err(|_| QueryError::ReaderStopped)?;
        answer
            .await
            .map_err(|_| QueryError::ReaderStopped)?
            .map_err(QueryError::SharedDatabase)
    }
}

/// Takes every lookup waiting whenever a read slot is free, and reads them as one batch.
async fn collect(pool: PgPool, mut queue: mpsc::Receiver<Lookup>) {
    let slots = Arc::new(Semaphore::new(READ_SLOTS));
    loop {
        // The slot first: while all are busy, lookups gather in the queue.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = Vec::new();
        if queue.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        let pool = pool.clone();
        tokio::spawn(async move {
            answer(&pool, batch).await;
            drop(slot);
        });
    }
}

/// Reads the accounts of `batch` in one statement and answers each lookup.
async fn answer(pool: &PgPool, batch: Vec<Lookup>) {
    let ids: Vec<Uuid> = batch.iter().map(|lookup| lookup.account_id).collect();
    let rows = sqlx::query_as::<_, AccountRow>(concat!(
        "SELECT checkpoint.position AS checkpoint, found.* FROM ",
        checkpoint_of!("accounts"),
        " LEFT JOIN LATERAL (SELECT ",
        account_columns!(),
        " FROM read_model.accounts LEFT JOIN pii_keys ON pii_keys.subject_id = account_id",
        " WHERE account_id = ANY($1)) found ON true"
    ))
    .bind(&ids)
    .fetch_all(pool)
    .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(error) => {
            let error = Arc::new(error);
            for lookup in batch {
                // A lookup whose request is gone no longer waits for its answer.
                let _ = lookup.reply.send(Err(error.clone()));
            }
            return;
        }
    };
    // At least one row, the checkpoint's, even when no account matched.
    let checkpoint = rows.first().map_or(0, |row| row.checkpoint);
    let mut wanted: HashMap<Uuid, usize> = HashMap::with_capacity(ids.len());
    for id in &ids {
        *wanted.entry(*id).or_default() += 1;
    }
    let mut found: HashMap<Uuid, AccountRow> = rows
        .into_iter()
        .filter_map(|row| row.account_id.map(|id| (id, row)))
        .collect();
    for lookup in batch {
        // The same account asked for twice in one batch: each gets its own copy.
        let left = wanted.get_mut(&lookup.account_id).map_or(0, |left| {
            *left -= 1;
            *left
        });
        let row = if left == 0 {
            found.remove(&lookup.account_id)
        } else {
            found.get(&lookup.account_id).cloned()
        };
        let _ = lookup.reply.send(Ok((checkpoint, row)));
    }
}
