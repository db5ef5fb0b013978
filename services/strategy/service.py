"""Strategy service wiring: data_ready.<SYM> -> signals_ready.<SYM>, one window per symbol.

Off-loop compute: a strategy whose indicators cost real CPU (MACD and RSI over their lookback
take 50-120 µs a bar; the SMA crossover 6) would hold the event loop for tens of milliseconds
a batch. Before such a batch is handled, `prepare` folds each symbol's bars of the batch
through the strategy in the service's process pool, the symbols spread over the workers, and
`handle` takes each bar's precomputed result, so the loop stays free while the work runs on
every core. A result is used only if it was computed from the window the symbol has when its
bar is handled; anything else (a rejected bar, a pool that failed, a rebuild) is computed in
the process as before. Results are bit for bit those of the process: same function, same data.

    TRADEFLOW_STRATEGY_OFFLOAD=auto        auto | on | off; auto: when a batch's bars would take at
                                           least OFFLOAD_MIN_MS to compute in the process (measured)
    TRADEFLOW_STRATEGY_OFFLOAD_MIN_MS=5
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Literal, cast

import msgspec

from contracts.codec import Incoming
from contracts.errors import ConfigError
from contracts.events import BarReceived, SignalGenerated
from contracts.subjects import DATA_READY
from services.runtime.agent import Agent, AgentContext, Options
from services.runtime.pool import ComputePool
from services.runtime.settings import load
from services.strategy.logic import GapRejected, StrategyParams, Window
from services.strategy.strategies import STRATEGIES, Step

log = logging.getLogger(__name__)

EMPTY = Window()
Folded = list[tuple[Window, list[SignalGenerated]]]


def fold(step: Step, params: StrategyParams, jobs: Sequence[tuple[Window, Sequence[BarReceived]]]
         ) -> tuple[list[Folded], float]:
    """Each (window, bars) job run through `step` bar by bar, up to its first bar that raises (handle()
    meets that one in the process and deals with it there); with the seconds it took. Runs in the pool."""
    started = time.perf_counter()
    out = []
    for window, bars in jobs:
        results: Folded = []
        for bar in bars:
            try:
                window, signals = step(window, bar, params)
            except Exception:  # noqa: BLE001 - not lost: handle() computes this bar again in the process
                break
            results.append((window, signals))
        out.append(results)
    return out, time.perf_counter() - started


class StrategyAgent(Agent):
    """Keeps a rolling window per symbol and runs the configured strategy on each bar."""

    name = "strategy"
    consumes = (f"{DATA_READY}.>",)
    options = Options(stateful=True, partitionable=True)   # state per symbol only: replicas may share them out

    def __init__(self, step: Step, params: msgspec.Struct, offload: str = "auto", offload_min_ms: float = 5.0) -> None:
        self.step = step
        self.params = params
        self.windows: dict[str, Window] = {}
        self.offload = offload
        self.offload_min = offload_min_ms / 1000
        self.pool: ComputePool | None = None
        self.cost: float | None = None   # seconds a bar takes in the process, a moving average
        self._ready: dict[str, tuple[Window, Window, list[SignalGenerated]]] = {}
        self._pool_failed = False

    def handle(self, incoming: Incoming, now: datetime) -> list[SignalGenerated]:
        bar = cast(BarReceived, incoming.event)   # what strategy consumes
        before = self.windows.get(bar.symbol, EMPTY)
        ready = self._ready.pop(incoming.id, None)
        if ready is not None and ready[0] is before:
            window, signals = ready[1], ready[2]
        else:
            started = time.perf_counter()
            try:
                window, signals = self.step(before, bar, self.params)  # type: ignore[arg-type]   # its own params
            except GapRejected as gap:
                self.windows[bar.symbol] = gap.window  # the bar is dead-lettered; warm-up starts again after it
                raise
            finally:
                self._observe(time.perf_counter() - started, 1)
        self.windows[bar.symbol] = window
        return signals

    def _observe(self, seconds: float, bars: int) -> None:
        per_bar = seconds / bars
        self.cost = per_bar if self.cost is None else 0.9 * self.cost + 0.1 * per_bar

    async def open(self, context: AgentContext) -> None:
        self.pool = context.pool

    def _offloads(self, bars: int) -> bool:
        if self.pool is None or self.offload == "off" or not bars:
            return False
        return self.offload == "on" or (self.cost is not None and self.cost * bars >= self.offload_min)

    async def prepare(self, inputs: Sequence[Incoming]) -> None:
        """Fold the batch's bars in the pool, each symbol's in order, when that pays (see the module doc)."""
        self._ready = {}
        if not self._offloads(len(inputs)):
            return
        assert self.pool is not None   # _offloads says so
        by_symbol: dict[str, list[Incoming]] = {}
        for inc in inputs:
            by_symbol.setdefault(cast(BarReceived, inc.event).symbol, []).append(inc)
        symbols = list(by_symbol)
        parts = min(len(symbols), 2 * self.pool.settings.workers)   # a few calls per worker, not one per symbol
        chunks = [symbols[i::parts] for i in range(parts)]
        jobs = [[(self.windows.get(s, EMPTY), [inc.event for inc in by_symbol[s]]) for s in chunk] for chunk in chunks]
        answers = await asyncio.gather(*(self.pool.compute("strategy", fold, self.step, self.params, job)
                                         for job in jobs), return_exceptions=True)
        for chunk, job, answer in zip(chunks, jobs, answers):
            if isinstance(answer, asyncio.CancelledError):
                raise answer
            if isinstance(answer, BaseException):   # computed in the process instead; said once per outage
                if not self._pool_failed:
                    log.warning("strategy offload failed; computing in the process", extra={"error": repr(answer)})
                self._pool_failed = True
                continue
            self._pool_failed = False
            folded, seconds = answer
            self._observe(seconds, max(1, sum(len(f) for f in folded)))
            for symbol, (before, _), results in zip(chunk, job, folded):
                for inc, (after, signals) in zip(by_symbol[symbol], results):
                    self._ready[inc.id] = (before, after, signals)
                    before = after

    def snapshot(self) -> Any:
        return dict(self.windows)  # windows are immutable: a shallow copy is a snapshot

    def restore(self, snapshot: Any) -> None:
        self.windows = snapshot


class StrategyChoice(msgspec.Struct, frozen=True):
    """TRADEFLOW_STRATEGY_NAME: which strategy runs; _OFFLOAD and _OFFLOAD_MIN_MS: when it runs in the pool."""

    name: str = "sma_cross"
    offload: Literal["auto", "on", "off"] = "auto"
    offload_min_ms: Annotated[float, msgspec.Meta(ge=0, le=60_000)] = 5.0


def build(environ=None) -> StrategyAgent:
    """The strategy named by TRADEFLOW_STRATEGY_NAME, its parameters from TRADEFLOW_STRATEGY_<PARAM>."""
    choice = load(StrategyChoice, "TRADEFLOW_STRATEGY_", environ)
    if choice.name not in STRATEGIES:
        raise ConfigError(f"TRADEFLOW_STRATEGY_NAME: unknown strategy {choice.name!r}; "
                          f"choose one of {', '.join(STRATEGIES)}")
    params_type, step = STRATEGIES[choice.name]
    return StrategyAgent(step, load(params_type, "TRADEFLOW_STRATEGY_", environ), choice.offload,
                         choice.offload_min_ms)
