//! The personal-data vault against a real PostgreSQL: sealed values open with their
//! subject's key, never with another's, and not at all once the key is destroyed; the
//! database holds only wrapped keys and ciphertext.

use base64::Engine;
use event_store::pii::{self, PiiConfig, PiiConfigError, PiiError, SEALED_PREFIX, Vault};
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

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn keys_made_in_memory_are_stored_loaded_and_destroyed_in_batches(pool: PgPool) {
    let vault = vault();
    let (first, second) = (Uuid::now_v7(), Uuid::now_v7());
    let (first_key, first_wrapped) = vault.new_key(first).expect("first");
    let (_, second_wrapped) = vault.new_key(second).expect("second");
    let owner = domain::Owner::parse("Grace Hopper", "grace@example.com").expect("owner");
    let sealed = first_key.seal_owner(&owner).expect("seal");
    assert!(!format!("{sealed:?}{}", sealed.name.as_str()).contains("Grace"));

    assert!(
        vault.load_key(&pool, first).await.expect("load").is_none(),
        "nothing is stored before store_keys"
    );
    pii::store_keys(&pool, &[first_wrapped, second_wrapped])
        .await
        .expect("store");
    let loaded = vault
        .load_keys(&pool, &[first, second, Uuid::now_v7()])
        .await
        .expect("load");
    assert_eq!(loaded.len(), 2);
    assert_eq!(loaded[&first].open_owner(&sealed).expect("open"), owner);
    assert!(matches!(
        loaded[&second].open_owner(&sealed),
        Err(PiiError::Tampered)
    ));

    assert_eq!(
        pii::destroy_keys(&pool, &[first, second]).await.expect("destroy"),
        2
    );
    assert!(
        vault
            .load_keys(&pool, &[first, second])
            .await
            .expect("load")
            .is_empty()
    );
    assert_eq!(pii::destroy_keys(&pool, &[first]).await.expect("again"), 0);
}

#[test]
fn without_a_master_key_only_development_mode_starts_and_a_bad_key_never_does() {
    let none = PiiConfig { pii_master_key: None };
    assert!(matches!(
        Vault::from_config(&none, false),
        Err(PiiConfigError::NoKey)
    ));
    assert!(Vault::from_config(&none, true).is_ok());
    let bad = PiiConfig {
        pii_master_key: Some("c2hvcnQ=".to_owned()),
    };
    assert!(matches!(
        Vault::from_config(&bad, true),
        Err(PiiConfigError::BadKey(_))
    ));
    let good = PiiConfig {
        pii_master_key: Some(base64::engine::general_purpose::STANDARD.encode([3u8; 32])),
    };
    assert!(Vault::from_config(&good, false).is_ok());
}

#[test]
fn the_development_key_is_not_the_configured_one() {
    let subject = Uuid::now_v7();
    let development = Vault::from_config(&PiiConfig { pii_master_key: None }, true).expect("dev");
    let (_, wrapped) = development.new_key(subject).expect("key");
    assert!(development.unwrap_key(subject, &wrapped.wrapped).is_ok());
    assert!(matches!(
        vault().unwrap_key(subject, &wrapped.wrapped),
        Err(PiiError::Tampered)
    ));
}

#[test]
fn the_master_key_never_shows_in_debug_output() {
    let key = base64::engine::general_purpose::STANDARD.encode([5u8; 32]);
    let config = PiiConfig {
        pii_master_key: Some(key.clone()),
    };
    let printed = format!("{config:?}");
    assert!(
        !printed.contains(&key) && printed.contains("redacted"),
        "{printed}"
    );
}
