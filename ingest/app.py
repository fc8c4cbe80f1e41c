"""The receiver application: `ingest.app:create_app`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.typedefs import Handler

from ingest.auth import STORE_DOWN, KeyCache, KeyStoreUnavailable, follow_revocations
from ingest.batch import routes as batch_routes
from ingest.dashboard.app import install as install_dashboard
from ingest.handoff import HandoffCoalescer
from ingest.keys import CACHE, HANDOFF, POOL, QUEUE, REDIS, SETTINGS
from ingest.responses import problem
from ingest.routes import routes
from ingest.shipments import routes as shipment_routes
from ingest.webhooks_api import routes as webhook_routes
from shared.db import QUERIES, create_pool
from shared.queue import IngestQueue
from shared.redis_client import connect_redis
from shared.runtime import use_fast_event_loop
from shared.settings import Settings


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    # redis://, unix:// or redis+sentinel:// (then always the current primary)
    redis = connect_redis(settings, socket_timeout=5, socket_connect_timeout=2, health_check_interval=10)
    # The receiver must start (and answer 503) while PostgreSQL is down: the pool connects lazily.
    pool = await create_pool(settings.database_url, min_size=0, max_size=8, command_timeout=10)
    queue = IngestQueue(redis, settings.redis_prefix,
                        seq_floor=lambda: pool.fetchval(QUERIES["seq_floor"]))
    handoff = HandoffCoalescer(queue, per_key=settings.rate_per_key, per_address=settings.rate_per_address)
    app[REDIS], app[POOL], app[QUEUE], app[HANDOFF] = redis, pool, queue, handoff
    app[CACHE] = KeyCache(pool, settings.key_pepper, settings.key_cache_ttl_s)
    revocations = asyncio.create_task(follow_revocations(app[CACHE], redis, queue.keys.revocations))
    yield
    await _cancel(revocations)
    await handoff.close()
    await pool.close()
    await redis.aclose()


async def _cancel(task: asyncio.Task[None]) -> None:
    """Cancel a task and wait for it; cancel again when the first was lost.

    redis-py's read with a timeout (pubsub.get_message(timeout=...)) can swallow a cancel that
    lands as its timeout expires; the task would then run on and the receiver never exit.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as never retrieved


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Paths holding U+0000 name nothing we store (PostgreSQL text cannot hold it): 404.

    PostgreSQL unreachable: 503 (retry) rather than 500; enqueue needs it only for unseen keys.
    One middleware, not two: aiohttp runs each as a coroutine on every request.
    """
    if request.match_info and any("\x00" in v for v in request.match_info.values()):
        return problem(404, "$", "no such resource")
    try:
        return await handler(request)
    except KeyStoreUnavailable:
        return problem(503, "$", "access keys cannot be checked right now; nothing was accepted, please retry",
                       headers={"Retry-After": "1"})
    except STORE_DOWN:
        return problem(503, "$", "the database is unavailable; please retry", headers={"Retry-After": "1"})


def create_app(settings: Settings | None = None) -> web.Application:
    """The aiohttp app; resources open in cleanup_ctx, never at import."""
    settings = settings or Settings.from_env()
    # each route enforces its own limit (read_body); this is the outer bound
    app = web.Application(client_max_size=max(settings.max_body_bytes, settings.max_batch_body_bytes))
    app[SETTINGS] = settings
    app.middlewares.append(_guard)
    app.cleanup_ctx.append(_resources)
    app.add_routes(batch_routes)
    app.add_routes(routes)
    app.add_routes(shipment_routes)
    app.add_routes(webhook_routes)
    install_dashboard(app)  # /dashboard (operators) and /metrics
    return app


def run(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM; in-flight requests get time to finish."""
    from shared.logging import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    use_fast_event_loop()
    web.run_app(create_app(settings), host=settings.host, port=settings.port,
                access_log=None, shutdown_timeout=30, print=None)
