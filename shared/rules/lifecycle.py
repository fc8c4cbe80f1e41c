"""Order lifecycle: states from status and release time, and which changes each state allows.

Pure functions; the worker applies them inside its batch transaction.
"""

from __future__ import annotations

import datetime as dt
from typing import NamedTuple

# After release only these may change; after shipping nothing may.
CHANGEABLE_AFTER_RELEASE = frozenset({"billing", "shipping", "status", "priority"})
STATE_OF_STATUS = {0: "new", 8: "held", 9: "cancelled"}


class Placement(NamedTuple):
    """Where an order stands after a payload is applied."""

    state: str
    release_at: dt.datetime | None
    released_at: dt.datetime | None


def place(
    status: int,
    delivery_at: dt.datetime | None,
    now: dt.datetime,
    *,
    released_at: dt.datetime | None = None,
) -> Placement:
    """State for a status: Process is released at delivery_at (or now), scheduled before that."""
    if status != 1:
        return Placement(STATE_OF_STATUS[status], None, released_at)
    if released_at is not None:
        return Placement("released", released_at, released_at)
    release_at = delivery_at or now
    if release_at <= now:
        return Placement("released", release_at, now)
    return Placement("scheduled", release_at, None)


def refuse_change(state: str, changed: frozenset[str], new_status: int) -> str | None:
    """Why a change to an order in `state` is refused, or None when it may be applied."""
    if state == "shipped":
        return "the order is shipped: no further changes are accepted"
    if state == "cancelled":
        return "the order is cancelled: no further changes are accepted"
    if state == "released":
        locked = sorted(changed - CHANGEABLE_AFTER_RELEASE)
        if locked:
            return (
                "the order is released: only addresses, status and priority may change; "
                f"refused changes to {', '.join(locked)}"
            )
        if new_status == 0:
            return "the order is released: it cannot go back to status 0 (new)"
    return None


def changed_fields(old: dict[str, object], new: dict[str, object]) -> frozenset[str]:
    """Top-level fields of the normalised order whose values differ."""
    return frozenset(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
