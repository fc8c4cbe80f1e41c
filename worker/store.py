"""Store a claimed batch of payloads in one PostgreSQL transaction.

Decisions (sequence guard, source ownership, identical repeats, change rules, unknown
SKUs) are made in Python from rows locked up front (two statements); the writes are one
statement (batch_store: orders, lines, addresses, versions, receipts, outbox rows), so a
batch of 200 costs as many round trips as a batch of 1. One bad order never fails its
batch-mates: it gets a rejected receipt, the rest commit.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import operator
from collections.abc import Sequence
from typing import Any

import asyncpg
import msgspec

from shared.db import QUERIES
from shared.events import (
    TRANSITION_EVENTS,
    Event,
    event_json,
    order_event_data,
    order_event_json,
    write_events,
)
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
    # the order's JSON object; None until needed when planned from `document_json` in this batch
    document: dict[str, Any] | None
    release_at: dt.datetime | None
    released_at: dt.datetime | None
    stored_at: dt.datetime
    document_json: bytes = b""

    def doc(self) -> dict[str, Any]:
        if self.document is None:
            self.document = json_decoder.decode(self.document_json)
        return self.document


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
    return order_event_data(cur.doc(), state=cur.state, status=status, priority=priority,
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
    known: set[tuple[str, str]] = set()
    if pairs:
        # Serialise batches that touch the same references, new ones included, always in one
        # order: no deadlock, and no two workers creating the same reference blind.
        entity_ids, references = [e for e, _ in pairs], [r for _, r in pairs]
        await conn.execute(QUERIES["batch_lock_references"], entity_ids, references)
        sku_pairs = list({(p.header.entity_id, line.sku) for p in valid for line in p.order.items})  # type: ignore[union-attr]
        rows = await conn.fetch(QUERIES["batch_lock_orders_known_products"], entity_ids, references,
                                [e for e, _ in sku_pairs], [s for _, s in sku_pairs])
        for r in rows:
            if r["kind"] == "p":
                known.add((r["entity_id"], r["sku"]))
            else:
                current[(r["entity_id"], r["reference"])] = Current(
                    r["order_id"], r["source_id"], r["seq"], r["state"], r["version"],
                    bytes(r["content_hash"]), r["document"], r["release_at"], r["released_at"],
                    r["stored_at"])

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
        digest = content_hash(item.order_json)
        if cur is not None and digest == cur.content_hash:
            cur.seq = bumps[key] = item.seq
            receipts.append(_receipt(item, now, "stored", 200, "identical repeat: nothing changed", key))
            continue
        changes: list[str] = ["*"]
        # decoded only where a dict is needed: comparing with the stored order (an update)
        document = None
        if cur is not None:
            document = json_decoder.decode(item.order_json)
            changed = changed_fields(cur.doc(), document)
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
                      cur.stored_at if cur else now, item.order_json)
        current[key] = nxt
        writes[key] = (item, nxt)
        touched.setdefault(key, set()).update(changes)
        bumps.pop(key, None)
        versions.append((key, version, item.seq, item.receipt_id, changes))
        stored = _receipt(item, now, "stored", 200, None, key)
        stored.released = nxt.state == "released" and (cur is None or cur.state != "released")
        receipts.append(stored)
        # the same JSON text as event_data's dict, without decoding the order
        data = order_event_json(item.order_json, state=nxt.state, release_at=nxt.release_at,
                                released_at=nxt.released_at, version=version)
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
    # the order.rejected events, written only for receipts that are new (a payload seen
    # before, its lease expired after its commit, already has its event)
    rejections: list[tuple[Event, str]] = []
    for r in receipts:
        if r.state == "rejected":
            key = (r.entity_id, r.reference)
            cur = current.get(key)
            version = cur.version if cur else 0
            rejections.append((Event(key, r.source_id, "order.rejected", version, 0,
                                     {"receipt_id": r.receipt_id, "reference": r.reference,
                                      "source_id": r.source_id, "code": r.code, "reason": r.reason,
                                      "version": version}), r.receipt_id))
    order_ids = await _write_batch(conn, writes, touched, versions, receipts, events, rejections,
                                   current, now)
    for key, cur in current.items():
        if cur.order_id is None and key in order_ids:
            cur.order_id = order_ids[key]
    if bumps:
        ids = [current[k].order_id for k in bumps]
        await conn.execute(QUERIES["batch_bump_seq"], ids, list(bumps.values()))
    return receipts


async def _write_batch(
    conn: asyncpg.Connection, writes: dict[tuple[str, str], tuple[Prepared, Current]],
    touched: dict[tuple[str, str], set[str]],
    versions: list[tuple[tuple[str, str], int, int, str, list[str]]], receipts: list[ReceiptRow],
    events: list[Event], rejections: list[tuple[Event, str]],
    current: dict[tuple[str, str], Current], now: dt.datetime,
) -> dict[tuple[str, str], int]:
    """Orders, lines, addresses, versions, receipts and events in one statement (batch_store)."""
    # Rewrite lines and addresses only where they changed: shipped quantities live on the lines.
    line_keys = [k for k in writes if touched[k] & {"*", "items"}]
    address_keys = [k for k in writes if touched[k] & {"*", "billing", "shipping"}]
    # a new order has nothing to delete (and the deletes cost more than they look)
    clear_lines = [c.order_id for k in line_keys if (c := writes[k][1]).order_id is not None]
    clear_addresses = [c.order_id for k in address_keys if (c := writes[k][1]).order_id is not None]
    if clear_lines or clear_addresses:
        await conn.execute(QUERIES["batch_clear_rewritten"], clear_lines, clear_addresses)

    w_of = {key: w for w, key in enumerate(writes, start=1)}  # the orders' numbers in batch_store
    orders, documents, raws = [], [], []
    for (entity_id, reference), (item, cur) in writes.items():
        o = _order(item)
        orders.append((entity_id, reference, o.source_id, cur.seq, cur.state, o.status, o.type,
                       o.priority, o.flag_partial, str(o.cod_amount), o.currency, o.shipping_method,
                       o.customer_id, _json(o.options), o.created_at, o.delivery_at, cur.release_at,
                       cur.released_at, cur.stored_at, cur.version, cur.content_hash))
        documents.append(item.order_json)
        raws.append(item.payload_json)
    lines = [(w_of[key], n, x.sku, x.qty, x.description, _text(x.weight), x.reference,
              _text(x.unit_price), x.is_kit, x.allocation_type, _text(x.cost),
              _json_or_null(x.custom_options), _json_or_null(x.packing))
             for key in line_keys for n, x in enumerate(_order(writes[key][0]).items, start=1)]
    addresses = [(w_of[key], kind, *_address_values(address))
                 for key in address_keys for o in (_order(writes[key][0]),)
                 for kind, address in (("billing", o.billing), ("shipping", o.shipping))
                 if address is not None]
    version_rows = [(w_of[key], version, seq, rid, _json(changes))
                    for key, version, seq, rid, changes in versions]
    receipt_rows = [(r.receipt_id, r.entity_id, r.seq, r.reference, r.source_id, r.state, r.code,
                     r.reason, _json(r.warnings) if r.warnings else "[]", r.received_at,
                     *_order_id(r.key, w_of, current))
                    for r in receipts]
    event_rows = [(e.key[0], e.key[1], e.source_id, e.type, e.version, e.priority,
                   *_order_id(e.key, w_of, current), rid)
                  for e, rid in [*((e, None) for e in events), *rejections]]
    data = [event_json(e.data) for e in events] + [event_json(e.data) for e, _ in rejections]
    # the long JSON texts travel one text per column, separated by U+001E (see batch_store)
    rows = await conn.fetch(QUERIES["batch_store"], orders, b"\x1e".join(documents).decode(),
                            "\x1e".join(raws), lines, addresses, version_rows, receipt_rows,
                            event_rows, "\x1e".join(data), now)
    ids = {(r["entity_id"], r["reference"]): r["order_id"] for r in rows}
    if len(ids) != len(writes):
        raise BatchRace("an order was written by another worker meanwhile")
    return ids


def _order(item: Prepared) -> Order:
    assert item.order is not None
    return item.order


def _order_id(key: tuple[str, str] | None, w_of: dict[tuple[str, str], int],
              current: dict[tuple[str, str], Current]) -> tuple[int | None, int | None]:
    """(order id, None) of a stored order, (None, w) of one this batch writes, else (None, None)."""
    if key is None:
        return None, None
    if (w := w_of.get(key)) is not None:
        return None, w
    cur = current.get(key)
    return (cur.order_id if cur is not None else None), None


def _text(value: Any) -> str | None:
    """A numeric as batch_store's row types carry it (numeric_in reads str(Decimal) exactly)."""
    return None if value is None else str(value)


def _json_or_null(value: Any) -> str | None:
    return None if value is None else json_encoder.encode(value).decode()


LINE_COLUMNS = ("order_id", "line_no", "sku", "qty", "description", "weight", "reference", "unit_price",
                "is_kit", "allocation_type", "cost", "custom_options", "packing")
ADDRESS_COLUMNS = ("firstname", "lastname", "company", "street", "housenumber", "housenumber_ext",
                   "postcode", "city", "region", "country", "phone", "email", "method")
# an address's values in column order, as one tuple
_address_values = operator.attrgetter(*ADDRESS_COLUMNS)


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
