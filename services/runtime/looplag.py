"""Continuous event-loop lag measurement: how late a periodic timer fires.

Every `interval` the watcher sleeps and measures its overshoot. Every sample goes to the
histogram `tradeflow_event_loop_lag_seconds` (its quantiles: `histogram_quantile` in PromQL);
the last `window` seconds of samples give p50/p95/p99 and max for the health API
(`LoopLag.snapshot()`), and their max the gauge `tradeflow_event_loop_lag_max_seconds`.
"""

from __future__ import annotations

import asyncio
from collections import deque

from services.runtime.metrics import Metrics, quantile

QUANTILES = (0.5, 0.95, 0.99)


class LoopLag:
    """The recent lags of this process's event loop."""

    def __init__(self, metrics: Metrics, interval: float = 0.1, window: float = 60.0) -> None:
        self.metrics = metrics
        self.interval = interval
        self.samples: deque[float] = deque(maxlen=max(1, round(window / interval)))

    def snapshot(self) -> dict[str, float | int]:
        """p50/p95/p99/max of the window, in milliseconds, and how many samples it holds."""
        ordered = sorted(self.samples)
        if not ordered:
            return {"samples": 0}
        pick = {f"p{round(q * 100)}_ms": quantile(ordered, q) * 1000 for q in QUANTILES}
        return pick | {"max_ms": ordered[-1] * 1000, "samples": len(ordered)}

    def _publish(self) -> None:
        self.metrics.loop_lag_max.labels(self.metrics.service).set(max(self.samples))

    async def watch(self, stop: asyncio.Event | None = None) -> None:
        """Sample until `stop` is set or cancelled; the max gauge follows every second."""
        loop = asyncio.get_running_loop()
        hist = self.metrics.loop_lag.labels(self.metrics.service)
        ticks = 0
        while stop is None or not stop.is_set():
            start = loop.time()
            await asyncio.sleep(self.interval)
            lag = max(0.0, loop.time() - start - self.interval)
            hist.observe(lag)
            self.samples.append(lag)
            ticks += 1
            if ticks * self.interval >= 1.0:
                self._publish()
                ticks = 0


async def watch_loop_lag(metrics: Metrics, interval: float = 0.1, stop: asyncio.Event | None = None) -> None:
    """Sample the loop's lag until `stop` is set or cancelled (LoopLag.watch, for callers without a LoopLag)."""
    await LoopLag(metrics, interval).watch(stop)
