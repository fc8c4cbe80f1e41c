"""Address rules: splitting a one-line street and checking country codes."""

from __future__ import annotations

import re
from functools import lru_cache

__all__ = ["COUNTRY_CODES", "is_country_code", "split_street_full"]

# Suffix words written apart from the number ("9 bis"); a longer free word after the
# number is far more often part of the street name ("Avenue 2 Mai"), so only these.
_SPACED_WORDS = r"(?i:bis|ter|quater)"

# A street is followed by its number after a space or comma, or glued to it after an
# abbreviation's period ("Hauptstr.5").
_TRAILING = re.compile(
    rf"""
    ^(?P<street>.+?)(?:[ ,]+|(?<=\.))
    (?P<number>[0-9]+)
    (?:
        \ ?[-/]\ ?(?P<sep_ext>[^\W_]{{1,6}})        # 12-B, 5/2, 12 - 14
      | (?P<glued_ext>[^\W\d_]{{1,6}})              # 12a, 12bis
      | \ (?P<spaced_ext>[^\W\d_]|{_SPACED_WORDS})  # 12 a, 9 bis
    )?$
    """,
    re.VERBOSE,
)

# Number first ("450 Wall Street", "221B Baker Street"). A glued suffix is one letter
# only, so "1st Avenue" is not read as number 1 with suffix "st".
_LEADING = re.compile(
    rf"""
    ^(?P<number>[0-9]+)
    (?:
        \ ?[-/]\ ?(?P<sep_ext>[^\W_]{{1,6}})
      | (?P<glued_ext>[^\W\d_])(?=[ ,])
      | \ (?P<spaced_ext>{_SPACED_WORDS})(?=[ ,])
    )?
    [ ,]+(?P<street>.+)$
    """,
    re.VERBOSE,
)

_NO_NUMBER = "no house number in street_full"


def _split_street_full(value: str) -> tuple[str, str, str]:
    """Split a one-line street into (street, housenumber, housenumber_ext): the uncached work."""
    # str.split() without arguments splits on every Unicode space, \u00a0 and tabs
    # included, which clients paste in from spreadsheets and the vendor's own docs.
    text = " ".join(value.split())
    # A trailing number wins over a leading one: European streets carry digits in their
    # names ("Avenue 2 Mai 10") far more often than number-first addresses do.
    for pattern in (_TRAILING, _LEADING):
        match = pattern.match(text)
        if match is None:
            continue
        street = match["street"].strip(" ,")
        if not any(char.isalpha() for char in street):
            continue
        ext = match["sep_ext"] or match["glued_ext"] or match["spaced_ext"] or ""
        return street, match["number"], ext
    raise ValueError(_NO_NUMBER)


# Billing and shipping usually carry the same street, and a shop's customers repeat
# theirs, so splits are remembered, failures too (as None: the only error is _NO_NUMBER).
# Only short values are cached, so the cache stays small whatever clients send.
_CACHED_MAX_LEN = 200


@lru_cache(maxsize=4096)
def _split_cached(value: str) -> tuple[str, str, str] | None:
    try:
        return _split_street_full(value)
    except ValueError:
        return None


def split_street_full(value: str) -> tuple[str, str, str]:
    """Split a one-line street into (street, housenumber, housenumber_ext)."""
    if type(value) is str and len(value) <= _CACHED_MAX_LEN:
        parts = _split_cached(value)
        if parts is None:
            raise ValueError(_NO_NUMBER)
        return parts
    return _split_street_full(value)


# ISO 3166-1 alpha-2, the 249 officially assigned codes. User-assigned codes such as
# XK (Kosovo) and exceptional reservations such as UK and EL are deliberately absent.
COUNTRY_CODES: frozenset[str] = frozenset(
    ["AD", "AE", "AF", "AG", "AI", "AL", "AM", "AO", "AQ", "AR", "AS", "AT", "AU", "AW", "AX", "AZ", "BA", "BB", "BD", "BE", "BF", "BG", "BH", "BI", "BJ", "BL", "BM", "BN", "BO", "BQ", "BR", "BS", "BT", "BV", "BW", "BY", "BZ", "CA", "CC", "CD", "CF", "CG", "CH", "CI", "CK", "CL", "CM", "CN", "CO", "CR", "CU", "CV", "CW", "CX", "CY", "CZ", "DE", "DJ", "DK", "DM", "DO", "DZ", "EC", "EE", "EG", "EH", "ER", "ES", "ET", "FI", "FJ", "FK", "FM", "FO", "FR", "GA", "GB", "GD", "GE", "GF", "GG", "GH", "GI", "GL", "GM", "GN", "GP", "GQ", "GR", "GS", "GT", "GU", "GW", "GY", "HK", "HM", "HN", "HR", "HT", "HU", "ID", "IE", "IL", "IM", "IN", "IO", "IQ", "IR", "IS", "IT", "JE", "JM", "JO", "JP", "KE", "KG", "KH", "KI", "KM", "KN", "KP", "KR", "KW", "KY", "KZ", "LA", "LB", "LC", "LI", "LK", "LR", "LS", "LT", "LU", "LV", "LY", "MA", "MC", "MD", "ME", "MF", "MG", "MH", "MK", "ML", "MM", "MN", "MO", "MP", "MQ", "MR", "MS", "MT", "MU", "MV", "MW", "MX", "MY", "MZ", "NA", "NC", "NE", "NF", "NG", "NI", "NL", "NO", "NP", "NR", "NU", "NZ", "OM", "PA", "PE", "PF", "PG", "PH", "PK", "PL", "PM", "PN", "PR", "PS", "PT", "PW", "PY", "QA", "RE", "RO", "RS", "RU", "RW", "SA", "SB", "SC", "SD", "SE", "SG", "SH", "SI", "SJ", "SK", "SL", "SM", "SN", "SO", "SR", "SS", "ST", "SV", "SX", "SY", "SZ", "TC", "TD", "TF", "TG", "TH", "TJ", "TK", "TL", "TM", "TN", "TO", "TR", "TT", "TV", "TW", "TZ", "UA", "UG", "UM", "US", "UY", "UZ", "VA", "VC", "VE", "VG", "VI", "VN", "VU", "WF", "WS", "YE", "YT", "ZA", "ZM", "ZW"]
)


def is_country_code(value: str) -> bool:
    """Tell whether value is an assigned ISO 3166-1 alpha-2 code, in upper case."""
    # Exact match only: callers that accept "nl" upper-case it first, so the stored value
    # is always canonical and this check never hides a normalisation.
    return value in COUNTRY_CODES
