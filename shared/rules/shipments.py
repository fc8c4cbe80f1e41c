"""Shipment rules: flag_partial and COD decide whether a shipment may leave lines open. Pure."""

from __future__ import annotations

from decimal import Decimal
from typing import NamedTuple


class LineState(NamedTuple):
    """A stored line and how much of it has shipped."""

    line_no: int
    sku: str
    qty: int
    qty_shipped: int


class ShipmentDecision(NamedTuple):
    """Whether the shipment may be recorded, and what it does to the order."""

    refusal: str | None
    partial: bool
    complete: bool


def decide_shipment(
    lines: list[LineState],
    shipped: dict[int, int],
    *,
    flag_partial: int,
    cod_amount: Decimal,
    partial_shipments: int,
) -> ShipmentDecision:
    """Check quantities, then flag_partial (0 complete, 1 any, 2 one partial then complete) and COD."""
    by_no = {line.line_no: line for line in lines}
    for line_no, qty in shipped.items():
        line = by_no.get(line_no)
        if line is None:
            return ShipmentDecision(f"the order has no line {line_no}", False, False)
        if qty <= 0:
            return ShipmentDecision(f"line {line_no}: qty must be greater than 0", False, False)
        left = line.qty - line.qty_shipped
        if qty > left:
            return ShipmentDecision(
                f"line {line_no} ({line.sku}): {qty} shipped but only {left} left to ship", False, False)
    if not shipped:
        return ShipmentDecision("a shipment needs at least one line", False, False)
    open_after = [line for line in lines if line.qty - line.qty_shipped - shipped.get(line.line_no, 0) > 0]
    complete = not open_after
    if complete:
        return ShipmentDecision(None, False, True)
    left_open = ", ".join(f"{line.line_no} ({line.sku})" for line in open_after)
    if cod_amount > 0:
        return ShipmentDecision(
            f"cash-on-delivery orders ship complete: this shipment leaves line(s) {left_open} open",
            True, False)
    if flag_partial == 0:
        return ShipmentDecision(
            f"flag_partial 0 (ship complete): this shipment leaves line(s) {left_open} open", True, False)
    if flag_partial == 2 and partial_shipments >= 1:
        return ShipmentDecision(
            "flag_partial 2 allows one partial shipment and it has been made: ship the rest complete "
            f"(line(s) {left_open} would stay open)", True, False)
    return ShipmentDecision(None, True, False)
