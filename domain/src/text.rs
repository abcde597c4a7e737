//! The rules every piece of user-typed text follows, and the free text on commands.
//!
//! Text typed by a client ends up in events that are kept forever and shown in audit
//! logs, statements and terminals. So it is trimmed (one spelling per value), never
//! empty (absence is `None`, not `""`), bounded (events stay small) and free of control
//! characters and invisible direction/zero-width marks (a log line or a statement cannot
//! be forged or made to read differently from what is stored).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::ValidationError;

/// Invisible format characters refused on top of control characters: bidirectional
/// overrides and isolates (which can make text display differently from its content,
/// the "Trojan Source" trick), zero-width characters and the byte-order mark (which make
/// two values look identical).
const INVISIBLE_FORMAT_CHARACTERS: &[char] = &[
    '\u{200B}', '\u{200C}', '\u{200D}', '\u{200E}', '\u{200F}', '\u{202A}', '\u{202B}', '\u{202C}',
    '\u{202D}', '\u{202E}', '\u{2060}', '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}', '\u{FEFF}',
];

/// Trims `raw` and checks it is non-empty, at most `max_chars` characters and free of
/// control and invisible format characters.
pub(crate) fn clean_text(
    field: &'static str,
    raw: &str,
    max_chars: usize,
) -> Result<String, ValidationError> {
    let text = raw.trim();
    if text.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    let chars = text.chars().count();
    if chars > max_chars {
        return Err(ValidationError::new(
            field,
            format!("must be at most {max_chars} characters, got {chars}"),
        ));
    }
    if let Some(bad) = text
        .chars()
        .find(|c| c.is_control() || INVISIBLE_FORMAT_CHARACTERS.contains(c))
    {
        return Err(ValidationError::new(
            field,
            format!("must not contain control or invisible characters, found {bad:?}"),
        ));
    }
    Ok(text.to_owned())
}

/// Free text a client attaches to a money movement (`"rent March"`), shown on statements.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Reference(String);

impl Reference {
    /// At most 140 characters: the SEPA remittance-information limit, which banks and
    /// clients already design their references for.
    pub const MAX_CHARS: usize = 140;

    pub fn parse(raw: &str) -> Result<Reference, ValidationError> {
        clean_text("reference", raw, Self::MAX_CHARS).map(Reference)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Free text saying why an account was frozen, unfrozen or closed, for auditors.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Reason(String);

impl Reason {
    /// At most 500 characters: room for a few sentences or a case reference, while
    /// keeping an operator's note from turning events into documents.
    pub const MAX_CHARS: usize = 500;

    pub fn parse(raw: &str) -> Result<Reason, ValidationError> {
        clean_text("reason", raw, Self::MAX_CHARS).map(Reason)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The conversions serde and callers use, written once for each text newtype.
macro_rules! text_conversions {
    ($name:ident) => {
        impl TryFrom<String> for $name {
            type Error = ValidationError;

            fn try_from(raw: String) -> Result<Self, Self::Error> {
                $name::parse(&raw)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

text_conversions!(Reference);
text_conversions!(Reason);
pub(crate) use text_conversions;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_is_trimmed() {
        assert_eq!(
            Reference::parse("  rent March \n").map(String::from),
            Ok("rent March".to_owned())
        );
    }

    #[test]
    fn empty_or_blank_text_is_refused() {
        assert_eq!(Reference::parse("").map_err(|e| e.field), Err("reference"));
        assert_eq!(Reason::parse(" \t ").map_err(|e| e.field), Err("reason"));
    }

    #[test]
    fn reference_longer_than_140_characters_is_refused() {
        assert!(Reference::parse(&"é".repeat(Reference::MAX_CHARS)).is_ok());
        assert!(Reference::parse(&"é".repeat(Reference::MAX_CHARS + 1)).is_err());
    }

    #[test]
    fn reason_longer_than_500_characters_is_refused() {
        assert!(Reason::parse(&"x".repeat(Reason::MAX_CHARS)).is_ok());
        assert!(Reason::parse(&"x".repeat(Reason::MAX_CHARS + 1)).is_err());
    }

    #[test]
    fn control_characters_inside_text_are_refused() {
        for raw in ["a\nb", "a\u{0}b", "a\u{1b}[31mb", "a\u{7f}b", "a\u{85}b"] {
            assert!(Reference::parse(raw).is_err(), "{raw:?}");
        }
    }

    #[test]
    fn invisible_direction_marks_are_refused() {
        assert!(Reason::parse("paid \u{202E}00.001").is_err());
        assert!(Reason::parse("a\u{200B}b").is_err());
    }

    #[test]
    fn text_serialises_as_a_plain_string_and_is_checked_when_read() {
        let reference = Reference::parse("invoice 42").expect("valid reference");
        assert_eq!(serde_json::to_value(&reference).ok(), Some(json!("invoice 42")));
        assert_eq!(
            serde_json::from_value::<Reference>(json!("invoice 42")).ok(),
            Some(reference)
        );
        assert!(serde_json::from_value::<Reference>(json!("")).is_err());
        assert!(serde_json::from_value::<Reason>(json!("a\u{0}")).is_err());
    }
}
