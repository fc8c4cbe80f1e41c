"""Every shipment rule: quantities, flag_partial 0/1/2, COD."""

from __future__ import annotations

from decimal import Decimal

import pytest

from shared.rules.shipments import LineState, decide_shipment

LINES = [LineState(1, "A", 2, 0), LineState(2, "B", 1, 0)]


def decide(shipped, flag=0, cod="0", partials=0, lines=LINES):
    return decide_shipment(lines, shipped, flag_partial=flag, cod_amount=Decimal(cod), partial_shipments=partials)


@pytest.mark.parametrize("flag", [0, 1, 2])
def test_complete_shipment_is_always_allowed(flag):
    assert decide({1: 2, 2: 1}, flag) == (None, False, True)


def test_flag_0_refuses_a_partial_shipment():
    d = decide({1: 2}, 0)
    assert d.refusal and "flag_partial 0" in d.refusal and "2 (B)" in d.refusal


def test_flag_1_allows_any_partial_shipment():
    assert decide({1: 1}, 1) == (None, True, False)
    assert decide({1: 1}, 1, partials=5) == (None, True, False)


def test_flag_2_allows_one_partial_then_behaves_as_0():
    assert decide({1: 1}, 2, partials=0) == (None, True, False)
    second = decide({2: 1}, 2, partials=1, lines=[LineState(1, "A", 2, 1), LineState(2, "B", 1, 0)])
    assert second.refusal and "one partial shipment" in second.refusal
    rest = decide({1: 1, 2: 1}, 2, partials=1, lines=[LineState(1, "A", 2, 1), LineState(2, "B", 1, 0)])
    assert rest == (None, False, True)


def test_cod_forbids_partial_shipments_whatever_the_flag():
    d = decide({1: 2}, 1, cod="12.50")
    assert d.refusal and "cash-on-delivery" in d.refusal
    assert decide({1: 2, 2: 1}, 1, cod="12.50") == (None, False, True)


@pytest.mark.parametrize("shipped,msg", [
    ({3: 1}, "no line 3"), ({1: 0}, "greater than 0"), ({1: 3}, "only 2 left"), ({}, "at least one line")])
def test_quantities(shipped, msg):
    d = decide(shipped, 1)
    assert d.refusal and msg in d.refusal
