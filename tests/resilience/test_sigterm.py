"""SIGTERM (a rolling restart, a scale-down) of receivers and workers under load.

Receiver: the listener closes at once; requests already received are answered (202), idle
keep-alive connections are closed. The client sees either an answer or a connection refused /
closed before any answer (the request was never handled) and retries on another receiver.
So: no 5xx, and exactly one receipt per 202 (nothing handled without an answer).

Worker: consumers stop claiming, finish the batch in hand (up to 20 s), hand back whatever
they still hold, and exit 0. The workers here have a 120 s lease, so a batch left claimed by a
stopped worker would stall the drain far beyond the test's bounded waits.
"""

from __future__ import annotations

import signal
import time

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis

from tests.conftest import REDIS_URL
from tests.resilience.harness import (
    Children,
    Load,
    Receiver,
    Worker,
    assert_exactly_once,
    make_key,
    orderflow_env,
    queue_depth,
    wait_drained,
    wait_until,
)
from worker.main import SHUTDOWN_GRACE_S

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
LONG_LEASE = {"ORDERFLOW_LEASE_S": "120"}


async def test_sigterm_receiver_and_worker_under_load(tmp_path, children: Children, database_url: str,
                                                      redis_prefix: str, pool: asyncpg.Pool,
                                                      client: aiohttp.ClientSession) -> None:
    headers = await make_key(database_url)
    env = orderflow_env(database_url, REDIS_URL, redis_prefix, ORDERFLOW_CLAIM_BATCH="50", **LONG_LEASE)
    first, second = (Receiver(children, env, tmp_path / f"receiver{n}.log").start() for n in range(2))
    workers = [Worker(children, env, tmp_path / f"worker{n}.log").start() for n in range(2)]
    redis = aioredis.Redis.from_url(REDIS_URL)
    try:
        for r in (first, second):
            await r.ready(client)
        for w in workers:
            await w.ready()
        load = Load(client, [first.url, second.url], headers, concurrency=32, prefix="T")
        async with load.start():
            await wait_until(lambda: load.reached(800), 60, "800 orders accepted")
            # receiver: SIGTERM with requests in flight; it must exit cleanly, answering them
            first.signal(signal.SIGTERM)
            term_at = time.monotonic()
            assert await first.exited(35) == 0, first.log.read_text()[-2000:]
            receiver_stopped_in = time.monotonic() - term_at
            await wait_until(lambda: load.reached(400, since=term_at), 60,
                             "400 orders accepted while one receiver is gone")
            # a rolling restart: the same port again
            restarted = Receiver(children, env, tmp_path / "receiver0-again.log", port=first.port).start()
            await restarted.ready(client)
            back_at = time.monotonic()

            async def both_serve() -> bool:
                return sum(1 for a in load.attempts if a.url == first.url and a.ended > back_at
                           and a.status == 202) >= 200

            await wait_until(both_serve, 60, "the restarted receiver takes orders again")

            # worker: SIGTERM while it is busy; the other worker carries on
            async def busy() -> bool:
                return (await queue_depth(redis, redis_prefix))[1] > 0 and any(
                    e.get("event") == "batch_stored" for e in workers[0].events())

            await wait_until(busy, 30, "the first worker is storing batches")
            workers[0].signal(signal.SIGTERM)
            wterm_at = time.monotonic()
            assert await workers[0].exited(SHUTDOWN_GRACE_S + 15) == 0, workers[0].log.read_text()[-2000:]
            worker_stopped_in = time.monotonic() - wterm_at
            await wait_until(lambda: load.reached(400, since=wterm_at), 60, "400 orders accepted after the worker stopped")
            attempts = await load.stop()

        statuses = {a.status for a in attempts}
        assert statuses == {202}, f"answers other than 202 (None = no answer after retries): {statuses}"
        # under load: requests were in flight at the signal (to either receiver: one cut off
        # before it was handled is retried on the other, which the exactly-once tally checks)
        under_load = [a for a in attempts if a.started < term_at < a.ended]
        in_flight = [a for a in under_load if a.url == first.url]
        retried = sum(a.retries for a in attempts)
        # the rest of the queue is drained by the remaining worker well within one 120 s lease
        drained_in = await wait_drained(redis, redis_prefix, pool, len(load.accepted()), timeout=45)
        tally = await assert_exactly_once(pool, load.accepted())
        assert tally.extra_receipts == [], "a request was handled but its answer never reached the client"
    finally:
        await redis.aclose()
    stopped = [e for e in workers[0].events() if e.get("event") == "worker_stopped"]
    assert stopped, "the worker did not go through its shutdown"
    print(f"\nSIGTERM: receiver exited 0 in {receiver_stopped_in:.2f} s, {len(in_flight)} requests in flight to it "
          f"answered 202 ({len(under_load)} in flight in all); {retried} connection-level retries by the client; worker exited 0 in "
          f"{worker_stopped_in:.2f} s; {tally.accepted} accepted = {tally.receipts} receipts = {tally.orders} orders "
          f"= {tally.versions} versions; drained {drained_in:.1f} s after the load")
    assert under_load, "no request was in flight when the receiver got SIGTERM"


async def test_sigterm_worker_hands_back_a_batch_it_cannot_finish(tmp_path, children: Children,
                                                                  database_url: str, redis_prefix: str,
                                                                  pool: asyncpg.Pool,
                                                                  client: aiohttp.ClientSession) -> None:
    headers = await make_key(database_url)
    env = orderflow_env(database_url, REDIS_URL, redis_prefix, ORDERFLOW_CLAIM_BATCH="500", **LONG_LEASE)
    receiver = Receiver(children, env, tmp_path / "receiver.log").start()
    stuck = Worker(children, env, tmp_path / "worker-stuck.log").start()
    redis = aioredis.Redis.from_url(REDIS_URL)
    blocker = await asyncpg.connect(database_url)
    try:
        await receiver.ready(client)
        await stuck.ready()
        # every write to `orders` waits on this lock: the worker claims a batch and cannot store it
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("LOCK TABLE orders IN EXCLUSIVE MODE")
        load = Load(client, [receiver.url], headers, concurrency=16, prefix="B")
        async with load.start(limit=300):
            await load.finished(60)
        assert {a.status for a in load.attempts} == {202}

        async def holding() -> bool:
            waiting = await pool.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = "
                                          "'orders'::regclass")
            return (await queue_depth(redis, redis_prefix))[1] > 0 and waiting > 0

        await wait_until(holding, 30, "the worker holds a claimed batch, blocked on the lock")
        ready, leased = await queue_depth(redis, redis_prefix)
        stuck.signal(signal.SIGTERM)
        term_at = time.monotonic()
        assert await stuck.exited(SHUTDOWN_GRACE_S + 15) == 0, stuck.log.read_text()[-2000:]
        took = time.monotonic() - term_at
        # everything it had claimed is back in the ready set, long before its 120 s lease ends
        assert await queue_depth(redis, redis_prefix) == (ready + leased, 0)
        await tx.rollback()

        fresh = Worker(children, env, tmp_path / "worker-fresh.log").start()
        await fresh.ready()
        await wait_drained(redis, redis_prefix, pool, 300, timeout=30)
        tally = await assert_exactly_once(pool, load.accepted())
        assert tally.receipts == 300
    finally:
        await blocker.close()
        await redis.aclose()
    print(f"\nSIGTERM of a worker blocked mid-batch: exited 0 after {took:.1f} s (grace {SHUTDOWN_GRACE_S:.0f} s), "
          f"{leased} claimed payloads handed back, then stored once each by another worker")
