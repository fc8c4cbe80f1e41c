"""`/metrics` for Prometheus: the dashboard's numbers, read from Redis and PostgreSQL at scrape time.

The receiver does not count orders itself: the enqueue script and the workers already keep
per-second counters in Redis (`{prefix}:stats:<second>`), for every receiver and worker of
the deployment, and webhook deliveries carry `delivered_at` in PostgreSQL. A scrape adds
what completed since the previous scrape to this process's totals, so the counters are
deployment-wide and start at zero when the process starts (rate() handles that like any restart). Scrape one receiver per deployment, or
aggregate with max() across them: every receiver reports the same deployment.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Iterator

import asyncpg
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from ingest.dashboard.data import LIVE_FIELDS, RedisView, open_failures
from ingest.keys import POOL, QUEUE
from shared.db import QUERIES
from shared.logging import get_logger
from shared.queue import IngestQueue
from shared.redis_keys import STATS_TTL_S

log = get_logger(__name__)
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
# a second's counters may still grow briefly after it ends (worker clocks, acks in flight)
STATS_SETTLE_S = 2
# rows carry the time their transaction began (a batch's receipts, a delivery); the commit comes later
PG_SETTLE = dt.timedelta(seconds=5)
COUNTER_HELP = {
    "received": "Orders accepted with 202 and handed to Redis.",
    "stored": "Payloads stored in PostgreSQL (receipt state stored).",
    "released": "Orders released for processing at ingest.",
    "delivered": "Webhook deliveries that succeeded.",
    "rejected": "Payloads rejected by the worker (receipt state rejected).",
    "superseded": "Payloads superseded by a newer update of the same order.",
}


class DeploymentMetrics(Collector):
    """Counters, the ingest lag histogram and gauges of one deployment, refreshed per scrape."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self._lock = asyncio.Lock()
        self._created = time.time()
        self._stats_cursor: int | None = None
        self.totals = {f: 0 for f in LIVE_FIELDS}
        self._pg_cursor: dt.datetime | None = None
        self._lag_buckets = [0] * (len(LAG_BUCKETS) + 1)
        self._lag_sum = 0.0
        self._gauges: dict[str, float] = {}
        self._ready_bands: dict[str, int] = {}
        self._up = {"redis": 0.0, "postgresql": 0.0}

    async def refresh(self, pool: asyncpg.Pool, queue: IngestQueue) -> None:
        """Read what changed since the last scrape; a source that is down is reported as down."""
        async with self._lock:
            try:
                await self._refresh_redis(RedisView(queue))
                self._up["redis"] = 1.0
            except (RedisError, OSError) as exc:
                self._up["redis"] = 0.0
                log.warning("metrics_redis_down", error=repr(exc))
            try:
                await self._refresh_postgres(pool)
                self._up["postgresql"] = 1.0
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                self._up["postgresql"] = 0.0
                log.warning("metrics_postgresql_down", error=repr(exc))

    async def _refresh_redis(self, view: RedisView) -> None:
        backlog = await view.backlog()
        upto = int(backlog.now) - STATS_SETTLE_S
        if self._stats_cursor is None:
            self._stats_cursor = upto
        first = max(self._stats_cursor + 1, upto - STATS_TTL_S + 60)
        for counts in (await view.stats(first, upto)).values():
            for name, n in counts.items():
                self.totals[name] += n
        self._stats_cursor = max(self._stats_cursor, upto)
        workers = await view.workers()
        paused = await view.paused_since()
        self._ready_bands = backlog.bands()
        self._gauges.update({
            "ingest_leased": backlog.leased,
            "ingest_oldest_waiting_seconds": backlog.oldest_age_s or 0.0,
            "ingest_paused": 0.0 if paused is None else 1.0,
            "workers_alive": len(workers),
            "workers_held_payloads": sum(int(w.get("held", 0)) for w in workers),
        })

    async def _refresh_postgres(self, pool: asyncpg.Pool) -> None:
        async with pool.acquire() as conn:
            upto = await conn.fetchval(QUERIES["dash_db_now"]) - PG_SETTLE
            if self._pg_cursor is None:
                self._pg_cursor = upto
            if upto > self._pg_cursor:
                for row in await conn.fetch(QUERIES["dash_lag_histogram"], self._pg_cursor, upto, list(LAG_BUCKETS)):
                    self._lag_buckets[row["bucket"]] += row["n"]
                    self._lag_sum += row["total"]
                self.totals["delivered"] += await conn.fetchval(QUERIES["dash_delivered_between"], self._pg_cursor, upto)
                self._pg_cursor = upto
            sched = await conn.fetchrow(QUERIES["dash_scheduled_totals"], upto)
        failures = await open_failures(pool)
        assert sched is not None
        self._gauges.update({"scheduled_orders": sched["scheduled"], "scheduled_overdue": sched["overdue"],
                             "rejected_open": failures["rejected"],
                             "deliveries_failed_open": failures["deliveries"]})

    def collect(self) -> Iterator[Metric]:
        """What the last refresh saw, in the Prometheus data model."""
        for name, doc in COUNTER_HELP.items():
            yield CounterMetricFamily(f"orderflow_orders_{name}", doc, value=self.totals[name],
                                      created=self._created)
        cumulative, buckets = 0, []
        for bound, n in zip(LAG_BUCKETS, self._lag_buckets, strict=False):
            cumulative += n
            buckets.append((repr(bound), float(cumulative)))
        buckets.append(("+Inf", float(sum(self._lag_buckets))))
        yield HistogramMetricFamily("orderflow_ingest_lag_seconds",
                                    "Time from the 202 to the stored receipt (receipts.stored_at - received_at).",
                                    buckets=buckets, sum_value=self._lag_sum)
        ready = GaugeMetricFamily("orderflow_ingest_ready", "Payloads waiting in Redis, by priority band.",
                                  labels=["band"])
        for band, n in self._ready_bands.items():
            ready.add_metric([band], n)
        yield ready
        docs = {
            "ingest_leased": "Payloads claimed by workers, not yet stored.",
            "ingest_oldest_waiting_seconds": "Age of the oldest payload waiting in the ready set.",
            "ingest_paused": "1 while ingest consumption is paused from the dashboard.",
            "workers_alive": "Workers with a heartbeat in the last 30 s.",
            "workers_held_payloads": "Payloads the live workers hold.",
            "scheduled_orders": "Orders waiting for their release time.",
            "scheduled_overdue": "Scheduled orders whose release time has passed.",
            "rejected_open": "Rejected orders no operator has retried or discarded (counted up to 1000).",
            "deliveries_failed_open": "Webhook deliveries that gave up, not retried or discarded (up to 1000).",
        }
        for name, doc in docs.items():
            if name in self._gauges:
                yield GaugeMetricFamily(f"orderflow_{name}", doc, value=self._gauges[name])
        up = GaugeMetricFamily("orderflow_metrics_source_up", "1 when the last scrape could read the source.",
                               labels=["source"])
        for source, value in self._up.items():
            up.add_metric([source], value)
        yield up


METRICS = web.AppKey("metrics", DeploymentMetrics)


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics in the Prometheus text format."""
    collector = request.app[METRICS]
    await collector.refresh(request.config_dict[POOL], request.config_dict[QUEUE])
    return web.Response(body=generate_latest(collector.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


def install_metrics(app: web.Application) -> None:
    """Serve /metrics from `app` (which provides POOL and QUEUE)."""
    app[METRICS] = DeploymentMetrics()
    app.router.add_get("/metrics", metrics)
