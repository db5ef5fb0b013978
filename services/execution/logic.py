"""Paper broker: fill an approved order at its reference price, with slippage and commission."""

from __future__ import annotations

from typing import Annotated

import msgspec

from contracts.events import OrderApproved, OrderFilled

NonNegative = Annotated[float, msgspec.Meta(ge=0)]


class BrokerParams(msgspec.Struct, frozen=True, kw_only=True):
    """Commission as a rate of notional with a minimum per fill; slippage in basis points."""

    commission_rate: Annotated[float, msgspec.Meta(ge=0, lt=1)] = 0.001
    min_commission: NonNegative = 0.0
    slippage_bps: Annotated[float, msgspec.Meta(ge=0, lt=10_000)] = 0.0


def fill(order: OrderApproved, params: BrokerParams) -> OrderFilled:
    """The fill of `order`: buys pay the slippage up, sells down."""
    slip = order.price * params.slippage_bps / 10_000
    price = order.price + slip if order.side == "buy" else order.price - slip
    commission = max(params.min_commission, params.commission_rate * price * order.quantity)
    return OrderFilled(symbol=order.symbol, ts=order.ts, order_id=order.order_id, side=order.side,
                       quantity=order.quantity, price=price, commission=commission)


def fill_once(filled: frozenset[str], order: OrderApproved,
              params: BrokerParams) -> tuple[frozenset[str], list[OrderFilled]]:
    """Fill an order only the first time its id is seen."""
    if order.order_id in filled:
        return filled, []
    return filled | {order.order_id}, [fill(order, params)]
