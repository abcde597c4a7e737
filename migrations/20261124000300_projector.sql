-- The projector's own additions to the read-model schema of 20261124000200. The tables
-- and columns there are the query API's contract and stay as they are.

-- One checkpoint row per projection the projector runs, present from the start: the
-- live applier locks this row (SELECT ... FOR UPDATE) in every batch transaction, and a
-- rebuild locks it for its swap, so the two never write one projection at once. Seeding
-- the rows here means that lock always has a row to take, and `GET /projections` lists
-- every projection (at position 0) before the projector first runs.
INSERT INTO read_model.projection_checkpoints (projection, position, status)
VALUES ('accounts', 0, 'live'),
       ('account_transactions', 0, 'live'),
       ('transfers', 0, 'live')
ON CONFLICT (projection) DO NOTHING;
