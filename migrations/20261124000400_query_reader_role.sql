-- The query API's own PostgreSQL role: it may read the event log and the read models,
-- and nothing else. A bug or an injected statement in the query API can then never
-- change the record or a read model (least privilege, issue 5).
--
-- Roles belong to the whole cluster, not to one database, and the test suite migrates
-- many databases in parallel: the role is created once, by whoever gets there first,
-- and everyone else's duplicate is ignored. LOGIN without a password: under `trust`
-- (development, CI) the query API connects as it with no secret; under password
-- authentication an operator sets one (ALTER ROLE ... PASSWORD) and passes it in the
-- query API's `--reader-database-url`, and until then nobody can log in as it.
DO $$
BEGIN
    CREATE ROLE eventledger_reader LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT;
EXCEPTION
    -- `duplicate_object`: it exists already; `unique_violation`: another database's
    -- migration created it in the same instant.
    WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;

-- Privileges are per database, so every database grants them again.
GRANT USAGE ON SCHEMA public, read_model TO eventledger_reader;

-- The log (audit, history, live tail) and its head (the projections' lag).
GRANT SELECT ON events, event_store_head TO eventledger_reader;

-- Every read model there is now ...
GRANT SELECT ON ALL TABLES IN SCHEMA read_model TO eventledger_reader;

-- ... and every one the owner creates later: `projector rebuild` builds fresh tables and
-- renames them into place, and those must be readable the moment they are swapped in.
ALTER DEFAULT PRIVILEGES IN SCHEMA read_model GRANT SELECT ON TABLES TO eventledger_reader;
