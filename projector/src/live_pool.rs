//! The connections that live applying and the leases use, and why each of their session
//! settings is there. Apart from the main pool (migrations, rebuilds, status), because
//! these sessions must behave differently: a batch transaction is short and must never
//! be left open by a frozen holder, and every batch reads rows by arrays whose length
//! PostgreSQL must see when it plans.

use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;

use crate::lease;

/// Connections in the live pool: three projections apply one batch each at a time, plus
/// the lease keeper.
pub const LIVE_CONNECTIONS: u32 = 4;

/// `options` with the live session settings, naming `instance` in `pg_stat_activity`:
///
/// - `idle_in_transaction_session_timeout` = [`lease::LIVE_IDLE_IN_TRANSACTION_TIMEOUT`]:
///   a frozen holder's batch must not keep the checkpoint row locked.
/// - `plan_cache_mode = force_custom_plan`: every batch statement is planned for the
///   arrays it is given and the table's size at that moment. By default a prepared
///   statement switches to a generic plan after five runs and keeps it, costed once:
///   a read-model table starts empty and has no statistics until autovacuum's first
///   analyze, so a generic plan made while it held a few hundred rows was a sequential
///   scan (`account_id = ANY($1)` then compares every row with every id), and nothing
///   replanned it as the table grew. Measured under `loadgen --scenario deposits` over
///   10,000 accounts: 8–14 ms a batch for about 50 accounts, a scan of the whole table
///   each time, against 0.4 ms by the primary key. Planning anew costs about 0.1 ms for
///   the read of 57 ids and less for the others, a few statements per batch of many
///   events; a plan for the wrong size costs a scan of the whole table per batch.
pub fn live_options(options: PgConnectOptions, instance: &str) -> PgConnectOptions {
    let timeout_ms = lease::LIVE_IDLE_IN_TRANSACTION_TIMEOUT.as_millis().to_string();
    options
        .options([
            ("idle_in_transaction_session_timeout", timeout_ms.as_str()),
            ("plan_cache_mode", "force_custom_plan"),
        ])
        .application_name(instance)
}

/// A pool of [`LIVE_CONNECTIONS`] with the [`live_options`] over `options` (which carry
/// every process's [`service::database::session_settings`]).
pub async fn connect(options: PgConnectOptions, instance: &str) -> Result<PgPool, sqlx::Error> {
    service::database::pool_options(LIVE_CONNECTIONS)
        .connect_with(live_options(options, instance))
        .await
}
