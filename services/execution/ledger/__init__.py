"""Execution's fill ledger: one fill per order id, the first recorded standing for good.

`FillLedger` is the port (`port.py`, whose doc says why `record`'s answer, not `lookup`'s, is the
truth when several processes share a ledger); `SqliteFillLedger` the embedded adapter (`sqlite.py`);
`PostgresFillLedger` the shared one (`postgres.py`). `open_ledger(location)` picks one by
TRADEFLOW_EXECUTION_LEDGER's spelling: a path or `sqlite:///path`, or `postgresql://…`.
"""

from __future__ import annotations

import os

from replay.store.location import Location, parse_location
from replay.store.model import Opening
from services.execution.ledger.port import SETTING, FillConflict, FillLedger, LedgerUnavailable, Recorded
from services.execution.ledger.sqlite import SqliteFillLedger


def open_ledger(location: str | os.PathLike[str] | Location, *, timeout: float | None = None) -> Opening[FillLedger]:
    """Open (creating) the fill ledger at `location`; ConfigError naming TRADEFLOW_EXECUTION_LEDGER if it
    cannot be used (malformed, a schema newer than this code's, a database still unreachable after
    `timeout` seconds: replay.store.pg.CONNECT_TIMEOUT unless given)."""
    where = location if isinstance(location, Location) else parse_location(location, SETTING)
    if where.kind == "postgresql":
        from services.execution.ledger.postgres import PostgresFillLedger   # psycopg only when it is used

        assert where.url is not None
        return PostgresFillLedger.open(where.url, **({} if timeout is None else {"timeout": timeout}))  # type: ignore[return-value]
    assert where.path is not None
    return SqliteFillLedger.open(where.path)  # type: ignore[return-value]


__all__ = ["SETTING", "FillConflict", "FillLedger", "LedgerUnavailable", "Location", "Recorded", "SqliteFillLedger",
           "open_ledger", "parse_location"]
