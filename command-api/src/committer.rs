//! The command-handling core: decides commands against cached state and appends them
//! with group commit (ARCHITECTURE.md, "Where speed comes from").
//!
//! Handlers submit through a [`CommandBus`]. One committer task drains a bounded queue,
//! up to [`MAX_BATCH_COMMANDS`] at a time, and for each batch:
//!
//! 1. opens one transaction; if any command carries an `Idempotency-Key`, takes the
//!    event store's head lock first and looks the keys up, so a key another instance
//!    stored meanwhile is replayed rather than executed twice;
//! 2. decides every command in queue order against the [`AccountCache`] plus what the
//!    batch itself decided so far, so commands on one account stay ordered and each sees
//!    the ones before it;
//! 3. appends all of them with `append_batch_in` (each with the expected version of every
//!    stream it touches; a transfer is one request over three streams), writes the
//!    idempotency rows of the accepted ones, stores the data keys of the accounts it
//!    opened and destroys those of the accounts whose personal data it erased (one
//!    statement each, [`event_store::pii`]), and commits;
//! 4. updates the cache and answers every handler through its oneshot.
//!
//! The queue is bounded by [`COMMAND_QUEUE_CAPACITY`]: when full, [`CommandBus::execute`]
//! answers `Overloaded` (503 with `Retry-After`) at once, so memory cannot grow with load.
//! Handlers load an account missing from the cache before they submit, so the committer
//! never waits on reads in the common case. A version conflict (another instance wrote)
//! evicts the entry; the handler reloads and resubmits, at most [`MAX_CONFLICT_RETRIES`]
//! times.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use domain::{
    Account, AccountCommand, AccountEvent, AccountId, DomainError, LedgerEvent, SettleCommand, Transfer,
    TransferCommand, TransferEvent, TransferId, decide_settle, decide_transfer,
};
use event_store::append::append_batch_in;
use event_store::pii::{self, WrappedKey};
use event_store::{
    AppendOutcome, AppendRejection, AppendRequest, EventStore, ExpectedVersion, Metadata, NewEvent,
    StoreError, StreamWrite, error_chain,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::instrument;

use crate::cache::{ACCOUNT_CACHE_CAPACITY, AccountCache, CachedAccount};
use crate::dto::{AccountCommandResponse, TransferResponse};
use crate::error::ApiError;
use crate::idempotency::{self, KeyClaim, KeyRow, KeyScope, StoredKey, StoredResponse};
use crate::preconditions::Preconditions;

/// Commands waiting for the committer. At the measured 5-10k commands/s of one batching
/// committer this is under a second of work: enough to absorb bursts, small enough that a
/// queued command is answered well within a client's timeout and memory stays bounded.
pub const COMMAND_QUEUE_CAPACITY: usize = 4_096;

/// The most commands decided and appended in one transaction. A transfer appends three
/// events, so a full batch stays far below the store's `MAX_EVENTS_PER_BATCH` (10,000);
/// larger batches only lengthen the head lock that every other writer waits on.
pub const MAX_BATCH_COMMANDS: usize = 1_024;

/// How often a command is reloaded and decided again after another writer changed one
/// of its streams. Conflicts come from other instances only (this one orders its own), so
/// more than a few in a row means heavy contention the client should see (409).
pub const MAX_CONFLICT_RETRIES: usize = 5;

/// The longest one group commit may take, from `BEGIN` to `COMMIT`. A healthy batch takes
/// milliseconds; past this PostgreSQL is stuck (a lock, a dead connection), and waiting
/// longer would only hold every queued command hostage. The batch then fails like a
/// failed commit: 503, and a retry with the same `Idempotency-Key` settles it.
pub const BATCH_TIMEOUT: Duration = Duration::from_secs(10);

/// What a client asks, in domain terms.
#[derive(Debug, Clone)]
pub enum Command {
    /// A command on one account, under the client's `If-Match`/`If-None-Match`.
    Account {
        account_id: AccountId,
        command: AccountCommand,
        preconditions: Preconditions,
    },
    /// Money between two accounts: three streams, one atomic append.
    Transfer(TransferCommand),
    /// Posting, voiding or expiring a pending transfer: three streams, one atomic
    /// append, under the client's `If-Match` on the transfer stream's version.
    Settle {
        command: SettleCommand,
        /// The transfer as last read from its stream; `None` until the bus reads it, again
        /// before every attempt ([`CommandBus::execute`]), so a conflict is decided on
        /// what won.
        loaded: Option<LoadedTransfer>,
        preconditions: Preconditions,
    },
}

/// A transfer's state and its stream's version, as read from the store.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedTransfer {
    pub state: Transfer,
    pub version: u64,
}

impl Command {
    /// The command's name, for event metadata and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Account { command, .. } => command.name(),
            Command::Transfer(_) => "transfer",
            Command::Settle { command, .. } => command.name(),
        }
    }

    /// The accounts whose state the command is decided on.
    fn accounts(&self) -> Vec<AccountId> {
        match self {
            Command::Account { account_id, .. } => vec![*account_id],
            Command::Transfer(transfer) => vec![transfer.from, transfer.to],
            Command::Settle { loaded, .. } => loaded
                .iter()
                .flat_map(|loaded| [loaded.state.from, loaded.state.to])
                .collect(),
        }
    }

    /// The transfer a settle command works on.
    fn settled_transfer(&self) -> Option<TransferId> {
        match self {
            Command::Settle { command, .. } => Some(command.transfer_id),
            _ => None,
        }
    }

    fn opens_account(&self) -> bool {
        matches!(
            self,
            Command::Account {
                command: AccountCommand::Open { .. },
                ..
            }
        )
    }
}

/// One command with what travels with it into the events.
#[derive(Debug, Clone)]
pub struct Submission {
    pub command: Command,
    /// Stored in every event the command appends.
    pub metadata: Metadata,
    /// The idempotency key to store with the events, if the client sent one.
    pub idempotency: Option<KeyClaim>,
    /// For a command that opens an account: the account's new data key, which sealed
    /// the owner in the command. Stored in the transaction that appends the events, and
    /// only if they are appended.
    pub data_key: Option<WrappedKey>,
}

/// How a command ended, when it did not fail.
#[derive(Debug, Clone, PartialEq)]
pub enum Executed {
    /// Appended and committed; this is the answer (also stored under the key, if any).
    Committed(StoredResponse),
    /// The idempotency key was already stored (by another instance, or a request that
    /// finished between the handler's look-up and the batch): the first answer, and the
    /// fingerprint of the request that produced it.
    AlreadyStored(StoredKey),
}

/// What the committer answers one job.
#[derive(Debug)]
enum Verdict {
    Committed(StoredResponse),
    AlreadyStored(StoredKey),
    Refused(ApiError),
    /// The preconditions do not hold for the cached version (`None`: no account); the
    /// handler reloads once to rule out a stale cache before answering 412.
    PreconditionFailed {
        expected: Option<u64>,
        actual: Option<u64>,
    },
    /// The cache lacks an account the command needs, or another writer changed one of its
    /// streams (the entry is evicted): reload and submit again.
    Reload,
}

struct Job {
    submission: Submission,
    reply: oneshot::Sender<Verdict>,
}

/// The shared, bounded account cache. A std mutex: it is held only for in-memory work,
/// never across an await, and the committer holds it once per batch.
type SharedCache = Arc<Mutex<AccountCache>>;

fn lock(cache: &SharedCache) -> MutexGuard<'_, AccountCache> {
    cache.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The handlers' side of the committer. Cheap to clone.
#[derive(Clone)]
pub struct CommandBus {
    sender: mpsc::Sender<Job>,
    cache: SharedCache,
    store: EventStore,
}

/// The committer's bounds; [`Default`] gives the production values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitterSettings {
    /// See [`COMMAND_QUEUE_CAPACITY`].
    pub queue_capacity: usize,
    /// See [`MAX_BATCH_COMMANDS`].
    pub max_batch_commands: usize,
    /// See [`ACCOUNT_CACHE_CAPACITY`].
    pub cache_capacity: usize,
}

impl Default for CommitterSettings {
    fn default() -> Self {
        Self {
            queue_capacity: COMMAND_QUEUE_CAPACITY,
            max_batch_commands: MAX_BATCH_COMMANDS,
            cache_capacity: ACCOUNT_CACHE_CAPACITY,
        }
    }
}

/// Starts the committer over `store`. It runs until every [`CommandBus`] clone is dropped,
/// answering what is queued first.
pub fn spawn(store: EventStore, settings: CommitterSettings) -> (CommandBus, JoinHandle<()>) {
    let (sender, receiver) = mpsc::channel(settings.queue_capacity.max(1));
    let cache: SharedCache = Arc::new(Mutex::new(AccountCache::new(settings.cache_capacity)));
    let committer = Committer {
        store: store.clone(),
        cache: cache.clone(),
        receiver,
        max_batch_commands: settings.max_batch_commands.clamp(1, MAX_BATCH_COMMANDS),
    };
    let task = tokio::spawn(committer.run());
    (CommandBus { sender, cache, store }, task)
}

impl CommandBus {
    /// The event store's pool, for the handlers' own reads (idempotency look-ups).
    pub fn pool(&self) -> &sqlx::PgPool {
        self.store.pool()
    }

    /// The event store, for the handlers' own reads (a repeated erasure's answer).
    pub fn store(&self) -> &EventStore {
        &self.store
    }

    /// How many accounts the cache holds, for tests and metrics.
    pub fn cached_accounts(&self) -> usize {
        lock(&self.cache).len()
    }

    /// Decides and appends one command, reloading and retrying after conflicts.
    #[instrument(skip_all, fields(command = submission.command.name()))]
    pub async fn execute(&self, submission: Submission) -> Result<Executed, ApiError> {
        let started = Instant::now();
        let name = submission.command.name();
        let result = self.execute_with_retries(submission).await;
        let outcome = match &result {
            Ok(Executed::Committed(_)) => "committed",
            Ok(Executed::AlreadyStored(_)) => "already_stored",
            Err(error) => error.code(),
        };
        metrics::counter!("command_api_commands_total", "command" => name, "outcome" => outcome).increment(1);
        metrics::histogram!("command_api_command_seconds", "command" => name)
            .record(started.elapsed().as_secs_f64());
        result
    }

    async fn execute_with_retries(&self, mut submission: Submission) -> Result<Executed, ApiError> {
        for attempt in 0..=MAX_CONFLICT_RETRIES {
            let first_attempt = attempt == 0;
            if let Command::Settle { command, loaded, .. } = &mut submission.command {
                // Not cached: a transfer is settled once, and after a conflict the
                // winner's event must be read.
                *loaded = Some(load_transfer(&self.store, command.transfer_id).await?.ok_or(
                    ApiError::Domain(DomainError::TransferNotFound {
                        transfer_id: command.transfer_id,
                    }),
                )?);
            }
            self.load_missing(&submission.command, !first_attempt).await?;
            let (reply, answer) = oneshot::channel();
            let job = Job {
                submission: submission.clone(),
                reply,
            };
            self.sender.try_send(job).map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => ApiError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => ApiError::ShuttingDown,
            })?;
            metrics::gauge!("command_api_queue_depth")
                .set((self.sender.max_capacity() - self.sender.capacity()) as f64);
            match answer.await.map_err(|_| ApiError::ShuttingDown)? {
                Verdict::Committed(response) => return Ok(Executed::Committed(response)),
                Verdict::AlreadyStored(stored) => return Ok(Executed::AlreadyStored(stored)),
                Verdict::Refused(error) => {
                    // A transfer id that executed before is refused as such, whatever
                    // else its accounts would refuse now (a retry after the first
                    // attempt spent the funds): one probe, only on this uncommon path.
                    if let Command::Transfer(transfer) = &submission.command
                        && !matches!(
                            error,
                            ApiError::Domain(DomainError::TransferAlreadyExecuted { .. })
                        )
                        && self.stored_version(&transfer.id.stream_id()).await? > 0
                    {
                        return Err(ApiError::from(DomainError::TransferAlreadyExecuted {
                            transfer_id: transfer.id,
                        }));
                    }
                    // A refusal decided on a cached state another instance has moved
                    // past would be wrong (say, funds it deposited): check the version,
                    // one index probe, and only on this uncommon path.
                    if !(first_attempt && depends_on_state(&error))
                        || self.cache_is_current(&submission.command).await?
                    {
                        return Err(error);
                    }
                }
                Verdict::PreconditionFailed { expected, actual } => {
                    if !first_attempt {
                        return Err(ApiError::PreconditionFailed { expected, actual });
                    }
                    // The cached version may be behind another instance's write: reload
                    // before telling the client its version is wrong.
                    let mut cache = lock(&self.cache);
                    for account in submission.command.accounts() {
                        cache.evict(&account);
                    }
                }
                Verdict::Reload => {}
            }
            metrics::counter!("command_api_command_retries_total").increment(1);
        }
        Err(ApiError::ConcurrentModification)
    }

    /// The stream's version as stored (0 for a stream with no event): one index probe.
    async fn stored_version(&self, stream_id: &str) -> Result<u64, ApiError> {
        let version: i64 =
            sqlx::query_scalar("SELECT coalesce(max(stream_version), 0) FROM events WHERE stream_id = $1")
                .bind(stream_id)
                .fetch_one(self.store.pool())
                .await
                .map_err(|error| ApiError::Unavailable(StoreError::Database(error)))?;
        Ok(version as u64)
    }

    /// Whether every account of the command is cached at the version the store holds.
    /// Evicts the ones that are not, so the next attempt reloads them.
    async fn cache_is_current(&self, command: &Command) -> Result<bool, ApiError> {
        let mut current = true;
        for account_id in command.accounts() {
            let stored = self.stored_version(&account_id.stream_id()).await?;
            let mut cache = lock(&self.cache);
            if cache.get(&account_id).map(|cached| cached.version) != Some(stored) {
                cache.evict(&account_id);
                current = false;
            }
        }
        Ok(current)
    }

    /// Loads into the cache every account the command needs and the cache lacks. An
    /// account that does not exist is a 404 here, before anything is queued; opening an
    /// account needs no read unless a conflict said it may exist (`after_conflict`).
    async fn load_missing(&self, command: &Command, after_conflict: bool) -> Result<(), ApiError> {
        if command.opens_account() && !after_conflict {
            return Ok(());
        }
        for account_id in command.accounts() {
            if lock(&self.cache).contains(&account_id) {
                continue;
            }
            match load_account(&self.store, account_id).await? {
                Some(account) => lock(&self.cache).offer(account_id, account),
                None if command.opens_account() => {}
                None => {
                    return Err(ApiError::Domain(DomainError::AccountNotFound {
                        account_id: Some(account_id),
                    }));
                }
            }
        }
        Ok(())
    }
}

/// Whether a domain refusal rests on state that another writer could have changed.
/// Existence, a currency, a used transfer id, naming one account twice, and a transfer
/// that is no longer pending (or its reserved amount) cannot change.
fn depends_on_state(error: &ApiError) -> bool {
    match error {
        ApiError::Domain(domain) => !matches!(
            domain,
            DomainError::AccountAlreadyExists { .. }
                | DomainError::TransferAlreadyExecuted { .. }
                | DomainError::TransferNotPending { .. }
                | DomainError::TransferExpired { .. }
                | DomainError::AmountExceedsPending { .. }
                | DomainError::SameAccount { .. }
                | DomainError::CurrencyMismatch { .. }
        ),
        _ => false,
    }
}

/// Reads and folds one transfer's stream; `None` if the id was never used.
#[instrument(skip_all, fields(transfer_id = %transfer_id))]
pub async fn load_transfer(
    store: &EventStore,
    transfer_id: TransferId,
) -> Result<Option<LoadedTransfer>, ApiError> {
    let stream_id = transfer_id.stream_id();
    let recorded = store
        .read_stream(&stream_id, 0)
        .await
        .map_err(ApiError::Unavailable)?;
    let mut state: Option<Transfer> = None;
    let mut version = 0;
    for event in &recorded {
        let decoded = event.decode().map_err(|error| {
            ApiError::Internal(format!("stream {stream_id} holds an unreadable event: {error}"))
        })?;
        let LedgerEvent::Transfer(transfer_event) = decoded else {
            return Err(ApiError::Internal(format!(
                "stream {stream_id} holds an account event"
            )));
        };
        state = Some(
            Transfer::evolve(state, &transfer_event)
                .map_err(|error| ApiError::Internal(format!("stream {stream_id} is corrupt: {error}")))?,
        );
        version = event.stream_version as u64;
    }
    Ok(state.map(|state| LoadedTransfer { state, version }))
}

/// Reads and folds one account's stream; `None` if it was never opened.
#[instrument(skip_all, fields(account_id = %account_id))]
pub async fn load_account(
    store: &EventStore,
    account_id: AccountId,
) -> Result<Option<CachedAccount>, ApiError> {
    let stream_id = account_id.stream_id();
    let recorded = store
        .read_stream(&stream_id, 0)
        .await
        .map_err(ApiError::Unavailable)?;
    let mut state: Option<Account> = None;
    let mut version = 0;
    for event in &recorded {
        let decoded = event.decode().map_err(|error| {
            ApiError::Internal(format!("stream {stream_id} holds an unreadable event: {error}"))
        })?;
        let LedgerEvent::Account(account_event) = decoded else {
            return Err(ApiError::Internal(format!(
                "stream {stream_id} holds a transfer event"
            )));
        };
        state = Some(
            Account::evolve(state, &account_event)
                .map_err(|error| ApiError::Internal(format!("stream {stream_id} is corrupt: {error}")))?,
        );
        version = event.stream_version as u64;
    }
    Ok(state.map(|state| CachedAccount { state, version }))
}

/// The committer task's own state.
struct Committer {
    store: EventStore,
    cache: SharedCache,
    receiver: mpsc::Receiver<Job>,
    max_batch_commands: usize,
}

/// A job decided into an append request, with what its answer needs.
struct Planned {
    job_index: usize,
    request_index: usize,
    answer: PlannedAnswer,
}

enum PlannedAnswer {
    Account {
        account_id: AccountId,
        after: Account,
        created: bool,
    },
    /// A transfer created (201) or settled (200), with its state after the command.
    Transfer { transfer: Transfer, created: bool },
}

impl Committer {
    async fn run(mut self) {
        let mut jobs = Vec::with_capacity(self.max_batch_commands);
        loop {
            let received = self.receiver.recv_many(&mut jobs, self.max_batch_commands).await;
            if received == 0 {
                return;
            }
            metrics::histogram!("command_api_batch_commands").record(jobs.len() as f64);
            self.commit_batch(std::mem::take(&mut jobs)).await;
        }
    }

    /// One group commit, in a `group commit` span linked to the span of every command it
    /// carries (their requests' contexts, from the metadata), so a trace of one command
    /// finds the batch and the batch finds its commands.
    #[instrument(name = "group commit", skip_all, fields(commands = jobs.len()))]
    async fn commit_batch(&self, jobs: Vec<Job>) {
        if event_store::trace_context::exporting() {
            let span = tracing::Span::current();
            for job in &jobs {
                event_store::trace_context::add_link(&span, job.submission.metadata.trace.as_deref());
            }
        }
        let mut verdicts: Vec<Option<Verdict>> = jobs.iter().map(|_| None).collect();
        let touched: Vec<AccountId> = jobs
            .iter()
            .flat_map(|job| job.submission.command.accounts())
            .collect();
        let started = Instant::now();
        let committed =
            tokio::time::timeout(BATCH_TIMEOUT, self.try_commit_batch(&jobs, &mut verdicts)).await;
        metrics::histogram!("command_api_batch_seconds").record(started.elapsed().as_secs_f64());
        let failure = match committed {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(error_chain(&error)),
            Err(_) => Some(format!("the batch took longer than {BATCH_TIMEOUT:?}")),
        };
        if let Some(error) = failure {
            tracing::error!(%error, commands = jobs.len(), "group commit failed");
            // The commit may or may not have happened: forget what the batch touched.
            let mut cache = lock(&self.cache);
            for account in &touched {
                cache.evict(account);
            }
            // Refusals too: they may rest on earlier commands of the batch that are lost.
            for verdict in verdicts.iter_mut() {
                if !matches!(verdict, Some(Verdict::AlreadyStored(_))) {
                    *verdict = Some(Verdict::Refused(ApiError::CommitFailed));
                }
            }
        }
        for (job, verdict) in jobs.into_iter().zip(verdicts) {
            let verdict = verdict.unwrap_or(Verdict::Refused(ApiError::Internal(
                "a command of the batch got no verdict".to_owned(),
            )));
            // The handler may have gone (client hung up); its command stands regardless.
            let _ = job.reply.send(verdict);
        }
    }

    async fn try_commit_batch(
        &self,
        jobs: &[Job],
        verdicts: &mut [Option<Verdict>],
    ) -> Result<(), StoreError> {
        let mut transaction = self.store.begin().await?;

        // Keys stored by another instance since the handlers looked: replay, never redo.
        let scopes: Vec<KeyScope> = jobs
            .iter()
            .filter_map(|job| {
                job.submission
                    .idempotency
                    .as_ref()
                    .map(|claim| claim.scope.clone())
            })
            .collect();
        if !scopes.is_empty() {
            // The head lock, as the append will take it: no other append (and so no
            // other key row) can commit between this look-up and ours.
            sqlx::query("SELECT position FROM event_store_head FOR UPDATE")
                .execute(&mut *transaction)
                .await?;
            let stored = idempotency::find_in(&mut transaction, &scopes).await?;
            for (job, verdict) in jobs.iter().zip(verdicts.iter_mut()) {
                if let Some(found) = job
                    .submission
                    .idempotency
                    .as_ref()
                    .and_then(|claim| stored.get(&claim.scope))
                {
                    *verdict = Some(Verdict::AlreadyStored(found.clone()));
                }
            }
        }

        let (requests, planned, mut overlay) = self.decide_all(jobs, verdicts);
        if requests.is_empty() {
            transaction.commit().await?;
            return Ok(());
        }

        let outcomes = append_batch_in(&mut transaction, &requests).await?;
        let mut poisoned: Vec<AccountId> = Vec::new();
        let mut poisoned_transfers: Vec<TransferId> = Vec::new();
        let mut answers: Vec<(usize, StoredResponse, i64)> = Vec::new();
        let mut new_keys: Vec<WrappedKey> = Vec::new();
        let mut erased: Vec<uuid::Uuid> = Vec::new();
        for plan in &planned {
            let job = &jobs[plan.job_index];
            match &outcomes[plan.request_index] {
                Ok(outcome) => {
                    let response = render(&plan.answer, outcome);
                    answers.push((plan.job_index, response, outcome.last_position));
                    new_keys.extend(job.submission.data_key.iter().cloned());
                    if let Command::Account {
                        account_id,
                        command: AccountCommand::ErasePersonalData,
                        ..
                    } = &job.submission.command
                    {
                        erased.push(account_id.as_uuid());
                    }
                }
                Err(rejection) => {
                    let accounts = job.submission.command.accounts();
                    verdicts[plan.job_index] = Some(rejected(rejection, &job.submission.command));
                    poisoned.extend(accounts);
                    poisoned_transfers.extend(job.submission.command.settled_transfer());
                }
            }
        }
        // A settle refused on the state a rejected one left in the batch (its post, say,
        // made the transfer "not pending") was decided on something that never happened:
        // decide it again.
        for (job, verdict) in jobs.iter().zip(verdicts.iter_mut()) {
            let stale = matches!(verdict, Some(Verdict::Refused(_)))
                && job
                    .submission
                    .command
                    .settled_transfer()
                    .is_some_and(|id| poisoned_transfers.contains(&id));
            if stale {
                *verdict = Some(Verdict::Reload);
            }
        }

        let key_rows: Vec<KeyRow<'_>> = answers
            .iter()
            .filter_map(|(job_index, response, position)| {
                jobs[*job_index]
                    .submission
                    .idempotency
                    .as_ref()
                    .map(|claim| KeyRow {
                        claim,
                        response,
                        position: *position,
                    })
            })
            .collect();
        idempotency::insert_in(&mut transaction, &key_rows).await?;
        // With the events, or not at all: an account whose `AccountOpened` commits has
        // its key, and an erasure that commits has destroyed it.
        pii::store_keys(&mut *transaction, &new_keys).await?;
        pii::destroy_keys(&mut *transaction, &erased).await?;
        transaction.commit().await?;

        // Only now is the decided state a fact: cache it, except for streams where a
        // request was refused (its successors in the batch were decided on top of it).
        {
            let mut cache = lock(&self.cache);
            for account in &poisoned {
                overlay.remove(account);
                cache.evict(account);
            }
            for (account_id, account) in overlay {
                cache.put(account_id, account);
            }
        }
        for (job_index, response, _) in answers {
            verdicts[job_index] = Some(Verdict::Committed(response));
        }
        Ok(())
    }

    /// Decides every job without a verdict, in order, against the cache plus the batch's
    /// own decisions so far. Returns the append requests, how jobs map onto them, and the
    /// accounts' states after the batch.
    fn decide_all(
        &self,
        jobs: &[Job],
        verdicts: &mut [Option<Verdict>],
    ) -> (
        Vec<AppendRequest>,
        Vec<Planned>,
        HashMap<AccountId, CachedAccount>,
    ) {
        let cache = lock(&self.cache);
        let mut overlay: HashMap<AccountId, CachedAccount> = HashMap::new();
        let mut settled: HashMap<TransferId, LoadedTransfer> = HashMap::new();
        let mut requests = Vec::new();
        let mut planned = Vec::new();
        for (job_index, (job, verdict)) in jobs.iter().zip(verdicts.iter_mut()).enumerate() {
            if verdict.is_some() {
                continue;
            }
            let current = |id: &AccountId, overlay: &HashMap<AccountId, CachedAccount>| {
                overlay.get(id).or_else(|| cache.get(id)).cloned()
            };
            let decided = decide_span(&job.submission)
                .in_scope(|| decide_one(&job.submission, &current, &mut overlay, &mut settled));
            match decided {
                Ok((request, answer)) => {
                    planned.push(Planned {
                        job_index,
                        request_index: requests.len(),
                        answer,
                    });
                    requests.push(request);
                }
                Err(refusal) => *verdict = Some(refusal),
            }
        }
        (requests, planned, overlay)
    }
}

/// The span of one command's decision, a child of the command's request span (its
/// metadata's trace context) rather than of the batch, so the command's trace shows its
/// decision. Only while spans are exported; otherwise a disabled span that costs nothing.
fn decide_span(submission: &Submission) -> tracing::Span {
    if !event_store::trace_context::exporting() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!("decide", command = submission.command.name());
    event_store::trace_context::set_parent(&span, submission.metadata.trace.as_deref());
    span
}

/// Where an account stands for the next decision: the batch's own state, else the cache's.
type Lookup<'a> = dyn Fn(&AccountId, &HashMap<AccountId, CachedAccount>) -> Option<CachedAccount> + 'a;

/// Decides one command; on success the overlay holds the accounts' states after it, and
/// `settled` the state of a transfer it settled (so a second post or void of that
/// transfer in the same batch sees the first).
fn decide_one(
    submission: &Submission,
    current: &Lookup<'_>,
    overlay: &mut HashMap<AccountId, CachedAccount>,
    settled: &mut HashMap<TransferId, LoadedTransfer>,
) -> Result<(AppendRequest, PlannedAnswer), Verdict> {
    let metadata = &submission.metadata;
    match &submission.command {
        Command::Account {
            account_id,
            command,
            preconditions,
        } => {
            let cached = current(account_id, overlay);
            let created = matches!(command, AccountCommand::Open { .. });
            if cached.is_none() && !created {
                return Err(Verdict::Reload);
            }
            let version = cached.as_ref().map_or(0, |cached| cached.version);
            let existing = cached.as_ref().map(|cached| cached.version);
            if !preconditions.hold(existing) {
                return Err(Verdict::PreconditionFailed {
                    expected: preconditions.expected_version(),
                    actual: existing,
                });
            }
            let state = cached.map(|cached| cached.state);
            let events = Account::decide(state.as_ref(), command.clone()).map_err(|error| match error {
                DomainError::AccountNotFound { .. } => {
                    Verdict::Refused(ApiError::AccountNotFound(account_id.to_string()))
                }
                other => Verdict::Refused(ApiError::from(other)),
            })?;
            let mut after = state;
            for event in &events {
                after = Some(Account::evolve(after, event).map_err(|error| {
                    Verdict::Refused(ApiError::Internal(format!(
                        "decided event does not apply: {error}"
                    )))
                })?);
            }
            let Some(after) = after else {
                return Err(Verdict::Refused(ApiError::Internal(
                    "a command decided no event".to_owned(),
                )));
            };
            let new_version = version + events.len() as u64;
            overlay.insert(
                *account_id,
                CachedAccount {
                    state: after.clone(),
                    version: new_version,
                },
            );
            let request = AppendRequest::single(
                account_id.stream_id(),
                expected_version(version),
                events
                    .iter()
                    .map(|event| account_event(event, metadata))
                    .collect(),
            );
            Ok((
                request,
                PlannedAnswer::Account {
                    account_id: *account_id,
                    after,
                    created,
                },
            ))
        }
        Command::Transfer(transfer) => {
            let (Some(from), Some(to)) = (current(&transfer.from, overlay), current(&transfer.to, overlay))
            else {
                if transfer.from == transfer.to {
                    return Err(Verdict::Refused(ApiError::from(DomainError::SameAccount {
                        account_id: transfer.from,
                    })));
                }
                return Err(Verdict::Reload);
            };
            let decision = decide_transfer(None, Some(&from.state), Some(&to.state), transfer.clone())
                .map_err(|error| Verdict::Refused(ApiError::from(error)))?;
            let after = Transfer::evolve(None, &decision.transfer).map_err(not_applicable)?;
            let request = three_stream_request(
                &decision,
                (&from, transfer.from),
                (&to, transfer.to),
                (transfer.id, ExpectedVersion::NoStream),
                metadata,
            );
            overlay.insert(transfer.from, evolved(&from, &decision.debit)?);
            overlay.insert(transfer.to, evolved(&to, &decision.credit)?);
            Ok((
                request,
                PlannedAnswer::Transfer {
                    transfer: after,
                    created: true,
                },
            ))
        }
        Command::Settle {
            command,
            loaded,
            preconditions,
        } => {
            let Some(transfer) = settled.get(&command.transfer_id).or(loaded.as_ref()).cloned() else {
                return Err(Verdict::Reload);
            };
            if !preconditions.hold(Some(transfer.version)) {
                return Err(Verdict::PreconditionFailed {
                    expected: preconditions.expected_version(),
                    actual: Some(transfer.version),
                });
            }
            let (from_id, to_id) = (transfer.state.from, transfer.state.to);
            let (Some(from), Some(to)) = (current(&from_id, overlay), current(&to_id, overlay)) else {
                return Err(Verdict::Reload);
            };
            let decision = decide_settle(
                Some(&transfer.state),
                Some(&from.state),
                Some(&to.state),
                command.clone(),
            )
            .map_err(|error| Verdict::Refused(ApiError::from(error)))?;
            let after = LoadedTransfer {
                state: Transfer::evolve(Some(transfer.state.clone()), &decision.transfer)
                    .map_err(not_applicable)?,
                version: transfer.version + 1,
            };
            let request = three_stream_request(
                &decision,
                (&from, from_id),
                (&to, to_id),
                (command.transfer_id, ExpectedVersion::Exact(transfer.version)),
                metadata,
            );
            // The transfer was read before the accounts' cached states: an account that
            // already shows this transfer settled (another instance's post or void, seen
            // through a reload) cannot take the step. That transfer state is stale, and
            // its append would fail on the transfer stream's version anyway: read again.
            let stale = |_| Verdict::Reload;
            let from_after = evolved(&from, &decision.debit).map_err(stale)?;
            let to_after = evolved(&to, &decision.credit).map_err(stale)?;
            overlay.insert(from_id, from_after);
            overlay.insert(to_id, to_after);
            settled.insert(command.transfer_id, after.clone());
            Ok((
                request,
                PlannedAnswer::Transfer {
                    transfer: after.state,
                    created: false,
                },
            ))
        }
    }
}

/// A decided event that does not apply to the state it was decided on: a bug.
fn not_applicable(error: domain::EvolveError) -> Verdict {
    Verdict::Refused(ApiError::Internal(format!(
        "decided event does not apply: {error}"
    )))
}

/// The account after one decided event, one version on.
fn evolved(account: &CachedAccount, event: &AccountEvent) -> Result<CachedAccount, Verdict> {
    Account::evolve(Some(account.state.clone()), event)
        .map(|state| CachedAccount {
            state,
            version: account.version + 1,
        })
        .map_err(not_applicable)
}

/// One transfer step's append: one event on each of the three streams, each under its
/// expected version, in the order debit, credit, transfer (the answer reads the
/// versions back in that order).
fn three_stream_request(
    decision: &domain::TransferDecision,
    (from, from_id): (&CachedAccount, AccountId),
    (to, to_id): (&CachedAccount, AccountId),
    (transfer_id, transfer_expected): (TransferId, ExpectedVersion),
    metadata: &Metadata,
) -> AppendRequest {
    AppendRequest {
        writes: vec![
            StreamWrite {
                stream_id: from_id.stream_id(),
                expected: expected_version(from.version),
                events: vec![account_event(&decision.debit, metadata)],
            },
            StreamWrite {
                stream_id: to_id.stream_id(),
                expected: expected_version(to.version),
                events: vec![account_event(&decision.credit, metadata)],
            },
            StreamWrite {
                stream_id: transfer_id.stream_id(),
                expected: transfer_expected,
                events: vec![transfer_event(&decision.transfer, metadata)],
            },
        ],
    }
}

/// Version 0 means the stream must not exist yet.
fn expected_version(version: u64) -> ExpectedVersion {
    if version == 0 {
        ExpectedVersion::NoStream
    } else {
        ExpectedVersion::Exact(version)
    }
}

fn account_event(event: &AccountEvent, metadata: &Metadata) -> NewEvent {
    NewEvent::from_domain(event.to_stored(), metadata.clone())
}

fn transfer_event(event: &TransferEvent, metadata: &Metadata) -> NewEvent {
    NewEvent::from_domain(event.to_stored(), metadata.clone())
}

/// What a refused append means for its command. A transfer stream that already exists
/// is a transfer id executed before; an account stream that moved is another writer.
fn rejected(rejection: &AppendRejection, command: &Command) -> Verdict {
    match (rejection, command) {
        (AppendRejection::WrongExpectedVersion { stream_id, .. }, Command::Transfer(transfer))
            if *stream_id == transfer.id.stream_id() =>
        {
            Verdict::Refused(ApiError::from(DomainError::TransferAlreadyExecuted {
                transfer_id: transfer.id,
            }))
        }
        (AppendRejection::WrongExpectedVersion { .. }, _) => Verdict::Reload,
        (other, _) => Verdict::Refused(ApiError::Internal(format!("append refused: {other}"))),
    }
}

/// The answer of a committed command, as sent and as stored for idempotent replays.
fn render(answer: &PlannedAnswer, outcome: &AppendOutcome) -> StoredResponse {
    match answer {
        PlannedAnswer::Account {
            account_id,
            after,
            created,
        } => {
            let version = outcome.streams.first().map_or(0, |stream| stream.version);
            let body = AccountCommandResponse {
                stream_id: account_id.stream_id(),
                stream_version: version,
                position: outcome.last_position,
                account_id: account_id.as_uuid(),
                balance: after.balance.get(),
                status: status_name(after),
            };
            let mut headers = vec![("etag".to_owned(), format!("\"{version}\""))];
            if *created {
                headers.push(("location".to_owned(), format!("/accounts/{account_id}")));
            }
            StoredResponse {
                status: if *created { 201 } else { 200 },
                body: serde_json::to_value(body).unwrap_or_default(),
                headers,
            }
        }
        PlannedAnswer::Transfer { transfer, created } => {
            let version_of = |index: usize| outcome.streams.get(index).map_or(0, |stream| stream.version);
            let body = TransferResponse {
                stream_id: transfer.id.stream_id(),
                stream_version: version_of(2),
                position: outcome.last_position,
                transfer_id: transfer.id.as_uuid(),
                from_account_id: transfer.from.as_uuid(),
                to_account_id: transfer.to.as_uuid(),
                amount: transfer.amount.get(),
                currency: transfer.currency.as_str().to_owned(),
                from_account_version: version_of(0),
                to_account_version: version_of(1),
                status: transfer.status.as_str().to_owned(),
                posted_amount: transfer.posted_amount.map(domain::Amount::get),
                expires_at: transfer.expires_at.map(crate::dto::rfc3339),
            };
            let mut headers = vec![("etag".to_owned(), format!("\"{}\"", version_of(2)))];
            if *created {
                headers.push(("location".to_owned(), format!("/transfers/{}", transfer.id)));
            }
            StoredResponse {
                status: if *created { 201 } else { 200 },
                body: serde_json::to_value(body).unwrap_or_default(),
                headers,
            }
        }
    }
}

/// The status as API.md names it.
pub(crate) fn status_name(account: &Account) -> String {
    match account.status {
        domain::AccountStatus::Open => "open",
        domain::AccountStatus::Frozen => "frozen",
        domain::AccountStatus::Closed => "closed",
    }
    .to_owned()
}
