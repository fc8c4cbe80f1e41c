-- Lifecycle: shipments of lines, and what has been shipped so far.

ALTER TABLE order_lines ADD COLUMN qty_shipped integer NOT NULL DEFAULT 0;
ALTER TABLE order_lines ADD CONSTRAINT order_lines_not_overshipped CHECK (qty_shipped <= qty);
-- partial shipments made so far: flag_partial 2 allows one, then behaves as 0
ALTER TABLE orders ADD COLUMN partial_shipments integer NOT NULL DEFAULT 0;
ALTER TABLE orders ADD COLUMN shipped_at timestamptz;

CREATE TABLE shipments (
    shipment_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id     bigint NOT NULL REFERENCES orders (order_id) ON DELETE CASCADE,
    -- the client's own id for the shipment, so a retried POST is not a second shipment
    external_id  text,
    partial      boolean NOT NULL,
    shipped_at   timestamptz NOT NULL,
    UNIQUE (order_id, external_id)
);

CREATE TABLE shipment_lines (
    shipment_id  bigint NOT NULL REFERENCES shipments (shipment_id) ON DELETE CASCADE,
    line_no      integer NOT NULL,
    qty          integer NOT NULL CHECK (qty > 0),
    PRIMARY KEY (shipment_id, line_no)
);
