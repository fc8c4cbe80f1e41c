"""Typed keys of the dashboard sub-application and of its requests."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from ingest.dashboard.auth import Session
    from ingest.dashboard.live import OverviewHub

HUB: web.AppKey[OverviewHub] = web.AppKey("dashboard_hub")
# set when the server stops, so Server-Sent Event streams end instead of holding shutdown
STOPPING = web.AppKey("dashboard_stopping", asyncio.Event)
SESSION: web.RequestKey[Session] = web.RequestKey("dashboard_session")
