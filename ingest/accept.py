"""From one payload as sent to an envelope ready for Redis, or the reasons it is refused."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from typing import Any

import msgspec

from ingest.auth import Caller
from shared.queue import make_envelope
from shared.rules.order import OrderInvalid, normalize_order, nul_characters, unknown_fields
from shared.schemas import Base, Header, ItemIn, Order, PayloadIn, Problem, json_encoder
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


class _Tokens:
    """Receipt tokens (12 hex digits, 48 random bits) cut from one os.urandom read per 512.

    `secrets.token_hex(6)` made one getrandom system call per order (3-6 % of the receiver).
    """

    def __init__(self) -> None:
        self._hex = ""
        self._at = 0
        os.register_at_fork(after_in_child=self._forget)  # a forked child must not repeat ours

    def _forget(self) -> None:
        self._hex, self._at = "", 0

    def next(self) -> str:
        if self._at >= len(self._hex):
            self._hex, self._at = os.urandom(6 * 512).hex(), 0
        token = self._hex[self._at:self._at + 12]
        self._at += 12
        return token


_tokens = _Tokens()


def accept(caller: Caller, payload: Any, *, loc: str = "$.payload",
           envelope_fields: dict[str, Any] | None = None, may_hold_nul: bool = True) -> Accepted:
    """Validate one decoded payload for `caller`; raise Refused (422/403) naming every failing field.

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
    unknown = unknown_fields({**(envelope_fields or {}), "payload": payload})
    return accept_typed(caller, typed, json_encoder.encode(payload), loc=loc, unknown=unknown)


def accept_typed(caller: Caller, typed: PayloadIn, payload_json: bytes, *, loc: str = "$.payload",
                 unknown: list[Problem] | None = None) -> Accepted:
    """The order rules, the key's sources and the envelope, for a payload already typed.

    `payload_json` is the payload as compact JSON (one line: it goes into the envelope as is);
    `unknown` are the warnings for fields we do not model, at `$.payload…` paths.
    """
    try:
        order, rule_warnings = normalize_order(typed, zone_named(caller.timezone))
    except OrderInvalid as exc:
        raise Refused(422, _relocate(exc.errors, loc)) from exc
    if caller.source_ids is not None and order.source_id not in caller.source_ids:
        raise Refused(403, [Problem(loc=f"{loc}.source_id",
                                    msg=f"this key may not send orders for source {order.source_id!r}")])
    warnings = _relocate(unknown + rule_warnings, loc) if unknown else _relocate(rule_warnings, loc)
    token = _tokens.next()
    header = Header(token=token, entity_id=caller.entity_id, key_id=caller.key_id,
                    can_create_products="products:create" in caller.rights,
                    timezone=caller.timezone, received_at=time.time(), priority=order.priority,
                    reference=order.reference, warnings=warnings)
    # Only the payload goes to Redis: the access key stays out of the queue.
    envelope = make_envelope(json_encoder.encode(header), payload_json, json_encoder.encode(order))
    return Accepted(order, warnings, token, envelope)


# The common body, decoded straight into types: only the fields we model, anywhere. A body
# with anything else (unknown fields to warn about, U+0000 escapes, wrong shapes, broken JSON)
# goes the long way (decode, then convert, then walk), which names every problem.
class _KnownItem(ItemIn, kw_only=True, forbid_unknown_fields=True):
    pass


class _KnownPayload(PayloadIn, kw_only=True, forbid_unknown_fields=True):
    items: list[_KnownItem | list[_KnownItem]] | None = None


class KnownBody(Base, kw_only=True, forbid_unknown_fields=True):
    """An enqueue body with nothing unknown in it; the payload still as sent."""

    access_key: str | None = None
    entity_id: str | None = None
    payload: msgspec.Raw = msgspec.Raw()


_known_body = msgspec.json.Decoder(KnownBody)
_known_payload = msgspec.json.Decoder(_KnownPayload, strict=False)


def known_body(raw: bytes) -> tuple[KnownBody, PayloadIn, bytes] | None:
    """(body, typed payload, payload JSON on one line) when the fast path applies, else None.

    The payload goes on as sent, compacted only when it spans lines.

    Same result as json decode + msgspec.convert(strict=False) on the payload (tested), at
    about half the cost, and no dict of the whole order is built.
    """
    if b"\\u0000" in raw:
        return None
    try:
        body = _known_body.decode(raw)
        if not body.payload or bytes(body.payload) == b"null":
            return None  # the long way answers "required" at $.payload
        typed = _known_payload.decode(body.payload)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
        return None
    payload_json = bytes(body.payload)
    if b"\n" in payload_json:  # the envelope holds one JSON text per line
        payload_json = msgspec.json.format(payload_json, indent=-1)
    return body, typed, payload_json
