"""Outbox data spliced from the order's JSON is the very text event_data's dict encodes to."""

from __future__ import annotations

import datetime as dt
import json

import msgspec
import pytest

from shared.events import event_json, order_event_data, order_event_json
from shared.rules.lifecycle import place
from shared.rules.order import normalize_order, parse_request
from shared.schemas import Order, json_decoder, json_encoder
from shared.zones import zone_named
from tests.conftest import fixture_path

NOW = dt.datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)
NO_SHIPPING = {f"shipping_{k}": None for k in ("company", "firstname", "lastname", "street_full",
                                                 "postcode", "city", "region", "country", "phone",
                                                 "email")}


def order_json(**changes: object) -> tuple[object, bytes]:
    body = json.loads(fixture_path("order-valid.json").read_text())
    for k, v in changes.items():
        if v is None:
            body["payload"].pop(k, None)
        else:
            body["payload"][k] = v
    order, _ = normalize_order(parse_request(body).payload, zone_named("Europe/Amsterdam"))
    return order, json_encoder.encode(order)


def test_order_has_the_overridden_keys_and_none_of_the_added_ones():
    fields = {f.encode_name for f in msgspec.structs.fields(Order)}
    assert {"status", "priority", "source_id"} <= fields
    assert not fields & {"state", "release_at", "released_at", "version"}


@pytest.mark.parametrize("changes", [
    {},  # status 0: new, no release_at
    {"status": "1"},  # released now: release_at and released_at
    {"status": "1", "delivery_at": "2031-02-03 04:05:06"},  # scheduled: release_at only
    {"status": "8", "priority": "-3"},
    {"status": "9", "cod_amount": "12.50", "type": 1, **NO_SHIPPING},  # POS: no shipping address
    {"reference": 'quote " and \\ back\\slash \u00e9\u4e2d', "customer_id": "line\nbreak\ttab",
     "options": {"nested": {"list": [1, 2.5, None, True, "\u2028"]}, "empty": {}}},
])
@pytest.mark.parametrize("version", [1, 7])
def test_spliced_event_json_is_the_encoded_event_dict(changes, version):
    order, raw = order_json(**changes)
    placement = place(order.status, order.delivery_at, NOW)
    expected = json_encoder.encode(order_event_data(
        json_decoder.decode(raw), state=placement.state, status=order.status,
        priority=order.priority, release_at=placement.release_at,
        released_at=placement.released_at, source_id=order.source_id, version=version)).decode()
    spliced = order_event_json(raw, state=placement.state, release_at=placement.release_at,
                               released_at=placement.released_at, version=version)
    assert spliced == expected
    assert json.loads(spliced) == json.loads(expected)


def test_event_json_keeps_text_and_encodes_dicts():
    assert event_json('{"a":1}') == '{"a":1}'
    assert event_json({"a": NOW, "b": None}) == '{"a":"2026-01-01T12:00:00.123456Z","b":null}'
