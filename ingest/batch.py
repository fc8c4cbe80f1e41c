"""POST /api/v1/order/enqueue/batch: up to 500 orders, each validated on its own, one Redis step."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from ingest.accept import Accepted, Refused, accept
from ingest.keys import QUEUE, SETTINGS
from ingest.responses import failure, problem, success
from ingest.routes import writer_request
from shared.logging import get_logger
from shared.queue import receipt_id
from shared.redis_keys import shipped_member
from shared.schemas import EnqueueAccepted, Problem

log = get_logger(__name__)
routes = web.RouteTableDef()
MAX_ORDERS = 500


@routes.post("/api/v1/order/enqueue/batch")
async def enqueue_batch(request: web.Request) -> web.Response:
    """207 with one result per order, in request order: a receipt (202) or its errors."""
    settings = request.app[SETTINGS]
    checked = await writer_request(request, settings.max_batch_body_bytes)
    if isinstance(checked, web.Response):
        return checked
    raw, body, caller = checked
    orders = body.get("orders")
    if not isinstance(orders, list) or not orders:
        return problem(422, "$.orders", "expected a non-empty list of orders")
    if len(orders) > MAX_ORDERS:
        return problem(422, "$.orders", f"at most {MAX_ORDERS} orders per batch, got {len(orders)}")

    may_hold_nul = b"\\u0000" in raw
    results: list[dict[str, Any]] = []
    accepted: list[tuple[int, Accepted]] = []
    for i, entry in enumerate(orders):
        # each entry is a payload, or {"payload": {...}} as in the single-order body
        wrapped = isinstance(entry, dict) and isinstance(entry.get("payload"), dict)
        payload = entry["payload"] if wrapped else entry
        loc = f"$.orders[{i}]" + (".payload" if wrapped else "")
        try:
            ok = accept(caller, payload, loc=loc, may_hold_nul=may_hold_nul)
        except Refused as exc:
            results.append({"index": i, "status": exc.status, "errors": exc.errors})
            continue
        results.append({"index": i, "status": 202})
        accepted.append((i, ok))

    if accepted:
        address = request.remote or "-"
        try:
            seqs = await request.app[QUEUE].enqueue_many(
                [(a.order.priority, caller.key_id, address, a.envelope) for _, a in accepted],
                per_key=settings.rate_per_key, per_address=settings.rate_per_address,
                shipped=[shipped_member(caller.entity_id, a.order.reference) for _, a in accepted])
        except (TimeoutError, RedisError, OSError) as exc:
            log.error("handoff_failed", error=repr(exc), entity_id=caller.entity_id, batch=len(accepted))
            return failure(503, [Problem(loc="$", msg="the queue is unavailable; nothing was accepted, please retry")])
        for (i, a), seq in zip(accepted, seqs, strict=True):
            if seq == -1:
                results[i] = {"index": i, "status": 429, "errors": [
                    Problem(loc=f"$.orders[{i}]", msg="rate limit exceeded; retry this order later")]}
            elif seq == -2:
                results[i] = {"index": i, "status": 422, "errors": [Problem(
                    loc=f"$.orders[{i}].reference",
                    msg=f"order {a.order.reference!r} is shipped: no further changes are accepted")]}
            else:
                rid = receipt_id(seq, a.token)
                results[i] = {"index": i, "status": 202, "receipt": EnqueueAccepted(
                    receipt_id=rid, reference=a.order.reference, entity_id=caller.entity_id,
                    source_id=a.order.source_id, status_url=f"/api/v1/order/receipts/{rid}"),
                    "warnings": a.warnings or None}
    handed_off = sum(1 for r in results if r["status"] == 202)
    log.info("batch_accepted", entity_id=caller.entity_id, orders=len(orders), handed_off=handed_off)
    return success({"accepted": handed_off, "refused": len(orders) - handed_off, "results": results},
                   status=207)
