"""The ingest queue in Redis: a ready set in priority order, raw payloads, and leases.

arq has no priorities and one job per order would cap throughput, so the hot path is
three small Lua scripts over keys that share one hash tag (see shared/redis_keys.py).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from shared.redis_keys import PRIORITY_LIMIT, SEQ_SPAN, STATS_TTL_S, RedisKeys


def _script(name: str) -> str:
    return resources.files("shared.lua").joinpath(name).read_text()


def make_envelope(header_json: bytes, raw: bytes, order_json: bytes | None = None) -> bytes:
    """Header, raw payload and (optional) the normalised order, one JSON text per line.

    The header comes first so a worker reads it without touching the rest; the normalised
    order saves the worker from running the order rules a second time.
    """
    parts = [header_json, raw] if order_json is None else [header_json, raw, order_json]
    return b"\n".join(parts)


def split_envelope(envelope: bytes) -> tuple[bytes, bytes]:
    """(header JSON, raw payload); compact JSON never contains a newline."""
    header, _, rest = envelope.partition(b"\n")
    raw, _, _ = rest.partition(b"\n")
    return header, raw


def normalised_order(envelope: bytes) -> bytes | None:
    """The normalised order the receiver put in the envelope, if it did."""
    _, _, rest = envelope.partition(b"\n")
    _, sep, order = rest.partition(b"\n")
    return order if sep else None


def receipt_id(seq: int, token: str) -> str:
    """Receipt ids carry the sequence number so a queued receipt is found in Redis."""
    return f"rcpt_{seq}_{token}"


def seq_of_receipt(rid: str) -> int | None:
    """The sequence number inside a receipt id, or None if it is not one of ours."""
    parts = rid.split("_")
    if len(parts) != 3 or parts[0] != "rcpt" or not (parts[1].isascii() and parts[1].isdigit()):
        return None
    seq = int(parts[1])
    return seq if seq < 2**63 else None


class IngestQueue:
    """Enqueue, claim, ack and hand back payloads, each in one round trip."""

    def __init__(self, redis: aioredis.Redis, prefix: str,
                 seq_floor: Callable[[], Awaitable[int]] | None = None) -> None:
        self.redis = redis
        self.keys = RedisKeys.for_prefix(prefix)
        # the highest sequence number PostgreSQL has seen: where a lost counter starts again
        self.seq_floor = seq_floor
        self._seed = redis.register_script(_script("seed_seq.lua"))
        self._enqueue = redis.register_script(_script("enqueue.lua"))
        self._claim = redis.register_script(_script("claim.lua"))
        self._hand_back = redis.register_script(_script("hand_back.lua"))

    async def enqueue_many(
        self,
        items: Sequence[tuple[int, str, str, bytes]],
        *,
        per_key: int = 0,
        per_address: int = 0,
        shipped: Sequence[str] | None = None,
    ) -> list[int]:
        """Store (priority, key_id, address, envelope) items: seq per item, -1 rate-limited, -2 shipped.

        `shipped` gives each item's shipped-set member (shared.redis_keys.shipped_member)
        to refuse changes to shipped orders; '' or None skips the check.
        """
        args: list[Any] = [self.keys.rate, per_key, per_address, PRIORITY_LIMIT, SEQ_SPAN, len(items)]
        for i, (priority, key_id, address, envelope) in enumerate(items):
            args += [priority, key_id, address, shipped[i] if shipped else "", envelope]
        keys = [self.keys.seq, self.keys.ready, self.keys.payloads, self.keys.stats, self.keys.shipped,
                self.keys.arrivals]
        try:
            result = await self._enqueue(keys=keys, args=args)
        except ResponseError as exc:
            if "SEQ_UNSEEDED" not in str(exc):
                raise
            await self.seed_seq()
            result = await self._enqueue(keys=keys, args=args)
        return [int(x) for x in result]

    async def seed_seq(self) -> int:
        """Start a missing counter above every sequence number stored in PostgreSQL."""
        floor = await self.seq_floor() if self.seq_floor is not None else 0
        return int(await self._seed(keys=[self.keys.seq], args=[floor]))

    async def claim(self, count: int, lease_s: float, aging_s: float = 0.0, *,
                    linger_s: float = 0.0, fill: int = 0) -> list[tuple[int, bytes]]:
        """Up to `count` (seq, envelope) pairs, highest priority first, leased for lease_s.

        With aging_s > 0, payloads that waited longer than that are claimed first. With
        linger_s > 0 and fewer than `fill` payloads ready, nothing is claimed until the next
        in line has waited linger_s (a batch then has a chance to fill).
        """
        flat = await self._claim(
            keys=[self.keys.ready, self.keys.leased, self.keys.lease_scores, self.keys.payloads,
                  self.keys.paused, self.keys.arrivals],
            args=[int(lease_s * 1000), count, int(aging_s * 1000), int(linger_s * 1000), fill],
        )
        return [(int(flat[i]), bytes(flat[i + 1])) for i in range(0, len(flat), 2)]

    async def ack(self, seqs: Sequence[int], counts: dict[str, int] | None = None) -> None:
        """Forget payloads that are committed to PostgreSQL; bump live counters with it."""
        if not seqs:
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(self.keys.leased, *seqs)
            # back in ready if the lease ran out before this commit: gone for good now
            pipe.zrem(self.keys.ready, *seqs)
            pipe.hdel(self.keys.lease_scores, *[str(s) for s in seqs])
            pipe.hdel(self.keys.payloads, *[str(s) for s in seqs])
            pipe.zrem(self.keys.arrivals, *seqs)
            stats_key = self.keys.stats + str(int(time.time()))
            for name, n in (counts or {}).items():
                if n:
                    pipe.hincrby(stats_key, name, n)
            pipe.expire(stats_key, STATS_TTL_S)
            await pipe.execute()

    async def dead_letter(self, items: Sequence[tuple[int, bytes]]) -> None:
        """Move unreadable payloads aside (kept, not retried) and release their claim."""
        if not items:
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.dead, mapping={str(seq): env for seq, env in items})
            seqs = [seq for seq, _ in items]
            pipe.zrem(self.keys.leased, *seqs)
            pipe.zrem(self.keys.ready, *seqs)
            pipe.hdel(self.keys.lease_scores, *[str(s) for s in seqs])
            pipe.hdel(self.keys.payloads, *[str(s) for s in seqs])
            pipe.zrem(self.keys.arrivals, *seqs)
            await pipe.execute()

    async def forget_old_shipments(self, older_than_s: float) -> int:
        """Trim the receiver's shipped set; the worker still refuses changes from PostgreSQL."""
        return int(await self.redis.zremrangebyscore(self.keys.shipped, "-inf", time.time() - older_than_s))

    async def mark_shipped(self, member: str) -> None:
        """Remember that an order shipped, so the receiver refuses further changes at once."""
        await self.redis.zadd(self.keys.shipped, {member: time.time()})

    async def pause(self, paused: bool) -> None:
        """Stop or resume claiming; the receiver keeps accepting."""
        if paused:
            await self.redis.set(self.keys.paused, str(int(time.time())))
        else:
            await self.redis.delete(self.keys.paused)

    async def is_paused(self) -> bool:
        """True while ingest consumption is paused."""
        return bool(await self.redis.exists(self.keys.paused))

    async def hand_back(self, seqs: Sequence[int]) -> int:
        """Return claimed, unprocessed payloads to the ready set (graceful stop)."""
        if not seqs:
            return 0
        keys = [self.keys.ready, self.keys.leased, self.keys.lease_scores, self.keys.payloads]
        return int(await self._hand_back(keys=keys, args=list(seqs)))

    async def sweep(self) -> None:
        """Put expired leases back without claiming anything."""
        await self.claim(0, 1)

    async def peek_envelope(self, seq: int) -> bytes | None:
        """The envelope of a payload still waiting or claimed, if any."""
        value = await self.redis.hget(self.keys.payloads, str(seq))  # type: ignore[misc]
        return bytes(value) if value is not None else None

    async def depth(self) -> dict[str, int]:
        """How many payloads wait and how many are claimed."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(self.keys.ready)
            pipe.zcard(self.keys.leased)
            ready, leased = await pipe.execute()
        return {"ready": int(ready), "leased": int(leased)}
