"""The worker's decisions against real PostgreSQL and Redis: guard, ownership, repeats, SKUs, bad batch-mates."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import secrets
import time
from typing import Any

import msgspec

from shared.queue import IngestQueue, make_envelope, receipt_id
from shared.redis_keys import RedisKeys
from shared.schemas import Header, json_encoder
from tests.conftest import Tenant, order_body
from worker.store import store_batch

T0 = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)


class Feeder:
    """Puts payloads on the queue exactly as the receiver does (header + payload JSON)."""

    def __init__(self, queue: IngestQueue, tenant: Tenant, key_id: str, can_create: bool = True) -> None:
        self.queue, self.tenant, self.key_id, self.can_create = queue, tenant, key_id, can_create

    async def put(self, payload: dict[str, Any], priority: int = 0) -> str:
        token = secrets.token_hex(6)
        header = Header(token=token, entity_id=self.tenant.entity_id, key_id=self.key_id,
                        can_create_products=self.can_create, timezone="UTC", received_at=time.time(),
                        priority=priority, reference=str(payload.get("reference", "")))
        env = make_envelope(json_encoder.encode(header), json.dumps(payload).encode())
        [seq] = await self.queue.enqueue_many([(priority, self.key_id, "test", env)])
        return receipt_id(seq, token)


async def feeder(consumer, tenant: Tenant, can_create: bool = True) -> Feeder:
    key_id, _ = await tenant.key()
    return Feeder(consumer.queue, tenant, key_id, can_create)


async def receipt(pool, rid: str) -> dict[str, Any]:
    row = await pool.fetchrow("SELECT * FROM receipts WHERE receipt_id = $1", rid)
    assert row is not None, rid
    return dict(row)


async def test_update_applies_and_older_payload_is_superseded(consumer, tenant, pool):
    f = await feeder(consumer, tenant)
    first = await f.put(order_body("A1")["payload"])
    second = await f.put(order_body("A1", shipping_city="Boston")["payload"])
    # the newer payload is stored first (as when two workers race and the second is faster)
    await consumer.queue.redis.zadd(consumer.queue.keys.ready, {"1": 8_500_000_000_000_000})
    consumer.settings = msgspec.structs.replace(consumer.settings, claim_batch=1)
    await consumer.drain()
    assert (await receipt(pool, second))["state"] == "stored"
    r1 = await receipt(pool, first)
    assert r1["state"] == "superseded" and "sequence 2" in r1["reason"]
    city = await pool.fetchval("SELECT city FROM addresses WHERE kind = 'shipping'")
    assert city == "Boston"
    assert await pool.fetchval("SELECT version FROM orders") == 1


async def test_updates_in_one_batch_apply_in_sequence_order(consumer, tenant, pool):
    f = await feeder(consumer, tenant)
    await f.put(order_body("A0")["payload"])
    await f.put(order_body("A0", shipping_city="Boston")["payload"])
    await f.put(order_body("A0", shipping_city="Chicago")["payload"])
    assert await consumer.run_once() == 3
    assert await pool.fetchval("SELECT city FROM addresses WHERE kind = 'shipping'") == "Chicago"
    assert await pool.fetchval("SELECT version FROM orders") == 3


async def test_updates_in_order_make_versions_with_changes(consumer, tenant, pool):
    f = await feeder(consumer, tenant)
    await f.put(order_body("A2")["payload"])
    await consumer.drain()
    await f.put(order_body("A2", shipping_city="Boston", priority=3)["payload"])
    await consumer.drain()
    versions = await pool.fetch("SELECT version, seq, changes FROM order_versions ORDER BY version")
    assert [(v["version"], v["seq"], v["changes"]) for v in versions] == [
        (1, 1, ["*"]), (2, 2, ["priority", "shipping"])]


async def test_identical_repeat_changes_nothing(consumer, tenant, pool):
    f = await feeder(consumer, tenant)
    await f.put(order_body("A3")["payload"])
    await consumer.drain()
    before = dict(await pool.fetchrow("SELECT updated_at, version, content_hash FROM orders"))
    rid = await f.put(order_body("A3")["payload"])
    await consumer.drain()
    after = dict(await pool.fetchrow("SELECT updated_at, version, content_hash, seq FROM orders"))
    assert after.pop("seq") == 2  # the guard moves on so an older payload still loses
    assert after == before
    r = await receipt(pool, rid)
    assert (r["state"], r["reason"]) == ("stored", "identical repeat: nothing changed")
    assert await pool.fetchval("SELECT count(*) FROM order_versions") == 1


async def test_reference_of_another_source_is_rejected_naming_it(consumer, tenant, pool):
    f = await feeder(consumer, tenant)
    await f.put(order_body("A4")["payload"])
    rid = await f.put(order_body("A4", source_id="amazon")["payload"])
    await consumer.drain()
    r = await receipt(pool, rid)
    assert (r["state"], r["code"]) == ("rejected", 409)
    assert "'mage2'" in r["reason"]
    assert await pool.fetchval("SELECT source_id FROM orders") == "mage2"
    # kept for a retry from the dashboard
    kept = await pool.fetchval("SELECT envelope FROM failed_payloads WHERE receipt_id = $1", rid)
    assert b'"amazon"' in bytes(kept)


async def test_unknown_sku_without_product_right_is_rejected_naming_it(consumer, tenant, pool):
    f = await feeder(consumer, tenant, can_create=False)
    rid = await f.put(order_body("A5")["payload"])
    await consumer.drain()
    r = await receipt(pool, rid)
    assert (r["state"], r["code"]) == ("rejected", 422)
    assert "'DWS-43'" in r["reason"] and "'DWS-44'" in r["reason"]
    assert await pool.fetchval("SELECT count(*) FROM orders") == 0
    assert await pool.fetchval("SELECT count(*) FROM products") == 0
    # once the products exist, the same key may order them
    await pool.execute("INSERT INTO products (entity_id, sku) VALUES ($1, 'DWS-43'), ($1, 'DWS-44')",
                       tenant.entity_id)
    rid = await f.put(order_body("A5")["payload"])
    await consumer.drain()
    assert (await receipt(pool, rid))["state"] == "stored"


async def test_one_bad_order_never_fails_its_batch_mates(consumer, tenant, pool):
    f = await feeder(consumer, tenant)
    good = [await f.put(order_body(f"G{i}")["payload"]) for i in range(5)]
    # passes the rules but PostgreSQL refuses a NUL character in text
    bad = await f.put(order_body("BAD", customer_id="x\u0000y")["payload"])
    good.append(await f.put(order_body("G9")["payload"]))
    assert await consumer.run_once() == 7  # one claim, one batch
    assert [(await receipt(pool, rid))["state"] for rid in good] == ["stored"] * 6
    r = await receipt(pool, bad)
    assert r["state"] == "rejected" and "could not be stored" in r["reason"]
    assert await pool.fetchval("SELECT count(*) FROM orders") == 6
    assert await consumer.queue.depth() == {"ready": 0, "leased": 0}


async def test_change_after_release_is_limited(consumer, tenant, pool):
    f = await feeder(consumer, tenant)
    await f.put(order_body("A6", status="1")["payload"])
    await consumer.drain()
    assert await pool.fetchval("SELECT state FROM orders") == "released"
    body = order_body("A6", status="1")
    body["payload"]["items"][0]["qty"] = 5
    refused = await f.put(body["payload"])
    allowed = await f.put(order_body("A6", status="1", shipping_city="Boston", priority=9)["payload"])
    await consumer.drain()
    r = await receipt(pool, refused)
    assert r["state"] == "rejected" and "items" in r["reason"] and "released" in r["reason"]
    assert (await receipt(pool, allowed))["state"] == "stored"
    row = await pool.fetchrow("SELECT state, priority, version FROM orders")
    assert (row["state"], row["priority"], row["version"]) == ("released", 9, 2)


async def test_batch_is_claimed_in_priority_order(consumer, tenant, pool):
    f = await feeder(consumer, tenant)
    for i, priority in enumerate([0, 5, -3, 5, 10, 0]):
        await f.put(order_body(f"P{i}", priority=priority)["payload"], priority=priority)
    claimed = await consumer.queue.claim(10, 30)
    refs = [json.loads(env.split(b"\n", 1)[1])["reference"] for _, env in claimed]
    assert refs == ["P4", "P1", "P3", "P0", "P5", "P2"]


async def test_expired_lease_goes_back_to_ready(consumer, tenant, pool):
    f = await feeder(consumer, tenant)
    await f.put(order_body("L1")["payload"])
    assert len(await consumer.queue.claim(10, 0.001)) == 1
    await consumer.queue.redis.zadd(consumer.queue.keys.leased, {"1": 0})  # lease long expired
    assert await consumer.drain() == 1
    assert await pool.fetchval("SELECT count(*) FROM orders") == 1
    assert await consumer.queue.depth() == {"ready": 0, "leased": 0}


async def test_hand_back_restores_the_place(consumer, tenant):
    f = await feeder(consumer, tenant)
    await f.put(order_body("H1", priority=5)["payload"], priority=5)
    await f.put(order_body("H2")["payload"])
    claimed = await consumer.queue.claim(1, 30)
    assert await consumer.queue.hand_back([seq for seq, _ in claimed]) == 1
    again = await consumer.queue.claim(1, 30)
    assert again[0][0] == claimed[0][0]


async def test_changes_write_outbox_events_in_the_same_transaction(consumer, tenant, pool):
    f = await feeder(consumer, tenant)
    await f.put(order_body("E1")["payload"])
    await f.put(order_body("E1")["payload"])  # identical: emits nothing
    await f.put(order_body("E1", status="1")["payload"])
    await f.put(order_body("E1", source_id="ebay")["payload"])
    await consumer.drain()
    rows = await pool.fetch("SELECT type, version, source_id, data FROM order_events ORDER BY event_id")
    assert [(r["type"], r["version"]) for r in rows] == [
        ("order.created", 1), ("order.updated", 2), ("order.released", 2), ("order.rejected", 2)]
    assert rows[2]["data"]["state"] == "released" and rows[2]["data"]["source_id"] == "mage2"
    assert rows[3]["source_id"] == "ebay" and "'mage2'" in rows[3]["data"]["reason"]


async def test_paused_queue_claims_nothing_and_counts_live(consumer, tenant, pool, redis):
    f = await feeder(consumer, tenant)
    await consumer.queue.pause(True)
    await f.put(order_body("Q1", status="1")["payload"])
    assert await consumer.queue.is_paused()
    assert await consumer.run_once() == 0
    assert await consumer.queue.depth() == {"ready": 1, "leased": 0}
    await consumer.queue.pause(False)
    assert await consumer.drain() == 1
    totals: dict[str, int] = {}
    async for key in redis.scan_iter(match=consumer.queue.keys.stats + "*"):
        for name, n in (await redis.hgetall(key)).items():
            totals[name.decode()] = totals.get(name.decode(), 0) + int(n)
    assert totals == {"received": 1, "stored": 1, "released": 1}


async def test_aging_lets_a_long_waiting_payload_jump_the_queue(consumer, tenant, redis):
    f = await feeder(consumer, tenant)
    await f.put(order_body("LOW", priority=-5)["payload"], priority=-5)
    for i in range(3):
        await f.put(order_body(f"HIGH{i}", priority=5)["payload"], priority=5)
    keys = consumer.queue.keys
    assert [seq for seq, _ in await consumer.queue.claim(1, 30)] == [2]  # strict: the high one
    await consumer.queue.hand_back([2])
    # make LOW look 10 minutes old; with aging at 60 s it goes first
    await redis.zadd(keys.arrivals, {"1": 0})
    assert [seq for seq, _ in await consumer.queue.claim(2, 30, aging_s=60)] == [1, 2]
    await consumer.queue.ack([1, 2])
    assert await redis.zcard(keys.arrivals) == 2  # only the two still waiting


async def test_a_lost_sequence_counter_restarts_above_what_is_stored(http, server, tenant, consumer, pool, redis):
    headers = await tenant.headers()
    for city in ("A", "B", "C"):
        async with http.post(server.url + "/api/v1/order/enqueue", json=order_body("SQ", shipping_city=city),
                             headers=headers) as resp:
            assert resp.status == 202
    await consumer.drain()
    await redis.delete(consumer.queue.keys.seq)  # Redis lost its data
    async with http.post(server.url + "/api/v1/order/enqueue", json=order_body("SQ", status="9"),
                         headers=headers) as resp:
        assert resp.status == 202
        rid = (await resp.json())["data"]["receipt_id"]
    assert rid.startswith("rcpt_4_")
    await consumer.drain()
    assert (await receipt(pool, rid))["state"] == "stored"
    assert await pool.fetchval("SELECT state FROM orders WHERE reference = 'SQ'") == "cancelled"


async def test_a_payload_processed_twice_emits_its_rejection_once(consumer, tenant, pool):
    f = await feeder(consumer, tenant)
    await f.put(order_body("RJ")["payload"])
    await f.put(order_body("RJ", source_id="ebay")["payload"])
    batch = await consumer.queue.claim(10, 30)
    async with pool.acquire() as conn:
        await store_batch(conn, batch, T0)
        await store_batch(conn, batch, T0)  # as if the lease expired after the commit
    types = [r["type"] for r in await pool.fetch("SELECT type FROM order_events ORDER BY event_id")]
    assert types == ["order.created", "order.rejected"]


async def test_two_workers_racing_on_the_same_new_references(consumer, tenant, pool, settings):
    from shared.db import create_pool

    f = await feeder(consumer, tenant)
    refs = [f"NR{i}" for i in range(30)]
    envs_a = [await f.put(order_body(r, shipping_city="A")["payload"]) for r in refs]
    envs_b = [await f.put(order_body(r, shipping_city="B")["payload"]) for r in reversed(refs)]
    assert len(envs_a) == len(envs_b) == 30
    claimed = await consumer.queue.claim(60, 30)
    first, second = claimed[:30], claimed[30:]
    pools = [await create_pool(settings.database_url, min_size=1, max_size=1) for _ in range(2)]
    try:
        async def run(p, batch):
            async with p.acquire() as conn:
                return await store_batch(conn, batch, T0)

        results = await asyncio.gather(run(pools[0], first), run(pools[1], second))
    finally:
        for p in pools:
            await p.close()
    assert sum(len(r) for r in results) == 60
    assert await pool.fetchval("SELECT count(*) FROM orders") == 30
    # the later payload (B) wins everywhere, whatever order the two transactions ran in
    cities = {r["city"] for r in await pool.fetch("SELECT city FROM addresses WHERE kind = 'shipping'")}
    assert cities == {"B"}
    assert await pool.fetchval("SELECT count(*) FROM order_versions WHERE version > 2") == 0


async def test_poison_payloads_are_refused_at_the_door(http, server, tenant, redis, settings):
    headers = await tenant.headers()
    cases = [order_body("BAD\u0000X"), order_body("OK", gift="a\u0000b"), order_body("OK", **{"k\u0000": 1})]
    big = order_body("OK")
    big["payload"]["items"][0]["qty"] = "99999999999"
    cases.append(big)
    for body in cases:
        async with http.post(server.url + "/api/v1/order/enqueue", json=body, headers=headers) as resp:
            assert resp.status == 422, await resp.text()
    assert await redis.zcard(RedisKeys.for_prefix(settings.redis_prefix).ready) == 0


async def test_older_poison_in_the_queue_does_not_stall_it(consumer, tenant, pool):
    f = await feeder(consumer, tenant)
    good = await f.put(order_body("G1")["payload"])
    bad = await f.put(order_body("BAD\u0000X")["payload"])  # accepted before the receiver checked
    over = order_body("OVER")["payload"]
    over["items"][0]["qty"] = 99999999999
    too_big = await f.put(over)
    assert await consumer.drain() == 3
    assert (await receipt(pool, good))["state"] == "stored"
    assert (await receipt(pool, bad))["state"] == "rejected"
    assert (await receipt(pool, too_big))["state"] == "rejected"
    assert await consumer.queue.depth() == {"ready": 0, "leased": 0}


async def test_unreadable_payload_is_set_aside_not_retried(consumer, tenant, pool, redis):
    f = await feeder(consumer, tenant)
    good = await f.put(order_body("OK1")["payload"])
    [seq] = await consumer.queue.enqueue_many([(0, "k", "a", b'["not-a-header"]\n{}')])
    assert await consumer.drain() == 2
    assert (await receipt(pool, good))["state"] == "stored"
    assert await redis.hexists(consumer.queue.keys.dead, str(seq))
    assert await consumer.queue.depth() == {"ready": 0, "leased": 0}


async def test_linger_leaves_a_short_queue_until_it_fills_or_its_head_has_waited(consumer, tenant, redis):
    f = await feeder(consumer, tenant)
    for i in range(3):
        await f.put(order_body(f"LG{i}")["payload"])
    queue = consumer.queue
    # 3 ready, fill 5, the head arrived just now: nothing yet
    assert await queue.claim(10, 30, linger_s=60, fill=5) == []
    assert await queue.depth() == {"ready": 3, "leased": 0}
    # the head (seq 1) has waited longer than the linger: the short batch goes
    await redis.zadd(queue.keys.arrivals, {"1": 0})
    assert [seq for seq, _ in await queue.claim(10, 30, linger_s=60, fill=5)] == [1, 2, 3]
    await queue.hand_back([1, 2, 3])
    await redis.zadd(queue.keys.arrivals, {"1": 10**15})  # the head is fresh again
    for i in range(3, 5):
        await f.put(order_body(f"LG{i}")["payload"])
    # a full fill goes at once, whatever the head's wait
    assert len(await queue.claim(10, 30, linger_s=60, fill=5)) == 5
    await queue.hand_back([1, 2, 3, 4, 5])
    # the consumer's drain never lingers (tests, one-shot use); its loop does
    consumer.settings = msgspec.structs.replace(consumer.settings, claim_linger_s=60, claim_fill=100)
    assert await consumer.run_once(linger=True) == 0
    assert await consumer.drain() == 5


async def test_linger_never_stalls_on_an_entry_acked_after_its_lease_ran_out(consumer, tenant, redis):
    f = await feeder(consumer, tenant)
    await f.put(order_body("ST1")["payload"])
    queue = consumer.queue
    assert [seq for seq, _ in await queue.claim(10, 30)] == [1]
    await redis.zadd(queue.keys.leased, {"1": 0})  # a slow batch: its lease ran out
    await queue.sweep()  # seq 1 is back in ready ...
    await queue.ack([1])  # ... and then its worker commits and acks it
    assert await queue.depth() == {"ready": 0, "leased": 0}
    # even an entry left without an arrival (lost data) does not hold the queue back
    await redis.zadd(queue.keys.ready, {"1": 0})
    await f.put(order_body("ST2")["payload"])
    await redis.zadd(queue.keys.arrivals, {"2": 0})
    assert [seq for seq, _ in await queue.claim(10, 30, linger_s=60, fill=100)] == [2]
