//! Identifiers of accounts and transfers, and the event-store stream ids built from them.
//!
//! Ids are UUIDs; clients may pick them, so any UUID is valid, and the server picks a
//! UUIDv7 (time-ordered, which keeps database indexes compact). A stream id is the
//! category and the UUID, `account-<uuid>` or `transfer-<uuid>`: the event store keys
//! streams by it and the relay turns it into the NATS subject
//! `ledger.events.<category>.<uuid>`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ValidationError;

/// The stream category of accounts.
pub const ACCOUNT_CATEGORY: &str = "account";

/// The stream category of transfers.
pub const TRANSFER_CATEGORY: &str = "transfer";

/// Identifies an account; its events live in the stream `account-<uuid>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AccountId(pub Uuid);

/// Identifies a transfer; its `TransferExecuted` event lives in `transfer-<uuid>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TransferId(pub Uuid);

/// The shared shape of both ids, written once.
macro_rules! uuid_id {
    ($name:ident, $category:expr, $field:literal) => {
        impl $name {
            /// A new time-ordered id (UUIDv7), for when the client did not choose one.
            pub fn new_v7() -> Self {
                Self(Uuid::now_v7())
            }

            pub fn as_uuid(&self) -> Uuid {
                self.0
            }

            /// The id of this entity's event stream, `<category>-<uuid>`.
            pub fn stream_id(&self) -> String {
                format!("{}-{}", $category, self.0)
            }
        }

        impl From<Uuid> for $name {
            fn from(uuid: Uuid) -> Self {
                Self(uuid)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Uuid {
                id.0
            }
        }

        impl FromStr for $name {
            type Err = ValidationError;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(text)
                    .map(Self)
                    .map_err(|error| ValidationError::new($field, format!("not a UUID: {error}")))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

uuid_id!(AccountId, ACCOUNT_CATEGORY, "account_id");
uuid_id!(TransferId, TRANSFER_CATEGORY, "transfer_id");

/// What a stream id refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamRef {
    Account(AccountId),
    Transfer(TransferId),
}

impl StreamRef {
    /// The stream category, `"account"` or `"transfer"` (the NATS subject's third token).
    pub fn category(&self) -> &'static str {
        match self {
            StreamRef::Account(_) => ACCOUNT_CATEGORY,
            StreamRef::Transfer(_) => TRANSFER_CATEGORY,
        }
    }

    pub fn uuid(&self) -> Uuid {
        match self {
            StreamRef::Account(id) => id.0,
            StreamRef::Transfer(id) => id.0,
        }
    }

    /// The stream id, `<category>-<uuid>`.
    pub fn stream_id(&self) -> String {
        format!("{}-{}", self.category(), self.uuid())
    }
}

impl fmt::Display for StreamRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.category(), self.uuid())
    }
}

impl From<AccountId> for StreamRef {
    fn from(id: AccountId) -> Self {
        StreamRef::Account(id)
    }
}

impl From<TransferId> for StreamRef {
    fn from(id: TransferId) -> Self {
        StreamRef::Transfer(id)
    }
}

/// Parses a stream id (`account-<uuid>`, `transfer-<uuid>`).
///
/// Only the canonical spelling is accepted (lower-case hyphenated UUID, as
/// [`AccountId::stream_id`] writes it), so one stream has exactly one id and a lookup by
/// a differently spelt id cannot miss or split a stream.
pub fn parse_stream_id(stream_id: &str) -> Option<StreamRef> {
    let (category, uuid) = stream_id.split_once('-')?;
    let uuid = Uuid::try_parse(uuid).ok()?;
    let stream = match category {
        ACCOUNT_CATEGORY => StreamRef::Account(AccountId(uuid)),
        TRANSFER_CATEGORY => StreamRef::Transfer(TransferId(uuid)),
        _ => return None,
    };
    (stream.stream_id() == stream_id).then_some(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const UUID_TEXT: &str = "0190f3c4-7a8b-7c3d-9e4f-123456789abc";

    fn uuid() -> Uuid {
        Uuid::parse_str(UUID_TEXT).expect("valid UUID literal")
    }

    #[test]
    fn account_stream_id_is_account_dash_uuid() {
        assert_eq!(
            AccountId::from(uuid()).stream_id(),
            format!("account-{UUID_TEXT}")
        );
    }

    #[test]
    fn transfer_stream_id_is_transfer_dash_uuid() {
        assert_eq!(
            TransferId::from(uuid()).stream_id(),
            format!("transfer-{UUID_TEXT}")
        );
    }

    #[test]
    fn stream_ids_parse_back_to_what_made_them() {
        let account = AccountId::new_v7();
        let transfer = TransferId::new_v7();
        assert_eq!(
            parse_stream_id(&account.stream_id()),
            Some(StreamRef::Account(account))
        );
        assert_eq!(
            parse_stream_id(&transfer.stream_id()),
            Some(StreamRef::Transfer(transfer))
        );
    }

    #[test]
    fn stream_ref_gives_category_and_stream_id() {
        let stream = StreamRef::Transfer(TransferId::from(uuid()));
        assert_eq!(stream.category(), "transfer");
        assert_eq!(stream.uuid(), uuid());
        assert_eq!(stream.to_string(), format!("transfer-{UUID_TEXT}"));
        assert_eq!(StreamRef::Account(AccountId::from(uuid())).category(), "account");
    }

    #[test]
    fn malformed_stream_ids_are_refused() {
        let upper = format!("account-{}", UUID_TEXT.to_uppercase());
        let simple = format!("account-{}", uuid().simple());
        let unknown = format!("customer-{UUID_TEXT}");
        let spaced = format!("account-{UUID_TEXT} ");
        for stream_id in [
            "",
            "account",
            "account-",
            "account-not-a-uuid",
            upper.as_str(),
            simple.as_str(),
            unknown.as_str(),
            spaced.as_str(),
        ] {
            assert_eq!(parse_stream_id(stream_id), None, "{stream_id:?}");
        }
    }

    #[test]
    fn new_ids_are_version_7() {
        assert_eq!(AccountId::new_v7().as_uuid().get_version_num(), 7);
        assert_eq!(TransferId::new_v7().as_uuid().get_version_num(), 7);
    }

    #[test]
    fn ids_serialise_as_plain_uuid_strings() {
        let id = AccountId::from(uuid());
        assert_eq!(serde_json::to_value(id).ok(), Some(json!(UUID_TEXT)));
        assert_eq!(
            serde_json::from_value::<AccountId>(json!(UUID_TEXT)).ok(),
            Some(id)
        );
        assert!(serde_json::from_value::<TransferId>(json!("nope")).is_err());
    }

    #[test]
    fn ids_parse_from_text_and_display_as_the_uuid() {
        let id: TransferId = UUID_TEXT.parse().expect("valid id");
        assert_eq!(id.to_string(), UUID_TEXT);
        assert_eq!(
            "nope".parse::<AccountId>().map_err(|e| e.field),
            Err("account_id")
        );
    }
}
