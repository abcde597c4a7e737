//! Personal data as the ledger keeps it: sealed (encrypted) before it reaches the domain.
//!
//! API.md, "Security": the owner's name and email are stored only as ciphertext under a
//! per-account key, and erasure destroys that key. Sealing needs the key, and keys are
//! I/O (they live in the database, wrapped by the master key), so it happens outside
//! this crate: the command side validates an [`Owner`](crate::Owner) and seals it, and
//! the domain only ever carries the result, a [`SealedOwner`]. Whatever the domain puts
//! into an event, a log line or a cached state is therefore ciphertext by construction.
//!
//! The domain does not know the sealing scheme; it checks only what keeps a sealed value
//! harmless to store and print: printable ASCII with no spaces, and bounded.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::ValidationError;

/// One sealed piece of personal data: opaque printable text (the event store's vault
/// writes `pii:v1:<base64 of nonce, ciphertext and tag>`).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SealedText(String);

impl SealedText {
    /// At most 2,048 characters. The longest plaintext is an email of 254 characters of
    /// up to 4 UTF-8 bytes each: 1,016 bytes, plus a 12-byte nonce and a 16-byte tag,
    /// is 1,392 characters of base64 and a short scheme prefix. Twice the name's and
    /// well above the email's, and still small in every event and row.
    pub const MAX_CHARS: usize = 2_048;

    pub fn parse(raw: &str) -> Result<SealedText, ValidationError> {
        const FIELD: &str = "owner";
        if raw.is_empty() {
            return Err(ValidationError::new(FIELD, "a sealed value must not be empty"));
        }
        if raw.len() > Self::MAX_CHARS {
            return Err(ValidationError::new(
                FIELD,
                format!("a sealed value must be at most {} characters", Self::MAX_CHARS),
            ));
        }
        if !raw.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(ValidationError::new(
                FIELD,
                "a sealed value must be printable ASCII without spaces",
            ));
        }
        Ok(SealedText(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SealedText {
    type Error = ValidationError;

    fn try_from(raw: String) -> Result<Self, Self::Error> {
        SealedText::parse(&raw)
    }
}

impl From<SealedText> for String {
    fn from(sealed: SealedText) -> Self {
        sealed.0
    }
}

/// Shortened: a sealed value is no secret, but a screenful of base64 in a log helps nobody.
impl fmt::Debug for SealedText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let head: String = self.0.chars().take(16).collect();
        write!(f, "SealedText({head}..)")
    }
}

/// The account holder as stored: name and email, each sealed on its own, so the stored
/// shape stays `{"name": ..., "email": ...}` as it was for plaintext.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SealedOwner {
    pub name: SealedText,
    pub email: SealedText,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_sealed_value_is_printable_ascii_without_spaces() {
        assert!(SealedText::parse("pii:v1:q83vEjRWeJA=").is_ok());
        for bad in ["", "Ada Lovelace", "pii:v1:\n", "ädä"] {
            assert!(SealedText::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_sealed_value_longer_than_the_bound_is_refused() {
        assert!(SealedText::parse(&"A".repeat(SealedText::MAX_CHARS)).is_ok());
        assert!(SealedText::parse(&"A".repeat(SealedText::MAX_CHARS + 1)).is_err());
    }

    #[test]
    fn a_sealed_owner_serialises_as_name_and_email() {
        let value = json!({"name": "pii:v1:AAAA", "email": "pii:v1:BBBB"});
        let owner: SealedOwner = serde_json::from_value(value.clone()).expect("parses");
        assert_eq!(owner.name.as_str(), "pii:v1:AAAA");
        assert_eq!(serde_json::to_value(&owner).ok(), Some(value));
        assert!(
            serde_json::from_value::<SealedOwner>(json!({"name": "Ada Lovelace", "email": "x"})).is_err()
        );
    }

    #[test]
    fn debug_output_is_shortened() {
        let sealed = SealedText::parse(&format!("pii:v1:{}", "A".repeat(100))).expect("valid");
        assert_eq!(format!("{sealed:?}"), "SealedText(pii:v1:AAAAAAAAA..)");
    }
}
