"""Continuous event-loop lag measurement: how late a periodic timer fires."""

from __future__ import annotations

import asyncio

from services.runtime.metrics import Metrics


async def watch_loop_lag(metrics: Metrics, interval: float = 0.1, stop: asyncio.Event | None = None) -> None:
    """Sleep `interval` over and over; the overshoot is the loop's lag. Runs until `stop` is set or cancelled."""
    loop = asyncio.get_running_loop()
    hist = metrics.loop_lag.labels(metrics.service)
    worst = metrics.loop_lag_max.labels(metrics.service)
    window_max, ticks = 0.0, 0
    while stop is None or not stop.is_set():
        start = loop.time()
        await asyncio.sleep(interval)
        lag = max(0.0, loop.time() - start - interval)
        hist.observe(lag)
        window_max = max(window_max, lag)
        ticks += 1
        if ticks >= 50:  # publish the max of the last ~5 s
            worst.set(window_max)
            window_max, ticks = 0.0, 0
