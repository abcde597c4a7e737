-- The live-applier lease of each projection (projector/src/lease.rs): with several
-- projector instances, exactly one applies a projection live at a time and the others
-- stand by. The lease lives on the checkpoint row because every live batch already locks
-- that row (SELECT ... FOR UPDATE): checking the lease there costs no extra statement, and
-- a take-over (an UPDATE of the same row) waits for the batch in flight to commit, so two
-- instances' batches can never interleave.
ALTER TABLE read_model.projection_checkpoints
    -- The instance that holds the lease (`PROJECTOR_INSTANCE_ID`), NULL when released.
    ADD COLUMN lease_holder     text,
    -- Raised by every change of holder: a batch commits only if the holder and epoch it
    -- acquired are still the row's, so a holder that was frozen or cut off and comes back
    -- after another took over is refused (a fencing token).
    ADD COLUMN lease_epoch      bigint NOT NULL DEFAULT 0,
    -- Until when the holder's last renewal keeps it; the database's clock, so instances'
    -- clocks never need to agree.
    ADD COLUMN lease_expires_at timestamptz;
