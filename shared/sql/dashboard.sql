-- Named queries of the operator dashboard (ingest/dashboard/) and /metrics. Prefix: dash_.

-- name: dash_operator_create
INSERT INTO operators (name, password_hash) VALUES ($1, $2)
RETURNING name;

-- name: dash_operator_set_password
-- A new password ends every session of the operator.
WITH gone AS (DELETE FROM operator_sessions WHERE operator = $1)
UPDATE operators SET password_hash = $2, disabled_at = NULL WHERE name = $1
RETURNING name;

-- name: dash_operator_disable
WITH gone AS (DELETE FROM operator_sessions WHERE operator = $1)
UPDATE operators SET disabled_at = now() WHERE name = $1 AND disabled_at IS NULL
RETURNING name;

-- name: dash_operator_list
SELECT name, created_at, disabled_at,
       (SELECT max(last_seen_at) FROM operator_sessions s WHERE s.operator = o.name) AS last_seen_at
FROM operators o ORDER BY name;

-- name: dash_operator_get
SELECT name, password_hash FROM operators WHERE name = $1 AND disabled_at IS NULL;

-- name: dash_session_create
INSERT INTO operator_sessions (token_hash, operator, csrf_token, expires_at)
VALUES ($1, $2, $3, now() + make_interval(secs => $4));

-- name: dash_session_touch
-- A session lives until its expiry and dies after $2 seconds without a request.
UPDATE operator_sessions s SET last_seen_at = now()
FROM operators o
WHERE s.token_hash = $1 AND s.expires_at > now()
  AND s.last_seen_at > now() - make_interval(secs => $2)
  AND o.name = s.operator AND o.disabled_at IS NULL
RETURNING s.operator, s.csrf_token;

-- name: dash_session_delete
DELETE FROM operator_sessions WHERE token_hash = $1;

-- name: dash_session_purge
DELETE FROM operator_sessions WHERE expires_at < now() OR last_seen_at < now() - make_interval(secs => $1);

-- name: dash_audit
INSERT INTO operator_actions (operator, action, target, detail) VALUES ($1, $2, $3, $4);

-- name: dash_audit_recent
SELECT at, operator, action, target, detail FROM operator_actions ORDER BY action_id DESC LIMIT $1;

-- name: dash_ingest_lag
-- 202 to stored over the newest receipts: bounded work however fast orders arrive.
SELECT count(*) AS n,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY lag) AS p50,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY lag) AS p99
FROM (SELECT extract(epoch FROM stored_at - received_at)::float8 AS lag
      FROM receipts
      WHERE stored_at > now() - make_interval(secs => $1)
      ORDER BY stored_at DESC
      LIMIT $2) AS recent;

-- name: dash_lag_histogram
-- Receipts stored in ($1, $2], counted into the buckets $3 (ascending upper bounds);
-- bucket i counts bounds[i] <= lag < bounds[i+1] (width_bucket), 0 is below the first.
SELECT width_bucket(lag, $3::float8[]) AS bucket, count(*) AS n, coalesce(sum(lag), 0) AS total
FROM (SELECT greatest(extract(epoch FROM stored_at - received_at)::float8, 0) AS lag
      FROM receipts WHERE stored_at > $1 AND stored_at <= $2) AS lags
GROUP BY 1;

-- name: dash_db_now
SELECT now();

-- name: dash_failure_counts
-- Counted up to $1 each, so the overview's cost stays bounded however much has failed.
-- Open rejections: the worker keeps a failed_payloads row for each (0007's partial index).
SELECT (SELECT count(*) FROM (
            SELECT 1 FROM failed_payloads WHERE resolution IS NULL
            LIMIT $1) AS open_rejected) AS rejected_open,
       (SELECT count(*) FROM (
            SELECT 1 FROM webhook_deliveries d
            LEFT JOIN delivery_discards x ON x.delivery_id = d.delivery_id
            WHERE d.state = 'failed'
              AND (x.delivery_id IS NULL OR x.discarded_at < coalesce(d.last_attempt_at, d.created_at))
            LIMIT $1) AS open_deliveries) AS deliveries_open;

-- name: dash_scheduled_per_hour
-- Due orders per hour up to $1 (overdue ones land in past hours); the index orders_release_due serves it.
SELECT date_trunc('hour', release_at) AS hour, count(*) AS n,
       max(priority) AS top_priority
FROM orders
WHERE state = 'scheduled' AND release_at < $1
GROUP BY 1 ORDER BY 1;

-- name: dash_scheduled_totals
SELECT count(*) AS scheduled,
       count(*) FILTER (WHERE release_at <= now()) AS overdue,
       count(*) FILTER (WHERE release_at >= $1) AS later
FROM orders WHERE state = 'scheduled';

-- name: dash_scheduled_next
SELECT order_id, entity_id, reference, source_id, priority, release_at, stored_at
FROM orders
WHERE state = 'scheduled'
ORDER BY release_at, priority DESC
LIMIT $1;

-- name: dash_entities
SELECT entity_id, name FROM entities ORDER BY name, entity_id;

-- name: dash_orders_recent
SELECT order_id, entity_id, reference, source_id, state, status, priority, version,
       release_at, stored_at, updated_at
FROM orders
WHERE $1::text IS NULL OR entity_id = $1
ORDER BY order_id DESC
LIMIT $2;

-- name: dash_orders_by_reference
-- Exact reference in every entity (or one): one unique-index probe per entity.
SELECT o.order_id, o.entity_id, o.reference, o.source_id, o.state, o.status, o.priority,
       o.version, o.release_at, o.stored_at, o.updated_at
FROM entities e
JOIN orders o ON o.entity_id = e.entity_id AND o.reference = $1
WHERE $2::text IS NULL OR e.entity_id = $2
ORDER BY o.order_id DESC;

-- name: dash_orders_by_source
SELECT o.order_id, o.entity_id, o.reference, o.source_id, o.state, o.status, o.priority,
       o.version, o.release_at, o.stored_at, o.updated_at
FROM entities e
CROSS JOIN LATERAL (
    SELECT * FROM orders o
    WHERE o.entity_id = e.entity_id AND o.source_id = $1
    ORDER BY o.order_id DESC LIMIT $3) AS o
WHERE $2::text IS NULL OR e.entity_id = $2
ORDER BY o.order_id DESC
LIMIT $3;

-- name: dash_receipts_by_reference
SELECT r.receipt_id, r.entity_id, r.seq, r.reference, r.source_id, r.state, r.code, r.reason,
       r.received_at, r.stored_at, r.order_id
FROM entities e
JOIN receipts r ON r.entity_id = e.entity_id AND r.reference = $1
WHERE $2::text IS NULL OR e.entity_id = $2
ORDER BY r.seq DESC
LIMIT $3;

-- name: dash_receipt_get
SELECT receipt_id, entity_id, seq, reference, source_id, state, code, reason, warnings,
       received_at, stored_at, order_id
FROM receipts WHERE receipt_id = $1;

-- name: dash_order_get
SELECT order_id, entity_id, reference, source_id, seq, state, status, type, priority,
       flag_partial, cod_amount, currency, shipping_method, customer_id, created_at,
       delivery_at, release_at, released_at, stored_at, updated_at, version, raw
FROM orders WHERE order_id = $1;

-- name: dash_order_receipts
SELECT receipt_id, seq, state, code, reason, received_at, stored_at
FROM receipts WHERE entity_id = $1 AND reference = $2
ORDER BY seq DESC
LIMIT $3;

-- name: dash_order_events
SELECT event_id, type, version, priority, created_at, dispatched_at
FROM order_events WHERE order_id = $1
ORDER BY event_id DESC
LIMIT $2;

-- name: dash_rejected
-- Rejected payloads, newest first, with what an operator did about them.
SELECT r.receipt_id, r.entity_id, r.reference, r.source_id, r.code, r.reason, r.received_at,
       r.stored_at, r.order_id, f.envelope IS NOT NULL AS kept, f.resolution, f.resolved_at,
       f.resolved_by, f.retried_as
FROM receipts r
LEFT JOIN failed_payloads f USING (receipt_id)
WHERE r.state = 'rejected' AND ($1::boolean OR f.resolution IS NULL)
ORDER BY r.stored_at DESC, r.seq DESC
LIMIT $2;

-- name: dash_keep_failed_payloads
-- The worker's hook (worker/store.py), in the transaction of the rejected receipts:
-- $1 receipt ids, $2 entity ids, $3 envelopes. A payload processed twice keeps its first.
INSERT INTO failed_payloads (receipt_id, entity_id, envelope)
SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[])
ON CONFLICT (receipt_id) DO NOTHING;

-- name: dash_failed_open_for_retry
-- Kept payloads nobody has handled yet, locked so two operators cannot retry one twice.
SELECT f.receipt_id, f.envelope
FROM failed_payloads f
JOIN receipts r ON r.receipt_id = f.receipt_id AND r.state = 'rejected'
WHERE f.receipt_id = ANY($1::text[]) AND f.resolution IS NULL AND f.envelope IS NOT NULL
ORDER BY r.seq
FOR UPDATE OF f;

-- name: dash_keys_state
SELECT key_id, rights, revoked_at FROM access_keys WHERE key_id = ANY($1::text[]);

-- name: dash_failed_mark_retried
UPDATE failed_payloads SET resolution = 'retried', resolved_at = now(), resolved_by = $2
WHERE receipt_id = ANY($1::text[]) AND resolution IS NULL;

-- name: dash_failed_retried_as
UPDATE failed_payloads f SET retried_as = t.retried_as
FROM unnest($1::text[], $2::text[]) AS t (receipt_id, retried_as)
WHERE f.receipt_id = t.receipt_id;

-- name: dash_failed_discard
-- Discarding works for rejections whose payload was never kept, too.
INSERT INTO failed_payloads (receipt_id, entity_id, envelope, resolution, resolved_at, resolved_by)
SELECT receipt_id, entity_id, NULL, 'discarded', now(), $2
FROM receipts WHERE receipt_id = $1 AND state = 'rejected'
ON CONFLICT (receipt_id) DO UPDATE
    SET resolution = 'discarded', resolved_at = now(), resolved_by = excluded.resolved_by
    WHERE failed_payloads.resolution IS NULL
RETURNING receipt_id;

-- name: dash_webhook_subscriptions
-- Each subscription with its last 24 h: finished deliveries (for the success rate), what
-- waits, and the newest error of the last 7 days.
SELECT s.subscription_id, s.entity_id, s.url, s.description, s.state, s.disabled_at,
       s.disabled_reason, s.failing_since, s.created_at,
       coalesce(d.delivered, 0) AS delivered, coalesce(d.failed, 0) AS failed,
       coalesce(w.pending, 0) AS pending, coalesce(w.sending, 0) AS sending,
       e.last_attempt_at AS last_error_at, e.last_status AS last_error_status, e.last_error
FROM webhook_subscriptions s
LEFT JOIN LATERAL (
    SELECT count(*) FILTER (WHERE state = 'delivered') AS delivered,
           count(*) FILTER (WHERE state = 'failed') AS failed
    FROM webhook_deliveries
    WHERE subscription_id = s.subscription_id AND created_at > now() - interval '24 hours') d ON true
LEFT JOIN LATERAL (
    SELECT count(*) FILTER (WHERE state = 'pending') AS pending,
           count(*) FILTER (WHERE state = 'sending') AS sending
    FROM webhook_deliveries
    WHERE subscription_id = s.subscription_id AND state IN ('pending', 'sending')) w ON true
LEFT JOIN LATERAL (
    SELECT last_attempt_at, last_status, last_error
    FROM webhook_deliveries
    WHERE subscription_id = s.subscription_id AND created_at > now() - interval '7 days'
      AND last_error IS NOT NULL
    ORDER BY last_attempt_at DESC NULLS LAST
    LIMIT 1) e ON true
WHERE $1::text IS NULL OR s.subscription_id = $1
ORDER BY s.entity_id, s.created_at, s.subscription_id;

-- name: dash_deliveries_failed
-- Deliveries that gave up, newest first, unless discarded since their last attempt.
SELECT d.delivery_id, d.subscription_id, s.url, s.state AS subscription_state, d.entity_id,
       d.event_type, d.reference, d.attempts, d.last_status, d.last_error, d.last_attempt_at,
       d.created_at, o.order_id
FROM webhook_deliveries d
JOIN webhook_subscriptions s ON s.subscription_id = d.subscription_id
LEFT JOIN delivery_discards x ON x.delivery_id = d.delivery_id
LEFT JOIN order_events ev ON ev.event_id = d.event_id
LEFT JOIN orders o ON o.order_id = ev.order_id
WHERE d.state = 'failed'
  AND (x.delivery_id IS NULL OR x.discarded_at < coalesce(d.last_attempt_at, d.created_at))
ORDER BY d.delivery_id DESC
LIMIT $1;

-- name: dash_deliveries_lock_subscriptions
-- Lock order of the webhook code: subscription rows first, then their deliveries.
SELECT subscription_id, state
FROM webhook_subscriptions
WHERE subscription_id IN (SELECT subscription_id FROM webhook_deliveries WHERE delivery_id = ANY($1::bigint[]))
ORDER BY subscription_id
FOR NO KEY UPDATE;

-- name: dash_deliveries_replay
-- Like webhook_replay_one, for many: a new round of the schedule, the same webhook-id.
UPDATE webhook_deliveries
SET state = 'pending', step = 0, next_attempt_at = $2, lease_until = NULL
WHERE delivery_id = ANY($1::bigint[]) AND state = 'failed' AND subscription_id = ANY($3::text[])
RETURNING delivery_id;

-- name: dash_delivery_discard
INSERT INTO delivery_discards (delivery_id, discarded_by)
SELECT delivery_id, $2 FROM webhook_deliveries WHERE delivery_id = $1 AND state = 'failed'
ON CONFLICT (delivery_id) DO UPDATE SET discarded_at = now(), discarded_by = excluded.discarded_by
RETURNING delivery_id;

-- name: dash_order_deliveries
SELECT d.delivery_id, d.subscription_id, d.event_id, d.event_type, d.state, d.attempts,
       d.last_status, d.last_error, d.last_attempt_at, d.delivered_at, d.next_attempt_at
FROM webhook_deliveries d
WHERE d.event_id = ANY($1::bigint[])
ORDER BY d.delivery_id DESC;

-- name: dash_delivered_per_second
-- Deliveries that succeeded in [$1, $2) (unix seconds), per second.
SELECT floor(extract(epoch FROM delivered_at))::bigint AS second, count(*) AS n
FROM webhook_deliveries
WHERE state = 'delivered' AND delivered_at >= to_timestamp($1) AND delivered_at < to_timestamp($2)
GROUP BY 1;

-- name: dash_delivered_between
SELECT count(*) FROM webhook_deliveries
WHERE state = 'delivered' AND delivered_at > $1 AND delivered_at <= $2;
