-- The event store: the ledger's only record (ARCHITECTURE.md). Everything else,
-- JetStream included, can be rebuilt from these tables.

-- One row that hands out global positions. Every append locks and advances it inside
-- its own transaction, so appends are serialised: a later position can never commit
-- before an earlier one, and a rolled-back append gives its positions back. Readers can
-- therefore treat "position N+1 follows N" as an invariant (guarantee 2).
CREATE TABLE event_store_head (
    -- Always true: the primary key and check make this table hold exactly one row.
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    -- The position of the last committed event; 0 for an empty store.
    position  bigint  NOT NULL CHECK (position >= 0)
);
INSERT INTO event_store_head (singleton, position) VALUES (true, 0);

-- One row per event, in one global order. The audit record: rows are never changed.
CREATE TABLE events (
    -- Global, gap-free, increasing in commit order; handed out by event_store_head.
    position       bigint      PRIMARY KEY CHECK (position > 0),
    -- Chosen by the writer; unique so that a retried append can never store an event twice.
    event_id       uuid        NOT NULL,
    -- `account-<uuid>` or `transfer-<uuid>` (API.md).
    stream_id      text        NOT NULL CHECK (length(stream_id) BETWEEN 1 AND 200),
    -- 1 for a stream's first event, then contiguous; with the stream id, unique.
    stream_version bigint      NOT NULL CHECK (stream_version > 0),
    -- The domain event's name, for example `FundsDeposited`.
    event_type     text        NOT NULL CHECK (length(event_type) BETWEEN 1 AND 100),
    -- The shape of `data`; older shapes are upcast when read.
    schema_version integer     NOT NULL CHECK (schema_version > 0),
    -- The event's own fields.
    data           jsonb       NOT NULL,
    -- actor, correlation_id, causation_id, command, idempotency_key, trace.
    metadata       jsonb       NOT NULL,
    -- Taken once per append while it holds the head lock, so it never decreases
    -- along positions (clock steps aside).
    recorded_at    timestamptz NOT NULL,
    CONSTRAINT events_event_id_unique UNIQUE (event_id),
    CONSTRAINT events_stream_version_unique UNIQUE (stream_id, stream_version)
);

-- One index per audit-log filter (API.md `GET /audit/events`), each ending in position
-- so that a filtered page is read in position order straight from the index.
CREATE INDEX events_stream_position ON events (stream_id, position);
CREATE INDEX events_type_position ON events (event_type, position);
CREATE INDEX events_actor_position ON events ((metadata ->> 'actor'), position);
CREATE INDEX events_correlation_position ON events ((metadata ->> 'correlation_id'), position);
CREATE INDEX events_recorded_at ON events (recorded_at, position);

-- The log is append-only: no role, the owner included, may change or remove an event.
CREATE FUNCTION events_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the events table is append-only: % refused', TG_OP
        USING ERRCODE = 'restrict_violation';
END;
$$;

CREATE TRIGGER events_no_update_or_delete
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_refuse_change();

CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_change();

-- How far each relay has published the log to JetStream. Kept here, not in NATS,
-- because JetStream may lose its tail on power failure (ARCHITECTURE.md).
CREATE TABLE relay_checkpoints (
    -- The relay's name; one per target stream.
    relay      text        PRIMARY KEY,
    -- The last position whose publish JetStream acknowledged.
    position   bigint      NOT NULL CHECK (position >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);
