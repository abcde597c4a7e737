//! The read-model views of API.md ("Queries"): accounts, an account's transactions,
//! transfers. Each answer is read by one SQL statement that also reads its projection's
//! checkpoint, so `X-Projection-Position` is the position of the very snapshot served.

pub mod account_reads;
pub mod accounts;
pub mod transactions;
pub mod transfers;

/// The checkpoint of one projection as a one-row relation that every view joins its
/// rows to, so an empty answer still reports its position; 0 before the projection's
/// first batch.
macro_rules! checkpoint_of {
    ($projection:literal) => {
        concat!(
            "(SELECT COALESCE((SELECT position FROM read_model.projection_checkpoints \
             WHERE projection = '",
            $projection,
            "'), 0) AS position) checkpoint"
        )
    };
}
pub(crate) use checkpoint_of;
