"""Read side of the receiver: receipts and stored orders, scoped to the caller's entity."""

from __future__ import annotations

import datetime as dt

import asyncpg
import msgspec

from shared.db import QUERIES
from shared.queue import IngestQueue, seq_of_receipt, split_envelope
from shared.schemas import (
    Address,
    LineOut,
    OrderOut,
    Problem,
    Receipt,
    ShipmentOut,
    VersionOut,
    header_decoder,
)


async def load_receipt(pool: asyncpg.Pool, queue: IngestQueue, rid: str, entity_id: str) -> Receipt | None:
    """A stored outcome from PostgreSQL, else `queued` while the payload waits in Redis."""
    # Redis first: a payload leaves Redis only after its commit, so one of the two reads sees it.
    seq = seq_of_receipt(rid)
    envelope = await queue.peek_envelope(seq) if seq is not None else None
    if envelope is not None:
        header = header_decoder.decode(split_envelope(envelope)[0])
        if header.entity_id == entity_id and rid.endswith("_" + header.token):
            return Receipt(receipt_id=rid, state="queued", reference=header.reference,
                           received_at=dt.datetime.fromtimestamp(header.received_at, dt.UTC),
                           warnings=header.warnings)
    row = await pool.fetchrow(QUERIES["receipt_get"], rid, entity_id)
    if row is None:
        return None
    return Receipt(
        receipt_id=row["receipt_id"], state=row["state"], reason=row["reason"], code=row["code"],
        reference=row["reference"], source_id=row["source_id"], received_at=row["received_at"],
        stored_at=row["stored_at"], warnings=msgspec.convert(row["warnings"], list[Problem]))


async def load_order(pool: asyncpg.Pool, entity_id: str, reference: str) -> OrderOut | None:
    """The stored order with lines, addresses and versions."""
    async with pool.acquire() as conn:
        row = await conn.fetchrow(QUERIES["order_get"], entity_id, reference)
        if row is None:
            return None
        oid = row["order_id"]
        lines = await conn.fetch(QUERIES["order_lines"], oid)
        addresses = {r["kind"]: r for r in await conn.fetch(QUERIES["order_addresses"], oid)}
        versions = await conn.fetch(QUERIES["order_versions"], oid)
        shipments = await conn.fetch(QUERIES["shipments_of_order"], oid)

    def address(kind: str) -> Address | None:
        r = addresses.get(kind)
        if r is None:
            return None
        fields = dict(r)
        del fields["kind"]
        fields["country"] = fields["country"].strip()
        return Address(**fields)

    data = dict(row)
    del data["order_id"]
    return OrderOut(
        **data,
        billing=address("billing"),
        shipping=address("shipping"),
        items=[LineOut(**dict(r)) for r in lines],
        versions=[VersionOut(**dict(r)) for r in versions],
        shipments=[ShipmentOut(shipment_id=r["external_id"], partial=r["partial"],
                               shipped_at=r["shipped_at"], lines=r["lines"]) for r in shipments],
    )
