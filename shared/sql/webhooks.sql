-- Webhooks: subscriptions, fan-out from the order_events outbox, the sender's queue, the attempt log.
-- Lock order everywhere: a subscription row before its deliveries, so nothing deadlocks.

-- name: webhook_subscription_create
INSERT INTO webhook_subscriptions (subscription_id, entity_id, url, description, source_ids,
                                   event_types, cod_only, no_partial, order_type, max_concurrency,
                                   secret, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12)
RETURNING *;

-- name: webhook_subscription_get
-- $2 NULL: any entity (the command line); the API always passes the caller's entity.
SELECT * FROM webhook_subscriptions
WHERE subscription_id = $1 AND ($2::text IS NULL OR entity_id = $2);

-- name: webhook_subscription_lock
SELECT * FROM webhook_subscriptions
WHERE subscription_id = $1 AND ($2::text IS NULL OR entity_id = $2)
FOR NO KEY UPDATE;

-- name: webhook_subscription_list
SELECT * FROM webhook_subscriptions
WHERE $1::text IS NULL OR entity_id = $1
ORDER BY created_at, subscription_id;

-- name: webhook_subscription_update
UPDATE webhook_subscriptions SET
    url = $2, description = $3, source_ids = $4, event_types = $5, cod_only = $6,
    no_partial = $7, order_type = $8, max_concurrency = $9, updated_at = $10
WHERE subscription_id = $1
RETURNING *;

-- name: webhook_subscription_disable
UPDATE webhook_subscriptions
SET state = 'disabled', disabled_at = $2, disabled_reason = $3, updated_at = $2
WHERE subscription_id = $1 AND state = 'active'
RETURNING *;

-- name: webhook_subscription_enable
-- A fresh start: the failure streak that may have disabled it is forgotten.
UPDATE webhook_subscriptions
SET state = 'active', disabled_at = NULL, disabled_reason = NULL, failing_since = NULL,
    updated_at = $2
WHERE subscription_id = $1
RETURNING *;

-- name: webhook_subscription_rotate
UPDATE webhook_subscriptions
SET previous_secret = secret, previous_secret_until = $3, secret = $2, updated_at = $4
WHERE subscription_id = $1
RETURNING *;

-- name: webhook_subscription_failed
-- Starts the failure streak (or keeps its start); returns it for the auto-disable rule.
UPDATE webhook_subscriptions SET failing_since = coalesce(failing_since, $2)
WHERE subscription_id = $1
RETURNING failing_since, state;

-- name: webhook_subscription_succeeded
UPDATE webhook_subscriptions SET failing_since = NULL
WHERE subscription_id = $1 AND failing_since IS NOT NULL;

-- name: webhook_fail_pending
-- The subscription was switched off: what still waits will not be sent (replay brings it back).
UPDATE webhook_deliveries
SET state = 'failed', next_attempt_at = NULL, last_error = $2
WHERE subscription_id = $1 AND state = 'pending';

-- name: webhook_events_undispatched
-- Without data: most events go to no subscription, or only to ones that do not look inside.
SELECT event_id, entity_id, reference, source_id, type, priority
FROM order_events
WHERE dispatched_at IS NULL
ORDER BY priority DESC, event_id
LIMIT $1
FOR UPDATE SKIP LOCKED;

-- name: webhook_subscriptions_of_entities
-- FOR SHARE: a disable waits for this fan-out, then fails what it made pending.
SELECT subscription_id, entity_id, source_ids, event_types, cod_only, no_partial, order_type, state
FROM webhook_subscriptions
WHERE entity_id = ANY($1::text[])
ORDER BY subscription_id
FOR SHARE;

-- name: webhook_events_match_data
-- The data of the events a typed condition looks at (already locked by this transaction), as
-- text: the worker decodes only the fields the conditions read. data is json, so data->'x'
-- parses the whole document again for every field (~15 us each, measured); this is cheaper.
SELECT event_id, data::text AS data
FROM order_events
WHERE event_id = ANY($1::bigint[]);

-- name: webhook_deliveries_insert
-- A delivery for a disabled subscription is recorded as failed, so a replay can bring it back.
INSERT INTO webhook_deliveries (webhook_id, subscription_id, event_id, entity_id, event_type,
                                reference, priority, state, next_attempt_at, last_error, created_at)
SELECT webhook_id, subscription_id, event_id, entity_id, event_type, reference, priority, state,
       CASE WHEN state = 'pending' THEN $9::timestamptz END,
       CASE WHEN state = 'failed' THEN 'subscription disabled' END, $9::timestamptz
FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[],
            $7::integer[], $8::text[])
  AS t (webhook_id, subscription_id, event_id, entity_id, event_type, reference, priority, state)
ON CONFLICT (subscription_id, event_id) DO NOTHING;

-- name: webhook_events_mark_dispatched
UPDATE order_events SET dispatched_at = $2 WHERE event_id = ANY($1::bigint[]);

-- name: webhook_reap
-- Leases of stopped workers: the lost attempt is logged, the delivery is due again at once.
WITH lost AS (
    SELECT d.delivery_id FROM webhook_deliveries d
    WHERE d.state = 'sending' AND d.lease_until <= $1
    FOR UPDATE SKIP LOCKED
), back AS (
    UPDATE webhook_deliveries d
    SET state = CASE WHEN s.state = 'active' THEN 'pending' ELSE 'failed' END,
        next_attempt_at = CASE WHEN s.state = 'active' THEN $1::timestamptz END,
        lease_until = NULL,
        last_error = 'no result: the worker stopped during the attempt'
    FROM lost, webhook_subscriptions s
    WHERE d.delivery_id = lost.delivery_id AND s.subscription_id = d.subscription_id
    RETURNING d.delivery_id, d.attempts, d.last_attempt_at
)
INSERT INTO webhook_attempts (delivery_id, attempt, at, error)
SELECT delivery_id, attempts, coalesce(last_attempt_at, $1), 'no result: the worker stopped during the attempt'
FROM back
ON CONFLICT (delivery_id, attempt) DO NOTHING
RETURNING delivery_id;

-- name: webhook_claim_candidates
-- Due deliveries of active subscriptions with room below their concurrency limit.
SELECT d.delivery_id, d.subscription_id
FROM webhook_deliveries d
JOIN webhook_subscriptions s ON s.subscription_id = d.subscription_id
WHERE d.state = 'pending' AND d.next_attempt_at <= $1 AND s.state = 'active'
  AND (SELECT count(*) FROM webhook_deliveries f
       WHERE f.subscription_id = d.subscription_id AND f.state = 'sending') < s.max_concurrency
ORDER BY d.priority DESC, d.next_attempt_at, d.delivery_id
LIMIT $2;

-- name: webhook_claim_lock_subscriptions
-- Claims of one subscription take turns, so its concurrency limit holds across workers.
SELECT subscription_id, max_concurrency
FROM webhook_subscriptions
WHERE subscription_id = ANY($1::text[]) AND state = 'active'
ORDER BY subscription_id
FOR NO KEY UPDATE;

-- name: webhook_claim_lock_deliveries
SELECT delivery_id, subscription_id
FROM webhook_deliveries
WHERE delivery_id = ANY($1::bigint[]) AND state = 'pending' AND next_attempt_at <= $2
ORDER BY priority DESC, next_attempt_at, delivery_id
FOR UPDATE SKIP LOCKED;

-- name: webhook_in_flight
SELECT subscription_id, count(*) AS n
FROM webhook_deliveries
WHERE subscription_id = ANY($1::text[]) AND state = 'sending'
GROUP BY subscription_id;

-- name: webhook_claim
WITH claimed AS (
    UPDATE webhook_deliveries
    SET state = 'sending', attempts = attempts + 1, lease_until = $2, last_attempt_at = $3
    WHERE delivery_id = ANY($1::bigint[])
    RETURNING delivery_id, webhook_id, subscription_id, event_id, entity_id, event_type,
              reference, priority, step, attempts
)
SELECT c.*, e.data, e.created_at AS occurred_at, s.url, s.secret, s.previous_secret,
       s.previous_secret_until
FROM claimed c
JOIN order_events e ON e.event_id = c.event_id
JOIN webhook_subscriptions s ON s.subscription_id = c.subscription_id
ORDER BY c.priority DESC, c.delivery_id;

-- name: webhook_attempt_insert
-- A late result of an attempt the reaper gave up on replaces the reaper's note.
INSERT INTO webhook_attempts (delivery_id, attempt, at, status, latency_ms, response, error)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (delivery_id, attempt) DO UPDATE SET
    status = excluded.status, latency_ms = excluded.latency_ms, response = excluded.response,
    error = excluded.error;

-- name: webhook_delivery_result
-- Fenced on the attempt number: a worker whose lease was reaped no longer owns the delivery.
-- A retry of a subscription switched off meanwhile fails instead.
UPDATE webhook_deliveries d
SET state = CASE WHEN $3::text = 'pending' AND s.state <> 'active' THEN 'failed' ELSE $3::text END,
    step = $4,
    next_attempt_at = CASE WHEN $3::text = 'pending' AND s.state = 'active' THEN $5::timestamptz END,
    lease_until = NULL,
    last_status = $6,
    last_error = CASE WHEN $3::text = 'pending' AND s.state <> 'active' THEN 'subscription disabled'
                      ELSE $7 END,
    delivered_at = CASE WHEN $3::text = 'delivered' THEN $8::timestamptz ELSE d.delivered_at END
FROM webhook_subscriptions s
WHERE d.delivery_id = $1 AND d.attempts = $2 AND d.state = 'sending'
  AND s.subscription_id = d.subscription_id
RETURNING d.state;

-- name: webhook_deliveries_list
SELECT delivery_id, webhook_id, subscription_id, event_id, event_type, reference, priority, state,
       step, attempts, next_attempt_at, created_at, last_attempt_at, last_status, last_error,
       delivered_at
FROM webhook_deliveries
WHERE subscription_id = $1
  AND ($2::text IS NULL OR state = $2)
  AND ($3::timestamptz IS NULL OR created_at >= $3)
  AND ($4::bigint IS NULL OR delivery_id < $4)
ORDER BY delivery_id DESC
LIMIT $5;

-- name: webhook_delivery_get
SELECT d.delivery_id, d.webhook_id, d.subscription_id, d.event_id, d.event_type, d.reference,
       d.priority, d.state, d.step, d.attempts, d.next_attempt_at, d.created_at,
       d.last_attempt_at, d.last_status, d.last_error, d.delivered_at
FROM webhook_deliveries d
JOIN webhook_subscriptions s ON s.subscription_id = d.subscription_id
WHERE d.delivery_id = $1 AND ($2::text IS NULL OR s.entity_id = $2);

-- name: webhook_attempts_of
SELECT delivery_id, attempt, at, status, latency_ms, response, error
FROM webhook_attempts
WHERE delivery_id = ANY($1::bigint[])
ORDER BY delivery_id, attempt;

-- name: webhook_replay_one
-- A new round of the whole schedule, same webhook-id; not while it is still waiting or in flight.
UPDATE webhook_deliveries
SET state = 'pending', step = 0, next_attempt_at = $2, lease_until = NULL
WHERE delivery_id = $1 AND state IN ('delivered', 'failed')
RETURNING delivery_id, webhook_id;

-- name: webhook_replay_failed_since
UPDATE webhook_deliveries
SET state = 'pending', step = 0, next_attempt_at = $3, lease_until = NULL
WHERE subscription_id = $1 AND state = 'failed' AND created_at >= $2
RETURNING delivery_id;
