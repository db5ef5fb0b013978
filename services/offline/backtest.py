"""`tradeflow backtest` and the options it shares with `tradeflow demo`: the same agents, in one process.

Options become the same TRADEFLOW_* settings the services read, so a backtest and a live
run configured alike compute the same thing.
"""

from __future__ import annotations

import msgspec

from contracts.errors import ConfigError
from services import registry
from services.audit.logic import report
from services.data.service import DataSettings, load_bars
from services.offline.simulate import simulate
from services.strategy.strategies import STRATEGIES

ALL_IN = "0.9999999999999998"  # 1 - machine epsilon: backtesting.py's "whole equity"
NO_LIMIT = "1e15"


def settings_env(*, strategy: str, params: tuple[str, ...], cash: float, commission: float,
                 sizing: str, fill_price: str) -> dict[str, str]:
    """TRADEFLOW_* settings for a strategy, its parameters and the account; ConfigError on a bad option."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    known = {f.name for f in msgspec.structs.fields(STRATEGIES[strategy][0])}
    env = {"TRADEFLOW_STRATEGY_NAME": strategy}
    for item in params:
        name, sep, value = item.partition("=")
        if not sep or name not in known:
            raise ConfigError(f"--param {item!r}: expected NAME=VALUE with NAME one of {', '.join(sorted(known))}")
        env[f"TRADEFLOW_STRATEGY_{name.upper()}"] = value
    env.update({"TRADEFLOW_EXECUTION_CASH": str(cash), "TRADEFLOW_AUDIT_CASH": str(cash),
                "TRADEFLOW_RISK_CAPITAL": str(cash), "TRADEFLOW_EXECUTION_COMMISSION_RATE": str(commission),
                "TRADEFLOW_EXECUTION_FILL_PRICE": fill_price})
    if sizing == "all_in":
        env.update({"TRADEFLOW_RISK_SIZING": "equity_fraction", "TRADEFLOW_RISK_EQUITY_FRACTION": ALL_IN,
                    "TRADEFLOW_RISK_MAX_POSITION": NO_LIMIT, "TRADEFLOW_RISK_MAX_ORDER_NOTIONAL": NO_LIMIT})
    else:
        kind, _, size = sizing.partition(":")
        if kind != "fixed" or not size:
            raise ConfigError(f"--sizing {sizing!r}: use all_in or fixed:QUANTITY")
        env.update({"TRADEFLOW_RISK_SIZING": "fixed", "TRADEFLOW_RISK_ORDER_QUANTITY": size})
    return env


def run_backtest(data: tuple[str, ...], env: dict[str, str]) -> dict:
    """Run every agent's logic over the bars of `data` with `env` settings; the report."""
    bars = load_bars(DataSettings(source="csv", files=list(data)))
    agents = {name: registry.build(name, env) for name in registry.CONSUMERS}
    sim = simulate(bars, **agents)
    return {**report(sim.audit.report()), "counts": dict(sim.counts)}
