"""Release scheduler: orders with status Process wait in PostgreSQL until release_at.

Every worker runs one; `FOR UPDATE SKIP LOCKED` makes each due order released by exactly
one of them, highest priority first. The schedule lives in PostgreSQL, so it survives
worker restarts and an emptied Redis.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable

import asyncpg

from shared.db import QUERIES
from shared.events import Event, write_events
from shared.logging import get_logger
from shared.redis_keys import STATS_TTL_S
from shared.settings import Settings
from worker.store import Current, event_data

log = get_logger(__name__)
Clock = Callable[[], dt.datetime]


class ReleaseScheduler:
    """Releases due orders in batches; `release_due` is one pass, `run` loops."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings, clock: Clock,
                 redis: object | None = None, stats_prefix: str | None = None) -> None:
        self.pool = pool
        self.settings = settings
        self.clock = clock
        self.redis = redis
        self.stats_prefix = stats_prefix

    async def release_batch(self, now: dt.datetime) -> int:
        """Release up to one batch of due orders in one transaction; returns how many."""
        aging = self.settings.priority_aging_s
        cutoff = now - dt.timedelta(seconds=aging) if aging > 0 else None
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(QUERIES["release_due"], now, self.settings.release_batch, cutoff)
            events = []
            for r in rows:
                cur = Current(r["order_id"], r["source_id"], 0, "released", r["version"], b"",
                              r["document"], r["release_at"], r["released_at"], now)
                events.append(Event((r["entity_id"], r["reference"]), r["source_id"], "order.released",
                                    r["version"], r["priority"], event_data(cur, r["priority"], r["status"])))
            await write_events(conn, events, {(r["entity_id"], r["reference"]): r["order_id"] for r in rows}, now)
            if rows:  # a release is a change of the order: a version of its own
                await conn.execute(QUERIES["batch_insert_versions"], [r["order_id"] for r in rows],
                                   [r["version"] for r in rows], [r["seq"] for r in rows], [now] * len(rows),
                                   ["release"] * len(rows), ['["state"]'] * len(rows))
        if rows:
            log.info("orders_released", count=len(rows))
            await self._count(len(rows))
        return len(rows)

    async def release_due(self, now: dt.datetime | None = None) -> int:
        """Release everything due at `now` (default: the clock), batch after batch."""
        now = now or self.clock()
        total = 0
        # Until a pass finds nothing: a short batch may only mean other workers hold rows.
        while n := await self.release_batch(now):
            total += n
        return total

    async def _count(self, n: int) -> None:
        if self.redis is None or self.stats_prefix is None:
            return
        key = self.stats_prefix + str(int(self.clock().timestamp()))
        async with self.redis.pipeline(transaction=False) as pipe:  # type: ignore[attr-defined]
            pipe.hincrby(key, "released", n)
            pipe.expire(key, STATS_TTL_S)
            await pipe.execute()

    async def run(self, stop: asyncio.Event) -> None:
        """Poll for due orders until `stop`; PostgreSQL outages are waited out."""
        while not stop.is_set():
            try:
                await self.release_due()
                delay = self.settings.release_poll_s
            except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                    asyncpg.CannotConnectNowError, asyncpg.AdminShutdownError, TimeoutError) as exc:
                log.warning("scheduler_backoff", error=repr(exc))
                delay = 2.0
            except Exception:
                log.exception("scheduler_error")
                delay = 2.0
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
            except TimeoutError:
                pass
