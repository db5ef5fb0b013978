"""Where the event store is: what the recorder writes, the state rebuild reads what aged out of the stream
from, and the query commands open (the store itself is `replay.store`).

TRADEFLOW_STORE is a path or `sqlite:///path` (the embedded default, <data dir>/recorder/events.sqlite
when unset) or a `postgresql://` URL. `open_event_store` opens it and turns any reason it cannot be used
into one line naming the setting (or the `--store` option) it came from.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import msgspec

from contracts.errors import ConfigError
from replay.store import EventStore, Location, Opening, StoreError, open_store, parse_location
from services.runtime.settings import load

STORE_FILE = "events.sqlite"
SETTING = "TRADEFLOW_STORE"


class StoreSettings(msgspec.Struct, frozen=True, kw_only=True):
    """TRADEFLOW_STORE: the event store (default: <data dir>/recorder/events.sqlite)."""

    store: str | None = None
    data_dir: str = "var"

    @property
    def location(self) -> Location:
        """The parsed location; ConfigError naming TRADEFLOW_STORE if it is not one."""
        if self.store:
            return parse_location(self.store, SETTING)
        return Location("sqlite", SETTING, path=Path(self.data_dir) / "recorder" / STORE_FILE)


def store_location(environ: Mapping[str, str] | None = None) -> Location:
    """Where the event store is: TRADEFLOW_STORE, else <TRADEFLOW_DATA_DIR>/recorder/events.sqlite."""
    return load(StoreSettings, "TRADEFLOW_", environ).location


def data_home(location: Location, environ: Mapping[str, str] | None = None) -> Path:
    """The deployment's folder a store belongs to (where `up` and `demo` put settings.env and audit/): an
    embedded store's grandparent (<home>/recorder/events.sqlite), else TRADEFLOW_DATA_DIR."""
    if location.path is not None:
        return location.path.resolve().parent.parent
    return Path(load(StoreSettings, "TRADEFLOW_", environ).data_dir)


def open_event_store(location: Location, *, read_only: bool = False,
                     must_exist: bool = False) -> Opening[EventStore]:
    """Open the store at `location` (await it, or enter it to have it closed); ConfigError naming the location's
    setting if it cannot be used (no such store, not one, a newer schema, unreachable), any password hidden."""
    return Opening(_open(location, read_only, must_exist))


async def _open(location: Location, read_only: bool, must_exist: bool) -> EventStore:
    if location.path is not None and location.path.is_dir():
        raise ConfigError(f"{location.setting}: {location.path} is a directory, not an event store file")
    try:
        return await open_store(location, read_only=read_only, must_exist=must_exist, setting=location.setting)
    except StoreError as exc:
        raise ConfigError(named(location.setting, exc)) from None


def named(setting: str, exc: BaseException) -> str:
    """An error's first line, led by the setting it concerns (unless it names it already)."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text if text.startswith(setting) else f"{setting}: {text}"
