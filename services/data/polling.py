"""Polling providers for new bars on the task manager, every symbol of a tier at once.

Symbols are put in tiers by priority (critical, important, nice); each tier is one periodic
task of the service's task manager, with its own interval in session and out of session of
the deployment's exchange calendar (nice-to-have polling pauses outside the session by default):

    TRADEFLOW_DATA_PRIORITIES=AAPL=critical,BTCUSD=nice   (the rest: important)
    TRADEFLOW_DATA_POLL_CRITICAL=1,30                      (seconds in session, out of session)
    TRADEFLOW_DATA_POLL_NICE=30,off                        (off: paused until the next open)

A poll asks the provider for every symbol of the tier concurrently (at most `concurrency` at
once, each within `timeout`), so five symbols at 100 ms of provider latency take about 100 ms,
not 500. The new bars (after the last one published per symbol) go out in one publish, in time
order, with the data service's ids: a poll repeated after a failure or a restart re-publishes
only ids the stream's duplicate window drops. A symbol whose provider fails is shown in
/v1/progress and counted; it does not hold up the others. A round in which every symbol failed
is a failed run: the task manager backs off and shows the error in /v1/health.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from contracts.errors import ConfigError
from contracts.events import BarReceived
from services.data.providers import Provider
from services.runtime.metrics import Metrics
from services.runtime.tasks import Every, Priority, TaskManager

log = logging.getLogger(__name__)

TIERS = {"critical": Priority.CRITICAL, "important": Priority.IMPORTANT, "nice": Priority.NICE_TO_HAVE}


def parse_every(variable: str, value: Sequence[str]) -> Every:
    """`1,30` or `30,off` (seconds in session, out of session) as an Every; ConfigError naming `variable`."""
    if len(value) != 2:
        raise ConfigError(f"{variable}: give two intervals, in session and out of session (e.g. 5,300 or 30,off); "
                          f"got {','.join(value)[:80]!r}")
    try:
        in_session = float(value[0])
        out_of_session = None if value[1].lower() == "off" else float(value[1])
        return Every(in_session, out_of_session)
    except (ValueError, ConfigError) as exc:
        raise ConfigError(f"{variable}: {exc}") from None


def parse_priorities(entries: Sequence[str], symbols: Sequence[str]) -> dict[str, str]:
    """Each symbol's tier from SYMBOL=tier entries; the rest are important."""
    tiers = dict.fromkeys(symbols, "important")
    for entry in entries:
        symbol, sep, tier = entry.partition("=")
        symbol, tier = symbol.strip().upper(), tier.strip().lower()
        if not sep or tier not in TIERS:
            raise ConfigError(f"TRADEFLOW_DATA_PRIORITIES: {entry[:60]!r} is not SYMBOL=tier "
                              f"(tiers: {', '.join(TIERS)})")
        if symbol not in tiers:
            raise ConfigError(f"TRADEFLOW_DATA_PRIORITIES: {symbol[:40]!r} is not one of the polled symbols")
        tiers[symbol] = tier
    return tiers


@dataclass
class SymbolFeed:
    """What /v1/progress shows of one polled symbol."""

    symbol: str
    tier: str
    last_ts: datetime | None = None      # the last bar published (or found in the stream at start)
    published: int = 0
    polls: int = 0
    failures: int = 0                    # in a row
    last_error: str | None = None
    last_poll: datetime | None = None


class Poller:
    """Polls `provider` for `symbols` and publishes what is new."""

    def __init__(self, provider: Provider, publish: Callable[[list[BarReceived]], Awaitable[None]],
                 tiers: Mapping[str, str], *, concurrency: int = 32, timeout: float = 10.0,
                 metrics: Metrics | None = None, now: Callable[[], datetime] | None = None,
                 resync: Callable[[Sequence[str]], Awaitable[Mapping[str, datetime]]] | None = None) -> None:
        self.provider = provider
        self.publish = publish
        self.resync = resync         # where the stream says each symbol ends: asked again after a failed publish
        self._unsure: set[str] = set()
        self.feeds = {symbol: SymbolFeed(symbol, tier) for symbol, tier in sorted(tiers.items())}
        self.timeout = timeout
        self.metrics = metrics
        self._slots = asyncio.Semaphore(concurrency)
        self._now = now or (lambda: datetime.now(timezone.utc))

    def resume_from(self, points: Mapping[str, datetime]) -> None:
        """Start after these times (the last bar of each symbol already in the stream)."""
        for symbol, ts in points.items():
            if symbol in self.feeds:
                self.feeds[symbol].last_ts = ts

    def register(self, tasks: TaskManager, schedules: Mapping[str, Every]) -> list[str]:
        """One task per tier that has symbols; their names."""
        names = []
        for tier, priority in TIERS.items():
            symbols = [s for s, feed in self.feeds.items() if feed.tier == tier]
            if symbols:
                name = f"poll-{tier}"
                tasks.register(name, lambda symbols=symbols: self.poll(symbols), priority=priority,
                               every=schedules[tier], timeout=self.timeout * 2 + 30)
                names.append(name)
        return names

    async def _fetch(self, feed: SymbolFeed) -> list[BarReceived] | Exception:
        async with self._slots:
            try:
                bars = await asyncio.wait_for(self.provider.bars(feed.symbol, feed.last_ts), self.timeout)
            except TimeoutError:
                return TimeoutError(f"{feed.symbol}: no answer in {self.timeout:g}s")
            except Exception as exc:  # noqa: BLE001 - a provider's failure is this symbol's, shown in progress
                return exc
        fresh, last = [], feed.last_ts
        for bar in bars:       # providers answer overlapping windows: keep what is new, strictly in order
            if bar.symbol == feed.symbol and (last is None or bar.ts > last):
                fresh.append(bar)
                last = bar.ts
        return fresh

    async def poll(self, symbols: Sequence[str]) -> int:
        """One round over `symbols`: ask for all at once, publish what is new; the number of bars published."""
        feeds = [self.feeds[s] for s in symbols]
        started = time.perf_counter()
        if self.resync is not None and self._unsure & set(symbols):
            unsure = sorted(self._unsure & set(symbols))    # part of a failed publish may have landed
            self.resume_from(await self.resync(unsure))
            self._unsure -= set(unsure)
        answers = await asyncio.gather(*(self._fetch(feed) for feed in feeds))
        now = self._now()
        fresh: list[BarReceived] = []
        errors = []
        for feed, answer in zip(feeds, answers):
            feed.polls += 1
            feed.last_poll = now
            if isinstance(answer, Exception):
                feed.failures += 1
                feed.last_error = (str(answer) or type(answer).__name__)[:500]
                errors.append(feed.last_error)
                if feed.failures == 1:
                    log.warning("provider failed", extra={"symbol": feed.symbol, "error": feed.last_error})
                continue
            if feed.failures:
                log.info("provider recovered", extra={"symbol": feed.symbol, "failures": feed.failures})
            feed.failures, feed.last_error = 0, None
            fresh.extend(answer)
        if fresh:
            fresh.sort(key=lambda b: (b.ts, b.symbol))
            try:
                await self.publish(fresh)     # raises: nothing below moves on, the next run asks again
            except Exception:
                self._unsure |= {b.symbol for b in fresh}
                raise
            for bar in fresh:
                feed = self.feeds[bar.symbol]
                feed.last_ts = bar.ts
                feed.published += 1
        if self.metrics is not None:
            tier = feeds[0].tier if feeds else ""
            self.metrics.data_polls.labels(self.metrics.service, tier, "error").inc(len(errors))
            self.metrics.data_polls.labels(self.metrics.service, tier, "ok").inc(len(feeds) - len(errors))
            self.metrics.data_poll_seconds.labels(self.metrics.service, tier).observe(time.perf_counter() - started)
        if errors and len(errors) == len(feeds):
            raise PollFailed(f"every symbol failed ({len(errors)}): {'; '.join(errors[:3])}"[:500])
        return len(fresh)

    def progress(self) -> list[dict]:
        return [{"symbol": f.symbol, "tier": f.tier, "last_ts": f.last_ts.isoformat() if f.last_ts else None,
                 "published": f.published, "polls": f.polls, "failures": f.failures, "last_error": f.last_error,
                 "last_poll": f.last_poll.isoformat() if f.last_poll else None} for f in self.feeds.values()]


class PollFailed(Exception):
    """A round in which no symbol's provider answered."""
