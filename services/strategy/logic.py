"""Strategy logic: per-symbol rolling windows and an SMA crossover. Pure and synchronous.

Every strategy's parameters include the common `StrategyParams`: the window of the rolling
volatility each signal carries as its `volatility` feature (annualised; quant's regime and
risk's volatility-targeted sizing read it), and the largest gap allowed between two bars.
"""

from __future__ import annotations

import functools

from datetime import datetime
from typing import Annotated

import msgspec
import numpy as np

from contracts.errors import Rejected
from contracts.events import BarReceived, SignalGenerated
from services.strategy.indicators import rolling_volatility

Period = Annotated[int, msgspec.Meta(ge=1, le=10_000)]


class StrategyParams(msgspec.Struct, frozen=True, kw_only=True):
    """Settings every strategy shares (TRADEFLOW_STRATEGY_VOL_WINDOW, _PERIODS_PER_YEAR, _MAX_GAP_SECONDS).

    `max_gap_seconds`: a bar later than this after the symbol's previous bar is rejected (dead-lettered)
    and the symbol's window starts afresh, so no indicator is computed across the hole. None: no limit
    (daily bars have weekends and holidays; set it to what your calendar allows, e.g. 432000 = 5 days).
    """

    vol_window: Annotated[int, msgspec.Meta(ge=2, le=10_000)] = 20
    periods_per_year: Annotated[float, msgspec.Meta(gt=0)] = 252.0
    max_gap_seconds: Annotated[float, msgspec.Meta(gt=0)] | None = None


COMMON = frozenset(f.name for f in msgspec.structs.fields(StrategyParams))


@functools.cache
def _own_fields(kind: type[StrategyParams]) -> tuple[str, ...]:
    return tuple(f.name for f in msgspec.structs.fields(kind) if f.name not in COMMON)


def own_params(params: StrategyParams) -> dict[str, float]:
    """A strategy's own parameters (not the common ones), as a signal carries them."""
    return {name: float(getattr(params, name)) for name in _own_fields(type(params))}


def mean(x: np.ndarray) -> float:
    """x.mean(), bit for bit, without its per-call overhead (it is called for every bar)."""
    return np.add.reduce(x) / len(x)


class SmaCrossParams(StrategyParams, frozen=True, kw_only=True):
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


class GapRejected(Rejected):
    """A bar after a longer gap than allowed; `window` is the fresh window to keep."""

    reason = "gap"

    def __init__(self, message: str, window: Window) -> None:
        super().__init__(message)
        self.window = window


def push(window: Window, bar: BarReceived, keep: int, params: StrategyParams) -> Window:
    """The window after `bar`, keeping at least what the volatility needs.

    Rejected if the bar is not later than the last one; GapRejected (carrying the restarted window)
    if it comes more than `max_gap_seconds` after it.
    """
    if window.last_ts is not None and bar.ts <= window.last_ts:
        raise Rejected(f"bar at {bar.ts.isoformat()} is not after the last bar at {window.last_ts.isoformat()} "
                       f"for {bar.symbol} (out of order or duplicate)")
    if (window.last_ts is not None and params.max_gap_seconds is not None
            and (gap := (bar.ts - window.last_ts).total_seconds()) > params.max_gap_seconds):
        raise GapRejected(f"bar at {bar.ts.isoformat()} comes {gap:g}s after the last bar of {bar.symbol} at "
                          f"{window.last_ts.isoformat()}, more than TRADEFLOW_STRATEGY_MAX_GAP_SECONDS="
                          f"{params.max_gap_seconds:g}; the window restarts after it", Window((), bar.ts))
    closes = (window.closes + (bar.close,))[-max(keep, params.vol_window + 1):]
    return Window(closes, bar.ts)


def with_volatility(features: dict[str, float], window: Window, params: StrategyParams) -> dict[str, float]:
    """`features` plus `volatility` (annualised, over `vol_window` log returns) once the window holds enough."""
    if len(window.closes) <= params.vol_window:
        return features
    closes = np.asarray(window.closes[-params.vol_window - 1:])
    vol = float(rolling_volatility(closes, params.vol_window, params.periods_per_year)[-1])
    return {**features, "volatility": vol}


def sma_cross(window: Window, bar: BarReceived, params: SmaCrossParams) -> tuple[Window, list[SignalGenerated]]:
    """Push `bar`; a signal when the fast SMA crosses the slow one (strictly, as backtesting.lib.crossover)."""
    window = push(window, bar, params.slow + 1, params)
    if len(window.closes) < params.slow + 1:
        return window, []
    closes = np.asarray(window.closes)
    fast_now, fast_prev = mean(closes[-params.fast:]), mean(closes[-params.fast - 1:-1])
    slow_now, slow_prev = mean(closes[-params.slow:]), mean(closes[-params.slow - 1:-1])
    if fast_prev < slow_prev and fast_now > slow_now:
        side = "buy"
    elif fast_prev > slow_prev and fast_now < slow_now:
        side = "sell"
    else:
        return window, []
    gap = abs(fast_now - slow_now) / slow_now
    signal = SignalGenerated(
        symbol=bar.symbol, ts=bar.ts, side=side, strength=float(min(1.0, gap / 0.01)), price=bar.close,
        strategy="sma_cross", params=own_params(params),
        features=with_volatility({"sma_fast": float(fast_now), "sma_slow": float(slow_now)}, window, params),
    )
    return window, [signal]
