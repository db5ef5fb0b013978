"""Audit logic: positions, cash and PnL from fills, marked to the last bar; the equity curve in event
time. Pure and synchronous."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import msgspec

from contracts.events import BarReceived, OrderFilled
from services.audit import trades
from services.audit.trades import Trades
from services.domain.accounting import trade_into


class Position(msgspec.Struct, frozen=True):
    """Signed quantity and its average entry price."""

    quantity: float = 0.0
    avg_price: float = 0.0


class Portfolio(msgspec.Struct, frozen=True, kw_only=True):
    """What the audit trail adds up to."""

    initial_cash: float
    cash: float
    positions: dict[str, Position] = {}
    last_price: dict[str, float] = {}
    realized_pnl: float = 0.0
    commissions: float = 0.0
    fills: int = 0
    bars: int = 0
    trades: Trades = Trades()
    peak_equity: float = 0.0
    max_drawdown: float = 0.0   # largest fall from a peak, as a fraction of that peak
    exposed_bars: int = 0       # bars that closed with a position open


def new_portfolio(cash: float) -> Portfolio:
    """An empty portfolio holding `cash`."""
    return Portfolio(initial_cash=cash, cash=cash)


def on_fill(pf: Portfolio, f: OrderFilled) -> Portfolio:
    """Apply a fill: cash moves, the position changes, closing quantity realises PnL."""
    signed = f.quantity if f.side == "buy" else -f.quantity
    pos = pf.positions.get(f.symbol, Position())
    new_qty, avg, realized = trade_into(pos.quantity, pos.avg_price, signed, f.price)
    new = Position(new_qty, avg)
    positions = {**pf.positions, f.symbol: new}
    if new.quantity == 0:
        positions.pop(f.symbol)
    return msgspec.structs.replace(
        pf, cash=pf.cash - signed * f.price - f.commission, positions=positions,
        realized_pnl=pf.realized_pnl + realized - f.commission, commissions=pf.commissions + f.commission,
        fills=pf.fills + 1, last_price={**pf.last_price, f.symbol: pf.last_price.get(f.symbol, f.price)},
        trades=trades.on_fill(pf.trades, f),
    )


def on_bar(pf: Portfolio, bar: BarReceived) -> Portfolio:
    """Mark to the bar's close; track the equity peak, the drawdown and the time in the market."""
    pf = msgspec.structs.replace(pf, last_price={**pf.last_price, bar.symbol: bar.close}, bars=pf.bars + 1)
    eq = equity(pf)
    peak = max(pf.peak_equity, eq, pf.initial_cash)
    return msgspec.structs.replace(pf, peak_equity=peak, max_drawdown=max(pf.max_drawdown, (peak - eq) / peak),
                                   exposed_bars=pf.exposed_bars + (1 if pf.positions else 0))


Logged = tuple[datetime, int, BarReceived | OrderFilled]   # (event time, 0 for a fill or 1 for a bar, event)
Point = tuple[datetime, float]                              # (event time, equity)


def in_event_time(cash: float, events: list[Logged]) -> Portfolio:
    """The portfolio folded over (time, order, event) in time order: fills (order 0) before the bar
    closing at the same time (order 1). Live, fills arrive after later bars; in event time the
    equity curve, drawdown and exposure are what they were, whatever the arrival order."""
    pf = new_portfolio(cash)
    for _, _, event in sorted(events, key=lambda e: (e[0], e[1])):
        pf = on_bar(pf, event) if isinstance(event, BarReceived) else on_fill(pf, event)
    return pf


def equity_curve(cash: float, events: list[Logged]) -> list[Point]:
    """The equity at each event time, folded in the order of `in_event_time`: one point per time,
    once every fill and bar of that time is in."""
    pf = new_portfolio(cash)
    curve: list[Point] = []
    for ts, _, event in sorted(events, key=lambda e: (e[0], e[1])):
        pf = on_bar(pf, event) if isinstance(event, BarReceived) else on_fill(pf, event)
        if curve and curve[-1][0] == ts:
            curve[-1] = (ts, equity(pf))
        else:
            curve.append((ts, equity(pf)))
    return curve


def downsample(curve: Sequence[Point], limit: int) -> list[Point]:
    """At most `limit` (4 or more) points of a curve in time order: the first, and in each of
    (limit - 1) // 3 equal spans of event time its lowest, highest and last point, so the last
    point stays and a drawdown's peak and trough stay visible."""
    if limit < 4:
        raise ValueError(f"limit must be at least 4, got {limit}")
    if len(curve) <= limit:
        return list(curve)
    buckets = (limit - 1) // 3
    start = curve[0][0].timestamp()
    span = curve[-1][0].timestamp() - start or 1.0
    keep = {0}
    low = high = last = 0
    bucket = 0
    for i, (ts, value) in enumerate(curve):
        b = min(int((ts.timestamp() - start) / span * buckets), buckets - 1)
        if b != bucket:
            keep.update((low, high, last))
            low = high = i
            bucket = b
        low = i if value < curve[low][1] else low
        high = i if value > curve[high][1] else high
        last = i
    keep.update((low, high, last))
    return [curve[i] for i in sorted(keep)]


def curve_report(curve: Sequence[Point], limit: int) -> dict:
    """A JSON-ready curve: [[ISO time, equity], ...] downsampled to `limit`, and how many points it had."""
    return {"points": [[ts.isoformat(), round(value, 6)] for ts, value in downsample(curve, limit)],
            "total": len(curve), "limit": limit}


def equity(pf: Portfolio) -> float:
    """Cash plus positions at their last price."""
    return pf.cash + sum(p.quantity * pf.last_price.get(s, p.avg_price) for s, p in pf.positions.items())


def summary(pf: Portfolio) -> dict:
    """A JSON-ready view: positions, cash, equity, realised and unrealised PnL."""
    eq = equity(pf)
    unrealized = sum(p.quantity * (pf.last_price.get(s, p.avg_price) - p.avg_price) for s, p in pf.positions.items())
    return {
        "cash": round(pf.cash, 6),
        "equity": round(eq, 6),
        "initial_cash": pf.initial_cash,
        "pnl": round(eq - pf.initial_cash, 6),
        "realized_pnl": round(pf.realized_pnl, 6),
        "unrealized_pnl": round(unrealized, 6),
        "commissions": round(pf.commissions, 6),
        "fills": pf.fills,
        "bars": pf.bars,
        "return_pct": round((eq / pf.initial_cash - 1) * 100, 6),
        "max_drawdown_pct": round(pf.max_drawdown * 100, 6),
        "exposure_pct": round(pf.exposed_bars / pf.bars * 100, 6) if pf.bars else 0.0,
        "trade_count": len(pf.trades.closed),
        "win_rate_pct": None if (rate := trades.win_rate(pf.trades)) is None else round(rate * 100, 6),
        "positions": {s: {"quantity": p.quantity, "avg_price": round(p.avg_price, 6),
                          "last_price": pf.last_price.get(s)} for s, p in sorted(pf.positions.items())},
    }


def report(pf: Portfolio) -> dict:
    """`summary` plus `final_equity` and the closed trades: what backtest, demo and GET /v1/portfolio give."""
    out = summary(pf)
    out["final_equity"] = out["equity"]
    out["trades"] = [
        {"symbol": t.symbol, "size": t.size, "entry_time": t.entry_time.isoformat(),
         "exit_time": t.exit_time.isoformat(), "entry_price": t.entry_price, "exit_price": t.exit_price,
         "pnl": round(t.pnl, 6), "commission": round(t.commission, 6)} for t in pf.trades.closed]
    return out
