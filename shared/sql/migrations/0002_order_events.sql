-- The outbox: one row per order event, written in the same transaction as the change.
-- Webhook fan-out and the dashboard read it; nothing else writes it.

CREATE TABLE order_events (
    event_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    entity_id    text NOT NULL REFERENCES entities (entity_id),
    order_id     bigint REFERENCES orders (order_id) ON DELETE SET NULL,
    reference    text NOT NULL,
    source_id    text NOT NULL,
    type         text NOT NULL CHECK (type IN ('order.created', 'order.updated', 'order.released',
                     'order.held', 'order.cancelled', 'order.shipped', 'order.rejected')),
    -- the order's version the event describes (0 for a rejected payload of an unknown order)
    version      integer NOT NULL,
    priority     integer NOT NULL DEFAULT 0,
    -- {order as stored..., source_id, version} or, for order.rejected, the receipt
    data         jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- set once the event has been turned into webhook deliveries
    dispatched_at timestamptz
);
CREATE INDEX order_events_undispatched ON order_events (priority DESC, event_id) WHERE dispatched_at IS NULL;
CREATE INDEX order_events_order ON order_events (order_id, event_id);
