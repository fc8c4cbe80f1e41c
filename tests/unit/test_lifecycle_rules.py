"""Every state-change rule of the order lifecycle."""

from __future__ import annotations

import datetime as dt

import pytest

from shared.rules.lifecycle import changed_fields, place, refuse_change

NOW = dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC)
LATER = NOW + dt.timedelta(hours=2)
EARLIER = NOW - dt.timedelta(hours=2)


@pytest.mark.parametrize("status,delivery,expected", [
    (0, None, ("new", None, None)),
    (0, LATER, ("new", None, None)),
    (8, None, ("held", None, None)),
    (9, LATER, ("cancelled", None, None)),
    (1, None, ("released", NOW, NOW)),  # "" delivery_at means now
    (1, EARLIER, ("released", EARLIER, NOW)),
    (1, LATER, ("scheduled", LATER, None)),
])
def test_placement_of_each_status(status, delivery, expected):
    assert tuple(place(status, delivery, NOW)) == expected


def test_released_order_stays_released_and_keeps_its_time():
    assert tuple(place(1, LATER, NOW, released_at=EARLIER)) == ("released", EARLIER, EARLIER)
    assert place(8, None, NOW, released_at=EARLIER).state == "held"
    assert place(8, None, NOW, released_at=EARLIER).released_at == EARLIER


@pytest.mark.parametrize("state", ["new", "scheduled", "held"])
def test_everything_may_change_until_released(state):
    assert refuse_change(state, frozenset({"items", "currency", "billing", "delivery_at"}), 1) is None


def test_after_release_only_addresses_status_and_priority():
    assert refuse_change("released", frozenset({"billing", "shipping", "status", "priority"}), 8) is None
    reason = refuse_change("released", frozenset({"items", "priority", "cod_amount"}), 1)
    assert reason is not None and "cod_amount, items" in reason
    assert "status 0" in (refuse_change("released", frozenset({"status"}), 0) or "")


@pytest.mark.parametrize("state,word", [("shipped", "shipped"), ("cancelled", "cancelled")])
def test_nothing_changes_after_shipping_or_cancelling(state, word):
    reason = refuse_change(state, frozenset({"priority"}), 1)
    assert reason is not None and word in reason


def test_changed_fields():
    assert changed_fields({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 0}) == frozenset({"b", "c"})
