"""rsi_reversion and macd_cross fire exactly where the full-history indicators cross; selection by name."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import msgspec
import numpy as np
import pytest

from contracts.errors import ConfigError
from contracts.events import BarReceived
from services.data.datasets import builtin_path
from services.data.sources import read_csv
from services.strategy.indicators import macd, rolling_volatility, rsi
from services.strategy.logic import Window
from services.strategy.service import build
from services.strategy.strategies import MacdCrossParams, RsiReversionParams, macd_cross, rsi_reversion

GOOG = read_csv(builtin_path("GOOG"), "GOOG")
CLOSES = np.array([b.close for b in GOOG])


def run(step, params) -> dict[int, str]:
    window, fired = Window(), {}
    for i, bar in enumerate(GOOG):
        window, signals = step(window, bar, params)
        for s in signals:
            fired[i] = s.side
    return fired


def level_crossings(values: np.ndarray, lower: float, upper: float) -> dict[int, str]:
    """Where `values` crosses down through `lower` (buy) or up through `upper` (sell)."""
    out = {}
    for i in range(1, len(values)):
        a, b = values[i - 1], values[i]
        if a >= lower > b:
            out[i] = "buy"
        elif a <= upper < b:
            out[i] = "sell"
    return out


def test_rsi_reversion_fires_where_the_full_history_rsi_crosses_its_levels():
    params = RsiReversionParams(n=14, lower=30, upper=70)
    expected = level_crossings(rsi(CLOSES, 14), 30.0, 70.0)
    assert len(expected) > 10  # GOOG 2004-2013 crosses both levels many times
    assert run(rsi_reversion, params) == expected


def test_macd_cross_fires_where_the_full_history_histogram_changes_sign():
    _, _, hist = macd(CLOSES, 12, 26, 9)
    expected = {i: ("buy" if hist[i] > 0 else "sell") for i in range(1, len(hist))
                if not np.isnan(hist[i - 1]) and hist[i - 1] * hist[i] < 0}
    assert len(expected) > 50
    assert run(macd_cross, MacdCrossParams()) == expected


def test_a_signal_carries_its_strategy_parameters_and_features():
    window, last = Window(), []
    for bar in GOOG:
        window, signals = rsi_reversion(window, bar, RsiReversionParams())
        last = signals or last
    [signal] = last
    assert signal.strategy == "rsi_reversion"
    assert signal.params == {"n": 14.0, "lower": 30.0, "upper": 70.0, "lookback": 10.0}
    assert set(signal.features) == {"rsi", "volatility"} and 0 < signal.strength <= 1
    closes = np.array([b.close for b in GOOG if b.ts <= signal.ts])
    assert signal.features["volatility"] == pytest.approx(rolling_volatility(closes, 20)[-1], rel=1e-12)


@pytest.mark.parametrize("params, message", [
    pytest.param({"lower": 70, "upper": 30}, "lower (70.0) must be below upper (30.0)", id="rsi-levels-reversed"),
    pytest.param({"lower": 0}, "Expected `float` > 0", id="rsi-level-zero"),
    pytest.param({"n": 0}, "Expected `int` >= 1", id="rsi-period-zero"),
])
def test_invalid_rsi_parameters_are_refused(params, message):
    with pytest.raises(msgspec.ValidationError, match=re.escape(message)):
        msgspec.convert(params, RsiReversionParams)


def test_strategy_is_chosen_by_name_and_unknown_names_are_refused():
    agent = build({"TRADEFLOW_STRATEGY_NAME": "macd_cross", "TRADEFLOW_STRATEGY_FAST": "5"})
    assert agent.params == MacdCrossParams(fast=5)
    with pytest.raises(ConfigError, match="unknown strategy 'turtle'; choose one of sma_cross, rsi_reversion"):
        build({"TRADEFLOW_STRATEGY_NAME": "turtle"})
    with pytest.raises(ConfigError, match="fast .* must be shorter than slow"):
        build({"TRADEFLOW_STRATEGY_NAME": "macd_cross", "TRADEFLOW_STRATEGY_FAST": "40"})


def test_out_of_order_bars_are_rejected_by_every_strategy():
    from contracts.errors import Rejected

    t0 = datetime(2024, 1, 2, tzinfo=timezone.utc)
    bar = BarReceived(symbol="X", ts=t0, open=1, high=1, low=1, close=1)
    for step, params in ((rsi_reversion, RsiReversionParams()), (macd_cross, MacdCrossParams())):
        window, _ = step(Window(), bar, params)
        with pytest.raises(Rejected):
            step(window, msgspec.structs.replace(bar, ts=t0 - timedelta(days=1)), params)
