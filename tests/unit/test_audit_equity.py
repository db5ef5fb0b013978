"""Audit's equity curve: folded in event time from bars and fills, and downsampled for the dashboard."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from contracts.events import BarReceived, OrderFilled
from services.audit.logic import Logged, curve_report, downsample, equity, equity_curve, in_event_time

DAY0 = datetime(2004, 8, 19, tzinfo=timezone.utc)


def day(n: int) -> datetime:
    return DAY0 + timedelta(days=n)


def bar(n: int, close: float, symbol: str = "GOOG") -> Logged:
    return day(n), 1, BarReceived(symbol=symbol, ts=day(n), open=close, high=close, low=close, close=close)


def fill(n: int, side: str, quantity: float, price: float, commission: float = 0.0) -> Logged:
    return day(n), 0, OrderFilled(symbol="GOOG", ts=day(n), order_id=f"o-{n}", side=side, quantity=quantity,
                                  price=price, commission=commission)


def test_bars_and_fills_give_the_equity_at_each_bar_time_whatever_the_arrival_order():
    events = [bar(0, 100), bar(1, 110), fill(1, "buy", 10, 110, 1.0), bar(2, 120), bar(2, 50, "MSFT"),
              bar(3, 90), fill(4, "sell", 10, 95, 1.0), bar(4, 95)]
    expected = [
        (day(0), 10_000),
        (day(1), 9_999),     # bought 10 @ 110 (commission 1), marked at 110
        (day(2), 10_099),    # 8,899 cash + 10 x 120; MSFT's bar at the same time is one point, not two
        (day(3), 9_799),     # + 10 x 90
        (day(4), 9_848),     # sold 10 @ 95 (commission 1): flat, all cash
    ]
    assert equity_curve(10_000, events) == expected
    arrived = [events[i] for i in (0, 1, 4, 3, 2, 5, 7, 6)]   # each fill after its bar, MSFT before GOOG
    assert equity_curve(10_000, arrived) == expected
    assert equity_curve(10_000, events)[-1][1] == equity(in_event_time(10_000, events))


def test_an_empty_history_is_an_empty_curve():
    assert equity_curve(10_000, []) == []
    assert downsample([], 500) == []
    assert curve_report([], 500) == {"points": [], "total": 0, "limit": 500}


def test_a_short_curve_is_kept_whole():
    curve = [(day(n), 100.0 + n) for n in range(10)]
    assert downsample(curve, 10) == curve
    assert downsample(curve, 500) == curve


@pytest.mark.parametrize("limit", [4, 5, 7, 100, 500, 999])
@pytest.mark.parametrize("length", [11, 2_148, 20_000])
def test_downsampling_keeps_the_first_and_last_and_stays_within_the_limit(length, limit):
    curve = [(day(n), 10_000 + (n % 37) * 10 - (n % 11) * 25.0) for n in range(length)]
    out = downsample(curve, limit)
    assert len(out) <= limit
    assert out[0] == curve[0] and out[-1] == curve[-1]
    assert out == sorted(out) and len(set(out)) == len(out)   # in time order, each point once
    assert set(out) <= set(curve)


def test_downsampling_keeps_a_drawdown_trough_and_its_peak():
    curve = [(day(n), 10_000.0) for n in range(2_000)]
    curve[700] = (day(700), 14_000.0)   # a one-day peak
    curve[701] = (day(701), 6_000.0)    # and the trough straight after
    out = downsample(curve, 100)
    assert (day(700), 14_000.0) in out and (day(701), 6_000.0) in out
    assert min(v for _, v in out) == 6_000 and max(v for _, v in out) == 14_000


def test_downsampling_buckets_event_time_not_point_counts():
    # 1,000 points on day 0..999, then 1,000 more in the last day: the dense day gets no more than its share
    curve = [(day(n), float(n)) for n in range(1_000)]
    curve += [(day(999) + timedelta(seconds=s + 1), 2_000.0 + s) for s in range(1_000)]
    out = downsample(curve, 100)
    assert sum(1 for ts, _ in out if ts > day(999)) <= 3


def test_a_limit_below_four_is_refused():
    with pytest.raises(ValueError, match="at least 4"):
        downsample([(day(0), 1.0)], 3)


def test_the_report_is_iso_times_and_rounded_equity():
    report = curve_report([(day(0), 10_000.0), (day(1), 10_000.123456789)], 500)
    assert report == {"points": [["2004-08-19T00:00:00+00:00", 10_000.0], ["2004-08-20T00:00:00+00:00", 10_000.123457]],
                      "total": 2, "limit": 500}
