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
//!
//! Keys are made in memory ([`Vault::new_key`]) and stored with [`store_keys`] inside
//! the transaction that appends the events sealed with them (the command API's group
//! commit), and destroyed with [`destroy_keys`] inside the one that appends
//! `PersonalDataErased`: no event without its key, no key without its event, and no
//! erasure recorded while its key survives.

use std::collections::HashMap;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use domain::{Owner, SealedOwner, SealedText};
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
    #[error("a sealed value does not fit the domain's sealed form")]
    Unrepresentable,
    #[error("database error")]
    Database(#[from] sqlx::Error),
}

/// The master key of development mode: 32 bytes of `0x2a`, public by design. Data
/// sealed under it is as good as plaintext; it exists so that a developer's machine and
/// a throwaway system run without secrets, and its use is logged as a warning.
pub const DEVELOPMENT_MASTER_KEY: [u8; 32] = [0x2a; 32];

/// The master key setting, flattened into the config of every process that seals or
/// opens personal data (the command API and the query API).
#[derive(Clone, clap::Args)]
pub struct PiiConfig {
    /// Base64 of the 32-byte master key that wraps every account's data key
    /// (`openssl rand -base64 32`). Losing it loses every owner; leaking it exposes them.
    #[arg(long, env = "PII_MASTER_KEY", hide_env_values = true)]
    pub pii_master_key: Option<String>,
}

/// Never the key itself: a config printed into a log must not carry it.
impl std::fmt::Debug for PiiConfig {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = self.pii_master_key.as_ref().map(|_| "<redacted>");
        formatter
            .debug_struct("PiiConfig")
            .field("pii_master_key", &key)
            .finish()
    }
}

/// Why the master key setting cannot be used; the process refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum PiiConfigError {
    #[error(
        "no master key for personal data: set PII_MASTER_KEY (base64 of 32 bytes), \
         or pass --insecure-development-auth on a development machine"
    )]
    NoKey,
    #[error("PII_MASTER_KEY cannot be used")]
    BadKey(#[source] PiiError),
}

/// One subject's new data key, wrapped by the master key: what [`store_keys`] writes.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey {
    pub subject_id: Uuid,
    /// Nonce, encrypted key and tag; useless without the master key.
    pub wrapped: Vec<u8>,
}

impl std::fmt::Debug for WrappedKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "WrappedKey({}, ..)", self.subject_id)
    }
}

/// The master key and the operations on data keys.
///
/// Cheap to clone (the expanded key is shared): the query API's state, cloned for every
/// request, holds one.
#[derive(Clone)]
pub struct Vault {
    master: std::sync::Arc<Aes256Gcm>,
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
    /// From the configuration: the key given, else the public development key when
    /// `insecure_development` (with a loud warning), else a refusal to start.
    pub fn from_config(config: &PiiConfig, insecure_development: bool) -> Result<Self, PiiConfigError> {
        match &config.pii_master_key {
            Some(key) => Self::from_base64(key).map_err(PiiConfigError::BadKey),
            None if insecure_development => {
                tracing::warn!(
                    "INSECURE: no PII_MASTER_KEY and --insecure-development-auth is on; personal \
                     data is sealed with a public development key. Never use this in production."
                );
                Ok(Self::from_bytes(&DEVELOPMENT_MASTER_KEY))
            }
            None => Err(PiiConfigError::NoKey),
        }
    }

    fn from_bytes(bytes: &[u8; 32]) -> Self {
        Self {
            master: std::sync::Arc::new(Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(bytes))),
        }
    }

    /// From `PII_MASTER_KEY`: base64 of 32 random bytes (`openssl rand -base64 32`).
    pub fn from_base64(master_key: &str) -> Result<Self, PiiError> {
        let bytes = BASE64
            .decode(master_key.trim())
            .map_err(|_| PiiError::BadMasterKey)?;
        if bytes.len() != 32 {
            return Err(PiiError::BadMasterKey);
        }
        Ok(Self {
            master: std::sync::Arc::new(Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&bytes))),
        })
    }

    /// Makes the data key of a new subject, in memory only: seal with it, then store the
    /// wrapped form with [`store_keys`] in the transaction that writes the sealed values.
    pub fn new_key(&self, subject_id: Uuid) -> Result<(DataKey, WrappedKey), PiiError> {
        let key = Aes256Gcm::generate_key(OsRng);
        let wrapped = seal_bytes(&self.master, key.as_slice(), subject_id.as_bytes())?;
        Ok((
            DataKey {
                subject_id,
                cipher: Aes256Gcm::new(&key),
            },
            WrappedKey { subject_id, wrapped },
        ))
    }

    /// Unwraps a key read from `pii_keys` (by a query that joins it, say).
    pub fn unwrap_key(&self, subject_id: Uuid, wrapped: &[u8]) -> Result<DataKey, PiiError> {
        let key = open_bytes(&self.master, wrapped, subject_id.as_bytes())?;
        Ok(DataKey {
            subject_id,
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key)),
        })
    }

    /// The data keys of those `subject_ids` that still have one, in one query.
    pub async fn load_keys(
        &self,
        executor: impl PgExecutor<'_>,
        subject_ids: &[Uuid],
    ) -> Result<HashMap<Uuid, DataKey>, PiiError> {
        let rows: Vec<(Uuid, Vec<u8>)> =
            sqlx::query_as("SELECT subject_id, wrapped_key FROM pii_keys WHERE subject_id = ANY($1)")
                .bind(subject_ids)
                .fetch_all(executor)
                .await?;
        rows.into_iter()
            .map(|(subject_id, wrapped)| Ok((subject_id, self.unwrap_key(subject_id, &wrapped)?)))
            .collect()
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
            .map(|wrapped| self.unwrap_key(subject_id, &wrapped))
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

/// Stores new subjects' wrapped keys, in one statement however many.
///
/// A row already there for a subject is replaced. Called in the transaction that appends
/// the subject's first event, under the event store's head lock, after the append found
/// the stream absent: so no event sealed with an older key for this subject exists, and
/// a leftover row (impossible while both are written atomically) protects nothing.
pub async fn store_keys(executor: impl PgExecutor<'_>, keys: &[WrappedKey]) -> Result<(), sqlx::Error> {
    if keys.is_empty() {
        return Ok(());
    }
    let subject_ids: Vec<Uuid> = keys.iter().map(|key| key.subject_id).collect();
    let wrapped: Vec<&[u8]> = keys.iter().map(|key| key.wrapped.as_slice()).collect();
    sqlx::query(
        "INSERT INTO pii_keys (subject_id, wrapped_key) SELECT * FROM unnest($1::uuid[], $2::bytea[]) \
         ON CONFLICT (subject_id) DO UPDATE SET wrapped_key = EXCLUDED.wrapped_key, created_at = now()",
    )
    .bind(subject_ids)
    .bind(wrapped)
    .execute(executor)
    .await?;
    Ok(())
}

/// Destroys the keys of `subject_ids`, in one statement; returns how many existed.
/// Needs no master key: destroying is possible even for a process that cannot open.
pub async fn destroy_keys(executor: impl PgExecutor<'_>, subject_ids: &[Uuid]) -> Result<u64, sqlx::Error> {
    if subject_ids.is_empty() {
        return Ok(0);
    }
    let deleted = sqlx::query("DELETE FROM pii_keys WHERE subject_id = ANY($1)")
        .bind(subject_ids)
        .execute(executor)
        .await?;
    Ok(deleted.rows_affected())
}

impl DataKey {
    /// The subject this key belongs to.
    pub fn subject_id(&self) -> Uuid {
        self.subject_id
    }

    /// Seals a validated owner, name and email apart, into the domain's sealed form.
    pub fn seal_owner(&self, owner: &Owner) -> Result<SealedOwner, PiiError> {
        let seal = |plaintext: &str| {
            SealedText::parse(&self.seal(plaintext)?).map_err(|_| PiiError::Unrepresentable)
        };
        Ok(SealedOwner {
            name: seal(owner.name.as_str())?,
            email: seal(owner.email.as_str())?,
        })
    }

    /// Opens a sealed owner; [`PiiError::Tampered`] if either part does not open for
    /// this subject or is not a valid owner once opened.
    pub fn open_owner(&self, sealed: &SealedOwner) -> Result<Owner, PiiError> {
        let name = self.open(sealed.name.as_str())?;
        let email = self.open(sealed.email.as_str())?;
        Owner::parse(&name, &email).map_err(|_| PiiError::Tampered)
    }

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
