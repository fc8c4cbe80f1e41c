"""Release scheduling driven by an injectable clock: on time, by priority, exactly once, from PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt

import msgspec

from shared.db import create_pool
from tests.conftest import order_body
from tests.integration.test_worker_rules import feeder
from worker.scheduler import ReleaseScheduler

T0 = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def stamp(seconds: float) -> str:
    return at(seconds).strftime("%Y-%m-%d %H:%M:%S")


def scheduler(pool, settings, **overrides) -> ReleaseScheduler:
    return ReleaseScheduler(pool, msgspec.structs.replace(settings, **overrides), clock=lambda: T0)


async def store(consumer, tenant, *orders: tuple[str, dict]) -> None:
    consumer.clock = lambda: T0
    f = await feeder(consumer, tenant)
    for reference, changes in orders:
        await f.put(order_body(reference, **changes)["payload"])
    await consumer.drain()


async def states(pool) -> dict[str, tuple[str, dt.datetime | None]]:
    rows = await pool.fetch("SELECT reference, state, released_at FROM orders")
    return {r["reference"]: (r["state"], r["released_at"]) for r in rows}


async def test_released_at_its_time_not_before(consumer, tenant, pool, settings):
    await store(consumer, tenant, ("D1", {"status": "1", "delivery_at": stamp(10)}),
                ("NOW", {"status": "1", "delivery_at": ""}), ("NEW", {"status": "0", "delivery_at": stamp(1)}))
    assert await states(pool) == {"D1": ("scheduled", None), "NOW": ("released", T0), "NEW": ("new", None)}
    s = scheduler(pool, settings)
    assert await s.release_due(at(9.999)) == 0
    assert await s.release_due(at(10)) == 1
    assert (await states(pool))["D1"] == ("released", at(10))
    assert await s.release_due(at(60)) == 0  # once
    versions = await pool.fetch("SELECT v.version, v.receipt_id, v.changes FROM order_versions v "
                                "JOIN orders o USING (order_id) WHERE o.reference = 'D1' ORDER BY v.version")
    assert [(v["version"], v["changes"]) for v in versions] == [(1, ["*"]), (2, ["state"])]
    assert versions[1]["receipt_id"] == "release"
    events = await pool.fetch("SELECT reference, type FROM order_events WHERE type = 'order.released' ORDER BY event_id")
    assert [(e["reference"]) for e in events] == ["NOW", "D1"]


async def test_due_orders_are_released_in_priority_order(consumer, tenant, pool, settings):
    priorities = [0, 7, -2, 7, 3, -10, 10, 0]
    await store(consumer, tenant, *[(f"P{i}", {"status": "1", "delivery_at": stamp(5 + i), "priority": p})
                                    for i, p in enumerate(priorities)])
    s = scheduler(pool, settings, release_batch=3)
    assert await s.release_due(at(100)) == len(priorities)
    rows = await pool.fetch("SELECT reference, priority FROM order_events WHERE type = 'order.released' ORDER BY event_id")
    # strict across batches; FIFO by release time inside a priority
    assert [r["reference"] for r in rows] == ["P6", "P1", "P3", "P4", "P0", "P7", "P2", "P5"]


async def test_aging_lets_long_waiting_orders_jump_ahead(consumer, tenant, pool, settings):
    await store(consumer, tenant, ("OLD", {"status": "1", "delivery_at": stamp(1), "priority": -5}),
                ("HIGH", {"status": "1", "delivery_at": stamp(50), "priority": 9}))
    s = scheduler(pool, settings, release_batch=1, priority_aging_s=30.0)
    assert await s.release_batch(at(60)) == 1
    assert (await states(pool))["OLD"][0] == "released"


async def test_three_workers_racing_release_each_order_exactly_once(consumer, tenant, pool, settings):
    await store(consumer, tenant, *[(f"R{i:03d}", {"status": "1", "delivery_at": stamp(1 + i % 20), "priority": i % 5})
                                    for i in range(300)])
    pools = [await create_pool(settings.database_url, min_size=1, max_size=2) for _ in range(3)]
    try:
        racers = [scheduler(p, settings, release_batch=7) for p in pools]
        counts = await asyncio.gather(*(r.release_due(at(30)) for r in racers))
    finally:
        for p in pools:
            await p.close()
    assert sum(counts) == 300 and all(c > 0 for c in counts), counts
    per_order = await pool.fetch(
        "SELECT reference, count(*) AS n FROM order_events WHERE type = 'order.released' GROUP BY reference")
    assert len(per_order) == 300 and {r["n"] for r in per_order} == {1}


async def test_schedule_survives_an_emptied_redis(consumer, tenant, pool, settings, redis):
    await store(consumer, tenant, ("F1", {"status": "1", "delivery_at": stamp(10)}))
    keys = [k async for k in redis.scan_iter(match="{" + settings.redis_prefix + "}*")]
    if keys:
        await redis.delete(*keys)
    assert await scheduler(pool, settings).release_due(at(11)) == 1


async def test_updates_move_or_drop_the_schedule(consumer, tenant, pool, settings):
    await store(consumer, tenant, ("M1", {"status": "1", "delivery_at": stamp(10)}),
                ("M2", {"status": "1", "delivery_at": stamp(10)}),
                ("M3", {"status": "1", "delivery_at": stamp(10)}))
    await store(consumer, tenant, ("M1", {"status": "1", "delivery_at": stamp(100)}),
                ("M2", {"status": "8", "delivery_at": stamp(10)}),
                ("M3", {"status": "9", "delivery_at": stamp(10)}))
    s = scheduler(pool, settings)
    assert await s.release_due(at(50)) == 0
    got = await states(pool)
    assert (got["M1"][0], got["M2"][0], got["M3"][0]) == ("scheduled", "held", "cancelled")
    assert await pool.fetchval("SELECT release_at FROM orders WHERE reference = 'M1'") == at(100)
    assert await s.release_due(at(100)) == 1
    # a held order goes back on the schedule with status 1 again
    await store(consumer, tenant, ("M2", {"status": "1", "delivery_at": stamp(10)}))
    assert (await states(pool))["M2"] == ("scheduled", None)
    assert await s.release_due(at(10)) == 1


async def test_scheduler_runs_inside_the_worker_loop(consumer, tenant, pool, settings):
    await store(consumer, tenant, ("W1", {"status": "1", "delivery_at": stamp(1)}))
    now = [T0]
    s = ReleaseScheduler(pool, msgspec.structs.replace(settings, release_poll_s=0.01), clock=lambda: now[0])
    stop = asyncio.Event()
    task = asyncio.create_task(s.run(stop))
    now[0] = at(2)

    async def released() -> None:
        while (await states(pool))["W1"][0] != "released":
            await asyncio.sleep(0.01)

    try:
        await asyncio.wait_for(released(), timeout=5)
    finally:
        stop.set()
        await task
