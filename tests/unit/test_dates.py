"""Unit tests for shared.rules.dates."""

from __future__ import annotations

import datetime
import zoneinfo

import pytest

from shared.rules.dates import parse_order_datetime

UTC = zoneinfo.ZoneInfo("UTC")
AMSTERDAM = zoneinfo.ZoneInfo("Europe/Amsterdam")
NEW_YORK = zoneinfo.ZoneInfo("America/New_York")


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0
) -> datetime.datetime:
    """Build an aware UTC datetime."""
    return datetime.datetime(year, month, day, hour, minute, second, micro, tzinfo=datetime.UTC)


@pytest.mark.parametrize(
    ("value", "zone", "expected"),
    [
        ("2019-04-18 08:47:25", UTC, utc(2019, 4, 18, 8, 47, 25)),
        ("2019-04-18 08:47:25", AMSTERDAM, utc(2019, 4, 18, 6, 47, 25)),
        ("2019-01-18 08:47:25", AMSTERDAM, utc(2019, 1, 18, 7, 47, 25)),
        ("2019-04-18 08:47:25", NEW_YORK, utc(2019, 4, 18, 12, 47, 25)),
        ("2019-04-18", UTC, utc(2019, 4, 18)),
        ("2019-04-18", AMSTERDAM, utc(2019, 4, 17, 22)),
        ("2019-04-18T08:47:25", UTC, utc(2019, 4, 18, 8, 47, 25)),
        ("2019-04-18T08:47:25", AMSTERDAM, utc(2019, 4, 18, 6, 47, 25)),
        ("2019-04-18T08:47", AMSTERDAM, utc(2019, 4, 18, 6, 47)),
        ("2020-02-29 12:00:00", UTC, utc(2020, 2, 29, 12)),
    ],
)
def test_naive_forms_are_read_in_the_zone(
    value: str, zone: zoneinfo.ZoneInfo, expected: datetime.datetime
) -> None:
    assert parse_order_datetime(value, zone) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2019-04-18T08:47:25+02:00", utc(2019, 4, 18, 6, 47, 25)),
        ("2019-04-18T08:47:25-05:00", utc(2019, 4, 18, 13, 47, 25)),
        ("2019-04-18T08:47:25+0530", utc(2019, 4, 18, 3, 17, 25)),
        ("2019-04-18T08:47:25+02", utc(2019, 4, 18, 6, 47, 25)),
        ("2019-04-18T08:47:25Z", utc(2019, 4, 18, 8, 47, 25)),
        ("2019-04-18t08:47:25z", utc(2019, 4, 18, 8, 47, 25)),
        ("2019-04-18 08:47:25+02:00", utc(2019, 4, 18, 6, 47, 25)),
        ("2019-04-18T08:47:25.5Z", utc(2019, 4, 18, 8, 47, 25, 500000)),
        ("2019-04-18T08:47:25.123456+00:00", utc(2019, 4, 18, 8, 47, 25, 123456)),
        # Seven digits (.NET) are truncated to microseconds, never rounded up.
        ("2019-04-18T08:47:25.9999999Z", utc(2019, 4, 18, 8, 47, 25, 999999)),
        ("2019-04-18T00:30:00+02:00", utc(2019, 4, 17, 22, 30)),
    ],
)
def test_offset_forms_ignore_the_zone(value: str, expected: datetime.datetime) -> None:
    assert parse_order_datetime(value, AMSTERDAM) == expected
    assert parse_order_datetime(value, NEW_YORK) == expected


def test_result_is_aware_utc() -> None:
    result = parse_order_datetime("2019-04-18 08:47:25", AMSTERDAM)
    assert result is not None
    assert result.utcoffset() == datetime.timedelta(0)
    assert result.tzinfo is datetime.UTC


@pytest.mark.parametrize("value", ["", " ", "\t\n", "\u00a0", "0000-00-00", "0000-00-00 00:00:00"])
def test_empty_means_none(value: str) -> None:
    assert parse_order_datetime(value, AMSTERDAM) is None


@pytest.mark.parametrize(
    "value", ["  2019-04-18 08:47:25", "2019-04-18 08:47:25\n", "\u00a02019-04-18 08:47:25\t"]
)
def test_surrounding_whitespace_is_stripped(value: str) -> None:
    assert parse_order_datetime(value, UTC) == utc(2019, 4, 18, 8, 47, 25)


def test_dst_gap_shifts_forward_like_php() -> None:
    # 2021-03-28 02:30 does not exist in Amsterdam: it becomes 03:30 CEST.
    result = parse_order_datetime("2021-03-28 02:30:00", AMSTERDAM)
    assert result == utc(2021, 3, 28, 1, 30)
    assert result is not None
    assert result.astimezone(AMSTERDAM).replace(tzinfo=None) == datetime.datetime(
        2021, 3, 28, 3, 30
    )


def test_dst_gap_shifts_forward_in_new_york() -> None:
    result = parse_order_datetime("2021-03-14 02:30:00", NEW_YORK)
    assert result == utc(2021, 3, 14, 7, 30)
    assert result is not None
    assert result.astimezone(NEW_YORK).hour == 3


def test_dst_fold_takes_the_first_instant() -> None:
    # 2021-10-31 02:30 happens twice in Amsterdam; fold=0 is the earlier one, in CEST.
    assert parse_order_datetime("2021-10-31 02:30:00", AMSTERDAM) == utc(2021, 10, 31, 0, 30)


def test_offset_form_in_a_fold_is_exact() -> None:
    assert parse_order_datetime("2021-10-31T02:30:00+01:00", AMSTERDAM) == utc(2021, 10, 31, 1, 30)


@pytest.mark.parametrize(
    "value",
    [
        "2019-13-01",
        "2019-02-29",
        "2019-04-31",
        "2019-00-10",
        "2019-04-18 24:00:00",
        "2019-04-18 23:60:00",
        "2019-04-18 23:59:60",
        "2019-04-18T08:47:25+24:00",
        "2019-04-18T08:47:25+02:60",
        "0000-01-01",
        "9999-12-31T23:59:59-01:00",
        "0001-01-01 00:00:00",
    ],
)
def test_impossible_values_raise(value: str) -> None:
    with pytest.raises(ValueError, match="Y-m-d H:i:s.*Y-m-d.*ISO 8601"):
        parse_order_datetime(value, AMSTERDAM)


@pytest.mark.parametrize(
    "value",
    [
        "yesterday",
        "now",
        "18-04-2019",
        "2019/04/18",
        "20190418",
        "2019-W16-4",
        "2019-108",
        "2019-4-18",
        "2019-04-18 8:47:25",
        "2019-04-18Z",
        "2019-04-18+02:00",
        "2019-04-18T08:47:25 +02:00",
        "2019-04-18T08:47:25+2:00",
        "2019-04-18  08:47:25",
        "1555577245",
        "2019-04-18 08:47:25 CEST",
        "2019-04-18T08:47:25.Z",
        "２０１９-04-18",
    ],
)
def test_other_shapes_raise(value: str) -> None:
    with pytest.raises(ValueError, match="Y-m-d H:i:s.*Y-m-d.*ISO 8601"):
        parse_order_datetime(value, AMSTERDAM)
