"""Risk logic: an event-sourced book, order sizing toward a target position, and the limits. Pure.

Risk decides on what it has *committed to*: every order it approved, booked at the signal's
reference price. Positions, the equity that sizes orders and the day's loss all come from
that committed book marked *as of the signal's time*: the signal's symbol at the signal's
price, every other symbol at its last price before that time (a recent history of closes
and signal prices is kept per symbol; a symbol with none before is marked at its committed
entry). So no decision depends on how soon fills come back, nor on how far the bars have
run ahead of the signals, and replaying the same inputs gives the same decisions. A day's
loss is measured from the committed equity at the day's start (midnight in
session_timezone), taken at the day's first signal. Beside it the book keeps the portfolio the fills
add up to (positions, cash, realised PnL, commissions), which GET /v1/book shows; the two
differ by the fill price against the reference price, and commissions.

Sizing policies (target position per signal):
  fixed              `order_quantity` units
  equity_fraction    `equity_fraction` of equity at the signal price (the broker re-sizes at the fill)
  volatility_target  units whose annualised volatility is `target_volatility` of equity:
                     floor(equity x target_volatility / (signal volatility x price))
Limits, in the order checked: session, max_daily_loss (reduce-only for the rest of the day:
an order that would open or grow a position becomes one that flattens it; it is rejected when
flat, and under equity_fraction sizing, whose position size only the broker knows exactly),
max_position, max_order_notional, max_gross_exposure.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from datetime import date, datetime, time
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from contracts.events import BarReceived, OrderApproved, OrderFilled, SignalRejected, SignalValidated
from services.domain.accounting import trade_into

Positive = Annotated[float, msgspec.Meta(gt=0)]


class RiskParams(msgspec.Struct, frozen=True, kw_only=True):
    """Target size per signal, and the limits that bound it."""

    sizing: Literal["fixed", "equity_fraction", "volatility_target"] = "fixed"
    order_quantity: Positive = 10.0      # fixed: the target position's size
    equity_fraction: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.9999   # equity_fraction: share of equity
    target_volatility: Annotated[float, msgspec.Meta(gt=0, le=10)] = 0.10   # volatility_target, annualised
    capital: Positive = 100_000.0        # the cash the book starts with (the broker's cash)
    max_position: Positive = 100.0
    max_order_notional: Positive = 50_000.0
    max_gross_exposure: Positive | None = None   # sum of |position| x last price over symbols
    max_daily_loss: Positive | None = None       # equity lost since the day's first event, in cash
    allow_short: bool = True
    session: str | None = None                   # "HH:MM-HH:MM", Monday to Friday, in session_timezone
    session_timezone: str = "America/New_York"
    price_history: Annotated[int, msgspec.Meta(ge=2, le=1_000_000)] = 1_000   # prices kept per symbol

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


class Holding(msgspec.Struct, frozen=True):
    """A filled position: signed quantity and average entry price."""

    quantity: float = 0.0
    entry_price: float = 0.0


class Book(msgspec.Struct, frozen=True, kw_only=True):
    """The committed book (approved orders at their reference prices) and the portfolio the fills add up to."""

    capital: float = 0.0
    committed: dict[str, float] = {}          # position per symbol after every approved order
    committed_entry: dict[str, float] = {}    # its average entry at reference prices
    committed_pnl: float = 0.0                # realised on it at reference prices
    prices: dict[str, tuple[tuple[datetime, float], ...]] = {}   # recent (time, close or signal price), in time order
    day: date | None = None                   # the trading day (in session_timezone) of the latest signal
    day_start_equity: float = 0.0             # committed equity at that day's start
    positions: dict[str, Holding] = {}        # filled
    cash: float = 0.0
    realized_pnl: float = 0.0
    commissions: float = 0.0


def new_book(params: RiskParams) -> Book:
    """A flat book holding the starting capital."""
    return Book(capital=params.capital, cash=params.capital, day_start_equity=params.capital)


def latest_marks(book: Book) -> dict[str, float]:
    """Every symbol's latest price in event time."""
    return {symbol: history[-1][1] for symbol, history in book.prices.items() if history}


def price_before(book: Book, symbol: str, ts: datetime) -> float | None:
    """`symbol`'s last price strictly before `ts` (the oldest kept if all are later), or None if it has none."""
    history = book.prices.get(symbol)
    if not history:
        return None
    return history[max(bisect_left(history, ts, key=lambda p: p[0]) - 1, 0)][1]


def marks_before(book: Book, ts: datetime, symbols: Iterable[str]) -> dict[str, float]:
    """The last price before `ts` of each of `symbols` that has one."""
    return {s: p for s in symbols if (p := price_before(book, s, ts)) is not None}


def committed_equity(book: Book, marks: Mapping[str, float] | None = None) -> float:
    """Capital plus the committed book's realised and unrealised PnL at `marks` (default: the latest prices);
    a symbol without a mark counts at its committed entry."""
    marks = latest_marks(book) if marks is None else marks
    return book.capital + book.committed_pnl + sum(
        q * (marks.get(s, book.committed_entry.get(s, 0.0)) - book.committed_entry.get(s, 0.0))
        for s, q in book.committed.items())


def unrealized(book: Book) -> float:
    """Filled positions' PnL at the latest prices."""
    marks = latest_marks(book)
    return sum(h.quantity * (marks.get(s, h.entry_price) - h.entry_price) for s, h in book.positions.items())


def equity(book: Book) -> float:
    """Cash plus filled positions at the latest prices."""
    marks = latest_marks(book)
    return book.cash + sum(h.quantity * marks.get(s, h.entry_price) for s, h in book.positions.items())


def _remember(book: Book, symbol: str, ts: datetime, price: float, params: RiskParams) -> Book:
    """`symbol`'s price history with (`ts`, `price`) in time order (a time already known takes the new price),
    the oldest dropped beyond `price_history`."""
    history = book.prices.get(symbol, ())
    if not history or ts > history[-1][0]:
        history = history + ((ts, price),)
    else:
        at = bisect_left(history, ts, key=lambda p: p[0])
        later = history[at + 1:] if history[at][0] == ts else history[at:]
        history = history[:at] + ((ts, price),) + later
    return msgspec.structs.replace(book, prices={**book.prices, symbol: history[-params.price_history:]})


def on_bar(book: Book, bar: BarReceived, params: RiskParams) -> Book:
    """Remember the bar's close."""
    return _remember(book, bar.symbol, bar.ts, bar.close, params)


def _new_day(book: Book, ts: datetime, params: RiskParams) -> Book:
    """At a later day's first signal: the day, and the committed equity at its start (midnight, session_timezone)."""
    zone = ZoneInfo(params.session_timezone)
    day = ts.astimezone(zone).date()
    if book.day is not None and day <= book.day:
        return book
    start = datetime.combine(day, time(0), tzinfo=zone)
    return msgspec.structs.replace(book, day=day,
                                   day_start_equity=committed_equity(book, marks_before(book, start, book.committed)))


def on_fill(book: Book, fill: OrderFilled) -> Book:
    """The filled portfolio after a fill came back: position, cash, realised PnL and commissions."""
    signed = _signed(fill.side, fill.quantity)
    held = book.positions.get(fill.symbol, Holding())
    quantity, entry, realized = trade_into(held.quantity, held.entry_price, signed, fill.price)
    positions = {**book.positions, fill.symbol: Holding(quantity, entry)}
    if quantity == 0:
        del positions[fill.symbol]
    return msgspec.structs.replace(
        book, positions=positions, cash=book.cash - signed * fill.price - fill.commission,
        realized_pnl=book.realized_pnl + realized, commissions=book.commissions + fill.commission)


def _signed(side: str, quantity: float) -> float:
    return quantity if side == "buy" else -quantity


def _target(signal: SignalValidated, equity_now: float, current: float, direction: float,
            params: RiskParams) -> float | str:
    """The target position, or why there is none (a rejection reason keyed by its rule)."""
    if params.sizing == "fixed":
        return direction * params.order_quantity
    if params.sizing == "volatility_target":
        if not signal.volatility:
            return "no_volatility"
        units = math.floor(max(0.0, equity_now) * params.target_volatility
                           / (signal.volatility * signal.price))
    else:  # the broker sizes at the fill; this estimate is what the limits are checked against
        units = math.floor(max(0.0, equity_now) * params.equity_fraction / signal.price)
    target = direction * units
    if params.sizing == "equity_fraction" and current * target > 0:
        return current  # already all-in on this side
    return target


def on_signal(book: Book, signal: SignalValidated, order_id: str,
              params: RiskParams) -> tuple[Book, OrderApproved | SignalRejected]:
    """Approve an order that moves the committed position to the signal's target, or reject it."""
    book = _new_day(book, signal.ts, params)
    marks = marks_before(book, signal.ts, book.committed) | {signal.symbol: signal.price}
    equity_now = committed_equity(book, marks)
    book = _remember(book, signal.symbol, signal.ts, signal.price, params)
    current = book.committed.get(signal.symbol, 0.0)
    direction = 1.0 if signal.side == "buy" else (-1.0 if params.allow_short else 0.0)

    def reject(rule: str, reason: str) -> tuple[Book, SignalRejected]:
        return book, SignalRejected(symbol=signal.symbol, ts=signal.ts, stage="risk", rule=rule, reason=reason,
                                    side=signal.side, strategy=signal.strategy)

    if not in_session(signal.ts, params):
        return reject("session", f"{signal.ts.isoformat()} is outside the session {params.session} "
                                 f"{params.session_timezone}, Monday to Friday")
    target = _target(signal, equity_now, current, direction, params)
    if target == "no_volatility":
        return reject("no_volatility", f"volatility_target sizing needs the signal's volatility, got "
                                       f"{signal.volatility!r}")
    if direction and not target:
        return reject("min_size", f"{params.sizing} sizing on equity {equity_now:.2f} buys no unit at "
                                  f"{signal.price:g}")
    flatten = False
    if params.max_daily_loss is not None and (loss := book.day_start_equity - equity_now) >= params.max_daily_loss:
        reducing = current * target >= 0 and abs(target) < abs(current)
        if not reducing:
            if current == 0 or params.sizing == "equity_fraction":  # an all-in position's size is the broker's
                return reject("max_daily_loss", f"the day's loss {loss:.2f} reached the limit "
                                                f"{params.max_daily_loss:.2f}: reduce-only until {book.day} ends")
            target, flatten = 0.0, True
    delta = target - current
    if delta == 0:
        return reject("at_target", f"position {current:g} already at target {target:g}")
    if abs(target) > params.max_position:
        return reject("max_position", f"target position {target:g} exceeds the limit {params.max_position:g}")
    notional = abs(delta) * signal.price
    if notional > params.max_order_notional:
        return reject("max_order_notional",
                      f"order notional {notional:.2f} exceeds the limit {params.max_order_notional:.2f}")
    if params.max_gross_exposure is not None:
        after = {**book.committed, signal.symbol: target}
        gross = sum(abs(q) * marks.get(s, book.committed_entry.get(s, 0.0)) for s, q in after.items())
        if gross > params.max_gross_exposure:
            return reject("max_gross_exposure",
                          f"gross exposure {gross:.2f} would exceed the limit {params.max_gross_exposure:.2f}")
    fraction = params.equity_fraction if params.sizing == "equity_fraction" and not flatten else 0.0
    order = OrderApproved(symbol=signal.symbol, ts=signal.ts, order_id=order_id,
                          side="buy" if delta > 0 else "sell", quantity=abs(delta), price=signal.price,
                          strategy=signal.strategy, equity_fraction=fraction)
    _, entry, realized = trade_into(current, book.committed_entry.get(signal.symbol, 0.0), delta, signal.price)
    return msgspec.structs.replace(book, committed={**book.committed, signal.symbol: target},
                                   committed_entry={**book.committed_entry, signal.symbol: entry},
                                   committed_pnl=book.committed_pnl + realized), order
