//! Schema versions of stored events, and the upgrades from old versions to current ones.
//!
//! Stored events are never rewritten (the `events` table refuses updates), so when an
//! event's shape changes, old rows keep their old shape and schema version. Readers
//! upgrade them on the way in, one version step at a time, so the rest of the code only
//! ever sees the current shape. A version newer than this release knows is refused, not
//! guessed at.
//!
//! History:
//! - `AccountOpened` 1 → 2: the flat `owner_name` and `owner_email` became
//!   `owner: {"name", "email"}` (null once unreadable), and `overdraft_limit` was added
//!   (accounts opened before it existed had none, so it is 0).
//! - `AccountOpened` 2 → 3: `owner` holds the name and email sealed (encrypted) under
//!   the account's own key, no longer plaintext (API.md, "Security"). The shape is the
//!   same; the meaning is not, hence the new version. An upcast is a pure function and
//!   has no key, so it cannot seal an old plaintext owner; passing the plaintext on
//!   would put it into read models and answers where sealed data is expected and where
//!   erasure could never reach it. So the step drops it: an owner stored in plaintext
//!   reads as `null` (unknown), like an erased one. The plaintext itself stays in those
//!   old rows of the append-only log; removing it needs an operator's rewrite of the
//!   log, which no reader may do on the fly.

use serde_json::{Map, Value};

use crate::error::DecodeError;
use crate::event::{
    ACCOUNT_CLOSED, ACCOUNT_FROZEN, ACCOUNT_OPENED, ACCOUNT_UNFROZEN, FUNDS_DEPOSITED, FUNDS_WITHDRAWN,
    PENDING_CREDIT_POSTED, PENDING_CREDIT_RELEASED, PENDING_DEBIT_POSTED, PENDING_DEBIT_RELEASED,
    PERSONAL_DATA_ERASED, TRANSFER_CREDIT_RESERVED, TRANSFER_CREDITED, TRANSFER_DEBIT_RESERVED,
    TRANSFER_DEBITED, TRANSFER_EXECUTED, TRANSFER_PENDING, TRANSFER_POSTED, TRANSFER_VOIDED,
};

/// The schema version every event type is written at today. Bump one only together with
/// a step in [`upcast_one_version`] from the previous version.
const CURRENT_SCHEMA_VERSIONS: &[(&str, i32)] = &[
    (ACCOUNT_OPENED, 3),
    (FUNDS_DEPOSITED, 1),
    (FUNDS_WITHDRAWN, 1),
    (TRANSFER_DEBITED, 1),
    (TRANSFER_CREDITED, 1),
    (TRANSFER_EXECUTED, 1),
    (ACCOUNT_FROZEN, 1),
    (ACCOUNT_UNFROZEN, 1),
    (ACCOUNT_CLOSED, 1),
    (PERSONAL_DATA_ERASED, 1),
    (TRANSFER_DEBIT_RESERVED, 1),
    (TRANSFER_CREDIT_RESERVED, 1),
    (PENDING_DEBIT_POSTED, 1),
    (PENDING_CREDIT_POSTED, 1),
    (PENDING_DEBIT_RELEASED, 1),
    (PENDING_CREDIT_RELEASED, 1),
    (TRANSFER_PENDING, 1),
    (TRANSFER_POSTED, 1),
    (TRANSFER_VOIDED, 1),
];

/// The oldest schema version of any event type.
const FIRST_SCHEMA_VERSION: i32 = 1;

/// The schema version `event_type` is written at today, or `None` for an unknown type.
pub fn current_schema_version(event_type: &str) -> Option<i32> {
    CURRENT_SCHEMA_VERSIONS
        .iter()
        .find(|(known, _)| *known == event_type)
        .map(|(_, version)| *version)
}

/// Upgrades `data` of `event_type` at `schema_version` to the current schema version.
pub fn upcast(event_type: &str, schema_version: i32, data: Value) -> Result<Value, DecodeError> {
    let current = current_schema_version(event_type).ok_or_else(|| DecodeError::UnknownEventType {
        event_type: event_type.to_owned(),
    })?;
    let unsupported = || DecodeError::UnsupportedSchemaVersion {
        event_type: event_type.to_owned(),
        schema_version,
        current,
    };
    if !(FIRST_SCHEMA_VERSION..=current).contains(&schema_version) {
        return Err(unsupported());
    }
    // Bounded by the range check above: at most `current - 1` steps.
    let mut data = data;
    for version in schema_version..current {
        data = upcast_one_version(event_type, version, data).map_err(|message| DecodeError::InvalidData {
            event_type: event_type.to_owned(),
            schema_version,
            message,
        })?;
    }
    Ok(data)
}

/// Upgrades `data` from `version` to `version + 1`; the error is why the data does not
/// fit `version`.
fn upcast_one_version(event_type: &str, version: i32, data: Value) -> Result<Value, String> {
    match (event_type, version) {
        (ACCOUNT_OPENED, 1) => account_opened_1_to_2(data),
        (ACCOUNT_OPENED, 2) => account_opened_2_to_3(data),
        // Unreachable while CURRENT_SCHEMA_VERSIONS and the steps agree (tested below).
        _ => Err(format!("no upgrade from schema version {version}")),
    }
}

/// `AccountOpened` 1 → 2: nest the owner, default the overdraft limit to 0.
fn account_opened_1_to_2(data: Value) -> Result<Value, String> {
    let Value::Object(mut fields) = data else {
        return Err("data must be a JSON object".to_owned());
    };
    let name = fields.remove("owner_name").unwrap_or(Value::Null);
    let email = fields.remove("owner_email").unwrap_or(Value::Null);
    let owner = match (name, email) {
        (Value::Null, Value::Null) => Value::Null,
        (name @ Value::String(_), email @ Value::String(_)) => {
            let mut owner = Map::new();
            owner.insert("name".to_owned(), name);
            owner.insert("email".to_owned(), email);
            Value::Object(owner)
        }
        _ => {
            return Err("owner_name and owner_email must both be strings or both be absent".to_owned());
        }
    };
    fields.insert("owner".to_owned(), owner);
    fields.entry("overdraft_limit").or_insert_with(|| Value::from(0));
    Ok(Value::Object(fields))
}

/// `AccountOpened` 2 → 3: a plaintext owner cannot be sealed here (no key), and must not
/// pass for a sealed one, so it becomes `null` (see the module's history).
fn account_opened_2_to_3(data: Value) -> Result<Value, String> {
    let Value::Object(mut fields) = data else {
        return Err("data must be a JSON object".to_owned());
    };
    match fields.get("owner") {
        None | Some(Value::Null) | Some(Value::Object(_)) => {}
        Some(_) => return Err("owner must be an object or null".to_owned()),
    }
    fields.insert("owner".to_owned(), Value::Null);
    Ok(Value::Object(fields))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EVENT_TYPES;
    use crate::{AccountEvent, AccountId, Currency, LedgerEvent, OverdraftLimit};
    use serde_json::json;

    const ACCOUNT_UUID: &str = "0190f3c4-7a8b-7c3d-9e4f-123456789abc";

    #[test]
    fn every_event_type_has_a_current_schema_version() {
        for event_type in EVENT_TYPES {
            assert!(current_schema_version(event_type).is_some(), "{event_type}");
        }
        assert_eq!(CURRENT_SCHEMA_VERSIONS.len(), EVENT_TYPES.len());
    }

    #[test]
    fn every_older_schema_version_has_an_upgrade_step() {
        for (event_type, current) in CURRENT_SCHEMA_VERSIONS {
            for version in FIRST_SCHEMA_VERSION..*current {
                let step = upcast_one_version(event_type, version, json!({}));
                assert!(
                    !matches!(&step, Err(message) if message.starts_with("no upgrade")),
                    "{event_type} has no step from {version}"
                );
            }
        }
    }

    #[test]
    fn account_opened_version_1_upcasts_to_no_owner_and_zero_overdraft() {
        let v1 = json!({
            "account_id": ACCOUNT_UUID,
            "owner_name": "Ada Lovelace",
            "owner_email": "ada@example.com",
            "currency": "EUR"
        });
        let event = LedgerEvent::from_stored("AccountOpened", 1, v1);
        let expected = AccountEvent::AccountOpened {
            account_id: ACCOUNT_UUID.parse::<AccountId>().expect("valid id"),
            owner: None,
            currency: Currency::parse("EUR").expect("EUR is a currency"),
            overdraft_limit: OverdraftLimit::ZERO,
        };
        assert_eq!(event, Ok(LedgerEvent::Account(expected)));
    }

    #[test]
    fn account_opened_step_1_to_2_gives_the_version_2_data() {
        let v1 = json!({
            "account_id": ACCOUNT_UUID,
            "owner_name": "Ada",
            "owner_email": "ada@example.com",
            "currency": "EUR"
        });
        assert_eq!(
            upcast_one_version(ACCOUNT_OPENED, 1, v1),
            Ok(json!({
                "account_id": ACCOUNT_UUID,
                "owner": {"name": "Ada", "email": "ada@example.com"},
                "currency": "EUR",
                "overdraft_limit": 0
            }))
        );
    }

    #[test]
    fn account_opened_version_2_upcasts_its_plaintext_owner_to_null_and_keeps_the_rest() {
        let v2 = json!({
            "account_id": ACCOUNT_UUID,
            "owner": {"name": "Ada", "email": "ada@example.com"},
            "currency": "EUR",
            "overdraft_limit": 500
        });
        let v3 = upcast(ACCOUNT_OPENED, 2, v2).expect("upcasts");
        assert_eq!(
            v3,
            json!({
                "account_id": ACCOUNT_UUID,
                "owner": null,
                "currency": "EUR",
                "overdraft_limit": 500
            })
        );
        assert!(!v3.to_string().contains("Ada"), "no plaintext passes the upcast");
    }

    #[test]
    fn account_opened_version_2_with_an_owner_that_is_not_an_object_is_invalid() {
        let v2 = json!({"account_id": ACCOUNT_UUID, "owner": "Ada", "currency": "EUR", "overdraft_limit": 0});
        assert!(matches!(
            upcast(ACCOUNT_OPENED, 2, v2),
            Err(DecodeError::InvalidData {
                schema_version: 2,
                ..
            })
        ));
    }

    #[test]
    fn account_opened_version_1_without_owner_upcasts_to_a_null_owner() {
        let v1 = json!({"account_id": ACCOUNT_UUID, "currency": "EUR"});
        let event = LedgerEvent::from_stored(ACCOUNT_OPENED, 1, v1);
        assert!(matches!(
            event,
            Ok(LedgerEvent::Account(AccountEvent::AccountOpened {
                owner: None,
                ..
            }))
        ));
    }

    #[test]
    fn account_opened_version_1_with_half_an_owner_is_invalid() {
        let v1 = json!({"account_id": ACCOUNT_UUID, "owner_name": "Ada", "currency": "EUR"});
        assert!(matches!(
            upcast(ACCOUNT_OPENED, 1, v1),
            Err(DecodeError::InvalidData {
                schema_version: 1,
                ..
            })
        ));
    }

    #[test]
    fn account_opened_version_1_that_is_not_an_object_is_invalid() {
        assert!(matches!(
            LedgerEvent::from_stored(ACCOUNT_OPENED, 1, json!([1, 2])),
            Err(DecodeError::InvalidData { .. })
        ));
    }

    #[test]
    fn current_version_data_passes_through_unchanged() {
        let data = json!({"account_id": ACCOUNT_UUID, "amount": 5, "reference": null});
        assert_eq!(upcast(FUNDS_DEPOSITED, 1, data.clone()), Ok(data));
    }

    #[test]
    fn schema_versions_below_1_or_above_current_are_unsupported() {
        for version in [i32::MIN, -1, 0, 4, i32::MAX] {
            assert!(
                matches!(
                    upcast(ACCOUNT_OPENED, version, json!({})),
                    Err(DecodeError::UnsupportedSchemaVersion { current: 3, .. })
                ),
                "{version}"
            );
        }
    }

    #[test]
    fn unknown_event_types_are_refused() {
        assert_eq!(
            upcast("accountopened", 1, json!({})),
            Err(DecodeError::UnknownEventType {
                event_type: "accountopened".to_owned()
            })
        );
    }
}
