-- When each pending transfer with a timeout expires, for the command API's expiry
-- worker (command-api/src/expiry.rs). Kept in PostgreSQL, beside the events and in
-- the same transaction as them, so a deadline survives restarts, is shared by every
-- command-api instance, and can never disagree with the log: a trigger on `events`
-- inserts the row with the `TransferPending` that has an `expires_at` and deletes it with
-- the `TransferPosted` or `TransferVoided` that ends the transfer.
--
-- Derived from the log like a read model, but written by the append itself: `projector
-- rebuild` does not touch it, and erasure (which destroys data keys only) neither.
CREATE TABLE pending_transfer_deadlines (
    transfer_id uuid        PRIMARY KEY,
    -- `TransferPending.data.expires_at` (schema version 1; a later version must keep the
    -- field, or this trigger must learn the new shape).
    expires_at  timestamptz NOT NULL
);
-- The sweep reads the earliest due deadlines first.
CREATE INDEX pending_transfer_deadlines_due ON pending_transfer_deadlines (expires_at, transfer_id);

CREATE FUNCTION pending_transfer_deadlines_track() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.event_type = 'TransferPending' THEN
        IF jsonb_typeof(NEW.data -> 'expires_at') = 'string' THEN
            INSERT INTO pending_transfer_deadlines (transfer_id, expires_at)
            VALUES ((NEW.data ->> 'transfer_id')::uuid, (NEW.data ->> 'expires_at')::timestamptz)
            ON CONFLICT (transfer_id) DO NOTHING;
            -- Wakes the sweeper (command-api/src/expiry.rs) if this one is earlier than
            -- its planned wake; delivered at commit, as the row becomes visible.
            PERFORM pg_notify('eventledger_deadlines', NEW.data ->> 'expires_at');
        END IF;
    ELSE
        DELETE FROM pending_transfer_deadlines
        WHERE transfer_id = (NEW.data ->> 'transfer_id')::uuid;
    END IF;
    RETURN NULL;
END;
$$;

-- The WHEN clause keeps every other append free of the function call.
CREATE TRIGGER events_pending_transfer_deadlines
    AFTER INSERT ON events
    FOR EACH ROW
    WHEN (NEW.event_type IN ('TransferPending', 'TransferPosted', 'TransferVoided'))
    EXECUTE FUNCTION pending_transfer_deadlines_track();
