//! The rules every piece of user-typed text follows, and the free text on commands.
//!
//! Text typed by a client ends up in events that are kept forever and shown in audit
//! logs, statements and terminals. So it is trimmed (one spelling per value), never
//! empty (absence is `None`, not `""`), bounded (events stay small) and holds only
//! characters that show as what they are ([`is_refused_char`]): a log line or a statement
//! cannot be forged, made to read differently from what is stored, or made to look
//! identical to another value.
//!
//! The rule is decided by Unicode properties, read from ICU4X's data (`icu_properties`),
//! not by a hand-kept list, so it covers every character of a kind, including ones
//! assigned after this was written (they are `Cn` until the data knows them).
//!
//! Events already stored were checked by an earlier, narrower rule (control characters
//! and a list of invisible marks). Reading them back ([`TryFrom<String>`], which serde
//! uses) checks only what every earlier rule refused, so no stored event ever becomes
//! unreadable; new input ([`Reference::parse`] and the like) meets the full rule.

use std::fmt;

use icu_properties::props::{BidiControl, DefaultIgnorableCodePoint, GeneralCategory, GeneralCategoryGroup};
use icu_properties::{CodePointMapData, CodePointSetData};
use serde::{Deserialize, Serialize};

use crate::error::ValidationError;

/// Whether `character` is refused in text a client gives the ledger:
///
/// - general category `Other`: `Cc` (control), `Cf` (format: soft hyphen, zero-width
///   and direction marks, the byte-order mark, invisible operators and separators), `Cs`
///   (surrogate), `Co` (private use: renders as whatever a font decides) and `Cn`
///   (unassigned);
/// - `Zl` and `Zp` (line and paragraph separators): they break a log line as a newline does;
/// - `Bidi_Control`: overrides, embeddings, isolates and marks, which make text display
///   in another order than it is stored (the "Trojan Source" trick);
/// - `Default_Ignorable_Code_Point`: characters that render as nothing (Hangul fillers,
///   variation selectors, the combining grapheme joiner, tag characters), so two values
///   that look identical could differ.
///
/// Spaces (`Zs`), letters, marks, digits, punctuation and symbols of every script pass.
pub fn is_refused_char(character: char) -> bool {
    let category = CodePointMapData::<GeneralCategory>::new().get(character);
    GeneralCategoryGroup::Other.contains(category)
        || GeneralCategoryGroup::LineSeparator.contains(category)
        || GeneralCategoryGroup::ParagraphSeparator.contains(category)
        || CodePointSetData::new::<BidiControl>().contains(character)
        || CodePointSetData::new::<DefaultIgnorableCodePoint>().contains(character)
}

/// The first character of `text` that [`is_refused_char`], if any.
pub fn first_refused_char(text: &str) -> Option<char> {
    text.chars().find(|character| is_refused_char(*character))
}

/// How a text value is checked: [`clean_text`] for new input, [`clean_stored_text`] for
/// values read back from stored events.
pub(crate) type Cleaner = fn(&'static str, &str, usize) -> Result<String, ValidationError>;

/// Trims `raw` and checks it is non-empty, at most `max_chars` characters and free of
/// every character [`is_refused_char`] names.
pub(crate) fn clean_text(
    field: &'static str,
    raw: &str,
    max_chars: usize,
) -> Result<String, ValidationError> {
    clean(field, raw, max_chars, is_refused_char)
}

/// As [`clean_text`] with the rule every earlier version applied (control characters
/// only), for values read back from stored events.
pub(crate) fn clean_stored_text(
    field: &'static str,
    raw: &str,
    max_chars: usize,
) -> Result<String, ValidationError> {
    clean(field, raw, max_chars, char::is_control)
}

fn clean(
    field: &'static str,
    raw: &str,
    max_chars: usize,
    refused: fn(char) -> bool,
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
    if let Some(bad) = text.chars().find(|character| refused(*character)) {
        return Err(ValidationError::new(
            field,
            format!(
                "must not contain control, format, unassigned or invisible characters, found U+{:04X}",
                u32::from(bad)
            ),
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
        Self::parse_by(raw, clean_text)
    }

    pub(crate) fn parse_by(raw: &str, clean: Cleaner) -> Result<Reference, ValidationError> {
        clean("reference", raw, Self::MAX_CHARS).map(Reference)
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
        Self::parse_by(raw, clean_text)
    }

    pub(crate) fn parse_by(raw: &str, clean: Cleaner) -> Result<Reason, ValidationError> {
        clean("reason", raw, Self::MAX_CHARS).map(Reason)
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

            /// Reads a stored value: see the module's note on stored events.
            fn try_from(raw: String) -> Result<Self, Self::Error> {
                $name::parse_by(&raw, $crate::text::clean_stored_text)
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
    fn every_category_the_rule_names_is_refused_with_its_neighbours_allowed() {
        let refused = [
            ('\u{0007}', "Cc bell"),
            ('\u{0085}', "Cc next line"),
            ('\u{00AD}', "Cf soft hyphen"),
            ('\u{0600}', "Cf Arabic number sign"),
            ('\u{061C}', "Cf Arabic letter mark (bidi)"),
            ('\u{180E}', "Cf Mongolian vowel separator"),
            ('\u{200B}', "Cf zero width space"),
            ('\u{200D}', "Cf zero width joiner"),
            ('\u{200E}', "Cf left-to-right mark"),
            ('\u{202E}', "Cf right-to-left override"),
            ('\u{2063}', "Cf invisible separator"),
            ('\u{2066}', "Cf left-to-right isolate"),
            ('\u{FEFF}', "Cf byte-order mark"),
            ('\u{E0041}', "Cf tag letter A"),
            ('\u{E000}', "Co private use"),
            ('\u{F8FF}', "Co private use (a logo in some fonts)"),
            ('\u{10FFFD}', "Co supplementary private use"),
            ('\u{0378}', "Cn unassigned"),
            ('\u{FFFF}', "Cn noncharacter"),
            ('\u{2028}', "Zl line separator"),
            ('\u{2029}', "Zp paragraph separator"),
            ('\u{034F}', "Mn combining grapheme joiner (renders as nothing)"),
            ('\u{FE0F}', "Mn variation selector 16 (renders as nothing)"),
            ('\u{115F}', "Lo Hangul choseong filler (renders as nothing)"),
            ('\u{3164}', "Lo Hangul filler (renders as nothing)"),
            ('\u{FFA0}', "Lo halfwidth Hangul filler (renders as nothing)"),
        ];
        for (character, what) in refused {
            assert!(is_refused_char(character), "{what} should be refused");
            let text = format!("rent{character}march");
            let refusal = Reference::parse(&text).expect_err(what);
            assert_eq!(refusal.field, "reference", "{what}");
            assert!(Reason::parse(&text).is_err(), "{what}");
        }
        let allowed = [
            ' ',
            'é',
            'ß',
            'Ж',
            'ع',
            'א',
            '中',
            'ア',
            '한',
            '€',
            '£',
            '₹',
            '½',
            '²',
            '—',
            '…',
            '«',
            '»',
            '\u{00A0}',
            '\u{3000}',
            '\u{0301}',
            '\u{0915}',
            '\u{094D}',
            '😀',
            '\u{1F1E9}',
        ];
        for character in allowed {
            assert!(
                !is_refused_char(character),
                "U+{:04X} should pass",
                u32::from(character)
            );
            assert!(
                Reference::parse(&format!("a{character}b")).is_ok(),
                "U+{:04X}",
                u32::from(character)
            );
        }
        // The issue's own inputs.
        assert!(Reference::parse("rent\u{00AD}march").is_err());
        assert!(Reference::parse("rent\u{2063}march").is_err());
    }

    #[test]
    fn stored_text_accepted_by_the_earlier_rule_still_reads() {
        // A soft hyphen passed the earlier rule: an event holding one must stay readable.
        let stored: Reference = serde_json::from_value(json!("rent\u{00AD}march")).expect("readable");
        assert_eq!(stored.as_str(), "rent\u{00AD}march");
        assert!(Reference::parse(stored.as_str()).is_err());
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
