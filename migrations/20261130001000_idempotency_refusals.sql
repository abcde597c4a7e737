-- Idempotency keys also keep the domain's refusals (API.md, "Idempotency-Key"): a retry
-- of a command the ledger refused (422 insufficient funds, 404 unknown account) must get
-- the same answer, not run again once the state has changed. A refusal appends no
-- event, so its row has no position; every success still has one.
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_response_status_check;
ALTER TABLE idempotency_keys ADD CONSTRAINT idempotency_keys_response_status_check
    CHECK (response_status BETWEEN 200 AND 299 OR response_status IN (404, 422));
ALTER TABLE idempotency_keys ALTER COLUMN position DROP NOT NULL;
ALTER TABLE idempotency_keys ADD CONSTRAINT idempotency_keys_position_of_successes
    CHECK ((position IS NOT NULL) = (response_status BETWEEN 200 AND 299));
