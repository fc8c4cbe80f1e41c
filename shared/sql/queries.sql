-- Named queries, loaded once by shared.db.load_queries. One block per `-- name:`.

-- name: entity_create
INSERT INTO entities (entity_id, name, timezone) VALUES ($1, $2, $3)
RETURNING entity_id;

-- name: entity_get
SELECT entity_id, name, timezone, created_at FROM entities WHERE entity_id = $1;

-- name: key_create
INSERT INTO access_keys (key_id, entity_id, key_hash, rights, source_ids)
VALUES ($1, $2, $3, $4, $5)
RETURNING key_id;

-- name: key_list
SELECT key_id, entity_id, rights, source_ids, created_at, revoked_at
FROM access_keys
WHERE $1::text IS NULL OR entity_id = $1
ORDER BY created_at, key_id;

-- name: key_revoke
UPDATE access_keys SET revoked_at = now()
WHERE key_id = $1 AND revoked_at IS NULL
RETURNING key_id;

-- name: key_lookup
SELECT k.key_id, k.entity_id, k.key_hash, k.rights, k.source_ids, k.revoked_at, e.timezone
FROM access_keys k JOIN entities e USING (entity_id)
WHERE k.key_id = $1;

-- name: receipt_get
SELECT receipt_id, state, code, reason, reference, source_id, received_at, stored_at, warnings
FROM receipts
WHERE receipt_id = $1 AND entity_id = $2;

-- name: order_get
SELECT order_id, reference, source_id, state, status, type, priority, release_at, released_at,
       stored_at, updated_at, version, flag_partial, cod_amount, currency, shipping_method,
       customer_id, options, created_at, delivery_at
FROM orders
WHERE entity_id = $1 AND reference = $2;

-- name: order_lines
SELECT line_no, sku, qty, qty_shipped, description, weight, reference, unit_price, is_kit,
       allocation_type, cost, custom_options, packing
FROM order_lines WHERE order_id = $1 ORDER BY line_no;

-- name: order_addresses
SELECT kind, firstname, lastname, company, street, housenumber, housenumber_ext, postcode,
       city, region, country, phone, email, method
FROM addresses WHERE order_id = $1;

-- name: order_versions
SELECT version, seq, at, receipt_id, changes
FROM order_versions WHERE order_id = $1 ORDER BY version;

-- name: batch_lock_references
-- Transaction-scoped advisory locks on every (entity, reference) of a batch, taken in sorted
-- order; they also cover references that have no row yet.
SELECT count(pg_advisory_xact_lock(hashtextextended(t.entity_id || chr(31) || t.reference, 0)))
FROM (SELECT entity_id, reference FROM unnest($1::text[], $2::text[]) AS u (entity_id, reference)
      ORDER BY entity_id, reference) AS t;

-- name: batch_lock_orders_known_products
-- batch_lock_orders and batch_known_products in one round trip: the orders a batch touches,
-- locked in one order (entity, reference) so batches never deadlock (kind 'o'), then which of
-- its SKUs exist (kind 'p', entity_id and sku only).
WITH locked AS MATERIALIZED (
    SELECT o.order_id, o.entity_id, o.reference, o.source_id, o.seq, o.state, o.status, o.version,
           o.content_hash, o.document, o.release_at, o.released_at, o.stored_at
    FROM orders o
    JOIN unnest($1::text[], $2::text[]) AS t (entity_id, reference)
      ON o.entity_id = t.entity_id AND o.reference = t.reference
    ORDER BY o.entity_id, o.reference
    FOR UPDATE OF o
)
SELECT 'o' AS kind, order_id, entity_id, reference, source_id, seq, state, status, version,
       content_hash, document, release_at, released_at, stored_at, NULL AS sku
FROM locked
UNION ALL
SELECT 'p', NULL, p.entity_id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, p.sku
FROM products p
JOIN unnest($3::text[], $4::text[]) AS t (entity_id, sku)
  ON p.entity_id = t.entity_id AND p.sku = t.sku;

-- name: batch_create_products
INSERT INTO products (entity_id, sku, description, weight, created_by)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::numeric[], $5::text[])
ON CONFLICT (entity_id, sku) DO NOTHING;

-- name: batch_bump_seq
-- An identical repeat changes nothing but the guard, so an older payload still loses.
UPDATE orders o SET seq = t.seq
FROM unnest($1::bigint[], $2::bigint[]) AS t (order_id, seq)
WHERE o.order_id = t.order_id AND o.seq < t.seq;

-- name: batch_insert_versions
-- JSON travels as text[] and is cast here: asyncpg would read a list of lists as a 2-D array.
INSERT INTO order_versions (order_id, version, seq, at, receipt_id, changes)
SELECT order_id, version, seq, at, receipt_id, changes::jsonb
FROM unnest($1::bigint[], $2::integer[], $3::bigint[], $4::timestamptz[], $5::text[], $6::text[])
  AS t (order_id, version, seq, at, receipt_id, changes);

-- name: batch_insert_receipts
-- A payload processed twice (its lease expired mid-batch) keeps its first outcome.
INSERT INTO receipts (receipt_id, entity_id, seq, reference, source_id, state, code, reason,
                      warnings, received_at, stored_at, order_id)
SELECT receipt_id, entity_id, seq, reference, source_id, state, code, reason,
       warnings::jsonb, received_at, stored_at, order_id
FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[],
            $7::integer[], $8::text[], $9::text[], $10::timestamptz[], $11::timestamptz[],
            $12::bigint[])
  AS t (receipt_id, entity_id, seq, reference, source_id, state, code, reason, warnings,
        received_at, stored_at, order_id)
ON CONFLICT (receipt_id) DO NOTHING
RETURNING receipt_id;

-- name: batch_insert_events
INSERT INTO order_events (entity_id, order_id, reference, source_id, type, version, priority, data, created_at)
SELECT entity_id, order_id, reference, source_id, type, version, priority, data::json, created_at
FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::integer[],
            $7::integer[], $8::text[], $9::timestamptz[])
  AS t (entity_id, order_id, reference, source_id, type, version, priority, data, created_at);

-- name: batch_clear_rewritten
-- Lines and addresses of stored orders that a batch rewrites, in one round trip.
WITH lines AS (DELETE FROM order_lines WHERE order_id = ANY($1::bigint[]))
DELETE FROM addresses WHERE order_id = ANY($2::bigint[]);

-- name: batch_store
-- Everything a batch writes after its locks, in one statement: the orders ($1, one per written
-- reference, numbered w by position), lines ($4), addresses ($5), versions ($6), receipts ($7)
-- and outbox rows ($8), as arrays of migration 0008's row types. The orders' documents ($2),
-- raw payloads ($3) and the outbox rows' data ($9) travel as one text each, the JSON texts
-- separated by U+001E (never raw in valid JSON; a stray one would make an extra, all-NULL row
-- that fails NOT NULL): one long text costs asyncpg far less than an array of them. $10 is now.
-- A receipt already stored (its payload processed twice) keeps its first outcome. Returns the
-- orders upserted: fewer than sent when another worker won a race (the caller rolls back).
WITH up AS (
    INSERT INTO orders AS o (
        entity_id, reference, source_id, seq, state, status, type, priority, flag_partial,
        cod_amount, currency, shipping_method, customer_id, options, created_at, delivery_at,
        release_at, released_at, stored_at, updated_at, version, content_hash, document, raw)
    SELECT t.entity_id, t.reference, t.source_id, t.seq, t.state, t.status, t.type, t.priority,
           t.flag_partial, t.cod_amount::numeric, t.currency, t.shipping_method, t.customer_id,
           t.options::jsonb, t.created_at, t.delivery_at, t.release_at, t.released_at,
           t.stored_at, $10::timestamptz, t.version, t.content_hash, t.document::json, t.raw::json
    FROM unnest($1::batch_order[], string_to_array($2::text, E'\x1e'),
                string_to_array($3::text, E'\x1e'))
      AS t (entity_id, reference, source_id, seq, state, status, type, priority, flag_partial,
            cod_amount, currency, shipping_method, customer_id, options, created_at, delivery_at,
            release_at, released_at, stored_at, version, content_hash, document, raw)
    ON CONFLICT (entity_id, reference) DO UPDATE SET
        seq = excluded.seq, state = excluded.state, status = excluded.status,
        priority = excluded.priority, type = excluded.type, flag_partial = excluded.flag_partial,
        cod_amount = excluded.cod_amount, currency = excluded.currency,
        shipping_method = excluded.shipping_method, customer_id = excluded.customer_id,
        options = excluded.options, created_at = excluded.created_at,
        delivery_at = excluded.delivery_at, release_at = excluded.release_at,
        released_at = excluded.released_at, updated_at = excluded.updated_at,
        version = excluded.version, content_hash = excluded.content_hash,
        document = excluded.document, raw = excluded.raw
    WHERE o.seq < excluded.seq
    RETURNING o.order_id, o.entity_id, o.reference
), ids AS (
    -- order ids by w (NULL where another worker won the race: nothing is written for it)
    SELECT array_agg(up.order_id ORDER BY k.ordinality) AS order_ids
    FROM unnest($1::batch_order[]) WITH ORDINALITY AS k
    LEFT JOIN up ON up.entity_id = k.entity_id AND up.reference = k.reference
), lines AS (
    INSERT INTO order_lines (order_id, line_no, sku, qty, description, weight, reference,
                             unit_price, is_kit, allocation_type, cost, custom_options, packing)
    SELECT (SELECT order_ids FROM ids)[l.w], l.line_no, l.sku, l.qty, l.description,
           l.weight::numeric, l.reference, l.unit_price::numeric, l.is_kit, l.allocation_type,
           l.cost::numeric, l.custom_options::jsonb, l.packing::jsonb
    FROM unnest($4::batch_line[]) AS l
    WHERE (SELECT order_ids FROM ids)[l.w] IS NOT NULL
), addresses AS (
    INSERT INTO addresses (order_id, kind, firstname, lastname, company, street, housenumber,
                           housenumber_ext, postcode, city, region, country, phone, email, method)
    SELECT (SELECT order_ids FROM ids)[a.w], a.kind, a.firstname, a.lastname, a.company, a.street,
           a.housenumber, a.housenumber_ext, a.postcode, a.city, a.region, a.country, a.phone,
           a.email, a.method
    FROM unnest($5::batch_address[]) AS a
    WHERE (SELECT order_ids FROM ids)[a.w] IS NOT NULL
), versions AS (
    INSERT INTO order_versions (order_id, version, seq, at, receipt_id, changes)
    SELECT (SELECT order_ids FROM ids)[v.w], v.version, v.seq, $10::timestamptz, v.receipt_id,
           v.changes::jsonb
    FROM unnest($6::batch_version[]) AS v
    WHERE (SELECT order_ids FROM ids)[v.w] IS NOT NULL
), r AS (
    INSERT INTO receipts (receipt_id, entity_id, seq, reference, source_id, state, code, reason,
                          warnings, received_at, stored_at, order_id)
    SELECT t.receipt_id, t.entity_id, t.seq, t.reference, t.source_id, t.state, t.code, t.reason,
           t.warnings::jsonb, t.received_at, $10::timestamptz,
           coalesce(t.order_id, (SELECT order_ids FROM ids)[t.w])
    FROM unnest($7::batch_receipt[]) AS t
    ON CONFLICT (receipt_id) DO NOTHING
    RETURNING receipt_id
), events AS (
    -- An entity without webhook subscriptions has nobody to fan out to: its events are written
    -- dispatched (no entry in the undispatched index, no later UPDATE of a 2 kB row). A
    -- subscription receives the events written after it exists.
    INSERT INTO order_events (entity_id, order_id, reference, source_id, type, version, priority,
                              data, created_at, dispatched_at)
    SELECT e.entity_id, coalesce(e.order_id, (SELECT order_ids FROM ids)[e.w]), e.reference,
           e.source_id, e.type, e.version, e.priority, e.data::json, $10::timestamptz,
           CASE WHEN EXISTS (SELECT 1 FROM webhook_subscriptions s WHERE s.entity_id = e.entity_id)
                THEN NULL ELSE $10::timestamptz END
    FROM unnest($8::batch_event[], string_to_array($9::text, E'\x1e'))
      AS e (entity_id, reference, source_id, type, version, priority, order_id, w, receipt_id, data)
    WHERE e.receipt_id IS NULL OR e.receipt_id IN (SELECT receipt_id FROM r)
)
SELECT order_id, entity_id, reference FROM up;

-- name: seq_floor
-- Where a lost Redis sequence counter starts again: above everything stored (rare; a scan).
SELECT coalesce(max(seq), 0) FROM receipts;
