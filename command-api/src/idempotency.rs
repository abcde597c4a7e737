//! `Idempotency-Key` (API.md): a retry with the same key and body gets the first answer
//! again and writes nothing; another body under the same key is 422; the same key while
//! the first request runs is 409.
//!
//! The key's row (`idempotency_keys`) is written by the committer in the same
//! transaction as the events it answers for, so a crash never leaves one without the
//! other. Only successes are stored: a refused command wrote nothing, so its retry is
//! simply decided again (and may succeed once, say, funds arrived).
//!
//! Requests in flight are tracked in memory ([`InFlight`]); across instances the
//! committer re-checks the table under the event store's head lock before deciding, so
//! two instances can never both write for one key.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use event_store::StoreError;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use tracing::instrument;

use crate::extract::IDEMPOTENT_REPLAYED_HEADER;

/// How long keys are kept: API.md promises at least 24 hours; the extra day covers a
/// client retrying across a daily batch window without hitting the boundary.
pub const KEY_RETENTION: Duration = Duration::from_secs(48 * 60 * 60);

/// How often expired keys are purged: often enough that the table stays near one
/// retention period of keys, rarely enough to cost nothing.
pub const PURGE_INTERVAL: Duration = Duration::from_secs(60 * 60);

/// A key as the client's: keys of different callers never meet.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyScope {
    pub actor: String,
    pub key: String,
}

/// The answer to replay: status, body and the headers that describe the result.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResponse {
    pub status: u16,
    pub body: Value,
    /// (name, value) pairs, for example `ETag` and `Location`.
    pub headers: Vec<(String, String)>,
}

impl StoredResponse {
    /// The response, as first sent or as a replay (`Idempotent-Replayed: true`).
    pub fn to_response(&self, replayed: bool) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK);
        let mut response = (status, axum::Json(self.body.clone())).into_response();
        let headers = response.headers_mut();
        // A stored refusal is a problem document (RFC 9457), as when first sent.
        if status.is_client_error() {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/problem+json"),
            );
        }
        for (name, value) in &self.headers {
            if let (Ok(name), Ok(value)) = (
                HeaderName::try_from(name.as_str()),
                HeaderValue::try_from(value.as_str()),
            ) {
                headers.insert(name, value);
            }
        }
        if replayed {
            headers.insert(IDEMPOTENT_REPLAYED_HEADER, HeaderValue::from_static("true"));
        }
        response
    }

    fn headers_json(&self) -> Value {
        Value::Object(
            self.headers
                .iter()
                .map(|(name, value)| (name.clone(), Value::String(value.clone())))
                .collect(),
        )
    }

    fn from_row(status: i16, body: Value, headers: Value) -> Self {
        let headers = match headers {
            Value::Object(map) => map
                .into_iter()
                .filter_map(|(name, value)| value.as_str().map(|value| (name, value.to_owned())))
                .collect(),
            _ => Vec::new(),
        };
        Self {
            status: u16::try_from(status).unwrap_or(200),
            body,
            headers,
        }
    }
}

/// What is stored for a key: the request it was first used for and its answer.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredKey {
    pub request_hash: Vec<u8>,
    pub response: StoredResponse,
}

/// A key to store with a command's events.
#[derive(Debug, Clone)]
pub struct KeyClaim {
    pub scope: KeyScope,
    pub request_hash: Vec<u8>,
}

/// SHA-256 over the method, the path and the canonical body: what "the same request"
/// means for a key.
pub fn fingerprint(method: &str, path: &str, canonical_body: &[u8]) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(method.as_bytes());
    hasher.update(b"\n");
    hasher.update(path.as_bytes());
    hasher.update(b"\n");
    hasher.update(canonical_body);
    hasher.finalize().to_vec()
}

/// The stored key of one scope, if any.
#[instrument(skip_all)]
pub async fn find(pool: &PgPool, scope: &KeyScope) -> Result<Option<StoredKey>, StoreError> {
    let row: Option<(Vec<u8>, i16, Value, Value)> = sqlx::query_as(
        "SELECT request_hash, response_status, response_body, response_headers \
         FROM idempotency_keys WHERE actor = $1 AND idempotency_key = $2",
    )
    .bind(&scope.actor)
    .bind(&scope.key)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(request_hash, status, body, headers)| StoredKey {
        request_hash,
        response: StoredResponse::from_row(status, body, headers),
    }))
}

/// The stored keys among `scopes`, read inside the committer's transaction.
#[instrument(skip_all, fields(keys = scopes.len()))]
pub async fn find_in(
    connection: &mut PgConnection,
    scopes: &[KeyScope],
) -> Result<HashMap<KeyScope, StoredKey>, StoreError> {
    let actors: Vec<&str> = scopes.iter().map(|scope| scope.actor.as_str()).collect();
    let keys: Vec<&str> = scopes.iter().map(|scope| scope.key.as_str()).collect();
    let rows: Vec<(String, String, Vec<u8>, i16, Value, Value)> = sqlx::query_as(
        "SELECT k.actor, k.idempotency_key, k.request_hash, k.response_status, k.response_body, k.response_headers \
         FROM idempotency_keys k \
         JOIN unnest($1::text[], $2::text[]) AS wanted(actor, idempotency_key) \
           ON k.actor = wanted.actor AND k.idempotency_key = wanted.idempotency_key",
    )
    .bind(&actors)
    .bind(&keys)
    .fetch_all(&mut *connection)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(actor, key, request_hash, status, body, headers)| {
            (
                KeyScope { actor, key },
                StoredKey {
                    request_hash,
                    response: StoredResponse::from_row(status, body, headers),
                },
            )
        })
        .collect())
}

/// A key row to insert with its events.
#[derive(Debug)]
pub struct KeyRow<'a> {
    pub claim: &'a KeyClaim,
    pub response: &'a StoredResponse,
    pub position: i64,
}

/// Inserts the keys of a batch's successful commands in one statement, inside the
/// transaction that appended their events.
#[instrument(skip_all, fields(keys = rows.len()))]
pub async fn insert_in(connection: &mut PgConnection, rows: &[KeyRow<'_>]) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let actors: Vec<&str> = rows.iter().map(|row| row.claim.scope.actor.as_str()).collect();
    let keys: Vec<&str> = rows.iter().map(|row| row.claim.scope.key.as_str()).collect();
    let hashes: Vec<&[u8]> = rows.iter().map(|row| row.claim.request_hash.as_slice()).collect();
    let statuses: Vec<i16> = rows.iter().map(|row| row.response.status as i16).collect();
    let bodies: Vec<&Value> = rows.iter().map(|row| &row.response.body).collect();
    let headers: Vec<Value> = rows.iter().map(|row| row.response.headers_json()).collect();
    let positions: Vec<i64> = rows.iter().map(|row| row.position).collect();
    sqlx::query(
        "INSERT INTO idempotency_keys \
             (actor, idempotency_key, request_hash, response_status, response_body, response_headers, position) \
         SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::smallint[], $5::jsonb[], $6::jsonb[], $7::bigint[])",
    )
    .bind(&actors)
    .bind(&keys)
    .bind(&hashes)
    .bind(&statuses)
    .bind(&bodies)
    .bind(&headers)
    .bind(&positions)
    .execute(&mut *connection)
    .await?;
    Ok(())
}

/// Deletes keys older than [`KEY_RETENTION`]; returns how many went.
/// Stores a refusal of the domain under `claim` (no events, so no position) and returns
/// what is now stored under the key: this refusal, or the answer another instance stored
/// first. Takes the event store's head lock, as the committer does before it looks keys
/// up, so a key row can never appear between a committer's look-up and its insert (which
/// would fail that whole group commit).
#[instrument(skip_all)]
pub async fn store_refusal(
    pool: &PgPool,
    claim: &KeyClaim,
    response: &StoredResponse,
) -> Result<StoredKey, StoreError> {
    let mut transaction = pool.begin().await?;
    sqlx::query("SELECT position FROM event_store_head FOR UPDATE")
        .execute(&mut *transaction)
        .await?;
    sqlx::query(
        "INSERT INTO idempotency_keys \
             (actor, idempotency_key, request_hash, response_status, response_body, response_headers, position) \
         VALUES ($1, $2, $3, $4, $5, $6, NULL) ON CONFLICT (actor, idempotency_key) DO NOTHING",
    )
    .bind(&claim.scope.actor)
    .bind(&claim.scope.key)
    .bind(&claim.request_hash)
    .bind(response.status as i16)
    .bind(&response.body)
    .bind(response.headers_json())
    .execute(&mut *transaction)
    .await?;
    let stored = find_in(&mut transaction, std::slice::from_ref(&claim.scope))
        .await?
        .remove(&claim.scope)
        // Inserted or already there, under the lock: it is there.
        .ok_or(StoreError::Database(sqlx::Error::RowNotFound))?;
    transaction.commit().await?;
    Ok(stored)
}

#[instrument(skip_all)]
pub async fn purge_expired(pool: &PgPool) -> Result<u64, StoreError> {
    let retention_seconds = KEY_RETENTION.as_secs_f64();
    let result =
        sqlx::query("DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(secs => $1)")
            .bind(retention_seconds)
            .execute(pool)
            .await?;
    Ok(result.rows_affected())
}

/// Purges expired keys every [`PURGE_INTERVAL`] until `stop`.
pub async fn purge_periodically(pool: PgPool, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(PURGE_INTERVAL);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        match purge_expired(&pool).await {
            Ok(purged) if purged > 0 => tracing::info!(purged, "expired idempotency keys purged"),
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(error = %event_store::error_chain(&error), "purging idempotency keys failed")
            }
        }
    }
}

/// The keys whose first request is still running on this instance.
#[derive(Debug, Clone, Default)]
pub struct InFlight {
    /// A std mutex: held only to insert or remove one entry, never across an await.
    keys: Arc<Mutex<HashSet<KeyScope>>>,
}

impl InFlight {
    /// Marks `scope` as running, or `None` if it already is. The mark goes with the guard.
    pub fn claim(&self, scope: &KeyScope) -> Option<InFlightGuard> {
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        keys.insert(scope.clone()).then(|| InFlightGuard {
            keys: self.keys.clone(),
            scope: scope.clone(),
        })
    }
}

/// Releases an in-flight key when the request ends, however it ends.
#[derive(Debug)]
pub struct InFlightGuard {
    keys: Arc<Mutex<HashSet<KeyScope>>>,
    scope: KeyScope,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.scope);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(key: &str) -> KeyScope {
        KeyScope {
            actor: "teller-1".to_owned(),
            key: key.to_owned(),
        }
    }

    #[test]
    fn a_key_in_flight_cannot_be_claimed_again_until_its_guard_is_dropped() {
        let in_flight = InFlight::default();
        let guard = in_flight.claim(&scope("a"));
        assert!(guard.is_some());
        assert!(in_flight.claim(&scope("a")).is_none());
        assert!(in_flight.claim(&scope("b")).is_some());
        drop(guard);
        assert!(in_flight.claim(&scope("a")).is_some());
    }

    #[test]
    fn the_fingerprint_depends_on_method_path_and_body() {
        let base = fingerprint("POST", "/accounts", b"{}");
        assert_eq!(base, fingerprint("POST", "/accounts", b"{}"));
        assert_ne!(base, fingerprint("POST", "/transfers", b"{}"));
        assert_ne!(base, fingerprint("DELETE", "/accounts", b"{}"));
        assert_ne!(base, fingerprint("POST", "/accounts", b"{\"a\":1}"));
    }
}
