"""The overview, live: one snapshot a second per process, shared by every open page, sent as Server-Sent Events."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import msgspec
from aiohttp import web

from ingest.dashboard.auth import session_is_alive
from ingest.dashboard.data import (
    LIVE_FIELDS,
    WINDOW_S,
    RedisView,
    delivered_per_second,
    ingest_lag,
    open_failures,
)
from ingest.dashboard.keys import HUB, SESSION, STOPPING
from ingest.keys import POOL, QUEUE
from shared.logging import get_logger
from shared.queue import IngestQueue

log = get_logger(__name__)
TICK_S = 1.0
# counters for a second can still grow for a moment after it ends (a worker's clock, an ack
# in flight), so the newest seconds are read again on every tick
REREAD_S = 5
RATE_OVER_S = 10
# a stream re-checks its session this often, so a logout elsewhere ends it
SESSION_CHECK_S = 15.0
_encoder = msgspec.json.Encoder()


class OverviewHub:
    """Builds the overview snapshot at most once per tick, however many browsers watch."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._snapshot: dict[str, Any] | None = None
        self._built_at = 0.0
        # second -> counters, the last WINDOW_S seconds
        self._series: dict[int, dict[str, int]] = {}
        self._view: RedisView | None = None

    async def snapshot(self, pool: asyncpg.Pool, queue: IngestQueue) -> dict[str, Any]:
        """The current overview (cached for TICK_S)."""
        async with self._lock:
            if self._view is None or self._view.queue is not queue:
                self._view = RedisView(queue)
            if self._snapshot is None or time.monotonic() - self._built_at >= TICK_S * 0.9:
                self._snapshot = await self._build(pool, self._view)
                self._built_at = time.monotonic()
            return self._snapshot

    def history(self) -> dict[str, Any]:
        """The chart's whole window, for a page that just connected."""
        return _series_payload(self._series)

    async def _build(self, pool: asyncpg.Pool, view: RedisView) -> dict[str, Any]:
        backlog, paused, workers = await asyncio.gather(view.backlog(), view.paused_since(), view.workers())
        now = backlog.now
        last = int(now) - 1  # the newest complete second
        first = last - WINDOW_S + 1
        reread_from = first if not self._series else max(first, min(max(self._series) + 1, last - REREAD_S))
        fresh, delivered = await asyncio.gather(view.stats(reread_from, last),
                                                delivered_per_second(pool, reread_from, last))
        for second, n in delivered.items():
            fresh[second]["delivered"] = n
        self._series.update(fresh)
        for s in [s for s in self._series if s < first]:
            del self._series[s]
        lag, failures = await asyncio.gather(ingest_lag(pool), open_failures(pool))
        recent = [self._series.get(s, {}) for s in range(last - RATE_OVER_S + 1, last + 1)]
        rates = {f: sum(c.get(f, 0) for c in recent) / RATE_OVER_S for f in LIVE_FIELDS}
        window = {f: sum(c.get(f, 0) for c in self._series.values()) for f in LIVE_FIELDS}
        return {
            "now": now,
            "paused_since": paused,
            "rates": rates,
            "window_totals": window,
            "tail": _series_payload({s: self._series.get(s, {}) for s in range(last - REREAD_S, last + 1)}),
            "backlog": {
                "ready": backlog.ready,
                "leased": backlog.leased,
                "bands": backlog.bands(),
                "oldest_age_s": backlog.oldest_age_s,
                "levels": [{"priority": lv.priority, "count": lv.count,
                            "oldest_age_s": None if lv.oldest_received_at is None
                            else max(0.0, now - lv.oldest_received_at)}
                           for lv in backlog.levels],
            },
            "lag": lag,
            "workers": [{**w, "age_s": max(0.0, now - float(w["at"]))} for w in workers],
            "failures": failures,
        }


def _series_payload(series: dict[int, dict[str, int]]) -> dict[str, Any]:
    seconds = sorted(series)
    return {"seconds": seconds,
            **{f: [series[s].get(f, 0) for s in seconds] for f in ("received", "stored", "released", "delivered")}}


def _event(name: str, data: Any) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _encoder.encode(data) + b"\n\n"


async def events(request: web.Request) -> web.StreamResponse:
    """GET /dashboard/events: `history` once, then `overview` every second; `logout` when the session ends."""
    app = request.app
    pool, queue = request.config_dict[POOL], request.config_dict[QUEUE]
    hub, stopping = app[HUB], app[STOPPING]
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                       "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    token = request[SESSION].token
    checked = time.monotonic()
    try:
        first = await hub.snapshot(pool, queue)
        await resp.write(b"retry: 2000\n\n" + _event("history", hub.history()) + _event("overview", first))
        while not stopping.is_set():
            try:
                await asyncio.wait_for(stopping.wait(), TICK_S)
                break
            except TimeoutError:
                pass
            if time.monotonic() - checked > SESSION_CHECK_S:
                checked = time.monotonic()
                if not await session_is_alive(pool, token):
                    await resp.write(_event("logout", {}))
                    break
            await resp.write(_event("overview", await hub.snapshot(pool, queue)))
    except ConnectionResetError:
        return resp
    except Exception:  # a broken backend ends this stream; the browser reconnects
        log.exception("dashboard_stream_failed")
    return resp
