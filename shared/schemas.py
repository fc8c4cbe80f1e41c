"""msgspec types: what clients send (loose, as real clients send it) and what we store and answer.

One base struct carries the shared options; decoders are built once at module level.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta


class Base(msgspec.Struct):
    """Root of all our structs; subclasses set kw_only so field order never matters."""


# Real clients send numbers as strings ("status": "0", "qty": "2", "cod_amount": "12.50")
# and empty strings for "not set" ("flag_partial": ""). The wire types accept all of that;
# the rules in shared/rules/order.py turn them into the stored types and name each bad field.
Scalar = Annotated[
    str | int | float | None,
    Meta(description="A number or text; numbers may be sent as strings, '' means not set."),
]
Flag = Annotated[bool | int | str | None, Meta(description="true/false, 1/0 or '1'/'0'.")]
JsonObject = dict[str, Any]


class ItemIn(Base, kw_only=True):
    """One order line as sent."""

    sku: Scalar = None
    qty: Scalar = None
    description: Scalar = None
    weight: Scalar = None
    reference: Scalar = None
    unit_price: Scalar = None
    is_kit: Flag = None
    custom_options: Any = None
    allocation_type: Scalar = None
    cost: Scalar = None
    packing: Any = None


class PayloadIn(Base, kw_only=True):
    """The `payload` object of the Demand API, as sent."""

    reference: Scalar = None
    source_id: Scalar = None
    status: Scalar = None
    type: Scalar = None
    priority: Scalar = None
    flag_partial: Scalar = None
    cod_amount: Scalar = None
    currency: Scalar = None
    shipping_method: Scalar = None
    customer_id: Scalar = None
    created_at: Scalar = None
    delivery_at: Scalar = None
    options: JsonObject | None = None
    billing_company: Scalar = None
    billing_firstname: Scalar = None
    billing_lastname: Scalar = None
    billing_street_full: Scalar = None
    billing_street: Scalar = None
    billing_housenumber: Scalar = None
    billing_housenumber_ext: Scalar = None
    billing_postcode: Scalar = None
    billing_city: Scalar = None
    billing_region: Scalar = None
    billing_country: Scalar = None
    billing_phone: Scalar = None
    billing_email: Scalar = None
    billing_method: Scalar = None
    shipping_company: Scalar = None
    shipping_firstname: Scalar = None
    shipping_lastname: Scalar = None
    shipping_street_full: Scalar = None
    shipping_street: Scalar = None
    shipping_housenumber: Scalar = None
    shipping_housenumber_ext: Scalar = None
    shipping_postcode: Scalar = None
    shipping_city: Scalar = None
    shipping_region: Scalar = None
    shipping_country: Scalar = None
    shipping_phone: Scalar = None
    shipping_email: Scalar = None
    items: list[ItemIn | list[ItemIn]] | None = None


class EnqueueRequest(Base, kw_only=True):
    """POST /api/v1/order/enqueue body; credentials may come in headers instead."""

    access_key: str | None = None
    entity_id: str | None = None
    payload: PayloadIn | None = None


PAYLOAD_FIELDS = frozenset(f.encode_name for f in msgspec.structs.fields(PayloadIn))
ITEM_FIELDS = frozenset(f.encode_name for f in msgspec.structs.fields(ItemIn))
ENVELOPE_FIELDS = frozenset(f.encode_name for f in msgspec.structs.fields(EnqueueRequest))

Status = Literal[0, 1, 8, 9]
OrderType = Literal[0, 1]
FlagPartial = Literal[0, 1, 2]
State = Literal["new", "scheduled", "released", "held", "cancelled", "shipped"]


class Address(Base, kw_only=True):
    """A billing or shipping address, with the field names of the API text."""

    firstname: str
    lastname: str
    company: str = ""
    street: str
    housenumber: str
    housenumber_ext: str = ""
    postcode: str
    city: str
    region: str = ""
    country: Annotated[str, Meta(pattern="^[A-Z]{2}$")]
    phone: str = ""
    email: str = ""
    method: str = ""


class Line(Base, kw_only=True):
    """One order line as stored."""

    sku: str
    qty: Annotated[int, Meta(gt=0)]
    description: str = ""
    weight: Decimal | None = None
    reference: str = ""
    unit_price: Decimal | None = None
    is_kit: bool = False
    allocation_type: Literal[1, 2] = 1
    cost: Decimal | None = None
    custom_options: Any = None
    packing: Any = None


class Order(Base, kw_only=True):
    """The normalised order: what both receiver and worker derive from a payload."""

    reference: str
    source_id: str
    status: Status = 0
    type: OrderType = 0
    priority: int = 0
    flag_partial: FlagPartial = 0
    cod_amount: Decimal = Decimal(0)
    currency: str
    shipping_method: str = ""
    customer_id: str = ""
    options: JsonObject = msgspec.field(default_factory=dict)
    created_at: dt.datetime | None = None
    delivery_at: dt.datetime | None = None
    billing: Address
    shipping: Address | None = None
    items: list[Line]


class Problem(Base, kw_only=True):
    """One error or warning, located by a JSON path into the request."""

    loc: str
    msg: str


class Header(Base, array_like=True):
    """What the receiver learned about a payload, stored in Redis in front of the raw body."""

    # random part of the receipt id; the sequence number completes it (shared.queue.receipt_id)
    token: str
    entity_id: str
    key_id: str
    can_create_products: bool
    timezone: str
    received_at: float
    priority: int
    reference: str
    # everything the receiver warned about (unknown fields, forced flag_partial), for the receipt
    warnings: list[Problem] = []


# --- answers -------------------------------------------------------------------------


class EnqueueAccepted(Base, kw_only=True):
    """The 202 answer's data."""

    receipt_id: str
    reference: str
    entity_id: str
    source_id: str
    status_url: str


ReceiptState = Literal["queued", "stored", "superseded", "rejected"]


class Receipt(Base, kw_only=True):
    """What happened to one accepted payload."""

    receipt_id: str
    state: ReceiptState
    reason: str | None = None
    code: int | None = None
    reference: str
    source_id: str | None = None
    received_at: dt.datetime
    stored_at: dt.datetime | None = None
    warnings: list[Problem] = msgspec.field(default_factory=list)


class VersionOut(Base, kw_only=True):
    """One applied change of an order."""

    version: int
    seq: int
    at: dt.datetime
    receipt_id: str
    changes: list[str]


class LineOut(Line, kw_only=True):
    """A stored line with its position and how much of it has shipped."""

    line_no: int
    qty_shipped: int = 0


class OrderOut(Base, kw_only=True):
    """GET /api/v1/order/{reference}: the stored order, its state and versions."""

    reference: str
    source_id: str
    state: State
    status: Status
    type: OrderType
    priority: int
    release_at: dt.datetime | None
    released_at: dt.datetime | None
    stored_at: dt.datetime
    updated_at: dt.datetime
    version: int
    flag_partial: FlagPartial
    cod_amount: Decimal
    currency: str
    shipping_method: str
    customer_id: str
    options: JsonObject
    created_at: dt.datetime | None
    delivery_at: dt.datetime | None
    billing: Address | None
    shipping: Address | None
    items: list[LineOut]
    versions: list[VersionOut]
    shipments: list[ShipmentOut] = []


class ShipmentLineIn(Base, kw_only=True):
    """One shipped line: by line_no (from GET) or by sku when it is unique in the order."""

    line_no: Annotated[int, Meta(gt=0, le=2_147_483_647)] | None = None
    sku: str | None = None
    qty: Annotated[int, Meta(gt=0, le=2_147_483_647)]


class ShipmentRequest(Base, kw_only=True):
    """POST /api/v1/order/{reference}/shipments body."""

    access_key: str | None = None
    entity_id: str | None = None
    # the client's id for this shipment: posting it again records nothing new
    shipment_id: str | None = None
    lines: Annotated[list[ShipmentLineIn], Meta(min_length=1)]


class ShipmentOut(Base, kw_only=True):
    """A recorded shipment."""

    shipment_id: str | None
    partial: bool
    shipped_at: dt.datetime
    lines: list[dict[str, int]]


class ShipmentAccepted(Base, kw_only=True):
    """The answer to a recorded shipment: what shipped and where the order stands."""

    shipment: ShipmentOut
    order_state: State
    items: list[dict[str, Any]]


class Envelope(Base, kw_only=True, omit_defaults=True):
    """Every JSON answer: Clougistic's status/data, plus errors and warnings where there are any."""

    status: Literal["success", "failure"]
    data: Any = None
    errors: list[Problem] | None = None
    warnings: list[Problem] | None = None


json_encoder = msgspec.json.Encoder(decimal_format="string")
json_decoder = msgspec.json.Decoder()
header_decoder = msgspec.json.Decoder(Header)
order_decoder = msgspec.json.Decoder(Order)
