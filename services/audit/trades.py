"""Trades: fills paired into entry/exit round trips, per symbol. Pure and synchronous.

(The fill ledger, the record of every fill, is execution's: services/execution/ledger/.)

A fill on the side of the open trade adds to it (weighted entry price); a fill against it
closes up to its size and opens the remainder, so a reversal is one close and one open.
Commission is split between legs per unit, so a trade's PnL carries its share of both.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from contracts.events import OrderFilled


class OpenTrade(msgspec.Struct, frozen=True):
    """A position being held: signed size, weighted entry price, entry time, entry commission."""

    size: float
    entry_price: float
    entry_time: datetime
    commission: float


class ClosedTrade(msgspec.Struct, frozen=True):
    """One round trip: signed size, entry and exit, PnL after both legs' commission."""

    symbol: str
    size: float
    entry_time: datetime
    exit_time: datetime
    entry_price: float
    exit_price: float
    pnl: float
    commission: float


class Trades(msgspec.Struct, frozen=True):
    """Open trades per symbol and closed trades in the order they closed."""

    open: dict[str, OpenTrade] = {}
    closed: tuple[ClosedTrade, ...] = ()


def on_fill(trades: Trades, fill: OrderFilled) -> Trades:
    """The trades after one fill."""
    signed = fill.quantity if fill.side == "buy" else -fill.quantity
    per_unit = fill.commission / fill.quantity
    current = trades.open.get(fill.symbol)
    opened = dict(trades.open)
    closed = trades.closed
    if current is not None and current.size * signed < 0:
        closing = min(abs(signed), abs(current.size))
        share = closing / abs(current.size)
        size = closing if current.size > 0 else -closing
        commission = current.commission * share + per_unit * closing
        pnl = size * (fill.price - current.entry_price) - commission
        closed += (ClosedTrade(fill.symbol, size, current.entry_time, fill.ts, current.entry_price, fill.price,
                               pnl, commission),)
        left = current.size - size
        opened.pop(fill.symbol)
        if left:
            opened[fill.symbol] = OpenTrade(left, current.entry_price, current.entry_time,
                                            current.commission * (1 - share))
        signed += size  # what remains of the fill after closing
    if signed:
        if fill.symbol in opened:  # adds to a trade on the same side
            held = opened[fill.symbol]
            total = held.size + signed
            opened[fill.symbol] = OpenTrade(total, (held.size * held.entry_price + signed * fill.price) / total,
                                            held.entry_time, held.commission + per_unit * abs(signed))
        else:
            opened[fill.symbol] = OpenTrade(signed, fill.price, fill.ts, per_unit * abs(signed))
    return Trades(opened, closed)


def win_rate(trades: Trades) -> float | None:
    """Share of closed trades with a positive PnL; None before the first."""
    if not trades.closed:
        return None
    return sum(1 for t in trades.closed if t.pnl > 0) / len(trades.closed)
