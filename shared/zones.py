"""Entity time zones, loaded once per name."""

from __future__ import annotations

from functools import lru_cache
from zoneinfo import ZoneInfo


@lru_cache(maxsize=1024)
def zone_named(name: str) -> ZoneInfo:
    """The IANA zone for a name (ZoneInfoNotFoundError when unknown)."""
    return ZoneInfo(name)
