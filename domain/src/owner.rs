//! The account holder: the personal data of the ledger.
//!
//! Name and email are the only personal data in the events; they are what erasure
//! removes (the account's owner becomes `None`), so they are kept together in [`Owner`]
//! and nowhere else.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::ValidationError;
use crate::text::{Cleaner, clean_text, text_conversions};

/// Also here because references and reasons are user-typed text like the owner's; they
/// live in [`crate::text`].
pub use crate::text::{Reason, Reference};

/// Who holds an account. Serialises as `{"name": ..., "email": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Owner {
    pub name: OwnerName,
    pub email: Email,
}

impl Owner {
    /// Parses both parts.
    pub fn parse(name: &str, email: &str) -> Result<Owner, ValidationError> {
        Ok(Owner {
            name: OwnerName::parse(name)?,
            email: Email::parse(email)?,
        })
    }
}

/// The account holder's name, as they write it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OwnerName(String);

impl OwnerName {
    /// At most 200 characters: full legal names rarely pass 100, and twice that leaves
    /// room for long multi-part names while bounding what every event and row carries.
    pub const MAX_CHARS: usize = 200;

    pub fn parse(raw: &str) -> Result<OwnerName, ValidationError> {
        Self::parse_by(raw, clean_text)
    }

    pub(crate) fn parse_by(raw: &str, clean: Cleaner) -> Result<OwnerName, ValidationError> {
        clean("owner.name", raw, Self::MAX_CHARS).map(OwnerName)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The account holder's email address.
///
/// Checked for shape only (exactly one `@`, a non-empty local part, a domain with a dot
/// inside it, no spaces): whether it receives mail is not the ledger's concern. Kept as
/// given apart from trimming, since the local part may be case-sensitive.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);

impl Email {
    /// At most 254 characters: the longest address SMTP can carry (RFC 5321's 256-octet
    /// path minus the angle brackets).
    pub const MAX_CHARS: usize = 254;

    /// At most 64 characters before the `@`: RFC 5321's local-part limit.
    pub const MAX_LOCAL_PART_CHARS: usize = 64;

    pub fn parse(raw: &str) -> Result<Email, ValidationError> {
        Self::parse_by(raw, clean_text)
    }

    pub(crate) fn parse_by(raw: &str, clean: Cleaner) -> Result<Email, ValidationError> {
        const FIELD: &str = "owner.email";
        let email = clean(FIELD, raw, Self::MAX_CHARS)?;
        if email.chars().any(char::is_whitespace) {
            return Err(ValidationError::new(FIELD, "must not contain spaces"));
        }
        let mut parts = email.split('@');
        let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(ValidationError::new(FIELD, "must contain exactly one @"));
        };
        if local.is_empty() {
            return Err(ValidationError::new(FIELD, "must have a name before the @"));
        }
        if local.chars().count() > Self::MAX_LOCAL_PART_CHARS {
            return Err(ValidationError::new(
                FIELD,
                format!(
                    "must have at most {} characters before the @",
                    Self::MAX_LOCAL_PART_CHARS
                ),
            ));
        }
        // A dot strictly inside the domain: "example.com", not "example", ".com" or "com.".
        let domain_has_inner_dot = domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains("..");
        if !domain_has_inner_dot {
            return Err(ValidationError::new(
                FIELD,
                "must have a domain with a dot after the @, as in name@example.com",
            ));
        }
        Ok(Email(email))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

text_conversions!(OwnerName);
text_conversions!(Email);

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} <{}>", self.name, self.email)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn owner_parses_trimmed_name_and_email() {
        let owner = Owner::parse("  Ada Lovelace ", " ada@example.com\n").expect("valid owner");
        assert_eq!(owner.name.as_str(), "Ada Lovelace");
        assert_eq!(owner.email.as_str(), "ada@example.com");
    }

    #[test]
    fn empty_owner_name_is_refused() {
        assert_eq!(OwnerName::parse("   ").map_err(|e| e.field), Err("owner.name"));
    }

    #[test]
    fn owner_name_longer_than_the_bound_is_refused() {
        assert!(OwnerName::parse(&"n".repeat(OwnerName::MAX_CHARS)).is_ok());
        assert!(OwnerName::parse(&"n".repeat(OwnerName::MAX_CHARS + 1)).is_err());
    }

    #[test]
    fn owner_name_with_control_characters_is_refused() {
        assert!(OwnerName::parse("Ada\nLovelace").is_err());
    }

    #[test]
    fn well_formed_emails_are_accepted() {
        for email in ["a@b.co", "first.last+tag@mail.example.org", "ü@exämple.de"] {
            assert!(Email::parse(email).is_ok(), "{email}");
        }
    }

    #[test]
    fn emails_without_exactly_one_at_are_refused() {
        for email in ["ada.example.com", "ada@@example.com", "a@b@example.com"] {
            assert_eq!(
                Email::parse(email).map_err(|e| e.field),
                Err("owner.email"),
                "{email}"
            );
        }
    }

    #[test]
    fn emails_without_a_dot_inside_the_domain_are_refused() {
        for email in [
            "ada@localhost",
            "ada@.com",
            "ada@example.",
            "ada@example..com",
            "ada@",
        ] {
            assert!(Email::parse(email).is_err(), "{email}");
        }
    }

    #[test]
    fn emails_with_an_empty_or_long_local_part_are_refused() {
        assert!(Email::parse("@example.com").is_err());
        let long_local = format!("{}@example.com", "a".repeat(Email::MAX_LOCAL_PART_CHARS + 1));
        assert!(Email::parse(&long_local).is_err());
    }

    #[test]
    fn emails_with_spaces_or_control_characters_are_refused() {
        assert!(Email::parse("ada lovelace@example.com").is_err());
        assert!(Email::parse("ada@exam\u{0}ple.com").is_err());
    }

    #[test]
    fn email_longer_than_254_characters_is_refused() {
        let long = format!("a@{}.com", "d".repeat(Email::MAX_CHARS));
        assert!(Email::parse(&long).is_err());
    }

    #[test]
    fn owner_serialises_as_name_and_email() {
        let owner = Owner::parse("Ada", "ada@example.com").expect("valid owner");
        let value = json!({"name": "Ada", "email": "ada@example.com"});
        assert_eq!(serde_json::to_value(&owner).ok(), Some(value.clone()));
        assert_eq!(serde_json::from_value::<Owner>(value).ok(), Some(owner));
    }

    #[test]
    fn deserialising_an_owner_with_an_invalid_email_fails() {
        let value = json!({"name": "Ada", "email": "not-an-email"});
        assert!(serde_json::from_value::<Owner>(value).is_err());
    }
}
