"""What the dashboard reads: the backlog, live counters and heartbeats in Redis; the rest in PostgreSQL."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

import asyncpg
import msgspec

from shared.db import QUERIES
from shared.queue import IngestQueue
from shared.redis_keys import PRIORITY_LIMIT, SEQ_SPAN
from shared.schemas import header_decoder

# fields of the per-second stats hashes in Redis (the enqueue script, the workers)
STAT_FIELDS = ("received", "stored", "released", "rejected", "superseded")
# what the overview counts per second: webhook deliveries come from PostgreSQL
LIVE_FIELDS = ("received", "stored", "released", "delivered", "rejected", "superseded")
WINDOW_S = 15 * 60
MAX_LEVELS = 64

# One round trip for the whole backlog: walk the ready set one priority level at a time
# (a level is a span of SEQ_SPAN scores), count it, and return the header of its first
# member, which is its oldest (FIFO within a level). Read-only.
# KEYS[1] ready zset, KEYS[2] payloads hash; ARGV[1] seq span, ARGV[2] priority limit,
# ARGV[3] max levels. Returns {priority, count, seq, header, ...}.
_LEVELS_LUA = """
local span = tonumber(ARGV[1])
local plimit = tonumber(ARGV[2])
local from = '-inf'
local out = {}
for _ = 1, tonumber(ARGV[3]) do
  local first = redis.call('ZRANGEBYSCORE', KEYS[1], from, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if #first == 0 then break end
  local level = math.floor(tonumber(first[2]) / span)
  local hi = string.format('%.0f', (level + 1) * span)
  local count = redis.call('ZCOUNT', KEYS[1], string.format('%.0f', level * span), '(' .. hi)
  local body = redis.call('HGET', KEYS[2], first[1])
  local header = ''
  if body then
    local nl = string.find(body, '\\n', 1, true)
    if nl then header = string.sub(body, 1, nl - 1) end
  end
  out[#out + 1] = plimit - level
  out[#out + 1] = count
  out[#out + 1] = first[1]
  out[#out + 1] = header
  from = hi
end
return out
"""


@dataclasses.dataclass
class Level:
    """Payloads waiting at one priority, and when the oldest of them was received."""

    priority: int
    count: int
    oldest_seq: int
    oldest_received_at: float | None


@dataclasses.dataclass
class Backlog:
    """The ingest queue: waiting payloads by priority, claimed ones, and the oldest wait."""

    levels: list[Level]
    leased: int
    now: float

    @property
    def ready(self) -> int:
        """Payloads waiting for a worker."""
        return sum(level.count for level in self.levels)

    def bands(self) -> dict[str, int]:
        """Waiting payloads in three bands: priority above, at and below 0."""
        out = {"high": 0, "normal": 0, "low": 0}
        for level in self.levels:
            out["high" if level.priority > 0 else "normal" if level.priority == 0 else "low"] += level.count
        return out

    @property
    def oldest_age_s(self) -> float | None:
        """Seconds the oldest waiting payload has waited since its 202."""
        times = [lv.oldest_received_at for lv in self.levels if lv.oldest_received_at is not None]
        return max(0.0, self.now - min(times)) if times else None


class RedisView:
    """Read-only views of one deployment's Redis keys."""

    def __init__(self, queue: IngestQueue) -> None:
        self.queue = queue
        self.redis = queue.redis
        self.keys = queue.keys
        self._levels = self.redis.register_script(_LEVELS_LUA)

    async def now(self) -> float:
        """Redis's clock: the same one the enqueue script stamps its counters with."""
        seconds, micros = await self.redis.time()
        return float(seconds) + float(micros) / 1e6

    async def stats(self, first: int, last: int) -> dict[int, dict[str, int]]:
        """Per-second counters for the seconds first..last (inclusive); missing seconds are zeros."""
        seconds = list(range(first, last + 1))
        if not seconds:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for s in seconds:
                pipe.hgetall(self.keys.stats + str(s))
            rows = await pipe.execute()
        out: dict[int, dict[str, int]] = {}
        for s, row in zip(seconds, rows, strict=True):
            counts = {f: 0 for f in STAT_FIELDS}
            for k, v in row.items():
                name = k.decode() if isinstance(k, bytes) else str(k)
                if name in counts:
                    counts[name] = int(v)
            out[s] = counts
        return out

    async def backlog(self) -> Backlog:
        """Waiting payloads per priority level (up to MAX_LEVELS levels) and claimed ones."""
        async with self.redis.pipeline(transaction=False) as pipe:
            # queued on the pipeline; its result comes with execute()
            await self._levels(keys=[self.keys.ready, self.keys.payloads],
                               args=[SEQ_SPAN, PRIORITY_LIMIT, MAX_LEVELS], client=pipe)
            pipe.zcard(self.keys.leased)
            pipe.time()
            flat, leased, (secs, micros) = await pipe.execute()
        levels = []
        for i in range(0, len(flat), 4):
            received_at = None
            if flat[i + 3]:
                try:
                    received_at = header_decoder.decode(flat[i + 3]).received_at
                except msgspec.DecodeError:
                    received_at = None
            levels.append(Level(int(flat[i]), int(flat[i + 1]), int(flat[i + 2]), received_at))
        return Backlog(levels, int(leased), float(secs) + float(micros) / 1e6)

    async def paused_since(self) -> float | None:
        """When ingest consumption was paused, or None while it runs."""
        value = await self.redis.get(self.keys.paused)
        if value is None:
            return None
        try:
            return float(value)
        except ValueError:
            return 0.0

    async def workers(self) -> list[dict[str, Any]]:
        """The heartbeats of live workers (each expires 30 s after its last beat)."""
        names = [k async for k in self.redis.scan_iter(match=self.keys.heartbeat + "*", count=500)]
        if not names:
            return []
        values = await self.redis.mget(names)
        beats = []
        for value in values:
            if value is None:
                continue
            try:
                beat = json.loads(value)
                beat["at"] = dt.datetime.fromisoformat(beat["at"]).timestamp()
            except (ValueError, KeyError, TypeError):
                continue
            beats.append(beat)
        beats.sort(key=lambda b: str(b.get("worker_id", "")))
        return beats


async def delivered_per_second(pool: asyncpg.Pool, first: int, last: int) -> dict[int, int]:
    """Webhook deliveries that succeeded in each second first..last (seconds with none left out)."""
    rows = await pool.fetch(QUERIES["dash_delivered_per_second"], float(first), float(last + 1))
    return {int(r["second"]): int(r["n"]) for r in rows}


async def ingest_lag(pool: asyncpg.Pool, window_s: float = 300, newest: int = 5000) -> dict[str, Any]:
    """p50/p99 of 202-to-stored over the newest receipts of the last window_s seconds."""
    row = await pool.fetchrow(QUERIES["dash_ingest_lag"], float(window_s), newest)
    assert row is not None
    return {"n": row["n"], "p50": row["p50"], "p99": row["p99"]}


# open failures are counted up to this many (the page says "1000+")
FAILURE_COUNT_CAP = 1000


async def open_failures(pool: asyncpg.Pool) -> dict[str, int]:
    """Rejected orders and failed deliveries nobody has retried or discarded yet (capped)."""
    row = await pool.fetchrow(QUERIES["dash_failure_counts"], FAILURE_COUNT_CAP)
    assert row is not None
    return {"rejected": int(row["rejected_open"]), "deliveries": int(row["deliveries_open"])}


@dataclasses.dataclass
class Schedule:
    """Scheduled orders: due per hour for the next days, and the next ones due."""

    hours: list[tuple[dt.datetime, int]]
    overdue: int
    later: int
    total: int
    next_due: list[asyncpg.Record]


async def schedule(pool: asyncpg.Pool, now: dt.datetime, days: int = 7, limit: int = 50) -> Schedule:
    """Due counts for each hour from this one to `days` ahead (zeros included)."""
    start = now.replace(minute=0, second=0, microsecond=0)
    end = start + dt.timedelta(days=days)
    async with pool.acquire() as conn:
        per_hour = await conn.fetch(QUERIES["dash_scheduled_per_hour"], end)
        totals = await conn.fetchrow(QUERIES["dash_scheduled_totals"], end)
        next_due = await conn.fetch(QUERIES["dash_scheduled_next"], limit)
    counts = {r["hour"]: int(r["n"]) for r in per_hour if r["hour"] >= start}
    hours = [(start + dt.timedelta(hours=h), counts.get(start + dt.timedelta(hours=h), 0))
             for h in range(days * 24)]
    assert totals is not None
    return Schedule(hours, int(totals["overdue"]), int(totals["later"]), int(totals["scheduled"]), next_due)
