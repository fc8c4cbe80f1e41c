"""Every Redis key orderflow writes, in one place.

All keys of one deployment share the hash tag `{prefix}` so that a Redis Cluster puts
them in one slot: the Lua scripts touch several of them atomically.
"""

from __future__ import annotations

from typing import NamedTuple


class RedisKeys(NamedTuple):
    """Key names for one deployment prefix."""

    seq: str  # INCR counter: the receiver's sequence number, orders updates of a reference
    ready: str  # ZSET seq -> score(priority desc, seq asc): payloads waiting for a worker
    payloads: str  # HASH seq -> envelope (header JSON, newline, raw body) until acked
    arrivals: str  # ZSET seq -> arrival ms, until acked: lets long-waiting payloads age to the front
    leased: str  # ZSET seq -> lease expiry (ms): claimed, not yet acked
    lease_scores: str  # HASH seq -> ready score, to put an expired lease back where it was
    rate: str  # prefix for per-second rate-limit counters
    heartbeat: str  # prefix for worker heartbeats
    paused: str  # exists while ingest consumption is paused (the receiver keeps answering 202)
    stats: str  # prefix for per-second HASHes of live counters (received, stored, ...)
    # ZSET "entity_id<US>reference" -> shipped time: lets the receiver refuse changes to a
    # shipped order with a 422 without asking PostgreSQL (the worker still checks).
    shipped: str
    dead: str  # HASH seq -> envelope whose header no worker can read (kept for an operator)
    revocations: str  # pub/sub channel: key ids revoked, so receivers drop them from their cache at once

    @classmethod
    def for_prefix(cls, prefix: str) -> RedisKeys:
        """Key names carrying the hash tag `{prefix}`."""
        tag = "{" + prefix + "}"
        return cls(
            seq=f"{tag}:seq",
            ready=f"{tag}:ready",
            payloads=f"{tag}:payloads",
            arrivals=f"{tag}:arrivals",
            leased=f"{tag}:leased",
            lease_scores=f"{tag}:lease_scores",
            rate=f"{tag}:rate:",
            heartbeat=f"{tag}:heartbeat:",
            paused=f"{tag}:paused",
            stats=f"{tag}:stats:",
            shipped=f"{tag}:shipped",
            dead=f"{tag}:dead",
            revocations=f"{tag}:keys:revoked",
        )


# Scores keep priority in the high part and the sequence in the low part of one double:
# priorities are clamped so that score stays an exact integer below 2**53.
PRIORITY_LIMIT = 4000
SEQ_SPAN = 1_000_000_000_000  # 1e12 sequence numbers per priority step


def ready_score(priority: int, seq: int) -> int:
    """Lower sorts first: higher priority first, then FIFO by sequence."""
    p = max(-PRIORITY_LIMIT, min(PRIORITY_LIMIT, priority))
    return (PRIORITY_LIMIT - p) * SEQ_SPAN + seq


# shipped orders stay in the receiver's fast refusal set this long (the worker checks forever)
SHIPPED_MEMORY_S = 90 * 24 * 3600

# live counters are kept this long (the dashboard charts the last 15 minutes)
STATS_TTL_S = 20 * 60


def shipped_member(entity_id: str, reference: str) -> str:
    """Member of the shipped set for one order."""
    return f"{entity_id}\x1f{reference}"
