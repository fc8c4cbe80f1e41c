"""Scale-out on one machine: two receivers and three workers share one Redis and one PostgreSQL.

5,000 orders with random priorities go in through both receivers while the ingest queue is
paused, so every one of them waits in the ready set before the first claim; then three
worker processes (two consumers each) drain it. Nothing may be lost or stored twice, and the
storage order is compared with the priorities (see `inversions`). 100 dated orders, posted
first, must be released by the workers' schedulers exactly once each when they fall due.
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime as dt
import random
import time

import aiohttp
import pytest
import redis.asyncio as aioredis

from shared.db import create_pool
from shared.queue import IngestQueue
from tests.conftest import REDIS_URL
from tests.resilience.harness import (
    Children,
    Load,
    PostgresServer,
    Receiver,
    Worker,
    assert_exactly_once,
    make_key,
    orderflow_env,
    prepare_database,
    utc_stamp,
    wait_drained,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]
ORDERS = 5000
DATED = 100
CLAIM_BATCH = 100


@dataclasses.dataclass
class Batch:
    """One committed claim: when it was stamped (right after the claim), when it committed, its priorities."""

    claimed: dt.datetime
    committed: dt.datetime
    priorities: list[int]


@dataclasses.dataclass
class Inversions:
    """Pairs of orders stored lower priority first, counted two ways."""

    storage: int  # lower priority committed in an earlier batch than a higher one
    by_claim: int  # lower priority in a batch stamped (claimed) earlier than a higher one's
    beyond_concurrency: int  # ... and that earlier batch committed before the later one was claimed
    batches: int
    max_in_flight: int


def inversions(batches: list[Batch]) -> Inversions:
    """Priority inversions between batches; pairs inside one batch never count.

    Every order waited in the ready set before the first claim, and a claim takes the highest
    priorities there are, so claims happen in priority order. Six consumers hold batches at
    the same time, though, and commit them in whatever order they finish: a batch claimed a
    moment later can commit first. `storage` counts every pair a reader of the database sees
    stored lower priority first. `beyond_concurrency` counts only pairs whose batches were not
    in flight together (the lower one committed before the higher one was even claimed): that
    would be a claim that passed over a waiting higher-priority order, and must be zero. The
    claim stamp is taken just after the claim, so this errs towards counting, never hiding.
    """
    def pairs(early: Batch, late: Batch) -> int:
        # (x in early, y in late) with priority(x) < priority(y)
        ys = sorted(late.priorities)
        return sum(len(ys) - bisect.bisect_right(ys, p) for p in early.priorities)

    storage = beyond = by_claim = 0
    for a in batches:
        for b in batches:
            if a is b:
                continue
            if a.committed < b.committed:
                n = pairs(a, b)
                storage += n
                if a.committed < b.claimed:
                    beyond += n
            if a.claimed < b.claimed:
                by_claim += pairs(a, b)
    in_flight = max(sum(1 for o in batches if o.claimed <= b.claimed <= o.committed) for b in batches)
    return Inversions(storage, by_claim, beyond, len(batches), in_flight)


def test_inversion_metric() -> None:
    t = [dt.datetime(2030, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=s) for s in range(10)]
    ordered = [Batch(t[0], t[1], [9, 8]), Batch(t[2], t[3], [8, 5]), Batch(t[4], t[5], [1])]
    assert inversions(ordered) == Inversions(0, 0, 0, 3, 1)
    # two batches in flight together, the later claim committing first: explained by concurrency
    overlapping = [Batch(t[0], t[3], [9, 8]), Batch(t[1], t[2], [7, 6])]
    assert inversions(overlapping) == Inversions(4, 0, 0, 2, 2)
    # a claim that passed over higher priorities that were waiting
    skipped = [Batch(t[0], t[1], [1, 2]), Batch(t[2], t[3], [5])]
    assert inversions(skipped) == Inversions(2, 2, 2, 2, 1)


async def test_two_receivers_three_workers(tmp_path, children: Children, local_pg: PostgresServer,
                                           redis_prefix: str, client: aiohttp.ClientSession) -> None:
    dsn = local_pg.dsn("orderflow")  # track_commit_timestamp=on: batches' commit times are known
    await prepare_database(dsn)
    headers = await make_key(dsn)
    env = orderflow_env(dsn, REDIS_URL, redis_prefix, ORDERFLOW_CLAIM_BATCH=str(CLAIM_BATCH))
    receivers = [Receiver(children, env, tmp_path / f"receiver{n}.log").start() for n in range(2)]
    workers = [Worker(children, env, tmp_path / f"worker{n}.log").start() for n in range(3)]
    redis = aioredis.Redis.from_url(REDIS_URL)
    pool = await create_pool(dsn, min_size=1, max_size=2)
    queue = IngestQueue(redis, redis_prefix)
    urls = [r.url for r in receivers]
    try:
        for r in receivers:
            await r.ready(client)
        for w in workers:
            await w.ready()

        # dated orders first, due a few seconds from now: stored as scheduled, released later
        due = utc_stamp(4)
        dated = Load(client, urls, headers, concurrency=10, prefix="D", priorities=lambda i: i % 5,
                     changes=lambda i: {"status": "1", "delivery_at": due})
        async with dated.start(limit=DATED):
            await dated.finished(30)
        assert {a.status for a in dated.attempts} == {202}

        async def dated_stored() -> bool:
            return int(await pool.fetchval("SELECT count(*) FROM orders WHERE reference LIKE 'D%'")) == DATED

        await wait_until(dated_stored, 30, "the dated orders are stored")
        # not released before their time (on a slow run some may already be due: those are fine)
        early = await pool.fetchval("SELECT count(*) FROM orders WHERE reference LIKE 'D%' "
                                    "AND released_at IS NOT NULL AND released_at < release_at")
        assert early == 0, "dated orders were released before their time"

        # the flood, through both receivers, while the workers may not claim
        await queue.pause(True)
        rng = random.Random(20261128)
        priorities = [rng.randint(-10, 10) for _ in range(ORDERS)]
        flood = Load(client, urls, headers, concurrency=32, prefix="S", priorities=priorities.__getitem__)
        started = time.monotonic()
        async with flood.start(limit=ORDERS):
            await flood.finished(90)
        posted_in = time.monotonic() - started
        assert {a.status for a in flood.attempts} == {202}
        assert await redis.zcard(queue.keys.ready) == ORDERS
        await queue.pause(False)
        started = time.monotonic()
        await wait_drained(redis, redis_prefix, pool, ORDERS + DATED, timeout=90)
        drained_in = time.monotonic() - started

        async def dated_released() -> bool:
            return int(await pool.fetchval(
                "SELECT count(*) FROM orders WHERE reference LIKE 'D%' AND released_at IS NOT NULL")) == DATED

        await wait_until(dated_released, 30, "every dated order released")

        tally = await assert_exactly_once(pool, {**dated.accepted(), **flood.accepted()})
        assert tally.receipts == ORDERS + DATED
        rows = await pool.fetch(
            "SELECT o.reference, o.state, o.released_at, o.release_at, o.delivery_at,"
            " (SELECT count(*) FROM order_events e WHERE e.order_id = o.order_id AND e.type = 'order.released')"
            " AS released_events FROM orders o WHERE o.reference LIKE 'D%'")
        assert len(rows) == DATED
        for r in rows:
            assert r["state"] == "released" and r["released_events"] == 1, dict(r)
            assert r["released_at"] >= r["release_at"] == r["delivery_at"], dict(r)
        assert await pool.fetchval("SELECT count(*) FROM order_events WHERE type = 'order.released'") == DATED

        batch_rows = await pool.fetch(
            "SELECT r.xmin::text AS tx, min(r.stored_at) AS claimed, pg_xact_commit_timestamp(r.xmin) AS committed,"
            " array_agg(o.priority) AS priorities FROM receipts r JOIN orders o USING (order_id)"
            " WHERE r.reference LIKE 'S%' GROUP BY r.xmin")
        batches = [Batch(b["claimed"], b["committed"], list(b["priorities"])) for b in batch_rows]
        assert sum(len(b.priorities) for b in batches) == ORDERS
        assert all(len(b.priorities) <= CLAIM_BATCH for b in batches)
        found = inversions(batches)
        # which processes did the work: all three workers stored batches
        busy = [sum(e.get("size", 0) for e in w.events() if e.get("event") == "batch_stored") for w in workers]
    finally:
        await pool.close()
        await redis.aclose()

    print(f"\nscale-out: {ORDERS} orders through 2 receivers in {posted_in:.1f} s "
          f"({ORDERS / posted_in:.0f}/s), drained by 3 workers in {drained_in:.1f} s ({ORDERS / drained_in:.0f}/s; "
          f"per worker {busy}); {found.batches} batches, up to {found.max_in_flight} in flight; priority "
          f"inversions: {found.storage} pairs in commit order (of {ORDERS * (ORDERS - 1) // 2}), "
          f"{found.by_claim} in claim-stamp order, {found.beyond_concurrency} beyond batches in flight together; {DATED} dated orders released once each")
    assert all(n > 0 for n in busy), f"a worker stored nothing: {busy}"
    assert found.beyond_concurrency == 0
