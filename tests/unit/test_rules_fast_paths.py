"""The fast paths of the order rules against the paths they shortcut.

Each fast path promises the result of its checked path whenever it answers at all, and
declines (None or _CHECK) wherever the checked path has anything to report:
- dates: _parse_common (one regex for the common shapes) against _parse_any (the full grammar);
- streets: the cached split_street_full against the uncached _split_street_full;
- addresses: _address_fast against _address_checked; the item walk against the walk it replaced;
- scalars: _text, _int, _decimal and _flag against the definitions they had before their
  type fast paths (kept below as the reference).
"""

from __future__ import annotations

import datetime
import json
import zoneinfo
from decimal import Decimal, InvalidOperation
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.rules import address as address_rules
from shared.rules import dates
from shared.rules import order as rules
from shared.schemas import ItemIn, PayloadIn
from tests.conftest import FIXTURES

ZONES = [
    zoneinfo.ZoneInfo(name)
    for name in (
        "UTC", "Europe/Amsterdam", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"
    )
]


def _outcome(fn: Any, *args: Any) -> tuple[Any, ...]:
    """A call's result, or its ValueError's message: what callers of the rules see."""
    try:
        return ("ok", fn(*args))
    except ValueError as exc:
        return ("error", str(exc))


# --- dates ---------------------------------------------------------------------------

EDGE_DATES = [
    "2019-04-18 08:47:25", "2019-04-18T08:47:25", "2019-04-18t08:47:25", "2019-04-18T08:47:25Z",
    "2019-04-18T08:47:25z", "2019-04-18T08:47:25+02:00", "2019-04-18T08:47:25-05:00",
    "2019-04-18T08:47:25-00:00", "2019-04-18T08:47:25+23:59", "2019-04-18T08:47:25.5Z",
    "2019-04-18T08:47:25,5", "2019-04-18T08:47:25.9999999Z", "2019-04-18T08:47:25.123456789+01:00",
    "2019-04-18T08:47:25.1234567890Z", "2019-04-18T08:47:25.Z", "2019-04-18 08:47", "2019-04-18",
    "2019-04-18T08:47:25+0530", "2019-04-18T08:47:25+02", "2019-04-18T08:47:25+24:00",
    "2019-04-18T08:47:25+02:60", "2019-04-18 24:00:00", "2019-04-18 23:60:00",
    "2019-04-18 23:59:60", "2019-02-29 12:00:00", "2020-02-29 12:00:00", "2019-13-01 00:00:00",
    "2019-00-10 00:00:00", "0000-01-01 00:00:00", "0001-01-01 00:00:00", "0001-01-01T00:00:00Z",
    "0001-01-01T00:30:00+01:00", "9999-12-31 23:59:59", "9999-12-31T23:59:59Z",
    "9999-12-31T23:59:59-01:00", "2021-03-28 02:30:00", "2021-10-31 02:30:00",
    "2021-03-14 02:30:00", "2021-11-07 01:30:00", "2021-10-31T02:30:00+01:00",
    "2019-04-18x08:47:25", "2019-04-18  08:47:25", "2019-04-18 8:47:25", "２０１９-04-18 08:47:25",
    "2019-04-18 08:47:2５", "2019-04-18 08:47:25 +02:00", "2019-04-18T08:47:25+02:00Z",
    "2019-04-18 08:47:25 CEST", "+2019-04-18 08:47:25", "20190418",
]


def _date_results(text: str, zone: zoneinfo.ZoneInfo) -> None:
    common = dates._parse_common(text, zone)
    full = _outcome(dates._parse_any, text, zone)
    if common is not None:
        assert full == ("ok", common)
        assert common.tzinfo is datetime.UTC
        assert full[1].tzinfo is datetime.UTC
    assert _outcome(dates.parse_order_datetime, text, zone) == full


@pytest.mark.parametrize("zone", ZONES, ids=str)
@pytest.mark.parametrize("text", EDGE_DATES)
def test_common_date_path_matches_the_full_parser(text: str, zone: zoneinfo.ZoneInfo) -> None:
    _date_results(text, zone)


def test_common_date_path_takes_the_usual_shapes() -> None:
    for text in ("2019-04-18 08:47:25", "2019-04-18T08:47:25.123Z", "2019-04-18T08:47:25+02:00"):
        assert dates._parse_common(text, ZONES[1]) is not None


_TWO = st.integers(0, 99).map("{:02d}".format)
_OFFSET = st.one_of(
    st.sampled_from(["", "Z", "z", "+02:00", "-05:00", "+05:30", "+0530", "+02", "+24:00"]),
    st.builds("{}{}:{}".format, st.sampled_from("+-"), _TWO, _TWO),
)
_SHAPED_DATES = st.builds(
    "{}-{}-{}{}{}:{}:{}{}{}".format,
    st.one_of(
        st.sampled_from(["0000", "0001", "1970", "2019", "2021", "9999"]),
        st.integers(0, 9999).map("{:04d}".format),
    ),
    st.integers(0, 13).map("{:02d}".format),
    st.integers(0, 32).map("{:02d}".format),
    st.sampled_from(["T", " ", "t", "x", "  "]),
    st.integers(0, 25).map("{:02d}".format),
    st.integers(0, 61).map("{:02d}".format),
    st.integers(0, 61).map("{:02d}".format),
    st.one_of(
        st.just(""),
        st.builds("{}{}".format, st.sampled_from(".,"), st.text("0123456789", max_size=10)),
    ),
    _OFFSET,
)
_DATE_TEXT = st.one_of(
    _SHAPED_DATES,
    st.sampled_from(EDGE_DATES),
    st.text("0123456789-:Tt Zz+.,", min_size=1, max_size=32),
    _SHAPED_DATES.flatmap(lambda t: st.integers(0, len(t) - 1).map(lambda i: t[:i] + t[i + 1 :])),
)


@settings(max_examples=500, deadline=None)
@given(text=_DATE_TEXT, zone=st.sampled_from(ZONES))
def test_common_date_path_matches_the_full_parser_on_generated_text(
    text: str, zone: zoneinfo.ZoneInfo
) -> None:
    text = text.strip()
    if text and text not in dates._ZERO_DATES:
        _date_results(text, zone)


# --- street_full ---------------------------------------------------------------------

EDGE_STREETS = [
    "", " ", "Wallstreet 450", "Kerkstraat 12a", "Kerkstraat 12 - B", "450 Wall Street",
    "221B Baker Street", "12 bis rue de la Paix", "100 1st Avenue", "Hauptstr.5", "Avenue 2 Mai 10",
    "Main Street", "12 34",
    "Lange\u00a0\u00a0Voorhout\t9 bis", "x" * 250 + " 12", "Straat " + "9" * 300,
]


def _split_results(text: str) -> None:
    uncached = _outcome(address_rules._split_street_full, text)
    assert _outcome(address_rules.split_street_full, text) == uncached
    assert _outcome(address_rules.split_street_full, text) == uncached  # now from the cache


@pytest.mark.parametrize("text", EDGE_STREETS)
def test_cached_split_matches_the_uncached_split(text: str) -> None:
    _split_results(text)


@settings(max_examples=300, deadline=None)
@given(
    text=st.one_of(
        st.text(max_size=30),
        st.builds(
            "{} {}{}".format,
            st.text(min_size=1, max_size=12),
            st.integers(0, 9999),
            st.sampled_from(["", "a", " a", " bis", "-B", " - 2", "/2"]),
        ),
    )
)
def test_cached_split_matches_the_uncached_split_on_generated_text(text: str) -> None:
    _split_results(text)


def test_split_cache_keeps_only_short_values() -> None:
    long_value = "Never seen before " + "7" * 300  # not among the values cached above
    before = address_rules._split_cached.cache_info().currsize
    address_rules.split_street_full(long_value)
    assert address_rules._split_cached.cache_info().currsize == before
    assert address_rules._split_cached.cache_info().maxsize == 4096


# --- scalars: the definitions before their type fast paths, as the reference ------------


def _text_reference(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _int_reference(c: rules._Collector, loc: str, value: Any, default: int | None) -> int | None:
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


def _decimal_reference(
    c: rules._Collector, loc: str, value: Any, *, required: bool = False
) -> Decimal | None:
    if value is None or (isinstance(value, str) and value.strip() == ""):
        if required:
            c.error(loc, "required")
        return None
    if isinstance(value, bool):
        c.error(loc, "expected a decimal number, got a boolean")
        return None
    try:
        number = Decimal(str(value).strip())
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


def _flag_reference(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes"}
    return bool(value)


NUMBERS = [
    None, "", " ", " 0 ", "0", "1", "2", "-1", "+1", "1_000", "１２", "1e3", "1.0", "1.5", "NaN",
    "inf", "-inf", "sNaN", "-0", "0.00", "12.50", " 12.50 ", "abc", "2147483648", "\u00a01\u00a0",
    0, 1, 2, -1, 10**20,
    0.0, -0.0, 1.0, 1.5, float("nan"), float("inf"), 1e20, True, False, "true", " yes ",
]
_SCALAR = st.one_of(
    st.sampled_from(NUMBERS), st.none(), st.booleans(), st.integers(), st.floats(),
    st.text(max_size=10),
    st.builds(" {} ".format, st.integers()), st.builds(" {} ".format, st.decimals(allow_nan=True)),
)


def _same_value(a: Any, b: Any) -> bool:
    """Equal, of one type, and for Decimals of one representation ('1.0' is not '1')."""
    return type(a) is type(b) and (a == b or a != a and b != b) and repr(a) == repr(b)


@settings(max_examples=500, deadline=None)
@given(value=_SCALAR, default=st.sampled_from([None, 0, 1]), required=st.booleans())
def test_scalar_helpers_match_their_reference(
    value: Any, default: int | None, required: bool
) -> None:
    assert _same_value(rules._text(value), _text_reference(value))
    assert _same_value(rules._flag(value), _flag_reference(value))
    for fast, reference, extra in (
        (rules._int, _int_reference, {"default": default}),
        (rules._decimal, _decimal_reference, {"required": required}),
    ):
        c1, c2 = rules._Collector(), rules._Collector()
        assert _same_value(fast(c1, "$.x", value, **extra), reference(c2, "$.x", value, **extra))
        assert c1.errors == c2.errors


# --- addresses and lines -----------------------------------------------------------------


def _fixture_payloads() -> list[dict[str, Any]]:
    """The payload of every fixture that is JSON (some are broken on purpose)."""
    found = []
    for path in sorted(FIXTURES.glob("*.json")):
        try:
            body = json.loads(path.read_text())
        except ValueError:
            continue
        if isinstance(body, dict) and isinstance(body.get("payload"), dict):
            found.append(body["payload"])
    return found


FIXTURE_PAYLOADS = _fixture_payloads()
VALID = json.loads((FIXTURES / "order-valid.json").read_text())["payload"]

ADDRESS_FIELDS = [
    f"{kind}_{name}"
    for kind in ("billing", "shipping")
    for name in (*rules.ADDRESS_REQUIRED, *rules.ADDRESS_OPTIONAL, "street_full")
    if f"{kind}_{name}" in PayloadIn.__struct_fields__
]
_ADDRESS_VALUE = st.one_of(
    _SCALAR,
    st.sampled_from(EDGE_STREETS),
    st.sampled_from(["US", "us", " nl ", "NL", "UK", "XK", "ß", "N1", "Wallstreet", "450", "B"]),
)


def _address_results(p: PayloadIn, required: bool) -> None:
    for kind in ("billing", "shipping"):
        c1, c2 = rules._Collector(), rules._Collector()
        result = rules._address(c1, p, kind, required=required)
        assert result == rules._address_checked(c2, p, kind, required=required)
        assert c1.errors == c2.errors
        fast = rules._address_fast(p, kind, required)
        if fast is not rules._CHECK:
            assert fast == result and not c2.errors


@pytest.mark.parametrize("required", [True, False])
@pytest.mark.parametrize("payload", FIXTURE_PAYLOADS)
def test_address_fast_path_matches_the_checked_path_on_fixtures(
    payload: dict[str, Any], required: bool
) -> None:
    p = msgspec.convert(payload, type=PayloadIn, strict=False)
    _address_results(p, required)
    if p.billing_country:
        assert rules._address_fast(p, "billing", required) is not rules._CHECK


@settings(max_examples=400, deadline=None)
@given(
    changes=st.dictionaries(st.sampled_from(ADDRESS_FIELDS), _ADDRESS_VALUE, max_size=8),
    dropped=st.sets(st.sampled_from(ADDRESS_FIELDS), max_size=8),
    required=st.booleans(),
)
def test_address_fast_path_matches_the_checked_path(
    changes: dict[str, Any], dropped: set[str], required: bool
) -> None:
    fields = {k: v for k, v in VALID.items() if k not in dropped}
    p = msgspec.structs.replace(msgspec.convert(fields, type=PayloadIn, strict=False), **changes)
    _address_results(p, required)




def _lines_reference(c: rules._Collector, items: list[Any]) -> list[Any]:
    """The item walk as it was: locations first, then every line through the checked path."""
    flat = []
    for i, entry in enumerate(items):
        if isinstance(entry, list):
            flat.extend((f"$.payload.items[{i}][{j}]", item) for j, item in enumerate(entry))
        else:
            flat.append((f"$.payload.items[{i}]", entry))
    if not flat:
        c.error("$.payload.items", "at least one line is required")
    lines = [rules._line(c, loc, item) for loc, item in flat]
    return [line for line in lines if line is not None]


_ITEM = st.builds(
    lambda which, changes: msgspec.structs.replace(
        msgspec.convert(VALID["items"][which], type=ItemIn, strict=False), **changes
    ),
    st.integers(0, 1),
    st.dictionaries(
        st.sampled_from(["qty", "sku", "cost", "allocation_type", "unit_price"]),
        _SCALAR,
        max_size=2,
    ),
)


@settings(max_examples=300, deadline=None)
@given(items=st.lists(st.one_of(_ITEM, st.lists(_ITEM, max_size=3)), min_size=1, max_size=4))
def test_item_walk_matches_the_reference(items: list[Any]) -> None:
    c1, c2 = rules._Collector(), rules._Collector()
    assert rules._lines(c1, items) == _lines_reference(c2, items)
    assert c1.errors == c2.errors


@pytest.mark.parametrize("zone", ZONES, ids=str)
@pytest.mark.parametrize("payload", FIXTURE_PAYLOADS)
def test_fixtures_normalize_to_the_same_order_twice(
    payload: dict[str, Any], zone: zoneinfo.ZoneInfo
) -> None:
    # the second run answers from the split and offset caches
    p = msgspec.convert(payload, type=PayloadIn, strict=False)
    first = rules.normalize_order(p, zone)
    second = rules.normalize_order(p, zone)
    assert msgspec.to_builtins(first[0]) == msgspec.to_builtins(second[0])
    assert first[1] == second[1]
