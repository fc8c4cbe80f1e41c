"""Turning a page body into a response: the layout, the paused banner, the one-time message."""

from __future__ import annotations

import base64
import binascii

from aiohttp import web

from ingest.dashboard.actions import FLASH_COOKIE
from ingest.dashboard.data import RedisView
from ingest.dashboard.keys import SESSION
from ingest.dashboard.render import PREFIX, Html, page
from ingest.keys import QUEUE


async def respond(request: web.Request, title: str, body: Html, *, active: str, page_id: str = "",
                  paused_since: float | None = None) -> web.Response:
    """The page in the layout, for the logged-in operator; `paused_since` when the caller already knows it."""
    session = request[SESSION]
    if paused_since is None:
        paused_since = await RedisView(request.config_dict[QUEUE]).paused_since()
    flash = None
    if FLASH_COOKIE in request.cookies:
        try:
            flash = base64.urlsafe_b64decode(request.cookies[FLASH_COOKIE].encode()).decode()
        except (binascii.Error, UnicodeDecodeError):
            flash = None
    html = page(title, body, operator=session.operator, csrf=session.csrf_token, active=active,
                paused_since=paused_since, flash=flash, page_id=page_id,
                status_note="paused" if paused_since is not None else "running")
    resp = web.Response(text=html, content_type="text/html")
    if FLASH_COOKIE in request.cookies:
        resp.del_cookie(FLASH_COOKIE, path=PREFIX)
    return resp
