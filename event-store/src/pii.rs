//! Personal data encrypted at rest and erasable by destroying its key
//! ("crypto-shredding", API.md "Security").
//!
//! Each data subject (an account) gets its own random AES-256-GCM data key, stored in
//! `pii_keys` wrapped by the master key (`PII_MASTER_KEY`, base64 of 32 bytes), which
//! lives only in the processes' configuration. Personal fields are sealed with the data
//! key before they are written anywhere, so the event log, JetStream and backups only
//! ever hold ciphertext. Erasure deletes the wrapped key: the ciphertext stays where it
//! is (the log is append-only) but nobody can open it again.
//!
//! Associated data binds every ciphertext to its subject: a sealed value copied into
//! another account's event does not open there.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use sqlx::PgExecutor;
use uuid::Uuid;

/// AES-GCM's standard nonce length; random nonces of this size are safe for far more
/// values per key than one account will ever seal.
const NONCE_BYTES: usize = 12;

/// The prefix of a sealed value, naming the scheme so that it can change later.
pub const SEALED_PREFIX: &str = "pii:v1:";

/// Why personal data could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum PiiError {
    #[error("PII_MASTER_KEY must be base64 of exactly 32 bytes")]
    BadMasterKey,
    #[error("a sealed value is malformed or was not sealed for this subject")]
    Tampered,
    #[error("database error")]
    Database(#[from] sqlx::Error),
}

/// The master key and the operations on data keys.
#[derive(Clone)]
pub struct Vault {
    master: Aes256Gcm,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Vault(..)")
    }
}

/// One subject's data key, unwrapped in memory.
#[derive(Clone)]
pub struct DataKey {
    subject_id: Uuid,
    cipher: Aes256Gcm,
}

impl Vault {
    /// From `PII_MASTER_KEY`: base64 of 32 random bytes (`openssl rand -base64 32`).
    pub fn from_base64(master_key: &str) -> Result<Self, PiiError> {
        let bytes = BASE64
            .decode(master_key.trim())
            .map_err(|_| PiiError::BadMasterKey)?;
        if bytes.len() != 32 {
            return Err(PiiError::BadMasterKey);
        }
        Ok(Self {
            master: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&bytes)),
        })
    }

    /// Creates and stores the data key of a new subject. Run it in the transaction that
    /// writes the subject's first sealed value, so neither exists without the other.
    pub async fn create_key(
        &self,
        executor: impl PgExecutor<'_>,
        subject_id: Uuid,
    ) -> Result<DataKey, PiiError> {
        let key = Aes256Gcm::generate_key(OsRng);
        let wrapped = seal_bytes(&self.master, key.as_slice(), subject_id.as_bytes())?;
        sqlx::query("INSERT INTO pii_keys (subject_id, wrapped_key) VALUES ($1, $2)")
            .bind(subject_id)
            .bind(wrapped)
            .execute(executor)
            .await?;
        Ok(DataKey {
            subject_id,
            cipher: Aes256Gcm::new(&key),
        })
    }

    /// The subject's data key, or `None` once it was erased (or never existed).
    pub async fn load_key(
        &self,
        executor: impl PgExecutor<'_>,
        subject_id: Uuid,
    ) -> Result<Option<DataKey>, PiiError> {
        let wrapped: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT wrapped_key FROM pii_keys WHERE subject_id = $1")
                .bind(subject_id)
                .fetch_optional(executor)
                .await?;
        wrapped
            .map(|wrapped| {
                let key = open_bytes(&self.master, &wrapped, subject_id.as_bytes())?;
                Ok(DataKey {
                    subject_id,
                    cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key)),
                })
            })
            .transpose()
    }

    /// Destroys the subject's data key: every value sealed with it becomes unreadable.
    /// Returns whether there was a key to destroy.
    pub async fn destroy_key(
        &self,
        executor: impl PgExecutor<'_>,
        subject_id: Uuid,
    ) -> Result<bool, PiiError> {
        let deleted = sqlx::query("DELETE FROM pii_keys WHERE subject_id = $1")
            .bind(subject_id)
            .execute(executor)
            .await?;
        Ok(deleted.rows_affected() > 0)
    }
}

impl DataKey {
    /// Seals `plaintext` as a printable string (`pii:v1:<base64>`).
    pub fn seal(&self, plaintext: &str) -> Result<String, PiiError> {
        let sealed = seal_bytes(&self.cipher, plaintext.as_bytes(), self.subject_id.as_bytes())?;
        Ok(format!("{SEALED_PREFIX}{}", BASE64.encode(sealed)))
    }

    /// Opens a value sealed by [`DataKey::seal`] for this subject.
    pub fn open(&self, sealed: &str) -> Result<String, PiiError> {
        let encoded = sealed.strip_prefix(SEALED_PREFIX).ok_or(PiiError::Tampered)?;
        let bytes = BASE64.decode(encoded).map_err(|_| PiiError::Tampered)?;
        let plaintext = open_bytes(&self.cipher, &bytes, self.subject_id.as_bytes())?;
        String::from_utf8(plaintext).map_err(|_| PiiError::Tampered)
    }
}

/// A fresh random nonce followed by the ciphertext and tag.
fn seal_bytes(cipher: &Aes256Gcm, plaintext: &[u8], associated: &[u8]) -> Result<Vec<u8>, PiiError> {
    let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
    let ciphertext = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: plaintext,
                aad: associated,
            },
        )
        .map_err(|_| PiiError::Tampered)?;
    let mut sealed = Vec::with_capacity(NONCE_BYTES + ciphertext.len());
    sealed.extend_from_slice(&nonce);
    sealed.extend_from_slice(&ciphertext);
    Ok(sealed)
}

fn open_bytes(cipher: &Aes256Gcm, sealed: &[u8], associated: &[u8]) -> Result<Vec<u8>, PiiError> {
    if sealed.len() < NONCE_BYTES {
        return Err(PiiError::Tampered);
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE_BYTES);
    cipher
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad: associated,
            },
        )
        .map_err(|_| PiiError::Tampered)
}
