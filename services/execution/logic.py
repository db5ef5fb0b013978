"""Paper broker: fills approved orders with slippage and commission, each order id once. Pure.

Fill price: the open of the first bar after the order's bar (`next_open`, the default) or the
order's own reference price, its bar's close (`close`). An order whose next bar has not come
yet waits; the last `keep_bars` bar opens are remembered per symbol, so the fill does not
depend on whether the order or the bar arrives first. An order whose fill bar has already
been forgotten is refused (Rejected, so it is dead-lettered), never filled at a wrong price.
An order the fill ledger already holds gets the recorded fill, whatever the settings say now.
Cash is margin-style, as in backtesting.py: it moves by realised PnL and commissions; an
`equity_fraction` order flattens the position and then buys
`floor(available * fraction / (price * (1 + commission_rate)))` units.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Annotated, Literal

import msgspec

from contracts.errors import Rejected
from contracts.events import BarReceived, OrderApproved, OrderFilled
from services.domain.accounting import trade_into

NonNegative = Annotated[float, msgspec.Meta(ge=0)]


class BrokerParams(msgspec.Struct, frozen=True, kw_only=True):
    """Fill price model, commission as a rate of notional with a minimum per fill, slippage in bps."""

    fill_price: Literal["next_open", "close"] = "next_open"
    commission_rate: Annotated[float, msgspec.Meta(ge=0, lt=1)] = 0.001
    min_commission: NonNegative = 0.0
    slippage_bps: Annotated[float, msgspec.Meta(ge=0, lt=10_000)] = 0.0
    cash: Annotated[float, msgspec.Meta(gt=0)] = 100_000.0
    keep_bars: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 10_000  # how far orders may lag behind bars


class Holding(msgspec.Struct, frozen=True):
    """Signed quantity and average entry price."""

    quantity: float = 0.0
    entry_price: float = 0.0


class Broker(msgspec.Struct, frozen=True, kw_only=True):
    """The paper account: cash, holdings, orders waiting for their bar, recent bars, order ids seen."""

    cash: float
    holdings: dict[str, Holding] = {}
    pending: dict[str, tuple[OrderApproved, ...]] = {}
    recent: dict[str, tuple[tuple[datetime, float], ...]] = {}   # (ts, open) of the last bars
    forgotten: dict[str, datetime] = {}                            # ts of the last bar dropped
    seen: frozenset[str] = frozenset()


_NONE: Mapping[str, OrderFilled] = MappingProxyType({})


def new_broker(params: BrokerParams) -> Broker:
    """An empty account holding the configured cash."""
    return Broker(cash=params.cash)


def _commission(quantity: float, price: float, params: BrokerParams) -> float:
    return max(params.min_commission, params.commission_rate * price * quantity)


def _apply(broker: Broker, fill: OrderFilled) -> Broker:
    """The account after `fill`: holdings, and cash moved by realised PnL and commission."""
    held = broker.holdings.get(fill.symbol, Holding())
    sign = 1.0 if fill.side == "buy" else -1.0
    new_qty, entry, realized = trade_into(held.quantity, held.entry_price, sign * fill.quantity, fill.price)
    holdings = {**broker.holdings, fill.symbol: Holding(new_qty, entry)}
    return msgspec.structs.replace(broker, cash=broker.cash + realized - fill.commission, holdings=holdings)


def _execute(broker: Broker, order: OrderApproved, price: float, ts, params: BrokerParams,
             recorded: Mapping[str, OrderFilled]) -> tuple[Broker, list[OrderFilled]]:
    """Fill `order` at `price` (slipped), or apply the fill the ledger already recorded for it."""
    if order.order_id in recorded:
        fill = recorded[order.order_id]
        return _apply(broker, fill), [fill]
    slip = price * params.slippage_bps / 10_000
    price = price + slip if order.side == "buy" else price - slip
    held = broker.holdings.get(order.symbol, Holding())
    sign = 1.0 if order.side == "buy" else -1.0
    if order.equity_fraction > 0:
        closing = abs(held.quantity) if held.quantity * sign < 0 else 0.0
        cash = broker.cash
        if closing:
            _, _, closed_pnl = trade_into(held.quantity, held.entry_price, -held.quantity, price)
            cash += closed_pnl - params.commission_rate * price * closing
        margin_elsewhere = sum(abs(h.quantity) * h.entry_price for s, h in broker.holdings.items() if s != order.symbol)
        available = max(0.0, cash - margin_elsewhere)
        opening = float(int((available * order.equity_fraction) // (price * (1 + params.commission_rate))))
        quantity = closing + opening
    else:
        quantity = order.quantity
    if quantity <= 0:
        return broker, []
    fill = OrderFilled(symbol=order.symbol, ts=ts, order_id=order.order_id, side=order.side,
                       quantity=quantity, price=price, commission=_commission(quantity, price, params))
    return _apply(broker, fill), [fill]


def _time(remembered: tuple[datetime, float]) -> datetime:
    return remembered[0]


def _forget(broker: Broker, symbol: str, recent: tuple[tuple[datetime, float], ...], keep_from: int) -> Broker:
    """Drop a symbol's bars before index `keep_from`: a symbol's orders come in time order, so no later
    order fills at a bar no later than this one's (one that does is refused as lagging too far)."""
    if keep_from == 0:
        return broker
    return msgspec.structs.replace(broker, recent={**broker.recent, symbol: recent[keep_from:]},
                                   forgotten={**broker.forgotten, symbol: recent[keep_from - 1][0]})


def on_order(broker: Broker, order: OrderApproved, params: BrokerParams,
             recorded: Mapping[str, OrderFilled] = _NONE) -> tuple[Broker, list[OrderFilled]]:
    """Fill an order now if its price is known, else keep it for its bar; a repeated order id does nothing.

    `recorded`: fills the ledger already holds, by order id; such an order gets its recorded fill.
    """
    if order.order_id in broker.seen:
        return broker, []
    if params.fill_price == "close" or order.order_id in recorded:
        broker = msgspec.structs.replace(broker, seen=broker.seen | {order.order_id})
        return _execute(broker, order, order.price, order.ts, params, recorded)
    forgotten = broker.forgotten.get(order.symbol)
    if forgotten is not None and order.ts < forgotten:
        raise Rejected(f"order {order.order_id}: the bar after {order.ts.isoformat()} is no longer remembered "
                       f"(it is older than an order already placed for {order.symbol}, or lags more than "
                       f"TRADEFLOW_EXECUTION_KEEP_BARS={params.keep_bars} bars)")
    recent = broker.recent.get(order.symbol, ())
    later = bisect.bisect_right(recent, order.ts, key=_time)   # recent bars are in time order (see on_bar)
    broker = _forget(broker, order.symbol, recent, later)
    broker = msgspec.structs.replace(broker, seen=broker.seen | {order.order_id})
    if later < len(recent):
        ts, open_ = recent[later]
        return _execute(broker, order, open_, ts, params, recorded)
    pending = {**broker.pending, order.symbol: broker.pending.get(order.symbol, ()) + (order,)}
    return msgspec.structs.replace(broker, pending=pending), []


def on_bar(broker: Broker, bar: BarReceived, params: BrokerParams,
           recorded: Mapping[str, OrderFilled] = _NONE) -> tuple[Broker, list[OrderFilled]]:
    """Remember the bar; fill the waiting orders of its symbol placed before it, at its open.

    A bar not later than the last one remembered (out of order or repeated; the strategy
    dead-letters it) is no fill price: it is ignored.
    """
    remembered = broker.recent.get(bar.symbol, ())
    if remembered and bar.ts <= remembered[-1][0]:
        return broker, []
    recent = remembered + ((bar.ts, bar.open),)
    forgotten = broker.forgotten
    if len(recent) > params.keep_bars:
        forgotten = {**forgotten, bar.symbol: recent[-params.keep_bars - 1][0]}
        recent = recent[-params.keep_bars:]
    broker = msgspec.structs.replace(broker, recent={**broker.recent, bar.symbol: recent}, forgotten=forgotten)
    waiting = broker.pending.get(bar.symbol, ())
    due = [o for o in waiting if o.ts < bar.ts]
    if not due:
        return broker, []
    broker = msgspec.structs.replace(broker, pending={**broker.pending,
                                                      bar.symbol: tuple(o for o in waiting if o.ts >= bar.ts)})
    fills: list[OrderFilled] = []
    for order in due:
        broker, out = _execute(broker, order, bar.open, bar.ts, params, recorded)
        fills += out
    return broker, fills

