"""From one payload as sent to an envelope ready for Redis, or the reasons it is refused."""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

import msgspec

from ingest.auth import Caller
from shared.queue import make_envelope
from shared.rules.order import OrderInvalid, normalize_order, nul_characters, unknown_fields
from shared.schemas import Header, Order, PayloadIn, Problem, json_encoder
from shared.zones import zone_named

VALIDATION_AT = re.compile(r" - at `(\$[^`]*)`$")


def validation_problem(exc: msgspec.ValidationError, loc: str = "$") -> Problem:
    """A msgspec validation error as a Problem at its path (relative to `loc`)."""
    text = str(exc)
    match = VALIDATION_AT.search(text)
    return Problem(loc=loc + (match.group(1)[1:] if match else ""), msg=VALIDATION_AT.sub("", text))


class Refused(Exception):
    """The payload cannot be accepted: an HTTP status and every problem."""

    def __init__(self, status: int, errors: list[Problem]) -> None:
        super().__init__(status)
        self.status = status
        self.errors = errors


@dataclass(frozen=True, slots=True)
class Accepted:
    """A valid order and the envelope to hand off."""

    order: Order
    warnings: list[Problem]
    token: str
    envelope: bytes


def _relocate(problems: list[Problem], loc: str) -> list[Problem]:
    """Rewrite `$.payload…` paths to where the payload sits in this request."""
    if loc == "$.payload":
        return problems
    return [Problem(loc=loc + p.loc[len("$.payload"):] if p.loc.startswith("$.payload") else p.loc,
                    msg=p.msg) for p in problems]


def accept(caller: Caller, payload: Any, *, loc: str = "$.payload",
           envelope_fields: dict[str, Any] | None = None, may_hold_nul: bool = True) -> Accepted:
    """Validate one payload for `caller`; raise Refused (422/403) naming every failing field.

    `may_hold_nul=False` skips the walk for U+0000 when the raw body has no `\\u0000` at all.
    """
    if payload is None:
        raise Refused(422, [Problem(loc=loc, msg="required")])
    if may_hold_nul and (nul := nul_characters(payload, loc)):
        raise Refused(422, nul)
    try:
        typed = msgspec.convert(payload, type=PayloadIn, strict=False)
    except msgspec.ValidationError as exc:
        raise Refused(422, [validation_problem(exc, loc)]) from exc
    try:
        order, rule_warnings = normalize_order(typed, zone_named(caller.timezone))
    except OrderInvalid as exc:
        raise Refused(422, _relocate(exc.errors, loc)) from exc
    if caller.source_ids is not None and order.source_id not in caller.source_ids:
        raise Refused(403, [Problem(loc=f"{loc}.source_id",
                                    msg=f"this key may not send orders for source {order.source_id!r}")])
    body = {**(envelope_fields or {}), "payload": payload}
    warnings = _relocate(unknown_fields(body) + rule_warnings, loc)
    token = secrets.token_hex(6)
    header = Header(token=token, entity_id=caller.entity_id, key_id=caller.key_id,
                    can_create_products="products:create" in caller.rights,
                    timezone=caller.timezone, received_at=time.time(), priority=order.priority,
                    reference=order.reference, warnings=warnings)
    # Only the payload goes to Redis: the access key stays out of the queue.
    envelope = make_envelope(json_encoder.encode(header), json_encoder.encode(payload),
                             json_encoder.encode(order))
    return Accepted(order, warnings, token, envelope)
