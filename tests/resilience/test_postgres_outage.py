"""PostgreSQL stopped for 20 s under load: the receiver keeps answering 202, workers wait and catch up.

Orders wait in Redis while PostgreSQL is down; `/readyz` says so; the workers back off and,
once PostgreSQL is back, store everything that was accepted: nothing lost, nothing doubled.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from typing import Any

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis

from shared.db import create_pool
from tests.conftest import REDIS_URL, order_body
from tests.resilience.harness import (
    ENQUEUE,
    Children,
    Load,
    PostgresServer,
    Receiver,
    Worker,
    assert_exactly_once,
    make_key,
    orderflow_env,
    prepare_database,
    queue_depth,
    wait_drained,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]
OUTAGE_S = 20.0


async def readiness(client: aiohttp.ClientSession, receiver: Receiver) -> tuple[int, dict[str, Any]]:
    async with client.get(receiver.url + "/readyz") as resp:
        return resp.status, json.loads(await resp.text())["data"]


async def count_receipts(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM receipts"))
    finally:
        await conn.close()


async def test_postgresql_outage_under_load(tmp_path, children: Children, local_pg: PostgresServer,
                                            redis_prefix: str, client: aiohttp.ClientSession) -> None:
    dsn = local_pg.dsn("orderflow")
    await prepare_database(dsn)
    headers = await make_key(dsn)
    unseen = await make_key(dsn)  # a key no receiver has checked yet
    env = orderflow_env(dsn, REDIS_URL, redis_prefix)
    receiver = Receiver(children, env, tmp_path / "receiver.log").start()
    worker = Worker(children, env, tmp_path / "worker.log").start()
    redis = aioredis.Redis.from_url(REDIS_URL)
    try:
        await receiver.ready(client)
        await worker.ready()
        # a steady 300 orders/s, so the 20 s backlog stays a few thousand orders
        load = Load(client, [receiver.url], headers, concurrency=16, rate=300, retry_connect=False)
        async with load.start():

            async def some_stored() -> bool:
                return await count_receipts(dsn) >= 300

            await wait_until(some_stored, 30, "300 orders stored before the outage")
            local_pg.stop()
            down_at = time.monotonic()
            accepted_before = load.count(202)

            async def reported_down() -> bool:
                status, data = await readiness(client, receiver)
                return status == 503 and (data["redis"], data["postgresql"]) == ("up", "down")

            await wait_until(reported_down, 5, "/readyz reports PostgreSQL down")
            await wait_until(lambda: _backlog_grows(redis, redis_prefix), 10, "orders queue up in Redis")
            # a key this receiver has not seen cannot be checked: 503 and retry, never a 500 or a 401
            async with client.post(receiver.url + ENQUEUE, json=order_body("UNSEEN1"), headers=unseen) as resp:
                assert (resp.status, resp.headers.get("Retry-After")) == (503, "1"), await resp.text()
            async with client.get(receiver.url + "/api/v1/order/L000001", headers=headers) as resp:
                assert resp.status == 503, await resp.text()
            # the scenario: PostgreSQL stays down for OUTAGE_S while the load goes on
            await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
            during = collections.Counter(a.status for a in load.attempts if a.ended > down_at)
            assert set(during) == {202}, f"answers while PostgreSQL was down: {dict(during)}"
            backlog = await queue_depth(redis, redis_prefix)
            local_pg.start()
            up_at = time.monotonic()
            accepted_during = load.count(202, down_at)

            async def reported_up() -> bool:
                status, _ = await readiness(client, receiver)
                return status == 200

            await wait_until(reported_up, 10, "/readyz reports PostgreSQL up again")
            await wait_until(lambda: load.reached(300, since=up_at), 30, "300 orders accepted after the restart")
            attempts = await load.stop()
            statuses = {a.status for a in attempts}
            assert statuses == {202}, f"answers other than 202: {statuses}"

        pool = await create_pool(dsn, min_size=1, max_size=2)
        try:
            await wait_drained(redis, redis_prefix, pool, len(load.accepted()), timeout=60)
            drained_after = time.monotonic() - up_at
            tally = await assert_exactly_once(pool, load.accepted())
        finally:
            await pool.close()
    finally:
        await redis.aclose()

    backoffs = [e for e in worker.events() if e.get("event") == "consumer_backoff"]
    assert backoffs, "the worker never backed off while PostgreSQL was down"
    assert worker.alive(), "the worker died during the outage"
    print(f"\nPostgreSQL outage: {accepted_before} accepted before, {accepted_during} accepted (all 202) during "
          f"{up_at - down_at:.1f} s down (backlog {backlog[0]} ready, {backlog[1]} leased), "
          f"{len(backoffs)} worker back-offs; drained {drained_after:.1f} s after the restart; "
          f"{tally.orders} orders, {tally.versions} versions, {tally.receipts} receipts")


async def _backlog_grows(redis: aioredis.Redis, prefix: str) -> bool:
    ready, _ = await queue_depth(redis, prefix)
    return ready >= 100
