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

-- name: batch_lock_orders
-- The orders a batch touches, locked in one order (entity, reference) so batches never deadlock.
SELECT o.order_id, o.entity_id, o.reference, o.source_id, o.seq, o.state, o.status, o.version,
       o.content_hash, o.document, o.release_at, o.released_at, o.stored_at
FROM orders o
JOIN unnest($1::text[], $2::text[]) AS t (entity_id, reference)
  ON o.entity_id = t.entity_id AND o.reference = t.reference
ORDER BY o.entity_id, o.reference
FOR UPDATE OF o;

-- name: batch_known_products
SELECT p.entity_id, p.sku
FROM products p
JOIN unnest($1::text[], $2::text[]) AS t (entity_id, sku)
  ON p.entity_id = t.entity_id AND p.sku = t.sku;

-- name: batch_create_products
INSERT INTO products (entity_id, sku, description, weight, created_by)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::numeric[], $5::text[])
ON CONFLICT (entity_id, sku) DO NOTHING;

-- name: batch_upsert_orders
-- The sequence guard lives in the WHERE: an older payload never overwrites a newer one,
-- even when two workers race on a reference neither had seen.
INSERT INTO orders AS o (
    entity_id, reference, source_id, seq, state, status, type, priority, flag_partial,
    cod_amount, currency, shipping_method, customer_id, options, created_at, delivery_at,
    release_at, released_at, stored_at, updated_at, version, content_hash, document, raw)
SELECT entity_id, reference, source_id, seq, state, status, type, priority, flag_partial,
       cod_amount, currency, shipping_method, customer_id, options::jsonb, created_at,
       delivery_at, release_at, released_at, stored_at, updated_at, version, content_hash,
       document::json, raw::json
FROM unnest(
    $1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::smallint[],
    $7::smallint[], $8::integer[], $9::smallint[], $10::numeric[], $11::text[], $12::text[],
    $13::text[], $14::text[], $15::timestamptz[], $16::timestamptz[], $17::timestamptz[],
    $18::timestamptz[], $19::timestamptz[], $20::timestamptz[], $21::integer[], $22::bytea[],
    $23::text[], $24::text[])
  AS t (entity_id, reference, source_id, seq, state, status, type, priority, flag_partial,
        cod_amount, currency, shipping_method, customer_id, options, created_at, delivery_at,
        release_at, released_at, stored_at, updated_at, version, content_hash, document, raw)
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
RETURNING o.order_id, o.entity_id, o.reference;

-- name: batch_bump_seq
-- An identical repeat changes nothing but the guard, so an older payload still loses.
UPDATE orders o SET seq = t.seq
FROM unnest($1::bigint[], $2::bigint[]) AS t (order_id, seq)
WHERE o.order_id = t.order_id AND o.seq < t.seq;

-- name: batch_clear_lines
DELETE FROM order_lines WHERE order_id = ANY($1::bigint[]);

-- name: batch_clear_addresses
DELETE FROM addresses WHERE order_id = ANY($1::bigint[]);

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

-- name: seq_floor
-- Where a lost Redis sequence counter starts again: above everything stored (rare; a scan).
SELECT coalesce(max(seq), 0) FROM receipts;
