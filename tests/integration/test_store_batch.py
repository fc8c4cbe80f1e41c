"""store_batch's one-statement write (batch_store) with envelopes as the receiver makes them."""

from __future__ import annotations

import datetime as dt
import json
import secrets
import time
from typing import Any

from shared.events import order_event_data
from shared.queue import make_envelope
from shared.rules.lifecycle import place
from shared.rules.order import OrderInvalid, normalize_order, parse_request
from shared.schemas import Header, json_encoder
from shared.zones import zone_named
from tests.conftest import Tenant, order_body
from worker.store import store_batch

T0 = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)


class Envelopes:
    """Envelopes with the normalised order in them (ingest/accept.py), numbered like the queue."""

    def __init__(self, tenant: Tenant, key_id: str) -> None:
        self.tenant, self.key_id, self.seq = tenant, key_id, 0
        self.orders: dict[int, bytes] = {}

    def make(self, payload: dict[str, Any]) -> tuple[int, bytes]:
        self.seq += 1
        try:
            order, _ = normalize_order(parse_request({"payload": payload}).payload,
                                       zone_named("UTC"))
        except OrderInvalid:  # an invalid order travels without its normalised form
            order_json, reference, priority = None, str(payload.get("reference", "")), 0
        else:
            order_json, reference, priority = json_encoder.encode(order), order.reference, order.priority
            self.orders[self.seq] = order_json
        header = Header(token=secrets.token_hex(6), entity_id=self.tenant.entity_id,
                        key_id=self.key_id, can_create_products=True, timezone="UTC",
                        received_at=time.time(), priority=priority, reference=reference)
        envelope = make_envelope(json_encoder.encode(header), json_encoder.encode(payload), order_json)
        return self.seq, envelope


async def envelopes(tenant: Tenant) -> Envelopes:
    key_id, _ = await tenant.key()
    return Envelopes(tenant, key_id)


async def test_one_batch_of_creates_updates_and_rejections(tenant, pool):
    e = await envelopes(tenant)
    batch = [
        e.make(order_body("A")["payload"]),
        e.make(order_body("B", status="1", delivery_at="2031-01-01 10:00:00")["payload"]),  # scheduled
        e.make(order_body("C", status="1", cod_amount="12.50")["payload"]),  # released now
        e.make(order_body("A", customer_id="2")["payload"]),  # A again in the same batch
        e.make(order_body("D", currency="")["payload"]),  # invalid: rejected, no order
        e.make(order_body("B", source_id="ebay")["payload"]),  # another source: rejected
    ]
    async with pool.acquire() as conn:
        receipts = await store_batch(conn, batch, T0)
    assert [(r.state, r.code) for r in receipts] == [
        ("stored", 200), ("stored", 200), ("stored", 200), ("stored", 200), ("rejected", 422),
        ("rejected", 409)]

    orders = {r["reference"]: r for r in await pool.fetch(
        "SELECT order_id, reference, state, version, cod_amount::text, document::text FROM orders")}
    assert {k: (r["state"], r["version"]) for k, r in orders.items()} == {
        "A": ("new", 2), "B": ("scheduled", 1), "C": ("released", 1)}
    assert orders["C"]["cod_amount"] == "12.50"
    assert orders["A"]["document"] == e.orders[4].decode()

    # every order's lines and addresses, under its own id
    lines = await pool.fetch(
        "SELECT order_id, line_no, sku, weight::text FROM order_lines ORDER BY order_id, line_no")
    assert [(r["order_id"], r["line_no"]) for r in lines] == sorted(
        (orders[k]["order_id"], n) for k in "ABC" for n in (1, 2))
    assert [r["weight"] for r in lines if r["line_no"] == 2] == ["1.2"] * 3
    kinds = await pool.fetch("SELECT order_id, kind FROM addresses ORDER BY order_id, kind")
    assert len(kinds) == 6 and {r["order_id"] for r in kinds} == {r["order_id"] for r in orders.values()}

    versions = await pool.fetch(
        "SELECT order_id, version, seq, changes FROM order_versions ORDER BY order_id, version")
    assert [(r["order_id"], r["version"], r["seq"], r["changes"]) for r in versions] == [
        (orders["A"]["order_id"], 1, 1, ["*"]), (orders["A"]["order_id"], 2, 4, ["customer_id"]),
        (orders["B"]["order_id"], 1, 2, ["*"]), (orders["C"]["order_id"], 1, 3, ["*"])]

    rows = await pool.fetch("SELECT receipt_id, order_id FROM receipts")
    by_receipt = {r["receipt_id"]: r["order_id"] for r in rows}
    assert [by_receipt[r.receipt_id] for r in receipts] == [
        orders["A"]["order_id"], orders["B"]["order_id"], orders["C"]["order_id"],
        orders["A"]["order_id"], None, None]

    # the outbox: in payload order, each carrying the order as that payload made it, as text
    events = await pool.fetch(
        "SELECT order_id, reference, type, version, data::text FROM order_events ORDER BY event_id")
    assert [(r["reference"], r["type"], r["version"]) for r in events] == [
        ("A", "order.created", 1), ("B", "order.created", 1), ("C", "order.created", 1),
        ("C", "order.released", 1), ("A", "order.updated", 2), ("D", "order.rejected", 0),
        ("B", "order.rejected", 1)]
    for row, seq in zip(events[:5], (1, 2, 3, 3, 4), strict=True):
        document = json.loads(e.orders[seq])
        delivery_at = document["delivery_at"] and dt.datetime.fromisoformat(document["delivery_at"])
        placement = place(document["status"], delivery_at, T0)
        expected = order_event_data(
            document, state=placement.state, status=document["status"], priority=document["priority"],
            release_at=placement.release_at, released_at=placement.released_at,
            source_id=document["source_id"], version=row["version"])
        assert row["data"] == json_encoder.encode(expected).decode()
        assert row["order_id"] == orders[row["reference"]]["order_id"]
    assert json.loads(events[6]["data"])["reason"] == "reference 'B' belongs to source 'mage2'"
    assert events[5]["order_id"] is None


async def test_updates_rewrite_lines_and_addresses_only_where_they_changed(tenant, pool):
    e = await envelopes(tenant)
    async with pool.acquire() as conn:
        await store_batch(conn, [e.make(order_body("U")["payload"])], T0)
        oid = await pool.fetchval("SELECT order_id FROM orders WHERE reference = 'U'")
        await pool.execute("UPDATE order_lines SET description = 'kept' WHERE order_id = $1", oid)
        await store_batch(conn, [e.make(order_body("U", billing_city="Boston")["payload"])], T0)
        # only the billing address changed: the lines stay as they are
        assert await pool.fetchval("SELECT count(*) FROM order_lines WHERE description = 'kept'") == 2
        city = "SELECT city FROM addresses WHERE order_id = $1 AND kind = 'billing'"
        assert await pool.fetchval(city, oid) == "Boston"
        body = order_body("U", billing_city="Boston")["payload"]
        body["items"] = body["items"][1:]
        await store_batch(conn, [e.make(body)], T0)
    lines = await pool.fetch(
        "SELECT line_no, sku, description FROM order_lines WHERE order_id = $1", oid)
    assert [tuple(r) for r in lines] == [(1, "DWS-44", "Dutch Wooden Shoes Size 44")]
    assert await pool.fetchval("SELECT count(*) FROM addresses WHERE order_id = $1", oid) == 2
    assert [r["changes"] for r in await pool.fetch(
        "SELECT changes FROM order_versions WHERE order_id = $1 ORDER BY version", oid)] == [
        ["*"], ["billing"], ["items"]]
