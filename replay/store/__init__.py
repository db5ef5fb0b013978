"""The event store: every recorded pipeline event, queryable by time, subject, symbol and trace.

`EventStore` is the port (`replay.store.model`); `SqliteEventStore` the embedded adapter
(`replay.store.sqlite`); `PostgresEventStore` the shared one (`replay.store.postgres`).
`open_store(location)` picks one by TRADEFLOW_STORE's spelling: a path or `sqlite:///path`,
or `postgresql://…`.
"""

from __future__ import annotations

import os

from replay.store.location import Location, parse_location
from replay.store.model import (
    EventStore,
    Filters,
    Opening,
    Order,
    OrderColumn,
    StoreBusy,
    StoredEvent,
    StoreError,
    StoreStats,
    StoreUnavailable,
    Target,
    TimeColumn,
    check_pattern,
    export_events,
)
from replay.store.sqlite import SCHEMA_VERSION, SqliteEventStore, subject_match


def open_store(location: str | os.PathLike[str] | Location, *, read_only: bool = False, must_exist: bool = False,
               setting: str = "TRADEFLOW_STORE") -> Opening[EventStore]:
    """Open the event store at `location` (a path, `sqlite:///path` or `postgresql://…`); StoreError or
    ConfigError (naming `setting`) if it cannot be used."""
    where = location if isinstance(location, Location) else parse_location(location, setting)
    if where.kind == "postgresql":
        from replay.store.postgres import PostgresEventStore

        assert where.url is not None
        return PostgresEventStore.open(where.url, read_only=read_only, must_exist=must_exist,  # type: ignore[return-value]
                                       setting=setting)
    assert where.path is not None
    return SqliteEventStore.open(where.path, read_only=read_only, must_exist=must_exist)  # type: ignore[return-value]


__all__ = [
    "SCHEMA_VERSION", "EventStore", "Filters", "Location", "Opening", "Order", "OrderColumn", "SqliteEventStore",
    "StoreBusy", "StoreError", "StoreStats", "StoreUnavailable", "StoredEvent", "Target", "TimeColumn",
    "check_pattern", "export_events", "open_store", "parse_location", "subject_match",
]
