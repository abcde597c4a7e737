-- The tamper-evident log (API.md, "Tamper-evident log"): a SHA-256 chain over the
-- events in position order. The hashes live beside `events` rather than in it, so the
-- append-only rows are never rewritten, events from before this migration get theirs
-- without an UPDATE, and a verifier reads both with one merge join on the positions.

CREATE TABLE event_hashes (
    -- The event's position in `events`. No foreign key: it would cost an index probe
    -- per event under the head lock, and the verifier checks the correspondence anyway.
    position bigint PRIMARY KEY CHECK (position > 0),
    -- SHA-256(hash at position - 1, or 32 zero bytes at position 1 || RFC 8785 JSON of
    -- the event's envelope), computed while the append holds the head lock.
    hash     bytea  NOT NULL CHECK (length(hash) = 32)
);

-- As append-only as the events it covers.
CREATE FUNCTION event_hashes_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the event_hashes table is append-only: % refused', TG_OP
        USING ERRCODE = 'restrict_violation';
END;
$$;

CREATE TRIGGER event_hashes_no_update_or_delete
    BEFORE UPDATE OR DELETE ON event_hashes
    FOR EACH ROW EXECUTE FUNCTION event_hashes_refuse_change();

CREATE TRIGGER event_hashes_no_truncate
    BEFORE TRUNCATE ON event_hashes
    FOR EACH STATEMENT EXECUTE FUNCTION event_hashes_refuse_change();

-- The chain's head on the row every append already locks and updates: the append reads
-- the hash it chains from, and writes the new one, without another round trip.
ALTER TABLE event_store_head
    -- The last position whose hash is stored. It trails `position` only after events
    -- were written around the append (before this migration, or COPYed by a tool);
    -- the next append, or the command API's start, chains them.
    ADD COLUMN hashed_position bigint NOT NULL DEFAULT 0 CHECK (hashed_position >= 0),
    -- The hash at `hashed_position`; NULL while it is 0 (the genesis, 32 zero bytes).
    ADD COLUMN hash bytea CHECK (hash IS NULL OR length(hash) = 32);

-- The query API verifies the chain as its read-only role.
GRANT SELECT ON event_hashes TO eventledger_reader;
