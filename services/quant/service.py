"""Quant service wiring: signals_ready.<SYM> -> validated_ready.<SYM> or rejected.quant.<SYM>.

Each symbol's volatility regime is cached in Redis (kind `regime`, TTL TRADEFLOW_CACHE_TTL_REGIME):
written for every signal that carried a volatility, read for signals that carry none. The write goes
while the batch's outputs are published, not before: the cache is never the truth, so nothing waits
for it but the next batch (which may read it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from contracts.codec import Incoming
from contracts.events import Event, SignalGenerated
from contracts.subjects import SIGNALS_READY
from services.quant.logic import REGIMES, Accepted, QuantParams, measure, validate
from services.runtime.agent import Agent, AgentContext, Options
from services.runtime.cache import Cache
from services.runtime.settings import load

log = logging.getLogger(__name__)


class QuantAgent(Agent):
    """Judges each signal, remembering each symbol's last accepted one."""

    name = "quant"
    consumes = (f"{SIGNALS_READY}.>",)
    options = Options(stateful=True, partitionable=True)   # state per symbol only: replicas may share them out

    def __init__(self, params: QuantParams) -> None:
        self.params = params
        self.accepted: dict[str, Accepted] = {}
        self.cache: Cache | None = None
        self.cached: dict[str, str] = {}        # regimes read for this batch
        self.measured: dict[str, dict] = {}     # regimes measured in this batch, to cache
        self.caching: asyncio.Task | None = None  # the last batch's regimes on their way to the cache

    def handle(self, incoming: Incoming, now: datetime) -> list[Event]:
        signal = cast(SignalGenerated, incoming.event)   # what quant consumes
        last, decision = validate(signal, self.params, self.accepted.get(signal.symbol),
                                  self.cached.get(signal.symbol))  # type: ignore[arg-type]   # REGIMES only
        if last is not None:
            self.accepted[signal.symbol] = last
        volatility, regime = measure(signal, self.params)
        if volatility is not None:
            self.measured[signal.symbol] = {"regime": regime, "volatility": volatility, "ts": signal.ts.isoformat()}
        return [decision]

    async def open(self, context: AgentContext) -> None:
        self.cache = context.cache

    async def prepare(self, inputs: Sequence[Incoming]) -> None:
        """Read the cached regime of the symbols whose signals carry no volatility (once the last batch's are in)."""
        await self._cached()
        self.measured = {}
        signals = [cast(SignalGenerated, inc.event) for inc in inputs]
        wanted = [signal.symbol for signal in signals if "volatility" not in signal.features]
        found = await self.cache.get_many("regime", wanted) if self.cache and wanted else {}
        self.cached = {s: v["regime"] for s, v in found.items()
                       if isinstance(v, dict) and v.get("regime") in REGIMES}

    async def record(self) -> None:
        """Start caching the regimes this batch measured; the outputs do not wait for it (best effort: the
        cache is never the truth). One write at a time: the last one is waited for first."""
        if self.cache and self.measured:
            await self._cached()
            self.caching = asyncio.create_task(self.cache.set_many("regime", self.measured), name="quant-regimes")
        self.measured = {}

    async def _cached(self) -> None:
        caching, self.caching = self.caching, None
        if caching is None:
            return
        try:
            await caching
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a cache write that failed costs a later read, nothing else
            log.warning("regimes not cached", extra={"error": repr(exc)})

    async def close(self) -> None:
        await self._cached()

    def snapshot(self) -> Any:
        return dict(self.accepted)

    def restore(self, snapshot: Any) -> None:
        self.accepted = snapshot


def build(environ=None) -> QuantAgent:
    """The quant agent from TRADEFLOW_QUANT_* (MIN_STRENGTH, REGIME_LOW, REGIME_HIGH, BLOCK_REGIMES, ...)."""
    return QuantAgent(load(QuantParams, "TRADEFLOW_QUANT_", environ))
