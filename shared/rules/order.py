"""Order rules: turn a payload as sent into the normalised Order, naming every bad field.

Pure: no I/O. The receiver runs it to answer 422; the worker runs it again on the raw
bytes it claims (same code, same entity time zone from the header) to get what it stores.
"""

from __future__ import annotations

import hashlib
from decimal import Decimal, InvalidOperation
from operator import attrgetter
from typing import Any
from zoneinfo import ZoneInfo

import msgspec

from shared.redis_keys import PRIORITY_LIMIT
from shared.rules.address import is_country_code, split_street_full
from shared.rules.dates import parse_order_datetime
from shared.schemas import (
    ENVELOPE_FIELDS,
    ITEM_FIELDS,
    PAYLOAD_FIELDS,
    Address,
    EnqueueRequest,
    ItemIn,
    Line,
    Order,
    PayloadIn,
    Problem,
)

INT32_MAX = 2_147_483_647
ADDRESS_REQUIRED = ("firstname", "lastname", "street", "housenumber", "postcode", "city", "country")
ADDRESS_OPTIONAL = ("company", "housenumber_ext", "region", "phone", "email", "method")
STATUSES = (0, 1, 8, 9)
UNKNOWN_FIELD = "unknown field: accepted and kept in the stored document"
# Returned by a fast path where the checked path has something to report.
_CHECK = object()


class OrderInvalid(Exception):
    """The payload breaks the rules; `errors` names every failing field."""

    def __init__(self, errors: list[Problem]) -> None:
        super().__init__(f"{len(errors)} invalid field(s)")
        self.errors = errors


class _Collector:
    def __init__(self) -> None:
        self.errors: list[Problem] = []
        self.warnings: list[Problem] = []

    def error(self, loc: str, msg: str) -> None:
        self.errors.append(Problem(loc=loc, msg=msg))

    def warn(self, loc: str, msg: str) -> None:
        self.warnings.append(Problem(loc=loc, msg=msg))


def _text(value: Any) -> str:
    """A scalar as text: numbers sent as numbers become their plain string."""
    if type(value) is str:  # the common case first; the same as str(value).strip()
        return value.strip()
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _int(c: _Collector, loc: str, value: Any, default: int | None) -> int | None:
    """An integer sent as a number or a string; '' or absent gives the default."""
    if type(value) is int:  # the common case first (a bool's type is bool)
        return value
    if value is None or (isinstance(value, str) and value.strip() == ""):
        if default is None:
            c.error(loc, "required")
        return default
    if isinstance(value, bool):
        c.error(loc, "expected an integer, got a boolean")
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        c.error(loc, f"expected an integer, got {value!r}")
        return None
    text = str(value).strip()
    try:
        return int(text)
    except ValueError:
        c.error(loc, f"expected an integer, got {value!r}")
        return None


def _decimal(c: _Collector, loc: str, value: Any, *, required: bool = False) -> Decimal | None:
    """Money and weights as Decimal, never float; '' means not set."""
    if value is None or (isinstance(value, str) and value.strip() == ""):
        if required:
            c.error(loc, "required")
        return None
    if isinstance(value, bool):
        c.error(loc, "expected a decimal number, got a boolean")
        return None
    try:
        number = Decimal(value.strip() if type(value) is str else str(value).strip())
    except InvalidOperation:
        c.error(loc, f"expected a decimal number, got {value!r}")
        return None
    if not number.is_finite():
        c.error(loc, f"expected a finite decimal number, got {value!r}")
        return None
    if number < 0:
        c.error(loc, "must not be negative")
        return None
    return number


def _flag(value: Any) -> bool:
    if type(value) is bool:
        return value
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes"}
    return bool(value)


# Per kind, one getter for the payload fields of an address, in the order _address_fast
# unpacks them (street_full first, as _address_checked reads it first).
_ADDRESS_GETTERS = {
    kind: attrgetter(
        *(f"{kind}_{name}" for name in ("street_full", *ADDRESS_REQUIRED, *ADDRESS_OPTIONAL))
    )
    for kind in ("billing", "shipping")
}


def _address(c: _Collector, p: PayloadIn, kind: str, *, required: bool) -> Address | None:
    """The address of a kind; an address with anything to report takes _address_checked."""
    address = _address_fast(p, kind, required)
    if address is _CHECK:
        return _address_checked(c, p, kind, required=required)
    return address  # type: ignore[return-value]


def _address_fast(p: PayloadIn, kind: str, required: bool) -> Address | None | object:
    """What _address_checked returns when it reports nothing, else _CHECK; never reports."""
    (
        street_full,
        firstname,
        lastname,
        street,
        housenumber,
        postcode,
        city,
        country,
        company,
        housenumber_ext,
        region,
        phone,
        email,
        method,
    ) = [_text(value) for value in _ADDRESS_GETTERS[kind](p)]
    if not required and not street_full and not (
        firstname or lastname or street or housenumber or postcode or city or country
    ):
        return None
    if street_full and not street:
        try:
            street, number, ext = split_street_full(street_full)
        except ValueError:
            return _CHECK
        housenumber = housenumber or number
        housenumber_ext = housenumber_ext or ext
    if not (firstname and lastname and street and housenumber and postcode and city and country):
        return _CHECK
    country = country.upper()
    if not is_country_code(country):
        return _CHECK
    return Address(
        firstname=firstname,
        lastname=lastname,
        street=street,
        housenumber=housenumber,
        postcode=postcode,
        city=city,
        country=country,
        company=company,
        housenumber_ext=housenumber_ext,
        region=region,
        phone=phone,
        email=email,
        method=method,
    )


def _address_checked(c: _Collector, p: PayloadIn, kind: str, *, required: bool) -> Address | None:
    """The address of a kind, reporting every bad field (the reference for _address_fast)."""
    base = "$.payload." + kind + "_"
    fields = {name: getattr(p, f"{kind}_{name}") for name in (*ADDRESS_REQUIRED, *ADDRESS_OPTIONAL)}
    street_full = _text(getattr(p, f"{kind}_street_full"))
    values = {name: _text(v) for name, v in fields.items()}
    if not required and not street_full and not any(values[n] for n in ADDRESS_REQUIRED):
        return None
    if street_full and not values["street"]:
        try:
            street, number, ext = split_street_full(street_full)
        except ValueError as exc:
            c.error(base + "street_full", f"cannot split into street and house number: {exc}")
            street, number, ext = street_full, "", ""
        else:
            values["street"] = street
            values["housenumber"] = values["housenumber"] or number
            values["housenumber_ext"] = values["housenumber_ext"] or ext
    before = len(c.errors)
    for name in ADDRESS_REQUIRED:
        if not values[name]:
            if name in ("street", "housenumber") and street_full:
                continue  # already reported on street_full
            c.error(base + name, "required")
    country = values["country"].upper()
    if country and not is_country_code(country):
        c.error(base + "country", f"not an ISO 3166-1 alpha-2 country code: {values['country']!r}")
    if len(c.errors) > before:
        return None
    values["country"] = country
    return Address(**values)


def _line(c: _Collector, loc: str, item: ItemIn) -> Line | None:
    """One line, reporting every bad field."""
    before = len(c.errors)
    sku = _text(item.sku)
    if not sku:
        c.error(loc + ".sku", "required")
    qty = _int(c, loc + ".qty", item.qty, None)
    if qty is not None and not 0 < qty <= INT32_MAX:
        c.error(loc + ".qty", f"must be between 1 and {INT32_MAX}")
    allocation = _int(c, loc + ".allocation_type", item.allocation_type, 1)
    if allocation is not None and allocation not in (1, 2):
        c.error(loc + ".allocation_type", "must be 1 (reservation) or 2 (direct)")
    cost = _decimal(c, loc + ".cost", item.cost)
    if cost is not None and allocation == 1:
        c.error(loc + ".cost", "only allowed with allocation_type 2 (direct)")
    unit_price = _decimal(c, loc + ".unit_price", item.unit_price)
    weight = _decimal(c, loc + ".weight", item.weight)
    if len(c.errors) > before:
        return None
    assert qty is not None and allocation in (1, 2)
    return Line(
        sku=sku,
        qty=qty,
        description=_text(item.description),
        weight=weight,
        reference=_text(item.reference),
        unit_price=unit_price,
        is_kit=_flag(item.is_kit),
        allocation_type=2 if allocation == 2 else 1,
        cost=cost,
        custom_options=item.custom_options,
        packing=item.packing,
    )


def _lines(c: _Collector, items: list[ItemIn | list[ItemIn]]) -> list[Line]:
    """The lines of both shapes the vendor shows: a list of lines, or a list of lists of lines."""
    lines: list[Line] = []
    count = 0
    for i, entry in enumerate(items):
        group = entry if isinstance(entry, list) else [entry]
        count += len(group)
        for j, item in enumerate(group):
            loc = f"$.payload.items[{i}][{j}]" if isinstance(entry, list) else f"$.payload.items[{i}]"
            if (line := _line(c, loc, item)) is not None:
                lines.append(line)
    if not count:  # only lists, all empty: no line reported anything
        c.error("$.payload.items", "at least one line is required")
    return lines


def unknown_fields(body: dict[str, Any]) -> list[Problem]:
    """Warnings for fields we do not know, at every level we model."""
    found = [Problem(loc=f"$.{k}", msg=UNKNOWN_FIELD) for k in body if k not in ENVELOPE_FIELDS]
    payload = body.get("payload")
    if not isinstance(payload, dict):
        return found
    found += [Problem(loc=f"$.payload.{k}", msg=UNKNOWN_FIELD) for k in payload if k not in PAYLOAD_FIELDS]
    items = payload.get("items")
    if isinstance(items, list):
        for i, entry in enumerate(items):
            group = entry if isinstance(entry, list) else [entry]
            for j, item in enumerate(group):
                if not isinstance(item, dict):
                    continue
                loc = f"$.payload.items[{i}][{j}]" if isinstance(entry, list) else f"$.payload.items[{i}]"
                found += [Problem(loc=f"{loc}.{k}", msg=UNKNOWN_FIELD) for k in item if k not in ITEM_FIELDS]
    return found


def nul_characters(value: Any, loc: str) -> list[Problem]:
    """Every string or key holding U+0000: PostgreSQL cannot store it, so it is refused up front."""
    found: list[Problem] = []
    if isinstance(value, str):
        if "\x00" in value:
            found.append(Problem(loc=loc, msg="NUL characters (\\u0000) are not allowed"))
    elif isinstance(value, dict):
        for k, v in value.items():
            if "\x00" in k:
                found.append(Problem(loc=loc, msg="NUL characters (\\u0000) are not allowed in field names"))
            else:
                found += nul_characters(v, f"{loc}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += nul_characters(v, f"{loc}[{i}]")
    return found


def parse_request(body: Any) -> EnqueueRequest:
    """Typed view of a decoded body; msgspec.ValidationError names the first wrong shape."""
    return msgspec.convert(body, type=EnqueueRequest, strict=False)


def normalize_order(payload: PayloadIn | None, zone: ZoneInfo) -> tuple[Order, list[Problem]]:
    """Apply every order rule; raise OrderInvalid naming every failing field, else (order, warnings)."""
    c = _Collector()
    if payload is None:
        raise OrderInvalid([Problem(loc="$.payload", msg="required")])
    p = payload
    reference = _text(p.reference)
    if not reference:
        c.error("$.payload.reference", "required")
    elif len(reference) > 128:
        c.error("$.payload.reference", "at most 128 characters")
    source_id = _text(p.source_id)
    if not source_id:
        c.error("$.payload.source_id", "required")
    elif len(source_id) > 64:
        c.error("$.payload.source_id", "at most 64 characters")
    status = _int(c, "$.payload.status", p.status, 0)
    if status is not None and status not in STATUSES:
        c.error("$.payload.status", "must be 0 (new), 1 (process), 8 (hold) or 9 (cancel)")
    order_type = _int(c, "$.payload.type", p.type, None)
    if order_type is not None and order_type not in (0, 1):
        c.error("$.payload.type", "must be 0 (normal) or 1 (POS)")
    priority = _int(c, "$.payload.priority", p.priority, 0)
    if priority is not None and abs(priority) > PRIORITY_LIMIT:
        c.error("$.payload.priority", f"must be between -{PRIORITY_LIMIT} and {PRIORITY_LIMIT}")
    flag_partial = _int(c, "$.payload.flag_partial", p.flag_partial, 0)
    if flag_partial is not None and flag_partial not in (0, 1, 2):
        c.error("$.payload.flag_partial", "must be 0, 1 or 2")
    cod_amount = _decimal(c, "$.payload.cod_amount", p.cod_amount) or Decimal(0)
    currency = _text(p.currency).upper()
    if not currency:
        c.error("$.payload.currency", "required")
    elif len(currency) != 3 or not currency.isalpha():
        c.error("$.payload.currency", f"expected a 3-letter ISO 4217 code, got {p.currency!r}")
    try:
        created_at = parse_order_datetime(_text(p.created_at), zone)
    except ValueError as exc:
        created_at = None
        c.error("$.payload.created_at", str(exc))
    try:
        delivery_at = parse_order_datetime(_text(p.delivery_at), zone)
    except ValueError as exc:
        delivery_at = None
        c.error("$.payload.delivery_at", str(exc))
    billing = _address(c, p, "billing", required=True)
    shipping = _address(c, p, "shipping", required=order_type != 1)
    lines: list[Line] = []
    if not p.items:
        c.error("$.payload.items", "at least one line is required")
    else:
        lines = _lines(c, p.items)
    if c.errors:
        raise OrderInvalid(c.errors)
    if cod_amount > 0 and flag_partial != 0:
        c.warn(
            "$.payload.flag_partial",
            f"cod_amount > 0 forbids partial shipments: stored with flag_partial 0 instead of {flag_partial}",
        )
        flag_partial = 0
    assert status in STATUSES and order_type in (0, 1) and flag_partial in (0, 1, 2)
    assert billing is not None and priority is not None
    order = Order(
        reference=reference,
        source_id=source_id,
        status=status,  # type: ignore[arg-type]
        type=order_type,  # type: ignore[arg-type]
        priority=priority,
        flag_partial=flag_partial,  # type: ignore[arg-type]
        cod_amount=cod_amount,
        currency=currency,
        shipping_method=_text(p.shipping_method),
        customer_id=_text(p.customer_id),
        options=p.options or {},
        created_at=created_at,
        delivery_at=delivery_at,
        billing=billing,
        shipping=shipping,
        items=lines,
    )
    return order, c.warnings


def content_hash(order_json: bytes) -> bytes:
    """Identity of an order's content (its normalised JSON): equal hashes mean an identical repeat."""
    return hashlib.sha256(order_json).digest()
