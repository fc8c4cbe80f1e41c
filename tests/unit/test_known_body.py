"""The enqueue fast path (typed decode of the raw body) against the long way (decode, convert, walk)."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.accept import known_body
from shared.queue import split_envelope
from shared.rules.order import unknown_fields
from shared.schemas import ITEM_FIELDS, PAYLOAD_FIELDS, PayloadIn
from tests.conftest import FIXTURES

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12), st.sampled_from(["", " 7 ", "12.50", "1e3", "true", "2026-11-28 10:00:00", "NL"]),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
item_fields = sorted(ITEM_FIELDS)
payload_fields = sorted(PAYLOAD_FIELDS - {"items"})
items = st.dictionaries(st.sampled_from(item_fields) | st.sampled_from(["qty_x", "extra"]), scalars, max_size=6)


@st.composite
def bodies(draw: Any) -> dict[str, Any]:
    payload = draw(st.dictionaries(st.sampled_from(payload_fields) | st.just("unknown_x"), scalars, max_size=12))
    shape = draw(st.sampled_from(["flat", "nested", "none", "odd"]))
    if shape == "flat":
        payload["items"] = draw(st.lists(items, max_size=3))
    elif shape == "nested":
        payload["items"] = draw(st.lists(st.lists(items, max_size=2), max_size=2))
    elif shape == "odd":
        payload["items"] = draw(scalars)
    body: dict[str, Any] = {"payload": draw(st.sampled_from([payload, payload, payload, None, 3, [payload]]))}
    for name in draw(st.lists(st.sampled_from(["access_key", "entity_id", "extra"]), max_size=3)):
        body[name] = draw(st.sampled_from(["ak_x", "ent_y", 5, None]))
    return body


def long_way(body: dict[str, Any]) -> tuple[PayloadIn, list[Any]] | None:
    """What the long way makes of a body: the typed payload and the unknown-field warnings."""
    try:
        typed = msgspec.convert(body.get("payload"), type=PayloadIn, strict=False)
    except msgspec.ValidationError:
        return None
    return typed, unknown_fields(body)


@settings(max_examples=600, deadline=None)
@given(bodies(), st.sampled_from([None, 2]))
def test_fast_path_types_the_payload_exactly_as_the_long_way(body: dict[str, Any], indent: int | None) -> None:
    raw = json.dumps(body, indent=indent).encode()
    fast = known_body(raw)
    slow = long_way(body)
    if fast is None:
        # only bodies the long way refuses, warns about, walks for U+0000 or has no payload object for
        assert slow is None or slow[1] or b"\\u0000" in raw or not isinstance(body.get("payload"), dict) or not all(
            isinstance(body.get(k), str | None) for k in ("access_key", "entity_id"))
        return
    decoded_body, typed, payload_json = fast
    assert slow is not None and slow[1] == []
    assert msgspec.to_builtins(typed) == msgspec.to_builtins(slow[0])
    assert json.loads(payload_json) == body["payload"]
    assert b"\n" not in payload_json  # the envelope is one JSON text per line
    assert decoded_body.access_key == body.get("access_key")


def test_fixtures_take_the_fast_path_and_pretty_printing_does_not_break_the_envelope() -> None:
    raw = (FIXTURES / "order-valid.json").read_bytes()
    body = json.loads(raw)
    for text in (raw, json.dumps(body, indent=4).encode()):
        fast = known_body(text)
        assert fast is not None
        assert json.loads(fast[2]) == body["payload"]
        assert split_envelope(b"header\n" + fast[2] + b"\norder")[1] == fast[2]


@pytest.mark.parametrize("raw", [
    b'{"payload": {"reference": "A\\u0000"}}',  # U+0000: the long way names the field
    b'{"payload": {"reference": "A", "colour": "red"}}',  # unknown field: the long way warns
    b'{"payload": null}', b'{"entity_id": "e"}', b'[]', b'{"payload": {"reference": "A"', b'',
])
def test_bodies_that_need_the_long_way(raw: bytes) -> None:
    assert known_body(raw) is None
