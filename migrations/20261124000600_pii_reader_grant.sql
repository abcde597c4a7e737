-- The query API opens sealed owners (API.md, "Security"): it reads each account's
-- wrapped data key and unwraps it with the master key from its own configuration. It
-- may read the keys, never write or delete them: destroying a key is erasure, which
-- only the command API does, in the transaction that records `PersonalDataErased`.
GRANT SELECT ON pii_keys TO eventledger_reader;

-- What the owner columns of the account view hold since owners are sealed: the
-- ciphertexts of the `AccountOpened` event, copied as they are, so that no read model
-- (nor a dump of one) holds plaintext. `projector rebuild` copies these comments into
-- its fresh tables (`LIKE ... INCLUDING ALL`).
COMMENT ON COLUMN read_model.accounts.owner_name IS
    'The owner''s name sealed under the account''s data key (pii:v1:...); NULL once erased.';
COMMENT ON COLUMN read_model.accounts.owner_email IS
    'The owner''s email sealed under the account''s data key (pii:v1:...); NULL once erased.';
