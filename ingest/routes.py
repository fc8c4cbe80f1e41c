"""HTTP handlers of the receiver."""

from __future__ import annotations

import asyncio
import re
from importlib import resources
from typing import Any

import msgspec
from aiohttp import web
from redis.exceptions import RedisError

from ingest.accept import Refused, accept, accept_typed, known_body
from ingest.auth import Caller, Unauthorized
from ingest.handoff import OrderShipped, RateLimited
from ingest.keys import CACHE, HANDOFF, POOL, QUEUE, REDIS, SETTINGS
from ingest.openapi import openapi_document
from ingest.reads import load_order, load_receipt
from ingest.responses import failure, problem, success
from shared.logging import get_logger
from shared.queue import receipt_id
from shared.redis_keys import shipped_member
from shared.schemas import EnqueueAccepted, Problem, json_decoder

log = get_logger(__name__)
routes = web.RouteTableDef()
_BYTE = re.compile(r"\(byte (\d+)\)")
WRITE_RIGHT = "orders:write"


async def read_body(request: web.Request, limit: int | None = None) -> bytes | web.Response:
    """The body, or a 413 answer when it is over `limit` (default ORDERFLOW_MAX_BODY_BYTES)."""
    limit = limit or request.app[SETTINGS].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        return _too_large(limit)
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _too_large(limit)
    return _too_large(limit) if len(raw) > limit else raw


def _too_large(limit: int) -> web.Response:
    return problem(413, "$", f"body is larger than the limit of {limit} bytes")


def decode_json(raw: bytes) -> Any | web.Response:
    """The decoded body, or a 400 answer with the byte offset where the JSON breaks."""
    try:
        return json_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        match = _BYTE.search(str(exc))
        offset = int(match.group(1)) if match else None
        return problem(400, "$", f"not valid JSON: {exc}", data={"byte_offset": offset})
    except UnicodeDecodeError:  # inside a string; msgspec's position is the string's, find the body's
        try:
            raw.decode()
        except UnicodeDecodeError as exc:
            return problem(400, "$", f"not valid JSON: not UTF-8 at byte {exc.start}",
                           data={"byte_offset": exc.start})
        return problem(400, "$", "not valid JSON: not UTF-8", data={"byte_offset": None})


def _text_field(body: dict[str, Any] | None, name: str) -> str | None:
    value = body.get(name) if body is not None else None
    return value if isinstance(value, str) else None


async def authenticate(request: web.Request, body: dict[str, Any] | None) -> Caller | web.Response:
    """The caller named by the CG-Access-Key/CG-Entity-ID headers, else by the body's fields."""
    return await _authenticate(request, _text_field(body, "access_key"), _text_field(body, "entity_id"))


async def _authenticate(request: web.Request, body_key: str | None, body_entity: str | None,
                        ) -> Caller | web.Response:
    key = request.headers.get("CG-Access-Key")
    entity = request.headers.get("CG-Entity-ID")
    try:
        return await request.app[CACHE].authenticate(key if key is not None else body_key,
                                                     entity if entity is not None else body_entity)
    except Unauthorized:
        return problem(401, "$.access_key", "unknown entity or wrong access key")


def _may_write(caller: Caller | web.Response) -> Caller | web.Response:
    if isinstance(caller, web.Response) or WRITE_RIGHT in caller.rights:
        return caller
    return problem(403, "$.access_key", f"this key lacks the right {WRITE_RIGHT!r}")


def _client_address(request: web.Request) -> str:
    return request.remote or "-"


async def writer_request(request: web.Request, limit: int | None = None,
                         ) -> tuple[bytes, dict[str, Any], Caller] | web.Response:
    """(raw, body, caller) of a JSON write by a key with orders:write, or the answer refusing it.

    In the order of the bad-input table: 413, 400 (with the byte offset), 422 (not an
    object), 401, 403.
    """
    raw = await read_body(request, limit)
    if isinstance(raw, web.Response):
        return raw
    return await _writer_body(request, raw)


async def _writer_body(request: web.Request, raw: bytes) -> tuple[bytes, dict[str, Any], Caller] | web.Response:
    body = decode_json(raw)
    if isinstance(body, web.Response):
        return body
    if not isinstance(body, dict):
        return problem(422, "$", "expected a JSON object")
    caller = _may_write(await authenticate(request, body))
    if isinstance(caller, web.Response):
        return caller
    return raw, body, caller


@routes.post("/api/v1/order/enqueue")
async def enqueue(request: web.Request) -> web.Response:
    """Authenticate, validate the whole order, hand it to Redis, answer 202 with a receipt."""
    raw = await read_body(request)
    if isinstance(raw, web.Response):
        return raw
    try:
        if (known := known_body(raw)) is not None:  # the common body: straight into types
            body, typed, payload_json = known
            caller = _may_write(await _authenticate(request, body.access_key, body.entity_id))
            if isinstance(caller, web.Response):
                return caller
            ok = accept_typed(caller, typed, payload_json)
        else:  # anything else the long way, which names every problem and unknown field
            checked = await _writer_body(request, raw)
            if isinstance(checked, web.Response):
                return checked
            raw, decoded, caller = checked
            ok = accept(caller, decoded.get("payload"), may_hold_nul=b"\\u0000" in raw,
                        envelope_fields={k: v for k, v in decoded.items() if k != "payload"})
    except Refused as exc:
        return failure(exc.status, exc.errors)
    order, warnings, token, envelope = ok.order, ok.warnings, ok.token, ok.envelope
    try:
        seq = await request.app[HANDOFF].submit(order.priority, caller.key_id, _client_address(request),
                                                envelope, shipped_member(caller.entity_id, order.reference))
    except OrderShipped:
        return problem(422, "$.payload.reference",
                       f"order {order.reference!r} is shipped: no further changes are accepted")
    except RateLimited:
        return problem(429, "$", "rate limit exceeded; retry after the time in Retry-After",
                       headers={"Retry-After": "1"})
    except (TimeoutError, RedisError, OSError) as exc:
        log.error("handoff_failed", error=repr(exc), entity_id=caller.entity_id, reference=order.reference)
        return problem(503, "$", "the queue is unavailable; nothing was accepted, please retry")
    rid = receipt_id(seq, token)
    log.debug("order_accepted", receipt_id=rid, entity_id=caller.entity_id, reference=order.reference)
    data = EnqueueAccepted(receipt_id=rid, reference=order.reference, entity_id=caller.entity_id,
                           source_id=order.source_id, status_url=f"/api/v1/order/receipts/{rid}")
    return success(data, status=202, warnings=warnings)


@routes.get("/api/v1/order/receipts/{receipt_id}")
async def get_receipt(request: web.Request) -> web.Response:
    """queued, stored, superseded or rejected, with the reason."""
    caller = await authenticate(request, None)
    if isinstance(caller, web.Response):
        return caller
    receipt = await load_receipt(request.app[POOL], request.app[QUEUE], request.match_info["receipt_id"], caller.entity_id)
    if receipt is None:
        return problem(404, "$.receipt_id", "no such receipt for this entity")
    return success(receipt)


@routes.get("/api/v1/order/{reference}")
async def get_order(request: web.Request) -> web.Response:
    """The stored order with its state, release time and versions."""
    caller = await authenticate(request, None)
    if isinstance(caller, web.Response):
        return caller
    order = await load_order(request.app[POOL], caller.entity_id, request.match_info["reference"])
    if order is None:
        return problem(404, "$.reference", "no such order for this entity")
    return success(order)


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return success({"alive": True})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    """Readiness: Redis and PostgreSQL reachable; `?require=redis` gates on Redis alone.

    A receiver takes orders while PostgreSQL is down (they wait in Redis), so a load
    balancer should keep sending it traffic then: probe with `?require=redis`.
    """
    async def check_redis() -> bool:
        try:
            return bool(await asyncio.wait_for(request.app[REDIS].ping(), 1.0))
        except Exception:  # noqa: BLE001 - any failure means not ready
            return False

    async def check_pg() -> bool:
        try:
            value = await asyncio.wait_for(request.app[POOL].fetchval("SELECT 1"), 1.0)
            return bool(value == 1)
        except Exception:  # noqa: BLE001 - any failure means not ready
            return False

    redis_ok, pg_ok = await asyncio.gather(check_redis(), check_pg())
    data = {"redis": "up" if redis_ok else "down", "postgresql": "up" if pg_ok else "down"}
    required = {"redis"} if request.query.get("require") == "redis" else {"redis", "postgresql"}
    down = [name for name, ok in (("redis", redis_ok), ("postgresql", pg_ok)) if not ok]
    if not set(down) & required:
        return success(data)
    return failure(503, [Problem(loc=f"$.{n}", msg=f"{n} is unreachable") for n in down], data=data)


@routes.get("/api/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI document, generated from the msgspec schemas."""
    return web.Response(body=openapi_document(), content_type="application/json")


@routes.get("/api/docs")
async def docs(request: web.Request) -> web.Response:
    """A page that renders the OpenAPI document; it loads nothing from the internet."""
    html = resources.files("ingest").joinpath("static/docs.html").read_text()
    return web.Response(text=html, content_type="text/html")
