"""Coalesce concurrent hand-offs into one Redis round trip per event-loop tick."""

from __future__ import annotations

import asyncio

from shared.queue import IngestQueue


class RateLimited(Exception):
    """The key or the client address is over its rate."""


class OrderShipped(Exception):
    """The order has shipped; changes are refused."""


class HandoffCoalescer:
    """Collects (priority, key, address, envelope) until the loop yields, then one EVALSHA."""

    def __init__(self, queue: IngestQueue, *, per_key: int, per_address: int, max_batch: int = 500) -> None:
        self.queue = queue
        self.per_key = per_key
        self.per_address = per_address
        self.max_batch = max_batch
        self._pending: list[tuple[tuple[int, str, str, bytes], str, asyncio.Future[int]]] = []
        self._scheduled = False
        self._inflight: set[asyncio.Task[None]] = set()

    async def submit(self, priority: int, key_id: str, address: str, envelope: bytes,
                     shipped_member: str = "") -> int:
        """The sequence number once Redis confirmed the hand-off; RateLimited, OrderShipped or a Redis error otherwise."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        self._pending.append(((priority, key_id, address, envelope), shipped_member, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        for start in range(0, len(pending), self.max_batch):
            task = asyncio.ensure_future(self._send(pending[start:start + self.max_batch]))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _send(self, chunk: list[tuple[tuple[int, str, str, bytes], str, asyncio.Future[int]]]) -> None:
        try:
            seqs = await self.queue.enqueue_many(
                [item for item, _, _ in chunk], per_key=self.per_key, per_address=self.per_address,
                shipped=[member for _, member, _ in chunk])
        except Exception as exc:  # noqa: BLE001 - every waiter learns that its hand-off failed
            for _, _, future in chunk:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, _, future), seq in zip(chunk, seqs, strict=True):
            if future.done():
                continue
            if seq == -1:
                future.set_exception(RateLimited())
            elif seq == -2:
                future.set_exception(OrderShipped())
            else:
                future.set_result(seq)

    async def close(self) -> None:
        """Wait for hand-offs already sent to Redis."""
        if self._pending:
            self._flush()
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
