//! Reading a request into what a command needs, with every failure as an [`ApiError`]
//! so that bad input gets the same problem body as any other refusal (axum's own
//! rejections would answer plain text with their own statuses).
//!
//! - [`JsonBody`]: the body, checked for its content type and size, parsed strictly
//!   (unknown fields refused by the request types, a key given twice refused here), and
//!   kept in a canonical form for the idempotency fingerprint.
//! - [`CommandHeaders`]: `X-Correlation-Id`, `Idempotency-Key`, `If-Match` and
//!   `If-None-Match` (read by [`crate::preconditions`]) and `traceparent`.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use bytes::Bytes;
use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::correlation::CorrelationId;
use crate::error::ApiError;
use crate::preconditions::Preconditions;

/// The largest body accepted, in bytes (API.md: over 64 KiB is 413). The largest real
/// command (an account with a 200-character name and a 254-character email) is well
/// under 2 KiB; the rest is room for clients, not for abuse.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The longest `Idempotency-Key`, in characters (API.md).
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;

/// The correlation id's header and its longest accepted value, shared with the request
/// logs of every process.
pub use service::http_observe::{CORRELATION_ID_HEADER, MAX_CORRELATION_ID_CHARS};
/// The header that names an idempotency key.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
/// The header set on a replayed answer.
pub const IDEMPOTENT_REPLAYED_HEADER: &str = "idempotent-replayed";
/// W3C trace context, carried into event metadata when present.
const TRACEPARENT_HEADER: &str = "traceparent";
/// The longest `traceparent` kept: the W3C format is 55 characters.
const MAX_TRACEPARENT_CHARS: usize = 128;

/// A command body: the typed request and its canonical JSON (keys sorted, no
/// whitespace), so that two bodies that mean the same share an idempotency fingerprint.
#[derive(Debug)]
pub struct JsonBody<T> {
    pub value: T,
    pub canonical: Vec<u8>,
}

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let declared_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|value| value.to_str().map(is_json_media_type).unwrap_or(false));
        let bytes = Bytes::from_request(request, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge {
                    limit_bytes: MAX_BODY_BYTES,
                }
            } else {
                ApiError::MalformedJson(rejection.body_text())
            }
        })?;
        parse_body(declared_json, &bytes)
    }
}

/// Parses `bytes` as `T`. An empty body means `{}` (with no content type, or with a JSON
/// one: a client library that always sends `Content-Type: application/json` has still
/// sent no body), so that the commands whose fields are all optional (`freeze`, `close`,
/// ...) need none; a command with required fields then names the first one missing.
fn parse_body<T: DeserializeOwned>(
    declared_json: Option<bool>,
    bytes: &[u8],
) -> Result<JsonBody<T>, ApiError> {
    let raw: &[u8] = match declared_json {
        None | Some(true) if bytes.is_empty() => b"{}",
        Some(true) => bytes,
        None | Some(false) => return Err(ApiError::UnsupportedMediaType),
    };
    // Parse once into a value, for the canonical form, then into the type: a syntax
    // error and a shape error are different problems for the client. A duplicate key is
    // a shape error (the JSON is well formed, but means two things).
    let UniqueKeys(value) = serde_json::from_slice(raw).map_err(|error| {
        if error.is_data() {
            ApiError::InvalidBody(error.to_string())
        } else {
            ApiError::MalformedJson(error.to_string())
        }
    })?;
    let canonical = serde_json::to_vec(&value).map_err(|error| ApiError::MalformedJson(error.to_string()))?;
    let typed = serde_json::from_value(value).map_err(|error| ApiError::InvalidBody(error.to_string()))?;
    Ok(JsonBody {
        value: typed,
        canonical,
    })
}

/// The longest duplicate key quoted back in a problem's detail.
const MAX_QUOTED_KEY_CHARS: usize = 64;

/// A JSON value in which no object names a key twice. RFC 8259 leaves duplicates to the
/// parser; serde_json keeps the last one, so `{"amount": 1, "amount": 1000}` would be read
/// as 1000 by us and perhaps as 1 by a proxy or log that checked it. Refusing them means
/// every reader of a body sees the same command.
struct UniqueKeys(Value);

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UniqueKeysVisitor).map(UniqueKeys)
    }
}

struct UniqueKeysVisitor;

impl<'de> Visitor<'de> for UniqueKeysVisitor {
    type Value = Value;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Value, E> {
        // serde_json refuses non-finite numbers before they get here; null as a fallback.
        Ok(Number::from_f64(value).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Value, A::Error> {
        let mut values = Vec::new();
        while let Some(UniqueKeys(value)) = items.next_element()? {
            values.push(value);
        }
        Ok(Value::Array(values))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = entries.next_key::<String>()? {
            if object.contains_key(&key) {
                let quoted: String = key.chars().take(MAX_QUOTED_KEY_CHARS).collect();
                return Err(de::Error::custom(format!(
                    "duplicate key {quoted:?}: each key may appear once in an object"
                )));
            }
            let UniqueKeys(value) = entries.next_value()?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// `application/json`, or any `application/<something>+json`, with any parameters.
fn is_json_media_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The headers every command reads.
#[derive(Debug, Clone)]
pub struct CommandHeaders {
    /// The client's `X-Correlation-Id`, or a new UUIDv7; echoed in the answer.
    pub correlation_id: String,
    /// The client's `Idempotency-Key`, checked for length and characters.
    pub idempotency_key: Option<String>,
    /// `If-Match` and `If-None-Match`.
    pub preconditions: Preconditions,
    pub traceparent: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for CommandHeaders {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let assigned = parts
            .extensions
            .get::<CorrelationId>()
            .map(|CorrelationId(id)| id.clone());
        CommandHeaders::parse(&parts.headers, assigned)
    }
}

impl CommandHeaders {
    /// Reads and checks the headers. `assigned` is the correlation id the middleware
    /// settled on (and echoes); without the middleware one is generated here.
    pub fn parse(headers: &HeaderMap, assigned: Option<String>) -> Result<Self, ApiError> {
        if let Some(id) = text_header(headers, CORRELATION_ID_HEADER, "X-Correlation-Id")? {
            check_printable("X-Correlation-Id", &id, MAX_CORRELATION_ID_CHARS)?;
        }
        let correlation_id = assigned.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let idempotency_key = text_header(headers, IDEMPOTENCY_KEY_HEADER, "Idempotency-Key")?;
        if let Some(key) = &idempotency_key {
            check_printable("Idempotency-Key", key, MAX_IDEMPOTENCY_KEY_CHARS)?;
        }
        let preconditions = Preconditions::parse(headers)?;
        // W3C Trace Context: an invalid `traceparent` is ignored, not refused; only
        // printable ASCII of bounded length is kept in the events' metadata.
        let traceparent = text_header(headers, TRACEPARENT_HEADER, "traceparent")?.filter(|value| {
            value.len() <= MAX_TRACEPARENT_CHARS && value.bytes().all(|byte| (0x20..=0x7e).contains(&byte))
        });
        Ok(Self {
            correlation_id,
            idempotency_key,
            preconditions,
            traceparent,
        })
    }
}

/// A header as text; one that is not visible ASCII is refused rather than ignored,
/// because the client clearly meant something by it.
fn text_header(headers: &HeaderMap, name: &str, display: &'static str) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::InvalidHeader {
            header: display,
            message: "given more than once".to_owned(),
        });
    }
    let text = value.to_str().map_err(|_| ApiError::InvalidHeader {
        header: display,
        message: "must be printable ASCII".to_owned(),
    })?;
    Ok(Some(text.to_owned()))
}

/// 1 to `max_chars` printable ASCII characters (space through tilde).
fn check_printable(display: &'static str, value: &str, max_chars: usize) -> Result<(), ApiError> {
    if value.is_empty() || value.len() > max_chars || !value.bytes().all(|byte| (0x20..=0x7e).contains(&byte))
    {
        return Err(ApiError::InvalidHeader {
            header: display,
            message: format!("must be 1 to {max_chars} printable ASCII characters"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        #[allow(dead_code)]
        reason: Option<String>,
    }

    #[test]
    fn an_empty_body_without_content_type_reads_as_an_empty_object() {
        let body: JsonBody<Sample> = parse_body(None, b"").expect("empty body reads");
        assert_eq!(body.canonical, b"{}");
    }

    #[test]
    fn an_empty_body_with_a_json_content_type_is_an_omitted_body_too() {
        let body: JsonBody<Sample> = parse_body(Some(true), b"").expect("empty body reads");
        assert_eq!(body.canonical, b"{}");
        // Where a field is required, the client learns which, not that "" is not JSON.
        #[derive(Debug, serde::Deserialize)]
        struct Required {
            #[allow(dead_code)]
            amount: i64,
        }
        match parse_body::<Required>(Some(true), b"").err() {
            Some(ApiError::InvalidBody(detail)) => assert!(detail.contains("amount"), "{detail}"),
            other => panic!("expected invalid-body naming amount, got {other:?}"),
        }
    }

    #[test]
    fn a_body_without_a_json_content_type_is_unsupported() {
        let result = parse_body::<Sample>(Some(false), b"{}");
        assert!(matches!(result, Err(ApiError::UnsupportedMediaType)));
        let result = parse_body::<Sample>(None, b"{}");
        assert!(matches!(result, Err(ApiError::UnsupportedMediaType)));
    }

    #[test]
    fn syntax_errors_and_shape_errors_are_different_problems() {
        assert!(matches!(
            parse_body::<Sample>(Some(true), b"{"),
            Err(ApiError::MalformedJson(_))
        ));
        assert!(matches!(
            parse_body::<Sample>(Some(true), br#"{"other": 1}"#),
            Err(ApiError::InvalidBody(_))
        ));
    }

    #[test]
    fn bodies_that_differ_only_in_key_order_and_spacing_have_one_canonical_form() {
        #[derive(Debug, serde::Deserialize)]
        struct Two {
            #[allow(dead_code)]
            a: i64,
            #[allow(dead_code)]
            b: i64,
        }
        let first: JsonBody<Two> = parse_body(Some(true), br#"{"a":1,"b":2}"#).expect("valid body");
        let second: JsonBody<Two> = parse_body(Some(true), b"{ \"b\": 2,\n \"a\": 1 }").expect("valid body");
        assert_eq!(first.canonical, second.canonical);
    }

    #[test]
    fn a_key_given_twice_is_an_invalid_body_naming_the_key() {
        let result = parse_body::<Sample>(Some(true), br#"{"reason": "a", "reason": "b"}"#);
        match result {
            Err(ApiError::InvalidBody(detail)) => {
                assert!(detail.contains("duplicate key \"reason\""), "{detail}")
            }
            other => panic!("expected invalid-body, got {other:?}"),
        }
        // Also inside nested objects, and the same key in sibling objects is fine.
        let nested = br#"{"a": [{"k": 1}, {"k": 2}], "b": {"x": 1, "x": 2}}"#;
        assert!(matches!(
            parse_body::<Value>(Some(true), nested),
            Err(ApiError::InvalidBody(_))
        ));
        let siblings = br#"{"a": [{"k": 1}, {"k": 2}], "b": {"x": 1}}"#;
        assert!(parse_body::<Value>(Some(true), siblings).is_ok());
    }

    #[test]
    fn nesting_beyond_the_parser_depth_limit_is_malformed_json() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(matches!(
            parse_body::<Value>(Some(true), deep.as_bytes()),
            Err(ApiError::MalformedJson(_))
        ));
    }

    #[test]
    fn numbers_beyond_every_integer_and_float_type_are_refused_without_panicking() {
        assert!(matches!(
            parse_body::<Value>(Some(true), br#"{"amount": 1e400}"#),
            Err(ApiError::MalformedJson(_))
        ));
        #[derive(Debug, serde::Deserialize)]
        struct Amount {
            #[allow(dead_code)]
            amount: i64,
        }
        for body in [
            &br#"{"amount": 99999999999999999999999}"#[..],
            br#"{"amount": 9223372036854775808}"#,
            br#"{"amount": -0.0}"#,
            br#"{"amount": 1.5}"#,
        ] {
            assert!(
                matches!(
                    parse_body::<Amount>(Some(true), body),
                    Err(ApiError::InvalidBody(_))
                ),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn json_media_types_with_parameters_and_suffixes_are_json() {
        assert!(is_json_media_type("application/json; charset=utf-8"));
        assert!(is_json_media_type("application/merge-patch+json"));
        assert!(!is_json_media_type("text/plain"));
    }

    #[test]
    fn idempotency_keys_must_be_printable_ascii_of_bounded_length() {
        assert!(check_printable("Idempotency-Key", "abc-123", MAX_IDEMPOTENCY_KEY_CHARS).is_ok());
        assert!(check_printable("Idempotency-Key", "", MAX_IDEMPOTENCY_KEY_CHARS).is_err());
        assert!(check_printable("Idempotency-Key", &"k".repeat(256), MAX_IDEMPOTENCY_KEY_CHARS).is_err());
        assert!(check_printable("Idempotency-Key", "tab\there", MAX_IDEMPOTENCY_KEY_CHARS).is_err());
    }
}
