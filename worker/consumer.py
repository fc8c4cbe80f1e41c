"""The ingest consumer: claim a batch in priority order, store it, ack it; repeat."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import socket
from collections.abc import Callable

import asyncpg
import structlog

from shared.logging import get_logger
from shared.queue import IngestQueue
from shared.settings import Settings
from worker.store import readable, store_batch

log = get_logger(__name__)
Clock = Callable[[], dt.datetime]


def utcnow() -> dt.datetime:
    """The wall clock, aware, in UTC."""
    return dt.datetime.now(dt.UTC)


class IngestConsumer:
    """Moves payloads from the Redis ready set into PostgreSQL, at least once."""

    def __init__(self, queue: IngestQueue, pool: asyncpg.Pool, settings: Settings,
                 clock: Clock = utcnow) -> None:
        self.queue = queue
        self.pool = pool
        self.settings = settings
        self.clock = clock
        self.held: set[int] = set()
        self.stored_total = 0
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"

    async def run_once(self, linger: bool = False) -> int:
        """Claim one batch and store it; returns how many payloads it handled.

        `linger`: leave a short ready set until it fills or its head has waited claim_linger_s.
        """
        batch = await self.queue.claim(self.settings.claim_batch, self.settings.lease_s,
                                       self.settings.priority_aging_s,
                                       linger_s=self.settings.claim_linger_s if linger else 0.0,
                                       fill=self.settings.claim_fill)
        if not batch:
            return 0
        ok = [readable(env) for _, env in batch]
        unreadable = [item for item, good in zip(batch, ok, strict=True) if not good]
        if unreadable:
            # never retried: a header no worker can decode would stall the queue forever
            log.error("payloads_dead_lettered", seqs=[seq for seq, _ in unreadable])
            await self.queue.dead_letter(unreadable)
            batch = [item for item, good in zip(batch, ok, strict=True) if good]
            if not batch:
                return len(unreadable)
        seqs = [seq for seq, _ in batch]
        self.held.update(seqs)
        try:
            async with self.pool.acquire() as conn:
                receipts = await store_batch(conn, batch, self.clock())
        except BaseException:
            # Put them back at once rather than waiting out the lease.
            await asyncio.shield(self._hand_back(seqs))
            raise
        counts: dict[str, int] = {}
        for r in receipts:
            counts[r.state] = counts.get(r.state, 0) + 1
        counts["released"] = sum(1 for r in receipts if r.released)
        await self.queue.ack(seqs, counts)
        self.held.difference_update(seqs)
        self.stored_total += len(batch)
        handled = len(batch) + len(unreadable)
        for r in receipts:
            log.debug("order_stored", receipt_id=r.receipt_id, entity_id=r.entity_id,
                      reference=r.reference, state=r.state, reason=r.reason)
        log.info("batch_stored", size=len(batch), first_seq=seqs[0],
                 states={s: sum(1 for r in receipts if r.state == s) for s in {r.state for r in receipts}})
        return handled

    async def _hand_back(self, seqs: list[int]) -> None:
        try:
            await self.queue.hand_back(seqs)
        finally:
            self.held.difference_update(seqs)

    async def drain(self) -> int:
        """Run until the ready set is empty (tests and one-shot use)."""
        total = 0
        while n := await self.run_once():
            total += n
        return total

    async def run(self, stop: asyncio.Event) -> None:
        """Loop until `stop` is set; back off while PostgreSQL or Redis is unreachable."""
        backoff = 0.0
        structlog.contextvars.bind_contextvars(worker_id=self.worker_id)
        while not stop.is_set():
            try:
                n = await self.run_once(linger=True)
                backoff = 0.0
            except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                    asyncpg.CannotConnectNowError, asyncpg.AdminShutdownError,
                    ConnectionError, TimeoutError) as exc:
                backoff = min(5.0, max(0.1, backoff * 2))
                log.warning("consumer_backoff", error=repr(exc), sleep_s=backoff)
                await _wait(stop, backoff)
                continue
            except Exception:
                # A bug must not kill the consumer silently; the batch went back to ready.
                backoff = min(5.0, max(0.1, backoff * 2))
                log.exception("consumer_error", sleep_s=backoff)
                await _wait(stop, backoff)
                continue
            if n == 0:
                await _wait(stop, self.settings.idle_poll_s)

    async def heartbeat(self) -> None:
        """Tell Redis (and the dashboard) this worker lives and what it holds."""
        key = self.queue.keys.heartbeat + self.worker_id
        value = json.dumps({"worker_id": self.worker_id, "pid": os.getpid(),
                            "held": len(self.held), "stored_total": self.stored_total,
                            "at": self.clock().isoformat()})
        await self.queue.redis.set(key, value, ex=30)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass
