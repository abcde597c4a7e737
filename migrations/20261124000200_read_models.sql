-- The read models: owned and written by the projector only, read by the query API.
-- Every row here is derived from the events table and can be rebuilt from it
-- (`projector rebuild`), which replays into fresh tables and swaps them in by renaming
-- within this schema, so readers always address `read_model.<table>`.
CREATE SCHEMA read_model;

-- Where each named projection stands, and whether it is healthy.
CREATE TABLE read_model.projection_checkpoints (
    -- `accounts`, `account_transactions`, `transfers`.
    projection text        PRIMARY KEY,
    -- The last event position applied; rows and this change in one transaction.
    position   bigint      NOT NULL CHECK (position >= 0),
    -- `live`, `rebuilding` or `stopped` (an event could not be applied; see `error`).
    status     text        NOT NULL DEFAULT 'live' CHECK (status IN ('live', 'rebuilding', 'stopped')),
    -- Why the projection stopped, for `GET /projections` and logs.
    error      text,
    -- When `position` last moved: the lag in seconds is measured from here.
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- The account view of API.md `GET /accounts/{id}`.
CREATE TABLE read_model.accounts (
    account_id      uuid        PRIMARY KEY,
    -- NULL once personal data is erased.
    owner_name      text,
    owner_email     text,
    currency        text        NOT NULL,
    -- Minor units; the domain keeps it within bigint.
    balance         bigint      NOT NULL,
    overdraft_limit bigint      NOT NULL,
    status          text        NOT NULL CHECK (status IN ('open', 'frozen', 'closed')),
    -- The account stream's version after the last applied event.
    version         bigint      NOT NULL,
    opened_at       timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    -- The position of the last event applied to this row.
    last_position   bigint      NOT NULL
);
-- `GET /accounts?status=&currency=` pages by account id.
CREATE INDEX accounts_status_currency ON read_model.accounts (status, currency, account_id);
CREATE INDEX accounts_currency ON read_model.accounts (currency, account_id);

-- The statement of API.md `GET /accounts/{id}/transactions`, one row per money movement.
CREATE TABLE read_model.account_transactions (
    account_id              uuid        NOT NULL,
    -- The event's position: unique per account, and the newest-first cursor.
    position                bigint      NOT NULL,
    kind                    text        NOT NULL CHECK (kind IN ('deposit', 'withdrawal', 'transfer_in', 'transfer_out')),
    amount                  bigint      NOT NULL CHECK (amount > 0),
    balance_after           bigint      NOT NULL,
    reference               text,
    transfer_id             uuid,
    counterparty_account_id uuid,
    recorded_at             timestamptz NOT NULL,
    PRIMARY KEY (account_id, position)
);

-- The transfer view of API.md `GET /transfers/{id}`.
CREATE TABLE read_model.transfers (
    transfer_id     uuid        PRIMARY KEY,
    from_account_id uuid        NOT NULL,
    to_account_id   uuid        NOT NULL,
    amount          bigint      NOT NULL CHECK (amount > 0),
    currency        text        NOT NULL,
    reference       text,
    recorded_at     timestamptz NOT NULL,
    position        bigint      NOT NULL
);
