"""The events on the wire: one frozen msgspec Struct per type, decoded strictly.

Decoding rejects unknown fields, wrong types, non-finite or non-positive prices
and quantities, naive timestamps and malformed symbols. Contracts evolve by
adding fields with defaults; a change of meaning is a new ce-type version.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Literal

import msgspec

Symbol = Annotated[str, msgspec.Meta(pattern=r"^[A-Z0-9._-]{1,32}\Z", description="instrument, upper case")]
Price = Annotated[float, msgspec.Meta(gt=0)]
Quantity = Annotated[float, msgspec.Meta(gt=0)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Timestamp = Annotated[datetime, msgspec.Meta(tz=True)]
Strength = Annotated[float, msgspec.Meta(ge=0, le=1)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Reason = Annotated[str, msgspec.Meta(max_length=512)]
Side = Literal["buy", "sell"]
Stage = Literal["quant", "risk"]
Regime = Literal["low", "normal", "high", "unknown"]


class Event(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every wire event: every event belongs to one symbol at one time."""

    symbol: Symbol
    ts: Timestamp


def _require_finite(event: msgspec.Struct, *names: str) -> None:
    for name in names:
        value = getattr(event, name)
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}")


class BarReceived(Event, frozen=True, kw_only=True):
    """One OHLCV bar of one instrument; `ts` is the bar's open time."""

    open: Price
    high: Price
    low: Price
    close: Price
    volume: NonNegative = 0.0

    def __post_init__(self) -> None:
        _require_finite(self, "open", "high", "low", "close", "volume")
        if self.high < self.low:
            raise ValueError(f"high {self.high} is below low {self.low}")
        for name in ("open", "close"):
            value = getattr(self, name)
            if not self.low <= value <= self.high:
                raise ValueError(f"{name} {value} is outside [low {self.low}, high {self.high}]")


class SignalGenerated(Event, frozen=True, kw_only=True):
    """A strategy wants to be long (`buy`) or short/flat (`sell`) after the bar at `ts`."""

    side: Side
    strength: Strength
    price: Price
    strategy: Name
    params: dict[str, float] = {}
    features: dict[str, float] = {}

    def __post_init__(self) -> None:
        _require_finite(self, "price")


class SignalValidated(Event, frozen=True, kw_only=True):
    """A signal that passed quant validation, with the volatility regime it was judged in.

    `volatility` is the annualised rolling volatility the signal carried (None if it carried
    none); `regime` is low/normal/high from it, or the symbol's cached regime, or unknown.
    """

    side: Side
    strength: Strength
    price: Price
    strategy: Name
    volatility: NonNegative | None = None
    regime: Regime = "unknown"

    def __post_init__(self) -> None:
        _require_finite(self, "price")
        if self.volatility is not None:
            _require_finite(self, "volatility")


class OrderApproved(Event, frozen=True, kw_only=True):
    """An order risk approved and sized; `price` is the reference price it was sized at."""

    order_id: Name
    side: Side
    quantity: Quantity
    price: Price
    strategy: Name = "unknown"
    # > 0: flatten the position, then put this fraction of available equity on `side`, sized by the
    # broker at the fill price; `quantity` is then risk's estimate at `price`
    equity_fraction: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0

    def __post_init__(self) -> None:
        _require_finite(self, "quantity", "price")


class OrderFilled(Event, frozen=True, kw_only=True):
    """An order the paper broker filled, at `price` per unit, paying `commission` in total."""

    order_id: Name
    side: Side
    quantity: Quantity
    price: Price
    commission: NonNegative = 0.0

    def __post_init__(self) -> None:
        _require_finite(self, "quantity", "price", "commission")


class SignalRejected(Event, frozen=True, kw_only=True):
    """A signal a stage refused; `rule` names the check or limit that fired."""

    stage: Stage
    rule: Name
    reason: Reason
    side: Side
    strategy: Name = "unknown"
