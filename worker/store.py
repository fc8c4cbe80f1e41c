"""Store a claimed batch of payloads in one PostgreSQL transaction.

Decisions (sequence guard, source ownership, identical repeats, change rules, unknown
SKUs) are made in Python from rows locked up front; the writes are a handful of
set-based statements, so a batch of 200 costs about as many round trips as a batch of 1.
One bad order never fails its batch-mates: it gets a rejected receipt, the rest commit.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any

import asyncpg
import msgspec

from shared.db import QUERIES
from shared.events import TRANSITION_EVENTS, Event, order_event_data, write_events
from shared.logging import get_logger
from shared.queue import normalised_order, receipt_id, split_envelope
from shared.rules.lifecycle import changed_fields, place, refuse_change
from shared.rules.order import OrderInvalid, content_hash, normalize_order
from shared.schemas import (
    Header,
    Order,
    PayloadIn,
    Problem,
    header_decoder,
    json_decoder,
    json_encoder,
    order_decoder,
)
from shared.zones import zone_named

log = get_logger(__name__)



class BatchRace(Exception):
    """Another worker wrote one of our references between our lock and our write; redo the batch."""


@dataclasses.dataclass
class Prepared:
    """One claimed payload, decoded and normalised (or with the reason it could not be)."""

    seq: int
    header: Header
    receipt_id: str
    received_at: dt.datetime
    reference: str
    source_id: str
    order: Order | None = None
    # the raw payload as JSON text (stored as is) and the normalised order as JSON bytes
    payload_json: str = ""
    order_json: bytes = b""
    warnings: list[Problem] = dataclasses.field(default_factory=list)
    error: str | None = None


@dataclasses.dataclass
class ReceiptRow:
    """The outcome of one payload, as written to `receipts`."""

    receipt_id: str
    entity_id: str
    seq: int
    reference: str
    source_id: str
    state: str
    code: int
    reason: str | None
    warnings: list[Problem]
    received_at: dt.datetime
    stored_at: dt.datetime
    key: tuple[str, str] | None = None
    # this payload released the order (live counter for the dashboard)
    released: bool = False


@dataclasses.dataclass
class Current:
    """What we know of a stored order while planning a batch."""

    order_id: int | None
    source_id: str
    seq: int
    state: str
    version: int
    content_hash: bytes
    document: dict[str, Any]
    release_at: dt.datetime | None
    released_at: dt.datetime | None
    stored_at: dt.datetime


def readable(envelope: bytes) -> bool:
    """True when the header decodes (a payload without a readable header cannot get a receipt)."""
    try:
        header_decoder.decode(split_envelope(envelope)[0])
    except (msgspec.DecodeError, msgspec.ValidationError):
        return False
    return True


def prepare(seq: int, envelope: bytes) -> Prepared:
    """Decode an envelope and apply the order rules, exactly as the receiver did."""
    header_json, raw = split_envelope(envelope)
    header = header_decoder.decode(header_json)
    received = dt.datetime.fromtimestamp(header.received_at, dt.UTC)
    item = Prepared(seq, header, receipt_id(seq, header.token), received, header.reference, "",
                    warnings=header.warnings)
    order_json = normalised_order(envelope)
    try:
        if order_json is not None:
            # the receiver already applied the rules: decode its result instead of redoing them
            item.order = order_decoder.decode(order_json)
        else:
            payload = json_decoder.decode(raw)
            if isinstance(payload, dict):
                item.source_id = str(payload.get("source_id") or "")
            typed = msgspec.convert(payload, type=PayloadIn, strict=False)
            item.order, _ = normalize_order(typed, zone_named(header.timezone))
            order_json = json_encoder.encode(item.order)
        item.order_json = order_json
        item.payload_json = raw.decode()
        item.reference, item.source_id = item.order.reference, item.order.source_id
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        item.order = None
        item.error = f"invalid payload: {exc}"
    except OrderInvalid as exc:
        item.error = "; ".join(f"{p.loc}: {p.msg}" for p in exc.errors)
    return item


async def store_batch(
    conn: asyncpg.Connection, batch: Sequence[tuple[int, bytes]], now: dt.datetime
) -> list[ReceiptRow]:
    """Commit a batch; on a data error, store each payload alone so only the bad one fails."""
    prepared = sorted((prepare(seq, env) for seq, env in batch), key=lambda p: p.seq)
    for attempt in range(3):
        try:
            async with conn.transaction():
                receipts = await _plan_and_write(conn, prepared, now)
                await _keep_rejected(conn, receipts, dict(batch))
                return receipts
        except (BatchRace, asyncpg.DeadlockDetectedError) as exc:
            log.info("batch_race_retry", attempt=attempt, error=repr(exc))
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError,
                asyncpg.ProgramLimitExceededError, OverflowError, ValueError) as exc:
            if len(prepared) == 1:
                return await _reject_alone(conn, prepared[0], now, f"could not be stored: {exc}", batch[0][1])
            log.warning("batch_split", size=len(prepared), error=str(exc))
            rows: list[ReceiptRow] = []
            for seq, envelope in sorted(batch):
                rows += await store_batch(conn, [(seq, envelope)], now)
            return rows
    raise BatchRace("batch kept racing with another worker")


def event_data(cur: Current, priority: int, status: int) -> dict[str, Any]:
    """The order as stored at `cur`, for an outbox row."""
    return order_event_data(cur.document, state=cur.state, status=status, priority=priority,
                            release_at=cur.release_at, released_at=cur.released_at,
                            source_id=cur.source_id, version=cur.version)


def _json(value: Any) -> str:
    return json_encoder.encode(value).decode()


async def _keep_rejected(conn: asyncpg.Connection, receipts: list[ReceiptRow], envelopes: dict[int, bytes]) -> None:
    """Keep rejected payloads so an operator can retry them from the dashboard."""
    rejected = [r for r in receipts if r.state == "rejected"]
    if rejected:
        await conn.execute(QUERIES["dash_keep_failed_payloads"], [r.receipt_id for r in rejected],
                           [r.entity_id for r in rejected], [envelopes[r.seq] for r in rejected])


async def _reject_alone(conn: asyncpg.Connection, item: Prepared, now: dt.datetime, reason: str,
                        envelope: bytes) -> list[ReceiptRow]:
    row = _receipt(item, now, "rejected", 422, reason)
    event = Event((row.entity_id, row.reference), row.source_id, "order.rejected", 0, 0,
                  {"receipt_id": row.receipt_id, "reference": row.reference, "source_id": row.source_id,
                   "code": row.code, "reason": row.reason, "version": 0})
    async with conn.transaction():
        if await _write_receipts(conn, [row], {}):
            await write_events(conn, [event], {}, now)
            await _keep_rejected(conn, [row], {row.seq: envelope})
    return [row]


def _clean(text: str) -> str:
    # PostgreSQL text cannot hold U+0000; the receiver refuses it, this covers older payloads
    return text.replace("\x00", "\ufffd")


def _receipt(item: Prepared, now: dt.datetime, state: str, code: int, reason: str | None,
             key: tuple[str, str] | None = None) -> ReceiptRow:
    warnings = [Problem(loc=_clean(p.loc), msg=_clean(p.msg)) for p in item.warnings]
    return ReceiptRow(item.receipt_id, item.header.entity_id, item.seq, _clean(item.reference),
                      _clean(item.source_id), state, code, reason and _clean(reason), warnings,
                      item.received_at, now, key)


async def _plan_and_write(
    conn: asyncpg.Connection, prepared: list[Prepared], now: dt.datetime
) -> list[ReceiptRow]:
    valid = [p for p in prepared if p.order is not None]
    pairs = sorted({(p.header.entity_id, p.reference) for p in valid})
    current: dict[tuple[str, str], Current] = {}
    if pairs:
        # Serialise batches that touch the same references, new ones included, always in one
        # order: no deadlock, and no two workers creating the same reference blind.
        await conn.execute(QUERIES["batch_lock_references"], [e for e, _ in pairs], [r for _, r in pairs])
        for r in await conn.fetch(QUERIES["batch_lock_orders"], [e for e, _ in pairs], [ref for _, ref in pairs]):
            current[(r["entity_id"], r["reference"])] = Current(
                r["order_id"], r["source_id"], r["seq"], r["state"], r["version"],
                bytes(r["content_hash"]), r["document"], r["release_at"], r["released_at"],
                r["stored_at"])
    sku_pairs = sorted({(p.header.entity_id, line.sku) for p in valid for line in p.order.items})  # type: ignore[union-attr]
    known: set[tuple[str, str]] = set()
    if sku_pairs:
        rows = await conn.fetch(QUERIES["batch_known_products"], [e for e, _ in sku_pairs], [s for _, s in sku_pairs])
        known = {(r["entity_id"], r["sku"]) for r in rows}

    receipts: list[ReceiptRow] = []
    writes: dict[tuple[str, str], tuple[Prepared, Current]] = {}
    bumps: dict[tuple[str, str], int] = {}
    versions: list[tuple[tuple[str, str], int, int, str, list[str]]] = []
    new_products: dict[tuple[str, str], tuple[str, Any, str]] = {}
    events: list[Event] = []
    touched: dict[tuple[str, str], set[str]] = {}

    for item in prepared:
        order = item.order
        if order is None:
            receipts.append(_receipt(item, now, "rejected", 422, item.error))
            continue
        key = (item.header.entity_id, order.reference)
        cur = current.get(key)
        if cur is not None and cur.source_id != order.source_id:
            receipts.append(_receipt(item, now, "rejected", 409,
                            f"reference {order.reference!r} belongs to source {cur.source_id!r}"))
            continue
        if cur is not None and item.seq <= cur.seq:
            if item.seq == cur.seq:  # the same payload again: its lease expired after the commit
                receipts.append(_receipt(item, now, "stored", 200, None, key))
            else:
                receipts.append(_receipt(item, now, "superseded", 409,
                                f"a newer update (sequence {cur.seq}) is already stored", key))
            continue
        document = json_decoder.decode(item.order_json)
        digest = content_hash(item.order_json)
        if cur is not None and digest == cur.content_hash:
            cur.seq = bumps[key] = item.seq
            receipts.append(_receipt(item, now, "stored", 200, "identical repeat: nothing changed", key))
            continue
        changes: list[str] = ["*"]
        if cur is not None:
            changed = changed_fields(cur.document, document)
            effective = cur.state
            if cur.released_at is not None and cur.state not in ("shipped", "cancelled"):
                effective = "released"  # held after release: still only addresses, status, priority
            refusal = refuse_change(effective, changed, order.status)
            if refusal:
                receipts.append(_receipt(item, now, "rejected", 422, refusal, key))
                continue
            changes = sorted(changed)
        unknown = [line for line in order.items if (key[0], line.sku) not in known]
        if unknown and not item.header.can_create_products:
            skus = ", ".join(sorted({repr(line.sku) for line in unknown}))
            receipts.append(_receipt(item, now, "rejected", 422,
                            f"unknown SKU {skus}: this key may not create products"))
            continue
        for line in unknown:
            known.add((key[0], line.sku))
            new_products[(key[0], line.sku)] = (line.description, line.weight, item.receipt_id)
        placement = place(order.status, order.delivery_at, now, released_at=cur.released_at if cur else None)
        version = cur.version + 1 if cur else 1
        nxt = Current(cur.order_id if cur else None, order.source_id, item.seq, placement.state,
                      version, digest, document, placement.release_at, placement.released_at,
                      cur.stored_at if cur else now)
        current[key] = nxt
        writes[key] = (item, nxt)
        touched.setdefault(key, set()).update(changes)
        bumps.pop(key, None)
        versions.append((key, version, item.seq, item.receipt_id, changes))
        stored = _receipt(item, now, "stored", 200, None, key)
        stored.released = nxt.state == "released" and (cur is None or cur.state != "released")
        receipts.append(stored)
        data = event_data(nxt, order.priority, order.status)
        events.append(Event(key, order.source_id, "order.created" if cur is None else "order.updated",
                            version, order.priority, data))
        if nxt.state != (cur.state if cur else None) and nxt.state in TRANSITION_EVENTS:
            events.append(Event(key, order.source_id, TRANSITION_EVENTS[nxt.state], version,
                                order.priority, data))

    if new_products:
        ks = list(new_products)
        await conn.execute(QUERIES["batch_create_products"], [e for e, _ in ks], [s for _, s in ks],
                           [new_products[k][0] for k in ks], [new_products[k][1] for k in ks],
                           [new_products[k][2] for k in ks])
    order_ids = await _write_orders(conn, writes, touched, now)
    for key, cur in current.items():
        if cur.order_id is None and key in order_ids:
            cur.order_id = order_ids[key]
    if bumps:
        ids = [current[k].order_id for k in bumps]
        await conn.execute(QUERIES["batch_bump_seq"], ids, list(bumps.values()))
    if versions:
        await conn.execute(
            QUERIES["batch_insert_versions"],
            [order_ids[k] for k, *_ in versions], [v[1] for v in versions], [v[2] for v in versions],
            [now] * len(versions), [v[3] for v in versions], [_json(v[4]) for v in versions])
    ids_by_key = {k: c.order_id for k, c in current.items()}
    inserted = await _write_receipts(conn, receipts, ids_by_key)
    for r in receipts:
        # a payload seen before (lease expired after its commit) already has its event
        if r.state == "rejected" and r.receipt_id in inserted:
            key = (r.entity_id, r.reference)
            cur = current.get(key)
            events.append(Event(key, r.source_id, "order.rejected", cur.version if cur else 0, 0,
                                {"receipt_id": r.receipt_id, "reference": r.reference,
                                 "source_id": r.source_id, "code": r.code, "reason": r.reason,
                                 "version": cur.version if cur else 0}))
    await write_events(conn, events, ids_by_key, now)
    return receipts


async def _write_orders(
    conn: asyncpg.Connection, writes: dict[tuple[str, str], tuple[Prepared, Current]],
    touched: dict[tuple[str, str], set[str]], now: dt.datetime,
) -> dict[tuple[str, str], int]:
    if not writes:
        return {}
    cols: list[list[Any]] = [[] for _ in range(24)]
    for (entity_id, reference), (item, cur) in writes.items():
        o = item.order
        assert o is not None
        values = (entity_id, reference, o.source_id, cur.seq, cur.state, o.status, o.type, o.priority,
                  o.flag_partial, o.cod_amount, o.currency, o.shipping_method, o.customer_id, _json(o.options),
                  o.created_at, o.delivery_at, cur.release_at, cur.released_at, cur.stored_at, now,
                  cur.version, cur.content_hash, item.order_json.decode(), item.payload_json)
        for col, value in zip(cols, values, strict=True):
            col.append(value)
    rows = await conn.fetch(QUERIES["batch_upsert_orders"], *cols)
    ids = {(r["entity_id"], r["reference"]): r["order_id"] for r in rows}
    if len(ids) != len(writes):
        raise BatchRace("an order was written by another worker meanwhile")
    # Rewrite lines and addresses only where they changed: shipped quantities live on the lines.
    line_keys = [k for k in writes if touched[k] & {"*", "items"}]
    address_keys = [k for k in writes if touched[k] & {"*", "billing", "shipping"}]
    # a new order has nothing to delete (and the deletes cost more than they look)
    existed = {k for k, (_, cur) in writes.items() if cur.order_id is not None}
    if clear := [ids[k] for k in line_keys if k in existed]:
        await conn.execute(QUERIES["batch_clear_lines"], clear)
    if clear := [ids[k] for k in address_keys if k in existed]:
        await conn.execute(QUERIES["batch_clear_addresses"], clear)
    lines, addresses = [], []
    for key in line_keys:
        o = writes[key][0].order
        assert o is not None
        for n, line in enumerate(o.items, start=1):
            lines.append((ids[key], n, line.sku, line.qty, line.description, line.weight, line.reference,
                          line.unit_price, line.is_kit, line.allocation_type, line.cost,
                          line.custom_options, line.packing))
    for key in address_keys:
        o = writes[key][0].order
        assert o is not None
        for kind, address in (("billing", o.billing), ("shipping", o.shipping)):
            if address is not None:
                addresses.append((ids[key], kind, *(getattr(address, f) for f in ADDRESS_COLUMNS)))
    if lines:
        await conn.copy_records_to_table("order_lines", records=lines, columns=LINE_COLUMNS)
    if addresses:
        await conn.copy_records_to_table("addresses", records=addresses, columns=("order_id", "kind", *ADDRESS_COLUMNS))
    return ids


LINE_COLUMNS = ("order_id", "line_no", "sku", "qty", "description", "weight", "reference", "unit_price",
                "is_kit", "allocation_type", "cost", "custom_options", "packing")
ADDRESS_COLUMNS = ("firstname", "lastname", "company", "street", "housenumber", "housenumber_ext",
                   "postcode", "city", "region", "country", "phone", "email", "method")


async def _write_receipts(
    conn: asyncpg.Connection, receipts: list[ReceiptRow], ids: dict[tuple[str, str], int | None]
) -> set[str]:
    """Insert receipts not written before; returns the ids actually inserted."""
    if not receipts:
        return set()
    rows = await conn.fetch(
        QUERIES["batch_insert_receipts"],
        [r.receipt_id for r in receipts], [r.entity_id for r in receipts], [r.seq for r in receipts],
        [r.reference for r in receipts], [r.source_id for r in receipts], [r.state for r in receipts],
        [r.code for r in receipts], [r.reason for r in receipts],
        [_json(r.warnings) for r in receipts], [r.received_at for r in receipts],
        [r.stored_at for r in receipts], [ids.get(r.key) if r.key else None for r in receipts])
    return {r["receipt_id"] for r in rows}
