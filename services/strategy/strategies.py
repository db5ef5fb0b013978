"""More strategies over a per-symbol window of closes, selectable by name. Pure and synchronous.

    sma_cross       fast SMA crosses the slow one (services.strategy.logic)
    rsi_reversion   Wilder RSI falls below `lower` (buy) or rises above `upper` (sell)
    macd_cross      the MACD line crosses its signal line

Recursive indicators (RSI, MACD) are computed over the last `lookback` x their longest
period of closes: the seed's weight has decayed below e^-10 of the value by then, so the
result is the full-history value to within 1e-4 relative, at bounded memory per symbol.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import msgspec
import numpy as np

from contracts.events import BarReceived, SignalGenerated
from services.strategy.indicators import macd, rsi
from services.strategy.logic import Period, SmaCrossParams, StrategyParams, Window, own_params, push, sma_cross, \
    with_volatility

Level = Annotated[float, msgspec.Meta(gt=0, lt=100)]
Lookback = Annotated[int, msgspec.Meta(ge=2, le=100)]


class RsiReversionParams(StrategyParams, frozen=True, kw_only=True):
    """RSI period and the oversold/overbought levels; lower must be below upper."""

    n: Period = 14
    lower: Level = 30.0
    upper: Level = 70.0
    lookback: Lookback = 10

    def __post_init__(self) -> None:
        if self.lower >= self.upper:
            raise ValueError(f"lower ({self.lower}) must be below upper ({self.upper})")


class MacdCrossParams(StrategyParams, frozen=True, kw_only=True):
    """MACD fast/slow EMA periods and the signal-line period; fast must be shorter than slow."""

    fast: Period = 12
    slow: Period = 26
    signal: Period = 9
    lookback: Lookback = 10

    def __post_init__(self) -> None:
        if self.fast >= self.slow:
            raise ValueError(f"fast ({self.fast}) must be shorter than slow ({self.slow})")


def _signal(bar: BarReceived, side: str, strength: float, name: str, params: StrategyParams,
            window: Window, features: dict[str, float]) -> SignalGenerated:
    return SignalGenerated(symbol=bar.symbol, ts=bar.ts, side=side, strength=float(min(1.0, max(0.0, strength))),
                           price=bar.close, strategy=name, params=own_params(params),
                           features=with_volatility(features, window, params))


def rsi_reversion(window: Window, bar: BarReceived,
                  params: RsiReversionParams) -> tuple[Window, list[SignalGenerated]]:
    """Buy when RSI crosses down through `lower`, sell when it crosses up through `upper`."""
    window = push(window, bar, params.n * params.lookback + 1, params)
    if len(window.closes) < params.n + 2:
        return window, []
    values = rsi(np.asarray(window.closes), params.n)
    prev, now = values[-2], values[-1]
    if prev >= params.lower > now:
        side, strength = "buy", (params.lower - now) / params.lower
    elif prev <= params.upper < now:
        side, strength = "sell", (now - params.upper) / (100 - params.upper)
    else:
        return window, []
    return window, [_signal(bar, side, strength, "rsi_reversion", params, window, {"rsi": float(now)})]


def macd_cross(window: Window, bar: BarReceived, params: MacdCrossParams) -> tuple[Window, list[SignalGenerated]]:
    """Buy when the MACD line crosses above its signal line, sell when it crosses below."""
    window = push(window, bar, params.slow * params.lookback + params.signal, params)
    if len(window.closes) < params.slow + params.signal:
        return window, []
    line, signal, hist = macd(np.asarray(window.closes), params.fast, params.slow, params.signal)
    if hist[-2] < 0 < hist[-1]:
        side = "buy"
    elif hist[-2] > 0 > hist[-1]:
        side = "sell"
    else:
        return window, []
    strength = abs(hist[-1]) / bar.close / 0.001  # 0.1 % of price apart = full strength
    return window, [_signal(bar, side, strength, "macd_cross", params, window,
                            {"macd": float(line[-1]), "signal": float(signal[-1]), "histogram": float(hist[-1])})]


Step = Callable[[Window, BarReceived, StrategyParams], tuple[Window, list[SignalGenerated]]]
STRATEGIES: dict[str, tuple[type[msgspec.Struct], Step]] = {
    "sma_cross": (SmaCrossParams, sma_cross),
    "rsi_reversion": (RsiReversionParams, rsi_reversion),
    "macd_cross": (MacdCrossParams, macd_cross),
}
