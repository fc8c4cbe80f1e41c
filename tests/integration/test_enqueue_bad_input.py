"""Every row of DESIGN.md's bad-input table, over real HTTP, with nothing handed to Redis."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis

from shared.redis_keys import RedisKeys
from shared.settings import Settings
from tests.conftest import Server, Tenant, fixture_path, order_body, serve_receiver

ENQUEUE = "/api/v1/order/enqueue"


async def queued(redis: aioredis.Redis, settings: Settings) -> int:
    """Payloads handed to Redis (the ready set and the payload hash must agree)."""
    keys = RedisKeys.for_prefix(settings.redis_prefix)
    ready, payloads = int(await redis.zcard(keys.ready)), int(await redis.hlen(keys.payloads))
    assert ready == payloads
    return ready


async def post(http: Any, server: Server, body: Any, headers: dict[str, str] | None = None,
               raw: bytes | None = None) -> tuple[int, dict[str, Any], Any]:
    import io

    data = io.BytesIO(raw if raw is not None else json.dumps(body).encode())
    async with http.post(server.url + ENQUEUE, data=data, headers=headers or {}) as resp:
        return resp.status, await resp.json(), resp.headers


async def test_published_example_is_400_with_byte_offset(http, server, tenant: Tenant, redis, settings):
    raw = fixture_path("order-seed-example-as-published.json").read_bytes()
    status, answer, _ = await post(http, server, None, await tenant.headers(), raw=raw)
    assert status == 400
    assert answer["status"] == "failure"
    offset = answer["data"]["byte_offset"]
    assert isinstance(offset, int) and 0 < offset < len(raw)
    assert f"byte {offset}" in answer["errors"][0]["msg"]
    assert await queued(redis, settings) == 0


async def test_not_json_is_400(http, server, tenant: Tenant, redis, settings):
    status, answer, _ = await post(http, server, None, await tenant.headers(), raw=b"order=1&x=2")
    assert status == 400
    assert answer["data"]["byte_offset"] == 0
    assert await queued(redis, settings) == 0


async def test_a_body_that_is_not_utf8_is_400_with_its_byte_offset(http, server, tenant: Tenant, redis, settings):
    raw = json.dumps(order_body()).encode().replace(b'_city": "', b'_city": "\xff', 1)
    status, answer, _ = await post(http, server, None, await tenant.headers(), raw=raw)
    assert status == 400, answer
    assert answer["data"]["byte_offset"] == raw.index(b"\xff")
    assert await queued(redis, settings) == 0


async def test_unknown_entity_and_wrong_key_get_the_same_401(http, server, tenant: Tenant, redis, settings):
    _, access_key = await tenant.key()
    body = order_body()
    answers = []
    for key, entity in [(access_key, "ent_nope"), (access_key[:-3] + "xyz", tenant.entity_id),
                        ("garbage", tenant.entity_id), (None, None)]:
        headers = {"CG-Access-Key": key, "CG-Entity-ID": entity} if key else {}
        status, answer, _ = await post(http, server, body, headers)
        assert status == 401
        answers.append(answer)
    assert all(a == answers[0] for a in answers)
    assert await queued(redis, settings) == 0


async def test_credentials_in_the_body_work_too(http, server, tenant: Tenant):
    _, access_key = await tenant.key()
    body = {"access_key": access_key, "entity_id": tenant.entity_id, **order_body()}
    status, answer, _ = await post(http, server, body)
    assert status == 202, answer
    assert answer["data"]["reference"] == "000000032"


async def test_key_without_write_right_is_403(http, server, tenant: Tenant, redis, settings):
    headers = await tenant.headers(rights=("admin",))
    status, answer, _ = await post(http, server, order_body(), headers)
    assert status == 403
    assert "orders:write" in answer["errors"][0]["msg"]
    assert await queued(redis, settings) == 0


async def test_key_limited_to_other_sources_is_403(http, server, tenant: Tenant, redis, settings):
    headers = await tenant.headers(sources=["amazon"])
    status, answer, _ = await post(http, server, order_body(), headers)
    assert status == 403
    assert answer["errors"][0]["loc"] == "$.payload.source_id"
    assert "mage2" in answer["errors"][0]["msg"]
    assert await queued(redis, settings) == 0


async def test_body_over_the_limit_is_413(http, server, tenant: Tenant, redis, settings):
    body = order_body(filler="x" * (settings.max_body_bytes + 10))
    status, answer, _ = await post(http, server, body, await tenant.headers())
    assert status == 413
    assert answer["status"] == "failure"
    assert await queued(redis, settings) == 0


async def test_rule_violations_are_422_with_every_failing_loc(http, server, tenant: Tenant, redis, settings):
    body = order_body(reference="", currency="US", status="5", type=None, flag_partial=7,
                      delivery_at="tomorrow", billing_country="XX", shipping_firstname="",
                      shipping_street_full="Main Street")
    body["payload"]["items"][0]["qty"] = 0
    body["payload"]["items"][1]["sku"] = ""
    body["payload"]["items"][1]["unit_price"] = "12,50"
    body["payload"]["items"][1]["cost"] = "3.00"
    status, answer, _ = await post(http, server, body, await tenant.headers())
    assert status == 422
    locs = {e["loc"] for e in answer["errors"]}
    assert locs == {
        "$.payload.reference", "$.payload.currency", "$.payload.status", "$.payload.type",
        "$.payload.flag_partial", "$.payload.delivery_at", "$.payload.billing_country",
        "$.payload.shipping_firstname", "$.payload.shipping_street_full",
        "$.payload.items[0].qty", "$.payload.items[1].sku", "$.payload.items[1].unit_price",
        "$.payload.items[1].cost",
    }
    assert await queued(redis, settings) == 0


async def test_wrong_shape_is_422_at_its_path(http, server, tenant: Tenant, redis, settings):
    body = order_body()
    body["payload"]["items"][1]["qty"] = {"n": 2}
    status, answer, _ = await post(http, server, body, await tenant.headers())
    assert status == 422
    assert answer["errors"][0]["loc"] == "$.payload.items[1].qty"
    assert await queued(redis, settings) == 0


async def test_no_items_and_no_payload_are_422(http, server, tenant: Tenant):
    headers = await tenant.headers()
    status, answer, _ = await post(http, server, order_body(items=[]), headers)
    assert (status, answer["errors"][0]["loc"]) == (422, "$.payload.items")
    status, answer, _ = await post(http, server, {"hello": 1}, headers)
    assert (status, answer["errors"][0]["loc"]) == (422, "$.payload")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    import msgspec

    return msgspec.structs.replace(settings, rate_per_key=3)


async def test_over_the_key_rate_is_429_with_retry_after(http, server, tenant: Tenant, redis, settings):
    headers = await tenant.headers()
    statuses = []
    for i in range(8):
        status, answer, resp_headers = await post(http, server, order_body(f"R{i}"), headers)
        statuses.append(status)
        if status == 429:
            assert resp_headers["Retry-After"] == "1"
            assert answer["status"] == "failure"
    assert statuses.count(202) >= 3 and statuses.count(429) >= 1
    # only the accepted ones reached the queue
    assert await queued(redis, settings) == statuses.count(202)


async def test_redis_unreachable_is_503_never_202(http, tenant: Tenant, settings):
    down = msgspec.structs.replace(settings, redis_url="redis://127.0.0.1:1/0")
    async with serve_receiver(down) as receiver:
        status, answer, _ = await post(http, receiver, order_body(), await tenant.headers())
    assert status == 503
    assert answer["status"] == "failure"


async def test_unknown_fields_are_accepted_and_warned(http, server, tenant: Tenant, consumer, pool):
    body = order_body(gift_message="Happy birthday")
    body["payload"]["items"][0]["colour"] = "orange"
    status, answer, _ = await post(http, server, body, await tenant.headers())
    assert status == 202
    locs = {w["loc"] for w in answer["warnings"]}
    assert {"$.payload.gift_message", "$.payload.items[0].colour"} <= locs
    await consumer.drain()
    raw = await pool.fetchval("SELECT raw FROM orders WHERE reference = '000000032'")
    assert raw["gift_message"] == "Happy birthday"
    assert raw["items"][0]["colour"] == "orange"
    assert "access_key" not in json.dumps(raw)
