//! Opening sealed owners for answers (API.md, "Security").
//!
//! Events and read models hold an account's owner only sealed under the account's data
//! key (`event_store::pii`). Every answer that shows an owner opens it here, with the
//! wrapped key read from `pii_keys` and the master key from this process's config:
//!
//! - the key exists: the owner is shown as `{"name", "email"}`;
//! - the key is gone (erased) or the row has no owner: `null`, whatever copy of the
//!   ciphertext a read model, a rebuilt table or the log still holds;
//! - the key exists but the value does not open with it (a tampered value, or a master
//!   key that is not the one that wrapped it): an internal error, logged. Never the
//!   ciphertext, and never `null`, which would claim an erasure that did not happen.
//!
//! The audit log and the live tail show envelopes, whose `AccountOpened` data carries
//! the sealed owner. They show it opened while the key exists and `null` after erasure,
//! rather than the stored ciphertext: an auditor reads the record to learn what
//! happened, and a `pii:v1:...` string is not information to them but looks like data
//! (a name field holding base64), while `null` says plainly that it cannot be read. The
//! envelope's `schema_version` still says it was stored sealed. `AccountOpened` events
//! stored before owners were sealed (schema 1 and 2, plaintext) show `null` too, as every
//! other reader sees them (`domain::upcast`): the API never serves personal data that
//! erasure could not reach.

use std::collections::HashMap;

use domain::{Owner, SealedOwner};
use event_store::RecordedEvent;
use event_store::pii::{DataKey, PiiError, Vault};
use serde_json::{Map, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::{QueryError, Result};
use crate::views::accounts::OwnerView;

/// The schema version of `AccountOpened` from which its owner is sealed.
const FIRST_SEALED_SCHEMA_VERSION: i32 = 3;

impl From<Owner> for OwnerView {
    fn from(owner: Owner) -> Self {
        OwnerView {
            name: owner.name.as_str().to_owned(),
            email: owner.email.as_str().to_owned(),
        }
    }
}

fn unsealable(account_id: Uuid) -> impl FnOnce(PiiError) -> QueryError {
    move |source| QueryError::Unsealable { account_id, source }
}

/// Opens the owner columns of one read-model row, given the wrapped key joined to it
/// (`None` once erased).
pub fn open_columns(
    vault: &Vault,
    account_id: Uuid,
    wrapped_key: Option<&[u8]>,
    name: Option<&str>,
    email: Option<&str>,
) -> Result<Option<OwnerView>> {
    let (Some(wrapped_key), Some(name), Some(email)) = (wrapped_key, name, email) else {
        return Ok(None);
    };
    let key = vault
        .unwrap_key(account_id, wrapped_key)
        .map_err(unsealable(account_id))?;
    let open = |sealed: &str| key.open(sealed).map_err(unsealable(account_id));
    let owner =
        Owner::parse(&open(name)?, &open(email)?).map_err(|_| unsealable(account_id)(PiiError::Tampered))?;
    Ok(Some(owner.into()))
}

/// Opens an owner folded from the log (history) with the account's key as it is now.
pub async fn open_folded(
    pool: &PgPool,
    vault: &Vault,
    account_id: Uuid,
    sealed: Option<&SealedOwner>,
) -> Result<Option<OwnerView>> {
    let Some(sealed) = sealed else {
        return Ok(None);
    };
    let Some(key) = vault
        .load_key(pool, account_id)
        .await
        .map_err(unsealable(account_id))?
    else {
        return Ok(None);
    };
    let owner = key.open_owner(sealed).map_err(unsealable(account_id))?;
    Ok(Some(owner.into()))
}

/// Replaces the owner in every `AccountOpened` envelope of `events` by the opened owner
/// while its key exists, and by `null` otherwise (see the module doc). One query for
/// all the keys.
pub async fn reveal_envelopes(pool: &PgPool, vault: &Vault, events: &mut [RecordedEvent]) -> Result<()> {
    let opened: Vec<Uuid> = events
        .iter()
        .filter(|event| event.event_type == domain::event::ACCOUNT_OPENED)
        .filter_map(|event| domain::parse_stream_id(&event.stream_id))
        .filter_map(|stream| match stream {
            domain::StreamRef::Account(account_id) => Some(account_id.as_uuid()),
            domain::StreamRef::Transfer(_) => None,
        })
        .collect();
    if opened.is_empty() {
        return Ok(());
    }
    let keys = vault
        .load_keys(pool, &opened)
        .await
        .map_err(|source| QueryError::Unsealable {
            account_id: opened[0],
            source,
        })?;
    for event in events
        .iter_mut()
        .filter(|event| event.event_type == domain::event::ACCOUNT_OPENED)
    {
        reveal_envelope(event, &keys)?;
    }
    Ok(())
}

fn reveal_envelope(event: &mut RecordedEvent, keys: &HashMap<Uuid, DataKey>) -> Result<()> {
    let Value::Object(data) = &mut event.data else {
        return Ok(());
    };
    // Schema 1 kept the owner in two flat fields, in plaintext: they stay, emptied, so
    // the envelope still reads as stored.
    if data.contains_key("owner_name") || data.contains_key("owner_email") {
        data.insert("owner_name".to_owned(), Value::Null);
        data.insert("owner_email".to_owned(), Value::Null);
        return Ok(());
    }
    let stored = data.remove("owner").unwrap_or(Value::Null);
    let sealed = event.schema_version >= FIRST_SEALED_SCHEMA_VERSION;
    let account = match domain::parse_stream_id(&event.stream_id) {
        Some(domain::StreamRef::Account(account_id)) => Some(account_id.as_uuid()),
        _ => None,
    };
    let owner = match (sealed, account.and_then(|id| keys.get(&id).map(|key| (id, key)))) {
        (true, Some((account_id, key))) if !stored.is_null() => {
            let sealed: SealedOwner =
                serde_json::from_value(stored).map_err(|_| unsealable(account_id)(PiiError::Tampered))?;
            let owner = key.open_owner(&sealed).map_err(unsealable(account_id))?;
            let mut opened = Map::new();
            opened.insert("name".to_owned(), Value::String(owner.name.as_str().to_owned()));
            opened.insert("email".to_owned(), Value::String(owner.email.as_str().to_owned()));
            Value::Object(opened)
        }
        _ => Value::Null,
    };
    data.insert("owner".to_owned(), owner);
    Ok(())
}
