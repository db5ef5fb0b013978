"""The paper broker (slippage, commission, fill once), the audit portfolio, and the whole pipeline in one process."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import msgspec
import pytest

from contracts.codec import Incoming
from contracts.envelope import Envelope
from contracts.errors import Rejected
from contracts.events import BarReceived, OrderApproved, OrderFilled
from contracts.subjects import STAGES, stage_of, subject_for
from services.audit.logic import equity, new_portfolio, on_bar, on_fill, summary
from services.audit.service import AuditAgent, AuditSettings
from services.data.sources import synthetic
from services.execution.logic import BrokerParams, new_broker, on_order
from services.execution.logic import on_bar as broker_bar
from services.execution.service import ExecutionAgent
from services.offline.simulate import simulate
from services.quant.logic import QuantParams
from services.quant.service import QuantAgent
from services.risk.logic import RiskParams
from services.risk.service import RiskAgent
from services.strategy.logic import SmaCrossParams, sma_cross
from services.strategy.service import StrategyAgent

TS = datetime(2024, 1, 2, 14, 30, tzinfo=timezone.utc)


def order(side: str, quantity: float = 10.0, price: float = 100.0, order_id: str = "o-1") -> OrderApproved:
    return OrderApproved(symbol="GOOG", ts=TS, order_id=order_id, side=side, quantity=quantity, price=price)


def fill(o: OrderApproved, params: BrokerParams) -> OrderFilled:
    """The fill of one order at its own reference price."""
    params = msgspec.structs.replace(params, fill_price="close")
    _, [out] = on_order(new_broker(params), o, params)
    return out


# ---- execution -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("side", "price", "commission"), [
    # 25 bps of 100 = 0.25; commission 0.1 % of 10 x 100.25 = 1.0025
    pytest.param("buy", 100.25, 1.0025, id="buy-pays-up"),
    # 0.1 % of 10 x 99.75 = 0.9975
    pytest.param("sell", 99.75, 0.9975, id="sell-receives-less"),
])
def test_fill_applies_slippage_against_the_trader(side, price, commission):
    out = fill(order(side), BrokerParams(commission_rate=0.001, slippage_bps=25))
    assert (out.side, out.quantity, out.order_id, out.ts) == (side, 10.0, "o-1", TS)
    assert out.price == pytest.approx(price)
    assert out.commission == pytest.approx(commission)


@pytest.mark.parametrize(("quantity", "commission"), [
    pytest.param(10.0, 5.0, id="small-order-pays-the-minimum"),     # 0.1 % of 1,000 = 1 < 5
    pytest.param(100.0, 10.0, id="large-order-pays-the-rate"),      # 0.1 % of 10,000 = 10 > 5
])
def test_commission_is_the_rate_with_a_minimum(quantity, commission):
    out = fill(order("buy", quantity), BrokerParams(commission_rate=0.001, min_commission=5.0))
    assert out.price == 100.0
    assert out.commission == pytest.approx(commission)


def test_an_order_id_is_filled_only_once():
    params = BrokerParams(fill_price="close")
    broker, first = on_order(new_broker(params), order("buy"), params)
    again_broker, again = on_order(broker, order("buy"), params)
    assert len(first) == 1 and again == [] and again_broker == broker
    _, other = on_order(broker, order("sell", order_id="o-2"), params)
    assert [f.order_id for f in other] == ["o-2"]


def bar_at(minutes: int, open_: float) -> BarReceived:
    return BarReceived(symbol="GOOG", ts=TS + timedelta(minutes=minutes), open=open_, high=open_ + 5,
                       low=open_ - 5, close=open_)


@pytest.mark.parametrize("bar_first", [pytest.param(False, id="order-then-bar"),
                                       pytest.param(True, id="bar-then-order")])
def test_next_open_fills_at_the_first_later_bar_whatever_arrives_first(bar_first):
    params = BrokerParams(commission_rate=0)
    broker = new_broker(params)
    broker, early = broker_bar(broker, bar_at(0, 90.0), params)  # the order's own bar: not a fill price
    events = [bar_at(1, 101.0), bar_at(2, 102.0)]
    fills = []
    for event in (events + [order("buy")] if bar_first else [order("buy")] + events):
        step = broker_bar if isinstance(event, BarReceived) else on_order
        broker, out = step(broker, event, params)
        fills += out
    assert early == [] and [(f.price, f.ts) for f in fills] == [(101.0, TS + timedelta(minutes=1))]


def _in(event, event_id: str, trace: str) -> Incoming:
    subject = subject_for(event)
    env = Envelope(id=event_id, type=STAGES[stage_of(subject)][1], source="t", time=TS, subject=subject,
                   trace_id=trace)
    return Incoming(env, event)


def test_a_fill_on_the_next_bar_belongs_to_its_orders_trace():
    agent = ExecutionAgent(BrokerParams(commission_rate=0))
    agent.handle(_in(bar_at(0, 90.0), "bar-0", "a" * 32), TS)
    assert agent.handle(_in(order("buy"), "approved-1", "b" * 32), TS) == []
    before = agent.snapshot()
    [filled_] = agent.handle(_in(bar_at(1, 101.0), "bar-1", "c" * 32), TS)
    assert filled_.cause == ("b" * 32, "approved-1") and filled_.key == f"fill:{filled_.event.order_id}"
    agent.restore(before)   # a batch rolled back: the order waits again, with its cause
    [again] = agent.handle(_in(bar_at(1, 101.0), "bar-1", "c" * 32), TS)
    assert again == filled_
    assert agent.handle(_in(bar_at(2, 102.0), "bar-2", "d" * 32), TS) == [] and agent.waiting == {}


def test_equity_fraction_flattens_then_goes_all_in_as_backtesting_py():
    # backtesting.py's first GOOG SmaCross trade: cash 10,000, commission 0.2 %, open 169.02
    # size = int(10,000 x 0.9999 // (169.02 x 1.002)) = int(9,999 // 169.35804) = 59
    params = BrokerParams(commission_rate=0.002, cash=10_000)
    short = OrderApproved(symbol="GOOG", ts=TS, order_id="o-1", side="sell", quantity=1, price=170.0,
                          equity_fraction=0.9999)
    broker, _ = on_order(new_broker(params), short, params)
    broker, [opened] = broker_bar(broker, bar_at(1, 169.02), params)
    assert (opened.side, opened.quantity) == ("sell", 59)
    assert broker.cash == pytest.approx(10_000 - 59 * 169.02 * 0.002)
    # reverse at 179.13: close 59 (loss 59 x 10.11 = 596.49, commission 21.14) then size the long from the cash left
    reverse = OrderApproved(symbol="GOOG", ts=TS + timedelta(minutes=1), order_id="o-2", side="buy", quantity=1,
                            price=180.0, equity_fraction=0.9999)
    broker, _ = on_order(broker, reverse, params)
    broker, [flipped] = broker_bar(broker, bar_at(2, 179.13), params)
    cash_after_close = 10_000 - 59 * 169.02 * 0.002 - 59 * 10.11 - 59 * 179.13 * 0.002
    long_size = int(cash_after_close * 0.9999 // (179.13 * 1.002))
    assert long_size == 52  # backtesting.py's second trade is long 52
    assert flipped.quantity == 59 + long_size and broker.holdings["GOOG"].quantity == long_size


# ---- audit ---------------------------------------------------------------------------------------------------------

def filled(side: str, quantity: float, price: float, commission: float = 0.0, symbol: str = "GOOG") -> OrderFilled:
    return OrderFilled(symbol=symbol, ts=TS, order_id="o", side=side, quantity=quantity, price=price,
                       commission=commission)


def bar(close: float, symbol: str = "GOOG") -> BarReceived:
    return BarReceived(symbol=symbol, ts=TS, open=close, high=close, low=close, close=close)


def play(*events, cash: float = 10_000.0):
    pf = new_portfolio(cash)
    for e in events:
        pf = on_bar(pf, e) if isinstance(e, BarReceived) else on_fill(pf, e)
    return pf


def test_buys_average_the_entry_price():
    # 10 @ 100 then 10 @ 110: 20 @ (1,000 + 1,100) / 20 = 105; cash 10,000 - 2,100 - 2 = 7,898
    pf = play(filled("buy", 10, 100, 1.0), filled("buy", 10, 110, 1.0))
    assert (pf.positions["GOOG"].quantity, pf.positions["GOOG"].avg_price) == (20, 105)
    assert pf.cash == 7_898
    assert pf.realized_pnl == -2  # only the commissions so far


def test_partial_close_realises_pnl_and_keeps_the_entry_price():
    # sell 5 of 20 @ 105 at 120: realised 5 x 15 = 75, less 1 commission
    pf = play(filled("buy", 20, 105), filled("sell", 5, 120, 1.0))
    assert (pf.positions["GOOG"].quantity, pf.positions["GOOG"].avg_price) == (15, 105)
    assert pf.realized_pnl == 74
    assert pf.cash == 10_000 - 2_100 + 600 - 1


def test_flip_through_zero_closes_then_opens_at_the_fill_price():
    # long 15 @ 105, sell 25 @ 100: closes 15 (realised 15 x -5 = -75), opens short 10 @ 100
    pf = play(filled("buy", 15, 105), filled("sell", 25, 100))
    assert (pf.positions["GOOG"].quantity, pf.positions["GOOG"].avg_price) == (-10, 100)
    assert pf.realized_pnl == -75


def test_closing_a_short_realises_the_fall_as_profit():
    # short 10 @ 100, buy back 10 @ 95: +50, and the position is gone
    pf = play(filled("sell", 10, 100), filled("buy", 10, 95))
    assert pf.positions == {}
    assert pf.realized_pnl == 50
    assert pf.cash == 10_050


def test_whole_story_marked_to_the_last_bar():
    pf = play(
        filled("buy", 10, 100, 1.0),   # cash 8,999        realised  -1
        filled("buy", 10, 110, 1.0),   # cash 7,898        realised  -2    20 @ 105
        filled("sell", 5, 120, 1.0),   # cash 8,497        realised  72    15 @ 105
        filled("sell", 25, 100, 2.0),  # cash 10,995       realised  -5   -10 @ 100
        bar(90.0),                     # equity 10,995 - 10 x 90 = 10,095; unrealised -10 x (90 - 100) = 100
        bar(50.0, "MSFT"),             # another symbol's bar does not move GOOG
    )
    assert pf.cash == 10_995
    assert equity(pf) == 10_095
    assert summary(pf) == {
        "cash": 10_995, "equity": 10_095, "initial_cash": 10_000, "pnl": 95, "realized_pnl": -5,
        "unrealized_pnl": 100, "commissions": 5, "fills": 4, "bars": 2,
        "positions": {"GOOG": {"quantity": -10, "avg_price": 100, "last_price": 90.0}},
        # 10,095 / 10,000; no bar below the peak; a position open at both bars; 2 closed trades, 1 won
        "return_pct": 0.95, "max_drawdown_pct": 0.0, "exposure_pct": 100.0, "trade_count": 2, "win_rate_pct": 50.0,
    }
    first, second = pf.trades.closed
    # 5 of the 20 @ 105 closed at 120: commission 2 x 5/20 on entry + 1 on exit = 1.5; pnl 5 x 15 - 1.5
    assert (first.size, first.entry_price, first.exit_price, first.commission, first.pnl) == (5, 105, 120, 1.5, 73.5)
    # the other 15 closed at 100: commission 1.5 left on entry + 2 x 15/25 on exit = 2.7; pnl 15 x -5 - 2.7
    assert (second.size, second.exit_price) == (15, 100)
    assert second.commission == pytest.approx(2.7) and second.pnl == pytest.approx(-77.7)
    [(symbol, still_open)] = pf.trades.open.items()
    assert (symbol, still_open.size, still_open.entry_price) == ("GOOG", -10, 100)  # the reversal's remainder


def test_drawdown_is_the_largest_fall_from_a_peak():
    pf = play(filled("buy", 10, 100, 0.0), bar(120.0), bar(90.0), bar(130.0), bar(117.0))
    # equity 10,200 -> 9,900 (-2.94 %) -> 10,300 -> 10,170 (-1.26 %): the first fall is the largest
    assert summary(pf)["max_drawdown_pct"] == pytest.approx(300 / 10_200 * 100, abs=1e-6)


def test_equity_before_any_bar_uses_the_fill_price():
    pf = play(filled("buy", 10, 100, 1.0))
    assert equity(pf) == 9_999  # 8,999 cash + 10 x 100
    assert summary(pf)["pnl"] == summary(pf)["realized_pnl"] == -1


def test_a_later_fill_does_not_override_the_bar_mark():
    pf = play(bar(90.0), filled("buy", 10, 100))
    assert equity(pf) == 10_000 - 1_000 + 900


# ---- the pipeline in one process -----------------------------------------------------------------------------------

def run_simulation(min_strength: float = 0.2):
    return simulate(
        synthetic(["AAPL", "MSFT"], 200, seed=7),
        strategy=StrategyAgent(sma_cross, SmaCrossParams(fast=3, slow=8)),
        quant=QuantAgent(QuantParams(min_strength=min_strength)),
        risk=RiskAgent(RiskParams(max_order_notional=2500)), execution=ExecutionAgent(BrokerParams()),
        audit=AuditAgent(AuditSettings()),
    )


def test_stage_counts_add_up():
    sim = run_simulation()
    c = sim.counts
    assert c["data_ready"] == 400
    assert c["signals_ready"] > 0 and c["rejected.quant"] > 0 and c["rejected.risk"] > 0  # every path is taken
    assert c["signals_ready"] == c["validated_ready"] + c["rejected.quant"]
    assert c["validated_ready"] == c["approved_ready"] + c["rejected.risk"]
    assert c["executed_ready"] == c["approved_ready"]
    assert sim.audit.report().fills == c["executed_ready"]
    assert sim.audit.report().bars == 400
    assert len(sim.events) == sum(c.values())


def test_simulation_is_reproducible_and_audit_adds_up():
    first, second = run_simulation(), run_simulation()
    assert first.events == second.events
    assert first.audit.report() == second.audit.report()
    s = summary(first.audit.report())
    assert s["pnl"] == pytest.approx(s["realized_pnl"] + s["unrealized_pnl"], abs=1e-5)
    assert s["commissions"] > 0


def test_a_stricter_quant_lets_fewer_signals_through():
    loose, strict = run_simulation(0.1).counts, run_simulation(0.5).counts
    assert loose["signals_ready"] == strict["signals_ready"]
    assert strict["validated_ready"] < loose["validated_ready"]


def test_an_order_whose_fill_bar_was_forgotten_is_refused_not_misfilled():
    params = BrokerParams(keep_bars=2)
    broker = new_broker(params)
    for minute in range(1, 5):  # bars at +1..+4; +1 and +2 are dropped
        broker, _ = broker_bar(broker, bar_at(minute, 100.0 + minute), params)
    with pytest.raises(Rejected, match="no longer remembered"):
        on_order(broker, order("buy"), params)  # its fill bar is +1
    late = OrderApproved(symbol="GOOG", ts=TS + timedelta(minutes=2), order_id="o-9", side="buy", quantity=1,
                         price=100.0)
    _, [filled] = on_order(broker, late, params)  # its fill bar +3 is still known
    assert filled.price == 103.0


def test_an_order_forgets_the_bars_before_it_and_an_older_order_is_refused():
    params = BrokerParams(commission_rate=0)
    broker = new_broker(params)
    for minute in range(1, 6):
        broker, _ = broker_bar(broker, bar_at(minute, 100.0 + minute), params)
    at_3 = OrderApproved(symbol="GOOG", ts=TS + timedelta(minutes=3), order_id="o-3", side="buy", quantity=1,
                         price=103.0)
    broker, [filled] = on_order(broker, at_3, params)
    assert filled.price == 104.0 and [ts for ts, _ in broker.recent["GOOG"]] == [TS + timedelta(minutes=m)
                                                                                for m in (4, 5)]
    with pytest.raises(Rejected, match="older than an order already placed for GOOG"):
        on_order(broker, order("buy", order_id="o-1"), params)   # placed at +0: its bar, +1, is gone


def test_a_bar_out_of_order_is_no_fill_price():
    params = BrokerParams(commission_rate=0)
    broker = new_broker(params)
    broker, _ = broker_bar(broker, bar_at(0, 100.0), params)
    broker, _ = on_order(broker, order("buy"), params)           # waits for the bar after +0
    broker, early = broker_bar(broker, bar_at(0, 90.0), params)  # the same minute again
    assert early == [] and broker.pending["GOOG"]
    broker, [filled] = broker_bar(broker, bar_at(1, 101.0), params)
    assert filled.price == 101.0
