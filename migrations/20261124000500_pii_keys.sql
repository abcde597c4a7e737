-- Per-subject data keys for personal data (API.md, "Security"). Owner names and emails
-- are stored in events only as ciphertext under the account's own key; that key is kept
-- here wrapped (encrypted) by the master key from PII_MASTER_KEY, which never touches
-- the database. Erasure deletes the row: every copy of the ciphertext, in events, in
-- JetStream or in a read model, becomes unreadable at once, while the events keep their
-- place in the log.
CREATE TABLE pii_keys (
    -- The data subject: the account whose owner the key protects.
    subject_id  uuid        PRIMARY KEY,
    -- 12-byte AES-GCM nonce followed by the AES-256 data key encrypted under the master
    -- key, with the subject id as associated data so a key cannot be moved to another row.
    wrapped_key bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
