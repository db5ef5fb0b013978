"""Position arithmetic shared by the broker and the audit trail. Pure."""

from __future__ import annotations


def trade_into(quantity: float, avg_price: float, signed: float, price: float) -> tuple[float, float, float]:
    """(new quantity, new average entry price, realised PnL) after trading `signed` units at `price`.

    Adding to a position averages the entry price; reducing it realises PnL on the closed part
    and keeps the entry price; going through zero closes all and opens the rest at `price`.
    """
    realized = 0.0
    if quantity * signed < 0:
        realized = min(abs(signed), abs(quantity)) * (price - avg_price) * (1 if quantity > 0 else -1)
    new_qty = quantity + signed
    if abs(new_qty) < 1e-12:
        return 0.0, 0.0, realized
    if quantity * new_qty > 0 and abs(new_qty) < abs(quantity):
        return new_qty, avg_price, realized
    if quantity * signed >= 0:
        return new_qty, (quantity * avg_price + signed * price) / new_qty, realized
    return new_qty, price, realized
