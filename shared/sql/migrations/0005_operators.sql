-- Dashboard: operators and their sessions, an audit trail of what they did, rejected
-- payloads kept so an operator can retry them, and the indexes the dashboard reads by.

CREATE TABLE operators (
    name           text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_.@-]{1,64}$'),
    -- scrypt$N$r$p$salt$key (base64): the parameters travel with the hash so they can grow
    password_hash  text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    disabled_at    timestamptz
);

CREATE TABLE operator_sessions (
    -- SHA-256 of the cookie value: a copy of this table opens no session
    token_hash    bytea PRIMARY KEY,
    operator      text NOT NULL REFERENCES operators (name) ON DELETE CASCADE,
    csrf_token    text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL
);
CREATE INDEX operator_sessions_expiry ON operator_sessions (expires_at);

-- Every action taken from the dashboard, kept: who paused ingest, who retried what.
CREATE TABLE operator_actions (
    action_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    operator   text NOT NULL,
    action     text NOT NULL,
    target     text NOT NULL DEFAULT '',
    detail     jsonb NOT NULL DEFAULT '{}'
);

-- A rejected payload's envelope (header JSON, newline, raw body, as the queue held it),
-- written by the worker in the transaction of its rejected receipt. envelope is NULL for
-- rejections from before this table, which can be discarded but not retried.
CREATE TABLE failed_payloads (
    receipt_id   text PRIMARY KEY,
    entity_id    text NOT NULL,
    envelope     bytea,
    kept_at      timestamptz NOT NULL DEFAULT now(),
    resolution   text CHECK (resolution IN ('retried', 'discarded')),
    resolved_at  timestamptz,
    resolved_by  text,
    -- the receipt the retried payload got
    retried_as   text,
    CHECK ((resolution IS NULL) = (resolved_at IS NULL))
);

-- ingest lag (stored_at - received_at) over the newest receipts, and /metrics' lag histogram
CREATE INDEX receipts_stored_at ON receipts (stored_at);
-- the failures page: rejected receipts, newest first
CREATE INDEX receipts_rejected ON receipts (stored_at DESC) WHERE state = 'rejected';

-- A failed webhook delivery an operator discarded: off the failures list (until it is sent
-- again and fails again), kept in history. webhook_deliveries itself stays the sender's.
CREATE TABLE delivery_discards (
    delivery_id   bigint PRIMARY KEY REFERENCES webhook_deliveries (delivery_id) ON DELETE CASCADE,
    discarded_at  timestamptz NOT NULL DEFAULT now(),
    discarded_by  text NOT NULL
);
-- the failures page: deliveries that gave up, newest first
CREATE INDEX webhook_deliveries_failed ON webhook_deliveries (delivery_id DESC) WHERE state = 'failed';
-- an order's page: the deliveries of its events
CREATE INDEX webhook_deliveries_event ON webhook_deliveries (event_id);
-- delivered per second for the overview and /metrics, read back over the last seconds only
CREATE INDEX webhook_deliveries_delivered ON webhook_deliveries (delivered_at) WHERE state = 'delivered';
