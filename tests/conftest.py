"""Shared fixtures: a migrated template database copied per test, a Redis key prefix per test."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from shared.access import hash_key, new_access_key, new_key_id
from shared.db import QUERIES, connect, create_pool, migrate
from shared.logging import configure_logging
from shared.settings import Settings

PG_BASE = os.environ.get("ORDERFLOW_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("ORDERFLOW_TEST_REDIS", "redis://127.0.0.1:6379/0")
FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
TEMPLATE = f"orderflow_tmpl_{os.getpid()}"
configure_logging("WARNING", "console")


def fixture_path(name: str) -> Path:
    """A file of ../shared/fixtures (the published examples)."""
    return FIXTURES / name


@pytest.fixture(scope="session")
def template_db() -> Iterator[str]:
    """One migrated database per test session; each test copies it."""

    async def create() -> None:
        admin = await asyncpg.connect(PG_BASE + "/postgres")
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}"')
            await admin.execute(f'CREATE DATABASE "{TEMPLATE}"')
        finally:
            await admin.close()
        conn = await connect(f"{PG_BASE}/{TEMPLATE}")
        try:
            await migrate(conn)
        finally:
            await conn.close()

    async def drop() -> None:
        admin = await asyncpg.connect(PG_BASE + "/postgres")
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)')
        finally:
            await admin.close()

    asyncio.run(create())
    yield TEMPLATE
    asyncio.run(drop())


@pytest.fixture
async def database_url(template_db: str) -> AsyncIterator[str]:
    """A fresh database for this test, copied from the migrated template."""
    name = f"orderflow_t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG_BASE + "/postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    finally:
        await admin.close()
    yield f"{PG_BASE}/{name}"
    admin = await asyncpg.connect(PG_BASE + "/postgres")
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    yield prefix
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [k async for k in client.scan_iter(match="{" + prefix + "}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
def settings(database_url: str, redis_prefix: str) -> Settings:
    """Settings pointing at this test's database and prefix."""
    return Settings(database_url=database_url, redis_url=REDIS_URL, redis_prefix=redis_prefix,
                    key_cache_ttl_s=1.0, lease_s=30.0, log_format="console")


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    """A pool on this test's database."""
    p = await create_pool(settings.database_url, min_size=1, max_size=4)
    yield p
    await p.close()


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    """A Redis client."""
    client = aioredis.Redis.from_url(settings.redis_url)
    yield client
    await client.aclose()


class Tenant:
    """An entity with keys, made straight in the database."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings, entity_id: str) -> None:
        self.pool, self.settings, self.entity_id = pool, settings, entity_id

    async def key(self, rights: tuple[str, ...] = ("orders:write", "products:create"),
                  sources: list[str] | None = None) -> tuple[str, str]:
        """(key_id, access_key) of a new key."""
        key_id = new_key_id()
        access_key = new_access_key(key_id)
        await self.pool.execute(QUERIES["key_create"], key_id, self.entity_id,
                                hash_key(self.settings.key_pepper, access_key), list(rights), sources)
        return key_id, access_key

    async def headers(self, **kw: Any) -> dict[str, str]:
        """CG-* headers for a new key."""
        _, access_key = await self.key(**kw)
        return {"CG-Access-Key": access_key, "CG-Entity-ID": self.entity_id}


async def make_tenant(pool: asyncpg.Pool, settings: Settings, timezone: str = "UTC") -> Tenant:
    """A new entity."""
    entity_id = "ent_" + uuid.uuid4().hex[:8]
    await pool.execute(QUERIES["entity_create"], entity_id, "Test shop", timezone)
    return Tenant(pool, settings, entity_id)


@pytest.fixture
async def tenant(pool: asyncpg.Pool, settings: Settings) -> Tenant:
    """An entity in UTC."""
    return await make_tenant(pool, settings)


class Server:
    """The real receiver on a real TCP port."""

    def __init__(self, url: str, app: web.Application) -> None:
        self.url, self.app = url, app


@contextlib.asynccontextmanager
async def serve_app(app: web.Application, **runner_options: Any) -> AsyncIterator[Server]:
    """Serve an aiohttp app on a free loopback port for the duration of the block."""
    runner = web.AppRunner(app, access_log=None, **runner_options)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield Server(f"http://127.0.0.1:{port}", app)
    finally:
        await runner.cleanup()


def serve_receiver(settings: Settings) -> contextlib.AbstractAsyncContextManager[Server]:
    """The receiver with these settings, served over HTTP."""
    from ingest.app import create_app

    return serve_app(create_app(settings))


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[Server]:
    """The receiver app served over HTTP on a free loopback port."""
    async with serve_receiver(settings) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[Any]:
    """An aiohttp client session."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def consumer(pool: asyncpg.Pool, redis: aioredis.Redis, settings: Settings) -> Any:
    """An ingest consumer to drain the queue in-process."""
    from shared.queue import IngestQueue
    from worker.consumer import IngestConsumer

    return IngestConsumer(IngestQueue(redis, settings.redis_prefix), pool, settings)


def order_body(reference: str = "000000032", **payload_changes: Any) -> dict[str, Any]:
    """order-valid.json with a reference and payload fields of our choosing."""
    body: dict[str, Any] = json.loads(fixture_path("order-valid.json").read_text())
    body.pop("access_key")
    body.pop("entity_id")
    body["payload"]["reference"] = reference
    for k, v in payload_changes.items():
        if v is None:
            body["payload"].pop(k, None)
        else:
            body["payload"][k] = v
    return body
