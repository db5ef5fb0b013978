"""strategy.indicators on hand-checked series, the bundled GOOG closes, warm-up lengths and bad parameters."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from services.data.datasets import builtin_path
from services.data.sources import read_csv
from services.strategy.indicators import atr, bollinger, ema, macd, rolling_volatility, rsi, sma

NAN = np.nan
RANDOM = 100 * np.exp(np.cumsum(np.random.default_rng(7).normal(0, 0.01, 60)))


@pytest.fixture(scope="module")
def goog() -> np.ndarray:
    return np.array([bar.close for bar in read_csv(builtin_path("GOOG"), "GOOG")])


def leading_nans(x: np.ndarray) -> int:
    """How many values come before the first defined one; asserts none are missing after it."""
    defined = np.flatnonzero(~np.isnan(x))
    assert len(defined) and not np.isnan(x[defined[0]:]).any()
    return int(defined[0])


def test_sma_of_one_to_ten():
    np.testing.assert_allclose(sma(np.arange(1.0, 11.0), 3), [NAN, NAN, 2, 3, 4, 5, 6, 7, 8, 9])


def test_ema_by_hand():
    # n=3, alpha=2/4=0.5; seed at index 2 = (2+4+6)/3 = 4; then 4+.5*(8-4) = 6, 6+.5*(12-6) = 9, 9+.5*(4-9) = 6.5
    np.testing.assert_allclose(ema([2.0, 4, 6, 8, 12, 4], 3), [NAN, NAN, 4, 6, 9, 6.5])


# StockCharts' Wilder RSI example. The figures quoted with it (70.53, 66.32, 66.55, 69.41, 66.36, 57.97) come
# from its spreadsheet's 4-decimal closes (44.3389, ...); the 2-decimal closes printed in the table give
# 70.46, 66.25, 66.48, 69.35, 66.29, 57.92 instead, checked by an independent computation. Both are tested.
# First value by hand on the 2-decimal closes: the first 14 changes gain 3.34 and lose 1.40 in total,
# so avg gain 0.238571, avg loss 0.1, RS 2.385714, RSI = 100 - 100/3.385714 = 70.46.
WILDER_2DP = [44.34, 44.09, 44.15, 43.61, 44.33, 44.83, 45.10, 45.42, 45.84, 46.08,
              45.89, 46.03, 45.61, 46.28, 46.28, 46.00, 46.03, 46.41, 46.22, 45.64]
WILDER_4DP = [44.3389, 44.0902, 44.1497, 43.6124, 44.3278, 44.8264, 45.0955, 45.4245, 45.8433, 46.0826,
              45.8931, 46.0328, 45.6140, 46.2820, 46.2820, 46.0028, 46.0328, 46.4116, 46.2222, 45.6439]


@pytest.mark.parametrize("closes, expected", [
    pytest.param(WILDER_2DP, [70.46, 66.25, 66.48, 69.35, 66.29, 57.92], id="table-closes-2dp"),
    pytest.param(WILDER_4DP, [70.53, 66.32, 66.55, 69.41, 66.36, 57.97], id="spreadsheet-closes-4dp-published"),
])
def test_rsi_wilder_example(closes, expected):
    out = rsi(closes, 14)
    assert np.isnan(out[:14]).all()
    np.testing.assert_allclose(out[14:], expected, atol=0.01)


@pytest.mark.parametrize("closes, expected", [
    pytest.param(np.arange(1.0, 21.0), 100.0, id="all-gains"),
    pytest.param(np.full(20, 5.0), 50.0, id="flat"),
    pytest.param(np.arange(20.0, 0.0, -1), 0.0, id="all-losses"),
])
def test_rsi_edge_cases(closes, expected):
    np.testing.assert_array_equal(rsi(closes, 5)[5:], expected)


def test_bollinger_of_a_constant_has_zero_width():
    middle, upper, lower = bollinger(np.full(30, 7.0), 20)
    np.testing.assert_array_equal(middle[19:], 7.0)
    np.testing.assert_array_equal(upper[19:], lower[19:])


def test_bollinger_by_hand_and_against_numpy():
    # 2,4,4,4,5,5,7,9: mean 5, squared deviations 9+1+1+1+0+0+4+16 = 32, population std sqrt(32/8) = 2
    middle, upper, lower = bollinger([2.0, 4, 4, 4, 5, 5, 7, 9], 8, k=2.0)
    assert (middle[-1], upper[-1], lower[-1]) == pytest.approx((5, 9, 1))
    x = np.array([3.0, 1, 4, 1, 5, 9, 2, 6])
    middle, upper, _ = bollinger(x, 4, k=1.5)
    for i in range(3, len(x)):
        assert upper[i] - middle[i] == pytest.approx(1.5 * np.std(x[i - 3:i + 1]))


def test_atr_by_hand():
    # bar  high  low  close  true range
    # 0    10    8    9      10-8 = 2 (no previous close)
    # 1    12    11   11.5   gap up: |12-9| = 3 beats 12-11 = 1
    # 2    12    10   10.5   12-10 = 2 beats |12-11.5| = .5 and |10-11.5| = 1.5
    # 3    10    9    9.5    gap down: |9-10.5| = 1.5 beats 10-9 = 1
    # n=2: seed (2+3)/2 = 2.5 at index 1, then (2.5*1 + 2)/2 = 2.25, (2.25*1 + 1.5)/2 = 1.875
    out = atr([10.0, 12, 12, 10], [8.0, 11, 10, 9], [9.0, 11.5, 10.5, 9.5], 2)
    np.testing.assert_allclose(out, [NAN, 2.5, 2.25, 1.875])


def test_volatility_of_constant_growth_is_zero():
    out = rolling_volatility(100 * 1.01 ** np.arange(30), 10)
    np.testing.assert_allclose(out[10:], 0.0, atol=1e-12)


def test_volatility_by_hand():
    # log returns +1, -1, +1: two of them have mean 0 and sample std sqrt((1+1)/1); one period a year
    out = rolling_volatility(np.exp([0.0, 1, 0, 1]), 2, periods_per_year=1)
    np.testing.assert_allclose(out, [NAN, NAN, np.sqrt(2), np.sqrt(2)])


def test_macd_of_a_constant_is_zero():
    line, signal, hist = macd(np.full(50, 42.0))
    for series in (line, signal, hist):
        np.testing.assert_allclose(series[~np.isnan(series)], 0.0, atol=1e-12)


@pytest.mark.parametrize("compute, warmups", [
    pytest.param(lambda x: [sma(x, 5)], [4], id="sma"),
    pytest.param(lambda x: [ema(x, 5)], [4], id="ema"),
    pytest.param(lambda x: [rsi(x, 14)], [14], id="rsi"),
    pytest.param(lambda x: macd(x, 12, 26, 9), [25, 33, 33], id="macd"),
    pytest.param(lambda x: bollinger(x, 20), [19, 19, 19], id="bollinger"),
    pytest.param(lambda x: [atr(x * 1.01, x * 0.99, x, 14)], [13], id="atr"),
    pytest.param(lambda x: [rolling_volatility(x, 20)], [20], id="rolling-volatility"),
])
def test_nan_warm_up_lengths(compute, warmups):
    outputs = compute(RANDOM)
    assert [len(out) for out in outputs] == [len(RANDOM)] * len(warmups)
    assert [leading_nans(out) for out in outputs] == warmups


@pytest.mark.parametrize("compute", [
    pytest.param(lambda x: sma(x, 5), id="sma"),
    pytest.param(lambda x: ema(x, 5), id="ema"),
    pytest.param(lambda x: rsi(x, 5), id="rsi"),
    pytest.param(lambda x: rolling_volatility(x, 5), id="rolling-volatility"),
    pytest.param(lambda x: macd(x, 2, 5, 3)[1], id="macd-signal"),
])
def test_series_shorter_than_the_window_is_all_nan(compute):
    out = compute(np.array([1.0, 2, 3]))
    assert len(out) == 3 and np.isnan(out).all()


@pytest.mark.parametrize("n", [1, 20, 200])
def test_sma_matches_pandas_on_goog(goog, n):
    expected = pd.Series(goog).rolling(n).mean().to_numpy()
    np.testing.assert_allclose(sma(goog, n), expected, rtol=1e-9, equal_nan=True)


@pytest.mark.parametrize("n", [1, 12, 26])
def test_ema_matches_pandas_ewm_after_seeding_on_goog(goog, n):
    # ewm(adjust=False) starts from its first input, so feed it the sma seed followed by the rest
    seeded = pd.Series(np.r_[goog[:n].mean(), goog[n:]]).ewm(span=n, adjust=False).mean().to_numpy()
    out = ema(goog, n)
    assert np.isnan(out[:n - 1]).all()
    np.testing.assert_allclose(out[n - 1:], seeded, rtol=1e-9)


BARS = np.array([1.0, 2, 3, 4, 5])


@pytest.mark.parametrize("call, message", [
    pytest.param(lambda: sma(BARS, 0), "n must be an int >= 1", id="zero-period"),
    pytest.param(lambda: ema(BARS, -3), "n must be an int >= 1", id="negative-period"),
    pytest.param(lambda: rsi(BARS, 2.5), "n must be an int", id="float-period"),
    pytest.param(lambda: sma(BARS, True), "n must be an int", id="bool-period"),
    pytest.param(lambda: sma(BARS.reshape(1, 5), 2), "x must be a 1-D array", id="2-d-input"),
    pytest.param(lambda: macd(BARS, 26, 12), r"fast \(26\) must be shorter than slow \(12\)", id="fast-not-faster"),
    pytest.param(lambda: macd(BARS, 3, 5, 0), "signal must be an int >= 1", id="zero-signal"),
    pytest.param(lambda: bollinger(BARS, 2, k=-1.0), "k must be a number >= 0", id="negative-k"),
    pytest.param(lambda: atr(BARS, BARS[:4], BARS, 2), "equal lengths", id="atr-unequal-lengths"),
    pytest.param(lambda: rolling_volatility(BARS, 1), "n must be an int >= 2", id="volatility-one-return"),
    pytest.param(lambda: rolling_volatility(BARS, 2, 0), "periods_per_year must be > 0", id="zero-periods"),
    pytest.param(lambda: rolling_volatility(BARS - 1, 2), "close must be positive", id="zero-close"),
])
def test_invalid_parameters_raise_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
