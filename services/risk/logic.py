"""Risk logic: size an order toward a target position and check the limits. Pure and synchronous.

Decisions use the position risk has *committed to* (every order it approved),
so they do not depend on when fills come back; fills are tracked beside it.
"""

from __future__ import annotations

import math
from datetime import datetime, time
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from contracts.events import OrderApproved, OrderFilled, SignalRejected, SignalValidated

Positive = Annotated[float, msgspec.Meta(gt=0)]


class RiskParams(msgspec.Struct, frozen=True, kw_only=True):
    """Target size per signal, and the limits that bound it."""

    sizing: Literal["fixed", "equity_fraction"] = "fixed"
    order_quantity: Positive = 10.0      # fixed: the target position's size
    equity_fraction: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.9999   # equity_fraction: share of equity
    capital: Positive = 100_000.0        # equity_fraction: what risk assumes when it estimates a size
    max_position: Positive = 100.0
    max_order_notional: Positive = 50_000.0
    max_gross_exposure: Positive | None = None   # sum of |position| x last signal price over symbols
    allow_short: bool = True
    session: str | None = None                   # "HH:MM-HH:MM", Monday to Friday, in session_timezone
    session_timezone: str = "America/New_York"

    def __post_init__(self) -> None:
        if self.sizing == "equity_fraction" and not self.allow_short:
            raise ValueError("equity_fraction sizing needs allow_short: going flat on a sell is fixed sizing only")
        if self.session is not None:
            session_window(self.session)
        try:
            ZoneInfo(self.session_timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown session_timezone {self.session_timezone!r}") from None


def session_window(text: str) -> tuple[time, time]:
    """("HH:MM-HH:MM") -> (start, end); ValueError if malformed or empty."""
    try:
        start, end = (time.fromisoformat(part.strip()) for part in text.split("-"))
    except ValueError:
        raise ValueError(f"session {text!r} is not HH:MM-HH:MM") from None
    if start >= end:
        raise ValueError(f"session {text!r} ends before it starts")
    return start, end


def in_session(ts: datetime, params: RiskParams) -> bool:
    """Whether `ts` falls on a weekday inside the session window (always true with no session)."""
    if params.session is None:
        return True
    local = ts.astimezone(ZoneInfo(params.session_timezone))
    start, end = session_window(params.session)
    return local.weekday() < 5 and start <= local.time().replace(tzinfo=None) < end


class Book(msgspec.Struct, frozen=True):
    """Per symbol: the position all approved orders add up to, and the position filled so far."""

    committed: dict[str, float] = {}
    filled: dict[str, float] = {}
    prices: dict[str, float] = {}   # last signal price per symbol, for gross exposure


def _signed(side: str, quantity: float) -> float:
    return quantity if side == "buy" else -quantity


def on_signal(book: Book, signal: SignalValidated, order_id: str,
              params: RiskParams) -> tuple[Book, OrderApproved | SignalRejected]:
    """Approve an order that moves the committed position to the signal's target, or reject it."""
    current = book.committed.get(signal.symbol, 0.0)
    direction = 1.0 if signal.side == "buy" else (-1.0 if params.allow_short else 0.0)
    if params.sizing == "fixed":
        target = direction * params.order_quantity
    else:  # the broker sizes at the fill; this estimate is what the limits are checked against
        target = direction * math.floor(params.capital * params.equity_fraction / signal.price)
        if current * target > 0:
            target = current  # already all-in on this side
    delta = target - current

    def reject(rule: str, reason: str) -> tuple[Book, SignalRejected]:
        return book, SignalRejected(symbol=signal.symbol, ts=signal.ts, stage="risk", rule=rule, reason=reason,
                                    side=signal.side, strategy=signal.strategy)

    if not in_session(signal.ts, params):
        return reject("session", f"{signal.ts.isoformat()} is outside the session {params.session} "
                                 f"{params.session_timezone}, Monday to Friday")
    if direction and not target:
        return reject("min_size", f"{params.capital:g} x {params.equity_fraction:g} buys no unit at {signal.price:g}")
    if delta == 0:
        return reject("at_target", f"position {current:g} already at target {target:g}")
    if abs(target) > params.max_position:
        return reject("max_position", f"target position {target:g} exceeds the limit {params.max_position:g}")
    notional = abs(delta) * signal.price
    if notional > params.max_order_notional:
        return reject("max_order_notional",
                      f"order notional {notional:.2f} exceeds the limit {params.max_order_notional:.2f}")
    if params.max_gross_exposure is not None:
        prices = {**book.prices, signal.symbol: signal.price}
        after = {**book.committed, signal.symbol: target}
        gross = sum(abs(q) * prices.get(s, 0.0) for s, q in after.items())
        if gross > params.max_gross_exposure:
            return reject("max_gross_exposure",
                          f"gross exposure {gross:.2f} would exceed the limit {params.max_gross_exposure:.2f}")
    order = OrderApproved(symbol=signal.symbol, ts=signal.ts, order_id=order_id,
                          side="buy" if delta > 0 else "sell", quantity=abs(delta), price=signal.price,
                          strategy=signal.strategy,
                          equity_fraction=params.equity_fraction if params.sizing == "equity_fraction" else 0.0)
    committed = {**book.committed, signal.symbol: target}
    return Book(committed, book.filled, {**book.prices, signal.symbol: signal.price}), order


def on_fill(book: Book, fill: OrderFilled) -> Book:
    """The book after a fill came back."""
    filled = {**book.filled, fill.symbol: book.filled.get(fill.symbol, 0.0) + _signed(fill.side, fill.quantity)}
    return Book(book.committed, filled, book.prices)
