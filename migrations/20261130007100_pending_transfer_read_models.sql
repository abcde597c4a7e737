-- Two-phase transfers in the read models (API.md, "Pending transfers").
--
-- Accounts keep what pending transfers reserved on either side; the available balance
-- is `balance - pending_debits`, computed when read. Existing rows had no pending
-- transfers, hence the defaults.
ALTER TABLE read_model.accounts
    ADD COLUMN pending_debits  bigint NOT NULL DEFAULT 0 CHECK (pending_debits >= 0),
    ADD COLUMN pending_credits bigint NOT NULL DEFAULT 0 CHECK (pending_credits >= 0);

-- A transfer row now changes once after it is written: a pending transfer is posted,
-- voided or expired. Every transfer executed in one step so far is `posted` in full.
ALTER TABLE read_model.transfers
    ADD COLUMN status        text        NOT NULL DEFAULT 'posted'
        CHECK (status IN ('pending', 'posted', 'voided', 'expired')),
    ADD COLUMN posted_amount bigint      CHECK (posted_amount > 0),
    ADD COLUMN expires_at    timestamptz;
UPDATE read_model.transfers SET posted_amount = amount WHERE posted_amount IS NULL;

-- `GET /transfers?account_id=&status=` pages newest first by the position of the
-- transfer's first event, on either side of it.
CREATE INDEX transfers_from_position ON read_model.transfers (from_account_id, position);
CREATE INDEX transfers_to_position ON read_model.transfers (to_account_id, position);
CREATE INDEX transfers_status_position ON read_model.transfers (status, position);
CREATE INDEX transfers_position ON read_model.transfers (position);
