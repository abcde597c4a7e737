//! Reading query parameters so that every malformed one is a 400 problem naming it:
//! parameters arrive as strings and are parsed here, with the bounds of API.md.

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::error::QueryError;

/// `limit` when the client names none (API.md).
pub const DEFAULT_LIMIT: i64 = 50;

/// The largest `limit` (API.md): bounds one answer's size and one query's work.
pub const MAX_LIMIT: i64 = 1000;

/// The query string as `T` (whose fields are `Option<String>`), with a malformed query
/// string answered as a 400 problem instead of axum's plain-text rejection.
pub struct Params<T>(pub T);

impl<T, S> FromRequestParts<S> for Params<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = QueryError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(params)| Params(params))
            .map_err(|rejection| QueryError::validation("query", rejection.body_text()))
    }
}

/// `limit`: 1 to [`MAX_LIMIT`], [`DEFAULT_LIMIT`] when absent.
pub fn limit(raw: Option<&str>) -> Result<i64, QueryError> {
    match raw {
        None => Ok(DEFAULT_LIMIT),
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|limit| (1..=MAX_LIMIT).contains(limit))
            .ok_or_else(|| {
                QueryError::validation("limit", format!("must be an integer from 1 to {MAX_LIMIT}"))
            }),
    }
}

/// A non-negative log position (`after`, `min_position`, `at_position`).
pub fn position(parameter: &'static str, raw: &str) -> Result<i64, QueryError> {
    raw.parse::<i64>()
        .ok()
        .filter(|position| *position >= 0)
        .ok_or_else(|| QueryError::validation(parameter, "must be a non-negative integer position"))
}

/// An RFC 3339 timestamp (`since`, `until`, `at_time`).
pub fn timestamp(parameter: &'static str, raw: &str) -> Result<DateTime<Utc>, QueryError> {
    DateTime::parse_from_rfc3339(raw)
        .map(|time| time.with_timezone(&Utc))
        .map_err(|_| {
            QueryError::validation(
                parameter,
                "must be an RFC 3339 timestamp, for example 2026-11-24T01:00:00Z",
            )
        })
}

/// A UUID from the path.
pub fn uuid(parameter: &'static str, raw: &str) -> Result<Uuid, QueryError> {
    Uuid::parse_str(raw).map_err(|_| QueryError::validation(parameter, "must be a UUID"))
}

/// A filter value that must be non-empty and bounded, as the indexed columns are, and
/// free of control characters: no stored value holds one (the domain refuses them), and
/// PostgreSQL refuses a NUL in text outright, which would surface as a 500.
pub fn text_filter(parameter: &'static str, raw: &str, max_chars: usize) -> Result<String, QueryError> {
    if raw.is_empty() || raw.chars().count() > max_chars {
        return Err(QueryError::validation(
            parameter,
            format!("must be 1 to {max_chars} characters"),
        ));
    }
    if raw.chars().any(char::is_control) {
        return Err(QueryError::validation(
            parameter,
            "must not contain control characters",
        ));
    }
    Ok(raw.to_owned())
}

/// The single path parameter as text, with a malformed one (bad percent-encoding)
/// answered as a 400 problem.
pub struct PathText(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathText {
    type Rejection = QueryError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(text)| PathText(text))
            .map_err(|rejection| QueryError::validation("path", rejection.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_defaults_and_is_capped() {
        assert_eq!(limit(None).ok(), Some(DEFAULT_LIMIT));
        assert_eq!(limit(Some("1000")).ok(), Some(1000));
        assert!(limit(Some("1001")).is_err());
        assert!(limit(Some("0")).is_err());
        assert!(limit(Some("ten")).is_err());
    }

    #[test]
    fn text_filters_refuse_control_characters_and_keep_injection_text_as_plain_text() {
        assert!(text_filter("actor", "a\0b", 10).is_err());
        assert!(text_filter("actor", "line\nbreak", 20).is_err());
        assert_eq!(
            text_filter("actor", "' OR 1=1 --", 20).ok().as_deref(),
            Some("' OR 1=1 --")
        );
    }

    #[test]
    fn a_negative_position_is_refused() {
        assert!(position("after", "-1").is_err());
        assert_eq!(position("after", "7").ok(), Some(7));
    }
}
