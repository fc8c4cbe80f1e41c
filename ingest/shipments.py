"""POST /api/v1/order/{reference}/shipments: record shipped lines, enforcing flag_partial and COD.

Synchronous: the answer says whether the shipment was recorded. The order row is locked
for the check and the writes, so two shipments of one order never both pass the rules.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
from aiohttp import web

from ingest.accept import validation_problem
from ingest.keys import POOL, QUEUE
from ingest.responses import failure, problem, success
from ingest.routes import writer_request
from shared.db import QUERIES
from shared.events import Event, order_event_data, write_events
from shared.logging import get_logger
from shared.redis_keys import shipped_member
from shared.rules.shipments import LineState, decide_shipment
from shared.schemas import ShipmentAccepted, ShipmentOut, ShipmentRequest

log = get_logger(__name__)
routes = web.RouteTableDef()


@routes.post("/api/v1/order/{reference}/shipments")
async def record_shipment(request: web.Request) -> web.Response:
    """Record a shipment of lines; 201 when recorded, 200 when this shipment_id was already recorded."""
    checked = await writer_request(request)
    if isinstance(checked, web.Response):
        return checked
    _, body, caller = checked
    try:
        req = msgspec.convert(body, ShipmentRequest, strict=False)
    except msgspec.ValidationError as exc:
        return failure(422, [validation_problem(exc)])
    reference = request.match_info["reference"]
    now = dt.datetime.now(dt.UTC)
    async with request.app[POOL].acquire() as conn, conn.transaction():
        order = await conn.fetchrow(QUERIES["shipment_order_lock"], caller.entity_id, reference)
        if order is None:
            return problem(404, "$.reference", "no such order for this entity")
        if caller.source_ids is not None and order["source_id"] not in caller.source_ids:
            return problem(403, "$.reference", f"this key may not act for source {order['source_id']!r}")
        if req.shipment_id is not None:
            known = await conn.fetchrow(QUERIES["shipment_find"], order["order_id"], req.shipment_id)
            if known is not None:
                return await _answer(conn, order["order_id"], known, order["state"], 200)
        if order["state"] == "shipped":
            return problem(422, "$.reference", f"order {reference!r} is shipped: no further changes are accepted")
        if order["state"] != "released":
            return problem(422, "$.reference",
                           f"order {reference!r} is {order['state']}: only released orders can be shipped")
        lines = [LineState(r["line_no"], r["sku"], r["qty"], r["qty_shipped"])
                 for r in await conn.fetch(QUERIES["shipment_lines_of_order"], order["order_id"])]
        shipped, error = _resolve_lines(req, lines)
        if error is not None:
            return problem(422, error[0], error[1])
        decision = decide_shipment(lines, shipped, flag_partial=order["flag_partial"],
                                   cod_amount=order["cod_amount"], partial_shipments=order["partial_shipments"])
        if decision.refusal is not None:
            return problem(422, "$.lines", decision.refusal)
        shipment_id = await conn.fetchval(QUERIES["shipment_insert"], order["order_id"], req.shipment_id,
                                          decision.partial, now)
        line_nos = sorted(shipped)
        await conn.execute(QUERIES["shipment_insert_lines"], shipment_id, line_nos, [shipped[n] for n in line_nos])
        await conn.execute(QUERIES["shipment_apply_lines"], order["order_id"], line_nos,
                           [shipped[n] for n in line_nos])
        state = "shipped" if decision.complete else "released"
        updated = await conn.fetchrow(QUERIES["shipment_update_order"], order["order_id"], state,
                                      int(decision.partial), now if decision.complete else None, now)
        await conn.execute(QUERIES["batch_insert_versions"], [order["order_id"]], [updated["version"]],
                           [updated["seq"]], [now], [f"shipment:{req.shipment_id or shipment_id}"],
                           ['["shipments", "state"]' if decision.complete else '["shipments"]'])
        if decision.complete:
            data = order_event_data(order["document"], state="shipped", status=order["status"],
                                    priority=order["priority"], release_at=order["release_at"],
                                    released_at=order["released_at"], source_id=order["source_id"],
                                    version=updated["version"])
            key = (caller.entity_id, reference)
            await write_events(conn, [Event(key, order["source_id"], "order.shipped", updated["version"],
                                            order["priority"], data)], {key: order["order_id"]}, now)
        recorded = {"external_id": req.shipment_id, "partial": decision.partial, "shipped_at": now,
                    "shipment_id": shipment_id}
        answer = await _answer(conn, order["order_id"], recorded, state, 201)
    if decision.complete:
        await request.app[QUEUE].mark_shipped(shipped_member(caller.entity_id, reference))
    log.info("shipment_recorded", entity_id=caller.entity_id, reference=reference,
             partial=decision.partial, complete=decision.complete)
    return answer


def _resolve_lines(req: ShipmentRequest, lines: list[LineState]) -> tuple[dict[int, int], tuple[str, str] | None]:
    """Shipped qty per line_no; lines named by sku must be unique in the order."""
    by_sku: dict[str, list[int]] = {}
    for line in lines:
        by_sku.setdefault(line.sku, []).append(line.line_no)
    shipped: dict[int, int] = {}
    for i, item in enumerate(req.lines):
        loc = f"$.lines[{i}]"
        if item.line_no is not None:
            line_no = item.line_no
        elif item.sku is not None:
            candidates = by_sku.get(item.sku, [])
            if len(candidates) != 1:
                why = "is not in the order" if not candidates else "is on several lines: name the line_no"
                return {}, (loc + ".sku", f"sku {item.sku!r} {why}")
            line_no = candidates[0]
        else:
            return {}, (loc, "give line_no or sku")
        shipped[line_no] = shipped.get(line_no, 0) + item.qty
    return shipped, None


async def _answer(conn: Any, order_id: int, shipment: Any, state: str, status: int) -> web.Response:
    lines = await conn.fetch(QUERIES["shipment_lines_of_order"], order_id)
    recorded = await conn.fetch(QUERIES["shipments_of_order"], order_id)
    this = next(r for r in recorded if r["shipment_id"] == shipment["shipment_id"])
    out = ShipmentOut(shipment_id=shipment["external_id"], partial=shipment["partial"],
                      shipped_at=shipment["shipped_at"], lines=this["lines"])
    return success(ShipmentAccepted(shipment=out, order_state=state,  # type: ignore[arg-type]
                                    items=[dict(r) for r in lines]), status=status)
