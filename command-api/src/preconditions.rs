//! `If-Match` and `If-None-Match` on commands (RFC 9110 §13.1.1, §13.1.2): a client makes
//! a command conditional on the account's current version, which every account command
//! answers as `ETag: "<stream_version>"`.
//!
//! Both headers are lists of entity-tags, or `*`. `If-Match` holds when the account exists
//! and one of its tags equals the version under the strong comparison (a weak tag
//! `W/"3"` never matches); `*` when the account exists at all. `If-None-Match` holds when
//! the account does not exist (`*`), or when none of its tags equals the version under
//! the weak comparison. Opening an account is a command on an account that does not exist
//! yet: `If-Match` never holds there, and `If-None-Match: *` asks that it not exist
//! (412 rather than 422 `account-already-exists` when it does). A tag that is well formed
//! but not a version of ours simply never matches; a header that is not an entity-tag
//! list at all is 400 `invalid-header`.

use axum::http::HeaderMap;
use axum::http::header::{IF_MATCH, IF_NONE_MATCH};

use crate::error::ApiError;

/// The longest precondition header read, in bytes: a few dozen tags; more is not a
/// client making a precondition but a client probing the parser.
pub const MAX_PRECONDITION_BYTES: usize = 1_024;

/// One entity-tag of a list: weak or strong, and the account version it names, if it
/// names one (`"7"` does, `"abc"` does not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntityTag {
    pub weak: bool,
    pub version: Option<u64>,
}

/// The value of an `If-Match` or `If-None-Match` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntityTags {
    /// `*`: any current representation.
    Any,
    /// A non-empty list of entity-tags.
    List(Vec<EntityTag>),
}

/// The preconditions of one command; both absent for an unconditional command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Preconditions {
    pub if_match: Option<EntityTags>,
    pub if_none_match: Option<EntityTags>,
}

impl Preconditions {
    /// Reads both headers. A header given on several lines is one list (RFC 9110 §5.3).
    pub fn parse(headers: &HeaderMap) -> Result<Self, ApiError> {
        Ok(Self {
            if_match: read(headers, IF_MATCH.as_str(), "If-Match")?,
            if_none_match: read(headers, IF_NONE_MATCH.as_str(), "If-None-Match")?,
        })
    }

    /// Whether the command may go ahead on an account at version `current` (`None`: the
    /// account does not exist), in the order of RFC 9110 §13.2.2.
    pub fn hold(&self, current: Option<u64>) -> bool {
        let if_match = match &self.if_match {
            None => true,
            Some(EntityTags::Any) => current.is_some(),
            Some(EntityTags::List(tags)) => current
                .is_some_and(|version| tags.iter().any(|tag| !tag.weak && tag.version == Some(version))),
        };
        let if_none_match = match &self.if_none_match {
            None => true,
            Some(EntityTags::Any) => current.is_none(),
            Some(EntityTags::List(tags)) => {
                !current.is_some_and(|version| tags.iter().any(|tag| tag.version == Some(version)))
            }
        };
        if_match && if_none_match
    }

    /// The version `If-Match` names, when it names exactly one strong version: for the
    /// 412 problem's `expected_version`.
    pub fn expected_version(&self) -> Option<u64> {
        match &self.if_match {
            Some(EntityTags::List(tags)) => match tags.as_slice() {
                [
                    EntityTag {
                        weak: false,
                        version: Some(version),
                    },
                ] => Some(*version),
                _ => None,
            },
            _ => None,
        }
    }

    /// Whether the command is conditional at all.
    pub fn is_empty(&self) -> bool {
        self.if_match.is_none() && self.if_none_match.is_none()
    }
}

/// One header's value, every line of it joined as one list.
fn read(headers: &HeaderMap, name: &str, display: &'static str) -> Result<Option<EntityTags>, ApiError> {
    let invalid = |message: &str| ApiError::InvalidHeader {
        header: display,
        message: message.to_owned(),
    };
    let mut lines = Vec::new();
    let mut length = 0;
    for value in headers.get_all(name) {
        let text = value.to_str().map_err(|_| invalid("must be printable ASCII"))?;
        length += text.len() + 1;
        if length > MAX_PRECONDITION_BYTES {
            return Err(invalid(&format!("longer than {MAX_PRECONDITION_BYTES} bytes")));
        }
        lines.push(text);
    }
    if lines.is_empty() {
        return Ok(None);
    }
    parse_tags(&lines.join(",")).map(Some).ok_or_else(|| {
        invalid("must be `*` or a list of entity-tags as sent in ETag, for example \"3\" or \"3\", \"4\"")
    })
}

/// `*`, or `1#entity-tag` with optional whitespace and empty list elements (RFC 9110
/// §5.6.1); `None` when the value is neither.
fn parse_tags(value: &str) -> Option<EntityTags> {
    if value.trim_matches([' ', '\t']) == "*" {
        return Some(EntityTags::Any);
    }
    let mut tags = Vec::new();
    let mut rest = value;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            break;
        }
        let (weak, quoted) = match rest.strip_prefix("W/") {
            Some(after) => (true, after),
            None => (false, rest),
        };
        let opaque = quoted.strip_prefix('"')?;
        let end = opaque.find('"')?;
        let tag = &opaque[..end];
        // etagc: `!`, `#` to `~` (and obs-text, which a printable-ASCII header cannot hold).
        if !tag
            .bytes()
            .all(|byte| byte == 0x21 || (0x23..=0x7e).contains(&byte))
        {
            return None;
        }
        // Our tags are plain decimal versions; `"+2"` or `"abc"` name none.
        let version = if !tag.is_empty() && tag.bytes().all(|byte| byte.is_ascii_digit()) {
            tag.parse::<u64>().ok()
        } else {
            None
        };
        tags.push(EntityTag { weak, version });
        rest = opaque[end + 1..].trim_start_matches([' ', '\t']);
        if !(rest.is_empty() || rest.starts_with(',')) {
            return None;
        }
    }
    (!tags.is_empty()).then_some(EntityTags::List(tags))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strong(version: u64) -> EntityTag {
        EntityTag {
            weak: false,
            version: Some(version),
        }
    }

    #[test]
    fn lists_stars_weak_and_foreign_tags_parse_and_garbage_does_not() {
        assert_eq!(parse_tags("*"), Some(EntityTags::Any));
        assert_eq!(parse_tags(" * "), Some(EntityTags::Any));
        assert_eq!(parse_tags("\"2\""), Some(EntityTags::List(vec![strong(2)])));
        assert_eq!(
            parse_tags("\"999\", \"2\""),
            Some(EntityTags::List(vec![strong(999), strong(2)]))
        );
        assert_eq!(
            parse_tags("\"1\",,\t\"2\" ,"),
            Some(EntityTags::List(vec![strong(1), strong(2)]))
        );
        assert_eq!(
            parse_tags("W/\"2\", \"abc\""),
            Some(EntityTags::List(vec![
                EntityTag {
                    weak: true,
                    version: Some(2)
                },
                EntityTag {
                    weak: false,
                    version: None
                }
            ]))
        );
        for garbage in [
            "",
            " ",
            ",",
            "2",
            "\"2",
            "\"2\" \"3\"",
            "*, \"2\"",
            "w/\"2\"",
            "\"+2\"x",
            "\"a b\"",
            "\"2\"3",
        ] {
            assert_eq!(parse_tags(garbage), None, "{garbage:?}");
        }
        // Well formed but not a version of ours: parsed, never matches.
        assert_eq!(
            parse_tags("\"+2\""),
            Some(EntityTags::List(vec![EntityTag {
                weak: false,
                version: None
            }]))
        );
    }

    #[test]
    fn if_match_holds_on_a_strong_match_or_a_star_on_an_existing_account() {
        let with = |if_match| Preconditions {
            if_match: parse_tags(if_match),
            if_none_match: None,
        };
        assert!(with("\"999\", \"2\"").hold(Some(2)));
        assert!(!with("\"999\", \"3\"").hold(Some(2)));
        assert!(!with("W/\"2\"").hold(Some(2)));
        assert!(!with("\"abc\"").hold(Some(2)));
        assert!(with("*").hold(Some(2)));
        assert!(!with("*").hold(None));
        assert!(!with("\"5\"").hold(None));
        assert!(!with("\"0\"").hold(None));
        assert!(Preconditions::default().hold(None));
    }

    #[test]
    fn if_none_match_holds_unless_a_tag_matches_weakly_or_a_star_meets_an_account() {
        let with = |if_none_match| Preconditions {
            if_match: None,
            if_none_match: parse_tags(if_none_match),
        };
        assert!(with("*").hold(None));
        assert!(!with("*").hold(Some(1)));
        assert!(!with("W/\"1\"").hold(Some(1)));
        assert!(!with("\"3\", \"1\"").hold(Some(1)));
        assert!(with("\"2\"").hold(Some(1)));
        assert!(with("\"2\"").hold(None));
    }
}
