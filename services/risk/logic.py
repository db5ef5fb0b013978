"""Risk logic: size an order toward a target position and check the limits. Pure and synchronous.

Decisions use the position risk has *committed to* (every order it approved),
so they do not depend on when fills come back; fills are tracked beside it.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from contracts.events import OrderApproved, OrderFilled, SignalRejected, SignalValidated

Positive = Annotated[float, msgspec.Meta(gt=0)]


class RiskParams(msgspec.Struct, frozen=True, kw_only=True):
    """Target size per signal, and the limits that bound it."""

    order_quantity: Positive = 10.0
    max_position: Positive = 100.0
    max_order_notional: Positive = 50_000.0
    allow_short: bool = True


class Book(msgspec.Struct, frozen=True):
    """Per symbol: the position all approved orders add up to, and the position filled so far."""

    committed: dict[str, float] = {}
    filled: dict[str, float] = {}


def _signed(side: str, quantity: float) -> float:
    return quantity if side == "buy" else -quantity


def on_signal(book: Book, signal: SignalValidated, order_id: str,
              params: RiskParams) -> tuple[Book, OrderApproved | SignalRejected]:
    """Approve an order that moves the committed position to the signal's target, or reject it."""
    current = book.committed.get(signal.symbol, 0.0)
    if signal.side == "buy":
        target = params.order_quantity
    else:
        target = -params.order_quantity if params.allow_short else 0.0
    delta = target - current

    def reject(rule: str, reason: str) -> tuple[Book, SignalRejected]:
        return book, SignalRejected(symbol=signal.symbol, ts=signal.ts, stage="risk", rule=rule, reason=reason,
                                    side=signal.side, strategy=signal.strategy)

    if delta == 0:
        return reject("at_target", f"position {current:g} already at target {target:g}")
    if abs(target) > params.max_position:
        return reject("max_position", f"target position {target:g} exceeds the limit {params.max_position:g}")
    notional = abs(delta) * signal.price
    if notional > params.max_order_notional:
        return reject("max_order_notional",
                      f"order notional {notional:.2f} exceeds the limit {params.max_order_notional:.2f}")
    order = OrderApproved(symbol=signal.symbol, ts=signal.ts, order_id=order_id,
                          side="buy" if delta > 0 else "sell", quantity=abs(delta), price=signal.price,
                          strategy=signal.strategy)
    committed = {**book.committed, signal.symbol: target}
    return Book(committed, book.filled), order


def on_fill(book: Book, fill: OrderFilled) -> Book:
    """The book after a fill came back."""
    filled = {**book.filled, fill.symbol: book.filled.get(fill.symbol, 0.0) + _signed(fill.side, fill.quantity)}
    return Book(book.committed, filled)
