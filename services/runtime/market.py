"""The market clock: is the exchange in session now, and when does that change.

Sessions and holidays come from `exchange_calendars` (maintained, ~100 exchanges), chosen per
deployment with TRADEFLOW_CALENDAR: an ISO MIC (`XNYS`, `XLON`, `XBOM`), an alias (`NYSE`,
`NASDAQ`, `LSE`, `BSE`), `NSE` (India's NSE keeps BSE's sessions and holidays: XBOM), or
`24/7` and `24/5` for markets that never close or close only at weekends. The clock reads the
time from `now` (a callable), so tests run it on a simulated market clock.

The calendar (and pandas under it: about 0.7 s and 90 MB) is loaded on first use, or by
`load()`, which the task manager runs in a thread at start when a task's interval depends on
the phase: a service that schedules nothing by the market never pays for it.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

from contracts.errors import ConfigError

Phase = Literal["in_session", "out_of_session"]
_ALIASES = {"NSE": "XBOM"}


@dataclass(frozen=True)
class MarketPhase:
    """What the clock says at one moment."""

    phase: Phase
    reason: str                 # "open", "closed", "weekend", "holiday"
    next_change: datetime | None


@functools.cache
def _calendar(name: str):
    import exchange_calendars as xc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return xc.get_calendar(name)


def calendar_names() -> list[str]:
    import exchange_calendars as xc
    return sorted({*xc.get_calendar_names(include_aliases=True), *_ALIASES})


class MarketClock:
    """In session or not, per an exchange calendar, at `now()` (UTC)."""

    def __init__(self, name: str = "XNYS", now: Callable[[], datetime] | None = None) -> None:
        self.name = name.strip()[:40]
        self.now = now or (lambda: datetime.now(timezone.utc))
        self.calendar: Any = None   # an exchange_calendars calendar, loaded on first use

    @property
    def loaded(self) -> bool:
        return self.calendar is not None

    def load(self) -> None:
        """Load the calendar (blocking: call it in a thread from the event loop); ConfigError if unknown."""
        if self.calendar is not None:
            return
        import exchange_calendars as xc
        try:
            self.calendar = _calendar(_ALIASES.get(self.name.upper(), self.name))
        except (xc.errors.InvalidCalendarName, KeyError):
            near = [n for n in calendar_names() if self.name and n[:2].upper() == self.name[:2].upper()][:8]
            raise ConfigError(f"TRADEFLOW_CALENDAR: unknown calendar {self.name!r}"
                              + (f" (did you mean one of {', '.join(near)}?)" if near else "")
                              + "; e.g. XNYS, NYSE, NASDAQ, LSE, NSE, 24/7") from None

    def at(self, when: datetime | None = None) -> MarketPhase:
        """The phase at `when` (default: now)."""
        with warnings.catch_warnings():   # exchange_calendars on pandas 3 warns of pandas 4 changes on every call
            warnings.simplefilter("ignore", DeprecationWarning)
            return self._at(when or self.now())

    def _at(self, when: datetime) -> MarketPhase:
        import pandas as pd
        self.load()
        ts = pd.Timestamp(when).tz_convert("UTC") if when.tzinfo else pd.Timestamp(when, tz="UTC")
        cal = self.calendar
        if not cal.first_minute <= ts <= cal.last_minute:
            raise ConfigError(f"TRADEFLOW_CALENDAR {self.name}: {ts.isoformat()} is outside the calendar's range "
                              f"({cal.first_session.date()} to {cal.last_session.date()}); update exchange_calendars")
        if cal.is_open_on_minute(ts, ignore_breaks=False):
            return MarketPhase("in_session", "open", cal.next_close(ts).to_pydatetime())
        day = ts.tz_convert(cal.tz).date()
        if cal.is_session(pd.Timestamp(day)):
            reason = "closed"
        elif pd.Timestamp(day).weekday() in _weekend(cal):
            reason = "weekend"
        else:
            reason = "holiday"
        return MarketPhase("out_of_session", reason, cal.next_open(ts).to_pydatetime())


def _weekend(cal) -> set[int]:
    """The weekdays (Monday 0) the calendar's weekmask closes."""
    return {i for i, flag in enumerate(cal.weekmask) if flag == "0"}
