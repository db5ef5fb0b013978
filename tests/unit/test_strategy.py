"""strategy.logic: the SMA crossover on hand-made close series, bar ordering, and its parameters."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import msgspec
import pytest

from contracts.codec import Incoming
from contracts.envelope import Envelope
from contracts.errors import Rejected
from contracts.events import BarReceived
from services.strategy.logic import SmaCrossParams, Window, sma_cross
from services.strategy.service import StrategyAgent

T0 = datetime(2024, 1, 2, tzinfo=timezone.utc)
FAST_2_SLOW_3 = SmaCrossParams(fast=2, slow=3)


def bar(i: int, close: float, symbol: str = "GOOG") -> BarReceived:
    return BarReceived(symbol=symbol, ts=T0 + timedelta(days=i), open=close, high=close, low=close, close=close)


def incoming(b: BarReceived) -> Incoming:
    env = Envelope(id=f"{b.symbol}{b.ts}", type="tradeflow.market_bar.v1", source="t", time=b.ts,
                   subject=f"data_ready.{b.symbol}", trace_id="0" * 31 + "1")
    return Incoming(env, b)


def run(closes: list[float], params: SmaCrossParams = FAST_2_SLOW_3) -> dict[int, object]:
    """Signals by 1-based bar number."""
    window, out = Window(), {}
    for n, close in enumerate(closes, start=1):
        window, signals = sma_cross(window, bar(n, close), params)
        assert len(signals) <= 1
        if signals:
            out[n] = signals[0]
    return out


# Bar:    1   2   3   4   5   6   7   8
# Close: 10   9   8   7  12  13   8   5
# fast = SMA2, slow = SMA3, "prev" = the same averages one bar earlier; a cross needs prev and now on opposite sides.
# bar 4: fast 7.5  (prev 8.5)   slow 8.0   (prev 9.0)    below, below   -> none
# bar 5: fast 9.5  (prev 7.5)   slow 9.0   (prev 8.0)    below -> above -> BUY  at 12
# bar 6: fast 12.5 (prev 9.5)   slow 10.67 (prev 9.0)    above, above   -> none
# bar 7: fast 10.5 (prev 12.5)  slow 11.0  (prev 10.67)  above -> below -> SELL at 8
# bar 8: fast 6.5  (prev 10.5)  slow 8.67  (prev 11.0)   below, below   -> none
CLOSES = [10, 9, 8, 7, 12, 13, 8, 5]


def test_buy_and_sell_exactly_where_the_averages_cross():
    signals = run(CLOSES)
    assert sorted(signals) == [5, 7]
    buy, sell = signals[5], signals[7]
    assert (buy.side, buy.price, buy.ts) == ("buy", 12.0, T0 + timedelta(days=5))
    assert (sell.side, sell.price, sell.ts) == ("sell", 8.0, T0 + timedelta(days=7))
    assert buy.features == {"sma_fast": 9.5, "sma_slow": 9.0}
    assert sell.features == {"sma_fast": 10.5, "sma_slow": pytest.approx(11.0)}
    assert buy.params == {"fast": 2, "slow": 3} and buy.strategy == "sma_cross"


def test_first_possible_signal_is_on_bar_slow_plus_one():
    # CLOSES without its first bar: the same cross now happens on bar 4 = slow + 1, the first bar
    # with a previous slow SMA to compare against; bars 1-3 only fill the window
    signals = run(CLOSES[1:])
    assert sorted(signals) == [4, 6]
    assert signals[4].side == "buy"
    window = Window()
    for n, close in enumerate([9, 8, 7], start=1):
        window, out = sma_cross(window, bar(n, close), FAST_2_SLOW_3)
        assert out == []
    assert window.closes == (9.0, 8.0, 7.0)


@pytest.mark.parametrize(("closes", "expected"), [
    # bar 4 (1,2,3,4): fast 3.5 (prev 2.5), slow 3.0 (prev 2.0): fast stays above slow, on every later bar too
    pytest.param([1, 2, 3, 4, 5, 6], {}, id="steady-rise-never-crosses"),
    # bar 5 (10,10,10,11): prev fast 10 == prev slow 10: touching is not crossing (strict, as backtesting's crossover)
    pytest.param([10, 10, 10, 10, 11], {}, id="from-equal-is-not-a-cross"),
    pytest.param([10, 10, 10, 10, 9], {}, id="from-equal-down-is-not-a-cross"),
])
def test_no_signal_without_a_strict_cross(closes, expected):
    assert run(closes) == expected


def test_strength_is_the_gap_over_one_percent_capped_at_one():
    # bar 5 (99, 98, 97, 100.2): fast 98.6 (prev 97.5), slow 98.4 (prev 98.0) -> buy
    # gap = (98.6 - 98.4) / 98.4 = 0.0020325..., strength = gap / 0.01 = 0.20325...
    signals = run([100, 99, 98, 97, 100.2])
    assert signals[5].side == "buy"
    assert signals[5].strength == pytest.approx(0.2 / 98.4 / 0.01)
    assert run(CLOSES)[5].strength == 1.0  # gap 0.5 / 9 = 5.6 % -> capped


def test_window_keeps_only_what_the_slow_average_and_the_volatility_need():
    window, short_vol = Window(), SmaCrossParams(fast=2, slow=3, vol_window=2)
    for n, close in enumerate(CLOSES, start=1):
        window, _ = sma_cross(window, bar(n, close), short_vol)
    assert window.closes == (12.0, 13.0, 8.0, 5.0)   # slow + 1 = 4 beats vol_window + 1 = 3
    assert window.last_ts == T0 + timedelta(days=8)
    window = Window()
    for n, close in enumerate(CLOSES, start=1):
        window, _ = sma_cross(window, bar(n, close), SmaCrossParams(fast=2, slow=3, vol_window=5))
    assert window.closes == (8.0, 7.0, 12.0, 13.0, 8.0, 5.0)   # vol_window + 1 = 6


def test_a_signal_carries_the_rolling_volatility_once_the_window_allows():
    params = SmaCrossParams(fast=2, slow=3, vol_window=3, periods_per_year=4)
    signals = run(CLOSES, params)
    # buy on bar 5: log returns of 9 -> 8 -> 7 -> 12 (3 returns, ddof=1), x sqrt(4)
    returns = [math.log(8 / 9), math.log(7 / 8), math.log(12 / 7)]
    mean = sum(returns) / 3
    expected = math.sqrt(sum((r - mean) ** 2 for r in returns) / 2) * 2
    assert signals[5].features["volatility"] == pytest.approx(expected, rel=1e-12)
    assert signals[5].params == {"fast": 2.0, "slow": 3.0}   # the common settings are not strategy parameters
    # with a longer window than bars so far there is no volatility yet, rather than a guess
    assert "volatility" not in run(CLOSES, SmaCrossParams(fast=2, slow=3, vol_window=5))[5].features


def test_a_bar_after_a_longer_gap_than_allowed_is_rejected_and_the_window_restarts():
    params = SmaCrossParams(fast=2, slow=3, max_gap_seconds=3 * 86400)
    agent = StrategyAgent(sma_cross, params)
    for n in (1, 2, 3, 6):   # 3 days from bar 3 to bar 6: allowed
        agent.handle(incoming(bar(n, 10.0 + n)), T0)
    assert len(agent.windows["GOOG"].closes) == 4
    with pytest.raises(Rejected, match=r"comes 345600s after the last bar of GOOG .*MAX_GAP_SECONDS=259200") as err:
        agent.handle(incoming(bar(10, 20.0)), T0)
    assert err.value.reason == "gap"
    assert agent.windows["GOOG"] == Window((), T0 + timedelta(days=10))   # warm-up starts after the hole
    agent.handle(incoming(bar(11, 21.0)), T0)
    assert agent.windows["GOOG"].closes == (21.0,)
    with pytest.raises(Rejected, match="out of order"):   # the rejected bar still orders what follows
        agent.handle(incoming(bar(9, 21.0)), T0)


@pytest.mark.parametrize("day", [pytest.param(3, id="duplicate-timestamp"), pytest.param(2, id="out-of-order")])
def test_bar_not_after_the_last_one_is_rejected(day):
    window = Window()
    for n in (1, 2, 3):
        window, _ = sma_cross(window, bar(n, 10.0), FAST_2_SLOW_3)
    with pytest.raises(Rejected, match="GOOG .*out of order or duplicate"):
        sma_cross(window, bar(day, 11.0), FAST_2_SLOW_3)


def test_each_symbol_has_its_own_window():
    agent = StrategyAgent(sma_cross, FAST_2_SLOW_3)

    def feed(b: BarReceived) -> list:
        return agent.handle(incoming(b), b.ts)

    out = {}
    for n, close in enumerate(CLOSES, start=1):
        feed(bar(n, 50.0, "MSFT"))  # same times for another symbol: not duplicates
        if signals := feed(bar(n, close)):
            out[n] = signals[0].side
    assert out == {5: "buy", 7: "sell"}


@pytest.mark.parametrize(("fast", "slow"), [pytest.param(5, 5, id="equal"), pytest.param(6, 5, id="fast-slower")])
def test_fast_must_be_shorter_than_slow(fast, slow):
    with pytest.raises(ValueError, match="must be shorter"):
        SmaCrossParams(fast=fast, slow=slow)
    with pytest.raises(msgspec.ValidationError, match="must be shorter"):
        msgspec.convert({"fast": fast, "slow": slow}, SmaCrossParams)


@pytest.mark.parametrize("raw", [pytest.param({"fast": 0, "slow": 5}, id="zero-period"),
                                 pytest.param({"fast": 5, "slow": 10_001}, id="too-long")])
def test_periods_out_of_range_are_invalid(raw):
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(raw, SmaCrossParams)
