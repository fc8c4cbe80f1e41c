"""Redis SIGKILLed under load, with `appendfsync always`: no order answered 202 is lost or doubled.

Between the 202 and the worker's commit, Redis holds the only copy of an order. With the AOF
fsynced before every reply, a Redis *process* crash must lose none of them, and while Redis
is down the receiver must answer 503, never a 202 that was not handed off.
"""

from __future__ import annotations

import time

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis

from tests.resilience.harness import (
    Children,
    Load,
    Receiver,
    RedisServer,
    Worker,
    assert_exactly_once,
    make_key,
    orderflow_env,
    wait_drained,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


async def test_redis_sigkill_under_load_loses_no_accepted_order(
        tmp_path, children: Children, database_url: str, redis_prefix: str, pool: asyncpg.Pool,
        client: aiohttp.ClientSession) -> None:
    redis_server = RedisServer(children, tmp_path / "redis", "--appendonly", "yes", "--appendfsync", "always")
    redis_server.start()
    headers = await make_key(database_url)
    env = orderflow_env(database_url, redis_server.url, redis_prefix)
    receiver = Receiver(children, env, tmp_path / "receiver.log").start()
    await receiver.ready(client)

    # every order is posted once; a 503 is recorded, not retried, so each answer stays visible
    load = Load(client, [receiver.url], headers, concurrency=24, retry_connect=False)
    async with load.start():

        await wait_until(lambda: load.reached(1500), 60, "1500 orders accepted before the kill")
        redis_server.kill()
        killed_at = time.monotonic()
        before_kill = load.count(202)

        async def refused() -> bool:
            # down for at least a second (the scenario), and plenty of posts saw it
            return load.count(503, killed_at) >= 300 and time.monotonic() - killed_at >= 1.0

        await wait_until(refused, 30, "300 posts answered 503 while Redis is down")
        restarted_at = time.monotonic()
        redis_server.start()  # same port, same AOF
        up_at = time.monotonic()
        await wait_until(lambda: load.reached(1000, since=up_at), 60, "1000 orders accepted after the restart")
        attempts = await load.stop()

        statuses = {a.status for a in attempts}
        assert statuses <= {202, 503}, f"unexpected answers: {statuses}"
        # a post that began after the kill and ended before the restart began had no Redis: 503 only
        outage = [a for a in attempts if a.started > killed_at and a.ended < restarted_at]
        assert outage and {a.status for a in outage} == {503}

    # only now a worker: everything it stores came through the AOF of the restarted Redis
    worker = Worker(children, env, tmp_path / "worker.log").start()
    redis = aioredis.Redis.from_url(redis_server.url)
    try:
        await worker.ready()
        drained_in = await wait_drained(redis, redis_prefix, pool, len(load.accepted()), timeout=60)
    finally:
        await redis.aclose()
    # a hand-off Redis wrote but whose reply the kill cut off was answered 503 and is stored anyway;
    # the client retries such an order and the identical repeat changes nothing
    refused_refs = {a.reference for a in attempts if a.status == 503}
    tally = await assert_exactly_once(pool, load.accepted(), allow_extra=refused_refs)
    print(f"\nRedis SIGKILL: {before_kill} accepted before the kill, {load.count(503)} answered 503 during "
          f"{restarted_at - killed_at:.2f} s down, {load.count(202, up_at)} accepted after the restart; "
          f"{tally.orders} orders stored once each ({tally.versions} versions, "
          f"{len(tally.extra_receipts)} stored though answered 503), drained in {drained_in:.1f} s")


async def test_worker_rides_out_a_redis_restart_under_load(
        tmp_path, children: Children, database_url: str, redis_prefix: str, pool: asyncpg.Pool,
        client: aiohttp.ClientSession) -> None:
    """The same kill with a worker running: it waits for Redis (no exit), then finishes the work.

    A batch committed to PostgreSQL whose ack the kill cut off is claimed again after its
    (here 3 s) lease and recognised by its sequence number: stored once, not twice.
    """
    redis_server = RedisServer(children, tmp_path / "redis", "--appendonly", "yes", "--appendfsync", "always")
    redis_server.start()
    headers = await make_key(database_url)
    env = orderflow_env(database_url, redis_server.url, redis_prefix, ORDERFLOW_LEASE_S="3",
                        ORDERFLOW_CLAIM_BATCH="50")
    receiver = Receiver(children, env, tmp_path / "receiver.log").start()
    worker = Worker(children, env, tmp_path / "worker.log").start()
    await receiver.ready(client)
    await worker.ready()
    load = Load(client, [receiver.url], headers, concurrency=16, retry_connect=False)
    async with load.start():
        async def stored(n: int) -> bool:
            return int(await pool.fetchval("SELECT count(*) FROM receipts")) >= n

        await wait_until(lambda: stored(800), 60, "800 orders stored before the kill")
        redis_server.kill()
        killed_at = time.monotonic()

        async def down_a_while() -> bool:
            return load.count(503, killed_at) >= 100 and time.monotonic() - killed_at >= 2.0

        await wait_until(down_a_while, 30, "Redis down for 2 s")
        assert worker.alive(), "the worker exited when Redis went away"
        redis_server.start()
        up_at = time.monotonic()
        await wait_until(lambda: load.reached(500, since=up_at), 60, "500 orders accepted after the restart")
        attempts = await load.stop()
    assert {a.status for a in attempts} <= {202, 503}
    redis = aioredis.Redis.from_url(redis_server.url)
    try:
        drained_in = await wait_drained(redis, redis_prefix, pool, len(load.accepted()), timeout=60)
    finally:
        await redis.aclose()
    assert worker.alive(), "the worker exited"
    tally = await assert_exactly_once(pool, load.accepted(),
                                      allow_extra={a.reference for a in attempts if a.status == 503})
    errors = [e for e in worker.events() if e.get("level") in {"error", "critical"}
              and e.get("event") != "consumer_error"]
    print(f"\nworker through a Redis restart: stayed up; {tally.orders} orders stored once each, "
          f"{len(tally.extra_receipts)} stored though answered 503; drained {drained_in:.1f} s after the load; "
          f"{len(errors)} other error lines")
