"""Helpers the dashboard tests share: operators, a logged-in HTTP client, payloads fed like the receiver's."""

from __future__ import annotations

import json
import re
import secrets
import time
from typing import Any

import aiohttp
import asyncpg

from ingest.dashboard.passwords import hash_password
from shared.db import QUERIES
from shared.queue import IngestQueue, make_envelope, receipt_id
from shared.schemas import Header, json_encoder

PASSWORD = "correct horse battery staple"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_LOGIN_TOKEN = re.compile(r'name="login_token" value="([^"]+)"')


async def create_operator(pool: asyncpg.Pool, name: str = "ops", password: str = PASSWORD) -> str:
    """An operator straight in the database (the CLI is tested on its own)."""
    await pool.execute(QUERIES["dash_operator_create"], name, hash_password(password))
    return name


class Dashboard:
    """An HTTP client logged in to /dashboard, holding the session's CSRF token."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.csrf = ""

    async def close(self) -> None:
        await self.session.close()

    async def login(self, name: str, password: str = PASSWORD) -> aiohttp.ClientResponse:
        async with self.session.get(self.base + "/dashboard/login") as resp:
            token = _LOGIN_TOKEN.search(await resp.text())
        assert token is not None
        resp = await self.session.post(self.base + "/dashboard/login", allow_redirects=False,
                                       data={"name": name, "password": password, "login_token": token.group(1)})
        await resp.read()
        if resp.status == 303:
            async with self.session.get(self.base + "/dashboard/") as page:
                found = _CSRF.search(await page.text())
                assert found is not None
                self.csrf = found.group(1)
        return resp

    async def get(self, path: str, **kw: Any) -> tuple[int, str]:
        async with self.session.get(self.base + path, **kw) as resp:
            return resp.status, await resp.text()

    async def post(self, path: str, data: Any = None, *, csrf: bool = True,
                   headers: dict[str, str] | None = None) -> aiohttp.ClientResponse:
        form = aiohttp.FormData(data or [])
        if csrf:
            form.add_field("csrf_token", self.csrf)
        resp = await self.session.post(self.base + path, data=form, allow_redirects=False, headers=headers)
        await resp.read()
        return resp


class Feeder:
    """Puts payloads on the queue exactly as the receiver does, and keeps their envelopes."""

    def __init__(self, queue: IngestQueue, entity_id: str, key_id: str, can_create: bool = True) -> None:
        self.queue, self.entity_id, self.key_id, self.can_create = queue, entity_id, key_id, can_create
        self.envelopes: dict[str, bytes] = {}

    async def put(self, payload: dict[str, Any], priority: int = 0, received_at: float | None = None) -> str:
        token = secrets.token_hex(6)
        header = Header(token=token, entity_id=self.entity_id, key_id=self.key_id,
                        can_create_products=self.can_create, timezone="UTC",
                        received_at=time.time() if received_at is None else received_at,
                        priority=priority, reference=str(payload.get("reference", "")))
        env = make_envelope(json_encoder.encode(header), json.dumps(payload).encode())
        [seq] = await self.queue.enqueue_many([(priority, self.key_id, "test", env)])
        rid = receipt_id(seq, token)
        self.envelopes[rid] = env
        return rid

    async def keep_rejected(self, pool: asyncpg.Pool) -> list[str]:
        """The worker's hook, as worker/store.py calls it: keep the envelopes of rejected payloads."""
        rows = await pool.fetch("SELECT receipt_id FROM receipts WHERE state = 'rejected' AND receipt_id = ANY($1)",
                                list(self.envelopes))
        ids = [r["receipt_id"] for r in rows]
        await pool.execute(QUERIES["dash_keep_failed_payloads"], ids, [self.entity_id] * len(ids),
                           [self.envelopes[i] for i in ids])
        return ids


class Sink:
    """A webhook receiver on loopback that records what it gets and answers `status`."""

    def __init__(self) -> None:
        self.status = 200
        self.got: list[tuple[str, dict[str, Any], int]] = []  # (webhook-id, body, status answered)
        self.url = ""
        self._runner: Any = None

    async def _handle(self, request: Any) -> Any:
        from aiohttp import web

        self.got.append((request.headers.get("webhook-id", ""), await request.json(), self.status))
        return web.Response(status=self.status, text="ok" if self.status < 300 else "sink says no")

    async def start(self) -> Sink:
        from aiohttp import web

        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/hook"  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        await self._runner.cleanup()
