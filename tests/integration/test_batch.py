"""POST /api/v1/order/enqueue/batch: one result per order in request order, valid ones in one Redis step."""

from __future__ import annotations

import msgspec
import pytest

from shared.queue import IngestQueue
from tests.conftest import order_body

BATCH = "/api/v1/order/enqueue/batch"


async def post_batch(http, server, headers, orders):
    async with http.post(server.url + BATCH, json={"orders": orders}, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_each_order_gets_its_own_result_in_order(http, server, tenant, consumer, pool):
    headers = await tenant.headers()
    good = order_body("B1")["payload"]
    wrapped = {"payload": order_body("B2", gift="yes")["payload"]}
    bad = order_body("B3", currency="")["payload"]
    bad["items"][0]["qty"] = -1
    also_good = order_body("B4", priority=9)["payload"]
    status, answer = await post_batch(http, server, headers, [good, wrapped, bad, also_good, "nope"])
    assert status == 207
    results = answer["data"]["results"]
    assert [r["index"] for r in results] == [0, 1, 2, 3, 4]
    assert [r["status"] for r in results] == [202, 202, 422, 202, 422]
    assert answer["data"]["accepted"] == 3 and answer["data"]["refused"] == 2
    assert {e["loc"] for e in results[2]["errors"]} == {"$.orders[2].currency", "$.orders[2].items[0].qty"}
    assert results[1]["warnings"][0]["loc"] == "$.orders[1].payload.gift"
    assert results[4]["errors"][0]["loc"] == "$.orders[4]"
    assert results[0]["receipt"]["reference"] == "B1"
    assert await consumer.drain() == 3
    refs = {r["reference"] for r in await pool.fetch("SELECT reference FROM orders")}
    assert refs == {"B1", "B2", "B4"}


async def test_valid_orders_go_to_redis_in_one_step(http, server, tenant, monkeypatch):
    calls = []
    original = IngestQueue.enqueue_many

    async def counting(self, items, **kw):  # type: ignore[no-untyped-def]
        calls.append(len(items))
        return await original(self, items, **kw)

    monkeypatch.setattr(IngestQueue, "enqueue_many", counting)
    orders = [order_body(f"C{i}")["payload"] for i in range(500)]
    status, answer = await post_batch(http, server, await tenant.headers(), orders)
    assert status == 207 and answer["data"]["accepted"] == 500
    assert calls == [500]


async def test_limits_and_auth(http, server, tenant):
    headers = await tenant.headers()
    status, answer = await post_batch(http, server, headers, [order_body(f"D{i}")["payload"] for i in range(501)])
    assert (status, answer["errors"][0]["loc"]) == (422, "$.orders")
    assert (await post_batch(http, server, headers, []))[0] == 422
    assert (await post_batch(http, server, {}, [order_body()["payload"]]))[0] == 401
    assert (await post_batch(http, server, await tenant.headers(rights=("admin",)), [order_body()["payload"]]))[0] == 403


class TestRateLimit:
    @pytest.fixture
    def settings(self, settings):
        return msgspec.structs.replace(settings, rate_per_key=2)

    async def test_rate_limited_orders_are_429_in_their_slot(self, http, server, tenant):
        status, answer = await post_batch(http, server, await tenant.headers(),
                                          [order_body(f"E{i}")["payload"] for i in range(4)])
        statuses = [r["status"] for r in answer["data"]["results"]]
        assert status == 207 and statuses.count(202) == 2 and statuses.count(429) == 2
