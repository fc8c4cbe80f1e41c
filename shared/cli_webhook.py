"""`orderflow webhook …`: subscriptions, deliveries and replay from the command line.

Attached to the main group in shared/cli.py. Kept apart from it (no import of shared.cli)
so either module can be imported first.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
import msgspec

from shared.rules.webhooks import EVENT_TYPES
from shared.settings import Settings, SettingsError

T = TypeVar("T")


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc


def _with_conn(fn: Callable[[Any, Settings], Awaitable[T]]) -> T:
    """Run `fn(conn, settings)` on one connection; our errors become clean CLI errors."""
    from shared.db import connection
    from shared.ssrf import UnsafeURL
    from shared.webhooks import WebhookConflict, WebhookNotFound

    settings = _settings()

    async def go() -> T:
        async with connection(settings.database_url) as conn:
            return await fn(conn, settings)

    try:
        return asyncio.run(go())
    except UnsafeURL as exc:
        raise click.BadParameter(str(exc), param_hint="--url") from exc
    except (WebhookNotFound, WebhookConflict) as exc:
        raise click.ClickException(str(exc)) from exc


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _plain(obj: Any) -> Any:
    return msgspec.to_builtins(obj)


def _emit(as_json: bool, obj: Any, human: str) -> None:
    click.echo(json.dumps(_plain(obj), default=str) if as_json else human)


def _convert(obj: dict[str, Any], kind: type[T]) -> T:
    try:
        return msgspec.convert(obj, kind)
    except msgspec.ValidationError as exc:
        raise click.ClickException(str(exc)) from exc


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _events(value: str | None) -> list[str] | None:
    events = _csv(value)
    unknown = [e for e in events or [] if e not in EVENT_TYPES]
    if unknown:
        raise click.BadParameter(f"unknown event type(s) {', '.join(unknown)}; known: {', '.join(EVENT_TYPES)}",
                                 param_hint="--events")
    return events


def _when(value: str, hint: str) -> dt.datetime:
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter("expected an ISO 8601 date-time, e.g. 2026-06-01T12:00:00Z",
                                 param_hint=hint) from exc
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


def _describe(s: Any) -> str:
    filters = []
    filters.append("sources " + ",".join(s.source_ids) if s.source_ids else "any source")
    filters.append("events " + ",".join(s.event_types) if s.event_types else "every event")
    if s.conditions.cod_only:
        filters.append("COD only")
    if s.conditions.no_partial:
        filters.append("no partial shipment")
    if s.conditions.order_type is not None:
        filters.append(f"type {s.conditions.order_type}")
    state = s.state if s.state == "active" else f"disabled ({s.disabled_reason})"
    return f"{s.subscription_id}  {s.entity_id}  {s.url}  {'; '.join(filters)}  {state}"


JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
ORDER_TYPE = click.Choice(["0", "1", "any"])


@click.group()
def webhook() -> None:
    """Webhook subscriptions: add, list, update, disable, enable, rotate-secret, deliveries, replay."""


@webhook.command("add")
@click.option("--entity", "entity_id", required=True, help="Entity whose orders to report.")
@click.option("--url", required=True, help="Receiver URL (http/https, public address).")
@click.option("--sources", default=None, help="Comma-separated source_ids (default: all).")
@click.option("--events", default=None, help=f"Comma-separated event types (default: all of {', '.join(EVENT_TYPES)}).")
@click.option("--cod-only", is_flag=True, help="Only orders with a cash-on-delivery amount.")
@click.option("--no-partial", is_flag=True, help="Only orders that must ship complete (flag_partial 0).")
@click.option("--type", "order_type", type=click.Choice(["0", "1"]), default=None, help="Only this order type.")
@click.option("--description", default="", help="Free text for people.")
@click.option("--max-concurrency", type=click.IntRange(1, 100), default=None,
              help="Sends in flight at once (default ORDERFLOW_WEBHOOK_MAX_CONCURRENCY).")
@JSON_OPTION
def add(entity_id: str, url: str, sources: str | None, events: str | None, cod_only: bool,
        no_partial: bool, order_type: str | None, description: str, max_concurrency: int | None,
        as_json: bool) -> None:
    """Subscribe a URL; prints the signing secret once."""
    from shared.webhooks import SubscriptionIn, create_subscription

    spec = _convert({
        "url": url, "description": description, "source_ids": _csv(sources), "event_types": _events(events),
        "conditions": {"cod_only": cod_only, "no_partial": no_partial,
                       "order_type": int(order_type) if order_type is not None else None},
        "max_concurrency": max_concurrency}, SubscriptionIn)
    out = _with_conn(lambda conn, settings: create_subscription(conn, entity_id, spec, settings, _now()))
    _emit(as_json, out, f"{_describe(out)}\nsigning secret (shown once, store it now): {out.secret}")


@webhook.command("list")
@click.option("--entity", "entity_id", default=None, help="Only this entity's subscriptions.")
@JSON_OPTION
def list_(entity_id: str | None, as_json: bool) -> None:
    """List subscriptions (never their secrets)."""
    from shared.webhooks import list_subscriptions

    subs = _with_conn(lambda conn, _: list_subscriptions(conn, entity_id, _now()))
    _emit(as_json, {"subscriptions": subs}, "\n".join(_describe(s) for s in subs) or "no subscriptions")


@webhook.command("update")
@click.argument("subscription_id")
@click.option("--url", default=None, help="New receiver URL (checked like a new one).")
@click.option("--sources", default=None, help="Comma-separated source_ids.")
@click.option("--all-sources", is_flag=True, help="Every source.")
@click.option("--events", default=None, help="Comma-separated event types.")
@click.option("--all-events", is_flag=True, help="Every event type.")
@click.option("--cod-only/--any-cod", default=None, help="Only COD orders, or any.")
@click.option("--no-partial/--partial-ok", default=None, help="Only orders that must ship complete, or any.")
@click.option("--type", "order_type", type=ORDER_TYPE, default=None, help="Only this order type, or any.")
@click.option("--description", default=None, help="Free text for people.")
@click.option("--max-concurrency", type=click.IntRange(1, 100), default=None, help="Sends in flight at once.")
@JSON_OPTION
def update(subscription_id: str, url: str | None, sources: str | None, all_sources: bool,
           events: str | None, all_events: bool, cod_only: bool | None, no_partial: bool | None,
           order_type: str | None, description: str | None, max_concurrency: int | None,
           as_json: bool) -> None:
    """Change what is given; everything else stays."""
    from shared.webhooks import SubscriptionPatch, get_subscription, update_subscription

    patch: dict[str, Any] = {}
    if url is not None:
        patch["url"] = url
    if description is not None:
        patch["description"] = description
    if max_concurrency is not None:
        patch["max_concurrency"] = max_concurrency
    if sources is not None or all_sources:
        patch["source_ids"] = None if all_sources else _csv(sources)
    if events is not None or all_events:
        patch["event_types"] = None if all_events else _events(events)

    async def go(conn: Any, settings: Settings) -> Any:
        if cod_only is not None or no_partial is not None or order_type is not None:
            c = (await get_subscription(conn, subscription_id, None, _now())).conditions
            patch["conditions"] = {
                "cod_only": c.cod_only if cod_only is None else cod_only,
                "no_partial": c.no_partial if no_partial is None else no_partial,
                "order_type": c.order_type if order_type is None else (
                    None if order_type == "any" else int(order_type)),
            }
        return await update_subscription(conn, subscription_id, None,
                                         _convert(patch, SubscriptionPatch),
                                         settings, _now())

    out = _with_conn(go)
    _emit(as_json, out, _describe(out))


@webhook.command("disable")
@click.argument("subscription_id")
@click.option("--reason", default="disabled by the operator", show_default=True, help="Shown with the state.")
@JSON_OPTION
def disable(subscription_id: str, reason: str, as_json: bool) -> None:
    """Stop sending; waiting deliveries fail (replay them after enabling)."""
    from shared.webhooks import set_enabled

    out = _with_conn(lambda conn, _: set_enabled(conn, subscription_id, None, False, _now(), reason))
    _emit(as_json, out, _describe(out))


@webhook.command("enable")
@click.argument("subscription_id")
@JSON_OPTION
def enable(subscription_id: str, as_json: bool) -> None:
    """Send new events again."""
    from shared.webhooks import set_enabled

    out = _with_conn(lambda conn, _: set_enabled(conn, subscription_id, None, True, _now()))
    _emit(as_json, out, _describe(out))


@webhook.command("rotate-secret")
@click.argument("subscription_id")
@JSON_OPTION
def rotate_secret(subscription_id: str, as_json: bool) -> None:
    """A new secret (printed once); the old one keeps signing too for 24 hours."""
    from shared.webhooks import rotate_secret as rotate

    out = _with_conn(lambda conn, settings: rotate(conn, subscription_id, None, settings, _now()))
    _emit(as_json, out, f"new signing secret (shown once): {out.secret}\n"
                        f"the old secret also signs until {out.previous_secret_until:%Y-%m-%d %H:%M:%S} UTC")


@webhook.command("deliveries")
@click.argument("subscription_id")
@click.option("--state", type=click.Choice(["pending", "sending", "delivered", "failed"]), default=None)
@click.option("--since", default=None, help="Only deliveries made at or after this ISO 8601 time.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--attempts", "with_attempts", is_flag=True, help="Include every attempt.")
@JSON_OPTION
def deliveries(subscription_id: str, state: str | None, since: str | None, limit: int,
               with_attempts: bool, as_json: bool) -> None:
    """A subscription's deliveries, newest first, with their attempt log on request."""
    from shared.webhooks import list_deliveries

    since_at = _when(since, "--since") if since else None
    rows = _with_conn(lambda conn, _: list_deliveries(conn, subscription_id, None, state=state, since=since_at,
                                                      limit=limit, with_attempts=with_attempts))
    lines = []
    for d in rows:
        lines.append(f"{d.delivery_id}  {d.webhook_id}  {d.event_type}  {d.reference}  {d.state}  "
                     f"attempts {d.attempts}  last {d.last_status or '-'} {d.last_error or ''}".rstrip())
        for a in d.attempt_log or []:
            lines.append(f"    #{a.attempt} {a.at:%Y-%m-%d %H:%M:%S}  {a.status or '-'}  {a.latency_ms} ms  "
                         f"{a.error or ''}".rstrip())
    _emit(as_json, {"deliveries": rows}, "\n".join(lines) or "no deliveries")


@webhook.command("replay")
@click.argument("subscription_id")
@click.option("--delivery", "delivery_id", type=int, default=None, help="Send this one delivery again.")
@click.option("--since", default=None, help="Send every failed delivery made since this ISO 8601 time.")
@JSON_OPTION
def replay(subscription_id: str, delivery_id: int | None, since: str | None, as_json: bool) -> None:
    """Send one delivery again, or every failed one since a time (same webhook-id)."""
    from shared.webhooks import WebhookNotFound, get_delivery, replay_delivery, replay_failed_since

    if (delivery_id is None) == (since is None):
        raise click.UsageError("give exactly one of --delivery ID or --since TIME")
    if delivery_id is not None:
        async def one(conn: Any, _: Settings) -> Any:
            found = await get_delivery(conn, delivery_id, None)
            if found.subscription_id != subscription_id:
                raise WebhookNotFound(f"no delivery {delivery_id} for {subscription_id}")
            return await replay_delivery(conn, delivery_id, None, _now())

        out = _with_conn(one)
        _emit(as_json, {"subscription_id": subscription_id, "replayed": 1, "delivery": out},
              f"delivery {delivery_id} ({out.webhook_id}) queued again")
        return
    since_at = _when(since or "", "--since")
    n = _with_conn(lambda conn, _: replay_failed_since(conn, subscription_id, None, since_at, _now()))
    _emit(as_json, {"subscription_id": subscription_id, "replayed": n},
          f"{n} failed deliveries since {since_at:%Y-%m-%d %H:%M:%S} queued again")
