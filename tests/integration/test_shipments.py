"""Shipments over HTTP: flag_partial 0/1/2, COD, idempotent retries, shipped orders refuse changes."""

from __future__ import annotations

from typing import Any

from tests.conftest import order_body
from tests.integration.test_worker_rules import receipt

ENQUEUE = "/api/v1/order/enqueue"


async def released_order(http, server, consumer, headers, reference: str, **changes: Any) -> None:
    async with http.post(server.url + ENQUEUE, json=order_body(reference, status="1", **changes),
                         headers=headers) as resp:
        assert resp.status == 202, await resp.text()
    await consumer.drain()


async def ship(http, server, headers, reference: str, lines: list[dict[str, Any]], **extra: Any):
    async with http.post(f"{server.url}/api/v1/order/{reference}/shipments",
                         json={"lines": lines, **extra}, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_complete_shipment_marks_the_order_shipped(http, server, consumer, tenant, pool):
    headers = await tenant.headers()
    await released_order(http, server, consumer, headers, "S1")
    status, answer = await ship(http, server, headers, "S1", [{"sku": "DWS-43", "qty": 1}, {"line_no": 2, "qty": 2}])
    assert status == 201, answer
    assert answer["data"]["order_state"] == "shipped"
    assert [(i["line_no"], i["qty_shipped"]) for i in answer["data"]["items"]] == [(1, 1), (2, 2)]
    async with http.get(server.url + "/api/v1/order/S1", headers=headers) as resp:
        order = (await resp.json())["data"]
    assert order["state"] == "shipped" and len(order["shipments"]) == 1
    assert [(v["version"], v["changes"]) for v in order["versions"]] == [(1, ["*"]), (2, ["shipments", "state"])]
    assert order["version"] == 2
    shipped = await pool.fetchrow("SELECT version, data FROM order_events WHERE type = 'order.shipped'")
    assert shipped["version"] == 2 and shipped["data"]["version"] == 2


async def test_flag_0_refuses_partial(http, server, consumer, tenant):
    headers = await tenant.headers()
    await released_order(http, server, consumer, headers, "S2", flag_partial="0")
    status, answer = await ship(http, server, headers, "S2", [{"line_no": 1, "qty": 1}])
    assert status == 422
    assert answer["errors"][0]["loc"] == "$.lines" and "flag_partial 0" in answer["errors"][0]["msg"]


async def test_flag_1_allows_any_partial(http, server, consumer, tenant):
    headers = await tenant.headers()
    await released_order(http, server, consumer, headers, "S3", flag_partial="1")
    for lines in ([{"line_no": 2, "qty": 1}], [{"line_no": 2, "qty": 1}], [{"line_no": 1, "qty": 1}]):
        status, answer = await ship(http, server, headers, "S3", lines)
        assert status == 201, answer
    assert answer["data"]["order_state"] == "shipped"


async def test_flag_2_allows_one_partial_then_complete_only(http, server, consumer, tenant):
    headers = await tenant.headers()
    await released_order(http, server, consumer, headers, "S4", flag_partial="2")
    assert (await ship(http, server, headers, "S4", [{"line_no": 1, "qty": 1}]))[0] == 201
    status, answer = await ship(http, server, headers, "S4", [{"line_no": 2, "qty": 1}])
    assert status == 422 and "one partial shipment" in answer["errors"][0]["msg"]
    status, answer = await ship(http, server, headers, "S4", [{"line_no": 2, "qty": 2}])
    assert status == 201 and answer["data"]["order_state"] == "shipped"


async def test_cod_order_ships_complete_only(http, server, consumer, tenant):
    headers = await tenant.headers()
    await released_order(http, server, consumer, headers, "S5", cod_amount="9.95", flag_partial="1")
    status, answer = await ship(http, server, headers, "S5", [{"line_no": 1, "qty": 1}])
    assert status == 422 and "cash-on-delivery" in answer["errors"][0]["msg"]


async def test_retried_shipment_is_recorded_once(http, server, consumer, tenant, pool):
    headers = await tenant.headers()
    await released_order(http, server, consumer, headers, "S6", flag_partial="1")
    first = await ship(http, server, headers, "S6", [{"line_no": 2, "qty": 1}], shipment_id="box-1")
    again = await ship(http, server, headers, "S6", [{"line_no": 2, "qty": 1}], shipment_id="box-1")
    assert (first[0], again[0]) == (201, 200)
    assert await pool.fetchval("SELECT qty_shipped FROM order_lines WHERE line_no = 2") == 1


async def test_only_released_orders_ship_and_bad_lines_are_named(http, server, consumer, tenant):
    headers = await tenant.headers()
    async with http.post(server.url + ENQUEUE, json=order_body("S7"), headers=headers) as resp:
        assert resp.status == 202
    await consumer.drain()
    status, answer = await ship(http, server, headers, "S7", [{"line_no": 1, "qty": 1}])
    assert status == 422 and "is new" in answer["errors"][0]["msg"]
    await released_order(http, server, consumer, headers, "S8", flag_partial="1")
    cases = [([{"sku": "NOPE", "qty": 1}], "$.lines[0].sku"), ([{"line_no": 1, "qty": 5}], "$.lines"),
             ([{"line_no": 1, "qty": 0}], "$.lines[0].qty"), ([], "$.lines")]
    for lines, loc in cases:
        status, answer = await ship(http, server, headers, "S8", lines)
        assert (status, answer["errors"][0]["loc"]) == (422, loc), answer
    assert (await ship(http, server, headers, "NOPE", [{"line_no": 1, "qty": 1}]))[0] == 404


async def test_shipped_order_refuses_every_later_change(http, server, consumer, tenant, pool):
    headers = await tenant.headers()
    await released_order(http, server, consumer, headers, "S9")
    assert (await ship(http, server, headers, "S9", [{"line_no": 1, "qty": 1}, {"line_no": 2, "qty": 2}]))[0] == 201
    # the receiver refuses at once
    async with http.post(server.url + ENQUEUE, json=order_body("S9", status="9"), headers=headers) as resp:
        assert resp.status == 422
        answer = await resp.json()
    assert answer["errors"][0]["loc"] == "$.payload.reference" and "shipped" in answer["errors"][0]["msg"]
    status, answer = await ship(http, server, headers, "S9", [{"line_no": 1, "qty": 1}])
    assert status == 422 and "shipped" in answer["errors"][0]["msg"]
    # and the worker refuses too when Redis no longer knows (flushed): the receipt says why
    await server.app[__import__("ingest.keys", fromlist=["REDIS"]).REDIS].delete(
        consumer.queue.keys.shipped)
    async with http.post(server.url + ENQUEUE, json=order_body("S9", status="9"), headers=headers) as resp:
        assert resp.status == 202
        rid = (await resp.json())["data"]["receipt_id"]
    await consumer.drain()
    r = await receipt(pool, rid)
    assert (r["state"], r["code"]) == ("rejected", 422) and "shipped" in r["reason"]
    assert await pool.fetchval("SELECT state FROM orders WHERE reference = 'S9'") == "shipped"
