"""Unit tests for shared.rules.address."""

from __future__ import annotations

import re

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from shared.rules.address import COUNTRY_CODES, is_country_code, split_street_full


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Wallstreet 450", ("Wallstreet", "450", "")),
        ("Kerkstraat 12a", ("Kerkstraat", "12", "a")),
        ("Kerkstraat 12 a", ("Kerkstraat", "12", "a")),
        ("Kerkstraat 12-B", ("Kerkstraat", "12", "B")),
        ("Kerkstraat 12 - B", ("Kerkstraat", "12", "B")),
        ("Kerkstraat 12bis", ("Kerkstraat", "12", "bis")),
        ("Kerkstraat, 12", ("Kerkstraat", "12", "")),
        ("450 Wall Street", ("Wall Street", "450", "")),
        ("221B Baker Street", ("Baker Street", "221", "B")),
        ("12 bis rue de la Paix", ("rue de la Paix", "12", "bis")),
        ("100 1st Avenue", ("1st Avenue", "100", "")),
        ("5/2 Straße", ("Straße", "5", "2")),
        ("Lange Voorhout 9 bis", ("Lange Voorhout", "9", "bis")),
        ("Lange Voorhout 9 BIS", ("Lange Voorhout", "9", "BIS")),
        ("Rue de la Paix 1", ("Rue de la Paix", "1", "")),
        ("Straße 5/2", ("Straße", "5", "2")),
        ("Hauptstr.5", ("Hauptstr.", "5", "")),
        ("Avenue 2 Mai 10", ("Avenue 2 Mai", "10", "")),
        ("Straße des 17. Juni 5", ("Straße des 17. Juni", "5", "")),
    ],
)
def test_split_street_full(value: str, expected: tuple[str, str, str]) -> None:
    assert split_street_full(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "  Kerkstraat   12a  ",
        "Kerkstraat\t12a",
        "Kerkstraat\u00a012a",
        "\u00a0Kerkstraat \u00a0 12a\u00a0",
        "Kerkstraat\u202f12a",
        "Kerkstraat\n12a",
    ],
)
def test_split_street_full_normalises_whitespace(value: str) -> None:
    assert split_street_full(value) == ("Kerkstraat", "12", "a")


def test_split_street_full_collapses_whitespace_inside_the_street() -> None:
    assert split_street_full("Lange\u00a0\u00a0Voorhout\t9 bis") == ("Lange Voorhout", "9", "bis")


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "\u00a0",
        "Main Street",
        "1st Avenue",
        "Avenue 2 Mai",
        "Straße des 17. Juni",
        "12 34",
        "450",
    ],
)
def test_split_street_full_without_house_number(value: str) -> None:
    with pytest.raises(ValueError, match="^no house number in street_full$"):
        split_street_full(value)


_WORD = st.text(st.characters(categories=["Lu", "Ll"]), min_size=1, max_size=12)
_NAME = st.lists(_WORD, min_size=1, max_size=4).map(" ".join)
_NUMBER = st.integers(min_value=1, max_value=9999).map(str)
_SUFFIX = st.one_of(st.just(""), st.characters(categories=["Lu", "Ll"]))
_SPACED_WORD = re.compile(r"(?i:bis|ter|quater)")


@given(name=_NAME, number=_NUMBER, suffix=_SUFFIX)
def test_split_street_full_round_trips_trailing_number(name: str, number: str, suffix: str) -> None:
    assert split_street_full(f"{name} {number}{suffix}") == (name, number, suffix)
    assert split_street_full(f"{name} {number} {suffix}") == (name, number, suffix)


@given(name=_NAME, number=_NUMBER, suffix=_SUFFIX)
def test_split_street_full_round_trips_leading_number(name: str, number: str, suffix: str) -> None:
    # A street starting with "bis" after a bare number is read as that suffix on purpose.
    assume(suffix or not _SPACED_WORD.fullmatch(name.split(" ")[0]))
    assert split_street_full(f"{number}{suffix} {name}") == (name, number, suffix)


def test_country_codes_are_the_249_assigned_alpha_2_codes() -> None:
    assert len(COUNTRY_CODES) == 249
    assert all(len(code) == 2 and code.isascii() and code.isupper() for code in COUNTRY_CODES)
    assert {"NL", "US", "DE", "GB", "BE", "FR", "AX", "BQ", "CW", "SS", "SX"} <= COUNTRY_CODES


@pytest.mark.parametrize("value", ["NL", "US", "GB", "AQ", "ZW"])
def test_is_country_code_accepts_assigned_codes(value: str) -> None:
    assert is_country_code(value)


@pytest.mark.parametrize(
    "value", ["", "nl", "Nl", "NLD", "N", "UK", "EL", "XK", "ZZ", " NL", "NL ", "N1"]
)
def test_is_country_code_rejects_others(value: str) -> None:
    assert not is_country_code(value)
