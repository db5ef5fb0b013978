"""Technical indicators on numpy arrays. Pure, synchronous and vectorised.

    sma(x, n)                         simple moving average
    ema(x, n)                         exponential moving average, alpha = 2/(n+1)
    rsi(close, n=14)                  Wilder's relative strength index, 0..100
    macd(close, fast, slow, signal)   (macd line, signal line, histogram)
    bollinger(close, n=20, k=2.0)     (middle, upper, lower), population std (ddof=0)
    atr(high, low, close, n=14)       Wilder's average true range
    rolling_volatility(close, n=20)   annualised std (ddof=1) of log returns

Conventions:
- Every output has the input's length, NaN until its window is full (the warm-up): index n-1 is the
  first value for sma/ema/bollinger/atr, index n for rsi and rolling_volatility, which need n changes.
- Recursive averages are seeded as in Wilder and TA-Lib: the simple mean of the first n inputs,
  then the recursion avg = avg + alpha * (x - avg); alpha = 2/(n+1) for ema, 1/n for Wilder smoothing
  (rsi, atr), which is the same as avg = (prev * (n-1) + x) / n.
- Input series shorter than the warm-up give all-NaN outputs; bad parameters raise ValueError.
"""

from __future__ import annotations

from typing import TypeAlias

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import ArrayLike, NDArray

Array: TypeAlias = NDArray[np.float64]


def _period(name: str, value: object, minimum: int = 1) -> int:
    """`value` as an int period; ValueError naming `name` if it is not an int >= minimum."""
    # bool is an int subclass, but rsi(x, True) is a bug, not a period of 1
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _series(name: str, x: ArrayLike) -> Array:
    """`x` as a 1-D float64 array; ValueError naming `name` if it has another shape."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {arr.shape}")
    return arr


def _nans(length: int) -> Array:
    """An all-NaN float array of `length`, the warm-up filler."""
    return np.full(length, np.nan)


def _seeded(x: Array, n: int, alpha: float) -> Array:
    """Mean of x[:n] at index n-1, then avg += alpha * (x - avg); NaN before n-1."""
    out = _nans(len(x))
    if len(x) < n:
        return out
    avg = out[n - 1] = x[:n].mean()
    # A true recursion: each value needs the previous one, so a plain loop is the clearest form
    for i in range(n, len(x)):
        avg = out[i] = avg + alpha * (x[i] - avg)
    return out


def sma(x: ArrayLike, n: int) -> Array:
    """Mean of the last n values of x, NaN for the first n-1."""
    x, n = _series("x", x), _period("n", n)
    out = _nans(len(x))
    if len(x) >= n:
        # Window means rather than a cumulative sum: no drift from subtracting large running totals
        out[n - 1:] = sliding_window_view(x, n).mean(axis=1)
    return out


def ema(x: ArrayLike, n: int) -> Array:
    """Exponential moving average of x, alpha = 2/(n+1), seeded with sma(x, n) at index n-1."""
    x, n = _series("x", x), _period("n", n)
    return _seeded(x, n, 2.0 / (n + 1))


def rsi(close: ArrayLike, n: int = 14) -> Array:
    """Wilder's RSI of close (0..100): 100 with no losses, 50 with no change at all; NaN for the first n."""
    close, n = _series("close", close), _period("n", n)
    out = _nans(len(close))
    delta = np.diff(close)
    gain = _seeded(np.maximum(delta, 0.0), n, 1.0 / n)
    loss = _seeded(np.maximum(-delta, 0.0), n, 1.0 / n)
    total = gain + loss
    # 100 - 100/(1 + gain/loss) == 100 * gain/(gain + loss): 100 when loss == 0, only 0/0 is special
    with np.errstate(invalid="ignore"):
        out[1:] = np.where(total == 0, 50.0, 100.0 * gain / total)
    return out


def macd(close: ArrayLike, fast: int = 12, slow: int = 26, signal: int = 9) -> tuple[Array, Array, Array]:
    """(ema(fast) - ema(slow), its ema over `signal` periods, their difference) of close."""
    close = _series("close", close)
    fast, slow, signal = _period("fast", fast), _period("slow", slow), _period("signal", signal)
    if fast >= slow:
        raise ValueError(f"fast ({fast}) must be shorter than slow ({slow})")
    line = ema(close, fast) - ema(close, slow)
    signal_line = _nans(len(close))
    # Seed the signal on the first `signal` defined macd values, not on the NaN warm-up
    signal_line[slow - 1:] = _seeded(line[slow - 1:], signal, 2.0 / (signal + 1))
    return line, signal_line, line - signal_line


def bollinger(close: ArrayLike, n: int = 20, k: float = 2.0) -> tuple[Array, Array, Array]:
    """(sma, sma + k*std, sma - k*std) of close, std over the last n values with ddof=0."""
    close, n = _series("close", close), _period("n", n)
    if not k >= 0:
        raise ValueError(f"k must be a number >= 0, got {k!r}")
    middle, width = sma(close, n), _nans(len(close))
    if len(close) >= n:
        width[n - 1:] = k * sliding_window_view(close, n).std(axis=1, ddof=0)
    return middle, middle + width, middle - width


def atr(high: ArrayLike, low: ArrayLike, close: ArrayLike, n: int = 14) -> Array:
    """Wilder's average true range of the bars, seeded with the mean of the first n true ranges."""
    high, low, close = _series("high", high), _series("low", low), _series("close", close)
    n = _period("n", n)
    if not len(high) == len(low) == len(close):
        raise ValueError(f"high, low and close must have equal lengths, got {len(high)}, {len(low)}, {len(close)}")
    prev_close = close[:-1]
    true_range = high - low
    # A gap since the previous close widens the range: the first bar has no previous close
    true_range[1:] = np.maximum.reduce([true_range[1:], np.abs(high[1:] - prev_close), np.abs(low[1:] - prev_close)])
    return _seeded(true_range, n, 1.0 / n)


def rolling_volatility(close: ArrayLike, n: int = 20, periods_per_year: float = 252) -> Array:
    """Std (ddof=1) of the last n log returns of close times sqrt(periods_per_year); NaN for the first n."""
    # ddof=1 needs at least two returns
    close, n = _series("close", close), _period("n", n, minimum=2)
    if not periods_per_year > 0:
        raise ValueError(f"periods_per_year must be > 0, got {periods_per_year!r}")
    if np.any(close <= 0):
        raise ValueError("close must be positive for log returns")
    out = _nans(len(close))
    if len(close) > n:
        returns = np.diff(np.log(close))
        out[n:] = sliding_window_view(returns, n).std(axis=1, ddof=1) * np.sqrt(periods_per_year)
    return out
