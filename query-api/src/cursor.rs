//! Opaque pagination cursors: base64url of a tagged keyset value, so clients cannot
//! come to rely on their shape, and a cursor of one endpoint is refused by another.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use uuid::Uuid;

use crate::error::QueryError;

/// The longest cursor accepted; ours are under 60 characters, so anything longer is
/// not one of ours and is refused before decoding.
pub const MAX_CURSOR_CHARS: usize = 128;

/// `GET /accounts` pages in account id order: the last id served.
pub fn encode_account(after: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(format!("account:{after}"))
}

pub fn decode_account(cursor: &str) -> Result<Uuid, QueryError> {
    decode(cursor, "account").and_then(|value| Uuid::parse_str(&value).map_err(|_| malformed()))
}

/// `GET /accounts/{id}/transactions` pages newest first: the last position served.
pub fn encode_transaction(before: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("transaction:{before}"))
}

pub fn decode_transaction(cursor: &str) -> Result<i64, QueryError> {
    decode(cursor, "transaction").and_then(|value| value.parse::<i64>().map_err(|_| malformed()))
}

/// `GET /transfers` pages newest first: the position of the last transfer served.
pub fn encode_transfer(before: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("transfer:{before}"))
}

pub fn decode_transfer(cursor: &str) -> Result<i64, QueryError> {
    decode(cursor, "transfer").and_then(|value| value.parse::<i64>().map_err(|_| malformed()))
}

fn decode(cursor: &str, tag: &str) -> Result<String, QueryError> {
    if cursor.len() > MAX_CURSOR_CHARS {
        return Err(malformed());
    }
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| malformed())?;
    let text = String::from_utf8(bytes).map_err(|_| malformed())?;
    let (found_tag, value) = text.split_once(':').ok_or_else(malformed)?;
    if found_tag != tag {
        return Err(malformed());
    }
    Ok(value.to_owned())
}

fn malformed() -> QueryError {
    QueryError::validation(
        "cursor",
        "is not a cursor of this endpoint; pass back `next_cursor` unchanged",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips() {
        let id = Uuid::now_v7();
        assert_eq!(decode_account(&encode_account(id)).ok(), Some(id));
        assert_eq!(decode_transaction(&encode_transaction(99)).ok(), Some(99));
        assert_eq!(decode_transfer(&encode_transfer(42)).ok(), Some(42));
    }

    #[test]
    fn a_cursor_of_another_endpoint_is_refused() {
        assert!(decode_account(&encode_transaction(99)).is_err());
        assert!(decode_transfer(&encode_transaction(99)).is_err());
        assert!(decode_transaction("not base64!").is_err());
    }
}
