"""Strategy service wiring: data_ready.<SYM> -> signals_ready.<SYM>, one window per symbol."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from contracts.codec import Incoming
from contracts.errors import ConfigError
from contracts.events import SignalGenerated
from contracts.subjects import DATA_READY
from services.runtime.settings import load
from services.strategy.logic import GapRejected, Window
from services.strategy.strategies import STRATEGIES, Step


class StrategyAgent:
    """Keeps a rolling window per symbol and runs the configured strategy on each bar."""

    name = "strategy"
    consumes = (f"{DATA_READY}.>",)
    stateful = True
    partitionable = True   # state per symbol only: replicas may share the symbols out

    def __init__(self, step: Step, params: msgspec.Struct) -> None:
        self.step = step
        self.params = params
        self.windows: dict[str, Window] = {}

    def handle(self, incoming: Incoming, now: datetime) -> list[SignalGenerated]:
        bar = incoming.event
        try:
            window, signals = self.step(self.windows.get(bar.symbol, Window()), bar, self.params)
        except GapRejected as gap:
            self.windows[bar.symbol] = gap.window  # the bar is dead-lettered; warm-up starts again after it
            raise
        self.windows[bar.symbol] = window
        return signals

    def snapshot(self) -> Any:
        return dict(self.windows)  # windows are immutable: a shallow copy is a snapshot

    def restore(self, snapshot: Any) -> None:
        self.windows = snapshot


class StrategyChoice(msgspec.Struct, frozen=True):
    """TRADEFLOW_STRATEGY_NAME: which strategy runs."""

    name: str = "sma_cross"


def build(environ=None) -> StrategyAgent:
    """The strategy named by TRADEFLOW_STRATEGY_NAME, its parameters from TRADEFLOW_STRATEGY_<PARAM>."""
    choice = load(StrategyChoice, "TRADEFLOW_STRATEGY_", environ)
    if choice.name not in STRATEGIES:
        raise ConfigError(f"TRADEFLOW_STRATEGY_NAME: unknown strategy {choice.name!r}; "
                          f"choose one of {', '.join(STRATEGIES)}")
    params_type, step = STRATEGIES[choice.name]
    return StrategyAgent(step, load(params_type, "TRADEFLOW_STRATEGY_", environ))
