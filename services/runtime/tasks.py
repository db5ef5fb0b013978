"""The task manager: a service's periodic background work, at the rhythm of the market.

Each task is registered with a priority and an interval per market phase (in session, out of
session); `None` out of session pauses it until the next open (nice-to-have work by default).
A run that raises, or outlives its timeout, is a failure: the task runs again after an
exponential backoff (TRADEFLOW_BACKOFF-style, capped), its restart count grows, and health
shows the error; the other tasks are not touched. One-off work submitted with a signature runs
once at a time: a second submission while the first runs gets the same task back. `stop()`
cancels and awaits everything.

    tasks = TaskManager(MarketClock("XNYS"))
    tasks.register("poll-quotes", poll, priority=Priority.CRITICAL, every=Every(in_session=1, out_of_session=30))
    await tasks.start(); ...; await tasks.stop()
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import IntEnum

from contracts.errors import ConfigError
from services.runtime.market import MarketClock
from services.runtime.pause import pause

log = logging.getLogger(__name__)

MIN_INTERVAL = 0.01       # seconds: anything shorter is a busy loop, not a schedule
MAX_INTERVAL = 7 * 86_400.0


class Priority(IntEnum):
    CRITICAL = 0
    IMPORTANT = 1
    NICE_TO_HAVE = 2


@dataclass(frozen=True)
class Every:
    """Seconds between runs in session and out of session; `out_of_session=None` pauses the task
    outside the session (it runs again at the next open)."""

    in_session: float
    out_of_session: float | None

    @property
    def by_phase(self) -> bool:
        """Whether the market phase changes this schedule (else the calendar is never consulted)."""
        return self.in_session != self.out_of_session

    def __post_init__(self) -> None:
        for label, value in (("in_session", self.in_session), ("out_of_session", self.out_of_session)):
            if value is None and label == "out_of_session":
                continue
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
                    or not MIN_INTERVAL <= value <= MAX_INTERVAL:
                raise ConfigError(f"interval {label}={value!r}: give seconds from {MIN_INTERVAL:g} to {MAX_INTERVAL:g}")


@dataclass
class TaskHealth:
    """What /v1/health reports of one task."""

    name: str
    priority: str
    state: str = "idle"          # idle, running, backoff, paused, stopped
    runs: int = 0
    failures: int = 0            # consecutive, reset by a run that succeeds
    restarts: int = 0            # runs after a failure, all told
    last_run: datetime | None = None
    last_ok: datetime | None = None
    last_error: str | None = None
    last_seconds: float | None = None
    next_run: datetime | None = None


@dataclass
class _Periodic:
    name: str
    run: Callable[[], Awaitable[object]]
    priority: Priority
    every: Every
    timeout: float
    health: TaskHealth
    backoff: tuple[float, ...]
    task: asyncio.Task | None = None


@dataclass
class TaskManager:
    """Periodic tasks and one-off work for one service."""

    clock: MarketClock
    backoff: Sequence[float] = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
    _periodic: dict[str, _Periodic] = field(default_factory=dict)
    _oneoff: dict[Hashable, asyncio.Task] = field(default_factory=dict)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _started: bool = False

    def register(self, name: str, run: Callable[[], Awaitable[object]], *, priority: Priority, every: Every,
                 timeout: float | None = None, backoff: Sequence[float] | None = None) -> None:
        """Add a periodic task (before or after start). `timeout`: a run longer than this is a failure
        (default: the in-session interval, at least 1 s, at most 5 minutes). `backoff`: the waits after
        1, 2, ... failures in a row (default: the manager's)."""
        if not name or len(name) > 100:
            raise ConfigError(f"task name {name[:40]!r}: give 1 to 100 characters")
        if name in self._periodic:
            raise ConfigError(f"task {name!r} is registered already")
        if not isinstance(priority, Priority):
            raise ConfigError(f"task {name!r}: priority must be a Priority, not {priority!r}")
        if not callable(run):
            raise ConfigError(f"task {name!r}: run must be an async function")
        timeout = timeout if timeout is not None else min(300.0, max(1.0, every.in_session))
        if not math.isfinite(timeout) or timeout <= 0:
            raise ConfigError(f"task {name!r}: timeout must be a positive number of seconds, not {timeout!r}")
        backoff = tuple(backoff if backoff is not None else self.backoff)
        if not backoff or any(not math.isfinite(b) or b < 0 for b in backoff):
            raise ConfigError(f"task {name!r}: backoff must be one or more non-negative seconds, not {backoff!r}")
        entry = _Periodic(name, run, priority, every, timeout, TaskHealth(name, priority.name.lower()), backoff)
        self._periodic[name] = entry
        if self._started:
            entry.task = asyncio.create_task(self._loop(entry), name=f"task-{name}")

    async def unregister(self, name: str) -> None:
        """Cancel a periodic task, wait for it to end and forget it (KeyError if there is none)."""
        entry = self._periodic.pop(name)
        if entry.task is not None:
            entry.task.cancel()
            await asyncio.gather(entry.task, return_exceptions=True)

    async def start(self) -> None:
        """Start every registered task; ConfigError (an unknown calendar) before any, if one schedules by
        the market (the calendar is loaded in a thread: it takes most of a second)."""
        if any(e.every.by_phase for e in self._periodic.values()) and not self.clock.loaded:
            await asyncio.to_thread(self.clock.load)
        self._started = True
        for entry in self._periodic.values():
            if entry.task is None:
                entry.task = asyncio.create_task(self._loop(entry), name=f"task-{entry.name}")

    def submit(self, signature: Hashable, work: Callable[[], Coroutine[Any, Any, object]]) -> asyncio.Task:
        """Run `work` once, unless work with the same signature is still running: then that task."""
        running = self._oneoff.get(signature)
        if running is not None and not running.done():
            return running
        task: asyncio.Task = asyncio.create_task(work(), name=f"oneoff-{signature}")
        self._oneoff[signature] = task

        def forget(done: asyncio.Task) -> None:
            if self._oneoff.get(signature) is done:
                del self._oneoff[signature]

        task.add_done_callback(forget)
        return task

    async def stop(self) -> None:
        """Cancel every task and wait for each to end."""
        self._stopping.set()
        tasks = [e.task for e in self._periodic.values() if e.task] + list(self._oneoff.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for entry in self._periodic.values():
            entry.health.state, entry.health.next_run = "stopped", None

    def health(self) -> list[TaskHealth]:
        return [e.health for e in sorted(self._periodic.values(), key=lambda e: (e.priority, e.name))]

    def _delay(self, entry: _Periodic) -> tuple[float, str]:
        """Seconds until the next run and the state meanwhile, per the market phase now."""
        if entry.health.failures:
            step = entry.backoff[min(entry.health.failures, len(entry.backoff)) - 1]
            return step, "backoff"
        if not entry.every.by_phase:
            return entry.every.in_session, "idle"
        phase = self.clock.at()
        if phase.phase == "in_session":
            return entry.every.in_session, "idle"
        if entry.every.out_of_session is not None:
            return entry.every.out_of_session, "idle"
        until_open = (phase.next_change - self.clock.now()).total_seconds() if phase.next_change else MAX_INTERVAL
        return max(MIN_INTERVAL, min(until_open, MAX_INTERVAL)), "paused"

    async def _loop(self, entry: _Periodic) -> None:
        health = entry.health
        if entry.every.by_phase and not self.clock.loaded:   # registered after start
            await asyncio.to_thread(self.clock.load)
        while not self._stopping.is_set():
            await self._run_once(entry)
            delay, health.state = self._delay(entry)
            health.next_run = self.clock.now() + timedelta(seconds=delay)
            await pause(delay, self._stopping)

    async def _run_once(self, entry: _Periodic) -> None:
        health = entry.health
        if health.failures:
            health.restarts += 1
        health.state, health.last_run = "running", self.clock.now()
        started = time.perf_counter()
        try:
            await asyncio.wait_for(entry.run(), entry.timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - isolated: counted, shown in health, retried with backoff
            health.failures += 1
            health.last_error = (f"timed out after {entry.timeout:g}s" if isinstance(exc, TimeoutError)
                                 else f"{type(exc).__name__}: {exc}")[:500]
            if health.failures == 1:   # once per run of failures, not once per retry: health has the count
                log.warning("task failed; retrying with backoff",
                            extra={"task": entry.name, "error": health.last_error})
        else:
            if health.failures:
                log.info("task recovered", extra={"task": entry.name, "failures": health.failures})
            health.failures, health.last_ok = 0, self.clock.now()
        finally:
            health.runs += 1
            health.last_seconds = time.perf_counter() - started
