"""The task manager and the market clock, on a simulated market clock."""

from __future__ import annotations

import asyncio
import math
from datetime import datetime, timezone

import pytest

from contracts.errors import ConfigError
from services.runtime.market import MarketClock
from services.runtime.tasks import Every, Priority, TaskManager


class SimClock:
    """A settable 'now' for the market clock."""

    def __init__(self, when: str) -> None:
        self.set(when)

    def set(self, when: str) -> None:
        self.now = datetime.fromisoformat(when).replace(tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now


OPEN = "2024-07-05T15:00"        # NYSE, a Friday in session
EVENING = "2024-07-05T22:00"     # after the close
HOLIDAY = "2024-07-04T15:00"     # Independence Day
WEEKEND = "2024-07-06T15:00"


@pytest.mark.parametrize("when, phase, reason, next_change", [
    (OPEN, "in_session", "open", "2024-07-05T20:00"),
    (EVENING, "out_of_session", "closed", "2024-07-08T13:30"),
    (HOLIDAY, "out_of_session", "holiday", "2024-07-05T13:30"),
    (WEEKEND, "out_of_session", "weekend", "2024-07-08T13:30"),
])
def test_the_market_clock_knows_sessions_weekends_and_holidays(when, phase, reason, next_change):
    at = MarketClock("NYSE", now=SimClock(when)).at()
    assert (at.phase, at.reason) == (phase, reason)
    assert at.next_change == datetime.fromisoformat(next_change).replace(tzinfo=timezone.utc)


def test_nse_keeps_indias_holidays_and_24_7_never_closes():
    republic_day = datetime(2024, 1, 26, 5, 0, tzinfo=timezone.utc)
    assert MarketClock("NSE").at(republic_day).reason == "holiday"
    assert MarketClock("24/7").at(republic_day).phase == "in_session"


@pytest.mark.parametrize("name", ["XNYZ", "", "nyse; rm -rf /", "X" * 5000])
def test_an_unknown_calendar_is_a_clear_error(name):
    with pytest.raises(ConfigError, match="TRADEFLOW_CALENDAR: unknown calendar"):
        MarketClock(name).load()


async def test_an_unknown_calendar_stops_the_task_manager_at_start_when_a_task_schedules_by_the_market():
    tasks = TaskManager(MarketClock("XNYZ"))
    tasks.register("flat", noop, priority=Priority.CRITICAL, every=Every(1, 1))
    await tasks.start()   # nothing consults the calendar yet
    await tasks.stop()
    tasks = TaskManager(MarketClock("XNYZ"))
    tasks.register("poll", noop, priority=Priority.CRITICAL, every=Every(1, 30))
    with pytest.raises(ConfigError, match="did you mean one of XNAS, XNYS"):
        await tasks.start()


@pytest.mark.parametrize("every", [
    dict(in_session=0, out_of_session=1), dict(in_session=-5, out_of_session=1),
    dict(in_session=math.nan, out_of_session=1), dict(in_session=1, out_of_session=math.inf),
    dict(in_session="1", out_of_session=1), dict(in_session=True, out_of_session=1),
    dict(in_session=1, out_of_session=10 ** 9),
])
def test_invalid_intervals_are_refused_at_registration(every):
    with pytest.raises(ConfigError, match="interval"):
        Every(**every)


def schedule(when: str) -> tuple[SimClock, TaskManager]:
    clock = SimClock(when)
    return clock, TaskManager(MarketClock("NYSE", now=clock))


async def noop() -> None:
    return None


def test_registration_refuses_a_second_task_of_one_name_and_a_bad_timeout():
    _, tasks = schedule(OPEN)
    tasks.register("poll", noop, priority=Priority.CRITICAL, every=Every(1, 10))
    with pytest.raises(ConfigError, match="registered already"):
        tasks.register("poll", noop, priority=Priority.CRITICAL, every=Every(1, 10))
    with pytest.raises(ConfigError, match="timeout"):
        tasks.register("other", noop, priority=Priority.IMPORTANT, every=Every(1, 10), timeout=-1)
    with pytest.raises(ConfigError, match="priority"):
        tasks.register("third", noop, priority=2, every=Every(1, 10))


@pytest.mark.parametrize("when, priority, every, expected, state", [
    (OPEN, Priority.CRITICAL, Every(1, 30), 1, "idle"),
    (EVENING, Priority.CRITICAL, Every(1, 30), 30, "idle"),
    (HOLIDAY, Priority.IMPORTANT, Every(5, 60), 60, "idle"),
    # nice-to-have work paused outside the session: next run at the next open
    (EVENING, Priority.NICE_TO_HAVE, Every(5, None),
     (datetime(2024, 7, 8, 13, 30) - datetime(2024, 7, 5, 22, 0)).total_seconds(), "paused"),
    (HOLIDAY, Priority.NICE_TO_HAVE, Every(5, None), 22.5 * 3600, "paused"),
])
def test_the_interval_follows_the_market_phase(when, priority, every, expected, state):
    _, tasks = schedule(when)
    tasks.register("t", noop, priority=priority, every=every)
    delay, got_state = tasks._delay(tasks._periodic["t"])
    assert (delay, got_state) == (pytest.approx(expected), state)


async def test_a_task_that_always_fails_is_restarted_with_backoff_and_isolated():
    clock, tasks = schedule(OPEN)
    tasks.backoff = (0.02, 0.04, 0.08)
    good_runs = []

    async def broken() -> None:
        raise RuntimeError("quote feed returned 502")

    async def good() -> None:
        good_runs.append(1)

    tasks.register("broken", broken, priority=Priority.IMPORTANT, every=Every(0.01, 1))
    tasks.register("good", good, priority=Priority.CRITICAL, every=Every(0.02, 1))
    await tasks.start()
    await asyncio.sleep(0.5)
    health = {h.name: h for h in tasks.health()}
    await tasks.stop()
    broken_h = health["broken"]
    assert broken_h.failures >= 3 and broken_h.restarts == broken_h.runs - 1
    assert broken_h.last_error == "RuntimeError: quote feed returned 502" and broken_h.last_ok is None
    # backoff grows to its cap: far fewer runs than the 10 ms interval would give
    assert broken_h.runs < 15
    assert len(good_runs) >= 10 and health["good"].failures == 0 and health["good"].last_error is None
    assert [h.name for h in tasks.health()] == ["good", "broken"]   # critical first


async def test_a_task_that_never_returns_times_out_and_is_retried():
    _, tasks = schedule(OPEN)
    tasks.backoff = (0.01,)
    started = []

    async def hangs() -> None:
        started.append(1)
        await asyncio.Event().wait()

    tasks.register("hangs", hangs, priority=Priority.NICE_TO_HAVE, every=Every(1, 1), timeout=0.05)
    await tasks.start()
    await asyncio.sleep(0.3)
    [health] = tasks.health()
    await tasks.stop()
    assert len(started) >= 3 and health.restarts >= 2
    assert health.last_error == "timed out after 0.05s"


async def test_work_submitted_twice_with_one_signature_runs_once_at_a_time():
    _, tasks = schedule(OPEN)
    runs = []
    gate = asyncio.Event()

    async def refresh() -> str:
        runs.append(1)
        await gate.wait()
        return "done"

    first = tasks.submit(("refresh", "AAPL"), refresh)
    second = tasks.submit(("refresh", "AAPL"), refresh)
    other = tasks.submit(("refresh", "MSFT"), refresh)
    assert second is first and other is not first
    gate.set()
    assert await first == "done"
    await other
    third = tasks.submit(("refresh", "AAPL"), refresh)   # the first is done: this runs again
    assert third is not first and await third == "done"
    assert len(runs) == 3


async def test_stop_cancels_and_awaits_every_task():
    _, tasks = schedule(OPEN)
    cancelled = []
    running = asyncio.Semaphore(0)

    async def long_job() -> None:
        running.release()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(1)
            raise

    tasks.register("periodic", long_job, priority=Priority.CRITICAL, every=Every(1, 1), timeout=120)
    oneoff = tasks.submit("backfill", long_job)
    await tasks.start()
    for _ in range(2):   # both under way
        await asyncio.wait_for(running.acquire(), timeout=10)
    await tasks.stop()
    assert oneoff.done() and tasks._periodic["periodic"].task.done()
    assert len(cancelled) == 2
    assert [h.state for h in tasks.health()] == ["stopped"]


@pytest.mark.parametrize("name, value", [("TTL_MARKET", "-5"), ("TTL_NEWS", "0"), ("TTL_REGIME", "nan"),
                                         ("TTL_MARKET", "1e12"), ("NAMESPACE", "a b")])
def test_bad_cache_settings_stop_the_service_with_the_variable_named(name, value):
    from services.runtime.cache import CacheSettings
    from services.runtime.settings import load
    with pytest.raises(ConfigError, match=f"TRADEFLOW_CACHE_{name}"):
        load(CacheSettings, "TRADEFLOW_CACHE_", {f"TRADEFLOW_CACHE_{name}": value})
