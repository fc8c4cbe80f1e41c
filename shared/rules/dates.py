"""Date rules: parsing the Demand API's date strings into aware UTC datetimes."""

from __future__ import annotations

import datetime
import re
import zoneinfo
from functools import lru_cache

__all__ = ["parse_order_datetime"]

_EXPECTED = "expected 'Y-m-d H:i:s', 'Y-m-d' or ISO 8601 such as 2019-04-18T08:47:25+02:00"

# One explicit grammar instead of datetime.fromisoformat, which in 3.11 also takes week
# dates, ordinal dates and basic formats ("20190418") that no client means to send.
_DATE_RE = re.compile(
    r"""
    (?P<year>[0-9]{4})-(?P<month>[0-9]{2})-(?P<day>[0-9]{2})
    (?:
        [T\ ]
        (?P<hour>[0-9]{2}):(?P<minute>[0-9]{2})
        (?::(?P<second>[0-9]{2})(?:[.,](?P<fraction>[0-9]{1,9}))?)?
        (?P<offset>Z|[+-][0-9]{2}(?::?[0-9]{2})?)?
    )?
    """,
    re.VERBOSE | re.ASCII | re.IGNORECASE,
)

# PHP/MySQL sources (Magento among them) send the zero date for "no date"; reading it
# as none is what such a client means, where an error would only block its orders.
_ZERO_DATES = frozenset({"0000-00-00", "0000-00-00 00:00:00"})


# The shapes nearly every client sends: 'Y-m-d H:i:s' and ISO 8601 with seconds, an
# optional fraction and an optional 'Z' or '+hh:mm'. A strict subset of _DATE_RE with the
# same meaning per group; whatever it does not match goes to the full parser.
_COMMON_RE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:[.,]([0-9]{1,9}))?([Zz]|[+-][0-9]{2}:[0-9]{2})?",
    re.ASCII,
)


def parse_order_datetime(value: str, zone: zoneinfo.ZoneInfo) -> datetime.datetime | None:
    """Parse an API date in the entity's zone; '' means none."""
    text = value.strip()
    if not text or text in _ZERO_DATES:
        return None
    parsed = _parse_common(text, zone)
    if parsed is None:
        parsed = _parse_any(text, zone)
    return parsed


def _parse_common(text: str, zone: zoneinfo.ZoneInfo) -> datetime.datetime | None:
    """The same result as _parse_any for the common shapes, else None (never an error)."""
    match = _COMMON_RE.fullmatch(text)
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    try:
        local = datetime.datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            int(second),
            int(fraction.ljust(6, "0")[:6]) if fraction else 0,
            # fold=0 as in _parse_any; a tzinfo given here equals .replace(tzinfo=...).
            zone if offset is None else _offset_zone(offset),
        )
        return local.astimezone(datetime.UTC)
    except (ValueError, OverflowError):
        return None  # impossible value: _parse_any words the error


def _parse_any(text: str, zone: zoneinfo.ZoneInfo) -> datetime.datetime:
    """Parse a stripped, non-empty date of any accepted shape, or raise ValueError."""
    match = _DATE_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"not a date: {_EXPECTED}")
    try:
        local = datetime.datetime(
            int(match["year"]),
            int(match["month"]),
            int(match["day"]),
            int(match["hour"] or 0),
            int(match["minute"] or 0),
            int(match["second"] or 0),
            # Sub-microsecond digits (.NET sends seven) are truncated, not rounded, so a
            # value never moves into the next second.
            int((match["fraction"] or "").ljust(6, "0")[:6]),
        )
        offset = match["offset"]
        if offset is None:
            # Naive: a wall time in the entity's zone. fold=0 picks the first of two
            # instants when clocks go back, and for a wall time that does not exist
            # (clocks go forward) applies the offset in force before the gap, which
            # shifts it forward by the gap: 02:30 on a spring-forward night in
            # Europe/Amsterdam is 03:30 CEST (01:30 UTC), as PHP's DateTime does.
            aware = local.replace(tzinfo=zone, fold=0)
        else:
            aware = local.replace(tzinfo=_fixed_offset(offset))
        return aware.astimezone(datetime.UTC)
    except (ValueError, OverflowError):
        # Right shape, impossible value: month 13, 25 o'clock, an offset over 24 h, or a
        # year-1/9999 edge that leaves the calendar once converted to UTC.
        raise ValueError(f"no such date or time: {_EXPECTED}") from None


def _fixed_offset(offset: str) -> datetime.timezone:
    """Turn 'Z', '+02', '+0200' or '+02:00' into a fixed-offset zone."""
    if offset in ("Z", "z"):
        return datetime.UTC
    digits = offset[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:] or 0)
    if minutes >= 60:
        raise ValueError("offset minutes out of range")
    delta = datetime.timedelta(hours=hours, minutes=minutes)
    # datetime.timezone itself raises ValueError for offsets of 24 h or more.
    return datetime.timezone(-delta if offset[0] == "-" else delta)


# _fixed_offset, remembered for the common path: offsets repeat and zones are immutable.
_offset_zone = lru_cache(maxsize=256)(_fixed_offset)
