"""Where the event store is: what the recorder writes, the state rebuild reads what aged out of the stream
from, and the query commands open (the store itself is `replay.store`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import msgspec

from services.runtime.settings import load

STORE_FILE = "events.sqlite"


class StoreSettings(msgspec.Struct, frozen=True, kw_only=True):
    """TRADEFLOW_STORE: the event store's file (default: <data dir>/recorder/events.sqlite)."""

    store: str | None = None
    data_dir: str = "var"

    @property
    def path(self) -> Path:
        return Path(self.store) if self.store else Path(self.data_dir) / "recorder" / STORE_FILE


def store_location(environ: Mapping[str, str] | None = None) -> Path:
    """Where the event store is: TRADEFLOW_STORE, else <TRADEFLOW_DATA_DIR>/recorder/events.sqlite."""
    return load(StoreSettings, "TRADEFLOW_", environ).path
