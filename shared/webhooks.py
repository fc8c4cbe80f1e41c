"""Webhook subscriptions and their deliveries: what the API and the command line both do.

Receiver and command line call these; the worker's sender (worker/webhooks.py) uses
`disable_subscription` when a receiver answers 410 or has failed for five days.
"""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Annotated, Any

import asyncpg
import msgspec
from msgspec import UNSET, Meta, UnsetType

from shared.db import QUERIES
from shared.rules.webhooks import Conditions, EventType
from shared.settings import Settings
from shared.ssrf import UnsafeURL, check_url, parse_nets
from shared.webhook_signing import new_secret

Concurrency = Annotated[int, Meta(ge=1, le=100)]
SourceIds = Annotated[list[Annotated[str, Meta(min_length=1)]], Meta(max_length=1000)]
Url = Annotated[str, Meta(max_length=2048)]
Description = Annotated[str, Meta(max_length=1000)]
DeliveryState = Annotated[str, Meta(pattern="^(pending|sending|delivered|failed)$")]


class WebhookNotFound(LookupError):
    """No such subscription or delivery for this entity."""


class WebhookConflict(Exception):
    """The request cannot be done in the current state; the message says why."""


class SubscriptionIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A new subscription. `source_ids` / `event_types` absent, null or []: all of them."""

    url: Url
    description: Description = ""
    source_ids: SourceIds | None = None
    event_types: list[EventType] | None = None
    conditions: Conditions = msgspec.field(default_factory=Conditions)
    max_concurrency: Concurrency | None = None


class SubscriptionPatch(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A change: only the fields sent are changed (null sources or event types: all)."""

    url: Url | UnsetType = UNSET
    description: Description | UnsetType = UNSET
    source_ids: SourceIds | None | UnsetType = UNSET
    event_types: list[EventType] | None | UnsetType = UNSET
    conditions: Conditions | UnsetType = UNSET
    max_concurrency: Concurrency | UnsetType = UNSET


class SubscriptionOut(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A subscription as shown; `secret` only in the answer that made it (create, rotate)."""

    subscription_id: str
    entity_id: str
    url: str
    description: str
    source_ids: list[str] | None
    event_types: list[str] | None
    conditions: Conditions
    max_concurrency: int
    state: str
    disabled_at: dt.datetime | None = None
    disabled_reason: str | None = None
    failing_since: dt.datetime | None = None
    # while a rotation overlaps, the old secret signs too, until then
    previous_secret_until: dt.datetime | None = None
    created_at: dt.datetime
    updated_at: dt.datetime
    secret: str | UnsetType = UNSET


class AttemptOut(msgspec.Struct, kw_only=True):
    """One attempt: when, what came back, how long it took, what went wrong."""

    attempt: int
    at: dt.datetime
    status: int | None
    latency_ms: int | None
    response: str | None
    error: str | None


class DeliveryOut(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One event for one subscription, with its retry state (and attempt log when asked)."""

    delivery_id: int
    webhook_id: str
    subscription_id: str
    event_id: int
    event_type: str
    reference: str
    priority: int
    state: str
    attempts: int
    next_attempt_at: dt.datetime | None = None
    created_at: dt.datetime
    last_attempt_at: dt.datetime | None = None
    last_status: int | None = None
    last_error: str | None = None
    delivered_at: dt.datetime | None = None
    attempt_log: list[AttemptOut] | UnsetType = UNSET


def subscription_out(row: asyncpg.Record, now: dt.datetime, secret: str | None = None) -> SubscriptionOut:
    """A row as shown to clients (never the stored secret unless given)."""
    until = row["previous_secret_until"]
    return SubscriptionOut(
        subscription_id=row["subscription_id"], entity_id=row["entity_id"], url=row["url"],
        description=row["description"], source_ids=row["source_ids"], event_types=row["event_types"],
        conditions=Conditions(cod_only=row["cod_only"], no_partial=row["no_partial"],
                              order_type=row["order_type"]),
        max_concurrency=row["max_concurrency"], state=row["state"], disabled_at=row["disabled_at"],
        disabled_reason=row["disabled_reason"], failing_since=row["failing_since"],
        previous_secret_until=until if until is not None and until > now else None,
        created_at=row["created_at"], updated_at=row["updated_at"],
        secret=secret if secret is not None else UNSET)


def delivery_out(row: asyncpg.Record | dict[str, Any], attempts: list[AttemptOut] | None = None) -> DeliveryOut:
    """A delivery row as shown."""
    fields = {f: row[f] for f in DeliveryOut.__struct_fields__ if f != "attempt_log"}
    return DeliveryOut(**fields, attempt_log=attempts if attempts is not None else UNSET)


def _all_if_empty(values: list[str] | None) -> list[str] | None:
    # none = all; an empty list would match nothing, which no one subscribes for
    return sorted(set(values)) if values else None


async def _safe_url(url: str, settings: Settings) -> str:
    await check_url(url, parse_nets(settings.webhook_allow_nets))
    return url


def new_subscription_id() -> str:
    """Public id of a subscription."""
    return "sub_" + secrets.token_hex(8)


async def create_subscription(conn: asyncpg.Connection, entity_id: str, spec: SubscriptionIn,
                              settings: Settings, now: dt.datetime) -> SubscriptionOut:
    """Check the URL (SSRF), store the subscription, return it with its secret (shown once)."""
    url = await _safe_url(spec.url, settings)
    secret = new_secret()
    c = spec.conditions
    try:
        row = await conn.fetchrow(
            QUERIES["webhook_subscription_create"], new_subscription_id(), entity_id, url,
            spec.description, _all_if_empty(spec.source_ids), _all_if_empty(list(spec.event_types or [])),
            c.cod_only, c.no_partial, c.order_type,
            spec.max_concurrency or settings.webhook_max_concurrency, secret, now)
    except asyncpg.ForeignKeyViolationError as exc:
        raise WebhookNotFound(f"no entity {entity_id!r}") from exc
    return subscription_out(row, now, secret)


async def get_subscription(conn: asyncpg.Connection, subscription_id: str, entity_id: str | None,
                           now: dt.datetime) -> SubscriptionOut:
    """One subscription of the entity (any entity when None)."""
    row = await conn.fetchrow(QUERIES["webhook_subscription_get"], subscription_id, entity_id)
    if row is None:
        raise WebhookNotFound(f"no subscription {subscription_id!r}")
    return subscription_out(row, now)


async def list_subscriptions(conn: asyncpg.Connection, entity_id: str | None,
                             now: dt.datetime) -> list[SubscriptionOut]:
    """The entity's subscriptions (every entity's when None), oldest first."""
    return [subscription_out(r, now) for r in await conn.fetch(QUERIES["webhook_subscription_list"], entity_id)]


async def update_subscription(conn: asyncpg.Connection, subscription_id: str, entity_id: str | None,
                              patch: SubscriptionPatch, settings: Settings,
                              now: dt.datetime) -> SubscriptionOut:
    """Apply the fields sent; a new URL is checked like a new subscription's."""
    url = await _safe_url(patch.url, settings) if not isinstance(patch.url, UnsetType) else None
    async with conn.transaction():
        row = await conn.fetchrow(QUERIES["webhook_subscription_lock"], subscription_id, entity_id)
        if row is None:
            raise WebhookNotFound(f"no subscription {subscription_id!r}")
        c = patch.conditions if not isinstance(patch.conditions, UnsetType) else Conditions(
            cod_only=row["cod_only"], no_partial=row["no_partial"], order_type=row["order_type"])
        sources = row["source_ids"] if isinstance(patch.source_ids, UnsetType) else _all_if_empty(patch.source_ids)
        events = (row["event_types"] if isinstance(patch.event_types, UnsetType)
                  else _all_if_empty(list(patch.event_types or [])))
        row = await conn.fetchrow(
            QUERIES["webhook_subscription_update"], subscription_id, url or row["url"],
            row["description"] if isinstance(patch.description, UnsetType) else patch.description,
            sources, events, c.cod_only, c.no_partial, c.order_type,
            row["max_concurrency"] if isinstance(patch.max_concurrency, UnsetType) else patch.max_concurrency,
            now)
    return subscription_out(row, now)


async def disable_subscription(conn: asyncpg.Connection, subscription_id: str, entity_id: str | None,
                               reason: str, now: dt.datetime) -> asyncpg.Record | None:
    """Switch a subscription off and fail what waits for it; None when it was already off."""
    async with conn.transaction():
        row = await conn.fetchrow(QUERIES["webhook_subscription_lock"], subscription_id, entity_id)
        if row is None:
            raise WebhookNotFound(f"no subscription {subscription_id!r}")
        done = await conn.fetchrow(QUERIES["webhook_subscription_disable"], subscription_id, now, reason)
        if done is not None:
            await conn.execute(QUERIES["webhook_fail_pending"], subscription_id,
                               f"subscription disabled: {reason}")
        return done


async def set_enabled(conn: asyncpg.Connection, subscription_id: str, entity_id: str | None,
                      enabled: bool, now: dt.datetime, reason: str = "disabled by the operator",
                      ) -> SubscriptionOut:
    """Disable (failing what waits) or enable (new events flow again; replay brings back the rest)."""
    if enabled:
        await get_subscription(conn, subscription_id, entity_id, now)
        row = await conn.fetchrow(QUERIES["webhook_subscription_enable"], subscription_id, now)
        return subscription_out(row, now)
    await disable_subscription(conn, subscription_id, entity_id, reason, now)
    return await get_subscription(conn, subscription_id, entity_id, now)


async def rotate_secret(conn: asyncpg.Connection, subscription_id: str, entity_id: str | None,
                        settings: Settings, now: dt.datetime) -> SubscriptionOut:
    """A new secret (shown once); the old one keeps signing too for the overlap (24 h)."""
    await get_subscription(conn, subscription_id, entity_id, now)
    secret = new_secret()
    until = now + dt.timedelta(seconds=settings.webhook_rotation_overlap_s)
    row = await conn.fetchrow(QUERIES["webhook_subscription_rotate"], subscription_id, secret, until, now)
    return subscription_out(row, now, secret)


async def list_deliveries(conn: asyncpg.Connection, subscription_id: str, entity_id: str | None, *,
                          state: str | None = None, since: dt.datetime | None = None,
                          before_id: int | None = None, limit: int = 100,
                          with_attempts: bool = False) -> list[DeliveryOut]:
    """A subscription's deliveries, newest first; page with `before_id`."""
    await get_subscription(conn, subscription_id, entity_id, dt.datetime.now(dt.UTC))
    rows = await conn.fetch(QUERIES["webhook_deliveries_list"], subscription_id, state, since,
                            before_id, max(1, min(limit, 1000)))
    logs: dict[int, list[AttemptOut]] = {}
    if with_attempts and rows:
        for a in await conn.fetch(QUERIES["webhook_attempts_of"], [r["delivery_id"] for r in rows]):
            logs.setdefault(a["delivery_id"], []).append(_attempt(a))
    return [delivery_out(r, logs.get(r["delivery_id"], []) if with_attempts else None) for r in rows]


def _attempt(row: asyncpg.Record) -> AttemptOut:
    return AttemptOut(attempt=row["attempt"], at=row["at"], status=row["status"],
                      latency_ms=row["latency_ms"], response=row["response"], error=row["error"])


async def get_delivery(conn: asyncpg.Connection, delivery_id: int, entity_id: str | None) -> DeliveryOut:
    """One delivery with its whole attempt log."""
    row = await conn.fetchrow(QUERIES["webhook_delivery_get"], delivery_id, entity_id)
    if row is None:
        raise WebhookNotFound(f"no delivery {delivery_id}")
    attempts = [_attempt(a) for a in await conn.fetch(QUERIES["webhook_attempts_of"], [delivery_id])]
    return delivery_out(row, attempts)


async def replay_delivery(conn: asyncpg.Connection, delivery_id: int, entity_id: str | None,
                          now: dt.datetime) -> DeliveryOut:
    """Send a delivered or failed delivery again: a new round of the schedule, the same webhook-id."""
    async with conn.transaction():
        row = await conn.fetchrow(QUERIES["webhook_delivery_get"], delivery_id, entity_id)
        if row is None:
            raise WebhookNotFound(f"no delivery {delivery_id}")
        sub = await conn.fetchrow(QUERIES["webhook_subscription_lock"], row["subscription_id"], None)
        if sub["state"] != "active":
            raise WebhookConflict(f"subscription {sub['subscription_id']} is disabled: enable it first")
        if await conn.fetchrow(QUERIES["webhook_replay_one"], delivery_id, now) is None:
            raise WebhookConflict(f"delivery {delivery_id} is {row['state']}: it will be sent anyway")
    return await get_delivery(conn, delivery_id, entity_id)


async def replay_failed_since(conn: asyncpg.Connection, subscription_id: str, entity_id: str | None,
                              since: dt.datetime, now: dt.datetime) -> int:
    """Send every failed delivery of a subscription made since `since` again; how many."""
    async with conn.transaction():
        sub = await conn.fetchrow(QUERIES["webhook_subscription_lock"], subscription_id, entity_id)
        if sub is None:
            raise WebhookNotFound(f"no subscription {subscription_id!r}")
        if sub["state"] != "active":
            raise WebhookConflict(f"subscription {subscription_id} is disabled: enable it first")
        rows = await conn.fetch(QUERIES["webhook_replay_failed_since"], subscription_id, since, now)
    return len(rows)


__all__ = [
    "AttemptOut", "DeliveryOut", "SubscriptionIn", "SubscriptionOut", "SubscriptionPatch",
    "UnsafeURL", "WebhookConflict", "WebhookNotFound", "create_subscription", "disable_subscription",
    "get_delivery", "get_subscription", "list_deliveries", "list_subscriptions", "replay_delivery",
    "replay_failed_since", "rotate_secret", "set_enabled", "update_subscription",
]
