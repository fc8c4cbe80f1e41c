"""Entry point of the worker process: arq runs the lifecycle, cron sweeps and health checks.

The ingest consumer runs as long-lived tasks started in on_startup: arq has no
priorities and one arq job per order would cap throughput (see DESIGN.md).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from arq import cron
from arq.worker import Worker

from shared.db import create_pool
from shared.logging import configure_logging, get_logger
from shared.queue import IngestQueue
from shared.redis_client import arq_redis_settings
from shared.redis_keys import SHIPPED_MEMORY_S
from shared.runtime import use_fast_event_loop
from shared.settings import Settings
from worker.consumer import IngestConsumer, utcnow
from worker.scheduler import ReleaseScheduler
from worker.webhooks import WebhookSender

log = get_logger(__name__)
SHUTDOWN_GRACE_S = 20.0


async def startup(ctx: dict[str, Any]) -> None:
    """Open the pool, start the consumer tasks."""
    settings: Settings = ctx.get("settings") or Settings.from_env()
    ctx["settings"] = settings
    concurrency = int(ctx.get("concurrency", 2))
    ctx["pool"] = await create_pool(settings.database_url, min_size=1, max_size=concurrency + 5)
    queue = IngestQueue(ctx["redis"], settings.redis_prefix)
    ctx["stop"] = stop = asyncio.Event()
    ctx["consumers"] = consumers = [IngestConsumer(queue, ctx["pool"], settings) for _ in range(concurrency)]
    ctx["tasks"] = [asyncio.create_task(c.run(stop), name=f"consumer-{i}") for i, c in enumerate(consumers)]
    scheduler = ReleaseScheduler(ctx["pool"], settings, utcnow, ctx["redis"], queue.keys.stats)
    ctx["tasks"].append(asyncio.create_task(scheduler.run(stop), name="release-scheduler"))
    ctx["tasks"].append(asyncio.create_task(heartbeats(consumers, stop), name="heartbeats"))
    ctx["tasks"].append(asyncio.create_task(WebhookSender(ctx["pool"], settings).run(stop), name="webhooks"))
    ctx["queue"] = queue
    log.info("worker_started", concurrency=concurrency, prefix=settings.redis_prefix)


async def shutdown(ctx: dict[str, Any]) -> None:
    """Let in-flight batches finish, hand back anything still claimed, close the pool."""
    stop: asyncio.Event | None = ctx.get("stop")
    if stop is not None:
        stop.set()
        tasks = ctx.get("tasks", [])
        _, pending = await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE_S) if tasks else (set(), set())
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        held = [seq for c in ctx.get("consumers", []) for seq in c.held]
        if held:
            back = await ctx["queue"].hand_back(held)
            log.info("handed_back", count=back)
    if "pool" in ctx:
        await ctx["pool"].close()
    log.info("worker_stopped")


async def sweep_and_beat(ctx: dict[str, Any]) -> None:
    """Cron (any one worker): put expired leases back even when nobody claims; trim the shipped set."""
    await ctx["queue"].sweep()
    await ctx["queue"].forget_old_shipments(SHIPPED_MEMORY_S)


HEARTBEAT_EVERY_S = 5.0


async def heartbeats(consumers: list[IngestConsumer], stop: asyncio.Event) -> None:
    """Every process writes its own heartbeats (arq's cron runs on whichever worker takes it)."""
    while not stop.is_set():
        for consumer in consumers:
            try:
                await consumer.heartbeat()
            except (OSError, ConnectionError, TimeoutError) as exc:
                log.warning("heartbeat_failed", error=repr(exc))
        try:
            await asyncio.wait_for(stop.wait(), timeout=HEARTBEAT_EVERY_S)
        except TimeoutError:
            pass


async def alive_on_this_host(settings: Settings) -> bool:
    """True when a worker process on this host wrote a heartbeat lately (`worker --check`)."""
    from shared.redis_client import connect_redis
    from shared.redis_keys import RedisKeys

    redis = connect_redis(settings, socket_timeout=3, socket_connect_timeout=3)
    try:
        pattern = RedisKeys.for_prefix(settings.redis_prefix).heartbeat + socket.gethostname() + ":*"
        async for _ in redis.scan_iter(match=pattern, count=1000):
            return True
        return False
    finally:
        await redis.aclose()


def arq_options(settings: Settings, concurrency: int = 2) -> dict[str, Any]:
    """Keyword arguments for arq's Worker, from our settings."""
    return {
        "functions": [],
        "cron_jobs": [cron(sweep_and_beat, second=set(range(0, 60, 5)), run_at_startup=True,
                           unique=False, timeout=10)],
        "on_startup": startup,
        "on_shutdown": shutdown,
        # redis://, unix:// or redis+sentinel:// (arq asks the Sentinels for the primary)
        "redis_settings": arq_redis_settings(settings),
        # the hash tag keeps arq's own keys in our deployment's Redis Cluster slot
        "queue_name": "{" + settings.redis_prefix + "}:arq",
        "health_check_key": "{" + settings.redis_prefix + "}:arq:health-check",
        "ctx": {"settings": settings, "concurrency": concurrency},
        "keep_result": 0,
        "poll_delay": 0.5,
    }


def create_worker(settings: Settings, concurrency: int = 2) -> Worker:
    """An arq Worker wired to our consumer."""
    return Worker(**arq_options(settings, concurrency))


def __getattr__(name: str) -> Any:
    """`arq worker.main.WorkerSettings`: the same options as `orderflow worker`, from ORDERFLOW_*."""
    if name == "WorkerSettings":
        return type("WorkerSettings", (), {"__doc__": "arq settings from ORDERFLOW_* variables.",
                                           **arq_options(Settings.from_env())})
    raise AttributeError(name)


def run(settings: Settings, concurrency: int = 2) -> None:
    """Run one worker process until SIGINT/SIGTERM."""
    configure_logging(settings.log_level, settings.log_format)
    use_fast_event_loop()
    create_worker(settings, concurrency).run()
