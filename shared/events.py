"""Outbox rows (order_events): written in the same transaction as the change they describe."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import asyncpg

from shared.db import QUERIES
from shared.schemas import json_encoder

# the state an order enters -> the event that says so
TRANSITION_EVENTS = {"released": "order.released", "held": "order.held", "cancelled": "order.cancelled",
                     "shipped": "order.shipped"}


@dataclasses.dataclass
class Event:
    """One outbox row: what happened to which order (entity, reference), at which version."""

    key: tuple[str, str]
    source_id: str
    type: str
    version: int
    priority: int
    # the event's JSON object, or that object already encoded (JSON text, see order_event_json)
    data: dict[str, Any] | str


def order_event_data(document: dict[str, Any], *, state: str, status: int, priority: int,
                     release_at: dt.datetime | None, released_at: dt.datetime | None,
                     source_id: str, version: int) -> dict[str, Any]:
    """The order as stored, with its state, source and per-order version."""
    return {**document, "state": state, "status": status, "priority": priority,
            "release_at": release_at, "released_at": released_at, "source_id": source_id,
            "version": version}


def order_event_json(order_json: bytes, *, state: str, release_at: dt.datetime | None,
                     released_at: dt.datetime | None, version: int) -> str:
    """`order_event_data` as JSON text, built from the order's JSON without decoding it.

    `order_json` must be `json_encoder.encode(order)` of the Order whose status, priority and
    source_id the event carries (the worker's case). Then `{**document, ...}` keeps those three
    keys in place with the same values and appends state, release_at, released_at and version:
    the same text as encoding order_event_data's dict, as long as Order has those three fields
    and none of the four (tests/unit/test_event_json.py checks both).
    """
    tail = json_encoder.encode({"state": state, "release_at": release_at,
                                "released_at": released_at, "version": version})
    return (order_json[:-1] + b"," + tail[1:]).decode()


def event_json(data: dict[str, Any] | str) -> str:
    """An Event's data as the JSON text stored in order_events.data."""
    return data if isinstance(data, str) else json_encoder.encode(data).decode()


async def write_events(conn: asyncpg.Connection, events: list[Event],
                       ids: dict[tuple[str, str], int | None], now: dt.datetime) -> None:
    """Insert outbox rows in the caller's transaction; `ids` maps keys to order ids."""
    if not events:
        return
    await conn.execute(
        QUERIES["batch_insert_events"], [e.key[0] for e in events], [ids.get(e.key) for e in events],
        [e.key[1] for e in events], [e.source_id for e in events], [e.type for e in events],
        [e.version for e in events], [e.priority for e in events],
        [event_json(e.data) for e in events], [now] * len(events))
