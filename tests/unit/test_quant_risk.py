"""quant.validate (minimum strength) and risk.on_signal / on_fill (target positions and limits)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import msgspec
import pytest

from contracts.events import OrderApproved, OrderFilled, SignalGenerated, SignalRejected, SignalValidated
from services.quant.logic import QuantParams, measure, regime_of, validate
from services.risk.logic import Book, RiskParams, on_fill, on_signal

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
    book = Book(committed={"GOOG": committed}, filled={"GOOG": 3.0})
    price = params.pop("price", 100.0)
    after, out = decide(book, side, price, **params)
    assert isinstance(out, SignalRejected)
    assert (out.stage, out.rule, out.side, out.strategy) == ("risk", rule, side, "sma_cross")
    assert reason in out.reason
    assert after == book  # a rejection commits nothing


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


def fill(side: str, quantity: float, symbol: str = "GOOG") -> OrderFilled:
    return OrderFilled(symbol=symbol, ts=TS, order_id="o", side=side, quantity=quantity, price=100.0)


def test_fills_are_tracked_beside_the_committed_position():
    book = Book(committed={"GOOG": -10.0})
    for f in (fill("buy", 10.0), fill("sell", 15.0), fill("sell", 5.0), fill("buy", 2.0, "MSFT")):
        book = on_fill(book, f)
    assert book.filled == {"GOOG": -10.0, "MSFT": 2.0}  # +10 - 15 - 5
    assert book.committed == {"GOOG": -10.0}


def test_gross_exposure_counts_every_symbol_at_its_last_signal_price():
    params = RiskParams(max_gross_exposure=2_500)
    book, first = on_signal(Book(), signal("buy", 100.0, "AAA"), "o-1", params)  # 10 x 100 = 1,000
    assert isinstance(first, OrderApproved)
    book, second = on_signal(book, signal("sell", 140.0, "BBB"), "o-2", params)  # + 10 x 140 = 2,400
    assert isinstance(second, OrderApproved)
    kept, third = on_signal(book, signal("buy", 20.0, "CCC"), "o-3", params)      # + 10 x 20 = 2,600
    assert (third.rule, kept) == ("max_gross_exposure", book)
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
