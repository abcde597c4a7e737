//! The personal-data vault against a real PostgreSQL: sealed values open with their
//! subject's key, never with another's, and not at all once the key is destroyed; the
//! database holds only wrapped keys and ciphertext.

use base64::Engine;
use event_store::pii::{PiiError, SEALED_PREFIX, Vault};
use sqlx::PgPool;
use uuid::Uuid;

fn vault() -> Vault {
    Vault::from_base64(&base64::engine::general_purpose::STANDARD.encode([7u8; 32])).expect("master key")
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_sealed_value_opens_with_its_subjects_key_until_the_key_is_destroyed(pool: PgPool) {
    let vault = vault();
    let subject = Uuid::now_v7();
    let key = vault.create_key(&pool, subject).await.expect("create");
    let sealed = key.seal("Ada Lovelace").expect("seal");
    assert!(sealed.starts_with(SEALED_PREFIX) && !sealed.contains("Ada"));
    assert_ne!(
        sealed,
        key.seal("Ada Lovelace").expect("seal again"),
        "every seal has a fresh nonce"
    );

    let loaded = vault
        .load_key(&pool, subject)
        .await
        .expect("load")
        .expect("present");
    assert_eq!(loaded.open(&sealed).expect("open"), "Ada Lovelace");

    assert!(vault.destroy_key(&pool, subject).await.expect("destroy"));
    assert!(
        vault.load_key(&pool, subject).await.expect("load").is_none(),
        "erased for good"
    );
    assert!(!vault.destroy_key(&pool, subject).await.expect("destroy twice"));
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_value_sealed_for_one_subject_does_not_open_for_another(pool: PgPool) {
    let vault = vault();
    let alice = vault.create_key(&pool, Uuid::now_v7()).await.expect("alice");
    let bob = vault.create_key(&pool, Uuid::now_v7()).await.expect("bob");
    let sealed = alice.seal("alice@example.com").expect("seal");
    assert!(matches!(bob.open(&sealed), Err(PiiError::Tampered)));
    let mut tampered = sealed.clone();
    tampered.replace_range(tampered.len() - 4.., "AAAA");
    assert!(matches!(alice.open(&tampered), Err(PiiError::Tampered)));
    assert!(matches!(alice.open("plain text"), Err(PiiError::Tampered)));
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn the_database_holds_only_a_wrapped_key_that_the_wrong_master_key_cannot_open(pool: PgPool) {
    let subject = Uuid::now_v7();
    vault().create_key(&pool, subject).await.expect("create");
    let wrapped: Vec<u8> = sqlx::query_scalar("SELECT wrapped_key FROM pii_keys WHERE subject_id = $1")
        .bind(subject)
        .fetch_one(&pool)
        .await
        .expect("row");
    assert_eq!(wrapped.len(), 12 + 32 + 16, "nonce, encrypted key, tag");
    let other =
        Vault::from_base64(&base64::engine::general_purpose::STANDARD.encode([9u8; 32])).expect("other");
    assert!(matches!(
        other.load_key(&pool, subject).await,
        Err(PiiError::Tampered)
    ));
}

#[test]
fn a_master_key_must_be_base64_of_32_bytes() {
    let short = base64::engine::general_purpose::STANDARD.encode([1u8; 16]);
    assert!(matches!(Vault::from_base64(&short), Err(PiiError::BadMasterKey)));
    assert!(matches!(
        Vault::from_base64("not base64!"),
        Err(PiiError::BadMasterKey)
    ));
}
