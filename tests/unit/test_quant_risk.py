"""quant.validate (minimum strength) and risk.on_signal / on_fill (target positions and limits)."""

from __future__ import annotations

import random
import re
from datetime import datetime, timedelta, timezone

import msgspec
import pytest

from contracts.events import (BarReceived, OrderApproved, OrderFilled, SignalGenerated, SignalRejected,
                             SignalValidated)
from services.quant.logic import QuantParams, measure, regime_of, validate
from services.risk.logic import (Book, Holding, RiskParams, committed_equity, equity, new_book, on_bar, on_fill,
                                 on_signal, unrealized)

TS = datetime(2024, 1, 2, 14, 30, tzinfo=timezone.utc)


def generated(strength: float, side: str = "buy") -> SignalGenerated:
    return SignalGenerated(symbol="GOOG", ts=TS, side=side, strength=strength, price=100.0, strategy="sma_cross",
                           params={"fast": 2.0}, features={"sma_fast": 1.0})


def signal(side: str, price: float = 100.0, symbol: str = "GOOG") -> SignalValidated:
    return SignalValidated(symbol=symbol, ts=TS, side=side, strength=0.5, price=price, strategy="sma_cross")


# ---- quant ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("strength", [pytest.param(0.31, id="above"), pytest.param(0.3, id="exactly-at")])
def test_strong_enough_signal_is_validated(strength):
    _, out = validate(generated(strength, "sell"), QuantParams(min_strength=0.3))
    assert out == SignalValidated(symbol="GOOG", ts=TS, side="sell", strength=strength, price=100.0,
                                  strategy="sma_cross")


def test_weak_signal_is_rejected_naming_the_rule():
    _, out = validate(generated(0.29), QuantParams(min_strength=0.3))
    assert isinstance(out, SignalRejected)
    assert (out.stage, out.rule, out.side, out.strategy, out.symbol) == ("quant", "min_strength", "buy", "sma_cross",
                                                                         "GOOG")
    assert out.reason == "strength 0.2900 is below the minimum 0.3000"


def test_a_second_signal_on_the_same_side_is_a_duplicate():
    params = QuantParams()
    last, first = validate(generated(0.5, "buy"), params)
    assert isinstance(first, SignalValidated) and last.side == "buy"
    kept, again = validate(generated(0.9, "buy"), params, last)
    assert (again.rule, kept) == ("duplicate_side", last)
    _, flipped = validate(generated(0.9, "sell"), params, last)
    assert isinstance(flipped, SignalValidated)
    _, allowed = validate(generated(0.9, "buy"), QuantParams(suppress_duplicates=False), last)
    assert isinstance(allowed, SignalValidated)


def test_cool_down_counts_bar_time_since_the_last_accepted_signal():
    params = QuantParams(cooldown_seconds=3600)
    last, _ = validate(generated(0.5, "buy"), params)
    soon = msgspec.structs.replace(generated(0.5, "sell"), ts=last.ts + timedelta(minutes=59))
    later = msgspec.structs.replace(soon, ts=last.ts + timedelta(minutes=60))
    _, early = validate(soon, params, last)
    assert early.rule == "cooldown" and "3540s since the last accepted signal" in early.reason
    _, ok = validate(later, params, last)
    assert isinstance(ok, SignalValidated)


def with_vol(volatility: float | None, side: str = "buy") -> SignalGenerated:
    features = {} if volatility is None else {"volatility": volatility}
    return msgspec.structs.replace(generated(0.5, side), features=features)


@pytest.mark.parametrize(("volatility", "regime"), [
    pytest.param(0.0, "low", id="zero"), pytest.param(0.1499, "low", id="just-below-low"),
    pytest.param(0.15, "normal", id="at-low-bound"), pytest.param(0.4499, "normal", id="just-below-high"),
    pytest.param(0.45, "high", id="at-high-bound"), pytest.param(3.0, "high", id="crash"),
])
def test_volatility_regime_bounds(volatility, regime):
    params = QuantParams(regime_low=0.15, regime_high=0.45)
    assert regime_of(volatility, params) == regime
    _, out = validate(with_vol(volatility), params)
    assert (out.regime, out.volatility) == (regime, volatility)


def test_a_blocked_regime_rejects_naming_the_volatility_and_the_bounds():
    params = QuantParams(block_regimes=["high"])
    _, out = validate(with_vol(0.62), params)
    assert (out.rule, out.stage) == ("regime", "quant")
    assert out.reason == "high volatility regime (volatility 0.6200; low < 0.15 <= normal < 0.45 <= high) is blocked"
    last, ok = validate(with_vol(0.3), params)
    assert isinstance(ok, SignalValidated) and ok.regime == "normal" and last.side == "buy"


def test_a_signal_without_volatility_takes_the_cached_regime_or_is_unknown():
    params = QuantParams(block_regimes=["high", "unknown"])
    _, cached = validate(with_vol(None), params, cached_regime="high")
    assert cached.rule == "regime" and "no volatility on the signal" in cached.reason
    _, unknown = validate(with_vol(None), params)
    assert unknown.rule == "regime" and unknown.reason.startswith("unknown volatility regime")
    _, passes = validate(with_vol(None), QuantParams(), cached_regime="low")
    assert (passes.regime, passes.volatility) == ("low", None)
    # a measured volatility wins over the cache
    _, measured = validate(with_vol(0.2), params, cached_regime="high")
    assert measured.regime == "normal"


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_a_nonsense_volatility_counts_as_none(bad):
    assert measure(with_vol(bad), QuantParams(), "low") == (None, "low")
    _, out = validate(with_vol(bad), QuantParams())
    assert (out.volatility, out.regime) == (None, "unknown")


@pytest.mark.parametrize(("settings", "message"), [
    pytest.param({"regime_low": 0.5, "regime_high": 0.2}, "regime_low (0.5) must be below regime_high (0.2)",
                 id="bounds-reversed"),
    pytest.param({"block_regimes": ["extreme"]}, "Invalid enum value 'extreme'",
                 id="unknown-regime"),
    pytest.param({"regime_low": 0}, "Expected `float` > 0", id="zero-bound"),
])
def test_invalid_regime_settings_are_refused(settings, message):
    with pytest.raises(msgspec.ValidationError, match=re.escape(message)):
        msgspec.convert(settings, QuantParams)


def test_min_strength_above_one_is_invalid():
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"min_strength": 1.5}, QuantParams)


# ---- risk ----------------------------------------------------------------------------------------------------------

def decide(book: Book, side: str, price: float = 100.0, **params) -> tuple[Book, object]:
    return on_signal(book, signal(side, price), "order-1", RiskParams(**params))


@pytest.mark.parametrize(("committed", "side", "allow_short", "order_side", "quantity", "target"), [
    pytest.param(0.0, "buy", True, "buy", 10.0, 10.0, id="flat-buy-goes-long"),
    pytest.param(0.0, "sell", True, "sell", 10.0, -10.0, id="flat-sell-goes-short"),
    pytest.param(10.0, "sell", True, "sell", 20.0, -10.0, id="long-sell-reverses-2x"),
    pytest.param(-10.0, "buy", True, "buy", 20.0, 10.0, id="short-buy-reverses-2x"),
    pytest.param(10.0, "sell", False, "sell", 10.0, 0.0, id="long-sell-no-short-goes-flat"),
    pytest.param(4.0, "buy", True, "buy", 6.0, 10.0, id="partly-long-tops-up"),
])
def test_order_moves_the_committed_position_to_the_target(committed, side, allow_short, order_side, quantity, target):
    book = Book(committed={"GOOG": committed})
    book, order = decide(book, side, allow_short=allow_short)
    assert order == OrderApproved(symbol="GOOG", ts=TS, order_id="order-1", side=order_side, quantity=quantity,
                                  price=100.0, strategy="sma_cross")
    assert book.committed == {"GOOG": target}


@pytest.mark.parametrize(("committed", "side", "params", "rule", "reason"), [
    pytest.param(10.0, "buy", {}, "at_target", "position 10 already at target 10", id="long-buy"),
    pytest.param(-10.0, "sell", {}, "at_target", "position -10 already at target -10", id="short-sell"),
    pytest.param(0.0, "sell", {"allow_short": False}, "at_target", "already at target 0", id="flat-sell-no-short"),
    pytest.param(0.0, "buy", {"order_quantity": 150.0}, "max_position",
                 "target position 150 exceeds the limit 100", id="target-over-max-position"),
    # 10 units at 5,001 = 50,010 > 50,000
    pytest.param(0.0, "buy", {"price": 5001.0}, "max_order_notional",
                 "order notional 50010.00 exceeds the limit 50000.00", id="notional-over-limit"),
    # a reversal trades 2x: 20 units at 3,000 = 60,000 > 50,000 although 10 units (30,000) would pass
    pytest.param(10.0, "sell", {"price": 3000.0}, "max_order_notional", "60000.00", id="reversal-notional"),
])
def test_signal_is_rejected_naming_the_limit(committed, side, params, rule, reason):
    book = Book(committed={"GOOG": committed}, positions={"GOOG": Holding(3.0, 100.0)})
    price = params.pop("price", 100.0)
    after, out = decide(book, side, price, **params)
    assert isinstance(out, SignalRejected)
    assert (out.stage, out.rule, out.side, out.strategy) == ("risk", rule, side, "sma_cross")
    assert reason in out.reason
    assert after.committed == book.committed  # a rejection commits nothing


def test_notional_exactly_at_the_limit_is_approved():
    _, out = decide(Book(), "buy", price=5000.0)  # 10 x 5,000 = 50,000
    assert isinstance(out, OrderApproved)


def test_symbols_are_sized_independently():
    book, _ = decide(Book(), "buy")
    book, out = on_signal(book, signal("buy", symbol="MSFT"), "order-2", RiskParams())
    assert (out.symbol, out.quantity, out.order_id) == ("MSFT", 10.0, "order-2")
    assert book.committed == {"GOOG": 10.0, "MSFT": 10.0}


def test_decisions_follow_approved_orders_not_fills():
    # the buy is approved but not yet filled: a second buy is still at target
    book, _ = decide(Book(), "buy")
    _, out = decide(book, "buy")
    assert isinstance(out, SignalRejected) and out.rule == "at_target"


def fill(side: str, quantity: float, symbol: str = "GOOG", price: float = 100.0, commission: float = 0.0,
         ts: datetime = TS) -> OrderFilled:
    return OrderFilled(symbol=symbol, ts=ts, order_id="o", side=side, quantity=quantity, price=price,
                       commission=commission)


def bar(symbol: str, close: float, ts: datetime = TS) -> BarReceived:
    return BarReceived(symbol=symbol, ts=ts, open=close, high=close, low=close, close=close)


def test_fills_build_the_portfolio_beside_the_committed_position():
    params = RiskParams(capital=10_000)
    book = msgspec.structs.replace(new_book(params), committed={"GOOG": -10.0})
    for f in (fill("buy", 10.0, price=100.0, commission=1.0),     # long 10 @ 100
              fill("sell", 15.0, price=110.0, commission=2.0),    # +100 realised, short 5 @ 110
              fill("sell", 5.0, price=120.0),                     # short 10 @ 115
              fill("buy", 2.0, "MSFT", price=50.0)):
        book = on_fill(book, f)
    assert book.positions == {"GOOG": Holding(-10.0, 115.0), "MSFT": Holding(2.0, 50.0)}
    assert book.committed == {"GOOG": -10.0}
    assert (book.realized_pnl, book.commissions) == (100.0, 3.0)
    # cash: 10,000 - 1,000 - 1 + 1,650 - 2 + 600 - 100 = 11,147
    assert book.cash == pytest.approx(11_147.0)
    # marked at the last bar: GOOG 130 (short 10 from 115: -150), MSFT 55 (+10)
    book = on_bar(on_bar(book, bar("GOOG", 130.0), params), bar("MSFT", 55.0), params)
    assert unrealized(book) == pytest.approx(-140.0)
    assert equity(book) == pytest.approx(10_000 + 100 - 3 - 140)


def test_the_committed_book_is_booked_at_reference_prices_whatever_the_fills():
    params = RiskParams(capital=10_000)
    book = new_book(params)
    book, _ = on_signal(book, signal("buy", 100.0), "o-1", params)     # +10 @ 100
    book, _ = on_signal(book, signal("sell", 120.0), "o-2", params)    # -20: +200 realised, short 10 @ 120
    assert (book.committed, book.committed_entry, book.committed_pnl) == ({"GOOG": -10.0}, {"GOOG": 120.0}, 200.0)
    book = on_bar(book, bar("GOOG", 125.0), params)                     # short 10 from 120 at 125: -50
    assert committed_equity(book) == pytest.approx(10_150.0)
    # fills (late, or at other prices) change the filled portfolio, not what risk sizes on
    assert committed_equity(on_fill(book, fill("buy", 10.0, price=90.0))) == committed_equity(book)


def test_gross_exposure_counts_every_symbol_at_its_last_signal_price():
    params = RiskParams(max_gross_exposure=2_500)
    book, first = on_signal(Book(), signal("buy", 100.0, "AAA"), "o-1", params)  # 10 x 100 = 1,000
    assert isinstance(first, OrderApproved)
    book, second = on_signal(book, signal("sell", 140.0, "BBB"), "o-2", params)  # + 10 x 140 = 2,400
    assert isinstance(second, OrderApproved)
    kept, third = on_signal(book, signal("buy", 20.0, "CCC"), "o-3", params)      # + 10 x 20 = 2,600
    assert (third.rule, kept.committed) == ("max_gross_exposure", book.committed)
    assert "gross exposure 2600.00 would exceed the limit 2500.00" in third.reason


@pytest.mark.parametrize(("ts", "allowed"), [
    pytest.param("2024-01-02T14:30:00+00:00", True, id="tuesday-0930-new-york"),
    pytest.param("2024-01-02T20:59:00+00:00", True, id="tuesday-1559"),
    pytest.param("2024-01-02T21:00:00+00:00", False, id="tuesday-1600-closed"),
    pytest.param("2024-01-02T14:29:00+00:00", False, id="tuesday-0929-not-yet"),
    pytest.param("2024-01-06T15:00:00+00:00", False, id="saturday"),
    pytest.param("2024-07-02T13:30:00+00:00", True, id="summer-time-0930"),
])
def test_orders_only_in_session(ts, allowed):
    params = RiskParams(session="09:30-16:00", session_timezone="America/New_York")
    sig = msgspec.structs.replace(signal("buy"), ts=datetime.fromisoformat(ts))
    _, decision = on_signal(Book(), sig, "o-1", params)
    assert isinstance(decision, OrderApproved) is allowed
    if not allowed:
        assert decision.rule == "session"


@pytest.mark.parametrize(("params", "message"), [
    pytest.param({"session": "16:00-09:30"}, "ends before it starts", id="reversed-session"),
    pytest.param({"session": "9am-4pm"}, "is not HH:MM-HH:MM", id="malformed-session"),
    pytest.param({"session_timezone": "Mars/Olympus"}, "unknown session_timezone", id="unknown-zone"),
    pytest.param({"sizing": "equity_fraction", "allow_short": False}, "needs allow_short", id="all-in-long-only"),
])
def test_invalid_risk_settings_are_refused(params, message):
    with pytest.raises(msgspec.ValidationError, match=message):
        msgspec.convert(params, RiskParams)


# ---- sizing on equity and volatility ------------------------------------------------------------------------------

def test_equity_fraction_sizes_on_the_committed_equity():
    params = RiskParams(sizing="equity_fraction", equity_fraction=0.5, capital=10_000, max_position=1e9,
                        max_order_notional=1e9)
    book, first = on_signal(new_book(params), signal("buy", 100.0), "o-1", params)
    assert (first.quantity, first.equity_fraction) == (50.0, 0.5)    # 10,000 x 0.5 / 100
    book = on_bar(book, bar("GOOG", 60.0), params)                     # long 50 from 100 at 60: -2,000
    _, second = on_signal(book, signal("sell", 60.0), "o-2", params)
    assert second.quantity == 50.0 + 66.0                              # flatten 50, then 8,000 x 0.5 / 60 = 66


@pytest.mark.parametrize(("volatility", "price", "units"), [
    # floor(100,000 x 0.10 / (0.25 x 100)) = 400: 400 units x 100 x 25 % a year = 10,000 = 10 % of equity
    pytest.param(0.25, 100.0, 400.0, id="quarter-vol"),
    pytest.param(0.50, 100.0, 200.0, id="twice-the-vol-half-the-size"),
    pytest.param(0.25, 300.0, 133.0, id="floored"),
])
def test_volatility_target_sizing(volatility, price, units):
    params = RiskParams(sizing="volatility_target", target_volatility=0.10, capital=100_000, max_position=1e6,
                        max_order_notional=1e9)
    sig = msgspec.structs.replace(signal("sell", price), volatility=volatility)
    _, order = on_signal(new_book(params), sig, "o-1", params)
    assert (order.side, order.quantity, order.equity_fraction) == ("sell", units, 0.0)


def test_volatility_target_without_a_volatility_is_rejected():
    params = RiskParams(sizing="volatility_target")
    _, out = on_signal(new_book(params), signal("buy"), "o-1", params)
    assert out.rule == "no_volatility" and "needs the signal's volatility, got None" in out.reason


# ---- daily loss -----------------------------------------------------------------------------------------------------

DAY1 = datetime(2024, 1, 2, 15, 0, tzinfo=timezone.utc)   # 10:00 New York
DAY2 = DAY1 + timedelta(days=1)


def losing_book(params: RiskParams) -> Book:
    """Long 10 GOOG from 100, a new day starts at 100, then GOOG falls to 80: the day's loss is 200."""
    book, _ = on_signal(new_book(params), at("buy", DAY1, 100.0), "o-0", params)
    book = on_bar(book, bar("GOOG", 100.0, DAY2), params)
    return on_bar(book, bar("GOOG", 80.0, DAY2 + timedelta(hours=1)), params)


def at(side: str, ts: datetime, price: float = 80.0, symbol: str = "GOOG") -> SignalValidated:
    return msgspec.structs.replace(signal(side, price, symbol), ts=ts)


def test_under_the_daily_loss_limit_orders_pass():
    params = RiskParams(max_daily_loss=250)
    book = losing_book(params)
    _, out = on_signal(book, at("sell", DAY2 + timedelta(hours=2)), "o-1", params)
    assert (out.side, out.quantity) == ("sell", 20.0)   # the reversal, as usual


def test_at_the_daily_loss_limit_a_reversal_only_flattens_and_new_positions_are_refused():
    params = RiskParams(max_daily_loss=200)
    book = losing_book(params)
    later = DAY2 + timedelta(hours=2)
    book2, flatten = on_signal(book, at("sell", later), "o-1", params)
    assert (str(book2.day), book2.day_start_equity) == ("2024-01-03", pytest.approx(100_000.0))
    assert (flatten.side, flatten.quantity, book2.committed["GOOG"]) == ("sell", 10.0, 0.0)
    _, refused = on_signal(book, at("buy", later, 50.0, "MSFT"), "o-2", params)
    assert refused.rule == "max_daily_loss"
    assert refused.reason == "the day's loss 200.00 reached the limit 200.00: reduce-only until 2024-01-03 ends"
    # a new day starts afresh from its own equity
    _, tomorrow = on_signal(book, at("buy", DAY2 + timedelta(days=1), 50.0, "MSFT"), "o-3", params)
    assert isinstance(tomorrow, OrderApproved)


def test_the_day_follows_the_session_time_zone():
    params = RiskParams(session_timezone="America/New_York")
    # 04:00 UTC on Jan 3 is still Jan 2 in New York
    book, _ = on_signal(new_book(params), at("buy", datetime(2024, 1, 3, 4, 0, tzinfo=timezone.utc)), "o-1", params)
    assert str(book.day) == "2024-01-02"


# ---- decisions in event time ---------------------------------------------------------------------------------------

def run_risk(events: list, params: RiskParams) -> list:
    """Feed bars and signals to risk in the given order; its decisions, in signal order."""
    book, decisions = new_book(params), []
    for i, event in enumerate(events):
        if isinstance(event, BarReceived):
            book = on_bar(book, event, params)
        else:
            book, decision = on_signal(book, event, f"o-{i}", params)
            decisions.append(msgspec.structs.replace(decision, order_id="") if isinstance(decision, OrderApproved)
                             else decision)
    return decisions


def test_decisions_do_not_depend_on_how_far_the_bars_run_ahead_of_the_signals():
    """Live, the bars reach risk one hop ahead of the signals they cause, often a whole backlog ahead."""
    params = RiskParams(sizing="equity_fraction", capital=10_000, max_position=1e9, max_order_notional=1e9,
                        max_daily_loss=300, price_history=50)
    closes = [100, 104, 97, 90, 93, 120, 80, 85, 130, 60, 75, 70]
    days = [DAY1 + timedelta(days=i) for i in range(len(closes))]
    bars = [bar("GOOG", float(c), ts) for c, ts in zip(closes, days)] + [bar("MSFT", 50.0 + i, ts)
                                                                         for i, ts in enumerate(days)]
    signals = [at("buy" if i % 2 else "sell", ts, float(c)) for i, (c, ts) in enumerate(zip(closes, days)) if i % 3]
    interleaved = sorted(bars + signals, key=lambda e: (e.ts, isinstance(e, SignalValidated)))
    decided = run_risk(interleaved, params)
    assert run_risk(bars + signals, params) == decided     # every bar first
    for seed in range(5):   # any backlog: a signal comes after its bar, with any number of later bars before it
        rng, pending, order = random.Random(seed), list(signals), []
        for b in sorted(bars, key=lambda e: e.ts):
            order.append(b)
            while pending and pending[0].ts <= b.ts and rng.random() < 0.5:
                order.append(pending.pop(0))
        assert run_risk(order + pending, params) == decided, seed
    assert "max_daily_loss" in {getattr(d, "rule", "") for d in decided}   # the loss limit fired too


def test_other_symbols_are_marked_at_their_last_price_before_the_signal():
    params = RiskParams(capital=10_000)
    book, _ = on_signal(new_book(params), at("buy", DAY1, 100.0), "o-1", params)        # long 10 GOOG @ 100
    for hours, close in ((1, 90.0), (3, 50.0)):
        book = on_bar(book, bar("GOOG", close, DAY1 + timedelta(hours=hours)), params)
    assert committed_equity(book) == pytest.approx(10_000 - 500)                           # latest: 50
    book2, _ = on_signal(book, at("buy", DAY1 + timedelta(hours=2), 40.0, "MSFT"), "o-2", params)
    # at 2h GOOG's last price was 90, not the later 50 that had already arrived
    assert committed_equity(book, {"GOOG": 90.0}) == pytest.approx(9_900.0)
    assert book2.committed == {"GOOG": 10.0, "MSFT": 10.0}


def test_price_history_is_bounded_and_kept_in_time_order():
    params = RiskParams(price_history=3)
    book = new_book(params)
    for hours, close in ((4, 40.0), (1, 10.0), (3, 30.0), (2, 20.0), (5, 50.0), (3, 31.0)):
        book = on_bar(book, bar("GOOG", close, DAY1 + timedelta(hours=hours)), params)
    assert [(ts.hour - DAY1.hour, p) for ts, p in book.prices["GOOG"]] == [(3, 31.0), (4, 40.0), (5, 50.0)]
