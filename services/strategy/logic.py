"""Strategy logic: per-symbol rolling windows and an SMA crossover. Pure and synchronous."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
import numpy as np

from contracts.errors import Rejected
from contracts.events import BarReceived, SignalGenerated

Period = Annotated[int, msgspec.Meta(ge=1, le=10_000)]


class SmaCrossParams(msgspec.Struct, frozen=True, kw_only=True):
    """Fast and slow simple-moving-average periods; fast must be shorter than slow."""

    fast: Period = 10
    slow: Period = 20

    def __post_init__(self) -> None:
        if self.fast >= self.slow:
            raise ValueError(f"fast ({self.fast}) must be shorter than slow ({self.slow})")


class Window(msgspec.Struct, frozen=True):
    """The last closes of one symbol (oldest first) and the time of its last bar."""

    closes: tuple[float, ...] = ()
    last_ts: datetime | None = None


def push(window: Window, bar: BarReceived, keep: int) -> Window:
    """The window after `bar`; Rejected if the bar is not later than the last one."""
    if window.last_ts is not None and bar.ts <= window.last_ts:
        raise Rejected(f"bar at {bar.ts.isoformat()} is not after the last bar at {window.last_ts.isoformat()} "
                       f"for {bar.symbol} (out of order or duplicate)")
    closes = (window.closes + (bar.close,))[-keep:]
    return Window(closes, bar.ts)


def sma_cross(window: Window, bar: BarReceived, params: SmaCrossParams) -> tuple[Window, list[SignalGenerated]]:
    """Push `bar`; a signal when the fast SMA crosses the slow one (strictly, as backtesting.lib.crossover)."""
    window = push(window, bar, params.slow + 1)
    if len(window.closes) < params.slow + 1:
        return window, []
    closes = np.asarray(window.closes)
    fast_now, fast_prev = closes[-params.fast:].mean(), closes[-params.fast - 1:-1].mean()
    slow_now, slow_prev = closes[-params.slow:].mean(), closes[-params.slow - 1:-1].mean()
    if fast_prev < slow_prev and fast_now > slow_now:
        side = "buy"
    elif fast_prev > slow_prev and fast_now < slow_now:
        side = "sell"
    else:
        return window, []
    gap = abs(fast_now - slow_now) / slow_now
    signal = SignalGenerated(
        symbol=bar.symbol, ts=bar.ts, side=side, strength=float(min(1.0, gap / 0.01)), price=bar.close,
        strategy="sma_cross", params={"fast": params.fast, "slow": params.slow},
        features={"sma_fast": float(fast_now), "sma_slow": float(slow_now)},
    )
    return window, [signal]
