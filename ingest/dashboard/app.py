"""Entry points of the dashboard: `install(app)` for the receiver, `create_standalone_app` for `orderflow dashboard`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path

from aiohttp import web

from ingest.dashboard import actions, auth, live, pages, webhooks
from ingest.dashboard.keys import HUB, STOPPING
from ingest.dashboard.render import PREFIX
from ingest.keys import POOL, QUEUE, REDIS, SETTINGS
from ingest.metrics import install_metrics
from shared.db import QUERIES, create_pool
from shared.queue import IngestQueue
from shared.redis_client import connect_redis
from shared.settings import Settings


async def _stop_streams(app: web.Application) -> None:
    app[STOPPING].set()


def create_dashboard() -> web.Application:
    """The /dashboard sub-application (its parent provides POOL, REDIS, QUEUE and SETTINGS)."""
    app = web.Application(middlewares=[auth.guard])
    app[HUB] = live.OverviewHub()
    app[STOPPING] = asyncio.Event()
    app.on_shutdown.append(_stop_streams)
    app.on_response_prepare.append(auth.security_headers)
    static = Path(str(resources.files("ingest.dashboard").joinpath("static")))
    app.router.add_get("/login", auth.login_form)
    app.router.add_post("/login", auth.login)
    app.router.add_post("/logout", auth.logout)
    app.router.add_get("/", pages.overview)
    app.router.add_get("/events", live.events)
    app.router.add_get("/scheduled", pages.scheduled)
    app.router.add_get("/orders", pages.orders)
    app.router.add_get("/orders/{order_id}", pages.order_page)
    app.router.add_get("/failures", pages.failures)
    app.router.add_get("/webhooks", webhooks.subscriptions)
    app.router.add_get("/webhooks/{subscription_id}", webhooks.subscription_page)
    app.router.add_post("/webhooks/{subscription_id}/enable", webhooks.enable)
    app.router.add_post("/webhooks/{subscription_id}/disable", webhooks.disable)
    app.router.add_post("/webhooks/{subscription_id}/replay", webhooks.replay_since)
    app.router.add_post("/failures/deliveries/retry", webhooks.retry_deliveries_shown)
    app.router.add_post("/failures/deliveries/{delivery_id}/retry", webhooks.retry_delivery)
    app.router.add_post("/failures/deliveries/{delivery_id}/discard", webhooks.discard_delivery)
    app.router.add_post("/ingest/pause", actions.pause_ingest)
    app.router.add_post("/ingest/resume", actions.resume_ingest)
    app.router.add_post("/failures/rejected/retry", actions.retry_shown)
    app.router.add_post("/failures/rejected/{receipt_id}/retry", actions.retry_one)
    app.router.add_post("/failures/rejected/{receipt_id}/discard", actions.discard_one)
    app.router.add_static("/static", static)
    return app


async def _to_dashboard(request: web.Request) -> web.Response:
    raise web.HTTPFound(PREFIX + "/")


def install(app: web.Application) -> None:
    """Mount /dashboard and /metrics on an application that opens POOL, REDIS, QUEUE and SETTINGS."""
    app.router.add_get(PREFIX, _to_dashboard)
    app.add_subapp(PREFIX, create_dashboard())
    install_metrics(app)


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    redis = connect_redis(settings)
    pool = await create_pool(settings.database_url, min_size=0, max_size=4)
    # retries enqueue too: a lost sequence counter must restart above what PostgreSQL has seen
    queue = IngestQueue(redis, settings.redis_prefix, seq_floor=lambda: pool.fetchval(QUERIES["seq_floor"]))
    app[REDIS], app[POOL], app[QUEUE] = redis, pool, queue
    yield
    await pool.close()
    await redis.aclose()


def create_standalone_app(settings: Settings | None = None) -> web.Application:
    """`orderflow dashboard`: the dashboard and /metrics without the ingest API."""
    app = web.Application()
    app[SETTINGS] = settings or Settings.from_env()
    app.cleanup_ctx.append(_resources)
    install(app)
    return app


def run(settings: Settings) -> None:
    """Serve the dashboard alone until SIGINT/SIGTERM."""
    from shared.logging import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    web.run_app(create_standalone_app(settings), host=settings.host, port=settings.port,
                access_log=None, shutdown_timeout=10, print=None)
