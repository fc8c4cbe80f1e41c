-- Webhooks: subscriptions per entity, one delivery per (event, matching subscription),
-- and a log row per attempt. Fed from the order_events outbox.

CREATE TABLE webhook_subscriptions (
    subscription_id  text PRIMARY KEY,
    entity_id        text NOT NULL REFERENCES entities (entity_id),
    url              text NOT NULL,
    description      text NOT NULL DEFAULT '',
    -- NULL: every source / every event type
    source_ids       text[],
    event_types      text[],
    -- typed conditions on the order an event carries
    cod_only         boolean NOT NULL DEFAULT false,
    no_partial       boolean NOT NULL DEFAULT false,
    order_type       smallint CHECK (order_type IN (0, 1)),
    -- sends in flight at once, across all workers
    max_concurrency  integer NOT NULL DEFAULT 4 CHECK (max_concurrency BETWEEN 1 AND 100),
    -- whsec_…: kept readable because every send signs with it; shown to the client once
    secret           text NOT NULL,
    -- during a rotation the old secret signs too, until previous_secret_until
    previous_secret        text,
    previous_secret_until  timestamptz,
    state            text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'disabled')),
    disabled_at      timestamptz,
    disabled_reason  text,
    -- first failed attempt since the last success; five days of that disables
    failing_since    timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT webhook_subscriptions_event_types_known CHECK (event_types <@ ARRAY[
        'order.created', 'order.updated', 'order.released', 'order.held', 'order.cancelled',
        'order.shipped', 'order.rejected']::text[])
);
CREATE INDEX webhook_subscriptions_entity ON webhook_subscriptions (entity_id);

CREATE TABLE webhook_deliveries (
    delivery_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- the webhook-id header: fixed at fan-out, the same on every retry and replay
    webhook_id       text NOT NULL UNIQUE,
    subscription_id  text NOT NULL REFERENCES webhook_subscriptions (subscription_id),
    event_id         bigint NOT NULL REFERENCES order_events (event_id),
    entity_id        text NOT NULL,
    event_type       text NOT NULL,
    reference        text NOT NULL,
    -- the order's priority: higher is sent first
    priority         integer NOT NULL DEFAULT 0,
    -- pending: waits for next_attempt_at; sending: claimed until lease_until;
    -- delivered: a 2xx came back; failed: out of attempts, 410, or the subscription was off
    state            text NOT NULL CHECK (state IN ('pending', 'sending', 'delivered', 'failed')),
    -- index into the retry schedule of the next attempt (a replay starts again at 0)
    step             integer NOT NULL DEFAULT 0,
    -- attempts ever made, replays included; numbers the rows of webhook_attempts
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz,
    lease_until      timestamptz,
    created_at       timestamptz NOT NULL,
    last_attempt_at  timestamptz,
    last_status      integer,
    last_error       text,
    delivered_at     timestamptz,
    UNIQUE (subscription_id, event_id)
);
-- the sender's queue: by priority while a backlog is due, by time while most wait for a retry
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (priority DESC, next_attempt_at, delivery_id)
    WHERE state = 'pending';
CREATE INDEX webhook_deliveries_next ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
-- in-flight counts per subscription, and leases of stopped workers
CREATE INDEX webhook_deliveries_sending ON webhook_deliveries (subscription_id, lease_until)
    WHERE state = 'sending';
CREATE INDEX webhook_deliveries_subscription ON webhook_deliveries (subscription_id, created_at);

CREATE TABLE webhook_attempts (
    delivery_id  bigint NOT NULL REFERENCES webhook_deliveries (delivery_id) ON DELETE CASCADE,
    attempt      integer NOT NULL,
    at           timestamptz NOT NULL,
    -- NULL when no HTTP answer came (timeout, refused address, connection error)
    status       integer,
    latency_ms   integer,
    -- the first 1 KiB of the answer's body
    response     text,
    error        text,
    PRIMARY KEY (delivery_id, attempt)
);
