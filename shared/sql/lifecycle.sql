-- Release scheduling and shipments.

-- name: release_due
-- Due orders, highest priority first; SKIP LOCKED lets any number of workers run this
-- and each order is released by exactly one of them. $3: aging cutoff (orders due
-- before it jump to the front), or NULL.
WITH due AS (
    SELECT order_id
    FROM orders
    WHERE state = 'scheduled' AND release_at <= $1
    ORDER BY (release_at <= $3) IS TRUE DESC, priority DESC, release_at, order_id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE orders o
SET state = 'released', released_at = $1, updated_at = $1, version = o.version + 1
FROM due
WHERE o.order_id = due.order_id
RETURNING o.order_id, o.entity_id, o.reference, o.source_id, o.version, o.seq, o.priority, o.status,
          o.document, o.release_at, o.released_at;

-- name: next_release_at
SELECT min(release_at) FROM orders WHERE state = 'scheduled';

-- name: shipment_order_lock
SELECT order_id, entity_id, reference, state, status, flag_partial, cod_amount, partial_shipments,
       version, priority, source_id, document, release_at, released_at
FROM orders WHERE entity_id = $1 AND reference = $2
FOR UPDATE;

-- name: shipment_lines_of_order
SELECT line_no, sku, qty, qty_shipped FROM order_lines WHERE order_id = $1 ORDER BY line_no;

-- name: shipment_find
SELECT shipment_id, external_id, partial, shipped_at FROM shipments WHERE order_id = $1 AND external_id = $2;

-- name: shipment_insert
INSERT INTO shipments (order_id, external_id, partial, shipped_at)
VALUES ($1, $2, $3, $4)
RETURNING shipment_id;

-- name: shipment_insert_lines
INSERT INTO shipment_lines (shipment_id, line_no, qty)
SELECT $1, line_no, qty FROM unnest($2::integer[], $3::integer[]) AS t (line_no, qty);

-- name: shipment_apply_lines
UPDATE order_lines l SET qty_shipped = l.qty_shipped + t.qty
FROM unnest($2::integer[], $3::integer[]) AS t (line_no, qty)
WHERE l.order_id = $1 AND l.line_no = t.line_no;

-- name: shipment_update_order
-- A shipment is a change of the order: a new version.
UPDATE orders
SET state = $2, partial_shipments = partial_shipments + $3, shipped_at = $4, updated_at = $5,
    version = version + 1
WHERE order_id = $1
RETURNING version, seq;

-- name: shipments_of_order
SELECT s.shipment_id, s.external_id, s.partial, s.shipped_at,
       coalesce(json_agg(json_build_object('line_no', l.line_no, 'qty', l.qty) ORDER BY l.line_no)
                FILTER (WHERE l.line_no IS NOT NULL), '[]') AS lines
FROM shipments s LEFT JOIN shipment_lines l USING (shipment_id)
WHERE s.order_id = $1
GROUP BY s.shipment_id ORDER BY s.shipment_id;
