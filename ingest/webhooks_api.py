"""`/api/v1/webhooks…`: subscriptions (create, list, update, disable, enable, rotate secret),
their deliveries with the attempt log, and replay. Needs a key with the `admin` right,
sent in the CG-Access-Key / CG-Entity-ID headers.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from ingest.accept import validation_problem
from ingest.auth import Caller, Unauthorized
from ingest.keys import CACHE, POOL, SETTINGS
from ingest.responses import problem, success
from shared import webhooks as wh
from shared.ssrf import UnsafeURL

routes = web.RouteTableDef()
ADMIN_RIGHT = "admin"
BASE = "/api/v1/webhooks"
T = TypeVar("T")
Handler = Callable[[web.Request, Caller], Awaitable[web.Response]]


class ReplayIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Replay every failed delivery created at or after `since`."""

    since: dt.datetime


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def admin(handler: Handler) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Authenticate from the headers, require `admin`, map our errors to answers."""

    async def wrapped(request: web.Request) -> web.Response:
        try:
            caller = await request.app[CACHE].authenticate(
                request.headers.get("CG-Access-Key"), request.headers.get("CG-Entity-ID"))
        except Unauthorized:
            return problem(401, "$.access_key", "unknown entity or wrong access key")
        if ADMIN_RIGHT not in caller.rights:
            return problem(403, "$.access_key", f"this key lacks the right {ADMIN_RIGHT!r}")
        try:
            return await handler(request, caller)
        except UnsafeURL as exc:
            return problem(422, "$.url", str(exc))
        except wh.WebhookNotFound as exc:
            return problem(404, "$", str(exc))
        except wh.WebhookConflict as exc:
            return problem(409, "$", str(exc))
        except _BadRequest as exc:
            return problem(exc.status, exc.loc, exc.msg)

    wrapped.__doc__ = handler.__doc__
    return wrapped


class _BadRequest(Exception):
    def __init__(self, status: int, loc: str, msg: str) -> None:
        super().__init__(msg)
        self.status, self.loc, self.msg = status, loc, msg


async def _decode(request: web.Request, kind: type[T]) -> T:
    raw = await request.read()
    try:
        return msgspec.json.decode(raw or b"{}", type=kind)
    except msgspec.ValidationError as exc:
        found = validation_problem(exc)
        raise _BadRequest(422, found.loc, found.msg) from exc
    except msgspec.DecodeError as exc:
        raise _BadRequest(400, "$", f"not valid JSON: {exc}") from exc


def _query_time(request: web.Request, name: str) -> dt.datetime | None:
    value = request.query.get(name)
    if not value:
        return None
    try:
        return _aware(msgspec.convert(value, dt.datetime))
    except msgspec.ValidationError as exc:
        raise _BadRequest(422, f"$.{name}", "expected an ISO 8601 date-time") from exc


def _query_int(request: web.Request, name: str, default: int | None) -> int | None:
    value = request.query.get(name)
    if not value:
        return default
    if not (value.isascii() and value.isdigit()) or int(value) >= 2**63:
        raise _BadRequest(422, f"$.{name}", "expected a positive integer")
    return int(value)


def _id(request: web.Request) -> str:
    return request.match_info["subscription_id"]


def _delivery_id(request: web.Request) -> int:
    value = request.match_info["delivery_id"]
    if not (value.isascii() and value.isdigit()) or int(value) >= 2**63:
        raise wh.WebhookNotFound(f"no delivery {value!r}")
    return int(value)


@routes.post(BASE)
@admin
async def create(request: web.Request, caller: Caller) -> web.Response:
    """Create a subscription; the answer carries its `whsec_` secret, shown this once."""
    spec = await _decode(request, wh.SubscriptionIn)
    async with request.app[POOL].acquire() as conn:
        out = await wh.create_subscription(conn, caller.entity_id, spec, request.app[SETTINGS], _now())
    return success(out, status=201)


@routes.get(BASE)
@admin
async def list_all(request: web.Request, caller: Caller) -> web.Response:
    """The entity's subscriptions (never their secrets)."""
    async with request.app[POOL].acquire() as conn:
        return success(await wh.list_subscriptions(conn, caller.entity_id, _now()))


@routes.get(BASE + "/{subscription_id}")
@admin
async def get_one(request: web.Request, caller: Caller) -> web.Response:
    """One subscription."""
    async with request.app[POOL].acquire() as conn:
        return success(await wh.get_subscription(conn, _id(request), caller.entity_id, _now()))


@routes.patch(BASE + "/{subscription_id}")
@admin
async def update(request: web.Request, caller: Caller) -> web.Response:
    """Change the fields sent (url, description, source_ids, event_types, conditions, max_concurrency)."""
    patch = await _decode(request, wh.SubscriptionPatch)
    async with request.app[POOL].acquire() as conn:
        return success(await wh.update_subscription(conn, _id(request), caller.entity_id, patch,
                                                    request.app[SETTINGS], _now()))


@routes.post(BASE + "/{subscription_id}/disable")
@admin
async def disable(request: web.Request, caller: Caller) -> web.Response:
    """Stop sending; what still waits fails (a replay brings it back after enabling)."""
    async with request.app[POOL].acquire() as conn:
        return success(await wh.set_enabled(conn, _id(request), caller.entity_id, False, _now(),
                                            reason=f"disabled with key {caller.key_id}"))


@routes.post(BASE + "/{subscription_id}/enable")
@admin
async def enable(request: web.Request, caller: Caller) -> web.Response:
    """Send new events again."""
    async with request.app[POOL].acquire() as conn:
        return success(await wh.set_enabled(conn, _id(request), caller.entity_id, True, _now()))


@routes.post(BASE + "/{subscription_id}/rotate-secret")
@admin
async def rotate(request: web.Request, caller: Caller) -> web.Response:
    """A new secret, shown once; the old one also signs for 24 hours."""
    async with request.app[POOL].acquire() as conn:
        return success(await wh.rotate_secret(conn, _id(request), caller.entity_id,
                                              request.app[SETTINGS], _now()))


@routes.get(BASE + "/{subscription_id}/deliveries")
@admin
async def deliveries(request: web.Request, caller: Caller) -> web.Response:
    """Deliveries newest first: ?state=failed&since=ISO&before=<delivery_id>&limit=100&attempts=1."""
    state = request.query.get("state") or None
    if state is not None and state not in ("pending", "sending", "delivered", "failed"):
        raise _BadRequest(422, "$.state", "expected pending, sending, delivered or failed")
    async with request.app[POOL].acquire() as conn:
        rows = await wh.list_deliveries(
            conn, _id(request), caller.entity_id, state=state, since=_query_time(request, "since"),
            before_id=_query_int(request, "before", None), limit=_query_int(request, "limit", 100) or 100,
            with_attempts=request.query.get("attempts") in ("1", "true"))
    return success(rows)


async def _delivery_of(conn: Any, request: web.Request, caller: Caller) -> wh.DeliveryOut:
    out = await wh.get_delivery(conn, _delivery_id(request), caller.entity_id)
    if out.subscription_id != _id(request):
        raise wh.WebhookNotFound(f"no delivery {out.delivery_id} for {_id(request)}")
    return out


@routes.get(BASE + "/{subscription_id}/deliveries/{delivery_id}")
@admin
async def delivery(request: web.Request, caller: Caller) -> web.Response:
    """One delivery with every attempt: time, status, latency, first 1 KiB of the answer, error."""
    async with request.app[POOL].acquire() as conn:
        return success(await _delivery_of(conn, request, caller))


@routes.post(BASE + "/{subscription_id}/deliveries/{delivery_id}/replay")
@admin
async def replay_one(request: web.Request, caller: Caller) -> web.Response:
    """Send one delivery again (same webhook-id, the schedule from the start)."""
    async with request.app[POOL].acquire() as conn:
        found = await _delivery_of(conn, request, caller)
        return success(await wh.replay_delivery(conn, found.delivery_id, caller.entity_id, _now()), status=202)


@routes.post(BASE + "/{subscription_id}/replay")
@admin
async def replay_since(request: web.Request, caller: Caller) -> web.Response:
    """Send every failed delivery made since `since` again."""
    body = await _decode(request, ReplayIn)
    async with request.app[POOL].acquire() as conn:
        n = await wh.replay_failed_since(conn, _id(request), caller.entity_id, _aware(body.since), _now())
    return success({"subscription_id": _id(request), "replayed": n}, status=202)
