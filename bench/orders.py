"""The orders the bench sends: order-valid.json with unique references.

Three shapes of the same order:
- an HTTP body template (prefix, suffix around the reference) for the load generator;
- queue envelopes built by the receiver's own code (ingest.accept.accept, as ingest/routes.py
  calls it for a 202), to pre-fill Redis;
- the rows the worker would write, for the raw COPY baseline.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
from importlib import resources
from pathlib import Path
from typing import Any

from ingest.accept import Refused, accept
from ingest.auth import Caller
from shared.queue import receipt_id
from shared.rules.lifecycle import place
from shared.rules.order import normalize_order, parse_request
from shared.schemas import json_encoder
from shared.zones import zone_named

REF_PLACEHOLDER = "@@BENCH_REFERENCE@@"
# ../shared/fixtures beside the repository (the published examples); the package carries a copy.
_FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "order-valid.json"


def fixture_body() -> dict[str, Any]:
    """order-valid.json as a dict (../shared/fixtures, else the copy in shared/examples)."""
    if _FIXTURE.exists():
        text = _FIXTURE.read_text()
    else:
        text = resources.files("shared.examples").joinpath("order-valid.json").read_text()
    body: dict[str, Any] = json.loads(text)
    return body


def body_for(reference: str, access_key: str, entity_id: str) -> dict[str, Any]:
    """The fixture with our credentials (in the body, as the fixture has them) and a reference."""
    body = fixture_body()
    body["access_key"] = access_key
    body["entity_id"] = entity_id
    body["payload"]["reference"] = reference
    return body


def body_template(access_key: str, entity_id: str) -> tuple[str, str]:
    """(prefix, suffix): prefix + reference + suffix is the compact JSON request body."""
    text = json.dumps(body_for(REF_PLACEHOLDER, access_key, entity_id), separators=(",", ":"))
    prefix, _, suffix = text.partition(REF_PLACEHOLDER)
    assert prefix and suffix, "the reference placeholder must appear once"
    return prefix, suffix


WRITE_RIGHT = "orders:write"  # what ingest/routes.py requires before it calls accept()


def bench_caller(*, entity_id: str, key_id: str, timezone: str = "UTC",
                 can_create_products: bool = True) -> Caller:
    """The ingest.auth.Caller the receiver would build for the bench's key (no source limit)."""
    rights = {WRITE_RIGHT, "products:create"} if can_create_products else {WRITE_RIGHT}
    return Caller(key_id=key_id, entity_id=entity_id, rights=frozenset(rights), source_ids=None,
                  timezone=timezone)


def envelope(body: dict[str, Any], *, entity_id: str, key_id: str, timezone: str = "UTC",
             can_create_products: bool = True) -> tuple[int, bytes]:
    """(priority, envelope) for a 202, built by the receiver's own code.

    Calls ingest.accept.accept exactly as ingest/routes.py does (the body's keys other than
    "payload" as envelope_fields), so the envelope carries whatever the receiver puts in it
    (today: header, raw payload, normalised order) and cannot drift from it.
    """
    caller = bench_caller(entity_id=entity_id, key_id=key_id, timezone=timezone,
                          can_create_products=can_create_products)
    try:
        ok = accept(caller, body.get("payload"),
                    envelope_fields={k: v for k, v in body.items() if k != "payload"})
    except Refused as exc:
        raise RuntimeError(f"the receiver's rules refuse the bench order ({exc.status}): "
                           f"{exc.errors}") from exc
    return ok.order.priority, ok.envelope


def _json(value: Any) -> str:
    return json_encoder.encode(value).decode()


# Column lists of the worker's writes (worker/store.py), with the ids it gets back spelled out.
ORDER_COLUMNS = ("order_id", "entity_id", "reference", "source_id", "seq", "state", "status", "type",
                 "priority", "flag_partial", "cod_amount", "currency", "shipping_method", "customer_id",
                 "options", "created_at", "delivery_at", "release_at", "released_at", "stored_at",
                 "updated_at", "version", "content_hash", "document", "raw")
RECEIPT_COLUMNS = ("receipt_id", "entity_id", "seq", "reference", "source_id", "state", "code", "reason",
                   "warnings", "received_at", "stored_at", "order_id")
VERSION_COLUMNS = ("order_id", "version", "seq", "at", "receipt_id", "changes")


class RowFactory:
    """The rows the worker writes for one new order, per table (JSON as text: plain asyncpg codecs).

    The fixture is normalised once with a placeholder reference; each order swaps its own in.
    """

    def __init__(self, entity_id: str, now: dt.datetime) -> None:
        from worker.store import ADDRESS_COLUMNS

        body = fixture_body()
        body["payload"]["reference"] = REF_PLACEHOLDER
        order, _ = normalize_order(parse_request(body).payload, zone_named("UTC"))
        self.order, self.entity_id, self.now = order, entity_id, now
        self.placement = place(order.status, order.delivery_at, now)
        self.document = json_encoder.encode(order)
        self.raw = _json(body["payload"])
        self.options = _json(order.options)
        self.lines = [(n, line.sku, line.qty, line.description, line.weight, line.reference,
                       line.unit_price, line.is_kit, line.allocation_type, line.cost,
                       None if line.custom_options is None else _json(line.custom_options),
                       None if line.packing is None else _json(line.packing))
                      for n, line in enumerate(order.items, start=1)]
        self.addresses = [(kind, *(getattr(address, f) for f in ADDRESS_COLUMNS))
                          for kind, address in (("billing", order.billing), ("shipping", order.shipping))
                          if address is not None]

    def rows(self, order_id: int, seq: int, reference: str) -> dict[str, list[tuple[Any, ...]]]:
        """Rows of orders, order_lines, addresses, receipts and order_versions for one order."""
        o, p, now = self.order, self.placement, self.now
        document = self.document.replace(REF_PLACEHOLDER.encode(), reference.encode())
        orders = [(order_id, self.entity_id, reference, o.source_id, seq, p.state, o.status, o.type,
                   o.priority, o.flag_partial, o.cod_amount, o.currency, o.shipping_method,
                   o.customer_id, self.options, o.created_at, o.delivery_at, p.release_at,
                   p.released_at, now, now, 1, hashlib.sha256(document).digest(), document.decode(),
                   self.raw.replace(REF_PLACEHOLDER, reference))]
        rid = receipt_id(seq, secrets.token_hex(6))
        return {
            "orders": orders,
            "order_lines": [(order_id, *line) for line in self.lines],
            "addresses": [(order_id, *address) for address in self.addresses],
            "receipts": [(rid, self.entity_id, seq, reference, o.source_id, "stored", 200, None, "[]",
                          now, now, order_id)],
            "order_versions": [(order_id, 1, seq, now, rid, '["*"]')],
        }
