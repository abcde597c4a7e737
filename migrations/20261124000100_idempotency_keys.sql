-- Idempotency keys of the command API (API.md, "Idempotency-Key"). A row is written in
-- the same transaction as the events its request appended, so a crash can never leave
-- events without their key (a retry would write them twice) or a key without its events
-- (a retry would be told of a success that never happened).
CREATE TABLE idempotency_keys (
    -- Who sent the key: keys are scoped to the caller, so two callers never collide.
    actor           text        NOT NULL CHECK (length(actor) BETWEEN 1 AND 255),
    -- The client's `Idempotency-Key`, at most 255 printable ASCII characters (API.md).
    idempotency_key text        NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    -- SHA-256 of the method, path and canonical JSON body of the first request: a retry
    -- with another body under the same key is refused (422) rather than replayed.
    request_hash    bytea       NOT NULL CHECK (length(request_hash) = 32),
    -- The first answer's HTTP status, replayed as it was.
    response_status smallint    NOT NULL CHECK (response_status BETWEEN 200 AND 299),
    -- The first answer's JSON body, replayed byte for byte in meaning.
    response_body   jsonb       NOT NULL,
    -- The first answer's headers that describe the result (`ETag`, `Location`), as a
    -- JSON object of name to value; per-request headers such as the correlation id are not kept.
    response_headers jsonb      NOT NULL,
    -- The position of the last event the request appended, to tie the key to the log.
    position        bigint      NOT NULL CHECK (position > 0),
    -- When the key was stored: keys are kept at least 24 hours, then purged by age.
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (actor, idempotency_key)
);

-- The purge deletes by age, oldest first, without scanning the table.
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
