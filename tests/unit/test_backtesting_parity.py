"""tradeflow's pure logic against backtesting.py, an independent backtester, on real GOOG bars.

backtesting.py's classic example: SMA(10)/SMA(20) crossover, 10,000 cash, 0.2 % commission,
all-in (99.99 % of equity), filled at the next bar's open, closing and reversing at each cross.
Configured to mean the same, tradeflow must make the same trades and end within 0.1 %.

"All-in" in backtesting.py 0.6.6 is 1 - machine epsilon of equity (its default order size),
not 0.9999 as older documentation says; with that fraction the sizes, trades and final
equity agree exactly.
"""

from __future__ import annotations

import warnings

import pytest

from services import registry
from services.data.service import DataSettings, load_bars
from services.offline.simulate import simulate

backtesting = pytest.importorskip("backtesting")

PARITY_ENV = {
    "TRADEFLOW_STRATEGY_FAST": "10", "TRADEFLOW_STRATEGY_SLOW": "20",
    "TRADEFLOW_RISK_SIZING": "equity_fraction", "TRADEFLOW_RISK_EQUITY_FRACTION": "0.9999999999999998",
    "TRADEFLOW_RISK_CAPITAL": "10000", "TRADEFLOW_RISK_MAX_POSITION": "1e12",
    "TRADEFLOW_RISK_MAX_ORDER_NOTIONAL": "1e12",
    "TRADEFLOW_EXECUTION_FILL_PRICE": "next_open", "TRADEFLOW_EXECUTION_COMMISSION_RATE": "0.002",
    "TRADEFLOW_EXECUTION_CASH": "10000", "TRADEFLOW_AUDIT_CASH": "10000",
}


def backtesting_py_sma_cross(data: str = "GOOG", fast: int = 10, slow: int = 20, commission: float = 0.002):
    import backtesting.test
    from backtesting import Backtest, Strategy
    from backtesting.lib import crossover
    from backtesting.test import SMA

    class SmaCross(Strategy):
        def init(self):
            self.fast = self.I(SMA, self.data.Close, fast)
            self.slow = self.I(SMA, self.data.Close, slow)

        def next(self):
            if crossover(self.fast, self.slow):
                self.position.close()
                self.buy()
            elif crossover(self.slow, self.fast):
                self.position.close()
                self.sell()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "some trades remain open": the last one is, in both
        return Backtest(getattr(backtesting.test, data), SmaCross, cash=10_000, commission=commission).run()


@pytest.mark.parametrize("data, fast, slow, commission, closed", [
    pytest.param("GOOG", 10, 20, 0.002, 93, id="GOOG-daily-sma-10-20"),
    pytest.param("EURUSD", 10, 30, 0.0002, 166, id="EURUSD-hourly-sma-10-30"),
])
def test_sma_cross_matches_backtesting_py(data, fast, slow, commission, closed):
    stats = backtesting_py_sma_cross(data, fast, slow, commission)
    trades = stats._trades
    assert len(trades) == closed
    env = PARITY_ENV | {"TRADEFLOW_STRATEGY_FAST": str(fast), "TRADEFLOW_STRATEGY_SLOW": str(slow),
                        "TRADEFLOW_EXECUTION_COMMISSION_RATE": str(commission)}
    bars = load_bars(DataSettings(source="csv", files=[data]))
    sim = simulate(bars, **{name: registry.build(name, env)
                            for name in ("strategy", "quant", "risk", "execution", "audit")})
    fills = [e for _, e in sim.events if type(e).__name__ == "OrderFilled"]
    assert len(fills) == closed + 1  # the closed trades and the one still open at the end
    sizes = []
    held = 0.0
    for i, trade in enumerate(trades.itertuples()):
        entry, exit_ = fills[i], fills[i + 1]
        assert (entry.ts.date(), entry.price) == (trade.EntryTime.date(), trade.EntryPrice), f"trade {i} entry"
        assert (exit_.ts.date(), exit_.price) == (trade.ExitTime.date(), trade.ExitPrice), f"trade {i} exit"
        assert entry.side == ("buy" if trade.Size > 0 else "sell")
        opened = entry.quantity - abs(held)
        sizes.append(abs(opened - abs(trade.Size)))
        held = opened
    assert max(sizes) == 0, "an all-in size differs"
    ledger = sim.audit.report().trades.closed  # audit's own pairing of the fills into trades
    assert [(t.size, t.entry_price, t.exit_price) for t in ledger] == [
        (float(t.Size), t.EntryPrice, t.ExitPrice) for t in trades.itertuples()]
    assert [t.pnl for t in ledger] == pytest.approx(list(trades.PnL), abs=1e-6)
    assert [t.commission for t in ledger] == pytest.approx(list(trades.Commission), abs=1e-6)
    from services.audit.logic import equity, summary

    ours, theirs = equity(sim.audit.report()), stats["Equity Final [$]"]
    assert ours == pytest.approx(theirs, rel=1e-9)  # the issue asks for 0.1 %; they agree to the cent
    stats_ours = summary(sim.audit.report())
    assert stats_ours["max_drawdown_pct"] == pytest.approx(-stats["Max. Drawdown [%]"], abs=1e-6)
    assert stats_ours["win_rate_pct"] == pytest.approx(stats["Win Rate [%]"], abs=1e-6)
    assert stats_ours["return_pct"] == pytest.approx(stats["Return [%]"], abs=1e-6)
    # by definition, backtesting.py leaves the trade still open at the end out of its exposure and
    # commission totals; tradeflow counts the open position's bars and the commission it already paid
    open_trade = sim.audit.report().trades.open[data]
    assert stats_ours["commissions"] == pytest.approx(stats["Commissions [$]"] + open_trade.commission, abs=1e-6)
