//! The eventledger domain: what a money ledger may and may not do, with no I/O.
//!
//! Every state change is decided here as events (`decide(state, command) -> events`) and
//! every state is rebuilt here from events (`evolve(state, event) -> state`), so the
//! command side, the projector and the history endpoint all apply one set of rules.
//! Nothing in this crate knows about HTTP, SQL or NATS.
//!
//! # Layout
//!
//! - [`money`]: [`Amount`], [`OverdraftLimit`], [`Balance`] and [`Currency`], the
//!   numbers and codes that cannot hold an invalid value.
//! - [`ids`]: [`AccountId`], [`TransferId`] and the stream ids built from them
//!   (`account-<uuid>`, `transfer-<uuid>`), parsed back with [`parse_stream_id`].
//! - [`text`]: the rules every piece of user-typed text follows, and the free text on
//!   commands ([`Reference`], [`Reason`]).
//! - [`owner`]: the account holder ([`Owner`], [`OwnerName`], [`Email`]), the personal
//!   data that erasure removes, as a client gives it.
//! - [`sealed`]: the owner as the ledger keeps it ([`SealedOwner`]): ciphertext only,
//!   sealed outside the domain with a key the domain never sees.
//! - [`account`]: the account aggregate ([`Account`], [`AccountCommand`],
//!   [`AccountStatus`]) with its rules.
//! - [`transfer`]: moving money between two accounts, at once or in two phases
//!   ([`decide_transfer`], [`decide_settle`], [`Transfer`]).
//! - [`event`]: the events ([`AccountEvent`], [`TransferEvent`], [`LedgerEvent`]) and
//!   their stored form ([`EventData`]).
//! - [`upcast`]: schema versions of stored events and the upgrades from old ones.
//! - [`error`]: every way a command, a stream or a stored event can be refused.

pub mod account;
pub mod error;
pub mod event;
pub mod ids;
pub mod money;
pub mod owner;
pub mod sealed;
pub mod text;
pub mod transfer;
pub mod upcast;

pub use account::{Account, AccountCommand, AccountStatus};
pub use error::{DecodeError, DomainError, EvolveError, ValidationError};
pub use event::{AccountEvent, EVENT_TYPES, EventData, LedgerEvent, TransferEvent};
pub use ids::{AccountId, StreamRef, TransferId, parse_stream_id};
pub use money::{Amount, Balance, Currency, OverdraftLimit};
pub use owner::{Email, Owner, OwnerName};
pub use sealed::{SealedOwner, SealedText};
pub use text::{Reason, Reference};
pub use transfer::{
    PendingTerms, SettleAction, SettleCommand, Transfer, TransferCommand, TransferDecision, TransferStatus,
    decide_settle, decide_transfer,
};
