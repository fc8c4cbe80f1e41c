"""Process start-up shared by `orderflow serve` and `orderflow worker`."""

from __future__ import annotations

import asyncio
import os


def use_fast_event_loop() -> bool:
    """uvloop when installed (ORDERFLOW_UVLOOP=0 turns it off); True when it is in use."""
    if os.environ.get("ORDERFLOW_UVLOOP", "1") == "0":
        return False
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True
