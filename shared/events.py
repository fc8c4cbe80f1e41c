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
    data: dict[str, Any]


def order_event_data(document: dict[str, Any], *, state: str, status: int, priority: int,
                     release_at: dt.datetime | None, released_at: dt.datetime | None,
                     source_id: str, version: int) -> dict[str, Any]:
    """The order as stored, with its state, source and per-order version."""
    return {**document, "state": state, "status": status, "priority": priority,
            "release_at": release_at, "released_at": released_at, "source_id": source_id,
            "version": version}


async def write_events(conn: asyncpg.Connection, events: list[Event],
                       ids: dict[tuple[str, str], int | None], now: dt.datetime) -> None:
    """Insert outbox rows in the caller's transaction; `ids` maps keys to order ids."""
    if not events:
        return
    await conn.execute(
        QUERIES["batch_insert_events"], [e.key[0] for e in events], [ids.get(e.key) for e in events],
        [e.key[1] for e in events], [e.source_id for e in events], [e.type for e in events],
        [e.version for e in events], [e.priority for e in events],
        [json_encoder.encode(e.data).decode() for e in events], [now] * len(events))
