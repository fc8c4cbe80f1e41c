"""Typed application keys for what the receiver holds open."""

from __future__ import annotations

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web

from ingest.auth import KeyCache
from ingest.handoff import HandoffCoalescer
from shared.queue import IngestQueue
from shared.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
REDIS = web.AppKey("redis", aioredis.Redis)
QUEUE = web.AppKey("queue", IngestQueue)
HANDOFF = web.AppKey("handoff", HandoffCoalescer)
CACHE = web.AppKey("key_cache", KeyCache)
